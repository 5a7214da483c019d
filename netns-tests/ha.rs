//! High availability: two directors on the DR lab's LAN — `dir` (10.0.0.2) and a
//! second namespace `dir2` (10.0.0.3) this file adds — sharing the VIP with VRRP; uvs + uvs
//! with connection sync, and uvs + a real keepalived (Debian package, VRRP only).
//!
//! Measurements printed (and recorded in docs/ha.md): the VIP's unreachable window seen by a
//! client sending one request every 10 ms, and the established connections broken.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use uvs::lab::{Lab, addr, fmt_mac};

use crate::common::{self, Ctx, Director, path_str, poll};

const DIR2_ADDR: &str = "10.0.0.3";
const DIR2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0];

/// The `dir2` namespace (not known to `Lab`): removed on drop. Bound before the lab, so
/// dropped after it, once the lab has ended what ran in it.
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
fn ha_lab(ctx: &Ctx) -> (ExtraNs, Lab) {
    let mut lab = ctx.dr_lab();
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
    (extra, lab)
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

/// Starts `uvs run` in `host` with this TOML and these rules; waits until ready.
fn start_uvs(lab: &mut Lab, host: &str, toml: &str, rules: &str) -> Director {
    Director::launch()
        .on(host)
        .config(toml)
        .rules(rules)
        .start(lab)
}

fn wait_state(d: &Director, state: &str, within: Duration) {
    let got = poll(within, || {
        d.uvs_status().contains(&format!(": {state}")).then_some(())
    });
    assert!(
        got.is_some(),
        "{} not {state}: {}\n{}",
        d.ns(),
        d.uvs_status(),
        d.tail()
    );
}

fn router_vip_mac(lab: &Lab) -> String {
    common::neigh(&lab.ns("router"), &addr::VIP.to_string())
        .map(|(mac, _)| mac)
        .unwrap_or_default()
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

/// A slow upload to the VIP (see [`common::start_slow_upload`]).
fn start_slow_upload(lab: &mut Lab, tag: &str, bytes: usize, rate: &str) -> (u32, PathBuf, String) {
    common::start_slow_upload(lab, &format!("http://{}/", addr::VIP), tag, bytes, rate)
}

fn broken_uploads(lab: &mut Lab, uploads: &[(u32, PathBuf, String)]) -> usize {
    common::broken_uploads(lab, uploads)
}

#[test]
fn uvs_uvs_failover_with_sync_keeps_connections() {
    let Some(ctx) = common::setup(80) else { return };
    let (_dir2, mut lab) = ha_lab(&ctx);
    let rules = common::dr_rules('t', 80);
    let m = start_uvs(&mut lab, "dir", &vrrp_toml(150, 3, "0.1", "", true), &rules);
    wait_state(&m, "MASTER", Duration::from_secs(3));
    let b = start_uvs(
        &mut lab,
        "dir2",
        &vrrp_toml(100, 3, "0.1", "", true),
        &rules,
    );
    wait_state(&b, "BACKUP", Duration::from_secs(3));
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
    m.kill(&mut lab);
    wait_state(&b, "MASTER", Duration::from_secs(3));
    let takeover = t0.elapsed();
    thread::sleep(Duration::from_secs(2));
    let broken = broken_uploads(&mut lab, &uploads);
    lab.kill(probe);
    let (gap, late_fail, ok, fail) = probe_report(&probe_file, killed_at);
    let metrics = b.try_scrape().unwrap_or_default();
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
        b.tail()
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
    let (_dir2, mut lab) = ha_lab(&ctx);
    let rules = common::dr_rules('t', 80);
    // v2, 1 s adverts: the peer would need 3.6 s without the priority-0 advert.
    let m = start_uvs(
        &mut lab,
        "dir",
        &vrrp_toml(150, 2, "1", "auth_pass = \"1111\"", false),
        &rules,
    );
    wait_state(&m, "MASTER", Duration::from_secs(5));
    let b = start_uvs(
        &mut lab,
        "dir2",
        &vrrp_toml(100, 2, "1", "auth_pass = \"1111\"", false),
        &rules,
    );
    wait_state(&b, "BACKUP", Duration::from_secs(5));
    thread::sleep(Duration::from_millis(1500));
    let t0 = Instant::now();
    m.stop(&mut lab);
    let m2 = b.try_scrape().unwrap_or_default();
    eprintln!(
        "{}",
        m2.lines()
            .filter(|l| l.starts_with("uvs_vrrp"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    wait_state(&b, "MASTER", Duration::from_secs(3));
    let took = t0.elapsed();
    eprintln!("HA graceful stop (v2, 1 s adverts): peer MASTER after {took:?}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert_eq!(common::curl_vip(&lab, 2).len(), 2);
}

/// keepalived's path; `None`: skip the test, which under CI is a failure instead.
pub(crate) fn keepalived_or_skip() -> Option<PathBuf> {
    let ka = [
        "/usr/sbin/keepalived",
        "/sbin/keepalived",
        "/usr/local/sbin/keepalived",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if ka.is_none() {
        // scripts/deps.sh installs keepalived.
        assert!(
            !common::under_ci(),
            "keepalived not installed (apt-get install keepalived)"
        );
        eprintln!("skipping: keepalived not installed (apt-get install keepalived)");
    }
    ka
}

/// [`ha_lab`] with what keepalived's host serves once it holds the VIP (it has no IPVS here).
fn keepalived_lab(ctx: &Ctx) -> (ExtraNs, Lab) {
    let (dir2, mut lab) = ha_lab(ctx);
    lab.start_builtin_http("dir2", "ka", 80, &common::uvs_exe())
        .expect("responder in dir2");
    (dir2, lab)
}

/// What the keepalived tests run through: (VRRP version, advert_int, uvs's auth line,
/// keepalived's authentication block).
const KEEPALIVED_VERSIONS: [(u8, &str, &str, &str); 2] = [
    (
        2,
        "1",
        "auth_pass = \"1111\"",
        "authentication {\n auth_type PASS\n auth_pass 1111\n }",
    ),
    (3, "0.1", "", ""),
];

/// keepalived.conf with one VRRP instance for the VIP, starting as BACKUP; `global` is added
/// to global_defs.
fn keepalived_conf(version: u8, priority: u8, advert: &str, auth: &str, global: &str) -> String {
    format!(
        "global_defs {{\n router_id ka_{version}\n{global}}}\n\
         vrrp_instance VI_1 {{\n state BACKUP\n interface eth0\n virtual_router_id 51\n \
         version {version}\n priority {priority}\n advert_int {advert}\n {auth}\n \
         virtual_ipaddress {{\n {}/32\n }}\n}}\n",
        addr::VIP
    )
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
    let Some(ka) = keepalived_or_skip() else {
        return;
    };
    let (_dir2, mut lab) = keepalived_lab(&ctx);
    let rules = common::dr_rules('t', 80);
    for (version, advert, auth_uvs, auth_ka) in KEEPALIVED_VERSIONS {
        let conf = keepalived_conf(version, 100, advert, auth_ka, " vrrp_garp_master_delay 5\n");
        // uvs MASTER (150) and keepalived BACKUP (100).
        let u = start_uvs(
            &mut lab,
            "dir",
            &vrrp_toml(150, version, advert, auth_uvs, false),
            &rules,
        );
        wait_state(&u, "MASTER", Duration::from_secs(5));
        let k = start_keepalived(&mut lab, &ka, &conf);
        thread::sleep(Duration::from_secs(2));
        wait_ka(&lab, false, Duration::from_secs(1));
        assert!(u.uvs_status().contains(": MASTER"), "exactly one MASTER");
        let answers = common::curl_vip(&lab, 2);
        assert!(answers.iter().all(|a| a.starts_with("rs")), "{answers:?}");

        // Failure of uvs: keepalived takes over.
        let (probe, file) = start_prober(&mut lab, &format!("ka{version}"));
        thread::sleep(Duration::from_millis(1000));
        let killed_at = now_ns();
        u.kill(&mut lab);
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
        let u = start_uvs(
            &mut lab,
            "dir",
            &vrrp_toml(150, version, advert, auth_uvs, false),
            &rules,
        );
        wait_state(&u, "MASTER", Duration::from_secs(6));
        wait_ka(&lab, false, Duration::from_secs(3));
        // keepalived serves until uvs preempts it, so the switch-over (and any probe it
        // costs) comes after the first success following uvs's start: count failures only
        // once both sides have settled.
        let settled_at = now_ns();
        thread::sleep(Duration::from_millis(1000));
        lab.kill(probe);
        let (gap2, late2, _, _) = probe_report(&file, settled_at);
        eprintln!("HA keepalived→uvs preemption (v{version}): unreachable window {gap2:?}");
        assert_eq!(late2, 0);
        assert_eq!(router_vip_mac(&lab), lab.mac_str("dir", "eth0").unwrap());
        assert!(common::curl_vip(&lab, 1)[0].starts_with("rs"));

        // keepalived dies: uvs stays MASTER; then uvs with nopreempt must not take over from a
        // lower-priority keepalived MASTER.
        lab.kill(k);
        u.stop(&mut lab);
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
            u.uvs_status().contains(": BACKUP"),
            "nopreempt: {}",
            u.uvs_status()
        );
        assert!(ka_has_vip(&lab), "keepalived stays MASTER");
        u.stop(&mut lab);
        lab.kill(k);
        thread::sleep(Duration::from_millis(300));
    }
}

/// `uvsadm` with `args` split at spaces: (exit code, stdout, stderr).
fn uvsadm(d: &Director, args: &str) -> (i32, String, String) {
    let out = d.uvsadm(&args.split_whitespace().collect::<Vec<_>>());
    (out.code, out.stdout, out.stderr)
}

fn daemon_line(role: &str, ifc: &str, syncid: u8) -> String {
    format!(
        "{role} sync daemon (mcast={ifc}, syncid={syncid}, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
    )
}

/// `uvsadm --start-daemon/--stop-daemon` on directors started without HA, `-L --daemon` in
/// ipvsadm's format, the kernel's refusals, and records really flowing master → backup.
#[test]
fn uvsadm_start_and_stop_the_sync_daemon() {
    let Some(ctx) = common::setup(83) else { return };
    let (_dir2, mut lab) = ha_lab(&ctx);
    let plain = "interfaces = [\"eth0\"]\nworkers = 2\n";
    let d = start_uvs(&mut lab, "dir", plain, &common::dr_rules('t', 80));
    // dir2 serves nothing (it would answer ARP for the VIP too): a pure sync backup.
    let d2 = start_uvs(&mut lab, "dir2", plain, "");
    assert_eq!(uvsadm(&d, "-L --daemon"), (0, String::new(), String::new()));
    let (c, _, e) = uvsadm(&d, "--stop-daemon master");
    assert_eq!((c, e.as_str()), (255, "No daemon is running\n"));
    let (c, _, e) = uvsadm(&d, "--start-daemon master --mcast-interface nope0");
    assert_eq!((c, e.as_str()), (255, "No such device\n"));

    let (c, _, e) = uvsadm(
        &d,
        "--start-daemon master --mcast-interface eth0 --syncid 5",
    );
    assert_eq!((c, e.as_str()), (0, ""));
    let (c, _, e) = uvsadm(
        &d2,
        "--start-daemon=backup --mcast-interface=eth0 --syncid=5",
    );
    assert_eq!((c, e.as_str()), (0, ""));
    assert_eq!(
        uvsadm(&d, "-L --daemon").1,
        daemon_line("master", "eth0", 5)
    );
    assert_eq!(
        uvsadm(&d2, "-L --daemon").1,
        daemon_line("backup", "eth0", 5)
    );
    let (c, _, e) = uvsadm(
        &d,
        "--start-daemon master --mcast-interface eth0 --syncid 5",
    );
    assert_eq!((c, e.as_str()), (255, "Daemon has already run\n"));

    // Connections through dir reach dir2 as sync records.
    assert_eq!(common::curl_vip(&lab, 4).len(), 4);
    let got = poll(Duration::from_secs(3), || {
        let m = d2.try_scrape()?;
        let n = common::metric(&m, "uvs_sync_records_received_total", &[]);
        (n >= 4.0).then_some(n)
    });
    assert!(
        got.is_some(),
        "no sync records on dir2: {}",
        d2.uvs_status()
    );
    assert!(
        d2.uvs_status()
            .contains("synced connections waiting for adoption")
    );

    // Both roles on one director, then stop them one by one.
    let (c, _, _) = uvsadm(
        &d,
        "--start-daemon backup --mcast-interface eth0 --syncid 5",
    );
    assert_eq!(c, 0);
    assert_eq!(
        uvsadm(&d, "-L --daemon").1,
        daemon_line("master", "eth0", 5) + &daemon_line("backup", "eth0", 5)
    );
    assert_eq!(uvsadm(&d, "--stop-daemon master").0, 0);
    assert_eq!(
        uvsadm(&d, "-L --daemon").1,
        daemon_line("backup", "eth0", 5)
    );
    let (c, _, e) = uvsadm(&d, "--stop-daemon master");
    assert_eq!((c, e.as_str()), (255, "No daemon is running\n"));
    assert_eq!(uvsadm(&d, "--stop-daemon backup").0, 0);
    assert_eq!(uvsadm(&d, "-L --daemon").1, "");
    // Started again after a full stop: a fresh daemon, other interface settings allowed.
    assert_eq!(uvsadm(&d, "--start-daemon master").0, 0);
    assert_eq!(
        uvsadm(&d, "-L --daemon").1,
        daemon_line("master", "eth0", 0)
    );
}

/// An nftables table in `host` dropping VRRP both ways (protocol 112), named per test.
fn block_vrrp(lab: &Lab, host: &str, table: &str) {
    let script = format!(
        "table ip {table} {{\n chain i {{ type filter hook input priority -300; ip protocol 112 drop; }}\n \
         chain o {{ type filter hook output priority -300; ip protocol 112 drop; }}\n}}\n"
    );
    let f = lab.dir().join(format!("{host}-{table}.nft"));
    std::fs::write(&f, script).unwrap();
    lab.exec_ok(host, &["nft", "-f", path_str(&f)])
        .expect("nft block");
}

fn unblock_vrrp(lab: &Lab, host: &str, table: &str) {
    let _ = lab.exec(host, &["nft", "delete", "table", "ip", table]);
}

/// Packets of a pcap as (seconds since the capture's first packet, tcpdump line).
fn pcap_lines(lab: &Lab, pcap: &Path) -> Vec<(f64, String)> {
    let lines = lab.tcpdump_read(pcap).unwrap_or_default();
    let t = |l: &str| -> Option<f64> {
        let ts = l.split_whitespace().next()?;
        let mut p = ts.split(':');
        let (h, m, s): (f64, f64, f64) = (
            p.next()?.parse().ok()?,
            p.next()?.parse().ok()?,
            p.next()?.parse().ok()?,
        );
        Some(h * 3600.0 + m * 60.0 + s)
    };
    let t0 = lines.first().and_then(|l| t(l)).unwrap_or(0.0);
    lines
        .into_iter()
        .filter_map(|l| Some((t(&l)? - t0, l)))
        .collect()
}

/// Split brain: adverts blocked both ways (nft in both directors), both become MASTER; once
/// restored, one MASTER within a few advert intervals and the survivor re-announces the VIP.
#[test]
fn split_brain_converges_and_the_survivor_reannounces() {
    let Some(ctx) = common::setup(84) else { return };
    let (_dir2, mut lab) = ha_lab(&ctx);
    let rules = common::dr_rules('t', 80);
    // No second gratuitous burst: every GARP seen later comes from a state change.
    let extra = "\n[arp]\ngarp_delay_secs = 0\n";
    let toml = |p| {
        let v = vrrp_toml(p, 3, "0.1", "", false);
        // [arp] must precede [[vrrp]] in TOML's top-level table order: insert after workers.
        v.replacen("workers = 2\n", &format!("workers = 2\n{extra}"), 1)
    };
    let d = start_uvs(&mut lab, "dir", &toml(150), &rules);
    wait_state(&d, "MASTER", Duration::from_secs(3));
    let d2 = start_uvs(&mut lab, "dir2", &toml(100), &rules);
    wait_state(&d2, "BACKUP", Duration::from_secs(3));
    let table = format!("{}blk", ctx.prefix.replace('-', "_"));
    // A neighbour entry on the router (Linux updates, but does not create, one from a GARP).
    assert_eq!(common::curl_vip(&lab, 2).len(), 2);
    assert_eq!(router_vip_mac(&lab), lab.mac_str("dir", "eth0").unwrap());

    block_vrrp(&lab, "dir", &table);
    block_vrrp(&lab, "dir2", &table);
    let t0 = Instant::now();
    wait_state(&d2, "MASTER", Duration::from_secs(3));
    let split_after = t0.elapsed();
    assert!(d.uvs_status().contains(": MASTER"), "both MASTER");
    // dir2's gratuitous ARPs moved the router to it.
    let moved = poll(Duration::from_secs(2), || {
        (router_vip_mac(&lab) == fmt_mac(DIR2_MAC)).then_some(())
    });
    assert!(moved.is_some(), "router did not follow dir2's GARP");
    thread::sleep(Duration::from_millis(500));

    let pcap = lab.dir().join("split.pcap");
    let cap = lab
        .tcpdump_start("router", "eth1", "arp or ip proto 112", &pcap)
        .expect("tcpdump");
    thread::sleep(Duration::from_millis(200));
    unblock_vrrp(&lab, "dir", &table);
    unblock_vrrp(&lab, "dir2", &table);
    let t1 = Instant::now();
    wait_state(&d2, "BACKUP", Duration::from_secs(3));
    let converged = t1.elapsed();
    thread::sleep(Duration::from_millis(1500));
    common::stop_capture(&mut lab, cap);
    let pkts = pcap_lines(&lab, &pcap);
    let dir_mac = lab.mac_str("dir", "eth0").unwrap();
    // keepalived's GARP: "Request who-has VIP (ff:ff:ff:ff:ff:ff) tell VIP".
    let (who, tell) = (
        format!("who-has {} ", addr::VIP),
        format!("tell {},", addr::VIP),
    );
    let reannounced = pkts
        .iter()
        .filter(|(_, l)| {
            l.contains(&format!(" {dir_mac} > ff:ff:ff:ff:ff:ff"))
                && l.contains(&who)
                && l.contains(&tell)
        })
        .count();
    // After convergence only dir advertises.
    let last_dir2_advert = pkts
        .iter()
        .filter(|(_, l)| l.contains(&format!("{DIR2_ADDR} > 224.0.0.18")))
        .map(|(t, _)| *t)
        .fold(0.0, f64::max);
    let dir_adverts_after = pkts
        .iter()
        .filter(|(t, l)| *t > last_dir2_advert && l.contains("10.0.0.2 > 224.0.0.18"))
        .count();
    eprintln!(
        "HA split brain (v3, 100 ms adverts): both MASTER {split_after:?} after blocking; one \
         MASTER {converged:?} after restoring; survivor's gratuitous ARPs: {reannounced}; \
         last dir2 advert at +{last_dir2_advert:.3} s, then {dir_adverts_after} from dir only"
    );
    assert!(d.uvs_status().contains(": MASTER"));
    assert!(converged < Duration::from_millis(1000), "{converged:?}");
    assert!(
        reannounced >= 1,
        "no re-announcement seen by the router:\n{pkts:#?}"
    );
    assert!(dir_adverts_after >= 5, "{pkts:#?}");
    assert_eq!(router_vip_mac(&lab), dir_mac, "router back on the survivor");
    assert_eq!(common::curl_vip(&lab, 2).len(), 2);
}

/// `mh` + `sloppy_tcp`, no sync: a long-lived connection through director 1 keeps working
/// after director 1 is SIGKILLed: director 2 maps its ACKs (no SYN: sloppy_tcp) to the same
/// real server (the same mh table: same reals in the same order).
#[test]
fn mh_and_sloppy_tcp_keep_connections_without_sync() {
    let Some(ctx) = common::setup(85) else { return };
    let (_dir2, mut lab) = ha_lab(&ctx);
    let rules = common::dr_rules('t', 80).replace("-s rr", "-s mh");
    let toml = |p| {
        vrrp_toml(p, 3, "0.1", "", false).replacen(
            "workers = 2\n",
            "workers = 2\n\n[flow_table]\nsloppy_tcp = true\n",
            1,
        )
    };
    let m = start_uvs(&mut lab, "dir", &toml(150), &rules);
    wait_state(&m, "MASTER", Duration::from_secs(3));
    let b = start_uvs(&mut lab, "dir2", &toml(100), &rules);
    wait_state(&b, "BACKUP", Duration::from_secs(3));
    let uploads: Vec<_> = (0..3)
        .map(|i| start_slow_upload(&mut lab, &format!("mh{i}"), 200_000, "50K"))
        .collect();
    thread::sleep(Duration::from_millis(1500));
    let t0 = Instant::now();
    m.kill(&mut lab);
    wait_state(&b, "MASTER", Duration::from_secs(3));
    let takeover = t0.elapsed();
    let broken = broken_uploads(&mut lab, &uploads);
    let metrics = b.try_scrape().unwrap_or_default();
    eprintln!(
        "HA mh + sloppy_tcp without sync (v3, 100 ms adverts): takeover seen after {takeover:?}; \
         broken established connections {broken}/3"
    );
    assert_eq!(common::metric(&metrics, "uvs_sync_adopted_total", &[]), 0.0);
    assert_eq!(broken, 0, "{}", b.tail());
}

/// uvs + keepalived, tcpdump on the router: exactly one MASTER sends adverts in steady state
/// (keepalived MASTER, uvs BACKUP); keepalived SIGKILLed: uvs takes over (window measured),
/// and from then on only uvs advertises.
#[test]
fn keepalived_to_uvs_takeover_and_one_advertiser() {
    let Some(ctx) = common::setup(86) else { return };
    let Some(ka) = keepalived_or_skip() else {
        return;
    };
    let (_dir2, mut lab) = keepalived_lab(&ctx);
    let rules = common::dr_rules('t', 80);
    for (version, advert, auth_uvs, auth_ka) in KEEPALIVED_VERSIONS {
        let conf = keepalived_conf(version, 150, advert, auth_ka, "");
        let k = start_keepalived(&mut lab, &ka, &conf);
        wait_ka(&lab, true, Duration::from_secs(6));
        let u = start_uvs(
            &mut lab,
            "dir",
            &vrrp_toml(100, version, advert, auth_uvs, false),
            &rules,
        );
        wait_state(&u, "BACKUP", Duration::from_secs(3));
        let pcap = lab.dir().join(format!("adverts-v{version}.pcap"));
        let cap = lab
            .tcpdump_start("router", "eth1", "ip proto 112", &pcap)
            .expect("tcpdump");
        let steady = if version == 2 { 4000 } else { 1500 };
        thread::sleep(Duration::from_millis(steady));
        assert!(ka_has_vip(&lab) && u.uvs_status().contains(": BACKUP"));

        let (probe, file) = start_prober(&mut lab, &format!("ka-dies-v{version}"));
        thread::sleep(Duration::from_millis(1000));
        // A crash: keepalived is gone and its host no longer holds the VIP. keepalived's VRRP
        // child resigns (priority 0) when its parent dies, so it is SIGKILLed first, by the
        // PID it wrote (`-r`), then the parent this test started.
        let child: Option<i32> = std::fs::read_to_string(lab.dir().join("keepalived-vrrp.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let child = child.expect("keepalived's VRRP child PID");
        let t0 = Instant::now();
        // SAFETY: plain syscall on the PID keepalived (started by this test) recorded.
        unsafe { libc::kill(child, libc::SIGKILL) };
        common::sigkill(&mut lab, k);
        // Only now (keepalived reacts to its VIP vanishing by resigning): the dead host's
        // kernel stops answering for the VIP.
        let vip32 = format!("{}/32", addr::VIP);
        let _ = lab.exec("dir2", &["ip", "addr", "del", &vip32, "dev", "eth0"]);
        // Probes started from here on find the VIP gone until uvs takes over.
        let killed_at = now_ns();
        wait_state(&u, "MASTER", Duration::from_secs(6));
        let takeover = t0.elapsed();
        thread::sleep(Duration::from_millis(if version == 2 {
            2500
        } else {
            1500
        }));
        lab.kill(probe);
        common::stop_capture(&mut lab, cap);
        let (gap, late, ok, fail) = probe_report(&file, killed_at);
        let pkts = pcap_lines(&lab, &pcap);
        let from = |l: &str, a: &str| l.contains(&format!("{a} > 224.0.0.18"));
        let seq: Vec<bool> = pkts
            .iter()
            .filter_map(|(_, l)| {
                if from(l, DIR2_ADDR) {
                    Some(false)
                } else if from(l, "10.0.0.2") {
                    Some(true)
                } else {
                    None
                }
            })
            .collect();
        let switches = seq.windows(2).filter(|w| w[0] != w[1]).count();
        let (ka_n, uvs_n) = (
            seq.iter().filter(|x| !**x).count(),
            seq.iter().filter(|x| **x).count(),
        );
        eprintln!(
            "HA keepalived→uvs (v{version}, advert_int {advert}, keepalived SIGKILLed): uvs MASTER \
             after {takeover:?}; unreachable window {gap:?} ({ok} ok / {fail} failed probes); \
             adverts: {ka_n} from keepalived then {uvs_n} from uvs, {switches} switch(es)"
        );
        assert!(
            !seq.is_empty() && !seq[0],
            "keepalived advertised first: {seq:?}"
        );
        assert_eq!(switches, 1, "exactly one advertiser at any time: {seq:?}");
        // A crash, not a resignation: at least master-down minus one interval.
        let floor = if version == 2 { 2000 } else { 200 };
        assert!(takeover >= Duration::from_millis(floor), "{takeover:?}");
        assert!(ka_n >= 3 && uvs_n >= 2, "{seq:?}");
        assert_eq!(late, 0, "requests failed after the takeover");
        assert_eq!(router_vip_mac(&lab), lab.mac_str("dir", "eth0").unwrap());
        assert!(common::curl_vip(&lab, 1)[0].starts_with("rs"));
        u.stop(&mut lab);
        thread::sleep(Duration::from_millis(300));
    }
}

/// LVS-NAT behind a VRRP pair, as the keepalived NAT tutorials set it up: the reals' default
/// gateway is a second virtual address (10.0.0.254) that moves with the VIP, and the sync
/// carries the NAT connections (masq flag, the reals' own port 8080). After the MASTER dies
/// the new one must translate both directions of the connections it took over, whichever
/// side speaks first: uploads (the client's segments first) and a download (the real's).
#[test]
fn uvs_uvs_failover_with_sync_keeps_nat_connections() {
    let Some(ctx) = common::setup(87) else { return };
    let (_dir2, mut lab) = ha_lab(&ctx);
    for rs in ["rs1", "rs2"] {
        lab.start_builtin_http(rs, rs, 8080, &common::uvs_exe())
            .unwrap_or_else(|e| panic!("web server on {rs}: {e:#}"));
        lab.exec_ok(
            rs,
            &["ip", "route", "replace", "default", "via", "10.0.0.254"],
        )
        .unwrap_or_else(|e| panic!("{rs}'s gateway: {e:#}"));
    }
    let rules = format!(
        "-A -t {vip}:80 -s rr\n-a -t {vip}:80 -r {}:8080 -m\n-a -t {vip}:80 -r {}:8080 -m\n",
        addr::RS1,
        addr::RS2,
        vip = addr::VIP
    );
    let toml = |prio| {
        vrrp_toml(prio, 3, "0.1", "", true).replace(
            &format!("[\"{}\"]", addr::VIP),
            &format!("[\"{}\", \"10.0.0.254\"]", addr::VIP),
        )
    };
    let m = start_uvs(&mut lab, "dir", &toml(150), &rules);
    wait_state(&m, "MASTER", Duration::from_secs(3));
    let b = start_uvs(&mut lab, "dir2", &toml(100), &rules);
    wait_state(&b, "BACKUP", Duration::from_secs(3));
    let answers = common::curl_vip(&lab, 2);
    assert_eq!(
        common::count(&answers).len(),
        2,
        "both NAT reals answer: {answers:?}"
    );

    let uploads: Vec<_> = (0..2)
        .map(|i| start_slow_upload(&mut lab, &format!("nat{i}"), 200_000, "50K"))
        .collect();
    // Larger than the client's and the real's socket buffers together, so the download must
    // still cross the director after the failover.
    let size = 12 << 20;
    let download = lab.dir().join("nat-download.bin");
    let url = format!("http://{}/bytes/{size}", addr::VIP);
    let dl = lab
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
                "2M",
                "-o",
                path_str(&download),
                &url,
            ],
            &lab.dir().join("nat-download.log"),
        )
        .unwrap();
    thread::sleep(Duration::from_millis(1500));
    m.kill(&mut lab);
    wait_state(&b, "MASTER", Duration::from_secs(3));
    let broken = broken_uploads(&mut lab, &uploads);
    assert!(
        common::wait_exit(&mut lab, dl, Duration::from_secs(30)),
        "download still running"
    );
    let got = std::fs::read(&download).unwrap_or_default();
    let metrics = b.try_scrape().unwrap_or_default();
    let adopted = common::metric(&metrics, "uvs_sync_adopted_total", &[]);
    eprintln!(
        "HA NAT: broken uploads {broken}/2, download {} of {size} bytes, adopted {adopted}",
        got.len()
    );
    assert_eq!(
        broken,
        0,
        "NAT uploads broken by the failover\n{}",
        b.tail()
    );
    assert!(
        got == uvs::lab::responder::pattern(size),
        "the NAT download broke: {} of {size} bytes\n{}",
        got.len(),
        b.tail()
    );
    assert!(
        adopted >= 3.0,
        "synced NAT flows adopted: {adopted}\n{metrics}"
    );
    // And new connections work through the new MASTER, the reals' gateway moved with it.
    assert_eq!(common::curl_vip(&lab, 2).len(), 2);
}
