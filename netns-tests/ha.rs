//! High availability (issue 8): two directors on the DR lab's LAN — `dir` (10.0.0.2) and a
//! second namespace `dir2` (10.0.0.3) this file adds — sharing the VIP with VRRP; uvs + uvs
//! with connection sync, and uvs + a real keepalived (Debian package, VRRP only).
//!
//! Measurements printed (and recorded in docs/ha.md): the VIP's unreachable window seen by a
//! client sending one request every 10 ms, and the established connections broken.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use uvs::lab::{Lab, LabOptions, addr, build_dr_lab, fmt_mac};

use crate::common::{self, Ctx, path_str, poll, pseudo_random};

const DIR2_ADDR: &str = "10.0.0.3";
const DIR2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0];

/// The `dir2` namespace (not known to `Lab`): removed on drop, after the lab killed what ran in it.
struct ExtraNs(String);

impl Drop for ExtraNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The DR lab plus `dir2` on the bridge (port "dir2"), web servers on rs1 and rs2.
fn ha_lab(ctx: &Ctx) -> (Lab, ExtraNs) {
    let mut lab = build_dr_lab(&ctx.prefix, &LabOptions::default())
        .unwrap_or_else(|e| panic!("building the DR lab: {e:#}"));
    let ns = lab.ns("dir2");
    ip(&["netns", "add", &ns]);
    let extra = ExtraNs(ns.clone());
    let sw = lab.ns("sw");
    ip(&[
        "-n",
        &sw,
        "link",
        "add",
        "dir2",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "address",
        &fmt_mac(DIR2_MAC),
        "netns",
        &ns,
    ]);
    ip(&["-n", &sw, "link", "set", "dir2", "master", "br0", "up"]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{DIR2_ADDR}/24"),
        "dev",
        "eth0",
    ]);
    ip(&["-n", &ns, "link", "set", "eth0", "up"]);
    ip(&[
        "-n",
        &ns,
        "route",
        "add",
        "default",
        "via",
        &addr::ROUTER_LAN.to_string(),
    ]);
    lab.exec_ok("dir2", &["sysctl", "-qw", "net.ipv4.ip_forward=0"])
        .expect("sysctl");
    for rs in ["rs1", "rs2"] {
        lab.start_builtin_http(rs, rs, 80, &common::uvs_exe())
            .unwrap_or_else(|e| panic!("web server on {rs}: {e:#}"));
    }
    (lab, extra)
}

fn vrrp_toml(prio: u8, version: u8, advert: &str, extra: &str, sync: bool) -> String {
    let mut s = format!(
        "interfaces = [\"eth0\"]\nworkers = 2\n\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\n\
         virtual_router_id = 51\npriority = {prio}\nversion = {version}\nadvert_int = {advert}\n\
         virtual_ipaddress = [\"{}\"]\n{extra}\n",
        addr::VIP
    );
    if sync {
        s.push_str("[sync]\ninterface = \"eth0\"\nsyncid = 1\nvrrp_instance = \"VI_1\"\n");
    }
    s
}

/// Starts `uvs run` in `host` with this TOML and the lab's rr rules; waits until ready.
fn start_uvs(lab: &mut Lab, host: &str, toml: &str, rules: &str) -> u32 {
    let dir = lab.dir().to_path_buf();
    let cfg = dir.join(format!("{host}.toml"));
    std::fs::write(&cfg, toml).unwrap();
    let rules_f = dir.join(format!("{host}.rules"));
    std::fs::write(&rules_f, rules).unwrap();
    let ready = dir.join(format!("{host}.ready"));
    let _ = std::fs::remove_file(&ready);
    let log = dir.join(format!("{host}.log"));
    let exe = common::uvs_exe();
    let pid = lab
        .spawn(
            host,
            &[
                path_str(&exe),
                "run",
                "--ready-file",
                path_str(&ready),
                "--config",
                path_str(&cfg),
                "--rules",
                path_str(&rules_f),
            ],
            &log,
        )
        .expect("spawning uvs");
    let ok = poll(Duration::from_secs(10), || ready.exists().then_some(()));
    assert!(
        ok.is_some(),
        "uvs in {host} not ready:\n{}",
        uvs::lab::tail(&log, 30)
    );
    pid
}

fn log_tail(lab: &Lab, host: &str) -> String {
    uvs::lab::tail(&lab.dir().join(format!("{host}.log")), 30)
}

fn status(lab: &Lab, host: &str) -> String {
    let exe = common::uvs_exe();
    let out = lab
        .exec(host, &[path_str(&exe), "status"])
        .expect("uvs status");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_state(lab: &Lab, host: &str, state: &str, within: Duration) {
    let got = poll(within, || {
        status(lab, host)
            .contains(&format!(": {state}"))
            .then_some(())
    });
    assert!(
        got.is_some(),
        "{host} not {state}: {}\n{}",
        status(lab, host),
        log_tail(lab, host)
    );
}

fn router_vip_mac(lab: &Lab) -> String {
    let out = lab
        .exec_ok("router", &["ip", "neigh", "show", &addr::VIP.to_string()])
        .unwrap_or_default();
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

/// SIGKILL, on a PID this test started (then reaped through the lab).
fn sigkill(lab: &mut Lab, pid: u32) {
    // SAFETY: plain syscall on a child PID the lab recorded and has not reaped.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    lab.kill(pid);
}

/// A client sending one request every 10 ms (fresh connection each, 200 ms timeout), logging
/// `<ns since epoch> ok|fail` lines.
fn start_prober(lab: &mut Lab, name: &str) -> (u32, PathBuf) {
    let out = lab.dir().join(format!("probe-{name}.txt"));
    let script = format!(
        "while :; do t=$(date +%s%N); if curl -s --noproxy '*' --max-time 0.2 -o /dev/null http://{}/; \
         then echo \"$t ok\"; else echo \"$t fail\"; fi; sleep 0.01; done >> {}",
        addr::VIP,
        path_str(&out)
    );
    let log = lab.dir().join(format!("probe-{name}.log"));
    let pid = lab.spawn("client", &["bash", "-c", &script], &log).unwrap();
    (pid, out)
}

/// (longest gap between two successful requests, failures after the first success that
/// follows `after_ns`, total ok, total fail).
fn probe_report(file: &Path, after_ns: u128) -> (Duration, usize, usize, usize) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let rows: Vec<(u128, bool)> = text
        .lines()
        .filter_map(|l| {
            let (t, r) = l.split_once(' ')?;
            Some((t.parse().ok()?, r == "ok"))
        })
        .collect();
    let oks: Vec<u128> = rows.iter().filter(|r| r.1).map(|r| r.0).collect();
    let gap = oks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let recovered = oks
        .iter()
        .copied()
        .find(|&t| t > after_ns)
        .unwrap_or(u128::MAX);
    let late_fail = rows.iter().filter(|r| !r.1 && r.0 > recovered).count();
    let fail = rows.iter().filter(|r| !r.1).count();
    (Duration::from_nanos(gap as u64), late_fail, oks.len(), fail)
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Starts a slow upload (`bytes` at `rate`) through the VIP: a long-lived connection whose
/// every segment goes through the director. Returns (pid, output file, expected tail).
fn start_slow_upload(lab: &mut Lab, tag: &str, bytes: usize, rate: &str) -> (u32, PathBuf, String) {
    let data = pseudo_random(bytes, 0x5eed + bytes as u64);
    let file = lab.dir().join(format!("up-{tag}.bin"));
    std::fs::write(&file, &data).unwrap();
    let out = lab.dir().join(format!("up-{tag}.out"));
    let at = format!("@{}", path_str(&file));
    let url = format!("http://{}/", addr::VIP);
    let pid = lab
        .spawn(
            "client",
            &[
                "curl",
                "-sS",
                "--noproxy",
                "*",
                "--max-time",
                "60",
                "--limit-rate",
                rate,
                "-o",
                path_str(&out),
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &at,
                &url,
            ],
            &lab.dir().join(format!("up-{tag}.log")),
        )
        .unwrap();
    let want = format!(
        "bytes={} fnv={:016x}",
        data.len(),
        uvs::lab::responder::fnv1a64(&data)
    );
    (pid, out, want)
}

fn wait_exit(lab: &mut Lab, pid: u32, within: Duration) -> bool {
    poll(within, || (!lab.is_running(pid)).then_some(())).is_some()
}

#[test]
fn uvs_uvs_failover_with_sync_keeps_connections() {
    let Some(ctx) = common::setup(80) else { return };
    let (mut lab, _dir2) = ha_lab(&ctx);
    let rules = common::dr_rules('t', 80);
    let m = start_uvs(&mut lab, "dir", &vrrp_toml(150, 3, "0.1", "", true), &rules);
    wait_state(&lab, "dir", "MASTER", Duration::from_secs(3));
    let _b = start_uvs(
        &mut lab,
        "dir2",
        &vrrp_toml(100, 3, "0.1", "", true),
        &rules,
    );
    wait_state(&lab, "dir2", "BACKUP", Duration::from_secs(3));
    assert_eq!(common::curl_vip(&lab, 2).len(), 2);
    assert_eq!(router_vip_mac(&lab), lab.mac_str("dir", "eth0").unwrap());

    // Long-lived connections: three slow uploads of ~4 s each, started before the failure.
    let uploads: Vec<_> = (0..3)
        .map(|i| start_slow_upload(&mut lab, &format!("u{i}"), 200_000, "50K"))
        .collect();
    let (probe, probe_file) = start_prober(&mut lab, "uvs-uvs");
    thread::sleep(Duration::from_millis(1500));
    let killed_at = now_ns();
    let t0 = Instant::now();
    sigkill(&mut lab, m);
    wait_state(&lab, "dir2", "MASTER", Duration::from_secs(3));
    let takeover = t0.elapsed();
    thread::sleep(Duration::from_secs(2));
    let mut broken = 0;
    for (pid, out, want) in &uploads {
        assert!(
            wait_exit(&mut lab, *pid, Duration::from_secs(30)),
            "upload still running"
        );
        let body = std::fs::read_to_string(out).unwrap_or_default();
        if !body.trim().ends_with(want.as_str()) {
            broken += 1;
            eprintln!("broken upload: got {body:?}, want …{want}");
        }
    }
    lab.kill(probe);
    let (gap, late_fail, ok, fail) = probe_report(&probe_file, killed_at);
    let metrics = lab
        .curl("dir2", "http://127.0.0.1:9477/metrics", &[])
        .unwrap_or_default();
    let adopted = common::metric(&metrics, "uvs_sync_adopted_total", &[]);
    eprintln!(
        "HA uvs+uvs (v3, 100 ms adverts, sync): takeover seen by `uvs status` after {takeover:?}; \
         unreachable window {gap:?} ({ok} ok / {fail} failed probes); broken established \
         connections {broken}/3; synced flows adopted {adopted}"
    );
    assert_eq!(
        router_vip_mac(&lab),
        fmt_mac(DIR2_MAC),
        "router's VIP entry moved"
    );
    assert_eq!(
        broken,
        0,
        "established connections broken by the failover\n{}",
        log_tail(&lab, "dir2")
    );
    assert_eq!(late_fail, 0, "requests failed after the takeover window");
    assert!(
        gap < Duration::from_millis(1000),
        "unreachable window {gap:?}"
    );
    assert!(adopted >= 3.0, "synced flows adopted: {adopted}\n{metrics}");
}

#[test]
fn uvs_graceful_stop_sends_priority_zero() {
    let Some(ctx) = common::setup(81) else { return };
    let (mut lab, _dir2) = ha_lab(&ctx);
    let rules = common::dr_rules('t', 80);
    // v2, 1 s adverts: the peer would need 3.6 s without the priority-0 advert.
    let m = start_uvs(
        &mut lab,
        "dir",
        &vrrp_toml(150, 2, "1", "auth_pass = \"1111\"", false),
        &rules,
    );
    wait_state(&lab, "dir", "MASTER", Duration::from_secs(5));
    start_uvs(
        &mut lab,
        "dir2",
        &vrrp_toml(100, 2, "1", "auth_pass = \"1111\"", false),
        &rules,
    );
    wait_state(&lab, "dir2", "BACKUP", Duration::from_secs(5));
    thread::sleep(Duration::from_millis(1500));
    let t0 = Instant::now();
    lab.kill(m); // SIGTERM: graceful
    let m2 = lab
        .curl("dir2", "http://127.0.0.1:9477/metrics", &[])
        .unwrap_or_default();
    eprintln!(
        "{}",
        m2.lines()
            .filter(|l| l.starts_with("uvs_vrrp"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    wait_state(&lab, "dir2", "MASTER", Duration::from_secs(3));
    let took = t0.elapsed();
    eprintln!("HA graceful stop (v2, 1 s adverts): peer MASTER after {took:?}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert_eq!(common::curl_vip(&lab, 2).len(), 2);
}

fn keepalived_path() -> Option<PathBuf> {
    [
        "/usr/sbin/keepalived",
        "/sbin/keepalived",
        "/usr/local/sbin/keepalived",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// keepalived (VRRP only) in `dir2`, one instance: its own process group, killed by PID.
fn start_keepalived(lab: &mut Lab, ka: &Path, conf: &str) -> u32 {
    let dir = lab.dir().to_path_buf();
    let cfg = dir.join("keepalived.conf");
    std::fs::write(&cfg, conf).unwrap();
    let log = dir.join("keepalived.log");
    lab.spawn(
        "dir2",
        &[
            path_str(ka),
            "-n",
            "-l",
            "-D",
            "-P",
            "-f",
            path_str(&cfg),
            "-p",
            path_str(&dir.join("keepalived.pid")),
            "-r",
            path_str(&dir.join("keepalived-vrrp.pid")),
        ],
        &log,
    )
    .expect("starting keepalived")
}

fn ka_has_vip(lab: &Lab) -> bool {
    lab.exec_ok("dir2", &["ip", "-4", "addr", "show", "dev", "eth0"])
        .unwrap_or_default()
        .contains(&format!("{}/", addr::VIP))
}

fn wait_ka(lab: &Lab, master: bool, within: Duration) {
    let ok = poll(within, || (ka_has_vip(lab) == master).then_some(()));
    assert!(
        ok.is_some(),
        "keepalived {} expected\n{}",
        if master { "MASTER" } else { "BACKUP" },
        uvs::lab::tail(&lab.dir().join("keepalived.log"), 30)
    );
}

/// uvs and a real keepalived (VRRP only) on one LAN: both versions, both roles, preempt.
#[test]
fn uvs_keepalived_interop() {
    let Some(ctx) = common::setup(82) else { return };
    let Some(ka) = keepalived_path() else {
        eprintln!("skipping: keepalived not installed (apt-get install keepalived)");
        return;
    };
    let (mut lab, _dir2) = ha_lab(&ctx);
    // What keepalived's host serves once it holds the VIP (it has no IPVS here).
    lab.start_builtin_http("dir2", "ka", 80, &common::uvs_exe())
        .expect("responder in dir2");
    let rules = common::dr_rules('t', 80);
    for (version, advert, auth_uvs, auth_ka) in [
        (
            2u8,
            "1",
            "auth_pass = \"1111\"",
            "authentication {\n auth_type PASS\n auth_pass 1111\n }",
        ),
        (3u8, "0.1", "", ""),
    ] {
        let conf = format!(
            "global_defs {{\n router_id ka_{version}\n vrrp_garp_master_delay 5\n}}\n\
             vrrp_instance VI_1 {{\n state BACKUP\n interface eth0\n virtual_router_id 51\n \
             version {version}\n priority 100\n advert_int {advert}\n {auth_ka}\n \
             virtual_ipaddress {{\n {}/32\n }}\n}}\n",
            addr::VIP
        );
        // uvs MASTER (150) and keepalived BACKUP (100).
        let u = start_uvs(
            &mut lab,
            "dir",
            &vrrp_toml(150, version, advert, auth_uvs, false),
            &rules,
        );
        wait_state(&lab, "dir", "MASTER", Duration::from_secs(5));
        let k = start_keepalived(&mut lab, &ka, &conf);
        thread::sleep(Duration::from_secs(2));
        wait_ka(&lab, false, Duration::from_secs(1));
        assert!(
            status(&lab, "dir").contains(": MASTER"),
            "exactly one MASTER"
        );
        let answers = common::curl_vip(&lab, 2);
        assert!(answers.iter().all(|a| a.starts_with("rs")), "{answers:?}");

        // Failure of uvs: keepalived takes over.
        let (probe, file) = start_prober(&mut lab, &format!("ka{version}"));
        thread::sleep(Duration::from_millis(1000));
        let killed_at = now_ns();
        sigkill(&mut lab, u);
        wait_ka(&lab, true, Duration::from_secs(5));
        thread::sleep(Duration::from_millis(1500));
        lab.kill(probe);
        let (gap, late, ok, fail) = probe_report(&file, killed_at);
        eprintln!(
            "HA uvs→keepalived (v{version}, advert_int {advert}): unreachable window {gap:?} \
             ({ok} ok / {fail} failed probes, {late} after recovery)"
        );
        assert_eq!(late, 0);
        assert_eq!(common::curl_vip(&lab, 1), vec!["ka".to_string()]);
        assert_eq!(router_vip_mac(&lab), fmt_mac(DIR2_MAC));

        // uvs back with the higher priority: it preempts keepalived (keepalived's rules).
        let (probe, file) = start_prober(&mut lab, &format!("back{version}"));
        let back_at = now_ns();
        let u = start_uvs(
            &mut lab,
            "dir",
            &vrrp_toml(150, version, advert, auth_uvs, false),
            &rules,
        );
        wait_state(&lab, "dir", "MASTER", Duration::from_secs(6));
        wait_ka(&lab, false, Duration::from_secs(3));
        thread::sleep(Duration::from_millis(1000));
        lab.kill(probe);
        let (gap2, late2, _, _) = probe_report(&file, back_at);
        eprintln!("HA keepalived→uvs preemption (v{version}): unreachable window {gap2:?}");
        assert_eq!(late2, 0);
        assert_eq!(router_vip_mac(&lab), lab.mac_str("dir", "eth0").unwrap());
        assert!(common::curl_vip(&lab, 1)[0].starts_with("rs"));

        // keepalived dies: uvs stays MASTER; then uvs with nopreempt must not take over from a
        // lower-priority keepalived MASTER.
        lab.kill(k);
        lab.kill(u);
        let k = start_keepalived(&mut lab, &ka, &conf);
        wait_ka(&lab, true, Duration::from_secs(6));
        let u = start_uvs(
            &mut lab,
            "dir",
            &vrrp_toml(
                150,
                version,
                advert,
                &format!("{auth_uvs}\nnopreempt = true"),
                false,
            ),
            &rules,
        );
        thread::sleep(Duration::from_secs(5));
        assert!(
            status(&lab, "dir").contains(": BACKUP"),
            "nopreempt: {}",
            status(&lab, "dir")
        );
        assert!(ka_has_vip(&lab), "keepalived stays MASTER");
        lab.kill(u);
        lab.kill(k);
        thread::sleep(Duration::from_millis(300));
    }
}
