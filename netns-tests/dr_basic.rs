//! The DR lab with nginx behind the director: scheduling, keep-alive, the rewritten frames,
//! ARP for the VIP, UDP.

use std::time::Duration;

use uvs::lab::{Lab, addr};

use crate::common::{self, Director, mac_str};

#[test]
fn rr_splits_ten_requests_five_five() {
    let Some(ctx) = common::setup(1) else { return };
    let mut lab = ctx.web_lab();
    Director::rr_http().start(&mut lab);
    common::assert_even_split(
        &lab,
        10,
        "10 requests under rr should split 5/5 between rs1 and rs2, got",
    );
}

#[test]
fn keepalive_connection_stays_on_one_rs() {
    let Some(ctx) = common::setup(2) else { return };
    let mut lab = ctx.web_lab();
    Director::rr_http().start(&mut lab);
    let url = format!("http://{}/", addr::VIP);
    let mut args: Vec<&str> = vec!["-w", "connects=%{num_connects}\\n"];
    // curl takes the URLs after the options; Lab::curl appends the last one.
    for _ in 0..9 {
        args.push(&url);
    }
    let out = lab
        .curl("client", &url, &args)
        .unwrap_or_else(|e| panic!("keep-alive curl: {e:#}\n{}", common::director_tail(&lab)));
    let mut bodies = Vec::new();
    let mut connects = 0u32;
    for line in out.lines() {
        match line.strip_prefix("connects=") {
            Some(n) => connects += n.parse::<u32>().expect("num_connects"),
            None => bodies.push(line.to_string()),
        }
    }
    assert_eq!(bodies.len(), 10, "expected 10 answers, got {out:?}");
    assert!(
        bodies.iter().all(|b| b == &bodies[0]) && (bodies[0] == "rs1" || bodies[0] == "rs2"),
        "one keep-alive connection must stay on one real server, got {bodies:?}"
    );
    assert_eq!(
        connects, 1,
        "curl opened {connects} connections for 10 requests"
    );
}

/// The router's neighbour entry for the VIP: (lladdr, state).
fn router_neigh_vip(lab: &Lab) -> Option<(String, String)> {
    common::neigh(&lab.ns("router"), &addr::VIP.to_string())
}

#[test]
fn frames_at_the_rs_are_rewritten_and_replies_bypass_the_director() {
    let Some(ctx) = common::setup(3) else { return };
    let mut lab = ctx.dr_lab();
    lab.set_sysctls(
        "router",
        &[("net.ipv4.neigh.eth1.delay_first_probe_time", "1")],
    )
    .expect("sysctl");
    common::start_web(&mut lab);
    Director::rr_http().start(&mut lab);

    let rs1_pcap = lab.dir().join("rs1.pcap");
    let dir_pcap = lab.dir().join("dir.pcap");
    let rs1_cap = lab
        .tcpdump_start("rs1", "eth0", "tcp port 80", &rs1_pcap)
        .unwrap();
    let dir_cap = lab.tcpdump_start("dir", "eth0", "", &dir_pcap).unwrap();
    // Two requests: rr sends one of them to rs1.
    let answers = common::curl_vip(&lab, 2);
    common::stop_capture(&mut lab, rs1_cap);
    lab.kill(dir_cap);
    assert!(answers.contains(&"rs1".to_string()), "{answers:?}");

    let dir_mac = mac_str(addr::HOST_DIR, 0);
    let rs1_mac = mac_str(addr::HOST_RS1, 0);
    let router_mac = mac_str(addr::HOST_ROUTER, 1);
    let vip = addr::VIP.to_string();
    let at_rs1 = common::read_pcap(&lab, &rs1_pcap);
    let to_vip: Vec<_> = at_rs1
        .iter()
        .filter(|p| p.dst_ip.as_deref() == Some(&vip))
        .collect();
    let from_vip: Vec<_> = at_rs1
        .iter()
        .filter(|p| p.src_ip.as_deref() == Some(&vip))
        .collect();
    assert!(
        to_vip.len() >= 3,
        "rs1 saw too few frames to the VIP: {at_rs1:#?}"
    );
    assert!(from_vip.len() >= 2, "rs1 sent too few replies: {at_rs1:#?}");
    for p in &to_vip {
        assert_eq!(
            (p.dst_mac.as_str(), p.src_mac.as_str()),
            (rs1_mac.as_str(), dir_mac.as_str()),
            "frame to the VIP at rs1 not rewritten dst=rs1/src=director: {}",
            p.line
        );
    }
    for p in &from_vip {
        assert_eq!(
            (p.dst_mac.as_str(), p.src_mac.as_str()),
            (router_mac.as_str(), rs1_mac.as_str()),
            "rs1's reply does not go straight to the router: {}",
            p.line
        );
    }
    let at_dir = common::read_pcap(&lab, &dir_pcap);
    assert!(
        at_dir.iter().any(|p| p.dst_ip.as_deref() == Some(&vip)),
        "the director's capture saw no request at all: {at_dir:#?}"
    );
    let leaked: Vec<_> = at_dir
        .iter()
        .filter(|p| p.src_ip.as_deref() == Some(&vip))
        .map(|p| &p.line)
        .collect();
    assert!(
        leaked.is_empty(),
        "replies passed the director: {leaked:#?}"
    );

    // ARP: the router learned the VIP at the director, and re-confirms it by unicast.
    let (mac, _) = router_neigh_vip(&lab).expect("router has no neighbour entry for the VIP");
    assert_eq!(mac, dir_mac, "router resolved the VIP to the wrong MAC");
    // The entry is made STALE and used: after delay_first_probe_time (1 s) the router sends a
    // unicast probe to the director's MAC, which uvs must answer. uvs's own gratuitous ARP
    // can confirm the entry first (no probe then), so up to 3 rounds are tried.
    let mut rounds = Vec::new();
    for round in 0..3 {
        let arp_pcap = lab.dir().join(format!("router-arp{round}.pcap"));
        let arp_cap = lab
            .tcpdump_start("router", "eth1", "arp", &arp_pcap)
            .unwrap();
        lab.exec_ok(
            "router",
            &[
                "ip", "neigh", "change", &vip, "dev", "eth1", "lladdr", &dir_mac, "nud", "stale",
            ],
        )
        .expect("making the entry stale");
        assert_eq!(
            router_neigh_vip(&lab).map(|x| x.1).as_deref(),
            Some("STALE")
        );
        common::curl_vip(&lab, 1);
        let reachable = common::poll(Duration::from_secs(6), || {
            router_neigh_vip(&lab).filter(|(_, state)| state == "REACHABLE")
        });
        common::stop_capture(&mut lab, arp_cap);
        let arp = common::read_pcap(&lab, &arp_pcap);
        let (mac, _) = reachable.unwrap_or_else(|| {
            panic!(
                "router's entry for the VIP did not become REACHABLE again: {:?}\nARP seen: {arp:#?}\n{}",
                router_neigh_vip(&lab),
                common::director_tail(&lab)
            )
        });
        assert_eq!(mac, dir_mac);
        let probe = arp.iter().any(|p| {
            p.dst_mac == dir_mac
                && p.src_mac == router_mac
                && p.line.contains(&format!("Request who-has {vip} tell"))
        });
        let answer = arp.iter().any(|p| {
            p.src_mac == dir_mac
                && p.dst_mac == router_mac
                && p.line.contains(&format!("Reply {vip} is-at {dir_mac}"))
        });
        if probe {
            assert!(
                answer,
                "the director did not answer the unicast probe: {arp:#?}"
            );
            rounds.clear();
            break;
        }
        rounds.push(arp);
    }
    assert!(
        rounds.is_empty(),
        "no unicast ARP probe from the router to the director in 3 rounds: {rounds:#?}"
    );
    let again = common::curl_vip(&lab, 2);
    assert_eq!(common::count(&again).len(), 2, "{again:?}");
}

#[test]
fn udp_service_works() {
    let Some(ctx) = common::setup(4) else { return };
    let mut lab = ctx.dr_lab();
    for rs in ["rs1", "rs2"] {
        lab.start_udp_echo(rs, rs, 53, &common::uvs_exe())
            .unwrap_or_else(|e| panic!("UDP echo on {rs}: {e:#}"));
    }
    Director::launch()
        .rules(&common::dr_rules('u', 53))
        .interface("eth0")
        .start(&mut lab);
    // Each request is a new socket, so a new source port: a new flow for the scheduler. The
    // socket is connected to the VIP, so only a reply from the VIP is accepted. No retries:
    // the director reports ready only once it knows both real servers' MACs.
    let answers: Vec<String> = (0..4)
        .map(|i| {
            lab.udp_request("client", addr::VIP, 53, &format!("ping {i}"))
                .unwrap_or_else(|e| {
                    panic!("UDP request {i}: {e:#}\n{}", common::director_tail(&lab))
                })
                .trim()
                .to_string()
        })
        .collect();
    let c = common::count(&answers);
    assert_eq!(
        (c.get("rs1"), c.get("rs2")),
        (Some(&2), Some(&2)),
        "4 UDP flows under rr go 2/2 to rs1 and rs2: {answers:?}"
    );
}

/// Regression: uvs once received its own transmitted frames on the fanout socket and
/// forwarded them again, every millisecond, forever (fixed by PACKET_FANOUT_FLAG_IGNORE_OUTGOING).
#[test]
fn each_frame_is_forwarded_exactly_once() {
    let Some(ctx) = common::setup(11) else { return };
    let mut lab = ctx.web_lab();
    let d = Director::rr_http().start(&mut lab);
    let pcap = lab.dir().join("dir.pcap");
    let cap = lab
        .tcpdump_start("dir", "eth0", &format!("dst host {}", addr::VIP), &pcap)
        .unwrap();
    common::curl_vip(&lab, 1);
    std::thread::sleep(Duration::from_millis(500));
    common::stop_capture(&mut lab, cap);
    let pkts = common::read_pcap(&lab, &pcap);
    let dir_mac = mac_str(addr::HOST_DIR, 0);
    let router_mac = mac_str(addr::HOST_ROUTER, 1);
    let ipv4 = |mac: &str| {
        pkts.iter()
            .filter(|p| p.src_mac == mac && p.dst_ip.is_some())
            .count()
    };
    let (inbound, outbound) = (ipv4(&router_mac), ipv4(&dir_mac));
    let m = d.scrape();
    assert_eq!(
        outbound,
        inbound,
        "the director received {inbound} frames for the VIP and sent {outbound} \
         (rx_frames {}, forwarded {}); first frames:\n{}",
        common::metric(&m, "uvs_worker_rx_frames_total", &[]),
        common::metric(&m, "uvs_worker_forwarded_total", &[]),
        pkts.iter()
            .take(12)
            .map(|p| p.line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Tutorials put the VIP on the director itself (`ifconfig ens33:0 VIP`, or `lo`). Its kernel
/// would then answer ARP for the VIP as well (arp_ignore=0) and RST the client's SYNs; uvs's
/// nftables tables keep it silent: each ARP request gets exactly one reply (uvs's), and every
/// request is served by a real server.
#[test]
fn vip_on_the_directors_own_kernel_gets_one_arp_reply_per_request() {
    let Some(ctx) = common::setup(87) else { return };
    let mut lab = ctx.dr_lab();
    let vip = addr::VIP.to_string();
    lab.exec_ok(
        "dir",
        &["ip", "addr", "add", &format!("{vip}/32"), "dev", "lo"],
    )
    .expect("VIP on the director's lo");
    common::start_web(&mut lab);
    Director::rr_http().start(&mut lab);

    let dir_mac = mac_str(addr::HOST_DIR, 0);
    let router_mac = mac_str(addr::HOST_ROUTER, 1);
    let arp_pcap = lab.dir().join("router-arp.pcap");
    let cap = lab
        .tcpdump_start("router", "eth1", "arp", &arp_pcap)
        .unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        // Forget the VIP, so the next request needs a fresh broadcast ARP request.
        lab.exec_ok("router", &["ip", "neigh", "flush", "to", &vip])
            .expect("flushing the router's entry");
        answers.extend(common::curl_vip(&lab, 2));
    }
    common::stop_capture(&mut lab, cap);
    assert_eq!(
        common::count(&answers).values().sum::<usize>(),
        6,
        "every request answered by a real server: {answers:?}"
    );
    let arp = common::read_pcap(&lab, &arp_pcap);
    let requests = arp
        .iter()
        .filter(|p| p.src_mac == router_mac && p.line.contains(&format!("Request who-has {vip} ")))
        .count();
    let replies: Vec<_> = arp
        .iter()
        .filter(|p| p.dst_mac == router_mac && p.line.contains(&format!("Reply {vip} is-at")))
        .collect();
    assert!(
        requests >= 3,
        "the router sent {requests} ARP requests: {arp:#?}"
    );
    assert_eq!(
        replies.len(),
        requests,
        "one reply per request (a second one is the director's kernel): {arp:#?}"
    );
    assert!(replies.iter().all(|p| p.src_mac == dir_mac), "{replies:#?}");
}

/// `[arp] vip_mac`: the VIP is answered with a MAC of uvs's own, clients send service traffic
/// to it, and the director's kernel — VIP on its lo, the harshest case — stays out without a
/// per-frame ingress chain: frames to the VIP MAC never reach its IP stack, and the `ip uvs`
/// prerouting rule keeps it off frames still sent to the interface MAC (a stale entry), which
/// uvs forwards too.
#[test]
fn with_a_vip_mac_clients_use_it_and_the_directors_kernel_stays_out() {
    let Some(ctx) = common::setup(88) else { return };
    let mut lab = ctx.dr_lab();
    let vip = addr::VIP.to_string();
    let vip_mac = "02:00:5e:00:01:0a";
    lab.exec_ok(
        "dir",
        &["ip", "addr", "add", &format!("{vip}/32"), "dev", "lo"],
    )
    .expect("VIP on the director's lo");
    common::start_web(&mut lab);
    let d = Director::rr_http()
        .config(&format!("[arp]\nvip_mac = \"{vip_mac}\"\n"))
        .start(&mut lab);

    let tables = lab.exec_ok("dir", &["nft", "list", "tables"]).expect("nft");
    assert!(
        tables.contains("table ip uvs") && tables.contains("table arp uvs"),
        "{tables}"
    );
    assert!(
        !tables.contains("table netdev uvs"),
        "no per-frame ingress chain with a VIP MAC: {tables}"
    );

    let dir_pcap = lab.dir().join("dir.pcap");
    let cap = lab
        .tcpdump_start("dir", "eth0", &format!("host {vip} or arp"), &dir_pcap)
        .unwrap();
    let answers = common::curl_vip(&lab, 4);
    let learned = router_neigh_vip(&lab);
    // A stale entry: the router still sends to the director's own MAC.
    let dir_mac = mac_str(addr::HOST_DIR, 0);
    lab.exec_ok(
        "router",
        &[
            "ip",
            "neigh",
            "replace",
            &vip,
            "dev",
            "eth1",
            "lladdr",
            &dir_mac,
            "nud",
            "permanent",
        ],
    )
    .expect("static neighbour");
    let stale_answers = common::curl_vip(&lab, 2);
    common::stop_capture(&mut lab, cap);

    assert_eq!(
        learned.as_ref().map(|(mac, _)| mac.as_str()),
        Some(vip_mac),
        "the router learned {learned:?} for the VIP\n{}",
        d.tail()
    );
    assert_eq!(
        common::count(&answers).values().sum::<usize>(),
        4,
        "every request to the VIP MAC served by a real server: {answers:?}"
    );
    assert_eq!(
        common::count(&stale_answers).values().sum::<usize>(),
        2,
        "requests to the interface MAC still served, not RST by the kernel: {stale_answers:?}"
    );
    let pkts = common::read_pcap(&lab, &dir_pcap);
    let router_mac = mac_str(addr::HOST_ROUTER, 1);
    let to_vip_mac = pkts
        .iter()
        .filter(|p| p.src_mac == router_mac && p.dst_mac == vip_mac && p.dst_ip.is_some())
        .count();
    assert!(
        to_vip_mac >= 4,
        "frames for the VIP addressed to the VIP MAC: {to_vip_mac}"
    );
    let reply_from = pkts
        .iter()
        .filter(|p| p.line.contains(&format!("Reply {vip} is-at")))
        .map(|p| p.src_mac.clone())
        .collect::<Vec<_>>();
    assert!(
        !reply_from.is_empty() && reply_from.iter().all(|m| m == vip_mac),
        "ARP replies for the VIP come from the VIP MAC only: {reply_from:?}"
    );
}

/// CPU seconds (user + system) the director's `uvs-worker-0` thread has used so far.
fn worker_cpu_secs(director: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{director}/task")).expect("director's threads");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "uvs-worker-0" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).expect("worker stat");
        // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        return ticks / hz;
    }
    panic!("no uvs-worker-0 thread in /proc/{director}/task");
}

#[test]
fn busy_poll_spins_while_traffic_is_recent_and_sleeps_when_idle() {
    let Some(ctx) = common::setup(89) else { return };
    let mut lab = ctx.web_lab();
    // One worker: it sees every request (with two, each sees half of them and its share of
    // the core depends on how the client's ports hash).
    let director = Director::rr_http()
        .config("[ring]\nbusy_poll_us = 300000\n")
        .args(&["--workers", "1"])
        .start(&mut lab)
        .pid();

    // Requests closer together than the 300 ms window: the worker never sleeps.
    let (cpu0, t0) = (worker_cpu_secs(director), std::time::Instant::now());
    let mut answers = Vec::new();
    while t0.elapsed() < Duration::from_millis(1500) {
        answers.extend(common::curl_vip(&lab, 1));
    }
    let busy_share = (worker_cpu_secs(director) - cpu0) / t0.elapsed().as_secs_f64();
    let c = common::count(&answers);
    assert!(
        c.len() == 2 && c.keys().all(|k| k == "rs1" || k == "rs2"),
        "both real servers answer with busy polling: {c:?}"
    );

    // Idle for longer than the window: the worker sleeps in poll again.
    std::thread::sleep(Duration::from_millis(500));
    let (cpu1, t1) = (worker_cpu_secs(director), std::time::Instant::now());
    std::thread::sleep(Duration::from_millis(1500));
    let idle_share = (worker_cpu_secs(director) - cpu1) / t1.elapsed().as_secs_f64();

    assert!(
        busy_share > 0.5,
        "a worker busy-polling between requests uses its core ({:.0} % of it)",
        busy_share * 100.0
    );
    assert!(
        idle_share < 0.1,
        "a worker idle past busy_poll_us sleeps ({:.0} % of a core)",
        idle_share * 100.0
    );
}

/// The kernel's current CPU latency QoS value, in microseconds (the smallest request held).
fn cpu_latency_granted() -> i32 {
    let bytes = std::fs::read("/dev/cpu_dma_latency").expect("read /dev/cpu_dma_latency");
    i32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes"))
}

#[test]
fn a_cpu_latency_request_lasts_exactly_as_long_as_the_director() {
    let Some(ctx) = common::setup(91) else { return };
    let before = cpu_latency_granted();
    let mut lab = ctx.web_lab();
    let director = Director::rr_http()
        .config("[ring]\ncpu_latency_us = 0\n")
        .start(&mut lab);
    assert_eq!(
        cpu_latency_granted(),
        0,
        "while uvs runs with cpu_latency_us = 0, idle CPUs may not sleep at all"
    );
    common::assert_even_split(&lab, 4, "the sleeping worker forwards as before");

    // Killed, not stopped: no exit path of uvs may leave the machine tuned.
    director.kill(&mut lab);
    let restored = common::poll(Duration::from_secs(5), || {
        (cpu_latency_granted() == before).then_some(())
    });
    assert!(
        restored.is_some(),
        "the request ends with the process: {} µs granted, {before} before uvs started",
        cpu_latency_granted()
    );
}

#[test]
fn coalescing_waits_under_a_stream_but_never_holds_a_lone_request() {
    let Some(ctx) = common::setup(90) else { return };
    let mut lab = ctx.dr_lab();
    for rs in ["rs1", "rs2"] {
        lab.start_udp_echo(rs, rs, 53, &common::uvs_exe())
            .unwrap_or_else(|e| panic!("UDP echo on {rs}: {e:#}"));
        lab.start_builtin_http(rs, rs, 8080, &common::uvs_exe())
            .unwrap_or_else(|e| panic!("responder on {rs}:8080: {e:#}"));
    }
    let rules = common::dr_rules('u', 53) + &common::dr_rules('t', 8080);
    // The default [ring] coalesce_us (50).
    let d = Director::launch()
        .rules(&rules)
        .interface("eth0")
        .start(&mut lab);
    let waits = |text: &str| common::metric(text, "uvs_worker_coalesce_waits_total", &[]);

    // Single-datagram requests 20 ms apart: each frame's next round finds the ring empty.
    let before = d.scrape();
    assert!(
        before.contains("uvs_worker_coalesce_waits_total{"),
        "the exporter publishes the coalescing counter:\n{before}"
    );
    for i in 0..20 {
        lab.udp_request("client", addr::VIP, 53, &format!("lone {i}"))
            .unwrap_or_else(|e| panic!("UDP request {i}: {e:#}\n{}", common::director_tail(&lab)));
        std::thread::sleep(Duration::from_millis(20));
    }
    let after_lone = d.scrape();
    assert_eq!(
        waits(&after_lone),
        waits(&before),
        "no coalescing wait for requests that arrive one at a time"
    );

    // Bulk uploads through the VIP: streams of segments, rounds with traffic back to back
    // (4 to 17 waits per 8 MiB upload when this was written), delivered intact.
    let url = format!("http://{}:8080/", addr::VIP);
    for i in 0..3 {
        let data = common::pseudo_random(8 << 20, 0xc0a1_e5ce + i);
        common::upload_and_verify(&lab, &url, &data, &format!("coalesce{i}"));
    }
    let after_stream = d.scrape();
    let stream_waits = waits(&after_stream) - waits(&after_lone);
    eprintln!("coalescing waits during three 8 MiB uploads: {stream_waits}");
    assert!(
        stream_waits > 0.0,
        "a worker kept busy by a stream waits between small rounds"
    );
}

/// Regression: the fanout program once read the frame from the wrong offset (the kernel runs
/// it from the network header) and sent every frame to worker 0, so `--workers 2` forwarded as
/// one. Twenty connections from one client must reach both workers, and every answer arrive.
#[test]
fn two_workers_share_one_clients_connections() {
    let Some(ctx) = common::setup(12) else { return };
    let mut lab = ctx.web_lab();
    let d = Director::rr_http()
        .args(&["--workers", "2"])
        .start(&mut lab);
    let answers = common::curl_vip(&lab, 20);
    assert_eq!(
        answers.iter().filter(|a| a.starts_with("rs")).count(),
        20,
        "{answers:?}"
    );
    let forwarded: Vec<f64> = ["0", "1"]
        .iter()
        .map(|w| d.metric("uvs_worker_forwarded_total", &[("worker", w)]))
        .collect();
    assert!(
        forwarded.iter().all(|&n| n >= 10.0),
        "frames forwarded per worker: {forwarded:?}"
    );
}
