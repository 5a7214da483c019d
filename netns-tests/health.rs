//! Health checks in the DR lab (issue 5): a stopped real server is taken out within the check
//! window and comes back with its weight; HTTP expectations; through-the-VIP vs plain TCP;
//! the sorry server on the director itself; MISC_CHECK with quorum and hysteresis; quiescent
//! vs remove; the shipped keepalived.conf and ldirectord.cf end to end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use uvs::ctl::backend::{Backend, SocketBackend, SocketLocation};
use uvs::ctl::proto::{Reply, Request};
use uvs::health::book::{HealthListing, RealHealthRow};
use uvs::lab::{Lab, LabOptions, addr, build_dr_lab};

use crate::common::start_web;
use crate::common::{self, Ctx};

/// Check timing used by the TOML tests: window = interval + retry × (dbr + timeout) + timeout.
const INTERVAL: f64 = 0.2;
const TIMEOUT: f64 = 0.3;
const RETRY: u32 = 1;
const DBR: f64 = 0.2;

fn window() -> Duration {
    Duration::from_secs_f64(INTERVAL + f64::from(RETRY) * (DBR + TIMEOUT) + TIMEOUT)
}

fn lab(ctx: &Ctx) -> Lab {
    build_dr_lab(&ctx.prefix, &LabOptions::default())
        .unwrap_or_else(|e| panic!("building the DR lab: {e:#}"))
}

fn sock(lab: &Lab) -> PathBuf {
    lab.dir().join("admin.sock")
}

/// Starts the director with `flag FILE` (FILE = `text` written to the lab dir).
fn start(lab: &mut Lab, flag: &str, name: &str, text: &str) -> u32 {
    let file = lab.dir().join(name);
    std::fs::write(&file, text).expect("writing the config");
    let s = sock(lab);
    let _ = std::fs::remove_file(&s);
    let log = common::director_log(lab);
    let args = [
        flag,
        common::path_str(&file),
        "--interface",
        "eth0",
        "--admin-socket",
        common::path_str(&s),
    ];
    lab.start_director(&common::uvs_exe(), &args, &log)
        .unwrap_or_else(|e| panic!("starting the director: {e:#}"))
}

fn health(lab: &Lab) -> HealthListing {
    let mut b = SocketBackend {
        location: SocketLocation::Path(sock(lab)),
    };
    match b.call(&Request::Health) {
        Ok(Reply::Health(h)) => h,
        other => panic!("health request: {other:?}\n{}", common::director_tail(lab)),
    }
}

fn real(h: &HealthListing, a: std::net::Ipv4Addr) -> RealHealthRow {
    h.services[0]
        .reals
        .iter()
        .find(|r| r.addr == a)
        .cloned()
        .expect("real in the listing")
}

/// Polls the health listing until `f` holds; returns the time it took.
fn wait_for(
    lab: &Lab,
    what: &str,
    timeout: Duration,
    f: impl Fn(&HealthListing) -> bool,
) -> Duration {
    let t = Instant::now();
    common::poll(timeout, || f(&health(lab)).then_some(())).unwrap_or_else(|| {
        panic!(
            "{what}: not within {timeout:?}; listing:\n{}\ndirector log:\n{}",
            health(lab).render(),
            common::director_tail(lab)
        )
    });
    t.elapsed()
}

fn toml(health: &str, check: &str) -> String {
    format!(
        r#"metrics = "127.0.0.1:9477"
[[service]]
vip = "{vip}"
port = 80
scheduler = "rr"
{health}
[service.check]
interval = {INTERVAL}
timeout = {TIMEOUT}
retry = {RETRY}
delay_before_retry = {DBR}
{check}
[[service.real]]
address = "{rs1}"
weight = 2
[[service.real]]
address = "{rs2}"
weight = 1
"#,
        vip = addr::VIP,
        rs1 = addr::RS1,
        rs2 = addr::RS2,
    )
}

fn web(lab: &mut Lab, rs: &str) -> u32 {
    lab.start_http(rs, rs, true, &common::uvs_exe())
        .unwrap_or_else(|e| panic!("web server on {rs}: {e:#}"))
}

#[test]
fn stopped_rs_is_quiesced_within_the_window_and_returns_with_its_weight() {
    let Some(ctx) = common::setup(50) else { return };
    let mut lab = lab(&ctx);
    let pid1 = web(&mut lab, "rs1");
    web(&mut lab, "rs2");
    start(
        &mut lab,
        "--config",
        "uvs.toml",
        &toml("", "type = \"tcp\""),
    );
    wait_for(&lab, "first checks", Duration::from_secs(5), |h| {
        h.services[0].reals.iter().all(|r| r.checks > 0 && r.up)
    });
    lab.kill(pid1);
    let took = wait_for(&lab, "rs1 quiesced", Duration::from_secs(5), |h| {
        real(h, addr::RS1).effective_weight == Some(0)
    });
    // The listing is polled every 100 ms: allow that and the control tick on top.
    assert!(
        took <= window() + Duration::from_millis(400),
        "rs1 quiesced after {took:?}, window {:?}",
        window()
    );
    let answers = common::curl_vip(&lab, 10);
    assert!(
        answers.iter().all(|a| a == "rs2"),
        "after the window every request must succeed on rs2: {answers:?}"
    );
    let m = common::scrape(&lab);
    let rs1 = addr::RS1.to_string();
    assert_eq!(
        common::metric(&m, "uvs_health_real_up", &[("remote_address", &rs1)]),
        0.0
    );
    assert!(
        common::metric(
            &m,
            "uvs_health_transitions_total",
            &[("remote_address", &rs1)]
        ) >= 1.0
    );
    web(&mut lab, "rs1");
    wait_for(&lab, "rs1 back", Duration::from_secs(5), |h| {
        real(h, addr::RS1).effective_weight == Some(2)
    });
    let c = common::count(&common::curl_vip(&lab, 6));
    assert!(
        c.get("rs1").copied().unwrap_or(0) > 0,
        "rs1 gets traffic again: {c:?}"
    );
}

#[test]
fn http_expectation_mismatch_marks_down_and_remove_vs_quiescent() {
    let Some(ctx) = common::setup(51) else { return };
    let mut lab = lab(&ctx);
    start_web(&mut lab);
    // Only rs1's body contains "rs1": rs2 fails its check. quiescent = false: removed.
    start(
        &mut lab,
        "--config",
        "uvs.toml",
        &toml(
            "[service.health]\nquiescent = false",
            "type = \"http\"\npath = \"/\"\nexpect = \"rs1\"",
        ),
    );
    wait_for(&lab, "rs2 removed", Duration::from_secs(5), |h| {
        let r = real(h, addr::RS2);
        !r.up && r.effective_weight.is_none() && r.last_message.contains("does not contain")
    });
    let h = health(&lab);
    assert_eq!(real(&h, addr::RS1).effective_weight, Some(2));
    assert!(common::curl_vip(&lab, 6).iter().all(|a| a == "rs1"));
    assert!(
        health(&lab).render().contains("removed"),
        "{}",
        health(&lab).render()
    );
}

#[test]
fn through_the_vip_check_catches_a_rs_without_the_vip_and_plain_tcp_does_not() {
    let Some(ctx) = common::setup(52) else { return };
    let mut lab = lab(&ctx);
    start_web(&mut lab);
    let vip32 = format!("{}/32", addr::VIP);
    lab.exec_ok("rs2", &["ip", "addr", "del", &vip32, "dev", "lo"])
        .expect("removing the VIP from rs2");
    let pid = start(
        &mut lab,
        "--config",
        "uvs.toml",
        &toml("", "type = \"tcp\""),
    );
    std::thread::sleep(window() * 2);
    let h = health(&lab);
    assert!(
        real(&h, addr::RS2).up,
        "a plain TCP check passes: {}",
        h.render()
    );
    lab.kill(pid);
    start(
        &mut lab,
        "--config",
        "uvs.toml",
        &toml("", "type = \"vip\""),
    );
    wait_for(
        &lab,
        "rs2 down through the VIP",
        Duration::from_secs(5),
        |h| {
            let r = real(h, addr::RS2);
            !r.up && r.last_message.contains("VIP")
        },
    );
    let h = health(&lab);
    assert!(real(&h, addr::RS1).up, "rs1 has the VIP: {}", h.render());
    assert!(common::curl_vip(&lab, 6).iter().all(|a| a == "rs1"));
    lab.exec_ok("rs2", &["ip", "addr", "add", &vip32, "dev", "lo"])
        .expect("restoring the VIP on rs2");
    wait_for(
        &lab,
        "rs2 up through the VIP",
        Duration::from_secs(5),
        |h| real(h, addr::RS2).up,
    );
}

/// The director's own web server, with the VIP on its lo (as the tutorials configure it).
fn sorry_on_director(lab: &mut Lab) {
    let vip32 = format!("{}/32", addr::VIP);
    lab.exec_ok("dir", &["ip", "addr", "add", &vip32, "dev", "lo"])
        .expect("VIP on the director's lo");
    lab.start_builtin_http("dir", "sorry", 80, &common::uvs_exe())
        .unwrap_or_else(|e| panic!("sorry web server: {e:#}"));
}

#[test]
fn sorry_server_on_localhost_answers_when_all_are_down() {
    let Some(ctx) = common::setup(53) else { return };
    let mut lab = lab(&ctx);
    let p1 = web(&mut lab, "rs1");
    let p2 = web(&mut lab, "rs2");
    sorry_on_director(&mut lab);
    start(
        &mut lab,
        "--config",
        "uvs.toml",
        &toml(
            "[service.health]\nsorry_server = \"127.0.0.1:80\"",
            "type = \"tcp\"",
        ),
    );
    assert!(
        common::curl_vip(&lab, 2)
            .iter()
            .all(|a| a.starts_with("rs"))
    );
    lab.kill(p1);
    lab.kill(p2);
    wait_for(&lab, "sorry active", Duration::from_secs(5), |h| {
        h.services[0].sorry_active && h.services[0].local
    });
    let answers = common::curl_vip(&lab, 4);
    assert!(answers.iter().all(|a| a == "sorry"), "{answers:?}");
    web(&mut lab, "rs1");
    wait_for(&lab, "rs1 back", Duration::from_secs(5), |h| {
        !h.services[0].local && real(h, addr::RS1).up
    });
    let answers = common::curl_vip(&lab, 4);
    assert!(answers.iter().all(|a| a == "rs1"), "{answers:?}");
}

#[test]
fn misc_check_quorum_with_hysteresis_and_notify_commands() {
    let Some(ctx) = common::setup(54) else { return };
    let mut lab = lab(&ctx);
    start_web(&mut lab);
    let d = lab.dir().to_path_buf();
    let flag = |rs: &str| d.join(format!("{rs}-ok"));
    std::fs::write(flag("10.0.0.11"), "").unwrap();
    std::fs::write(flag("10.0.0.12"), "").unwrap();
    let ds = common::path_str(&d).to_string();
    // Weights 2 + 1; quorum 2, hysteresis 1: lost below 1, regained at 3.
    let health_section = format!(
        "[service.health]\nquorum = 2\nhysteresis = 1\nquorum_up = \"echo up >> {ds}/quorum\"\nquorum_down = \"echo down >> {ds}/quorum\""
    );
    // The type at service level; each real overrides the command with its own flag file.
    let check = "type = \"misc\"\ncommand = \"false\"".to_string();
    let mut cfg = toml(&health_section, &check);
    for (rs, w) in [(addr::RS1, 2), (addr::RS2, 1)] {
        let needle = format!("address = \"{rs}\"\nweight = {w}\n");
        cfg = cfg.replace(
            &needle,
            &format!(
                "{needle}[service.real.check]\ncommand = \"test -e {ds}/{rs}-ok\"\nnotify_down = \"echo {rs} >> {ds}/downs\"\n"
            ),
        );
    }
    start(&mut lab, "--config", "uvs.toml", &cfg);
    let quorum = |h: &HealthListing| h.services[0].quorum_up;
    wait_for(&lab, "checks", Duration::from_secs(5), |h| {
        h.services[0].reals.iter().all(|r| r.checks > 0)
    });
    std::fs::remove_file(flag("10.0.0.12")).unwrap();
    wait_for(&lab, "rs2 down", Duration::from_secs(5), |h| {
        !real(h, addr::RS2).up
    });
    assert!(quorum(&health(&lab)), "live 2 ≥ 2 − 1: quorum kept");
    std::fs::remove_file(flag("10.0.0.11")).unwrap();
    wait_for(&lab, "quorum lost", Duration::from_secs(5), |h| !quorum(h));
    std::fs::write(flag("10.0.0.11"), "").unwrap();
    wait_for(&lab, "rs1 up", Duration::from_secs(5), |h| {
        real(h, addr::RS1).up
    });
    std::thread::sleep(window());
    assert!(
        !quorum(&health(&lab)),
        "live 2 < 2 + 1: still lost (hysteresis)"
    );
    std::fs::write(flag("10.0.0.12"), "").unwrap();
    wait_for(&lab, "quorum back", Duration::from_secs(5), quorum);
    let q = common::poll(Duration::from_secs(2), || {
        std::fs::read_to_string(d.join("quorum"))
            .ok()
            .filter(|s| s.lines().count() >= 2)
    })
    .expect("quorum commands ran");
    assert_eq!(q, "down\nup\n");
    let downs = std::fs::read_to_string(d.join("downs")).unwrap_or_default();
    assert_eq!(downs, "10.0.0.12\n10.0.0.11\n");
}

fn shipped(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn shipped_keepalived_conf_drives_the_lab() {
    let Some(ctx) = common::setup(55) else { return };
    let mut lab = lab(&ctx);
    let p1 = web(&mut lab, "rs1");
    let p2 = web(&mut lab, "rs2");
    sorry_on_director(&mut lab);
    // As shipped, with the tutorial's 6 s / 3 s timers shortened for the test.
    let text = shipped("configs/keepalived/keepalived.conf")
        .replace("delay_loop 6", "delay_loop 0.3")
        .replace("connect_timeout 3", "connect_timeout 0.3")
        .replace("delay_before_retry 3", "delay_before_retry 0.2")
        .replace("retry 3", "retry 1");
    start(&mut lab, "--keepalived", "keepalived.conf", &text);
    // The tutorial's vrrp_instance runs too (HA, issue 8): alone on the LAN, it is MASTER.
    let exe = common::uvs_exe();
    let master = common::poll(Duration::from_secs(5), || {
        let s = sock(&lab);
        let argv = [
            common::path_str(&exe),
            "status",
            "--admin-socket",
            common::path_str(&s),
        ];
        let out = lab.exec("dir", &argv).ok()?;
        let st = String::from_utf8_lossy(&out.stdout).into_owned();
        (st.contains("VRRP instance VI_1 (eth0 vrid 51 v2 priority 100") && st.contains(": MASTER"))
            .then_some(())
    });
    assert!(master.is_some(), "{}", common::director_tail(&lab));
    let c = common::count(&common::curl_vip(&lab, 4));
    assert_eq!(c.len(), 2, "{c:?}");
    lab.kill(p1);
    // keepalived's default: a failed real is removed.
    wait_for(&lab, "rs1 removed", Duration::from_secs(5), |h| {
        real(h, addr::RS1).effective_weight.is_none()
    });
    assert!(common::curl_vip(&lab, 4).iter().all(|a| a == "rs2"));
    lab.kill(p2);
    wait_for(&lab, "sorry", Duration::from_secs(5), |h| {
        h.services[0].local
    });
    assert!(common::curl_vip(&lab, 2).iter().all(|a| a == "sorry"));
    web(&mut lab, "rs2");
    wait_for(&lab, "rs2 back", Duration::from_secs(5), |h| {
        real(h, addr::RS2).effective_weight == Some(1)
    });
    assert!(common::curl_vip(&lab, 2).iter().all(|a| a == "rs2"));
}

#[test]
fn shipped_ldirectord_cf_drives_the_lab() {
    let Some(ctx) = common::setup(56) else { return };
    let mut lab = lab(&ctx);
    web(&mut lab, "rs1");
    let p2 = web(&mut lab, "rs2");
    let text = shipped("configs/ldirectord/ldirectord.cf")
        .replace("checktimeout=3", "checktimeout=0.3")
        .replace("checkinterval=1", "checkinterval=0.3");
    start(&mut lab, "--ldirectord", "ldirectord.cf", &text);
    wait_for(&lab, "checks pass", Duration::from_secs(5), |h| {
        h.services[0].reals.iter().all(|r| r.checks > 0 && r.up)
    });
    let c = common::count(&common::curl_vip(&lab, 4));
    assert_eq!(c.len(), 2, "{c:?}");
    lab.kill(p2);
    wait_for(
        &lab,
        "rs2 removed (quiescent=no)",
        Duration::from_secs(5),
        |h| real(h, addr::RS2).effective_weight.is_none(),
    );
    assert!(common::curl_vip(&lab, 4).iter().all(|a| a == "rs1"));
}
