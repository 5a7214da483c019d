//! Packet-in / packet-out fixtures for tunnelling: each assembles what a worker would send
//! (the composed head, then its part of the frame), completes the partial checksum the
//! virtio header leaves to the kernel, and checks every header as a real's kernel would.

use std::net::Ipv4Addr;
use std::sync::Arc;

use etherparse::PacketBuilder;

use crate::conns::ConnCounts;
use crate::datapath::counters::{DropReason, WorkerCounters};
use crate::datapath::process::{Forwarder, Verdict};
use crate::io::ring::RxFrame;
use crate::io::tx::HEAD_CAP;
use crate::io::{VNET_F_NEEDS_CSUM, VNET_HDR_LEN};
use crate::model::{
    ForwardMethod, Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec, ServiceTable,
    Tunnel, TunnelCsum, TunnelKind,
};
use crate::neigh::cache::NeighTable;
use crate::snapshot::{NextHop, PlaceError, Placement, RouteEntry, RouteHop, Snapshot, TunnelEnd};
use crate::wire::{MacAddr, csum, ipv4};

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const DIR_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 9, 9];
const VIP: [u8; 4] = [203, 0, 113, 2];
const CLIENT: [u8; 4] = [198, 51, 100, 10];
const DIRECTOR: u32 = 0x0a00_0001; // 10.0.0.1
const REAL: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 2);
const MTU: u16 = 1500;

/// Every real behind one gateway (slot 1); the client's network on-link (egress 0).
struct Routed;
impl Placement for Routed {
    fn next_hop(&mut self, _: Ipv4Addr, _: ForwardMethod) -> Result<NextHop, PlaceError> {
        Ok(NextHop {
            egress: 0,
            neigh: 1,
        })
    }
    fn routes(&mut self) -> Result<Vec<RouteEntry>, PlaceError> {
        Ok(vec![RouteEntry {
            prefix: u32::from_be_bytes([198, 51, 100, 0]),
            prefix_len: 24,
            metric: 0,
            hop: Some(RouteHop {
                egress: 0,
                gateway: None,
            }),
        }])
    }
    fn tunnel_end(&mut self, _: Ipv4Addr, _: NextHop) -> Result<TunnelEnd, PlaceError> {
        Ok(TunnelEnd {
            source: DIRECTOR,
            mtu: MTU,
        })
    }
    fn interface_addr(&self, egress: u16) -> Option<u32> {
        (egress == 0).then_some(DIRECTOR)
    }
}

struct Rig {
    fwd: Forwarder,
    snap: Snapshot,
    neigh: NeighTable,
    counters: WorkerCounters,
}

fn rig(t: Tunnel) -> Rig {
    let mut table = ServiceTable::new();
    for (proto, port) in [(Protocol::Tcp, 80u16), (Protocol::Udp, 53)] {
        let key = ServiceKey {
            proto,
            vip: Ipv4Addr::from(VIP),
            port,
            fwmark: 0,
        };
        table
            .add_service(ServiceSpec::new(key, SchedulerKind::Rr))
            .unwrap();
        let spec = RealSpec {
            forward: ForwardMethod::Tunnel(t),
            ..RealSpec::route(REAL, port)
        };
        table.add_real(&key, spec).unwrap();
    }
    let snap = Snapshot::build(&table, 1, &mut Routed).unwrap();
    let neigh = NeighTable::new(16);
    neigh.set(1, Some(MacAddr(GW_MAC)));
    Rig {
        fwd: Forwarder::new(
            1024,
            true,
            vec![MacAddr(DIR_MAC)],
            Arc::new(ConnCounts::new()),
        )
        .unwrap(),
        snap,
        neigh,
        counters: WorkerCounters::new(),
    }
}

impl Rig {
    fn run(&mut self, buf: &mut [u8], now: u32) -> Verdict {
        let wire = buf.len() - VNET_HDR_LEN;
        self.fwd.process(
            &self.snap,
            &self.neigh,
            &self.counters,
            RxFrame {
                buf,
                wire_len: wire,
                status: 0,
                scratch: false,
            },
            now,
        )
    }

    /// Packet `k` as it would leave: virtio header + Ethernet frame.
    fn assemble(&self, buf: &[u8], k: u16) -> Vec<u8> {
        let mut slot = [0u8; HEAD_CAP];
        let p = self.fwd.compose.fill(k, &mut slot);
        let mut out = slot[..p.head_len].to_vec();
        out.extend_from_slice(&buf[p.payload_from..p.payload_from + p.payload_len]);
        out
    }
}

fn vnet(frame: Vec<u8>) -> Vec<u8> {
    let mut b = vec![0u8; VNET_HDR_LEN];
    b.extend(frame);
    b
}

fn tcp_frame(payload: &[u8], df: bool, tos: u8) -> Vec<u8> {
    let mut ip =
        etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, CLIENT, VIP).unwrap();
    ip.dont_fragment = df;
    ip.dscp = etherparse::IpDscp::try_new(tos >> 2).unwrap();
    ip.ecn = etherparse::IpEcn::try_new(tos & 3).unwrap();
    ip.identification = 0x1234;
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, DIR_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(40000, 80, 1000, 65535)
        .syn()
        .write(&mut out, payload)
        .unwrap();
    vnet(out)
}

/// Completes the partial checksum the virtio header asks for, as the kernel would.
fn complete(pkt: &mut [u8]) {
    if pkt[0] & VNET_F_NEEDS_CSUM == 0 {
        return;
    }
    let start = usize::from(u16::from_le_bytes([pkt[6], pkt[7]])) + VNET_HDR_LEN;
    let offset = usize::from(u16::from_le_bytes([pkt[8], pkt[9]]));
    let c = !csum::fold(csum::sum(&pkt[start..], 0));
    let c = if c == 0 { 0xffff } else { c };
    pkt[start + offset..start + offset + 2].copy_from_slice(&c.to_be_bytes());
    pkt[0] &= !VNET_F_NEEDS_CSUM;
}

fn pseudo(ip: &[u8], proto: u8, len: usize) -> u32 {
    let [a, b] = csum::words(ipv4::src(ip));
    let [c, d] = csum::words(ipv4::dst(ip));
    u32::from(a) + u32::from(b) + u32::from(c) + u32::from(d) + u32::from(proto) + len as u32
}

/// A TCP/UDP segment's checksum verifies against its IP header.
fn l4_ok(ip: &[u8]) -> bool {
    let ihl = ipv4::header_len(ip);
    let total = ipv4::total_len(ip);
    let proto = ipv4::protocol(ip);
    csum::fold(csum::sum(&ip[ihl..total], pseudo(ip, proto, total - ihl))) == 0xffff
}

/// The outer IPv4 header and what follows it, checked: version, header checksum, length.
fn outer(pkt: &[u8]) -> &[u8] {
    let ip = &pkt[VNET_HDR_LEN + 14..];
    assert_eq!(ip[0], 0x45, "outer IPv4 without options");
    assert_eq!(ipv4::checksum(&ip[..20]), 0, "outer header checksum");
    assert_eq!(ipv4::total_len(ip), ip.len(), "outer total length");
    ip
}

#[test]
fn ipip_wraps_the_packet_unchanged_but_for_ttl_in_an_outer_header_to_the_real() {
    let mut r = rig(Tunnel::IPIP);
    let input = tcp_frame(b"hello", true, 0xb8 | 3);
    let mut buf = input.clone();
    assert_eq!(
        r.run(&mut buf, 0),
        Verdict::Compose {
            egress: 0,
            packets: 1
        }
    );
    let pkt = r.assemble(&buf, 0);
    assert_eq!(
        &pkt[VNET_HDR_LEN..VNET_HDR_LEN + 6],
        &GW_MAC,
        "to the gateway"
    );
    assert_eq!(&pkt[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12], &DIR_MAC);
    let o = outer(&pkt);
    assert_eq!(ipv4::protocol(o), 4);
    assert_eq!(ipv4::src(o), DIRECTOR);
    assert_eq!(ipv4::dst(o), u32::from(REAL));
    assert_eq!(ipv4::ttl(o), 63, "the inner TTL after its decrement");
    assert_eq!(o[1], 0xb8 | 2, "DSCP kept, CE becomes ECT(0)");
    assert_eq!(crate::wire::be16(o, 6), 0x4000, "DF copied");
    let inner = &o[20..];
    let orig = &input[VNET_HDR_LEN + 14..];
    assert_eq!(inner.len(), orig.len());
    assert_eq!(ipv4::ttl(inner), 63);
    assert_eq!(ipv4::checksum(&inner[..20]), 0);
    // Everything but TTL and header checksum is the client's packet.
    let differs: Vec<usize> = (0..inner.len()).filter(|&i| inner[i] != orig[i]).collect();
    assert!(
        differs.iter().all(|i| [8, 10, 11].contains(i)),
        "{differs:?}"
    );
    assert!(l4_ok(inner));
}

#[test]
fn gue_carries_udp_to_the_tunnel_port_from_a_flow_hashed_source_port() {
    for csum_opt in [TunnelCsum::NoCsum, TunnelCsum::Csum, TunnelCsum::RemCsum] {
        let t = Tunnel {
            kind: TunnelKind::Gue,
            port: 6080,
            csum: csum_opt,
        };
        let mut r = rig(t);
        let mut buf = tcp_frame(b"hello", true, 0);
        assert!(matches!(r.run(&mut buf, 0), Verdict::Compose { .. }));
        let mut pkt = r.assemble(&buf, 0);
        complete(&mut pkt);
        let o = outer(&pkt);
        assert_eq!(ipv4::protocol(o), 17);
        let udp = &o[20..];
        let sport = crate::wire::be16(udp, 0);
        assert!((32768..61000).contains(&sport), "{sport}");
        assert_eq!(crate::wire::be16(udp, 2), 6080);
        assert_eq!(usize::from(crate::wire::be16(udp, 4)), udp.len());
        let gue = &udp[8..12];
        assert_eq!(gue, [0, 4, 0, 0], "GUE v0, no options, IPv4 inside");
        if csum_opt == TunnelCsum::NoCsum {
            assert_eq!(crate::wire::be16(udp, 6), 0, "no UDP checksum");
        } else {
            assert!(l4_ok(o), "{csum_opt:?}: UDP checksum");
        }
        assert!(l4_ok(&udp[12..]), "inner TCP checksum");
    }
}

#[test]
fn gre_has_a_4_byte_header_or_8_with_its_checksum() {
    for (csum_opt, len) in [(TunnelCsum::NoCsum, 4), (TunnelCsum::Csum, 8)] {
        let t = Tunnel {
            kind: TunnelKind::Gre,
            port: 0,
            csum: csum_opt,
        };
        let mut r = rig(t);
        let mut buf = tcp_frame(b"hello", true, 0);
        assert!(matches!(r.run(&mut buf, 0), Verdict::Compose { .. }));
        let mut pkt = r.assemble(&buf, 0);
        complete(&mut pkt);
        let o = outer(&pkt);
        assert_eq!(ipv4::protocol(o), 47);
        let gre = &o[20..];
        assert_eq!(crate::wire::be16(gre, 2), 0x0800);
        assert_eq!(crate::wire::be16(gre, 0), if len == 8 { 0x8000 } else { 0 });
        if len == 8 {
            assert_eq!(csum::fold(csum::sum(gre, 0)), 0xffff, "GRE checksum");
        }
        assert_eq!(ipv4::protocol(&gre[len..]), 6);
        assert!(l4_ok(&gre[len..]));
    }
}

/// A frame whose TCP checksum is still partial (veth offloads): the field holds the
/// pseudo-header sum and the virtio header says where to complete it.
fn partial(mut buf: Vec<u8>) -> Vec<u8> {
    let ip_at = VNET_HDR_LEN + 14;
    let ip = buf[ip_at..].to_vec();
    let tcp_len = ipv4::total_len(&ip) - 20;
    let p = csum::fold(pseudo(&ip, 6, tcp_len));
    buf[ip_at + 20 + 16..ip_at + 20 + 18].copy_from_slice(&p.to_be_bytes());
    buf[0] = VNET_F_NEEDS_CSUM;
    buf[6..8].copy_from_slice(&34u16.to_le_bytes());
    buf[8..10].copy_from_slice(&16u16.to_le_bytes());
    buf
}

#[test]
fn a_partial_inner_checksum_is_left_to_the_kernel_and_outer_checksums_still_verify() {
    let cases = [
        (TunnelKind::Ipip, TunnelCsum::NoCsum, 0),
        (TunnelKind::Gue, TunnelCsum::NoCsum, 6080),
        (TunnelKind::Gue, TunnelCsum::Csum, 6080),
        (TunnelKind::Gre, TunnelCsum::Csum, 0),
    ];
    for (kind, csum_opt, port) in cases {
        let mut r = rig(Tunnel {
            kind,
            port,
            csum: csum_opt,
        });
        let mut buf = partial(tcp_frame(&[7u8; 300], true, 0));
        assert!(matches!(r.run(&mut buf, 0), Verdict::Compose { .. }));
        let mut pkt = r.assemble(&buf, 0);
        assert_ne!(pkt[0] & VNET_F_NEEDS_CSUM, 0, "{kind:?}: still partial");
        complete(&mut pkt);
        let o = outer(&pkt);
        let inner_at = 20
            + super::encap_len(
                Tunnel {
                    kind,
                    port,
                    csum: csum_opt,
                },
                false,
            );
        assert!(l4_ok(&o[inner_at..]), "{kind:?}: inner TCP checksum");
        match kind {
            TunnelKind::Gue if csum_opt == TunnelCsum::NoCsum => {
                assert_eq!(crate::wire::be16(o, 26), 0)
            }
            TunnelKind::Gue => assert!(l4_ok(o), "{csum_opt:?}: UDP checksum (lco)"),
            TunnelKind::Gre => assert_eq!(csum::fold(csum::sum(&o[20..], 0)), 0xffff),
            TunnelKind::Ipip => {}
        }
    }
}

#[test]
fn remote_checksum_offload_tells_the_real_where_to_finish_the_inner_checksum() {
    let mut r = rig(Tunnel {
        kind: TunnelKind::Gue,
        port: 6080,
        csum: TunnelCsum::RemCsum,
    });
    let mut buf = partial(tcp_frame(&[7u8; 300], true, 0));
    assert!(matches!(r.run(&mut buf, 0), Verdict::Compose { .. }));
    let mut pkt = r.assemble(&buf, 0);
    complete(&mut pkt);
    let o = outer(&pkt).to_vec();
    assert!(l4_ok(&o), "UDP checksum over the packet as sent");
    let gue = &o[28..];
    assert_eq!(gue[0], 2, "two option words");
    assert_eq!(crate::wire::be16(gue, 2), 1, "private flags present");
    assert_eq!(crate::wire::be32(gue, 4), 0x8000_0000, "remcsum");
    let (start, field) = (
        usize::from(crate::wire::be16(gue, 8)),
        usize::from(crate::wire::be16(gue, 10)),
    );
    assert_eq!((start, field), (20, 36), "from the inner packet's start");
    // What the real does: complete from `start`, store at `field`.
    let mut inner = gue[12..].to_vec();
    let c = !csum::fold(csum::sum(&inner[start..], 0));
    inner[field..field + 2].copy_from_slice(&c.to_be_bytes());
    assert!(l4_ok(&inner));
}

/// A GSO super-frame as veth hands it out: one TCP header, `n` segments' worth of payload,
/// `gso_size` = `mss`, the checksum partial.
fn super_frame(payload: &[u8], mss: u16, fin: bool) -> Vec<u8> {
    let mut ip =
        etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, CLIENT, VIP).unwrap();
    ip.dont_fragment = true;
    ip.identification = 0x100;
    let mut out = Vec::new();
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, DIR_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(40000, 80, 5000, 65535)
        .ack(1)
        .psh()
        .cwr();
    if fin {
        b = b.fin();
    }
    b.write(&mut out, payload).unwrap();
    let mut buf = partial(vnet(out));
    buf[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    buf[4..6].copy_from_slice(&mss.to_le_bytes());
    buf
}

#[test]
fn a_gso_super_frame_leaves_as_encapsulated_segments_the_kernel_would_have_cut() {
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    for kind in [TunnelKind::Ipip, TunnelKind::Gue, TunnelKind::Gre] {
        let t = Tunnel {
            kind,
            port: if kind == TunnelKind::Gue { 6080 } else { 0 },
            csum: if kind == TunnelKind::Ipip {
                TunnelCsum::NoCsum
            } else {
                TunnelCsum::Csum
            },
        };
        let mut r = rig(t);
        let mut buf = super_frame(&payload, 1400, true);
        // Start the flow (sloppy TCP: the rig accepts a mid-stream packet).
        let v = r.run(&mut buf, 0);
        assert_eq!(
            v,
            Verdict::Compose {
                egress: 0,
                packets: 3
            },
            "{kind:?}"
        );
        let mut data = Vec::new();
        let mut ids = Vec::new();
        for k in 0..3u16 {
            let mut pkt = r.assemble(&buf, k);
            assert_eq!(pkt[1], 0, "no GSO type on a segment");
            complete(&mut pkt);
            let o = outer(&pkt);
            assert!(
                o.len() <= usize::from(MTU),
                "{kind:?} segment {k}: {}",
                o.len()
            );
            ids.push(crate::wire::be16(o, 4));
            let inner_at = 20 + super::encap_len(t, false);
            if kind != TunnelKind::Ipip {
                let ok = if kind == TunnelKind::Gue {
                    l4_ok(o)
                } else {
                    csum::fold(csum::sum(&o[20..], 0)) == 0xffff
                };
                assert!(ok, "{kind:?} segment {k}: outer checksum");
            }
            let inner = &o[inner_at..];
            assert_eq!(ipv4::checksum(&inner[..20]), 0);
            assert_eq!(
                crate::wire::be16(inner, 4),
                0x100 + k,
                "inner IP ID per segment"
            );
            assert_eq!(ipv4::ttl(inner), 63);
            assert!(l4_ok(inner), "{kind:?} segment {k}: TCP checksum");
            let tcp = &inner[20..];
            assert_eq!(crate::wire::be32(tcp, 4), 5000 + u32::from(k) * 1400, "seq");
            let flags = tcp[13];
            let last = k == 2;
            assert_eq!(flags & 0x01 != 0, last, "FIN on the last only");
            assert_eq!(flags & 0x08 != 0, last, "PSH on the last only");
            assert_eq!(flags & 0x80 != 0, k == 0, "CWR on the first only");
            data.extend_from_slice(&tcp[20..]);
        }
        assert_eq!(data, payload, "{kind:?}: the payload, in order, once");
        ids.dedup();
        assert_eq!(ids.len(), 3, "a fresh outer ID per segment");
        assert_eq!(
            r.counters
                .totals
                .segmented
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}

#[test]
fn too_big_with_df_is_answered_with_frag_needed_carrying_the_tunnel_mtu() {
    let mut r = rig(Tunnel::IPIP);
    // 1500 bytes on the wire: 1520 once encapsulated.
    let mut buf = tcp_frame(&[1u8; 1460], true, 0);
    let original = buf.clone();
    let v = r.run(&mut buf, 0);
    assert_eq!(
        v,
        Verdict::Compose {
            egress: 0,
            packets: 1
        }
    );
    assert_eq!(r.counters.drop_count(DropReason::TunnelTooBig), 1);
    let pkt = r.assemble(&buf, 0);
    assert_eq!(
        &pkt[VNET_HDR_LEN..VNET_HDR_LEN + 6],
        &CLIENT_MAC,
        "back to the client"
    );
    let ip = &pkt[VNET_HDR_LEN + 14..];
    assert_eq!(ipv4::checksum(&ip[..20]), 0);
    assert_eq!(ipv4::protocol(ip), 1);
    assert_eq!(ipv4::src(ip), DIRECTOR);
    assert_eq!(ipv4::dst(ip), u32::from_be_bytes(CLIENT));
    let icmp = &ip[20..ipv4::total_len(ip)];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
    assert_eq!(crate::wire::be16(icmp, 6), 1480, "the tunnel MTU");
    assert_eq!(csum::checksum(icmp), 0);
    assert_eq!(
        &icmp[8..36],
        &original[VNET_HDR_LEN + 14..VNET_HDR_LEN + 14 + 28],
        "quotes the packet as the client sent it"
    );
    // Without DF: dropped, nothing sent.
    let mut buf = tcp_frame(&[1u8; 1460], false, 0);
    assert_eq!(
        r.run(&mut buf, 0),
        Verdict::Drop(DropReason::TunnelNeedsFragments)
    );
    // A packet that fits is encapsulated.
    let mut buf = tcp_frame(&[1u8; 1440], true, 0);
    assert!(matches!(r.run(&mut buf, 0), Verdict::Compose { .. }));
    assert_eq!(r.counters.drop_count(DropReason::TunnelTooBig), 1);
}

#[test]
fn frag_needed_is_rate_limited() {
    let mut r = rig(Tunnel::IPIP);
    let mut sent = 0;
    for _ in 0..500 {
        let mut buf = tcp_frame(&[1u8; 1460], true, 0);
        if matches!(r.run(&mut buf, 0), Verdict::Compose { .. }) {
            sent += 1;
        }
    }
    assert_eq!(
        sent,
        super::ICMP_BURST,
        "a burst, then nothing within the same ms"
    );
    assert_eq!(r.counters.drop_count(DropReason::TunnelTooBig), 500);
    let limited = r
        .counters
        .totals
        .icmp_rate_limited
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(limited, 500 - u64::from(super::ICMP_BURST));
    // A second later the bucket has refilled.
    let mut buf = tcp_frame(&[1u8; 1460], true, 0);
    assert!(matches!(r.run(&mut buf, 1000), Verdict::Compose { .. }));
}

/// What the lab's endpoint (the `tunl0` stand-in) makes of every encapsulation, with the
/// virtio header exactly as sent (the kernel keeps a partial checksum partial across veth):
/// the client's packet, TTL − 1, every checksum valid.
#[test]
fn every_encapsulation_round_trips_through_the_tunnel_endpoint() {
    let kinds = [
        (TunnelKind::Ipip, TunnelCsum::NoCsum, 0),
        (TunnelKind::Gue, TunnelCsum::NoCsum, 6080),
        (TunnelKind::Gue, TunnelCsum::Csum, 6080),
        (TunnelKind::Gue, TunnelCsum::RemCsum, 6080),
        (TunnelKind::Gre, TunnelCsum::NoCsum, 0),
        (TunnelKind::Gre, TunnelCsum::Csum, 0),
    ];
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
    for (kind, csum_opt, port) in kinds {
        let t = Tunnel {
            kind,
            port,
            csum: csum_opt,
        };
        let gue = (kind == TunnelKind::Gue).then_some(port);
        let inputs = [
            tcp_frame(b"complete", true, 0),
            partial(tcp_frame(&[9u8; 500], true, 0)),
            super_frame(&payload, 1000, false),
        ];
        for (i, input) in inputs.into_iter().enumerate() {
            let mut r = rig(t);
            let mut buf = input.clone();
            let Verdict::Compose { packets, .. } = r.run(&mut buf, 0) else {
                panic!("{kind:?} input {i}: not encapsulated");
            };
            let mut data = Vec::new();
            for k in 0..packets {
                let mut pkt = r.assemble(&buf, k);
                let inner = crate::lab::tunl0::decapsulate(&mut pkt, gue)
                    .unwrap_or_else(|e| panic!("{kind:?} {csum_opt:?} input {i}: {e}"));
                let inner = &pkt[inner];
                assert_eq!(ipv4::checksum(&inner[..20]), 0);
                assert_eq!(ipv4::ttl(inner), 63);
                assert!(l4_ok(inner), "{kind:?} {csum_opt:?} input {i} packet {k}");
                data.extend_from_slice(&inner[40..]);
            }
            let orig = &input[VNET_HDR_LEN + 14 + 40..];
            assert_eq!(data, orig, "{kind:?} {csum_opt:?} input {i}: payload");
        }
    }
}

/// An ICMP error from the client about a packet the VIP sent it goes to the flow's real with
/// the flow's own transmit, as IPVS's `ip_vs_icmp_xmit` sends it for TUN: encapsulated,
/// unchanged inside but for the TTL.
#[test]
fn an_icmp_error_about_a_flow_goes_to_its_real_through_the_tunnel() {
    let mut r = rig(Tunnel::IPIP);
    let mut syn = tcp_frame(b"", true, 0);
    assert!(matches!(r.run(&mut syn, 0), Verdict::Compose { .. }));
    // The client's port unreachable about the real's SYN-ACK (VIP:80 > client:40000).
    let mut quoted = Vec::new();
    PacketBuilder::ipv4(VIP, CLIENT, 63)
        .tcp(80, 40000, 7, 65535)
        .syn()
        .ack(1001)
        .write(&mut quoted, &[])
        .unwrap();
    let mut msg = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(&quoted[..28]);
    let c = csum::checksum(&msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, DIR_MAC)
        .ipv4(CLIENT, VIP, 64)
        .write(&mut out, etherparse::IpNumber::ICMP, &msg)
        .unwrap();
    let input = vnet(out);
    let mut buf = input.clone();
    assert_eq!(
        r.run(&mut buf, 1),
        Verdict::Compose {
            egress: 0,
            packets: 1
        }
    );
    let pkt = r.assemble(&buf, 0);
    let o = outer(&pkt);
    assert_eq!((ipv4::protocol(o), ipv4::dst(o)), (4, u32::from(REAL)));
    let inner = &o[20..];
    let orig = &input[VNET_HDR_LEN + 14..];
    assert_eq!(ipv4::ttl(inner), 63);
    assert_eq!(
        &inner[20..],
        &orig[20..],
        "the ICMP message itself unchanged"
    );
}
