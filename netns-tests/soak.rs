//! Soak: mixed traffic (keep-alive HTTP connections spanning a minute each, a new short HTTP
//! connection and a UDP exchange every second, a 256 kB upload every ten seconds) while the
//! configuration changes every second through the admin socket (weight flaps 0↔1 standing in
//! for health checks, scheduler changes, a service added and removed, timeouts). Checks: the
//! RSS of the uvs process stays bounded, no descriptor leaks, no established connection is
//! lost, every request is answered.
//!
//! `UVS_SOAK_SECS` sets the traffic phase (default 110 s, so the test takes about two
//! minutes); `scripts/soak.sh [MINUTES]` runs it for longer.

use std::time::{Duration, Instant};

use uvs::ctl::proto::{Change, Reply, Request};
use uvs::lab::addr;
use uvs::model::{Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec};

use crate::common::{self, Director, KeepAlive};

fn key(proto: Protocol, port: u16) -> ServiceKey {
    ServiceKey::addr(proto, addr::VIP, port)
}

/// The change applied at second `i`.
fn change(i: u64) -> Vec<Change> {
    let web = key(Protocol::Tcp, 80);
    let extra = key(Protocol::Tcp, 8080);
    match i % 6 {
        // Health-check flaps: rs2 down (weight 0: no new flows, established ones stay) and up.
        0 | 3 => {
            let mut rs2 = RealSpec::route(addr::RS2, 80);
            rs2.weight = if i % 6 == 0 { 0 } else { 1 };
            vec![Change::EditReal(web, rs2)]
        }
        1 => vec![Change::EditService(ServiceSpec::new(
            web,
            if i % 12 == 1 {
                SchedulerKind::Wrr
            } else {
                SchedulerKind::Rr
            },
        ))],
        2 => vec![
            Change::AddService(ServiceSpec::new(extra, SchedulerKind::Rr)),
            Change::AddReal(extra, RealSpec::route(addr::RS1, 8080)),
            Change::AddReal(extra, RealSpec::route(addr::RS2, 8080)),
        ],
        4 => vec![Change::DeleteService(extra)],
        _ => {
            // UDP flap, and timeouts.
            let mut rs1 = RealSpec::route(addr::RS1, 53);
            rs1.weight = (i % 12 / 6) as u32;
            vec![
                Change::EditReal(key(Protocol::Udp, 53), rs1),
                Change::SetTimeouts {
                    tcp: 600 + (i % 300) as u32,
                    tcpfin: 0,
                    udp: 0,
                },
            ]
        }
    }
}

struct Sample {
    at: Duration,
    rss_kb: u64,
    fds: usize,
}

fn sample(pid: u32, at: Duration) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    Sample { at, rss_kb, fds }
}

fn soak_secs() -> u64 {
    std::env::var("UVS_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(110)
}

#[test]
fn soak_mixed_traffic_with_live_changes_and_flaps() {
    let Some(ctx) = common::setup(75) else { return };
    let secs = soak_secs();
    let mut lab = ctx.web_lab();
    for rs in ["rs1", "rs2"] {
        lab.start_udp_echo(rs, rs, 53, &common::uvs_exe())
            .unwrap_or_else(|e| panic!("UDP echo on {rs}: {e:#}"));
        // Uploads go to the built-in responder, which answers with a digest of the body.
        lab.start_builtin_http(rs, rs, 8081, &common::uvs_exe())
            .unwrap_or_else(|e| panic!("responder on {rs}:8081: {e:#}"));
    }
    let rules = format!(
        "{}{}{}",
        common::dr_rules('t', 80),
        common::dr_rules('u', 53),
        common::dr_rules('t', 8081)
    );
    let director = Director::launch()
        .rules(&rules)
        .interface("eth0")
        .admin_socket()
        .start(&mut lab);
    let pid = director.pid();

    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut samples = vec![sample(pid, Duration::ZERO)];
    let mut keepalive: Option<KeepAlive> = None;
    let mut segments = 0;
    let (mut short_ok, mut udp_ok, mut uploads, mut changes) = (0u64, 0u64, 0u64, 0u64);
    let mut failures: Vec<String> = Vec::new();
    let mut i = 0u64;
    while Instant::now() < deadline {
        let tick = Instant::now();
        let left = deadline.saturating_duration_since(tick).as_secs();
        // Keep one keep-alive connection open at all times, a minute (or what is left) each.
        let finished = match &keepalive {
            Some(k) => !k.is_running(&mut lab),
            None => true,
        };
        if finished {
            if let Some(k) = keepalive.take() {
                k.check(&mut lab, Duration::from_secs(1));
                segments += 1;
            }
            if left >= 10 {
                let n = (left.min(60) as usize - 5) * 10;
                // n requests at 10/s, and 30 s to spare.
                let max = n as u64 / 10 + 30;
                keepalive = Some(KeepAlive::start(
                    &mut lab,
                    n,
                    max,
                    &format!("soak{segments}"),
                ));
            }
        }
        match director.try_admin(&Request::Apply(change(i))) {
            Ok(Reply::Done) => changes += 1,
            other => failures.push(format!("change {i} {:?}: {other:?}", change(i))),
        }
        match lab.curl("client", &format!("http://{}/", addr::VIP), &[]) {
            Ok(b) if b.trim() == "rs1" || b.trim() == "rs2" => short_ok += 1,
            other => failures.push(format!("short request at {i}s: {other:?}")),
        }
        match lab.udp_request("client", addr::VIP, 53, &format!("soak {i}")) {
            Ok(b) if b.contains("rs1") || b.contains("rs2") => udp_ok += 1,
            other => failures.push(format!("UDP request at {i}s: {other:?}")),
        }
        if i % 10 == 5 {
            let data = common::pseudo_random(256 * 1024, i);
            common::upload_and_verify(&lab, &format!("http://{}:8081/", addr::VIP), &data, "soak");
            uploads += 1;
        }
        if i % 10 == 0 {
            samples.push(sample(pid, start.elapsed()));
        }
        assert!(
            director.is_running(&mut lab),
            "the director died at {i}s:\n{}",
            director.tail()
        );
        i += 1;
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    if let Some(k) = keepalive.take() {
        k.check(&mut lab, Duration::from_secs(30));
        segments += 1;
    }
    samples.push(sample(pid, start.elapsed()));
    let m = director.scrape();
    eprintln!(
        "soak {secs}s: {changes} changes, {short_ok} short HTTP, {udp_ok} UDP, {uploads} uploads, \
         {segments} keep-alive connections; flows {}; rss/fds: {}",
        common::metric(&m, "uvs_worker_flows", &[]),
        samples
            .iter()
            .map(|s| format!("{}s {} kB {} fds", s.at.as_secs(), s.rss_kb, s.fds))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(failures.is_empty(), "failures: {failures:#?}");
    assert!(segments >= 1 && changes >= secs - 2, "{segments} {changes}");
    // Bounded: after the first ten seconds (allocator warm-up, first flows), RSS grows by at
    // most 8 MB whatever the duration, and descriptors come back to where they were.
    let warm = samples
        .iter()
        .find(|s| s.at >= Duration::from_secs(10))
        .unwrap_or(&samples[0]);
    let last = samples.last().unwrap();
    let max_rss = samples.iter().map(|s| s.rss_kb).max().unwrap_or(0);
    assert!(
        max_rss <= warm.rss_kb + 8 * 1024,
        "RSS grew from {} kB to {max_rss} kB",
        warm.rss_kb
    );
    assert!(
        last.fds <= warm.fds,
        "descriptors: {} after warm-up, {} at the end",
        warm.fds,
        last.fds
    );
    director.stop(&mut lab);
}
