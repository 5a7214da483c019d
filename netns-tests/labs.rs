//! Every lab file in configs/labs/ comes up with `uvs lab up`, passes its own smoke check
//! (requests reach every expected real server), and `uvs lab down` leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use uvs::lab::spec::LabSpec;

use crate::common::{self, As};

fn uvs(args: &[&str]) -> (bool, String) {
    let out = Command::new(common::uvs_exe())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running uvs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A lab file brought up with `uvs lab up` under the test's own prefix (so a lab a user has up
/// is never touched); brought down when dropped, also when the test panics.
struct LabUp {
    file: String,
    prefix: String,
    down: bool,
}

impl LabUp {
    /// `uvs lab up FILE`: the guard, whether it succeeded, and what it printed.
    fn up(file: &str, prefix: &str) -> (Self, bool, String) {
        let lab = Self::adopt(file, prefix);
        let (ok, out) = lab.run("up", &[]);
        (lab, ok, out)
    }

    /// The guard alone, for what a crashed `uvs lab up` may have left.
    fn adopt(file: &str, prefix: &str) -> Self {
        Self {
            file: file.to_string(),
            prefix: prefix.to_string(),
            down: false,
        }
    }

    /// `uvs lab CMD FILE ARGS --prefix PREFIX`.
    fn run(&self, cmd: &str, args: &[&str]) -> (bool, String) {
        let mut all = vec!["lab", cmd, &self.file];
        all.extend_from_slice(args);
        all.extend(["--prefix", &self.prefix]);
        uvs(&all)
    }

    /// `uvs lab down`, which must succeed and leave nothing behind.
    fn down(mut self) {
        self.down = true;
        let (ok, out) = self.run("down", &[]);
        assert!(ok, "lab down {}:\n{out}", self.file);
        let left = leftovers(&self.prefix);
        assert!(left.is_empty(), "{}: left behind {left:?}", self.file);
    }
}

impl Drop for LabUp {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.run("down", &[]);
        }
    }
}

fn lab_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/labs");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

fn leftovers(prefix: &str) -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    let state = Path::new(uvs::lab::build::STATE_ROOT).join(prefix.trim_end_matches('-'));
    if state.exists() {
        left.push(state.display().to_string());
    }
    left
}

#[test]
fn every_lab_file_comes_up_passes_its_smoke_check_and_goes_down() {
    let Some(ctx) = common::setup(42) else { return };
    for file in lab_files() {
        let spec = LabSpec::load(&file).unwrap();
        // Our own prefix, so a lab a user has up is never touched.
        let prefix = format!("{}{}-", ctx.prefix, &spec.prefix[4..6]);
        let f = file.to_str().unwrap();
        let (lab, ok, up) = LabUp::up(f, &prefix);
        assert!(ok, "lab up {f}:\n{up}");
        let (ok_s, status) = lab.run("status", &[]);
        let (ok_c, check) = lab.run("check", &[]);
        assert!(ok_s && ok_c, "{f}: status:\n{status}\ncheck:\n{check}");
        lab.down();
        let (_, status) = uvs(&["lab", "status", f, "--prefix", &prefix]);
        assert!(status.contains(": down"), "{status}");
    }
}

#[test]
fn lab_down_after_a_crashed_up_removes_what_was_recorded() {
    let Some(ctx) = common::setup(43) else { return };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/labs/single-segment.toml");
    let f = file.to_str().unwrap();
    let prefix = ctx.prefix.clone();
    let lab = LabUp::adopt(f, &prefix);
    // SIGKILL `lab up` half-way: no teardown runs, the state file is all that is left.
    let mut child = Command::new(common::uvs_exe())
        .args(["lab", "up", f, "--prefix", &prefix])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = Path::new(uvs::lab::build::STATE_ROOT)
        .join(prefix.trim_end_matches('-'))
        .join("state.json");
    let seen = common::poll(std::time::Duration::from_secs(20), || {
        let s = std::fs::read_to_string(&state).ok()?;
        s.contains("nginx")
            .then_some(())
            .or_else(|| s.contains("lab-http").then_some(()))
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.is_some(), "lab up never recorded a server");
    lab.down();
}

/// `uvs status` in a lab namespace.
fn vrrp_state(prefix: &str, host: &str) -> String {
    common::uvs_in(&format!("{prefix}{host}"), As::Root, &["status"]).stdout
}

fn wait_vrrp(prefix: &str, host: &str, state: &str, secs: u64) {
    let ok = common::poll(std::time::Duration::from_secs(secs), || {
        vrrp_state(prefix, host)
            .contains(&format!("): {state}"))
            .then_some(())
    });
    assert!(
        ok.is_some(),
        "{host} not {state}: {}",
        vrrp_state(prefix, host)
    );
}

/// The router's neighbour entry for the VIP: which director's MAC it holds.
fn router_vip_mac(prefix: &str, vip: &str) -> String {
    common::neigh(&format!("{prefix}router"), vip)
        .map(|(mac, _)| mac)
        .unwrap_or_default()
}

/// A process the test started itself, ended (by its PID, still unreaped) when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The keepalived pair: both directors come up (MASTER and BACKUP), requests reach both real
/// servers; SIGKILL the MASTER (`uvs lab stop --kill`): the BACKUP takes over, the router's
/// neighbour entry for the VIP moves to it, its trace explains the change, requests still
/// reach both real servers; the old MASTER comes back and preempts; the lab goes down clean.
#[test]
fn keepalived_pair_fails_over_and_back() {
    let Some(ctx) = common::setup(44) else { return };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/labs/keepalived-pair.toml");
    let f = file.to_str().unwrap();
    let prefix = ctx.prefix.clone();
    let vip = "10.2.0.100";
    let (lab, ok, up) = LabUp::up(f, &prefix);
    assert!(ok, "lab up:\n{up}");
    wait_vrrp(&prefix, "dir1", "MASTER", 5);
    wait_vrrp(&prefix, "dir2", "BACKUP", 5);
    let (ok, check) = lab.run("check", &[]);
    assert!(ok, "check through dir1:\n{check}");
    assert_eq!(router_vip_mac(&prefix, vip), "02:00:00:00:02:00");

    // A trace on the BACKUP, started by us, killed by its PID.
    let trace_out = std::env::temp_dir().join(format!("{prefix}trace.txt"));
    let trace = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &format!("{prefix}dir2")])
            .arg(common::uvs_exe())
            .arg("trace")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&trace_out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (ok, stop) = lab.run("stop", &["dir1", "--kill"]);
    assert!(ok, "{stop}");
    // 3 × 1 s adverts + skew (0.61 s) after the last advert.
    wait_vrrp(&prefix, "dir2", "MASTER", 8);
    let (ok, check) = lab.run("check", &[]);
    drop(trace);
    let lines = std::fs::read_to_string(&trace_out).unwrap_or_default();
    let _ = std::fs::remove_file(&trace_out);
    assert!(ok, "check through dir2:\n{check}");
    assert_eq!(router_vip_mac(&prefix, vip), "02:00:00:00:03:00");
    assert!(
        lines.contains("VRRP VI_1 (vrid 51 on eth0, priority 100): BACKUP -> MASTER"),
        "{lines}"
    );
    assert!(lines.contains("new flow -> 10.2.0.1"), "{lines}");

    let (ok, start) = lab.run("start", &["dir1"]);
    assert!(ok, "{start}");
    wait_vrrp(&prefix, "dir1", "MASTER", 5);
    wait_vrrp(&prefix, "dir2", "BACKUP", 5);
    let (ok, check) = lab.run("check", &[]);
    assert!(ok, "check through dir1 again:\n{check}");
    lab.down();
}

fn curl_bodies(prefix: &str, url: &str, n: usize) -> Vec<String> {
    let client = format!("{prefix}client");
    let curl = ["curl", "-s", "--noproxy", "*", "--max-time", "2", url];
    (0..n)
        .map(|_| {
            common::run_in(&client, As::Root, &curl)
                .stdout
                .trim()
                .to_string()
        })
        .collect()
}

/// The health-sorry guide's walk: a stopped real server is quiesced and the other takes the
/// traffic; both stopped, the director's sorry server answers; one back, traffic returns.
#[test]
fn health_sorry_lab_fails_over_to_the_sorry_server_and_back() {
    let Some(ctx) = common::setup(45) else { return };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/labs/health-sorry.toml");
    let f = file.to_str().unwrap();
    let prefix = ctx.prefix.clone();
    let url = "http://10.1.0.100/";
    let (lab, ok, up) = LabUp::up(f, &prefix);
    assert!(ok, "lab up:\n{up}");
    let settle = |want: &[&str]| {
        let got = common::poll(std::time::Duration::from_secs(8), || {
            let b = curl_bodies(&prefix, url, 4);
            b.iter().all(|x| want.contains(&x.as_str())).then_some(b)
        });
        assert!(
            got.is_some(),
            "answers never all among {want:?}: {:?}",
            curl_bodies(&prefix, url, 4)
        );
    };
    let (ok, out) = lab.run("stop", &["rs1"]);
    assert!(ok, "{out}");
    settle(&["rs2"]);
    let (ok, out) = lab.run("stop", &["rs2"]);
    assert!(ok, "{out}");
    settle(&["sorry, down for maintenance"]);
    let (ok, out) = lab.run("start", &["rs1"]);
    assert!(ok, "{out}");
    settle(&["rs1"]);
    lab.down();
}
