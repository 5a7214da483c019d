//! FullNAT in the seed lab `configs/labs/fullnat.toml`: unmodified real servers (their gateway
//! is the router, no VIP, no ARP settings) on another network behind a router serve the VIP;
//! their nginx learns the client's address by the PROXY protocol. Checked as a user checks it:
//! who answers, what each side sees in tcpdump and in nginx's log, whether bytes arrive
//! intact, how many local ports a client can use and what happens when they run out.

use std::path::Path;

use uvs::lab::build::{build_topology, start_http_servers};
use uvs::lab::spec::LabSpec;
use uvs::lab::{Lab, LabOptions};

use crate::common::{self, Director};

const VIP: &str = "192.168.70.100";
const LIP: &str = "192.168.70.200";
const DIR: &str = "192.168.70.2";
const CLIENT: &str = "198.51.100.10";
const RS1: &str = "10.10.0.11";

fn seed_lab(ctx: &common::Ctx, offloads: bool) -> Lab {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/labs/fullnat.toml");
    let spec = LabSpec::load(&file).unwrap_or_else(|e| panic!("fullnat lab: {e:#}"));
    let mut lab = build_topology(&spec, Some(&ctx.prefix), &LabOptions { offloads })
        .unwrap_or_else(|e| panic!("building the fullnat lab (offloads {offloads}): {e:#}"));
    start_http_servers(&mut lab, &spec, &common::uvs_exe())
        .unwrap_or_else(|e| panic!("fullnat lab: web servers: {e:#}"));
    lab
}

/// The lab's rules, with `extra` lines (more services, another local address).
fn rules(proxy: &str, laddr: bool, extra: &str) -> String {
    let mut r = format!(
        "-A -t {VIP}:80 -s rr --proxy-protocol {proxy}\n\
         -a -t {VIP}:80 -r 10.10.0.11:8080 --fullnat -w 1\n\
         -a -t {VIP}:80 -r 10.10.0.12:8080 --fullnat -w 1\n"
    );
    if laddr {
        r.push_str(&format!("--add-laddr -t {VIP}:80 -z {LIP} -F eth0\n"));
    }
    r.push_str(extra);
    r
}

fn director(lab: &mut Lab, rules: &str, config: Option<&str>) -> Director {
    let mut l = Director::launch()
        .rules(rules)
        .interface("eth0")
        .args(&["--workers", "2"])
        .admin_socket();
    if let Some(c) = config {
        l = l.config(c);
    }
    l.start(lab)
}

fn curl(lab: &Lab, url: &str, d: &Director) -> String {
    lab.curl("client", url, &[])
        .unwrap_or_else(|e| panic!("{url}: {e:#}\n{}", d.tail()))
        .trim()
        .to_string()
}

#[test]
fn unmodified_reals_behind_a_router_serve_the_vip_and_learn_the_client_by_proxy_v2() {
    let Some(ctx) = common::setup(138) else {
        return;
    };
    let mut lab = seed_lab(&ctx, true);
    let d = director(&mut lab, &rules("v2", true, ""), None);

    // The reals are as they came: gateway the router, no VIP anywhere.
    let route = lab
        .exec_ok("rs1", &["ip", "route", "show", "default"])
        .unwrap();
    assert!(route.contains("via 10.10.0.1"), "{route}");
    let addrs = lab.exec_ok("rs1", &["ip", "-4", "addr"]).unwrap();
    assert!(!addrs.contains(VIP), "{addrs}");

    let rs1_pcap = lab.dir().join("rs1.pcap");
    let cap = lab
        .tcpdump_start("rs1", "eth0", "tcp port 8080", &rs1_pcap)
        .unwrap();
    let url = format!("http://{VIP}/");
    let answers: Vec<String> = (0..10).map(|_| curl(&lab, &url, &d)).collect();
    let c = common::count(&answers);
    assert_eq!(
        (c.get("rs1"), c.get("rs2")),
        (Some(&5), Some(&5)),
        "{answers:?}"
    );
    // nginx saw the client, by the PROXY header.
    let peer = curl(&lab, &format!("http://{VIP}/peer"), &d);
    assert!(
        peer.contains(&format!("client={CLIENT}:")) && peer.ends_with("via=proxy"),
        "{peer}"
    );
    common::stop_capture(&mut lab, cap);
    // On the real's wire every packet is between the local address and the real.
    let pkts = common::read_pcap(&lab, &rs1_pcap);
    assert!(pkts.len() > 20, "{} packets", pkts.len());
    let strangers: Vec<_> = pkts
        .iter()
        .filter(|p| {
            [&p.src_ip, &p.dst_ip]
                .iter()
                .any(|ip| ip.as_deref().is_some_and(|ip| ip != LIP && ip != RS1))
        })
        .map(|p| p.line.clone())
        .collect();
    assert!(
        strangers.is_empty(),
        "the real saw others than LIP: {strangers:#?}"
    );
    // nginx's access log names the client first, the local address as the TCP peer.
    let log =
        std::fs::read_to_string(lab.dir().join("rs1-nginx8080/access.log")).unwrap_or_default();
    let line = log.lines().last().unwrap_or_default();
    assert!(
        line.starts_with(&format!("{CLIENT}:")) && line.contains(&format!(" {LIP}:")),
        "nginx log: {log}"
    );
    // uvsadm shows it as DPVS does.
    let listing = d.uvsadm(&["-Ln"]).checked();
    assert_eq!(
        listing.lines().filter(|l| l.contains("FullNat")).count(),
        2,
        "{listing}"
    );
    let laddrs = d.uvsadm(&["--get-laddr"]).checked();
    assert!(laddrs.contains(LIP), "{laddrs}");

    // Switched live to PROXY v1 (`-E … --proxy-protocol v1`): nginx reads that too.
    d.uvsadm(&[
        "-E",
        "-t",
        &format!("{VIP}:80"),
        "-s",
        "rr",
        "--proxy-protocol",
        "v1",
    ])
    .checked();
    assert!(d.uvsadm(&["-Ln"]).checked().contains("ppv1"));
    for _ in 0..2 {
        curl(&lab, &format!("http://{VIP}/v1"), &d);
    }
    let log =
        std::fs::read_to_string(lab.dir().join("rs1-nginx8080/access.log")).unwrap_or_default();
    let line = log
        .lines()
        .rfind(|l| l.contains("GET /v1"))
        .unwrap_or_default();
    assert!(
        line.starts_with(&format!("{CLIENT}:")),
        "nginx log (v1): {log}"
    );
}

#[test]
fn fullnat_carries_2mb_both_ways_intact_and_proxy_v1_with_offloads_on_and_off() {
    let Some(ctx) = common::setup(139) else {
        return;
    };
    for offloads in [true, false] {
        let mut lab = seed_lab(&ctx, offloads);
        // The built-in responder on 8081 checks uploads and serves downloads (it reads the
        // PROXY header too).
        let exe = common::uvs_exe();
        for (rs, name) in [("rs1", "rs1"), ("rs2", "rs2")] {
            lab.start_http_proxied(rs, name, 8081, false, &exe).unwrap();
        }
        let extra = format!(
            "-A -t {VIP}:81 -s rr --proxy-protocol v1\n\
             -a -t {VIP}:81 -r 10.10.0.11:8081 --fullnat -w 1\n\
             -a -t {VIP}:81 -r 10.10.0.12:8081 --fullnat -w 1\n"
        );
        let d = director(&mut lab, &rules("v2", false, &extra), None);
        let url = format!("http://{VIP}:81/");
        let tag = format!("fullnat-offloads-{offloads}");
        let data = common::pseudo_random(2 << 20, 0x0f01_14a7);
        common::upload_and_verify(&lab, &url, &data, &tag);
        let file = lab.dir().join(format!("download-{tag}.bin"));
        lab.curl(
            "client",
            &format!("{url}bytes/{}", 2 << 20),
            &["--max-time", "60", "-o", common::path_str(&file)],
        )
        .unwrap_or_else(|e| panic!("download: {e:#}\n{}", d.tail()));
        let got = std::fs::read(&file).unwrap_or_default();
        assert!(
            got == uvs::lab::responder::pattern(2 << 20),
            "offloads {offloads}: download altered ({} bytes)",
            got.len()
        );
        let peer = curl(&lab, &format!("{url}peer"), &d);
        assert!(
            peer.contains(&format!("client={CLIENT}:")) && peer.ends_with("via=proxy-v1"),
            "{peer}"
        );
        let malformed = d.metric("uvs_drops_total", &[("reason", "bad_l4_header")]);
        assert_eq!(malformed, 0.0);
    }
}

#[test]
fn one_client_through_one_local_address_gets_distinct_ports_then_runs_out_counted() {
    let Some(ctx) = common::setup(140) else {
        return;
    };
    let mut lab = seed_lab(&ctx, true);
    let d = director(&mut lab, &rules("v2", true, ""), None);
    // 2000 short connections (the server closes each), from one client.
    let n = 2000;
    let url = format!("http://{VIP}/");
    let urls: Vec<String> = (0..n).map(|_| url.clone()).collect();
    let mut args = vec![
        "curl",
        "-s",
        "--noproxy",
        "*",
        "--max-time",
        "120",
        "-H",
        "Connection: close",
    ];
    args.extend(urls.iter().map(String::as_str));
    let out = lab
        .exec_ok("client", &args)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.tail()));
    let answered = out.lines().filter(|l| l.starts_with("rs")).count();
    assert_eq!(answered, n, "every request answered");
    // No two connections shared a local port: the reals' logs name each once.
    let mut ports = std::collections::BTreeSet::new();
    let mut lines = 0;
    for rs in ["rs1", "rs2"] {
        let log = std::fs::read_to_string(lab.dir().join(format!("{rs}-nginx8080/access.log")))
            .unwrap_or_default();
        for l in log.lines() {
            let peer = l.split_whitespace().nth(1).unwrap_or_default();
            if let Some((ip, port)) = peer.rsplit_once(':') {
                if ip == "127.0.0.1" {
                    continue; // the lab's own readiness probe
                }
                assert_eq!(ip, LIP, "{l}");
                ports.insert(port.to_string());
                lines += 1;
            }
        }
    }
    assert!(lines >= n, "{lines} log lines");
    assert_eq!(ports.len(), lines, "a local port was used twice");
    let in_use = d.metric("uvs_fullnat_local_ports_in_use", &[("laddr", LIP)]);
    assert!(
        in_use >= n as f64,
        "closed connections keep their port: {in_use}"
    );
    d.stop(&mut lab);

    // A range of 8 ports over 2 workers: the client's ninth connection (at most) is refused,
    // counted, and named.
    let config = "[fullnat]\nports = [2000, 2007]\n";
    let d = director(&mut lab, &rules("v2", true, ""), Some(config));
    let mut failed = 0;
    for _ in 0..12 {
        if lab
            .curl(
                "client",
                &url,
                &["--max-time", "1", "-H", "Connection: close"],
            )
            .is_err()
        {
            failed += 1;
        }
    }
    let refused = d.metric("uvs_fullnat_port_exhausted_total", &[("laddr", LIP)]);
    let drops = d.metric("uvs_drops_total", &[("reason", "no_local_port")]);
    assert!(failed >= 4, "{failed} of 12 failed");
    assert!(
        refused >= 1.0 && drops >= 1.0,
        "refused {refused}, drops {drops}"
    );
    let laddrs = d.uvsadm(&["--get-laddr"]).checked();
    let row = laddrs
        .lines()
        .find(|l| l.contains(LIP))
        .unwrap_or_default()
        .to_string();
    let conflicts: u64 = row
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(conflicts >= 1, "--get-laddr shows the refusals: {laddrs}");
}

#[test]
fn with_the_directors_own_address_as_local_address_its_kernel_resets_nothing() {
    let Some(ctx) = common::setup(141) else {
        return;
    };
    let mut lab = seed_lab(&ctx, true);
    let d = director(&mut lab, &rules("v2", false, ""), None);
    let pcap = lab.dir().join("dir-eth0.pcap");
    let cap = lab
        .tcpdump_start("dir", "eth0", &format!("tcp and src host {DIR}"), &pcap)
        .unwrap();
    let url = format!("http://{VIP}/");
    for _ in 0..6 {
        curl(&lab, &url, &d);
    }
    common::stop_capture(&mut lab, cap);
    let pkts = common::read_pcap(&lab, &pcap);
    let resets: Vec<_> = pkts
        .iter()
        .filter(|p| p.is_rst())
        .map(|p| p.line.clone())
        .collect();
    assert!(
        pkts.len() >= 6 * 4,
        "requests leave from the director's address: {}",
        pkts.len()
    );
    assert!(
        resets.is_empty(),
        "the director's kernel reset replies: {resets:#?}"
    );
    // Its own connections from that address still work (a health check, say).
    let own = lab
        .curl("dir", "http://10.10.0.11:8080/", &["--haproxy-protocol"])
        .unwrap();
    assert_eq!(own.trim(), "rs1");
}
