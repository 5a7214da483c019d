//! The admin socket applied live: changes under traffic lose nothing and move no established
//! connection; refused changes change nothing; status and connection listings report what
//! the traffic did. Talks to the director through a filesystem admin socket, reachable from
//! the test process across namespaces.

use std::net::Ipv4Addr;
use std::time::Duration;

use uvs::ctl::proto::{Change, Reply, Request, Status};
use uvs::lab::addr;
use uvs::model::{Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec};

use crate::common::{self, Director, KeepAlive};

fn vip80() -> ServiceKey {
    ServiceKey {
        proto: Protocol::Tcp,
        vip: addr::VIP,
        port: 80,
        fwmark: 0,
    }
}

fn status(d: &Director) -> Status {
    match d.admin(&Request::Status) {
        Reply::Status(s) => s,
        other => panic!("unexpected reply {other:?}"),
    }
}

/// The i-th of a cycle of harmless changes: weights, scheduler, a second service, timeouts.
fn change(i: usize) -> Vec<Change> {
    let mut rs2 = RealSpec::route(addr::RS2, 80);
    rs2.weight = 1 + (i % 3) as u32;
    let extra = ServiceKey {
        port: 8080,
        ..vip80()
    };
    match i % 5 {
        0 => vec![Change::EditReal(vip80(), rs2)],
        1 => vec![Change::EditService(ServiceSpec::new(
            vip80(),
            if i % 2 == 0 {
                SchedulerKind::Rr
            } else {
                SchedulerKind::Wrr
            },
        ))],
        2 => vec![
            Change::AddService(ServiceSpec::new(extra, SchedulerKind::Rr)),
            Change::AddReal(extra, RealSpec::route(addr::RS1, 8080)),
        ],
        3 => vec![Change::DeleteService(extra)],
        _ => vec![Change::SetTimeouts {
            tcp: 900 + i as u32,
            tcpfin: 0,
            udp: 0,
        }],
    }
}

#[test]
fn hundred_live_changes_under_traffic_lose_nothing_and_move_no_connection() {
    let Some(ctx) = common::setup(20) else { return };
    let mut lab = ctx.web_lab();
    let d = Director::rr_http().admin_socket().start(&mut lab);

    // One keep-alive connection, 60 requests at 10/s, spanning all the changes below.
    let keepalive = KeepAlive::start(&mut lab, 60, 20, "changes");
    std::thread::sleep(Duration::from_millis(300));

    let mut answers = Vec::new();
    for i in 0..100 {
        match d.admin(&Request::Apply(change(i))) {
            Reply::Done => {}
            other => panic!("change {i} {:?} refused: {other:?}", change(i)),
        }
        if i % 2 == 0 {
            answers.extend(common::curl_vip(&lab, 1));
        }
    }
    assert_eq!(
        answers.len(),
        50,
        "every request during the changes was answered"
    );
    assert!(
        answers.iter().all(|a| a == "rs1" || a == "rs2"),
        "{answers:?}"
    );

    keepalive.check(&mut lab, Duration::from_secs(15));

    // The status shows the traffic: 50 short connections + 1 keep-alive (+ the extra service
    // added and removed).
    let st = status(&d);
    let svc = st
        .services
        .iter()
        .find(|s| s.key == vip80())
        .expect("VIP:80 listed");
    assert!(svc.stats.conns >= 51, "{svc:?}");
    assert_eq!(svc.stats.out_pkts, 0, "DR: no outgoing packets");
    assert!(
        svc.reals
            .iter()
            .all(|r| r.forward == uvs::model::ForwardMethod::Route)
    );
    let counted: u32 = svc.reals.iter().map(|r| r.active + r.inactive).sum();
    assert!(counted >= 1, "connections are counted per real: {svc:?}");

    // The connection listing holds the short connections in FIN_WAIT/CLOSE etc.
    let conns = match d.admin(&Request::Connections) {
        Reply::Connections(c) => c,
        other => panic!("{other:?}"),
    };
    assert!(!conns.is_empty());
    for c in &conns {
        assert_eq!(c.virt, (addr::VIP, 80));
        assert!(
            c.dest == (addr::RS1, 80) || c.dest == (addr::RS2, 80),
            "{c:?}"
        );
        assert_eq!(c.client.0, addr::CLIENT);
    }
}

#[test]
fn a_refused_change_leaves_the_running_state_as_it_was() {
    let Some(ctx) = common::setup(21) else { return };
    let mut lab = ctx.web_lab();
    let d = Director::rr_http().admin_socket().start(&mut lab);
    let before = status(&d);
    let undefined = ServiceKey {
        port: 81,
        ..vip80()
    };
    let reply = d.admin(&Request::Apply(vec![
        Change::DeleteReal(vip80(), addr::RS2, 80),
        Change::AddReal(undefined, RealSpec::route(addr::RS1, 81)),
    ]));
    match reply {
        Reply::Refused(r) => {
            assert_eq!(r.message, "Service not defined");
            assert_eq!(r.change, Some(1));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A real that is not on the director's LAN is refused too, before anything changes.
    let reply = d.admin(&Request::Apply(vec![Change::AddReal(
        vip80(),
        RealSpec::route(Ipv4Addr::new(192, 168, 77, 7), 80),
    )]));
    assert!(
        matches!(reply, Reply::Refused(ref r) if r.message.contains("not on-link")),
        "{reply:?}"
    );
    let after = status(&d);
    assert_eq!(before.services.len(), after.services.len());
    let reals = |s: &Status| -> Vec<(Ipv4Addr, u32)> {
        s.services[0]
            .reals
            .iter()
            .map(|r| (r.addr, r.weight))
            .collect()
    };
    assert_eq!(reals(&before), reals(&after));
    // And traffic still reaches both real servers.
    let c = common::count(&common::curl_vip(&lab, 4));
    assert_eq!(c.len(), 2, "{c:?}");
}

#[test]
fn sighup_reloads_transactionally() {
    let Some(ctx) = common::setup(22) else { return };
    let mut lab = ctx.web_lab();
    let d = Director::rr_http().admin_socket().start(&mut lab);
    let weights = |s: &Status| -> Vec<(Ipv4Addr, u32)> {
        s.services[0]
            .reals
            .iter()
            .map(|r| (r.addr, r.weight))
            .collect()
    };
    // A valid edit: rs2's weight becomes 3.
    d.rewrite_rules(&common::dr_rules('t', 80).replace(
        &format!("{}:80 -g -w 1", addr::RS2),
        &format!("{}:80 -g -w 3", addr::RS2),
    ));
    d.signal(&lab, libc::SIGHUP);
    let reloaded = common::poll(Duration::from_secs(3), || {
        let s = status(&d);
        (weights(&s) == vec![(addr::RS1, 1), (addr::RS2, 3)]).then_some(())
    });
    assert!(
        reloaded.is_some(),
        "weights after reload: {:?}",
        weights(&status(&d))
    );
    // An invalid file (line 2 names an undefined service) changes nothing.
    d.rewrite_rules("-A -t 10.0.0.100:80 -s rr\n-a -t 10.0.0.100:99 -r 10.0.0.11\n");
    d.signal(&lab, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.is_running(&mut lab), "the director survives a bad reload");
    assert_eq!(weights(&status(&d)), vec![(addr::RS1, 1), (addr::RS2, 3)]);
    let log = d.log();
    assert!(
        log.contains("configuration refused") && log.contains(":2:"),
        "{log}"
    );
    assert_eq!(common::count(&common::curl_vip(&lab, 4)).len(), 2);
}

#[test]
fn weight_zero_drains_existing_connections_finish_new_ones_go_elsewhere() {
    let Some(ctx) = common::setup(23) else { return };
    let mut lab = ctx.web_lab();
    // Persistent rr service: the template must also appear in the connection listing.
    let rules = format!(
        "-A -t {vip}:80 -s rr -p 30\n-a -t {vip}:80 -r {}:80 -g -w 1\n-a -t {vip}:80 -r {}:80 -g -w 1\n",
        addr::RS1,
        addr::RS2,
        vip = addr::VIP
    );
    let d = Director::launch()
        .rules(&rules)
        .interface("eth0")
        .admin_socket()
        .start(&mut lab);
    // A long keep-alive connection from the client (40 requests at 10/s).
    let keepalive = KeepAlive::start(&mut lab, 40, 20, "drain");
    std::thread::sleep(Duration::from_millis(500));
    let first = keepalive.output();
    let pinned = first
        .lines()
        .next()
        .map(str::trim)
        .unwrap_or("")
        .to_string();
    assert!(
        pinned == "rs1" || pinned == "rs2",
        "first answer: {first:?}"
    );
    let pinned_ip = if pinned == "rs1" {
        addr::RS1
    } else {
        addr::RS2
    };
    let other = if pinned == "rs1" { "rs2" } else { "rs1" };

    let conns = match d.admin(&Request::Connections) {
        Reply::Connections(c) => c,
        other => panic!("{other:?}"),
    };
    assert!(
        conns
            .iter()
            .any(|c| c.state == "NONE" && c.client.1 == 0 && c.dest.0 == pinned_ip),
        "the persistence template is listed: {conns:?}"
    );

    // Quiesce the pinned real server: delete the persistence so new clients are scheduled
    // afresh, and set its weight to 0.
    let mut quiesced = RealSpec::route(pinned_ip, 80);
    quiesced.weight = 0;
    let mut spec = ServiceSpec::new(vip80(), SchedulerKind::Rr);
    spec.persistence_timeout = None;
    match d.admin(&Request::Apply(vec![
        Change::EditService(spec),
        Change::EditReal(vip80(), quiesced),
    ])) {
        Reply::Done => {}
        other => panic!("{other:?}"),
    }
    // New connections all go to the other real server...
    let fresh = common::curl_vip(&lab, 6);
    assert!(
        fresh.iter().all(|a| a == other),
        "new connections avoid the quiesced real: {fresh:?}"
    );
    // ...while the established connection keeps being served by the quiesced one.
    let bodies = keepalive.check(&mut lab, Duration::from_secs(15));
    assert!(
        bodies.iter().all(|b| *b == pinned),
        "the drained connection stayed: {bodies:?}"
    );
}
