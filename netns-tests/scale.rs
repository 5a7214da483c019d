//! Control plane at scale (issue 25): a director with 10,000 services keeps serving one of
//! them without a single failed request while another real's weight changes 1,000 times
//! through the admin socket and a real shared by every service fails its health check and
//! recovers — 10,000 weight changes each way, applied as one publication.

use std::time::{Duration, Instant};

use uvs::ctl::proto::{Change, Reply, Request, Status};
use uvs::lab::addr;
use uvs::model::{Protocol, RealSpec, ServiceKey};

use crate::common::{self, Director, KeepAlive, start_web};

const SERVICES: usize = 10_000;
/// The health port each real answers on (the check of every service probes it).
const HEALTH_PORT: u16 = 8081;

/// Port of the i-th service: the traffic service is VIP:80, the others VIP:10001….
fn port(i: usize) -> u16 {
    if i == 0 { 80 } else { 10_000 + i as u16 }
}

/// Every service with rs1 (weight 2) and rs2 (weight 1), both checked on the health port.
fn config() -> String {
    let mut t = String::new();
    for i in 0..SERVICES {
        t.push_str(&format!(
            "[[service]]\nvip = \"{vip}\"\nport = {p}\nscheduler = \"wrr\"\n\
             [service.check]\ntype = \"tcp\"\nconnect_port = {HEALTH_PORT}\n\
             interval = 0.2\ntimeout = 0.3\nretry = 1\ndelay_before_retry = 0.2\n\
             [[service.real]]\naddress = \"{rs1}\"\nweight = 2\n\
             [[service.real]]\naddress = \"{rs2}\"\nweight = 1\n",
            vip = addr::VIP,
            p = port(i),
            rs1 = addr::RS1,
            rs2 = addr::RS2,
        ));
    }
    t
}

fn status(d: &Director) -> Status {
    match d.try_admin(&Request::Status) {
        Ok(Reply::Status(s)) => s,
        other => panic!("status: {other:?}\n{}", d.tail()),
    }
}

/// rs1's weight in every service.
fn rs1_weights(d: &Director) -> Vec<u32> {
    status(d)
        .services
        .iter()
        .filter_map(|s| s.reals.iter().find(|r| r.addr == addr::RS1))
        .map(|r| r.weight)
        .collect()
}

fn wait_rs1_weight(d: &Director, weight: u32, what: &str) {
    common::poll(Duration::from_secs(30), || {
        let w = rs1_weights(d);
        (w.len() == SERVICES && w.iter().all(|&x| x == weight)).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{what}: rs1 not at weight {weight} in every service\n{}",
            d.tail()
        )
    });
}

#[test]
fn ten_thousand_services_serve_through_a_thousand_changes_and_a_shared_real_failing() {
    let Some(ctx) = common::setup(170) else {
        return;
    };
    let mut lab = ctx.web_lab();
    start_web(&mut lab);
    let exe = common::uvs_exe();
    let health_rs1 = lab
        .start_http_on("rs1", "rs1", HEALTH_PORT, false, &exe)
        .expect("rs1 health port");
    lab.start_http_on("rs2", "rs2", HEALTH_PORT, false, &exe)
        .expect("rs2 health port");
    let d = Director::launch()
        .config(&config())
        .interface("eth0")
        .admin_socket()
        .metrics_off()
        .start(&mut lab);
    assert_eq!(status(&d).services.len(), SERVICES);
    wait_rs1_weight(&d, 2, "first checks");

    // Traffic to VIP:80 for the whole test: one keep-alive connection (established flows),
    // and a new connection every 50 ms (new flows scheduled on every snapshot in between).
    let requests = 400;
    let keepalive = KeepAlive::start(&mut lab, 250, 40, "scale");
    let url = format!("http://{}/", addr::VIP);
    let mut args = vec![
        "curl",
        "-s",
        "--max-time",
        "3",
        "--rate",
        "20/s",
        "-H",
        "Connection: close",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\\n",
    ];
    args.extend(std::iter::repeat_n(url.as_str(), requests));
    let log = lab.dir().join("new-connections.log");
    let client = lab.spawn("client", &args, &log).expect("traffic client");
    std::thread::sleep(Duration::from_millis(500));

    // 1,000 weight changes of rs2 in the traffic service (1..=3, never 0).
    let traffic = ServiceKey::addr(Protocol::Tcp, addr::VIP, 80);
    let t = Instant::now();
    let weight = |i: usize| 1 + (i % 3) as u32;
    for i in 0..1000 {
        let mut rs2 = RealSpec::route(addr::RS2, 80);
        rs2.weight = weight(i);
        match d.admin(&Request::Apply(vec![Change::EditReal(traffic, rs2)])) {
            Reply::Done => {}
            other => panic!("weight change {i} refused: {other:?}"),
        }
    }
    eprintln!(
        "1,000 weight changes at {SERVICES} services: {:?}",
        t.elapsed()
    );
    let st = status(&d);
    let svc = st
        .services
        .iter()
        .find(|s| s.key == traffic)
        .expect("VIP:80");
    let rs2 = svc.reals.iter().find(|r| r.addr == addr::RS2).expect("rs2");
    assert_eq!(
        rs2.weight,
        weight(999),
        "the last change is the one in force"
    );

    // rs1, in every service, fails its check and recovers.
    lab.kill(health_rs1);
    wait_rs1_weight(&d, 0, "rs1 failed");
    lab.start_http_on("rs1", "rs1", HEALTH_PORT, false, &exe)
        .expect("rs1 health port again");
    wait_rs1_weight(&d, 2, "rs1 recovered");
    let log_text = d.log();
    let batched = format!("health: {SERVICES} changes applied in one publication");
    assert_eq!(
        log_text.matches(&batched).count(),
        2,
        "the failure and the recovery, each one publication of {SERVICES} changes:\n{}",
        d.tail()
    );

    // Every request of the whole run was answered.
    assert!(
        common::wait_exit(&mut lab, client, Duration::from_secs(40)),
        "traffic client still running"
    );
    let codes = std::fs::read_to_string(&log).expect("client log");
    let answered = codes.lines().filter(|l| l.trim() == "200").count();
    assert_eq!(
        answered,
        requests,
        "new connections to VIP:80 not answered: {:?}",
        codes
            .lines()
            .filter(|l| l.trim() != "200")
            .collect::<Vec<_>>()
    );
    keepalive.check(&mut lab, Duration::from_secs(40));
}
