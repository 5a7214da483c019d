//! A burst of malformed and random frames at the director: each defect is counted under its
//! reason, the daemon survives, its kernel stays silent, and service continues.

use std::time::Duration;

use uvs::lab::addr;

use crate::common::{self, Director, Pkt};
use crate::frames::{IP, L4, client_syn, dir_mac, edit, fix_ip, router_mac, send, syn_from};

fn arp(hlen: u8, op: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dir_mac());
    f.extend_from_slice(&router_mac());
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.push(hlen);
    f.push(4);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&router_mac()[..]);
    f.extend(std::iter::repeat_n(
        0xaa,
        usize::from(hlen).saturating_sub(6),
    ));
    f.extend_from_slice(&addr::ROUTER_LAN.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend(std::iter::repeat_n(0, usize::from(hlen).saturating_sub(6)));
    f.extend_from_slice(&addr::VIP.octets());
    f
}

/// The hand-made defects, sent from the router's eth1 through the bridge.
fn defects() -> Vec<Vec<u8>> {
    let syn = client_syn();
    let mut v = Vec::new();
    // Truncated at every boundary: inside the Ethernet header (the kernel refuses to send
    // that one), right after it, inside and at the end of the fixed IPv4 header.
    for cut in [10, 14, 20, 33, IP + 12] {
        v.push(syn[..cut].to_vec());
    }
    // TCP header cut by the frame's end: the IP length still claims it all (bad_ip_length),
    // and with the IP length shrunk to match (bad_l4_header).
    v.push(syn[..L4 + 10].to_vec());
    v.push(edit(syn[..L4 + 10].to_vec(), |f| {
        f[IP + 2..IP + 4].copy_from_slice(&30u16.to_be_bytes())
    }));
    // IHL < 5, and version 6 in an IPv4 frame.
    v.push(edit(syn.clone(), |f| f[IP] = 0x44));
    v.push(edit(syn.clone(), |f| f[IP] = 0x65));
    // IP total length beyond the frame.
    v.push(edit(syn.clone(), |f| {
        f[IP + 2..IP + 4].copy_from_slice(&1400u16.to_be_bytes())
    }));
    // Bad IP header checksum.
    let mut bad = syn.clone();
    bad[IP + 10] ^= 0x5a;
    v.push(bad);
    // Fragments to VIP:80: first (MF) and a later one (offset set).
    v.push(edit(syn.clone(), |f| f[IP + 6] = 0x20));
    v.push(edit(syn.clone(), |f| {
        f[IP + 6] = 0x00;
        f[IP + 7] = 0x10;
    }));
    // TCP data offset < 5.
    let mut doff = syn.clone();
    doff[L4 + 12] = 0x40;
    v.push(doff);
    // Zero source port, zero destination port.
    let mut zs = syn.clone();
    zs[L4..L4 + 2].copy_from_slice(&[0, 0]);
    v.push(zs);
    let mut zd = syn.clone();
    zd[L4 + 2..L4 + 4].copy_from_slice(&[0, 0]);
    v.push(zd);
    // Multicast, broadcast and unspecified source IPs.
    for src in [[224, 0, 0, 5], [255, 255, 255, 255], [0, 0, 0, 0]] {
        v.push(syn_from(src, 40000, 80));
    }
    // An odd ethertype (IEEE local experimental).
    let mut odd = syn.clone();
    odd[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    v.push(odd);
    // ARP with a bogus hardware length, and with a bogus opcode.
    v.push(arp(7, 1));
    v.push(arp(6, 9));
    v
}

/// Frames with an invalid (group) source MAC: a bridge drops these on ingress, so they are
/// sent from the switch's port towards the director instead, straight onto its veth.
fn group_source_frames() -> Vec<Vec<u8>> {
    let mut bcast = client_syn();
    bcast[6..12].copy_from_slice(&[0xff; 6]);
    let mut mcast = client_syn();
    mcast[6..12].copy_from_slice(&[0x01, 0x00, 0x5e, 0x00, 0x00, 0x05]);
    vec![bcast, mcast]
}

/// A few hundred random frames to the director's MAC. Half are random after the Ethernet
/// header; half carry an IPv4 header to the VIP with random fields and contents. Source
/// addresses stay in the lab's client subnet (a host that does not exist).
fn random_frames(n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..n {
        let r = common::pseudo_random(16 + (i * 7919) % 1200, 0xf022_0000 + i as u64);
        let mut f = Vec::new();
        f.extend_from_slice(&dir_mac());
        f.extend_from_slice(&router_mac());
        if i % 2 == 0 {
            f.extend_from_slice(&r);
            // Keep the random ethertype off IPv4 (the other half covers it) and IPv6.
            if matches!(u16::from_be_bytes([f[12], f[13]]), 0x0800 | 0x86dd) {
                f[12] = 0x88;
            }
        } else {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            f.extend_from_slice(&r);
            if f.len() >= IP + 20 {
                f[IP + 12..IP + 16].copy_from_slice(&[172, 30, 0, 200]);
                f[IP + 16..IP + 20].copy_from_slice(&addr::VIP.octets());
                // Mostly well-formed IP headers, so the random bytes reach the L4 checks.
                if i % 4 == 1 {
                    f[IP] = 0x45;
                    let len = (f.len() - IP) as u16;
                    f[IP + 2..IP + 4].copy_from_slice(&len.to_be_bytes());
                    f[IP + 6] &= 0x40;
                    f[IP + 7] = 0;
                    f[IP + 8] = 64;
                    fix_ip(&mut f);
                }
            }
        }
        out.push(f);
    }
    out
}

#[test]
fn malformed_burst_is_counted_and_traffic_survives() {
    let Some(ctx) = common::setup(8) else { return };
    let mut lab = ctx.web_lab();
    let director = Director::rr_http().start(&mut lab);
    // One normal request first, so the bridge has learnt every port and the path is warm.
    common::curl_vip(&lab, 1);

    let pcap = lab.dir().join("dir.pcap");
    let cap = lab.tcpdump_start("dir", "eth0", "", &pcap).unwrap();
    let d = defects();
    let out = send(&lab, "router", "eth1", &d, "defects");
    assert!(
        out.contains(&format!("sent {} frames, 1 too short", d.len() - 1)),
        "{out}"
    );
    send(&lab, "sw", "dir", &group_source_frames(), "group-src");
    send(&lab, "router", "eth1", &random_frames(400), "random");

    let want: &[(&str, f64)] = &[
        ("truncated", 1.0),
        ("bad_ip_header", 1.0),
        ("bad_ip_length", 1.0),
        ("bad_ip_checksum", 1.0),
        ("fragment", 2.0),
        ("bad_l4_header", 1.0),
        ("zero_port", 2.0),
        ("not_ipv4", 1.0),
        ("bad_source", 2.0),
    ];
    let short = |text: &str| -> Vec<String> {
        let mut missing: Vec<String> = want
            .iter()
            .filter(|(r, min)| common::metric(text, "uvs_drops_total", &[("reason", r)]) < *min)
            .map(|(r, min)| format!("drops {r} < {min}"))
            .collect();
        let arp = common::metric(text, "uvs_arp_ignored_total", &[("reason", "malformed")])
            + common::metric(text, "uvs_arp_ignored_total", &[("reason", "bad_opcode")]);
        if arp < 2.0 {
            missing.push(format!("arp malformed+bad_opcode = {arp} < 2"));
        }
        missing
    };
    let mut last = String::new();
    let counted = common::poll(Duration::from_secs(5), || {
        last = director.scrape();
        short(&last).is_empty().then_some(())
    });
    assert!(
        counted.is_some(),
        "drops not counted as expected: {:?}\nmetrics:\n{}",
        short(&last),
        last.lines()
            .filter(|l| l.starts_with("uvs_drops") || l.starts_with("uvs_arp"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        director.is_running(&mut lab),
        "the director died:\n{}",
        director.tail()
    );

    common::assert_even_split(&lab, 4, "after the burst");
    common::stop_capture(&mut lab, cap);

    let pkts = common::read_pcap(&lab, &pcap);
    // tcpdump may lose part of a burst of 400+ frames; the check below is about the
    // director's own answers, so the capture only has to have been live throughout.
    let router = common::mac_str(addr::HOST_ROUTER, 1);
    assert!(
        pkts.iter().filter(|p| p.src_mac == router).count() > 50,
        "capture missed the burst: {} packets",
        pkts.len()
    );
    let vip = addr::VIP.to_string();
    let dir_ip = addr::DIRECTOR.to_string();
    let noise: Vec<&Pkt> = pkts
        .iter()
        .filter(|p| {
            matches!(p.src_ip.as_deref(), Some(s) if s == vip || s == dir_ip)
                && (p.is_rst() || p.is_icmp())
        })
        .collect();
    assert!(
        noise.is_empty(),
        "the director answered with RST/ICMP: {noise:#?}"
    );
    assert!(
        director.is_running(&mut lab),
        "the director died after the requests"
    );
}

/// The two fragments of one TCP SYN (with 8 payload bytes) client:40001 → VIP:80: 16 bytes of
/// TCP at offset 0 with MF, then the remaining 12 at offset 16.
fn fragmented_syn() -> [Vec<u8>; 2] {
    let mut syn = client_syn();
    syn[L4..L4 + 2].copy_from_slice(&40001u16.to_be_bytes());
    let l4 = syn[L4..].to_vec();
    let head = syn[..L4].to_vec();
    let frag = |data: &[u8], off8: u16, mf: bool| {
        let mut f = head.clone();
        f.extend_from_slice(data);
        let len = (20 + data.len()) as u16;
        f[IP + 2..IP + 4].copy_from_slice(&len.to_be_bytes());
        let fo = off8 | if mf { 0x2000 } else { 0 };
        f[IP + 6..IP + 8].copy_from_slice(&fo.to_be_bytes());
        fix_ip(&mut f);
        f
    };
    [frag(&l4[..16], 0, true), frag(&l4[16..], 2, false)]
}

#[test]
fn fragments_to_the_vip_are_counted_and_never_forwarded() {
    let Some(ctx) = common::setup(10) else { return };
    let mut lab = ctx.web_lab();
    let d = Director::rr_http().start(&mut lab);
    common::curl_vip(&lab, 1);
    let before = d.scrape();
    let conns_before = common::metric(&before, "node_ipvs_connections_total", &[]);

    let pcap = lab.dir().join("dir.pcap");
    let cap = lab.tcpdump_start("dir", "eth0", "", &pcap).unwrap();
    let syn = client_syn();
    let lone = vec![
        edit(syn.clone(), |f| f[IP + 6] = 0x20),
        edit(syn.clone(), |f| {
            f[IP + 6] = 0x00;
            f[IP + 7] = 0x10;
        }),
    ];
    send(&lab, "router", "eth1", &lone, "lone-fragments");
    send(&lab, "router", "eth1", &fragmented_syn(), "fragmented-syn");
    common::stop_capture(&mut lab, cap);
    let seen = common::read_pcap(&lab, &pcap)
        .iter()
        .filter(|p| p.dst_ip.as_deref() == Some(&addr::VIP.to_string()))
        .count();

    let mut last = String::new();
    let counted = common::poll(Duration::from_secs(3), || {
        last = d.scrape();
        (common::metric(&last, "uvs_drops_total", &[("reason", "fragment")]) >= 4.0).then_some(())
    });
    let conns = common::metric(&last, "node_ipvs_connections_total", &[]) - conns_before;
    assert!(d.is_running(&mut lab));
    assert!(
        counted.is_some() && conns == 0.0,
        "4 fragments to the VIP reached the director's eth0 ({seen} frames to the VIP captured) \
         but uvs counted fragment={} and opened {conns} new connection(s)",
        common::metric(&last, "uvs_drops_total", &[("reason", "fragment")])
    );
}
