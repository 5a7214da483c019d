//! Hostile input and faults: well over a hundred kinds of malformed frames plus 10^5 random
//! ones, each accounted for; a SYN flood against a small flow table while a legitimate
//! keep-alive connection keeps working; overload (ring drops counted, the admin socket still
//! answers within a second, also while a slow client holds a connection); unprivileged and
//! garbage admin requests; SIGKILL and restart.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use uvs::ctl::proto::{Change, Reply, Request};
use uvs::lab::{Lab, addr, inject};

use crate::common::{self, As, Director, KeepAlive, Pkt};
use crate::frames::{self, IP, L4, client_syn, dir_mac, edit, fix_ip, router_mac, syn_from};

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(router_mac(), dir_mac())
        .ipv4(addr::CLIENT.octets(), addr::VIP.octets(), 64)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, &[0u8; 12]).unwrap();
    v
}

fn tcp_flags(flags: u8) -> Vec<u8> {
    let mut f = client_syn();
    f[L4 + 13] = flags;
    f
}

#[allow(clippy::too_many_arguments)]
fn arp(
    htype: u16,
    ptype: u16,
    hlen: u8,
    plen: u8,
    op: u16,
    sip: [u8; 4],
    tip: [u8; 4],
    cut: Option<usize>,
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&router_mac());
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&htype.to_be_bytes());
    f.extend_from_slice(&ptype.to_be_bytes());
    f.push(hlen);
    f.push(plen);
    f.extend_from_slice(&op.to_be_bytes());
    let h = usize::from(hlen);
    let p = usize::from(plen);
    let mut smac = router_mac().to_vec();
    smac.resize(h, 0xaa);
    let mut spa = sip.to_vec();
    spa.resize(p, 0);
    let mut tpa = tip.to_vec();
    tpa.resize(p, 0);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&spa);
    f.extend(std::iter::repeat_n(0, h));
    f.extend_from_slice(&tpa);
    if let Some(c) = cut {
        f.truncate(c);
    }
    f
}

/// Where a defect is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Counted {
    /// `uvs_drops_total{reason}`.
    Drop(&'static str),
    /// `uvs_arp_ignored_total{reason}`.
    Arp(&'static str),
    /// Refused by the kernel's packet socket (shorter than an Ethernet header): never sent.
    Unsendable,
}

struct Defect {
    name: String,
    frame: Vec<u8>,
    counted: Counted,
    /// Sent from the switch's port (a bridge drops frames with a group source MAC).
    from_switch: bool,
}

fn d(v: &mut Vec<Defect>, name: impl Into<String>, frame: Vec<u8>, counted: Counted) {
    v.push(Defect {
        name: name.into(),
        frame,
        counted,
        from_switch: false,
    });
}

/// The catalogue of malformed frames, each with the reason it must be counted under.
fn defects() -> Vec<Defect> {
    use Counted::{Arp, Drop, Unsendable};
    let mut v = Vec::new();
    let s = client_syn();
    // Truncated at every byte from inside the Ethernet header to the end of the TCP header:
    // the IP total length then claims more than the frame holds.
    for cut in 0..s.len() {
        let c = match cut {
            0..14 => Unsendable,
            14..34 => Drop("truncated"),
            _ => Drop("bad_ip_length"),
        };
        d(&mut v, format!("syn cut at {cut}"), s[..cut].to_vec(), c);
    }
    // Cut inside the TCP header with the IP length shrunk to match.
    for tcp_len in [0usize, 1, 8, 12, 13, 19] {
        let f = edit(s[..L4 + tcp_len].to_vec(), |f| {
            f[IP + 2..IP + 4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes())
        });
        d(
            &mut v,
            format!("tcp header of {tcp_len}"),
            f,
            Drop("bad_l4_header"),
        );
    }
    // UDP header cut.
    let u = udp(5353, 53);
    for udp_len in [0usize, 4, 7] {
        let f = edit(u[..L4 + udp_len].to_vec(), |f| {
            f[IP + 2..IP + 4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes())
        });
        d(
            &mut v,
            format!("udp header of {udp_len}"),
            f,
            Drop("bad_l4_header"),
        );
    }
    // IHL < 5, and every IP version but 4.
    for ihl in 0..5u8 {
        d(
            &mut v,
            format!("ihl {ihl}"),
            edit(s.clone(), |f| f[IP] = 0x40 | ihl),
            Drop("bad_ip_header"),
        );
    }
    for ver in [0u8, 1, 5, 6, 7, 15] {
        d(
            &mut v,
            format!("ip version {ver}"),
            edit(s.clone(), |f| f[IP] = (ver << 4) | 5),
            Drop("bad_ip_header"),
        );
    }
    // IHL beyond the frame (15 words = 60 bytes > what a cut frame holds).
    d(
        &mut v,
        "ihl 15 in a 40-byte frame",
        edit(s[..40].to_vec(), |f| f[IP] = 0x4f),
        Drop("truncated"),
    );
    // Total length below the header, beyond the frame.
    for (tot, why) in [
        (0u16, "bad_ip_length"),
        (19, "bad_ip_length"),
        (s.len() as u16 - 13, "bad_ip_length"),
        (1500, "bad_ip_length"),
        (65535, "bad_ip_length"),
    ] {
        d(
            &mut v,
            format!("ip total length {tot}"),
            edit(s.clone(), |f| {
                f[IP + 2..IP + 4].copy_from_slice(&tot.to_be_bytes())
            }),
            Drop(why),
        );
    }
    // Bad header checksums.
    for x in [1u8, 0x5a, 0xff] {
        let mut f = s.clone();
        f[IP + 10] ^= x;
        d(
            &mut v,
            format!("ip checksum ^ {x:#x}"),
            f,
            Drop("bad_ip_checksum"),
        );
    }
    // Fragments: MF, offsets, MF+DF, last fragment, and a UDP one.
    for (fo, name) in [
        (0x2000u16, "first fragment (MF)"),
        (0x0001, "offset 8"),
        (0x1fff, "largest offset"),
        (0x2001, "middle fragment"),
        (0x6000, "DF and MF"),
        (0x0010, "last fragment"),
    ] {
        d(
            &mut v,
            name,
            edit(s.clone(), |f| {
                f[IP + 6..IP + 8].copy_from_slice(&fo.to_be_bytes())
            }),
            Drop("fragment"),
        );
    }
    d(
        &mut v,
        "udp fragment",
        edit(u.clone(), |f| f[IP + 6] = 0x20),
        Drop("fragment"),
    );
    // TCP data offset < 5, and beyond the segment.
    for doff in [0u8, 1, 2, 3, 4, 15] {
        let mut f = s.clone();
        f[L4 + 12] = doff << 4;
        d(
            &mut v,
            format!("tcp data offset {doff}"),
            f,
            Drop("bad_l4_header"),
        );
    }
    // Zero ports.
    for (sp, dp) in [(0u16, 80u16), (40000, 0), (0, 0)] {
        d(
            &mut v,
            format!("tcp ports {sp}->{dp}"),
            syn_from(addr::CLIENT.octets(), sp, dp),
            Drop("zero_port"),
        );
    }
    for (sp, dp) in [(0u16, 53u16), (5353, 0)] {
        d(
            &mut v,
            format!("udp ports {sp}->{dp}"),
            udp(sp, dp),
            Drop("zero_port"),
        );
    }
    // Source IPs that are never a client.
    for src in [
        [0, 0, 0, 0],
        [224, 0, 0, 5],
        [239, 255, 255, 250],
        [240, 0, 0, 1],
        [255, 255, 255, 255],
    ] {
        d(
            &mut v,
            format!("source ip {src:?}"),
            syn_from(src, 40000, 80),
            Drop("bad_source"),
        );
    }
    // Broadcast and multicast source MACs (from the switch side).
    for smac in [
        [0xffu8; 6],
        [0x01, 0x00, 0x5e, 0x00, 0x00, 0x05],
        [0x33, 0x33, 0, 0, 0, 1],
        [0x01, 0x80, 0xc2, 0, 0, 0x0e],
    ] {
        let mut f = s.clone();
        f[6..12].copy_from_slice(&smac);
        v.push(Defect {
            name: format!("source mac {smac:02x?}"),
            frame: f,
            counted: Drop("bad_source"),
            from_switch: true,
        });
    }
    // TTL that would reach 0.
    for ttl in [0u8, 1] {
        d(
            &mut v,
            format!("ttl {ttl}"),
            edit(s.clone(), |f| f[IP + 8] = ttl),
            Drop("ttl_exceeded"),
        );
    }
    // TCP without a flow: no SYN, or SYN with RST.
    for (flags, name) in [
        (0x10u8, "ack"),
        (0x18, "psh-ack"),
        (0x11, "fin-ack"),
        (0x04, "rst"),
        (0x06, "syn-rst"),
        (0x00, "no flags"),
        (0x01, "fin"),
    ] {
        d(
            &mut v,
            format!("tcp {name} without a flow"),
            tcp_flags(flags),
            Drop("tcp_no_flow"),
        );
    }
    // To the VIP but not a service: other ports, other protocols.
    for port in [22u16, 443, 8080] {
        d(
            &mut v,
            format!("tcp to VIP:{port}"),
            syn_from(addr::CLIENT.octets(), 40000, port),
            Drop("not_a_service"),
        );
    }
    d(
        &mut v,
        "udp to VIP:53",
        udp(5353, 53),
        Drop("not_a_service"),
    );
    for proto in [1u8, 47, 50, 132, 255] {
        d(
            &mut v,
            format!("ip protocol {proto} to the VIP"),
            edit(s.clone(), |f| f[IP + 9] = proto),
            Drop("not_a_service"),
        );
    }
    // VLAN tags: 802.1Q (VID 0, 1, 10, 4095), 802.1ad, QinQ.
    for (tpid, vid) in [
        (0x8100u16, 0u16),
        (0x8100, 1),
        (0x8100, 10),
        (0x8100, 4095),
        (0x88a8, 10),
    ] {
        let mut f = s[..12].to_vec();
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
        f.extend_from_slice(&s[12..]);
        d(
            &mut v,
            format!("tag {tpid:#x} vid {vid}"),
            f,
            Drop("vlan_tagged"),
        );
    }
    {
        let mut f = s[..12].to_vec();
        f.extend_from_slice(&[0x88, 0xa8, 0, 20, 0x81, 0x00, 0, 10]);
        f.extend_from_slice(&s[12..]);
        d(&mut v, "qinq", f, Drop("vlan_tagged"));
    }
    // Odd ethertypes (802.3 lengths, experimental, MPLS, LLDP, PPPoE, reserved).
    for et in [
        0x0000u16, 0x002e, 0x05dc, 0x0801, 0x8847, 0x8863, 0x8864, 0x88b5, 0x88cc, 0x88e5, 0xffff,
    ] {
        let mut f = s.clone();
        f[12..14].copy_from_slice(&et.to_be_bytes());
        d(&mut v, format!("ethertype {et:#06x}"), f, Drop("not_ipv4"));
    }
    // ARP: bogus hardware/protocol types and lengths, truncated, bogus opcodes.
    let (rl, vip) = (addr::ROUTER_LAN.octets(), addr::VIP.octets());
    for (ht, pt, hl, pl, name) in [
        (6u16, 0x0800u16, 6u8, 4u8, "htype 6"),
        (1, 0x86dd, 6, 4, "ptype ipv6"),
        (1, 0x0800, 0, 4, "hlen 0"),
        (1, 0x0800, 5, 4, "hlen 5"),
        (1, 0x0800, 7, 4, "hlen 7"),
        (1, 0x0800, 255, 4, "hlen 255"),
        (1, 0x0800, 6, 0, "plen 0"),
        (1, 0x0800, 6, 3, "plen 3"),
        (1, 0x0800, 6, 16, "plen 16"),
    ] {
        d(
            &mut v,
            format!("arp {name}"),
            arp(ht, pt, hl, pl, 1, rl, vip, None),
            Arp("malformed"),
        );
    }
    for cut in [14usize, 16, 21, 27, 37, 41] {
        d(
            &mut v,
            format!("arp cut at {cut}"),
            arp(1, 0x0800, 6, 4, 1, rl, vip, Some(cut)),
            Arp("malformed"),
        );
    }
    for op in [0u16, 3, 4, 8, 9, 0xffff] {
        d(
            &mut v,
            format!("arp opcode {op}"),
            arp(1, 0x0800, 6, 4, op, rl, vip, None),
            Arp("bad_opcode"),
        );
    }
    // Gratuitous ARP claiming a real server's address, and an unsolicited reply for it.
    let rs1 = addr::RS1.octets();
    d(
        &mut v,
        "gratuitous arp for rs1",
        arp(1, 0x0800, 6, 4, 1, rs1, rs1, None),
        Arp("not_for_us"),
    );
    d(
        &mut v,
        "unsolicited reply for rs1",
        arp(1, 0x0800, 6, 4, 2, rs1, addr::DIRECTOR.octets(), None),
        Arp("unsolicited_reply"),
    );
    // Someone announcing the VIP.
    d(
        &mut v,
        "gratuitous arp for the VIP",
        arp(1, 0x0800, 6, 4, 1, vip, vip, None),
        Arp("vip_conflict"),
    );
    v
}

/// 10^5-scale random frames to the director's MAC: half random after the Ethernet header
/// (ethertype kept off IPv4, ARP and IPv6), half IPv4 to the VIP with random fields. Every one
/// passes the socket filter, so every one must be counted by a worker.
fn random_frames(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let bytes = common::pseudo_random(n * 8, seed);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = &bytes[i * 8..i * 8 + 8];
        let len = 34 + usize::from(u16::from_le_bytes([r[0], r[1]])) % 400;
        let mut f = common::pseudo_random(len, seed ^ (i as u64).wrapping_mul(0x9e37_79b9));
        f[0..6].copy_from_slice(&dir_mac());
        f[6..12].copy_from_slice(&router_mac());
        if i % 2 == 0 {
            if matches!(u16::from_be_bytes([f[12], f[13]]), 0x0800 | 0x0806 | 0x86dd) {
                f[12] = 0x88;
            }
        } else {
            f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            f[IP + 12..IP + 16].copy_from_slice(&[172, 30, 0, 200]);
            f[IP + 16..IP + 20].copy_from_slice(&addr::VIP.octets());
            if i % 4 == 1 {
                // A valid IP header, so the random bytes reach the transport checks.
                f[IP] = 0x45;
                let tot = (f.len() - IP) as u16;
                f[IP + 2..IP + 4].copy_from_slice(&tot.to_be_bytes());
                f[IP + 6] &= 0x40;
                f[IP + 7] = 0;
                f[IP + 8] = 64;
                f[IP + 9] = if r[2] & 1 == 0 { 6 } else { 17 };
                fix_ip(&mut f);
            }
        }
        out.push(f);
    }
    out
}

/// Sends frames with `uvs lab-send-frames`; returns (sent, too short).
fn send(lab: &Lab, host: &str, ifname: &str, frames: &[Vec<u8>], tag: &str) -> (usize, usize) {
    let out = frames::send(lab, host, ifname, frames, tag);
    // "sent N frames, M too short to send"
    let nums: Vec<usize> = out
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

fn sum(text: &str, name: &str) -> f64 {
    common::metric(text, name, &[])
}

fn by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with(&format!("{name}{{"))) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let key = format!("{label}=\"");
        if let Some(rest) = series.split(&key).nth(1) {
            let l = rest.split('"').next().unwrap_or("").to_string();
            *m.entry(l).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    m
}

fn delta(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

/// Frames the kernel dropped between the sender and the director's packet sockets: the
/// per-CPU backlog (softnet_stat, global to the host) and the drop counters of the veths on
/// the way. Not the director's own `rx_dropped`: the kernel counts there the frames it
/// discards *after* the packet taps (unknown ethertypes), which uvs has already seen.
fn kernel_path_drops(lab: &Lab) -> u64 {
    let softnet: u64 = std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .sum();
    let link = |host: &str, ifname: &str, field: &str| -> u64 {
        lab.exec_ok(
            host,
            &[
                "cat",
                &format!("/sys/class/net/{ifname}/statistics/{field}"),
            ],
        )
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
    };
    softnet
        + link("router", "eth1", "tx_dropped")
        + link("sw", "dir", "tx_dropped")
        + link("sw", "router", "rx_dropped")
        + link("sw", "br0", "tx_dropped")
}

fn show(text: &str, prefixes: &[&str]) -> String {
    text.lines()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn hostile_frames_are_each_counted_under_a_reason_and_nothing_leaks() {
    let Some(ctx) = common::setup(70) else { return };
    let mut lab = ctx.web_lab();
    let director = Director::rr_http().start(&mut lab);
    common::curl_vip(&lab, 1);

    // Everything the director's namespace transmits: uvs's forwards and ARP answers, and any
    // RST or ICMP its kernel would emit.
    let pcap = lab.dir().join("dir-out.pcap");
    let filter = format!("ether src {}", common::mac_str(addr::HOST_DIR, 0));
    let cap = lab.tcpdump_start("dir", "eth0", &filter, &pcap).unwrap();

    let defects = defects();
    let kinds = defects.len();
    assert!(kinds >= 100, "only {kinds} kinds of malformed frames");
    let before = director.scrape();
    let (on_lan, from_sw): (Vec<&Defect>, Vec<&Defect>) =
        defects.iter().partition(|d| !d.from_switch);
    let lan: Vec<Vec<u8>> = on_lan.iter().map(|d| d.frame.clone()).collect();
    let sw: Vec<Vec<u8>> = from_sw.iter().map(|d| d.frame.clone()).collect();
    let (sent_lan, short) = send(&lab, "router", "eth1", &lan, "defects");
    let (sent_sw, _) = send(&lab, "sw", "dir", &sw, "group-src");
    let unsendable = defects
        .iter()
        .filter(|d| d.counted == Counted::Unsendable)
        .count();
    assert_eq!(short, unsendable, "frames the kernel refused to send");
    assert_eq!(sent_lan + sent_sw + short, kinds);

    // Expected per reason.
    let mut want_drops: BTreeMap<String, f64> = BTreeMap::new();
    let mut want_arp: BTreeMap<String, f64> = BTreeMap::new();
    for d in &defects {
        match d.counted {
            Counted::Drop(r) => *want_drops.entry(r.to_string()).or_default() += 1.0,
            Counted::Arp(r) => *want_arp.entry(r.to_string()).or_default() += 1.0,
            Counted::Unsendable => {}
        }
    }
    // What `name` counted per reason between `before` and `now`.
    let per_reason = |name: &str, now: &str| {
        delta(
            &by_label(&before, name, "reason"),
            &by_label(now, name, "reason"),
        )
    };
    let mut last = String::new();
    let settled = common::poll(Duration::from_secs(5), || {
        last = director.scrape();
        let drops = per_reason("uvs_drops_total", &last);
        let arp = per_reason("uvs_arp_ignored_total", &last);
        (drops == want_drops && arp == want_arp).then_some(())
    });
    let drops = per_reason("uvs_drops_total", &last);
    let arp = per_reason("uvs_arp_ignored_total", &last);
    assert!(
        settled.is_some(),
        "{kinds} kinds of defects: per reason\n drops want {want_drops:?}\n drops got  {drops:?}\n \
         arp want {want_arp:?}\n arp got  {arp:?}\ncatalogue:\n{}",
        defects
            .iter()
            .map(|d| format!("  {}: {:?}", d.name, d.counted))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        sum(&last, "uvs_worker_forwarded_total"),
        sum(&before, "uvs_worker_forwarded_total"),
        "a defect was forwarded"
    );
    eprintln!(
        "{kinds} kinds of malformed frames ({short} unsendable): drops {drops:?}, arp {arp:?}"
    );

    // 10^5 random frames. Every one passes the socket filter; a frame the ring had no room for
    // is a ring drop; what the ring took is counted by a worker as dropped or forwarded.
    let random = random_frames(100_000, 0x4057_11e5);
    assert!(
        random
            .iter()
            .all(|f| f.len() >= 34 && f[12..14] != [0x08, 0x06])
    );
    let before = director.scrape();
    let path_before = kernel_path_drops(&lab);
    let t0 = Instant::now();
    let (sent, _) = send(&lab, "router", "eth1", &random, "random");
    let send_secs = t0.elapsed().as_secs_f64();
    let path_lost = kernel_path_drops(&lab) - path_before;
    let mut last = String::new();
    let counted = |t: &str| {
        sum(t, "uvs_drops_total")
            + sum(t, "uvs_worker_forwarded_total")
            + sum(t, "uvs_ring_drops_total")
    };
    // Poll until every sent frame is counted (or stop moving): a shortfall must be explained
    // by drops the kernel counted on the way (softnet backlog, interface drop counters).
    let mut prev = -1.0;
    common::poll(Duration::from_secs(10), || {
        last = director.scrape();
        let c = counted(&last) - counted(&before);
        let done = c >= sent as f64 || c == prev;
        prev = c;
        done.then_some(())
    });
    let got = counted(&last) - counted(&before);
    let rx = sum(&last, "uvs_worker_rx_frames_total") - sum(&before, "uvs_worker_rx_frames_total");
    let ring_drops = sum(&last, "uvs_ring_drops_total") - sum(&before, "uvs_ring_drops_total");
    let worker_counted = sum(&last, "uvs_drops_total") + sum(&last, "uvs_worker_forwarded_total")
        - sum(&before, "uvs_drops_total")
        - sum(&before, "uvs_worker_forwarded_total");
    let reasons = delta(
        &by_label(&before, "uvs_drops_total", "reason"),
        &by_label(&last, "uvs_drops_total", "reason"),
    );
    eprintln!(
        "random: sent {sent} in {send_secs:.1}s; kernel path lost {path_lost}; ring drops \
         {ring_drops}; workers received {rx} and counted {worker_counted}: {reasons:?}"
    );
    assert!(
        got <= sent as f64 && sent as f64 - got <= path_lost as f64 && rx == worker_counted,
        "sent {sent}, lost on the kernel path {path_lost}, counted {got} (ring drops {ring_drops}, \
         worker rx {rx}, worker counted {worker_counted})\n{}",
        show(
            &last,
            &["uvs_drops", "uvs_ring", "uvs_worker_rx", "uvs_worker_forw"]
        )
    );
    assert!(
        director.is_running(&mut lab),
        "the director died:\n{}",
        director.tail()
    );

    // Real traffic still works.
    common::assert_even_split(&lab, 4, "after the hostile frames");
    common::stop_capture(&mut lab, cap);
    let pkts = common::read_pcap(&lab, &pcap);
    assert!(
        pkts.iter()
            .any(|p| p.dst_mac == common::mac_str(addr::HOST_RS1, 0)),
        "the capture was live (it saw the forwarded requests)"
    );
    let noise: Vec<&Pkt> = pkts.iter().filter(|p| p.is_rst() || p.is_icmp()).collect();
    assert!(
        noise.is_empty(),
        "the director's namespace sent RST/ICMP: {noise:#?}"
    );
}

/// A TOML configuration: one worker, `extra` appended, TCP VIP:80 over rs1 and rs2.
fn toml_config(extra: &str) -> String {
    format!(
        "interfaces = [\"eth0\"]\nworkers = 1\n{extra}\n\
         [[service]]\nvip = \"{vip}\"\nport = 80\nscheduler = \"rr\"\n\
         [[service.real]]\naddress = \"{rs1}\"\n\
         [[service.real]]\naddress = \"{rs2}\"\n",
        vip = addr::VIP,
        rs1 = addr::RS1,
        rs2 = addr::RS2,
    )
}

/// SYNs from `n` random sources (198.18.0.0/15, never routed back) to VIP:80.
fn syn_flood(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let r = common::pseudo_random(n * 4, seed);
    (0..n)
        .map(|i| {
            let b = &r[i * 4..i * 4 + 4];
            syn_from(
                [198, 18 | (b[0] & 1), b[1], b[2]],
                1024 + u16::from(b[3]) * 200 + (i % 200) as u16,
                80,
            )
        })
        .collect()
}

#[test]
fn syn_flood_fills_the_flow_table_but_established_flows_survive() {
    let Some(ctx) = common::setup(71) else { return };
    let mut lab = ctx.web_lab();
    let director = Director::launch()
        .config(&toml_config("[flow_table]\ncapacity = 1024"))
        .admin_socket()
        .start(&mut lab);
    // ESTABLISHED for 10 s, shorter than SYN_RECV's 60 s: expiry order alone would sacrifice
    // the established flow to the flood.
    let set = Request::Apply(vec![Change::SetTimeouts {
        tcp: 10,
        tcpfin: 0,
        udp: 0,
    }]);
    assert_eq!(director.admin(&set), Reply::Done);
    common::curl_vip(&lab, 1);

    // 120 requests at 10/s: 12 s, and 30 s to spare.
    let client = KeepAlive::start(&mut lab, 120, 12 + 30, "flood");
    std::thread::sleep(Duration::from_millis(500));
    let before = director.scrape();
    let mut sent = 0;
    for round in 0..6 {
        let flood = syn_flood(10_000, 0x5eed_0000 + round);
        sent += send(&lab, "router", "eth1", &flood, &format!("flood{round}")).0;
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = director.scrape();
    let evictions =
        sum(&after, "uvs_flow_evictions_total") - sum(&before, "uvs_flow_evictions_total");
    let flows = sum(&after, "uvs_worker_flows");
    let new_flows =
        sum(&after, "node_ipvs_connections_total") - sum(&before, "node_ipvs_connections_total");
    let ring_drops = sum(&after, "uvs_ring_drops_total") - sum(&before, "uvs_ring_drops_total");
    eprintln!(
        "SYN flood: {sent} SYNs sent, {ring_drops} ring drops, {new_flows} new flows, \
         {evictions} evictions, {flows} flows in the table"
    );
    // Every new flow beyond the table's capacity had to evict a live one (SYN_RECV lasts
    // 60 s, longer than the flood).
    assert!(
        new_flows > 10_000.0 && evictions >= new_flows - 1024.0,
        "{sent} SYNs from random sources into a 1024-entry table: {new_flows} new flows, \
         {evictions} evictions\n{}",
        show(
            &after,
            &["uvs_flow", "uvs_worker_flows", "uvs_drops", "uvs_ring"]
        )
    );
    assert!(flows <= 1024.0, "the table never grows: {flows}");
    client.check(&mut lab, Duration::from_secs(20));
    // New clients are still served.
    assert_eq!(common::curl_vip(&lab, 2).len(), 2);
}

/// Connects to the admin socket, sends half a length prefix and holds the connection.
fn slow_client(sock: &Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(&[0, 0]).unwrap();
    s
}

#[test]
fn overload_counts_ring_drops_and_the_admin_socket_stays_responsive() {
    let Some(ctx) = common::setup(72) else { return };
    let mut lab = ctx.web_lab();
    // A tiny ring (8 frame slots): what the one worker cannot take is a ring drop.
    let director = Director::launch()
        .config(&toml_config(
            "[ring]\nblock_size = 4096\nblock_count = 4\nframe_size = 2048",
        ))
        .admin_socket()
        .start(&mut lab);
    common::curl_vip(&lab, 1);
    let before = director.scrape();

    // Flood from the router for ~6 s: lab-send-frames in a loop, as fast as the kernel takes.
    let flood = syn_flood(20_000, 0xf100d);
    let file = lab.dir().join("overload.bin");
    std::fs::write(&file, inject::encode_frames(&flood).unwrap()).unwrap();
    let exe = common::uvs_exe();
    let script = format!(
        "end=$((SECONDS+6)); while [ $SECONDS -lt $end ]; do {} lab-send-frames --interface eth1 --file {} >/dev/null || exit 1; done",
        common::path_str(&exe),
        common::path_str(&file)
    );
    let flood_log = lab.dir().join("flood.log");
    let flooder = lab
        .spawn("router", &["bash", "-c", &script], &flood_log)
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // Two clients that connect and never finish their request, then listings.
    let _slow: Vec<UnixStream> = (0..3)
        .map(|_| slow_client(director.admin_socket()))
        .collect();
    let mut worst = Duration::ZERO;
    for _ in 0..8 {
        let t0 = Instant::now();
        match director.admin(&Request::Status) {
            Reply::Status(st) => assert_eq!(st.services.len(), 1),
            other => panic!("{other:?}"),
        }
        worst = worst.max(t0.elapsed());
        std::thread::sleep(Duration::from_millis(400));
    }
    let done = common::wait_exit(&mut lab, flooder, Duration::from_secs(15));
    assert!(done, "the flood did not end");
    let after = director.scrape();
    let ring_drops = sum(&after, "uvs_ring_drops_total") - sum(&before, "uvs_ring_drops_total");
    let rx = sum(&after, "uvs_worker_rx_frames_total") - sum(&before, "uvs_worker_rx_frames_total");
    eprintln!(
        "overload: worker took {rx} frames, ring dropped {ring_drops}; slowest Status {worst:?}"
    );
    assert!(
        ring_drops > 0.0,
        "no ring drops under overload\n{}",
        show(&after, &["uvs_ring", "uvs_worker_rx"])
    );
    assert!(
        worst < Duration::from_secs(1),
        "a Status request took {worst:?} while the worker was saturated"
    );
    assert!(director.is_running(&mut lab));
    assert_eq!(common::curl_vip(&lab, 2).len(), 2);
}

/// A tiny admin client in Python, run with `ip netns exec` (optionally as nobody): each
/// argument is a request's JSON, or `RAW:hex` for bytes sent as they are; prints one line per
/// request: the reply's JSON, or `NONE` when the daemon closed without a reply.
const PY_CLIENT: &str = r#"
import json, socket, struct, sys
def call(raw):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect('\0uvs/admin')
    s.sendall(raw)
    s.shutdown(socket.SHUT_WR)
    data = b''
    while True:
        try:
            c = s.recv(65536)
        except socket.timeout:
            break
        if not c:
            break
        data += c
    if len(data) < 4:
        return 'NONE'
    (n,) = struct.unpack('>I', data[:4])
    return json.dumps(json.loads(data[4:4 + n]))
for a in sys.argv[1:]:
    raw = bytes.fromhex(a[4:]) if a.startswith('RAW:') else struct.pack('>I', len(a)) + a.encode()
    print(call(raw), flush=True)
"#;

fn py_admin(lab: &Lab, who: As, reqs: &[String]) -> Vec<String> {
    let mut args = vec!["/usr/bin/python3", "-c", PY_CLIENT];
    args.extend(reqs.iter().map(String::as_str));
    common::run_in(&lab.ns("dir"), who, &args)
        .checked()
        .lines()
        .map(str::to_string)
        .collect()
}

fn nft_table_present(lab: &Lab) -> bool {
    lab.exec("dir", &["nft", "list", "table", "netdev", "uvs"])
        .is_ok_and(|o| o.status.success())
}

#[test]
fn unprivileged_and_garbage_admin_requests_change_nothing_and_sigkill_restart_recovers() {
    let Some(ctx) = common::setup(73) else { return };
    let mut lab = ctx.web_lab();
    // The default abstract admin socket: no file permissions stand in the way, so the
    // daemon's own check is what refuses an unprivileged peer.
    let director = Director::rr_http().start(&mut lab);
    let status = r#"{"version":1,"body":"Status"}"#.to_string();
    let clear = r#"{"version":1,"body":{"Apply":["Clear"]}}"#.to_string();
    let zero = r#"{"version":1,"body":{"Zero":null}}"#.to_string();
    let st_before = py_admin(&lab, As::Root, std::slice::from_ref(&status));
    assert!(st_before[0].contains("\"Status\""), "{st_before:?}");

    // As nobody: changes refused, reads allowed.
    let r = py_admin(&lab, As::Nobody, &[clear.clone(), zero, status.clone()]);
    assert!(
        r[0].contains("Permission denied") && r[1].contains("Permission denied"),
        "an unprivileged peer's changes: {r:?}"
    );
    assert!(
        r[2].contains("\"Status\""),
        "an unprivileged peer can read: {r:?}"
    );
    assert_eq!(
        py_admin(&lab, As::Root, std::slice::from_ref(&status)),
        st_before,
        "nothing changed"
    );
    assert!(
        director.tail().contains("refused a change from uid 65534"),
        "the refusal is logged:\n{}",
        director.tail()
    );

    // Garbage and oversize requests: an error reply each, and the daemon keeps serving.
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut garbage = vec![
        format!("RAW:{}", hex(&u32::MAX.to_be_bytes())),
        format!("RAW:{}", hex(&(9u32 << 20).to_be_bytes())),
        format!("RAW:{}{}", hex(&5u32.to_be_bytes()), hex(b"nope!")),
        format!(
            "RAW:{}{}",
            hex(&64u32.to_be_bytes()),
            hex(b"{\"version\":1")
        ),
        format!("RAW:{}", hex(&[0, 0])),
        r#"{"version":2,"body":"Status"}"#.to_string(),
        r#"{"version":1,"body":"Reboot"}"#.to_string(),
        r#"{"version":1,"body":{"Apply":[{"AddService":42}]}}"#.to_string(),
        r#"[1,2,3]"#.to_string(),
        format!("RAW:{}{}", hex(&3u32.to_be_bytes()), hex(&[0, 1, 2])),
    ];
    garbage.push(status.clone());
    let r = py_admin(&lab, As::Root, &garbage);
    eprintln!("garbage replies: {r:#?}");
    for (req, rep) in garbage.iter().zip(&r).take(garbage.len() - 1) {
        // A peer that closes before its length prefix is complete gets no reply (there is
        // nobody to read it); every other one is told why.
        if req == "RAW:0000" {
            continue;
        }
        assert!(rep.contains("Refused"), "{req} → {rep}");
    }
    assert!(
        r.last().unwrap().contains("\"Status\""),
        "still serving: {r:?}"
    );
    assert!(director.is_running(&mut lab));
    assert_eq!(common::curl_vip(&lab, 2).len(), 2);

    // SIGKILL: the dead process cleans nothing up itself, but its tables belonged to its
    // netlink socket, which the kernel closed with it.
    assert!(nft_table_present(&lab));
    director.signal(&lab, libc::SIGKILL);
    let dead = common::wait_exit(&mut lab, director.pid(), Duration::from_secs(5));
    assert!(dead);
    assert!(
        !nft_table_present(&lab),
        "a killed director leaves its nft table behind"
    );
    // What a uvs from before owner tables left: plain tables, one marked so the test can tell
    // it was replaced rather than kept.
    lab.exec_ok(
        "dir",
        &[
            "nft",
            "add table netdev uvs; add chain netdev uvs left_by_an_older_uvs; add table arp uvs",
        ],
    )
    .unwrap();
    // ...and the next start does it: it starts, serves, and owns a fresh table.
    let restarted = Director::rr_http().start(&mut lab);
    let table = lab
        .exec_ok("dir", &["nft", "list", "table", "netdev", "uvs"])
        .unwrap();
    assert!(
        !table.contains("left_by_an_older_uvs")
            && table.contains("ingress_0")
            && table.contains("flags owner"),
        "the restart replaced the leftover table:\n{table}"
    );
    let answers = common::curl_vip(&lab, 4);
    assert_eq!(answers.len(), 4);
    assert!(py_admin(&lab, As::Root, &[status])[0].contains("\"Status\""));
    restarted.stop(&mut lab);
    assert!(!nft_table_present(&lab), "SIGTERM removes the table");
}
