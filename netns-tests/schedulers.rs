//! Schedulers and persistence end to end in the DR lab: wlc balancing by active connections,
//! sh and `-p` keeping a client on one real server.
//!
//! Weight-0 draining needs a weight change on a running daemon; until the admin socket exists
//! it is tested at the unit level (`datapath::process::tests::
//! weight_zero_reals_get_no_new_flows_but_keep_their_flows` and
//! `persistence_sticks_to_a_quiesced_real_unless_expire_quiescent_template`).

use std::time::Duration;

use uvs::lab::{Lab, addr};

use crate::common::{self, Director};

/// A service on VIP:80 over rs1 and rs2 (weight 1), with `opts` on the `-A` line.
fn rules(opts: &str) -> String {
    let vip = addr::VIP;
    format!(
        "-A -t {vip}:80 {opts}\n\
         -a -t {vip}:80 -r {}:80 -g -w 1\n\
         -a -t {vip}:80 -r {}:80 -g -w 1\n",
        addr::RS1,
        addr::RS2
    )
}

/// The DR lab with its web servers and a director serving [`rules`] with `opts`.
fn start(ctx: &common::Ctx, opts: &str) -> (Lab, Director) {
    let mut lab = ctx.web_lab();
    let d = Director::launch()
        .rules(&rules(opts))
        .interface("eth0")
        .start(&mut lab);
    (lab, d)
}

fn active(d: &Director, rs: std::net::Ipv4Addr) -> f64 {
    d.metric(
        "node_ipvs_backend_connections_active",
        &[("remote_address", &rs.to_string()), ("local_port", "80")],
    )
}

#[test]
fn wlc_sends_new_connections_to_the_real_with_fewer_active_ones() {
    let Some(ctx) = common::setup(40) else { return };
    let (mut lab, d) = start(&ctx, "-s wlc");
    // Three idle connections held open: wlc ties go to the earliest real, so rs1, rs2, rs1.
    let vip = addr::VIP;
    for i in 0..3 {
        let log = lab.dir().join(format!("hold{i}.log"));
        let script = format!("exec 3<>/dev/tcp/{vip}/80 && echo open && sleep 60");
        lab.spawn("client", &["bash", "-c", &script], &log)
            .unwrap_or_else(|e| panic!("holding connection {i}: {e:#}"));
        let opened = common::poll(Duration::from_secs(5), || {
            let total = active(&d, addr::RS1) + active(&d, addr::RS2);
            (total >= f64::from(i + 1)).then_some(())
        });
        assert!(
            opened.is_some(),
            "held connection {i} never became active\n{}",
            d.tail()
        );
    }
    assert_eq!(
        (active(&d, addr::RS1), active(&d, addr::RS2)),
        (2.0, 1.0),
        "3 long-lived connections under wlc: rs1, rs2, rs1"
    );
    // Short requests: rs2 has fewer active connections (256 + inactive < 512) every time.
    let answers = common::curl_vip(&lab, 10);
    assert!(
        answers.iter().all(|a| a == "rs2"),
        "new connections must go to rs2 (1 active) rather than rs1 (2 active): {answers:?}"
    );
    assert_eq!(active(&d, addr::RS1), 2.0, "held connections stay");
}

#[test]
fn sh_keeps_a_client_on_one_real_server() {
    let Some(ctx) = common::setup(41) else { return };
    let (lab, _d) = start(&ctx, "-s sh");
    let answers = common::curl_vip(&lab, 10);
    assert!(
        answers.iter().all(|a| a == &answers[0]) && answers[0].starts_with("rs"),
        "sh must send one client to one real server: {answers:?}"
    );
}

#[test]
fn persistence_keeps_a_client_on_one_real_server_under_rr() {
    let Some(ctx) = common::setup(42) else { return };
    let (lab, _d) = start(&ctx, "-s rr -p 60");
    let answers = common::curl_vip(&lab, 10);
    assert!(
        answers.iter().all(|a| a == &answers[0]) && answers[0].starts_with("rs"),
        "-p 60 must keep one client on one real server under rr: {answers:?}"
    );
}
