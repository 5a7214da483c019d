//! Decision records in words: one line per decision, as `uvs trace` prints it.

use crate::datapath::counters::{DropReason, ReuseReason};
use crate::datapath::tap::{Outcome, Record, Via, WHY_REALS, Why, WhyReal};
use crate::wire::{ETH_HDR_LEN, FlowFields, IPPROTO_TCP, IPPROTO_UDP, ethernet, ipv4_from_u32};

fn tcp_flags(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, '.'),
        (0x20, 'U'),
    ] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if s.is_empty() { "none".into() } else { s }
}

/// (destination, source) MAC of a frame, as text; empty if it is shorter than a header.
fn macs(frame: &[u8]) -> (String, String) {
    if frame.len() < ETH_HDR_LEN {
        return (String::new(), String::new());
    }
    (
        ethernet::dst(frame).to_string(),
        ethernet::src(frame).to_string(),
    )
}

/// The scheduler's name, `?` if the decision was not explained.
fn sched_name(w: &Why) -> &'static str {
    w.sched.map_or("?", |k| k.name())
}

/// `HH:MM:SS.micro` (UTC).
pub fn clock(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        (ns % 1_000_000_000) / 1000
    )
}

/// Why this real was chosen, in words: the persistence template, or the scheduler.
pub fn explain_text(w: &Why) -> String {
    let mut s = String::new();
    if w.ops {
        s.push_str("ops: one-packet scheduling, every datagram scheduled, no flow kept; ");
    }
    let real = w
        .reals
        .get(usize::from(w.chosen))
        .filter(|_| w.chosen < w.n)
        .map(|r| ipv4_from_u32(r.addr).to_string())
        .unwrap_or_else(|| "?".into());
    let len = w.pmask.leading_ones();
    match w.via {
        Via::TemplateHit => {
            s.push_str(&format!(
                "persistent template hit -> {real}: client net /{len} already placed there, {} not asked",
                sched_name(w)
            ));
            return s;
        }
        Via::TemplateNew => s.push_str(&format!(
            "no persistence template for the client net /{len}: new template -> {real}, "
        )),
        Via::TemplateFull => {
            s.push_str("persistence template table full: scheduled without a template, ")
        }
        Via::Synced => {
            s.push_str(&format!(
                "synced from the former MASTER: adopted with its real {real}, not scheduled"
            ));
            return s;
        }
        Via::Scheduler => {}
    }
    s.push_str(&sched_text(w));
    s
}

/// Why this scheduler chose, in words.
fn sched_text(w: &Why) -> String {
    let name = sched_name(w);
    let n = usize::from(w.n).min(WHY_REALS);
    let reals = &w.reals[..n];
    let ip = |r: &WhyReal| ipv4_from_u32(r.addr).to_string();
    match name {
        "rr" => format!(
            "rr: position {}/{} (next usable after the previous pick)",
            usize::from(w.chosen) + 1,
            w.n
        ),
        "wrr" => format!(
            "wrr: cw={} picks the next real with weight >= cw (weights {})",
            w.cw,
            reals
                .iter()
                .map(|r| format!("{}={}", ip(r), r.weight))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        "lc" | "wlc" | "sed" | "nq" | "fo" | "ovf" | "twos" | "lblc" | "lblcr" => {
            let figs = reals
                .iter()
                .map(|r| {
                    let oh = u64::from(r.active) * 256 + u64::from(r.inactive);
                    format!(
                        "{} oh={}({}a/{}i)/w{}{}",
                        ip(r),
                        oh,
                        r.active,
                        r.inactive,
                        r.weight,
                        if r.usable { "" } else { " unusable" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let rule = match name {
                "lc" => "least overhead (active*256+inactive)",
                "wlc" | "lblc" | "lblcr" => "least overhead/weight",
                "sed" => "least (active+1)/weight",
                "nq" => "an idle real, else least (active+1)/weight",
                "fo" => "highest weight",
                "ovf" => "highest weight below its threshold",
                _ => "least loaded of two random picks",
            };
            format!("{name}: {rule}: {figs}")
        }
        "dh" | "sh" | "mh" => format!(
            "{name}: hash of the {} address -> position {}/{}",
            if name == "dh" {
                "destination"
            } else {
                "source"
            },
            usize::from(w.chosen) + 1,
            w.n
        ),
        _ => format!("{name}: position {}", w.chosen),
    }
}

/// One line per decision, as `uvs trace` prints it. `ifname` names interface indexes.
pub fn format_record(r: &Record, ifname: &dyn Fn(u16) -> String) -> String {
    let f = &r.fields;
    let proto = match f.proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        _ => "ip",
    };
    let mut s = format!(
        "{} w{} {}:{} > {}:{} {proto}",
        clock(r.time_ns),
        r.worker,
        ipv4_from_u32(f.saddr),
        f.sport,
        ipv4_from_u32(f.daddr),
        f.dport
    );
    if f.proto == IPPROTO_TCP {
        s.push_str(&format!(" [{}]", tcp_flags(f.tcp_flags)));
    }
    s.push_str(&format!(" in {}", ifname(r.ingress)));
    let rx = r.received.bytes();
    let (rx_dst, rx_src) = macs(rx);
    let egress = match r.outcome {
        Outcome::Dropped(reason) => {
            s.push_str(&format!(
                " DROP {}: {} (mac {rx_src} > {rx_dst})",
                reason.name(),
                drop_explanation(reason)
            ));
            return s;
        }
        Outcome::Forwarded { egress } => egress,
    };
    if r.reply {
        s.push_str(&format!(
            " reply of real {} rewritten back to the VIP",
            ipv4_from_u32(r.real_addr)
        ));
    } else if r.new_flow {
        if let Some(why) = r.reuse {
            s.push_str(&format!(
                " SYN on an old flow's ports ({}): a new connection,",
                reuse_text(why)
            ));
        }
        s.push_str(&format!(
            " {} -> {} ({})",
            if r.why.ops {
                "ops datagram"
            } else {
                "new flow"
            },
            ipv4_from_u32(r.real_addr),
            explain_text(&r.why)
        ));
    } else {
        s.push_str(&format!(" existing flow -> {}", ipv4_from_u32(r.real_addr)));
    }
    let sent = r.sent.bytes();
    let (tx_dst, tx_src) = macs(sent);
    let out = FlowFields::of_frame(sent);
    s.push_str(&format!(
        " | mac {rx_src} > {rx_dst} => {tx_src} > {tx_dst} ttl {}->{}",
        f.ttl, out.ttl
    ));
    // A tunnel's outer header, as tcpdump would show it.
    if let Some((kind, src, dst)) = outer_header(sent) {
        s.push_str(&format!(
            " {kind} {} > {}",
            ipv4_from_u32(src),
            ipv4_from_u32(dst)
        ));
    } else if (out.saddr, out.sport, out.daddr, out.dport) != (f.saddr, f.sport, f.daddr, f.dport) {
        // What a method rewrote above the MACs (addresses, ports).
        s.push_str(&format!(
            " ip {}:{} > {}:{}",
            ipv4_from_u32(out.saddr),
            out.sport,
            ipv4_from_u32(out.daddr),
            out.dport
        ));
    }
    s.push_str(&format!(" out {}", ifname(egress)));
    s
}

/// The encapsulation, outer source and destination of a frame a tunnel sent: IPIP, GRE, or
/// UDP carrying a GUE header with an IPv4 payload.
fn outer_header(frame: &[u8]) -> Option<(&'static str, u32, u32)> {
    let ip = frame.get(crate::wire::ETH_HDR_LEN..)?;
    if ip.len() < 20 || crate::wire::ipv4::version(ip) != 4 {
        return None;
    }
    let ihl = crate::wire::ipv4::header_len(ip);
    let kind = match crate::wire::ipv4::protocol(ip) {
        crate::datapath::tunnel::IPPROTO_IPIP => "ipip",
        crate::datapath::tunnel::IPPROTO_GRE => "gre",
        crate::wire::IPPROTO_UDP => {
            let gue = ip.get(ihl + 8..ihl + 12)?;
            let hlen = usize::from(gue[0] & 0x1f) * 4;
            let inner = ip.get(ihl + 12 + hlen)?;
            // GUE version 0, IPv4 payload, and an IPv4 header right behind it.
            if gue[0] >> 6 != 0
                || gue[1] != crate::datapath::tunnel::IPPROTO_IPIP
                || inner >> 4 != 4
            {
                return None;
            }
            "gue"
        }
        _ => return None,
    };
    Some((kind, crate::wire::ipv4::src(ip), crate::wire::ipv4::dst(ip)))
}

/// Why an old flow's five-tuple started a new connection, in words.
fn reuse_text(why: ReuseReason) -> &'static str {
    match why {
        ReuseReason::Closing => "it was closing",
        ReuseReason::RealRemoved => "its real server was removed",
        ReuseReason::Quiesced => "its real server is quiesced",
        ReuseReason::Unavailable => "its real server is over its threshold",
    }
}

/// A drop reason in words, for trace lines.
pub fn drop_explanation(reason: DropReason) -> &'static str {
    match reason {
        DropReason::TcpNoFlow => {
            "not a SYN and no flow for it (IPVS without sloppy_tcp drops it too)"
        }
        DropReason::NoRealServer => "no usable real server (none, or all weight 0/overloaded)",
        DropReason::RealRemoved => "the flow's real server was deleted",
        DropReason::NoNeighbor => "the real server's MAC is not known (no ARP answer yet)",
        DropReason::NoEgress => "the next hop's interface is not one of the director's",
        DropReason::TtlExceeded => "TTL would reach 0",
        DropReason::NotAService => "to a VIP but no service on that protocol/port",
        DropReason::Standby => "this director stands by for the VIP (VRRP BACKUP or FAULT)",
        DropReason::ToDirector => "to the director itself: the kernel's",
        DropReason::ReplyNoFlow => "a real server's reply with no flow to rewrite it for",
        DropReason::NoRoute => "no route to the client by a served interface",
        DropReason::IcmpNoFlow => "an ICMP error about no flow of uvs's",
        DropReason::Fragment => "IP fragments are not reassembled",
        DropReason::BadIpChecksum => "bad IPv4 header checksum",
        DropReason::BadSource => "broadcast/multicast/zero source",
        DropReason::TxFailed => "the kernel refused to send it",
        DropReason::TunnelTooBig => {
            "DF set and too big for the tunnel: ICMP fragmentation-needed sent to the client"
        }
        DropReason::TunnelNeedsFragments => {
            "too big for the tunnel without DF (uvs does not fragment the outer packet)"
        }
        DropReason::UnsupportedGso => "a GSO super-frame uvs cannot segment for a tunnel",
        DropReason::NoLocalPort => {
            "FullNAT: every local port of the service's local addresses is in use"
        }
        DropReason::RingTruncated
        | DropReason::Truncated
        | DropReason::VlanTagged
        | DropReason::NotIpv4
        | DropReason::BadIpHeader
        | DropReason::BadIpLength
        | DropReason::BadL4Header
        | DropReason::ZeroPort => "malformed or unsupported frame",
    }
}

/// The forwarding cost of a trace, in memory (no sockets): `cargo test --release --lib
/// trace::text::cost -- --ignored --nocapture`. Figures are in docs/trace-and-capture.md.
#[cfg(test)]
mod cost {
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::datapath::counters::WorkerCounters;
    use crate::datapath::process::Forwarder;
    use crate::datapath::tap::{RING_RECORDS, TraceFilter, TraceHub};
    use crate::io::VNET_HDR_LEN;
    use crate::io::ring::RxFrame;
    use crate::model::ForwardMethod;
    use crate::model::{Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec, ServiceTable};
    use crate::neigh::cache::NeighTable;
    use crate::snapshot::{NextHop, PlaceError};
    use crate::snapshot::{Placement, Snapshot};
    use crate::wire::MacAddr;
    use std::sync::atomic::Ordering;

    struct Lan;
    impl Placement for Lan {
        fn next_hop(&mut self, addr: Ipv4Addr, _: ForwardMethod) -> Result<NextHop, PlaceError> {
            Ok(NextHop {
                egress: 0,
                neigh: u32::from(addr) & 0xff,
            })
        }
        fn tunnel_end(
            &mut self,
            _: Ipv4Addr,
            _: NextHop,
        ) -> Result<crate::snapshot::TunnelEnd, PlaceError> {
            Ok(crate::snapshot::TunnelEnd {
                source: u32::from(Ipv4Addr::new(10, 0, 0, 2)),
                mtu: 1500,
            })
        }
    }

    fn frame(sport: u16, syn: bool) -> Vec<u8> {
        let mut out = vec![0u8; VNET_HDR_LEN];
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 2, 0])
            .ipv4([172, 30, 0, 10], [10, 0, 0, 100], 64)
            .tcp(sport, 80, 1, 65535);
        let b = if syn { b.syn() } else { b.ack(1) };
        b.write(&mut out, &[]).unwrap();
        out
    }

    /// ns per packet over `rounds` passes of established-flow ACKs.
    fn run(
        fwd: &mut Forwarder,
        snap: &Snapshot,
        neigh: &NeighTable,
        hub: Option<&TraceHub>,
    ) -> f64 {
        let c = WorkerCounters::new();
        let mut frames: Vec<Vec<u8>> = (0..1024u16).map(|i| frame(10000 + i, true)).collect();
        for f in frames.iter_mut() {
            let n = f.len() - VNET_HDR_LEN;
            fwd.process(
                snap,
                neigh,
                &c,
                RxFrame {
                    buf: f,
                    wire_len: n,
                    status: 0,
                    scratch: false,
                },
                0,
            );
        }
        let mut acks: Vec<Vec<u8>> = (0..1024u16).map(|i| frame(10000 + i, false)).collect();
        let mut sink = Vec::with_capacity(RING_RECORDS);
        let rounds = 2000;
        let t = Instant::now();
        for _ in 0..rounds {
            if let Some(tap) = fwd.tap.as_mut() {
                tap.refresh();
            }
            for f in acks.iter_mut() {
                // Undo the previous rewrite so every pass forwards the same frame.
                f[VNET_HDR_LEN..VNET_HDR_LEN + 12]
                    .copy_from_slice(&[2, 0, 0, 0, 2, 0, 2, 0, 0, 0, 1, 1]);
                let n = f.len() - VNET_HDR_LEN;
                let v = fwd.process(
                    snap,
                    neigh,
                    &c,
                    RxFrame {
                        buf: f,
                        wire_len: n,
                        status: 0,
                        scratch: false,
                    },
                    1,
                );
                std::hint::black_box(v);
            }
            if let Some(h) = hub {
                sink.clear();
                h.drain(&mut sink);
            }
        }
        t.elapsed().as_nanos() as f64 / (rounds * 1024) as f64
    }

    /// Runs `frames` through a forwarder with a trace attached; returns the trace lines.
    fn traced_lines(t: &ServiceTable, frames: Vec<Vec<u8>>) -> Vec<String> {
        let snap = Snapshot::build(t, 1, &mut Lan).unwrap();
        let neigh = NeighTable::new(256);
        neigh.set(11, Some(MacAddr([2, 0, 0, 0, 0x11, 0])));
        neigh.set(12, Some(MacAddr([2, 0, 0, 0, 0x12, 0])));
        let mut fwd = Forwarder::new(
            1 << 10,
            false,
            vec![MacAddr([2, 0, 0, 0, 2, 0])],
            Arc::new(crate::conns::ConnCounts::new()),
        )
        .unwrap();
        let hub = Arc::new(TraceHub::new(1));
        fwd.tap = hub.tap(0);
        hub.attach(&TraceFilter::default()).unwrap();
        fwd.tap.as_mut().unwrap().refresh();
        let c = WorkerCounters::new();
        for mut f in frames {
            let n = f.len() - VNET_HDR_LEN;
            let rx = RxFrame {
                buf: &mut f,
                wire_len: n,
                status: 0,
                scratch: false,
            };
            fwd.process(&snap, &neigh, &c, rx, 0);
        }
        let mut recs = Vec::new();
        hub.drain(&mut recs);
        recs.iter()
            .map(|r| format_record(r, &|_| "eth0".to_string()))
            .collect()
    }

    fn two_reals(proto: Protocol, port: u16, f: impl FnOnce(&mut ServiceSpec)) -> ServiceTable {
        let mut t = ServiceTable::new();
        let key = ServiceKey::addr(proto, Ipv4Addr::new(10, 0, 0, 100), port);
        let mut spec = ServiceSpec::new(key, SchedulerKind::Rr);
        f(&mut spec);
        t.add_service(spec).unwrap();
        for i in 0..2u8 {
            t.add_real(&key, RealSpec::route(Ipv4Addr::new(10, 0, 0, 11 + i), port))
                .unwrap();
        }
        t
    }

    #[test]
    fn persistent_template_hit_is_named_in_the_trace() {
        let t = two_reals(Protocol::Tcp, 80, |s| s.persistence_timeout = Some(300));
        // Three connections from one client: the first creates the template, the others are
        // placed by it (rr alone would alternate).
        let lines = traced_lines(
            &t,
            vec![frame(10000, true), frame(10001, true), frame(10002, true)],
        );
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(
            lines[0].contains(
                "new flow -> 10.0.0.11 (no persistence template for the client net /32: new template -> 10.0.0.11, rr: position 1/2"
            ),
            "{}",
            lines[0]
        );
        for l in &lines[1..] {
            assert!(
                l.contains(
                    "new flow -> 10.0.0.11 (persistent template hit -> 10.0.0.11: client net /32 already placed there, rr not asked)"
                ),
                "{l}"
            );
        }
    }

    #[test]
    fn a_tunnelled_frame_shows_its_outer_header() {
        let mut t = ServiceTable::new();
        let key = ServiceKey::addr(Protocol::Tcp, Ipv4Addr::new(10, 0, 0, 100), 80);
        t.add_service(ServiceSpec::new(key, SchedulerKind::Rr))
            .unwrap();
        let gue = crate::model::Tunnel {
            kind: crate::model::TunnelKind::Gue,
            port: 6080,
            csum: crate::model::TunnelCsum::NoCsum,
        };
        for (i, forward) in [ForwardMethod::IPIP, ForwardMethod::Tunnel(gue)]
            .into_iter()
            .enumerate()
        {
            let real = RealSpec {
                forward,
                ..RealSpec::route(Ipv4Addr::new(10, 0, 0, 11 + i as u8), 80)
            };
            t.add_real(&key, real).unwrap();
        }
        let lines = traced_lines(&t, vec![frame(10000, true), frame(10001, true)]);
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(
            lines[0].contains("ttl 64->63 ipip 10.0.0.2 > 10.0.0.11 out eth0"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("ttl 64->63 gue 10.0.0.2 > 10.0.0.12 out eth0"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn one_packet_scheduling_is_named_in_the_trace() {
        let t = two_reals(Protocol::Udp, 53, |s| s.ops = true);
        let udp = |sport: u16| {
            let mut out = vec![0u8; VNET_HDR_LEN];
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 2, 0])
                .ipv4([172, 30, 0, 10], [10, 0, 0, 100], 64)
                .udp(sport, 53)
                .write(&mut out, b"q")
                .unwrap();
            out
        };
        // The same 4-tuple twice: with OPS each datagram is scheduled on its own.
        let lines = traced_lines(&t, vec![udp(5000), udp(5000)]);
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(
            lines[0].contains("ops datagram -> 10.0.0.11 (ops: one-packet scheduling"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("ops datagram -> 10.0.0.12"),
            "{}",
            lines[1]
        );
    }

    #[test]
    #[ignore]
    fn forwarding_cost_with_a_trace_attached() {
        let mut t = ServiceTable::new();
        let key = ServiceKey {
            proto: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 0, 0, 100),
            port: 80,
            fwmark: 0,
        };
        t.add_service(ServiceSpec::new(key, SchedulerKind::Rr))
            .unwrap();
        for i in 0..2u8 {
            t.add_real(&key, RealSpec::route(Ipv4Addr::new(10, 0, 0, 11 + i), 80))
                .unwrap();
        }
        let snap = Snapshot::build(&t, 1, &mut Lan).unwrap();
        let neigh = NeighTable::new(256);
        neigh.set(11, Some(MacAddr([2, 0, 0, 0, 0x11, 0])));
        neigh.set(12, Some(MacAddr([2, 0, 0, 0, 0x12, 0])));
        let new_fwd = || {
            Forwarder::new(
                1 << 16,
                false,
                vec![MacAddr([2, 0, 0, 0, 2, 0])],
                Arc::new(crate::conns::ConnCounts::new()),
            )
            .unwrap()
        };
        let mut f0 = new_fwd();
        let base = run(&mut f0, &snap, &neigh, None);
        let hub = Arc::new(TraceHub::new(1));
        let mut f1 = new_fwd();
        f1.tap = hub.tap(0);
        let idle = run(&mut f1, &snap, &neigh, None);
        let hub2 = Arc::new(TraceHub::new(1));
        let mut f2 = new_fwd();
        f2.tap = hub2.tap(0);
        hub2.attach(&TraceFilter {
            rate: u32::MAX,
            ..Default::default()
        })
        .unwrap();
        let all = run(&mut f2, &snap, &neigh, Some(&hub2));
        let hub3 = Arc::new(TraceHub::new(1));
        let mut f3 = new_fwd();
        f3.tap = hub3.tap(0);
        hub3.attach(&TraceFilter {
            client: Some(Ipv4Addr::new(192, 168, 1, 1)),
            ..Default::default()
        })
        .unwrap();
        let filtered = run(&mut f3, &snap, &neigh, Some(&hub3));
        println!(
            "ns/packet (established flow): no tap {base:.1}; tap, nobody attached {idle:.1}; \
             attached, every packet recorded {all:.1}; attached, filtered out {filtered:.1}; \
             records lost to full ring {}",
            hub2.dropped_full.load(Ordering::Relaxed)
        );
    }
}
