//! Health checks in the DR lab: a stopped real server is taken out within the check
//! window and comes back with its weight; HTTP expectations; through-the-VIP vs plain TCP;
//! the sorry server on the director itself; MISC_CHECK with quorum and hysteresis; quiescent
//! vs remove; the shipped keepalived.conf and ldirectord.cf end to end.

use std::path::Path;
use std::time::{Duration, Instant};

use uvs::ctl::proto::{HealthListing, RealHealthRow};
use uvs::ctl::proto::{Reply, Request};
use uvs::lab::{Lab, addr};

use crate::common::{self, Director, start_web};

/// Check timing used by the TOML tests: window = interval + retry × (dbr + timeout) + timeout.
const INTERVAL: f64 = 0.2;
const TIMEOUT: f64 = 0.3;
const RETRY: u32 = 1;
const DBR: f64 = 0.2;

fn window() -> Duration {
    Duration::from_secs_f64(INTERVAL + f64::from(RETRY) * (DBR + TIMEOUT) + TIMEOUT)
}

/// Starts the director on eth0, with an admin socket, from `flag FILE` (FILE = `text`,
/// written to the lab dir).
fn start(lab: &mut Lab, flag: &'static str, name: &str, text: &str) -> Director {
    Director::launch()
        .file(flag, name, text)
        .interface("eth0")
        .admin_socket()
        .start(lab)
}

fn health(d: &Director) -> HealthListing {
    match d.try_admin(&Request::Health) {
        Ok(Reply::Health(h)) => h,
        other => panic!("health request: {other:?}\n{}", d.tail()),
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
    d: &Director,
    what: &str,
    timeout: Duration,
    f: impl Fn(&HealthListing) -> bool,
) -> Duration {
    let t = Instant::now();
    common::poll(timeout, || f(&health(d)).then_some(())).unwrap_or_else(|| {
        panic!(
            "{what}: not within {timeout:?}; listing:\n{}\ndirector log:\n{}",
            health(d).render(),
            d.tail()
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
    let mut lab = ctx.dr_lab();
    let pid1 = web(&mut lab, "rs1");
    web(&mut lab, "rs2");
    let d = start(
        &mut lab,
        "--config",
        "uvs.toml",
        &toml("", "type = \"tcp\""),
    );
    wait_for(&d, "first checks", Duration::from_secs(5), |h| {
        h.services[0].reals.iter().all(|r| r.checks > 0 && r.up)
    });
    lab.kill(pid1);
    let took = wait_for(&d, "rs1 quiesced", Duration::from_secs(5), |h| {
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
    let m = d.scrape();
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
    wait_for(&d, "rs1 back", Duration::from_secs(5), |h| {
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
    let mut lab = ctx.dr_lab();
    start_web(&mut lab);
    // Only rs1's body contains "rs1": rs2 fails its check. quiescent = false: removed.
    let d = start(
        &mut lab,
        "--config",
        "uvs.toml",
        &toml(
            "[service.health]\nquiescent = false",
            "type = \"http\"\npath = \"/\"\nexpect = \"rs1\"",
        ),
    );
    wait_for(&d, "rs2 removed", Duration::from_secs(5), |h| {
        let r = real(h, addr::RS2);
        !r.up && r.effective_weight.is_none() && r.last_message.contains("does not contain")
    });
    let h = health(&d);
    assert_eq!(real(&h, addr::RS1).effective_weight, Some(2));
    assert!(common::curl_vip(&lab, 6).iter().all(|a| a == "rs1"));
    assert!(
        health(&d).render().contains("removed"),
        "{}",
        health(&d).render()
    );
}

#[test]
fn through_the_vip_check_catches_a_rs_without_the_vip_and_plain_tcp_does_not() {
    let Some(ctx) = common::setup(52) else { return };
    let mut lab = ctx.dr_lab();
    start_web(&mut lab);
    let vip32 = format!("{}/32", addr::VIP);
    lab.exec_ok("rs2", &["ip", "addr", "del", &vip32, "dev", "lo"])
        .expect("removing the VIP from rs2");
    let d = start(
        &mut lab,
        "--config",
        "uvs.toml",
        &toml("", "type = \"tcp\""),
    );
    std::thread::sleep(window() * 2);
    let h = health(&d);
    assert!(
        real(&h, addr::RS2).up,
        "a plain TCP check passes: {}",
        h.render()
    );
    d.stop(&mut lab);
    let d = start(
        &mut lab,
        "--config",
        "uvs.toml",
        &toml("", "type = \"vip\""),
    );
    wait_for(
        &d,
        "rs2 down through the VIP",
        Duration::from_secs(5),
        |h| {
            let r = real(h, addr::RS2);
            !r.up && r.last_message.contains("VIP")
        },
    );
    let h = health(&d);
    assert!(real(&h, addr::RS1).up, "rs1 has the VIP: {}", h.render());
    assert!(common::curl_vip(&lab, 6).iter().all(|a| a == "rs1"));
    lab.exec_ok("rs2", &["ip", "addr", "add", &vip32, "dev", "lo"])
        .expect("restoring the VIP on rs2");
    wait_for(&d, "rs2 up through the VIP", Duration::from_secs(5), |h| {
        real(h, addr::RS2).up
    });
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
    let mut lab = ctx.dr_lab();
    let p1 = web(&mut lab, "rs1");
    let p2 = web(&mut lab, "rs2");
    sorry_on_director(&mut lab);
    let d = start(
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
    wait_for(&d, "sorry active", Duration::from_secs(5), |h| {
        h.services[0].sorry_active && h.services[0].local
    });
    let answers = common::curl_vip(&lab, 4);
    assert!(answers.iter().all(|a| a == "sorry"), "{answers:?}");
    web(&mut lab, "rs1");
    wait_for(&d, "rs1 back", Duration::from_secs(5), |h| {
        !h.services[0].local && real(h, addr::RS1).up
    });
    let answers = common::curl_vip(&lab, 4);
    assert!(answers.iter().all(|a| a == "rs1"), "{answers:?}");
}

#[test]
fn misc_check_quorum_with_hysteresis_and_notify_commands() {
    let Some(ctx) = common::setup(54) else { return };
    let mut lab = ctx.dr_lab();
    start_web(&mut lab);
    let tmp = lab.dir().to_path_buf();
    let flag = |rs: &str| tmp.join(format!("{rs}-ok"));
    std::fs::write(flag("10.0.0.11"), "").unwrap();
    std::fs::write(flag("10.0.0.12"), "").unwrap();
    let ds = common::path_str(&tmp).to_string();
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
    let d = start(&mut lab, "--config", "uvs.toml", &cfg);
    let quorum = |h: &HealthListing| h.services[0].quorum_up;
    wait_for(&d, "checks", Duration::from_secs(5), |h| {
        h.services[0].reals.iter().all(|r| r.checks > 0)
    });
    std::fs::remove_file(flag("10.0.0.12")).unwrap();
    wait_for(&d, "rs2 down", Duration::from_secs(5), |h| {
        !real(h, addr::RS2).up
    });
    assert!(quorum(&health(&d)), "live 2 ≥ 2 − 1: quorum kept");
    std::fs::remove_file(flag("10.0.0.11")).unwrap();
    wait_for(&d, "quorum lost", Duration::from_secs(5), |h| !quorum(h));
    std::fs::write(flag("10.0.0.11"), "").unwrap();
    wait_for(&d, "rs1 up", Duration::from_secs(5), |h| {
        real(h, addr::RS1).up
    });
    std::thread::sleep(window());
    assert!(
        !quorum(&health(&d)),
        "live 2 < 2 + 1: still lost (hysteresis)"
    );
    std::fs::write(flag("10.0.0.12"), "").unwrap();
    wait_for(&d, "quorum back", Duration::from_secs(5), quorum);
    let q = common::poll(Duration::from_secs(2), || {
        std::fs::read_to_string(tmp.join("quorum"))
            .ok()
            .filter(|s| s.lines().count() >= 2)
    })
    .expect("quorum commands ran");
    assert_eq!(q, "down\nup\n");
    let downs = std::fs::read_to_string(tmp.join("downs")).unwrap_or_default();
    assert_eq!(downs, "10.0.0.12\n10.0.0.11\n");
}

fn shipped(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn shipped_keepalived_conf_drives_the_lab() {
    let Some(ctx) = common::setup(55) else { return };
    let mut lab = ctx.dr_lab();
    let p1 = web(&mut lab, "rs1");
    let p2 = web(&mut lab, "rs2");
    sorry_on_director(&mut lab);
    // As shipped, with the tutorial's 6 s / 3 s timers shortened for the test.
    let text = shipped("configs/keepalived/keepalived.conf")
        .replace("delay_loop 6", "delay_loop 0.3")
        .replace("connect_timeout 3", "connect_timeout 0.3")
        .replace("delay_before_retry 3", "delay_before_retry 0.2")
        .replace("retry 3", "retry 1");
    let d = start(&mut lab, "--keepalived", "keepalived.conf", &text);
    // The tutorial's vrrp_instance runs too: alone on the LAN, it is MASTER.
    let master = common::poll(Duration::from_secs(5), || {
        let st = d.uvs_status();
        (st.contains("VRRP instance VI_1 (eth0 vrid 51 v2 priority 100") && st.contains(": MASTER"))
            .then_some(())
    });
    assert!(master.is_some(), "{}", d.tail());
    let c = common::count(&common::curl_vip(&lab, 4));
    assert_eq!(c.len(), 2, "{c:?}");
    lab.kill(p1);
    // keepalived's default: a failed real is removed.
    wait_for(&d, "rs1 removed", Duration::from_secs(5), |h| {
        real(h, addr::RS1).effective_weight.is_none()
    });
    assert!(common::curl_vip(&lab, 4).iter().all(|a| a == "rs2"));
    lab.kill(p2);
    wait_for(&d, "sorry", Duration::from_secs(5), |h| h.services[0].local);
    assert!(common::curl_vip(&lab, 2).iter().all(|a| a == "sorry"));
    web(&mut lab, "rs2");
    wait_for(&d, "rs2 back", Duration::from_secs(5), |h| {
        real(h, addr::RS2).effective_weight == Some(1)
    });
    assert!(common::curl_vip(&lab, 2).iter().all(|a| a == "rs2"));
}

#[test]
fn shipped_ldirectord_cf_drives_the_lab() {
    let Some(ctx) = common::setup(56) else { return };
    let mut lab = ctx.dr_lab();
    web(&mut lab, "rs1");
    let p2 = web(&mut lab, "rs2");
    let text = shipped("configs/ldirectord/ldirectord.cf")
        .replace("checktimeout=3", "checktimeout=0.3")
        .replace("checkinterval=1", "checkinterval=0.3");
    let d = start(&mut lab, "--ldirectord", "ldirectord.cf", &text);
    wait_for(&d, "checks pass", Duration::from_secs(5), |h| {
        h.services[0].reals.iter().all(|r| r.checks > 0 && r.up)
    });
    let c = common::count(&common::curl_vip(&lab, 4));
    assert_eq!(c.len(), 2, "{c:?}");
    lab.kill(p2);
    wait_for(
        &d,
        "rs2 removed (quiescent=no)",
        Duration::from_secs(5),
        |h| real(h, addr::RS2).effective_weight.is_none(),
    );
    assert!(common::curl_vip(&lab, 4).iter().all(|a| a == "rs1"));
}
