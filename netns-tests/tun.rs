//! LVS-TUN in the seeds' tunnelling lab (configs/labs/tun.toml): the director and the two
//! real servers on three networks joined by a router, each real decapsulating into its
//! `tunl0` (the kernel's, or `uvs tun-endpoint` where the kernel has no ipip).
//!
//! ```text
//!  client 198.51.100.10 ── router ── dir 203.0.113.10 (uvs, VIP 203.0.113.2)
//!                            ├── rs1 10.0.0.2/30  tunl0, VIP on lo
//!                            └── rs2 10.0.0.6/30  tunl0, VIP on lo
//! ```

use std::path::Path;
use std::time::Duration;

use uvs::ctl::proto::{HealthListing, Reply, Request};
use uvs::lab::{Lab, LabOptions, build_tun_lab};

use crate::common::{self, Director};

const VIP: &str = "203.0.113.2";
const DIRECTOR: [u8; 4] = [203, 0, 113, 10];
const RS1: [u8; 4] = [10, 0, 0, 2];
const RULES: &str = "-A -t 203.0.113.2:80 -s rr\n\
                     -a -t 203.0.113.2:80 -r 10.0.0.2 -i\n\
                     -a -t 203.0.113.2:80 -r 10.0.0.6 -i\n";

/// The lab with web servers on both reals (each answering its name, and uploads with their
/// length and hash) and a director with the seeds' rules.
fn tun_lab(ctx: &common::Ctx, offloads: bool) -> (Lab, Director) {
    let mut lab = build_tun_lab(&ctx.prefix, &LabOptions { offloads }, &common::uvs_exe())
        .unwrap_or_else(|e| panic!("building the TUN lab (offloads {offloads}): {e:#}"));
    for rs in ["rs1", "rs2"] {
        lab.start_builtin_http(rs, rs, 80, &common::uvs_exe())
            .unwrap_or_else(|e| panic!("web server on {rs}: {e:#}"));
    }
    let d = Director::launch()
        .rules(RULES)
        .interface("eth0")
        .start(&mut lab);
    (lab, d)
}

/// `n` requests to the VIP from the client; the answering servers' names.
fn requests(lab: &Lab, d: &Director, n: usize) -> Vec<String> {
    let url = format!("http://{VIP}/");
    (0..n)
        .map(|i| {
            lab.curl("client", &url, &[])
                .unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", d.tail()))
                .trim()
                .to_string()
        })
        .collect()
}

fn assert_split(lab: &Lab, d: &Director, n: usize, context: &str) {
    let answers = requests(lab, d, n);
    let c = common::count(&answers);
    assert_eq!(
        (c.get("rs1").copied(), c.get("rs2").copied()),
        (Some(n / 2), Some(n / 2)),
        "{context}: {answers:?}"
    );
}

/// The frames of a classic pcap file (what `tcpdump -w` writes on this host).
fn pcap_frames(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(b.len() >= 24, "{}: no pcap header", path.display());
    assert_eq!(&b[..4], &0xa1b2_c3d4u32.to_le_bytes(), "little-endian pcap");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let len = u32::from_le_bytes([b[at + 8], b[at + 9], b[at + 10], b[at + 11]]) as usize;
        let end = (at + 16 + len).min(b.len());
        out.push(b[at + 16..end].to_vec());
        at = end;
    }
    out
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The client's SYNs as it sent them (IPv4 packets), and the IPIP frames the real received.
fn syns(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter(|f| f.len() > 14 + 40 && f[12..14] == [8, 0] && f[14 + 9] == 6)
        .map(|f| f[14..].to_vec())
        .filter(|ip| {
            let ihl = usize::from(ip[0] & 0xf) * 4;
            ip[ihl + 13] & 0x12 == 0x02
        })
        .collect()
}

fn check_ipip_at_the_real(offloads: bool) {
    let Some(ctx) = common::setup(130 + u32::from(offloads)) else {
        return;
    };
    let (mut lab, d) = tun_lab(&ctx, offloads);
    let client_pcap = lab.dir().join("client.pcap");
    let rs1_pcap = lab.dir().join("rs1.pcap");
    let dir_pcap = lab.dir().join("dir.pcap");
    let c = lab
        .tcpdump_start("client", "eth0", "tcp dst port 80", &client_pcap)
        .unwrap();
    let r = lab
        .tcpdump_start("rs1", "eth0", "ip proto 4", &rs1_pcap)
        .unwrap();
    // Replies come from the VIP: none may pass the director.
    let x = lab
        .tcpdump_start("dir", "eth0", &format!("ip src {VIP}"), &dir_pcap)
        .unwrap();

    assert_split(&lab, &d, 20, &format!("rr, offloads {offloads}"));
    for pid in [c, r, x] {
        common::stop_capture(&mut lab, pid);
    }

    let sent = syns(&pcap_frames(&client_pcap));
    let at_real: Vec<Vec<u8>> = pcap_frames(&rs1_pcap)
        .into_iter()
        .filter(|f| f.len() > 14 + 20 && f[12..14] == [8, 0])
        .map(|f| f[14..].to_vec())
        .collect();
    assert!(!at_real.is_empty(), "no IPIP frame reached rs1");
    let mut matched = 0;
    for outer in &at_real {
        assert_eq!(outer[0], 0x45, "outer IPv4 header without options");
        assert_eq!(outer[9], 4, "protocol 4 (IPIP)");
        assert_eq!(outer[12..16], DIRECTOR, "outer source: the director");
        assert_eq!(outer[16..20], RS1, "outer destination: the real");
        let inner = &outer[20..];
        // The router between director and real decremented the outer TTL once.
        assert_eq!(outer[8], inner[8] - 1, "outer TTL from the inner TTL");
        assert_eq!(outer[6] & 0x40, inner[6] & 0x40, "DF copied");
        let seq = be32(inner, usize::from(inner[0] & 0xf) * 4 + 4);
        let Some(orig) = sent
            .iter()
            .find(|s| be32(s, usize::from(s[0] & 0xf) * 4 + 4) == seq)
        else {
            continue;
        };
        matched += 1;
        assert_eq!(inner.len(), orig.len(), "inner length");
        // Router and director each took one from the TTL; nothing else changed but the
        // header checksum that covers it.
        assert_eq!(inner[8], orig[8] - 2, "inner TTL");
        let differs: Vec<usize> = (0..orig.len()).filter(|&i| inner[i] != orig[i]).collect();
        assert!(
            differs.iter().all(|i| [8, 10, 11].contains(i)),
            "inner packet changed at {differs:?}"
        );
    }
    assert!(
        matched >= 10,
        "rs1 received {matched} of the client's SYNs inside IPIP"
    );
    let through_dir = pcap_frames(&dir_pcap);
    assert!(
        through_dir.is_empty(),
        "{} replies crossed the director",
        through_dir.len()
    );
}

#[test]
fn tun_rr_over_two_routed_reals_the_real_receives_ipip_from_the_director_offloads_on() {
    check_ipip_at_the_real(true);
}

#[test]
fn tun_rr_over_two_routed_reals_the_real_receives_ipip_from_the_director_offloads_off() {
    check_ipip_at_the_real(false);
}

#[test]
fn tun_gue_and_gre_variants_are_decapsulated_and_served() {
    let Some(ctx) = common::setup(132) else {
        return;
    };
    let (mut lab, d) = tun_lab(&ctx, true);
    let variants: [(&str, &str); 5] = [
        ("--tun-type gue --tun-port 6080", "udp dst port 6080"),
        (
            "--tun-type gue --tun-port 6080 --tun-csum",
            "udp dst port 6080",
        ),
        (
            "--tun-type gue --tun-port 6080 --tun-remcsum",
            "udp dst port 6080",
        ),
        ("--tun-type gre", "ip proto 47"),
        ("--tun-type gre --tun-csum", "ip proto 47"),
    ];
    for (i, (options, filter)) in variants.iter().enumerate() {
        for rs in ["10.0.0.2", "10.0.0.6"] {
            let mut args = vec!["-e", "-t", "203.0.113.2:80", "-r", rs, "-i"];
            args.extend(options.split_whitespace());
            d.uvsadm(&args).checked();
        }
        let pcap = lab.dir().join(format!("rs2-{i}.pcap"));
        let cap = lab.tcpdump_start("rs2", "eth0", filter, &pcap).unwrap();
        assert_split(&lab, &d, 4, options);
        common::stop_capture(&mut lab, cap);
        let frames = pcap_frames(&pcap);
        assert!(
            frames.len() >= 2,
            "{options}: rs2 saw {} frames matching {filter}",
            frames.len()
        );
        // A 64 KiB upload through each variant arrives intact (segments, checksums).
        let data = common::pseudo_random(64 << 10, 0x7e11 + i as u64);
        common::upload_and_verify(&lab, &format!("http://{VIP}/"), &data, &format!("v{i}"));
    }
    let listing = d.uvsadm(&["-Ln", "--tun-info"]).checked();
    assert!(listing.contains("gre:+c"), "{listing}");
}

fn check_pmtu_and_upload(offloads: bool) {
    let Some(ctx) = common::setup(133 + u32::from(offloads)) else {
        return;
    };
    let (mut lab, d) = tun_lab(&ctx, offloads);
    let pcap = lab.dir().join("client-icmp.pcap");
    let cap = lab.tcpdump_start("client", "eth0", "icmp", &pcap).unwrap();
    let url = format!("http://{VIP}/");
    let mut names = Vec::new();
    for i in 0..2u64 {
        let data = common::pseudo_random(2 << 20, 0x2b_0ad + i);
        names.push(common::upload_and_verify(
            &lab,
            &url,
            &data,
            &format!("{i}"),
        ));
    }
    common::stop_capture(&mut lab, cap);
    names.sort();
    assert_eq!(names, ["rs1", "rs2"], "two uploads under rr");
    // The client's full-size DF segments (1500 bytes) do not fit IPIP over a 1500-byte link:
    // the director answered with fragmentation-needed, MTU 1480, and the client adapted.
    let lines = lab.tcpdump_read(&pcap).unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("203.0.113.10 > 198.51.100.10")
                && l.contains("need to frag (mtu 1480)")),
        "no frag-needed from the director: {lines:?}"
    );
    let route = lab.exec_ok("client", &["ip", "route", "get", VIP]).unwrap();
    assert!(route.contains("mtu 1480"), "client's route: {route}");
    assert!(d.metric("uvs_drops_total", &[("reason", "tunnel_too_big")]) >= 1.0);
    assert!(d.metric("uvs_tunnel_frag_needed_total", &[]) >= 1.0);
    if offloads {
        // veth hands the director GSO super-frames; each left as segments.
        assert!(d.metric("uvs_tunnel_segmented_total", &[]) >= 1.0);
    }
    assert_eq!(d.metric("uvs_drops_total", &[("reason", "tx_failed")]), 0.0);
}

#[test]
fn tun_df_full_size_segments_get_frag_needed_and_a_2mb_upload_completes_offloads_off() {
    check_pmtu_and_upload(false);
}

#[test]
fn tun_df_full_size_segments_get_frag_needed_and_a_2mb_upload_completes_offloads_on() {
    check_pmtu_and_upload(true);
}

/// A TOML configuration of the seeds' service with every real checked by `check`.
fn checked_config(check: &str) -> String {
    format!(
        r#"metrics = "127.0.0.1:9477"
[[service]]
vip = "{VIP}"
port = 80
scheduler = "rr"
[service.check]
type = "{check}"
interval = 0.2
timeout = 0.3
retry = 0
rise = 1
fall = 1
[[service.real]]
address = "10.0.0.2"
forward = "tunnel"
[[service.real]]
address = "10.0.0.6"
forward = "tunnel"
"#
    )
}

fn health(d: &Director) -> HealthListing {
    match d.try_admin(&Request::Health) {
        Ok(Reply::Health(h)) => h,
        other => panic!("health request: {other:?}\n{}", d.tail()),
    }
}

/// Whether rs1 (10.0.0.2) is up, and its last check message.
fn rs1(d: &Director) -> (bool, String) {
    let h = health(d);
    let r = h.services[0]
        .reals
        .iter()
        .find(|r| r.addr == std::net::Ipv4Addr::new(10, 0, 0, 2))
        .cloned()
        .expect("rs1 in the listing");
    (r.up, r.last_message)
}

#[test]
fn tun_through_the_tunnel_check_catches_a_real_whose_tunnel_end_is_down() {
    let Some(ctx) = common::setup(135) else {
        return;
    };
    let mut lab = build_tun_lab(&ctx.prefix, &LabOptions::default(), &common::uvs_exe())
        .unwrap_or_else(|e| panic!("building the TUN lab: {e:#}"));
    for rs in ["rs1", "rs2"] {
        lab.start_builtin_http(rs, rs, 80, &common::uvs_exe())
            .unwrap_or_else(|e| panic!("web server on {rs}: {e:#}"));
    }
    // rs1's tunnel end goes down: nothing it receives through the tunnel reaches its stack,
    // but it still answers on its own address.
    lab.exec_ok("rs1", &["ip", "link", "set", "tunl0", "down"])
        .unwrap();
    let cfg = checked_config("tcp");
    let d = Director::launch()
        .file("--config", "uvs.toml", &cfg)
        .interface("eth0")
        .admin_socket()
        .start(&mut lab);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        rs1(&d).0,
        "a plain TCP check passes: {}",
        health(&d).render()
    );
    d.stop(&mut lab);

    let cfg = checked_config("vip");
    let d = Director::launch()
        .file("--config", "uvs.toml", &cfg)
        .interface("eth0")
        .admin_socket()
        .start(&mut lab);
    let down = common::poll(Duration::from_secs(5), || {
        let (up, msg) = rs1(&d);
        (!up && msg.contains("tunnel")).then_some(msg)
    });
    assert!(
        down.is_some(),
        "rs1 not down through its tunnel: {}\n{}",
        health(&d).render(),
        d.tail()
    );
    assert!(requests(&lab, &d, 4).iter().all(|a| a == "rs2"));
    lab.exec_ok("rs1", &["ip", "link", "set", "tunl0", "up"])
        .unwrap();
    let up = common::poll(Duration::from_secs(5), || rs1(&d).0.then_some(()));
    assert!(up.is_some(), "rs1 back up: {}", health(&d).render());
    assert_split(&lab, &d, 4, "both reals back");
    // uvs doctor sees the same: both reals reachable, decapsulating, answering for the VIP.
    let doctor = common::uvs_in(
        d.ns(),
        common::As::Root,
        &[
            "doctor",
            "--admin-socket",
            common::path_str(d.admin_socket()),
        ],
    );
    let text = format!("{}{}", doctor.stdout, doctor.stderr);
    assert!(doctor.ok(), "{text}");
    for rs in ["10.0.0.2", "10.0.0.6"] {
        assert!(
            text.contains(&format!("real server {rs} reachable via 203.0.113.1")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "real server {rs} decapsulates ipip and answers on VIP"
            )),
            "{text}"
        );
    }
    lab.exec_ok("rs2", &["ip", "link", "set", "tunl0", "down"])
        .unwrap();
    let doctor = common::uvs_in(
        d.ns(),
        common::As::Root,
        &[
            "doctor",
            "--admin-socket",
            common::path_str(d.admin_socket()),
        ],
    );
    let text = format!("{}{}", doctor.stdout, doctor.stderr);
    assert!(!doctor.ok(), "{text}");
    assert!(
        text.contains("real server 10.0.0.6 does not answer a SYN to 203.0.113.2:80 inside ipip"),
        "{text}"
    );
}

#[test]
fn tun_frag_needed_from_a_router_on_the_tunnel_path_is_translated_to_the_client() {
    let Some(ctx) = common::setup(136) else {
        return;
    };
    let (lab, d) = tun_lab(&ctx, true);
    // The router's link to rs1 is narrower than the director's: the router, not uvs, finds
    // the outer packets too big, and tells the director (the outer source).
    lab.exec_ok("router", &["ip", "link", "set", "eth2", "mtu", "1400"])
        .unwrap();
    let url = format!("http://{VIP}/");
    let mut names = Vec::new();
    for i in 0..2u64 {
        let data = common::pseudo_random(2 << 20, 0x9a7b + i);
        names.push(common::upload_and_verify(
            &lab,
            &url,
            &data,
            &format!("p{i}"),
        ));
    }
    names.sort();
    assert_eq!(names, ["rs1", "rs2"]);
    let route = lab.exec_ok("client", &["ip", "route", "get", VIP]).unwrap();
    assert!(
        route.contains("mtu 1380"),
        "the client learned the path's MTU less IPIP's 20 bytes: {route}"
    );
    assert!(d.metric("uvs_tunnel_path_icmp_translated_total", &[]) >= 1.0);
}
