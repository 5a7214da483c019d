//! Every lab file in configs/labs/ comes up with `uvs lab up`, passes its own smoke check
//! (requests reach every expected real server), and `uvs lab down` leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use uvs::lab::spec::LabSpec;

use crate::common;

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
        let (ok, up) = uvs(&["lab", "up", f, "--prefix", &prefix]);
        let result = if !ok {
            Err(format!("lab up {f}:\n{up}"))
        } else {
            let (ok_s, status) = uvs(&["lab", "status", f, "--prefix", &prefix]);
            let (ok_c, check) = uvs(&["lab", "check", f, "--prefix", &prefix]);
            if ok_s && ok_c {
                Ok(())
            } else {
                Err(format!("{f}: status:\n{status}\ncheck:\n{check}"))
            }
        };
        let (ok_d, down) = uvs(&["lab", "down", f, "--prefix", &prefix]);
        if let Err(e) = result {
            panic!("{e}");
        }
        assert!(ok_d, "lab down {f}:\n{down}");
        let left = leftovers(&prefix);
        assert!(left.is_empty(), "{f}: left behind {left:?}");
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
    let (ok, down) = uvs(&["lab", "down", f, "--prefix", &prefix]);
    assert!(ok, "{down}");
    let left = leftovers(&prefix);
    assert!(left.is_empty(), "left behind {left:?}");
}

/// `uvs status` in a lab namespace.
fn vrrp_state(prefix: &str, host: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("{prefix}{host}")])
        .arg(common::uvs_exe())
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .expect("uvs status");
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    let out = Command::new("ip")
        .args(["-n", &format!("{prefix}router"), "neigh", "show", vip])
        .output()
        .expect("ip neigh");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or("")
        .to_string()
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
    let (ok, up) = uvs(&["lab", "up", f, "--prefix", &prefix]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(ok, "lab up:\n{up}");
        wait_vrrp(&prefix, "dir1", "MASTER", 5);
        wait_vrrp(&prefix, "dir2", "BACKUP", 5);
        let (ok, check) = uvs(&["lab", "check", f, "--prefix", &prefix]);
        assert!(ok, "check through dir1:\n{check}");
        assert_eq!(router_vip_mac(&prefix, vip), "02:00:00:00:02:00");

        // A trace on the BACKUP, started by us, killed by its PID.
        let trace_out = std::env::temp_dir().join(format!("{prefix}trace.txt"));
        let mut trace = Command::new("ip")
            .args(["netns", "exec", &format!("{prefix}dir2")])
            .arg(common::uvs_exe())
            .arg("trace")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&trace_out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let (ok, stop) = uvs(&["lab", "stop", f, "dir1", "--kill", "--prefix", &prefix]);
        assert!(ok, "{stop}");
        // 3 × 1 s adverts + skew (0.61 s) after the last advert.
        wait_vrrp(&prefix, "dir2", "MASTER", 8);
        let (ok, check) = uvs(&["lab", "check", f, "--prefix", &prefix]);
        let _ = trace.kill();
        let _ = trace.wait();
        let lines = std::fs::read_to_string(&trace_out).unwrap_or_default();
        let _ = std::fs::remove_file(&trace_out);
        assert!(ok, "check through dir2:\n{check}");
        assert_eq!(router_vip_mac(&prefix, vip), "02:00:00:00:03:00");
        assert!(
            lines.contains("VRRP VI_1 (vrid 51 on eth0, priority 100): BACKUP -> MASTER"),
            "{lines}"
        );
        assert!(lines.contains("new flow -> 10.2.0.1"), "{lines}");

        let (ok, start) = uvs(&["lab", "start", f, "dir1", "--prefix", &prefix]);
        assert!(ok, "{start}");
        wait_vrrp(&prefix, "dir1", "MASTER", 5);
        wait_vrrp(&prefix, "dir2", "BACKUP", 5);
        let (ok, check) = uvs(&["lab", "check", f, "--prefix", &prefix]);
        assert!(ok, "check through dir1 again:\n{check}");
    }));
    let (ok_d, down) = uvs(&["lab", "down", f, "--prefix", &prefix]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(ok_d, "{down}");
    let left = leftovers(&prefix);
    assert!(left.is_empty(), "left behind {left:?}");
}

fn curl_bodies(prefix: &str, url: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let out = Command::new("ip")
                .args(["netns", "exec", &format!("{prefix}client")])
                .args(["curl", "-s", "--noproxy", "*", "--max-time", "2", url])
                .stdin(Stdio::null())
                .output()
                .expect("curl");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
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
    let (ok, up) = uvs(&["lab", "up", f, "--prefix", &prefix]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
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
        let (ok, out) = uvs(&["lab", "stop", f, "rs1", "--prefix", &prefix]);
        assert!(ok, "{out}");
        settle(&["rs2"]);
        let (ok, out) = uvs(&["lab", "stop", f, "rs2", "--prefix", &prefix]);
        assert!(ok, "{out}");
        settle(&["sorry, down for maintenance"]);
        let (ok, out) = uvs(&["lab", "start", f, "rs1", "--prefix", &prefix]);
        assert!(ok, "{out}");
        settle(&["rs1"]);
    }));
    let (ok_d, down) = uvs(&["lab", "down", f, "--prefix", &prefix]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(ok_d, "{down}");
    let left = leftovers(&prefix);
    assert!(left.is_empty(), "left behind {left:?}");
}
