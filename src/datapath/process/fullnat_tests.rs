//! Packet-in / packet-out fixtures for FullNAT: both rewrites with their checksums, the local
//! ports (service addresses, the director's own, exhaustion and release), the PROXY header
//! (TCP v1/v2 after the handshake, resent when lost, UDP v2 in front of the first datagram),
//! and the ICMP errors of both sides.

use std::net::Ipv4Addr;
use std::sync::Arc;

use etherparse::{PacketBuilder, TcpOptionElement};

use super::*;
use crate::conns::ConnCounts;
use crate::datapath::fullnat::{LaddrCounters, PortPool};
use crate::io::tx::HEAD_CAP;
use crate::io::{VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM};
use crate::model::{
    ForwardMethod, LocalAddr, Protocol, ProxyVersion, RealSpec, SchedulerKind, ServiceKey,
    ServiceSpec, ServiceTable,
};
use crate::proxy_protocol::{Decoded, decode};
use crate::snapshot::{NextHop, PlaceError, Placement, RouteEntry, RouteHop, TunnelEnd};
use crate::wire::csum;

const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 1, 9];
const DIR_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const RS1_MAC: [u8; 6] = [2, 0, 0, 0, 11, 1];
const VIP: [u8; 4] = [192, 168, 80, 100];
/// The director's address: the default local address.
const DIR: [u8; 4] = [192, 168, 80, 2];
/// A local address of the service's own.
const LIP: [u8; 4] = [192, 168, 80, 200];
const RS1: [u8; 4] = [192, 168, 80, 11];
const FAR: [u8; 4] = [198, 51, 100, 10];
const GATEWAY_SLOT: u32 = 1;
const FROM_ROUTER: ([u8; 6], [u8; 6]) = (ROUTER_MAC, DIR_MAC);
const FROM_RS1: ([u8; 6], [u8; 6]) = (RS1_MAC, DIR_MAC);

/// Every real on the LAN (slot = last octet); a default route via the router (slot 1); the
/// director is 192.168.80.2, which it sends to the reals from.
struct Lan;
impl Placement for Lan {
    fn next_hop(&mut self, a: Ipv4Addr, _: ForwardMethod) -> Result<NextHop, PlaceError> {
        Ok(NextHop {
            egress: 0,
            neigh: u32::from(a) & 0xff,
        })
    }
    fn routes(&mut self) -> Result<Vec<RouteEntry>, PlaceError> {
        Ok(vec![
            RouteEntry {
                prefix: 0,
                prefix_len: 0,
                metric: 0,
                hop: Some(RouteHop {
                    egress: 0,
                    gateway: Some(GATEWAY_SLOT),
                }),
            },
            RouteEntry {
                prefix: u32::from_be_bytes([192, 168, 80, 0]),
                prefix_len: 24,
                metric: 0,
                hop: Some(RouteHop {
                    egress: 0,
                    gateway: None,
                }),
            },
        ])
    }
    fn local_addrs(&self) -> Vec<u32> {
        vec![u32::from_be_bytes(DIR)]
    }
    fn tunnel_end(&mut self, _: Ipv4Addr, _: NextHop) -> Result<TunnelEnd, PlaceError> {
        Ok(TunnelEnd {
            source: u32::from_be_bytes(DIR),
            mtu: 1500,
        })
    }
}

struct Rig {
    fwd: Forwarder,
    snap: Snapshot,
    neigh: NeighTable,
    counters: WorkerCounters,
    laddr_counters: Arc<LaddrCounters>,
}

/// TCP VIP:80 and UDP VIP:53 to FullNAT real RS1 on 8080 and 5353; `proxy` the services'
/// PROXY version; `laddrs` their own local addresses; `ports` the local port range.
fn rig(proxy: ProxyVersion, laddrs: &[[u8; 4]], ports: (u16, u16)) -> Rig {
    let mut t = ServiceTable::new();
    for (proto, port, rport) in [(Protocol::Tcp, 80u16, 8080u16), (Protocol::Udp, 53, 5353)] {
        let key = ServiceKey::addr(proto, Ipv4Addr::from(VIP), port);
        let mut spec = ServiceSpec::new(key, SchedulerKind::Rr);
        spec.proxy_protocol = if proto == Protocol::Udp && proxy == ProxyVersion::V1 {
            ProxyVersion::Off
        } else {
            proxy
        };
        t.add_service(spec).unwrap();
        let real = RealSpec {
            forward: ForwardMethod::FullNat,
            ..RealSpec::route(Ipv4Addr::from(RS1), rport)
        };
        t.add_real(&key, real).unwrap();
        for l in laddrs {
            let la = LocalAddr {
                addr: Ipv4Addr::from(*l),
                interface: None,
            };
            t.add_local_addr(&key, la).unwrap();
        }
    }
    let neigh = NeighTable::new(256);
    neigh.set(11, Some(MacAddr(RS1_MAC)));
    neigh.set(GATEWAY_SLOT, Some(MacAddr(ROUTER_MAC)));
    let snap = Snapshot::build(&t, 1, &mut Lan).unwrap();
    let mut fwd = Forwarder::new(
        1024,
        false,
        vec![MacAddr(DIR_MAC)],
        Arc::new(ConnCounts::new()),
    )
    .unwrap();
    fwd.local_ports = LocalPorts::new(ports);
    let laddr_counters = Arc::new(LaddrCounters::default());
    for &a in snap.laddrs() {
        let pool = PortPool::new(ports.0, ports.1, 1, 0);
        fwd.local_ports.add(a, pool, Arc::clone(&laddr_counters));
    }
    Rig {
        fwd,
        snap,
        neigh,
        counters: WorkerCounters::new(),
        laddr_counters,
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

    /// Packet `k` of what the forwarder composed for `buf`, whole (virtio header first).
    fn composed(&self, buf: &[u8], k: u16) -> Vec<u8> {
        let mut slot = [0u8; HEAD_CAP];
        let part = self.fwd.compose.fill(k, &mut slot);
        let mut out = slot[..part.head_len].to_vec();
        out.extend_from_slice(&buf[part.payload_from..part.payload_from + part.payload_len]);
        out
    }
}

fn with_vnet(frame: Vec<u8>, flags: u8) -> Vec<u8> {
    let mut b = vec![0u8; VNET_HDR_LEN];
    b[0] = flags;
    b.extend(frame);
    b
}

/// A TCP segment with `flags`, `seq`/`ack`, TCP `options` and `payload`.
#[allow(clippy::too_many_arguments)]
fn segment(
    macs: ([u8; 6], [u8; 6]),
    (src, sport): ([u8; 4], u16),
    (dst, dport): ([u8; 4], u16),
    flags: u8,
    seq: u32,
    ack: u32,
    options: &[TcpOptionElement],
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, seq, 65535);
    if flags & tcp::SYN != 0 {
        b = b.syn();
    }
    if flags & tcp::ACK != 0 {
        b = b.ack(ack);
    }
    if flags & tcp::FIN != 0 {
        b = b.fin();
    }
    if flags & 0x08 != 0 {
        b = b.psh();
    }
    if !options.is_empty() {
        b = b.options(options).unwrap();
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn udp(macs: ([u8; 6], [u8; 6]), src: ([u8; 4], u16), dst: ([u8; 4], u16), data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.0, dst.0, 64)
        .udp(src.1, dst.1)
        .write(&mut out, data)
        .unwrap();
    out
}

/// The transport checksum of the IPv4 packet in `frame` verified (0 = valid).
fn l4_check(frame: &[u8]) -> u16 {
    let ip = &frame[14..];
    let ihl = ipv4::header_len(ip);
    let total = ipv4::total_len(ip);
    let l4 = &ip[ihl..total];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ipv4::protocol(ip)]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    !csum::fold(csum::sum(l4, csum::sum(&pseudo, 0)))
}

fn fields(frame: &[u8]) -> wire::FlowFields {
    wire::FlowFields::of_frame(frame)
}

fn addr(a: [u8; 4]) -> u32 {
    u32::from_be_bytes(a)
}

/// The TCP header of a frame (no virtio header).
fn tcp_of(frame: &[u8]) -> &[u8] {
    let ip = &frame[14..];
    &ip[ipv4::header_len(ip)..]
}

/// The payload of a TCP or UDP frame.
fn payload_of(frame: &[u8]) -> &[u8] {
    let ip = &frame[14..];
    let ihl = ipv4::header_len(ip);
    let total = ipv4::total_len(ip);
    let l4 = &ip[ihl..total];
    match ipv4::protocol(ip) {
        IPPROTO_TCP => &l4[tcp::header_len(l4)..],
        _ => &l4[8..],
    }
}

/// SYN from the client, SYN-ACK from the real: the local port the connection got.
fn handshake(r: &mut Rig, cport: u16, isn: u32) -> u16 {
    let mut syn = with_vnet(
        segment(
            FROM_ROUTER,
            (FAR, cport),
            (VIP, 80),
            tcp::SYN,
            isn,
            0,
            &[],
            &[],
        ),
        0,
    );
    assert_eq!(r.run(&mut syn, 0), Verdict::Forward { egress: 0 });
    let f = fields(&syn[VNET_HDR_LEN..]);
    let lport = f.sport;
    let mut syn_ack = with_vnet(
        segment(
            FROM_RS1,
            (RS1, 8080),
            ([192, 168, 80, 2], lport),
            tcp::SYN | tcp::ACK,
            7000,
            isn + 1,
            &[],
            &[],
        ),
        0,
    );
    assert_eq!(r.run(&mut syn_ack, 1), Verdict::Forward { egress: 0 });
    lport
}

#[test]
fn both_ends_are_rewritten_with_valid_checksums_and_the_syn_loses_its_timestamps() {
    let mut r = rig(ProxyVersion::Off, &[], (1024, 32767));
    let opts = [
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(123_456, 0),
        TcpOptionElement::WindowScale(7),
    ];
    let mut b = with_vnet(
        segment(
            FROM_ROUTER,
            (FAR, 40000),
            (VIP, 80),
            tcp::SYN,
            1000,
            0,
            &opts,
            &[],
        ),
        VNET_F_DATA_VALID,
    );
    assert_eq!(r.run(&mut b, 0), Verdict::Forward { egress: 0 });
    let f = &b[VNET_HDR_LEN..];
    assert_eq!((&f[0..6], &f[6..12]), (&RS1_MAC[..], &DIR_MAC[..]));
    let ff = fields(f);
    assert_eq!((ff.saddr, ff.daddr, ff.dport), (addr(DIR), addr(RS1), 8080));
    assert!((1024..=32767).contains(&ff.sport));
    assert_eq!(ff.ttl, 63);
    assert_eq!(ipv4::checksum(&f[14..34]), 0);
    assert_eq!(l4_check(f), 0);
    let t = tcp_of(f);
    assert_eq!(wire::be32(t, 4), 1000, "a SYN keeps its ISN");
    let opts_bytes = &t[20..tcp::header_len(t)];
    assert!(
        !opts_bytes.windows(2).any(|w| w == [8, 10]),
        "no timestamp option left: {opts_bytes:?}"
    );
    assert!(
        opts_bytes.windows(4).any(|w| w == [2, 4, 0x05, 0xb4]),
        "MSS kept"
    );

    // The real answers the local address and port; the client gets it from the VIP.
    let lport = ff.sport;
    let mut b = with_vnet(
        segment(
            FROM_RS1,
            (RS1, 8080),
            (DIR, lport),
            tcp::SYN | tcp::ACK,
            7000,
            1001,
            &[],
            &[],
        ),
        0,
    );
    assert_eq!(r.run(&mut b, 1), Verdict::Forward { egress: 0 });
    let f = &b[VNET_HDR_LEN..];
    assert_eq!(&f[0..6], &ROUTER_MAC, "towards the client by its route");
    let ff = fields(f);
    assert_eq!(
        (ff.saddr, ff.sport, ff.daddr, ff.dport),
        (addr(VIP), 80, addr(FAR), 40000)
    );
    assert_eq!(wire::be32(tcp_of(f), 8), 1001);
    assert_eq!(ipv4::checksum(&f[14..34]), 0);
    assert_eq!(l4_check(f), 0);
    let rs1 = r.snap.services().next().unwrap().reals[0].id;
    let out = r
        .counters
        .real(rs1)
        .unwrap()
        .out_packets
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(out, 1, "replies counted as outgoing");
}

#[test]
fn a_partial_checksum_stays_correct_once_the_kernel_completes_it() {
    let mut r = rig(ProxyVersion::Off, &[], (1024, 32767));
    let mut frame = segment(
        FROM_ROUTER,
        (FAR, 40000),
        (VIP, 80),
        tcp::SYN,
        1000,
        0,
        &[],
        b"x",
    );
    let (ip, l4) = (14, 34);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&frame[ip + 12..ip + 20]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((frame.len() - l4) as u16).to_be_bytes());
    let partial = csum::fold(csum::sum(&pseudo, 0));
    frame[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    let mut b = with_vnet(frame, VNET_F_NEEDS_CSUM);
    assert_eq!(r.run(&mut b, 0), Verdict::Forward { egress: 0 });
    let f = &mut b[VNET_HDR_LEN..];
    let c = !csum::fold(csum::sum(&f[l4..], 0));
    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    assert_eq!(l4_check(f), 0);
}

#[test]
fn the_proxy_header_goes_after_the_handshake_as_its_own_segment() {
    for version in [ProxyVersion::V1, ProxyVersion::V2] {
        let mut r = rig(version, &[], (1024, 32767));
        let lport = handshake(&mut r, 40000, 1000);
        // The handshake's last ACK, no data: a server that speaks first still gets the
        // header now.
        let mut ack = with_vnet(
            segment(
                FROM_ROUTER,
                (FAR, 40000),
                (VIP, 80),
                tcp::ACK,
                1001,
                7001,
                &[],
                &[],
            ),
            0,
        );
        let v = r.run(&mut ack, 2);
        assert_eq!(
            v,
            Verdict::Compose {
                egress: 0,
                packets: 2
            },
            "{version:?}"
        );
        let header = r.composed(&ack, 0);
        let h = &header[VNET_HDR_LEN..];
        let hf = fields(h);
        assert_eq!(
            (hf.saddr, hf.sport, hf.daddr, hf.dport),
            (addr(DIR), lport, addr(RS1), 8080)
        );
        let t = tcp_of(h);
        assert_eq!(wire::be32(t, 4), 1001, "the client's first byte");
        assert_eq!(t[13] & (tcp::ACK | 0x08), tcp::ACK | 0x08);
        assert_eq!(ipv4::checksum(&h[14..34]), 0);
        assert_eq!(l4_check(h), 0);
        let len = match decode(payload_of(h)) {
            Decoded::Header { endpoints, len } => {
                assert_eq!(
                    (endpoints.client, endpoints.client_port),
                    (Ipv4Addr::from(FAR), 40000)
                );
                assert_eq!(
                    (endpoints.server, endpoints.server_port),
                    (Ipv4Addr::from(VIP), 80)
                );
                len
            }
            other => panic!("{version:?}: {other:?}"),
        };
        assert_eq!(len, payload_of(h).len());
        // The ACK itself follows, moved past the header.
        let frame = r.composed(&ack, 1);
        assert_eq!(frame, ack, "the frame itself, as rewritten");
        assert_eq!(
            wire::be32(tcp_of(&ack[VNET_HDR_LEN..]), 4),
            1001 + len as u32
        );
        assert_eq!(l4_check(&ack[VNET_HDR_LEN..]), 0);

        // The real acknowledges the header and a request; the client sees its own numbers.
        let mut data = with_vnet(
            segment(
                FROM_ROUTER,
                (FAR, 40000),
                (VIP, 80),
                tcp::ACK | 0x08,
                1001,
                7001,
                &[],
                b"GET /",
            ),
            0,
        );
        assert_eq!(
            r.run(&mut data, 3),
            Verdict::Forward { egress: 0 },
            "no second header"
        );
        assert_eq!(
            wire::be32(tcp_of(&data[VNET_HDR_LEN..]), 4),
            1001 + len as u32
        );
        let acked = 1001 + len as u32 + 5;
        let mut reply = with_vnet(
            segment(
                FROM_RS1,
                (RS1, 8080),
                (DIR, lport),
                tcp::ACK,
                7001,
                acked,
                &[],
                &[],
            ),
            0,
        );
        assert_eq!(r.run(&mut reply, 4), Verdict::Forward { egress: 0 });
        let t = tcp_of(&reply[VNET_HDR_LEN..]);
        assert_eq!(wire::be32(t, 8), 1006);
        assert_eq!(l4_check(&reply[VNET_HDR_LEN..]), 0);
    }
}

#[test]
fn a_lost_proxy_header_is_sent_again_when_the_real_shows_it_never_got_it() {
    let mut r = rig(ProxyVersion::V2, &[], (1024, 32767));
    let lport = handshake(&mut r, 40001, 5000);
    let mut ack = with_vnet(
        segment(
            FROM_ROUTER,
            (FAR, 40001),
            (VIP, 80),
            tcp::ACK,
            5001,
            7001,
            &[],
            &[],
        ),
        0,
    );
    assert!(matches!(
        r.run(&mut ack, 2),
        Verdict::Compose { packets: 2, .. }
    ));
    // The request arrives, the header did not: the real's duplicate ACK still says 5001.
    let mut data = with_vnet(
        segment(
            FROM_ROUTER,
            (FAR, 40001),
            (VIP, 80),
            tcp::ACK,
            5001,
            7001,
            &[],
            b"GET /",
        ),
        0,
    );
    assert_eq!(r.run(&mut data, 3), Verdict::Forward { egress: 0 });
    let mut dup = with_vnet(
        segment(
            FROM_RS1,
            (RS1, 8080),
            (DIR, lport),
            tcp::ACK,
            7001,
            5001,
            &[],
            &[],
        ),
        0,
    );
    assert_eq!(r.run(&mut dup, 4), Verdict::Forward { egress: 0 });
    assert_eq!(wire::be32(tcp_of(&dup[VNET_HDR_LEN..]), 8), 5001);
    // The client retransmits; the header goes first again.
    let mut again = with_vnet(
        segment(
            FROM_ROUTER,
            (FAR, 40001),
            (VIP, 80),
            tcp::ACK,
            5001,
            7001,
            &[],
            b"GET /",
        ),
        0,
    );
    assert!(matches!(
        r.run(&mut again, 5),
        Verdict::Compose { packets: 2, .. }
    ));
}

#[test]
fn a_udp_flow_gets_the_v2_header_in_front_of_its_first_datagram_only() {
    let mut r = rig(ProxyVersion::V2, &[], (1024, 32767));
    let mut b = with_vnet(udp(FROM_ROUTER, (FAR, 5000), (VIP, 53), b"query"), 0);
    assert_eq!(
        r.run(&mut b, 0),
        Verdict::Compose {
            egress: 0,
            packets: 1
        }
    );
    let out = r.composed(&b, 0);
    let f = &out[VNET_HDR_LEN..];
    let ff = fields(f);
    assert_eq!((ff.saddr, ff.daddr, ff.dport), (addr(DIR), addr(RS1), 5353));
    assert_eq!(ipv4::checksum(&f[14..34]), 0);
    assert_eq!(l4_check(f), 0);
    let p = payload_of(f);
    match decode(p) {
        Decoded::Header { endpoints, len } => {
            assert!(endpoints.udp);
            assert_eq!(
                (endpoints.client, endpoints.client_port),
                (Ipv4Addr::from(FAR), 5000)
            );
            assert_eq!(&p[len..], b"query");
        }
        other => panic!("{other:?}"),
    }
    let mut second = with_vnet(udp(FROM_ROUTER, (FAR, 5000), (VIP, 53), b"again"), 0);
    assert_eq!(r.run(&mut second, 1), Verdict::Forward { egress: 0 });
    assert_eq!(payload_of(&second[VNET_HDR_LEN..]), b"again");
}

#[test]
fn ports_run_out_are_refused_and_counted_and_come_back_when_flows_end() {
    let mut r = rig(ProxyVersion::Off, &[], (2000, 2001));
    for cport in [41000, 41001] {
        let mut syn = with_vnet(
            segment(
                FROM_ROUTER,
                (FAR, cport),
                (VIP, 80),
                tcp::SYN,
                1,
                0,
                &[],
                &[],
            ),
            0,
        );
        assert_eq!(r.run(&mut syn, 0), Verdict::Forward { egress: 0 });
    }
    let mut third = with_vnet(
        segment(
            FROM_ROUTER,
            (FAR, 41002),
            (VIP, 80),
            tcp::SYN,
            1,
            0,
            &[],
            &[],
        ),
        0,
    );
    assert_eq!(r.run(&mut third, 0), Verdict::Drop(DropReason::NoLocalPort));
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(r.laddr_counters.exhausted.load(Relaxed), 1);
    assert_eq!(r.laddr_counters.in_use.load(Relaxed), 2);
    // SYN_RECV expires after 60 s: the ports are free again.
    let later = 61_000;
    r.fwd.expire_some(&r.snap, later, 4096);
    assert_eq!(r.laddr_counters.in_use.load(Relaxed), 0);
    let mut fourth = with_vnet(
        segment(
            FROM_ROUTER,
            (FAR, 41003),
            (VIP, 80),
            tcp::SYN,
            1,
            0,
            &[],
            &[],
        ),
        0,
    );
    assert_eq!(r.run(&mut fourth, later), Verdict::Forward { egress: 0 });
    assert_eq!(
        fields(&fourth[VNET_HDR_LEN..]).sport,
        2000,
        "the oldest freed port"
    );
}

#[test]
fn a_service_with_its_own_local_address_leaves_from_it() {
    let mut r = rig(ProxyVersion::Off, &[LIP], (1024, 32767));
    let mut syn = with_vnet(
        segment(
            FROM_ROUTER,
            (FAR, 40000),
            (VIP, 80),
            tcp::SYN,
            1,
            0,
            &[],
            &[],
        ),
        0,
    );
    assert_eq!(r.run(&mut syn, 0), Verdict::Forward { egress: 0 });
    let ff = fields(&syn[VNET_HDR_LEN..]);
    assert_eq!(ff.saddr, addr(LIP));
    let mut reply = with_vnet(
        segment(
            FROM_RS1,
            (RS1, 8080),
            (LIP, ff.sport),
            tcp::SYN | tcp::ACK,
            9,
            2,
            &[],
            &[],
        ),
        0,
    );
    assert_eq!(r.run(&mut reply, 1), Verdict::Forward { egress: 0 });
    assert_eq!(fields(&reply[VNET_HDR_LEN..]).daddr, addr(FAR));
}

#[test]
fn what_is_not_a_fullnat_reply_is_named() {
    let mut r = rig(ProxyVersion::Off, &[], (1024, 32767));
    // The director's own connection to the real (a health check) uses a kernel port.
    let mut b = with_vnet(
        segment(
            FROM_RS1,
            (RS1, 8080),
            (DIR, 45000),
            tcp::SYN | tcp::ACK,
            1,
            1,
            &[],
            &[],
        ),
        0,
    );
    assert_eq!(r.run(&mut b, 0), Verdict::Drop(DropReason::ToDirector));
    // One of uvs's ports, but no connection on it.
    let mut b = with_vnet(
        segment(FROM_RS1, (RS1, 8080), (DIR, 2000), tcp::ACK, 1, 1, &[], &[]),
        0,
    );
    assert_eq!(r.run(&mut b, 0), Verdict::Drop(DropReason::ReplyNoFlow));
}

/// An ICMP destination-unreachable from `src` to `dst` quoting `quoted` (an Ethernet frame).
fn icmp_error(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    quoted: &[u8],
    code: u8,
) -> Vec<u8> {
    let quote = &quoted[14..14 + 20 + 8];
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::from_values(code, 1400)
                .unwrap_or(etherparse::icmpv4::DestUnreachableHeader::Port),
        ))
        .write(&mut out, quote)
        .unwrap();
    out
}

fn icmp_valid(frame: &[u8]) -> bool {
    let ip = &frame[14..];
    let ihl = ipv4::header_len(ip);
    let total = ipv4::total_len(ip);
    let inner = &ip[ihl + 8..];
    ipv4::checksum(&ip[..ihl]) == 0
        && csum::checksum(&ip[ihl..total]) == 0
        && ipv4::checksum(&inner[..20]) == 0
}

/// (source, source port, destination, destination port) of the packet an ICMP error quotes.
fn quoted(frame: &[u8]) -> (u32, u16, u32, u16) {
    let ip = &frame[14..];
    let inner = &ip[ipv4::header_len(ip) + 8..];
    let l4 = &inner[20..];
    (
        ipv4::src(inner),
        wire::be16(l4, 0),
        ipv4::dst(inner),
        wire::be16(l4, 2),
    )
}

#[test]
fn icmp_errors_are_translated_on_both_sides() {
    let mut r = rig(ProxyVersion::Off, &[], (1024, 32767));
    let mut b = with_vnet(udp(FROM_ROUTER, (FAR, 5000), (VIP, 53), b"query"), 0);
    assert_eq!(r.run(&mut b, 0), Verdict::Forward { egress: 0 });
    let sent = b[VNET_HDR_LEN..].to_vec();
    let lport = fields(&sent).sport;
    // The real's port unreachable about what the director sent it: to the client, from the
    // VIP, quoting what the client sent.
    let mut e = with_vnet(icmp_error(FROM_RS1, RS1, DIR, &sent, 3), 0);
    assert_eq!(r.run(&mut e, 1), Verdict::Forward { egress: 0 });
    let f = &e[VNET_HDR_LEN..];
    assert_eq!(&f[0..6], &ROUTER_MAC);
    assert_eq!(
        (ipv4::src(&f[14..]), ipv4::dst(&f[14..])),
        (addr(VIP), addr(FAR))
    );
    assert_eq!(quoted(f), (addr(FAR), 5000, addr(VIP), 53));
    assert!(icmp_valid(f));
    // The client's own error about what the VIP sent it (a reply): to the real, from the
    // local address, quoting what the real sent.
    let mut reply = with_vnet(udp(FROM_RS1, (RS1, 5353), (DIR, lport), b"answer"), 0);
    assert_eq!(r.run(&mut reply, 2), Verdict::Forward { egress: 0 });
    let answered = reply[VNET_HDR_LEN..].to_vec();
    let mut e = with_vnet(icmp_error(FROM_ROUTER, FAR, VIP, &answered, 3), 0);
    assert_eq!(r.run(&mut e, 3), Verdict::Forward { egress: 0 });
    let f = &e[VNET_HDR_LEN..];
    assert_eq!(&f[0..6], &RS1_MAC);
    assert_eq!(
        (ipv4::src(&f[14..]), ipv4::dst(&f[14..])),
        (addr(DIR), addr(RS1))
    );
    assert_eq!(quoted(f), (addr(RS1), 5353, addr(DIR), lport));
    assert!(icmp_valid(f));
}

#[test]
fn fullnat_flows_are_not_synced_ipvs_has_no_room_for_their_local_port() {
    let mut r = rig(ProxyVersion::Off, &[], (1024, 32767));
    let (hooks, rx) = HaHooks::new(crate::sync::gate::HaGate::new(), 64);
    hooks
        .sending
        .store(true, std::sync::atomic::Ordering::Relaxed);
    r.fwd.ha = hooks;
    let mut syn = with_vnet(
        segment(
            FROM_ROUTER,
            (FAR, 40000),
            (VIP, 80),
            tcp::SYN,
            1,
            0,
            &[],
            &[],
        ),
        0,
    );
    assert_eq!(r.run(&mut syn, 0), Verdict::Forward { egress: 0 });
    assert!(rx.try_recv().is_err());
}
