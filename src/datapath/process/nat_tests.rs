//! Packet-in / packet-out fixtures for masquerading: the request and reply rewrites with every
//! checksum case, the reply path's next hops, IPVS's NAT state table, and ICMP translation.

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;

use super::*;
use crate::conns::ConnCounts;
use crate::io::{VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM};
use crate::model::ServiceTable;
use crate::model::{ForwardMethod, Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec};
use crate::snapshot::{NextHop, PlaceError, Placement, RouteEntry, RouteHop};
use crate::wire::csum;

const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 1, 9];
const DIR_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const RS1_MAC: [u8; 6] = [2, 0, 0, 0, 11, 1];
const VIP: [u8; 4] = [192, 168, 80, 10];
const RS1: [u8; 4] = [192, 168, 80, 11];
/// A client behind the router, and one on the director's own LAN.
const FAR: [u8; 4] = [198, 51, 100, 10];
const NEAR: [u8; 4] = [192, 168, 80, 50];
const GATEWAY_SLOT: u32 = 1;

/// Every real on the LAN (slot = last octet); a default route via the router (slot 1), the
/// LAN on-link; the director's own address 192.168.80.10 (the VIP, as in the one-armed lab).
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
                prefix: u32::from(Ipv4Addr::from([192, 168, 80, 0])),
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
        vec![u32::from(Ipv4Addr::from(VIP))]
    }
}

struct Rig {
    fwd: Forwarder,
    snap: Snapshot,
    neigh: NeighTable,
    counters: WorkerCounters,
}

/// TCP VIP:80 and UDP VIP:53, one masquerading real, 192.168.80.11, on 8080 and 5353.
fn rig() -> Rig {
    let mut t = ServiceTable::new();
    for (proto, port, rport) in [(Protocol::Tcp, 80u16, 8080u16), (Protocol::Udp, 53, 5353)] {
        let key = ServiceKey::addr(proto, Ipv4Addr::from(VIP), port);
        t.add_service(ServiceSpec::new(key, SchedulerKind::Rr))
            .unwrap();
        t.add_real(&key, RealSpec::masq(Ipv4Addr::from(RS1), rport))
            .unwrap();
    }
    let neigh = NeighTable::new(256);
    neigh.set(11, Some(MacAddr(RS1_MAC)));
    neigh.set(GATEWAY_SLOT, Some(MacAddr(ROUTER_MAC)));
    Rig {
        fwd: Forwarder::new(
            1024,
            false,
            vec![MacAddr(DIR_MAC)],
            Arc::new(ConnCounts::new()),
        )
        .unwrap(),
        snap: Snapshot::build(&t, 1, &mut Lan).unwrap(),
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
}

fn with_vnet(frame: Vec<u8>, flags: u8) -> Vec<u8> {
    let mut b = vec![0u8; VNET_HDR_LEN];
    b[0] = flags;
    b.extend(frame);
    b
}

/// A TCP segment from `src:sport` to `dst:dport`, as `from` sends it to `to` on the link.
#[allow(clippy::too_many_arguments)]
fn tcp(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 65535);
    if flags & tcp::SYN != 0 {
        b = b.syn();
    }
    if flags & tcp::ACK != 0 {
        b = b.ack(1);
    }
    if flags & tcp::FIN != 0 {
        b = b.fin();
    }
    let mut out = Vec::new();
    b.write(&mut out, b"some payload bytes").unwrap();
    out
}

fn udp(macs: ([u8; 6], [u8; 6]), src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, b"query")
        .unwrap();
    out
}

/// The transport checksum of the IPv4 packet in `frame`, verified over the pseudo-header
/// (0 = valid).
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

const FROM_ROUTER: ([u8; 6], [u8; 6]) = (ROUTER_MAC, DIR_MAC);
const FROM_RS1: ([u8; 6], [u8; 6]) = (RS1_MAC, DIR_MAC);

#[test]
fn a_request_goes_to_the_real_s_address_and_port_with_valid_checksums() {
    let mut r = rig();
    let mut b = with_vnet(
        tcp(FROM_ROUTER, FAR, 40000, VIP, 80, tcp::SYN),
        VNET_F_DATA_VALID,
    );
    assert_eq!(r.run(&mut b, 0), Verdict::Forward { egress: 0 });
    let f = &b[VNET_HDR_LEN..];
    assert_eq!(&f[0..6], &RS1_MAC);
    assert_eq!(&f[6..12], &DIR_MAC);
    let ff = fields(f);
    assert_eq!(
        (ff.saddr, ff.sport, ff.daddr, ff.dport, ff.ttl),
        (
            u32::from_be_bytes(FAR),
            40000,
            u32::from_be_bytes(RS1),
            8080,
            63
        )
    );
    assert_eq!(ipv4::checksum(&f[14..34]), 0);
    assert_eq!(l4_check(f), 0, "TCP checksum valid after the rewrite");
    assert_eq!(b[0] & VNET_F_DATA_VALID, 0);
}

#[test]
fn a_partial_checksum_gets_the_address_change_only_and_completes_correctly() {
    let mut r = rig();
    // As veth hands a locally generated segment over: the field holds the pseudo-header sum,
    // not complemented; the kernel completes it over the segment on transmit.
    let mut frame = tcp(FROM_ROUTER, FAR, 40000, VIP, 80, tcp::SYN);
    let ip = 14;
    let l4 = ip + 20;
    let seg_len = frame.len() - l4;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&frame[ip + 12..ip + 20]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(seg_len as u16).to_be_bytes());
    let partial = csum::fold(csum::sum(&pseudo, 0));
    frame[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    let mut b = with_vnet(frame, VNET_F_NEEDS_CSUM);
    assert!(matches!(r.run(&mut b, 0), Verdict::Forward { .. }));
    let f = &mut b[VNET_HDR_LEN..];
    // Complete it as the kernel would: sum the segment with the field as it is.
    let c = !csum::fold(csum::sum(&f[l4..], 0));
    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    assert_eq!(
        l4_check(f),
        0,
        "the completed checksum is valid for the new addresses"
    );
}

#[test]
fn a_udp_datagram_without_a_checksum_keeps_none() {
    let mut r = rig();
    let mut frame = udp(FROM_ROUTER, FAR, 5000, VIP, 53);
    frame[14 + 20 + 6..14 + 20 + 8].fill(0);
    let mut b = with_vnet(frame, 0);
    assert!(matches!(r.run(&mut b, 0), Verdict::Forward { .. }));
    let f = &b[VNET_HDR_LEN..];
    assert_eq!(fields(f).dport, 5353);
    assert_eq!(&f[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    // With a checksum, it is kept valid.
    let mut b = with_vnet(udp(FROM_ROUTER, FAR, 5001, VIP, 53), 0);
    assert!(matches!(r.run(&mut b, 0), Verdict::Forward { .. }));
    assert_eq!(l4_check(&b[VNET_HDR_LEN..]), 0);
}

#[test]
fn a_reply_comes_back_from_the_vip_by_the_route_to_the_client() {
    let mut r = rig();
    let mut b = with_vnet(tcp(FROM_ROUTER, FAR, 40000, VIP, 80, tcp::SYN), 0);
    r.run(&mut b, 0);
    let mut b = with_vnet(tcp(FROM_RS1, RS1, 8080, FAR, 40000, tcp::SYN | tcp::ACK), 0);
    assert_eq!(r.run(&mut b, 1), Verdict::Forward { egress: 0 });
    let f = &b[VNET_HDR_LEN..];
    assert_eq!(&f[0..6], &ROUTER_MAC, "the default route's gateway");
    let ff = fields(f);
    assert_eq!(
        (ff.saddr, ff.sport, ff.daddr, ff.dport),
        (u32::from_be_bytes(VIP), 80, u32::from_be_bytes(FAR), 40000)
    );
    assert_eq!(ipv4::checksum(&f[14..34]), 0);
    assert_eq!(l4_check(f), 0);
    let rs1 = r.snap.services().next().unwrap().reals[0].id;
    assert_eq!(
        r.counters
            .real(rs1)
            .unwrap()
            .out_packets
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // A client on the LAN itself is answered at the MAC its request came from.
    const NEAR_MAC: [u8; 6] = [2, 0, 0, 0, 0x50, 1];
    let mut b = with_vnet(tcp((NEAR_MAC, DIR_MAC), NEAR, 41000, VIP, 80, tcp::SYN), 0);
    r.run(&mut b, 0);
    let mut b = with_vnet(tcp(FROM_RS1, RS1, 8080, NEAR, 41000, tcp::ACK), 0);
    assert!(matches!(r.run(&mut b, 1), Verdict::Forward { .. }));
    assert_eq!(&b[VNET_HDR_LEN..VNET_HDR_LEN + 6], &NEAR_MAC);
}

#[test]
fn what_is_not_a_reply_of_a_flow_is_named() {
    let mut r = rig();
    // The director's own connection to the real (a health check): the kernel's.
    let mut b = with_vnet(tcp(FROM_RS1, RS1, 8080, VIP, 33000, tcp::SYN | tcp::ACK), 0);
    assert_eq!(r.run(&mut b, 0), Verdict::Drop(DropReason::ToDirector));
    // From the real's service port to a client with no flow.
    let mut b = with_vnet(tcp(FROM_RS1, RS1, 8080, FAR, 40000, tcp::ACK), 0);
    assert_eq!(r.run(&mut b, 0), Verdict::Drop(DropReason::ReplyNoFlow));
    // The real's own traffic from another port is not uvs's.
    let mut b = with_vnet(udp(FROM_RS1, RS1, 40053, FAR, 53), 0);
    assert_eq!(r.run(&mut b, 0), Verdict::Drop(DropReason::NotAService));
}

#[test]
fn a_nat_connection_follows_ipvs_s_input_and_output_rows_to_time_wait() {
    let mut r = rig();
    let steps: [(bool, u8, TcpState); 6] = [
        (true, tcp::SYN, TcpState::SynRecv),
        (false, tcp::SYN | tcp::ACK, TcpState::SynRecv),
        (true, tcp::ACK, TcpState::Established),
        (true, tcp::FIN | tcp::ACK, TcpState::CloseWait),
        (false, tcp::FIN | tcp::ACK, TcpState::TimeWait),
        (true, tcp::ACK, TcpState::TimeWait),
    ];
    let key = FlowKey {
        saddr: u32::from_be_bytes(FAR),
        daddr: u32::from_be_bytes(VIP),
        sport: 40000,
        dport: 80,
        proto: 6,
    };
    for (i, (from_client, flags, want)) in steps.into_iter().enumerate() {
        let mut b = if from_client {
            with_vnet(tcp(FROM_ROUTER, FAR, 40000, VIP, 80, flags), 0)
        } else {
            with_vnet(tcp(FROM_RS1, RS1, 8080, FAR, 40000, flags), 0)
        };
        assert!(
            matches!(r.run(&mut b, i as u32), Verdict::Forward { .. }),
            "step {i}"
        );
        assert_eq!(
            r.fwd.flows.lookup(&key, i as u32).unwrap().1.state,
            want,
            "step {i}"
        );
    }
}

/// An ICMP error of `kind`/`code` from `src` to `dst` quoting `quoted` (an Ethernet frame).
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

#[test]
fn a_real_s_port_unreachable_reaches_the_client_as_from_the_vip() {
    let mut r = rig();
    let mut b = with_vnet(udp(FROM_ROUTER, FAR, 5000, VIP, 53), 0);
    r.run(&mut b, 0);
    // The real quotes what it received: client:5000 -> real:5353.
    let received = b[VNET_HDR_LEN..].to_vec();
    let mut b = with_vnet(icmp_error(FROM_RS1, RS1, FAR, &received, 3), 0);
    assert_eq!(r.run(&mut b, 1), Verdict::Forward { egress: 0 });
    let f = &b[VNET_HDR_LEN..];
    assert_eq!(&f[0..6], &ROUTER_MAC);
    assert_eq!(
        ipv4::src(&f[14..]),
        u32::from_be_bytes(VIP),
        "outer source := VIP"
    );
    let quoted = &f[14 + 20 + 8..];
    assert_eq!(
        ipv4::dst(quoted),
        u32::from_be_bytes(VIP),
        "the quote names the VIP"
    );
    assert_eq!(wire::l4::dport(&quoted[20..]), 53);
    assert!(icmp_valid(f), "every checksum valid");
}

#[test]
fn a_routers_fragmentation_needed_about_a_reply_reaches_the_real() {
    let mut r = rig();
    let mut b = with_vnet(tcp(FROM_ROUTER, FAR, 40000, VIP, 80, tcp::SYN), 0);
    r.run(&mut b, 0);
    let mut b = with_vnet(tcp(FROM_RS1, RS1, 8080, FAR, 40000, tcp::SYN | tcp::ACK), 0);
    r.run(&mut b, 1);
    // A router on the client's path quotes what the director sent: VIP:80 -> client.
    let sent = b[VNET_HDR_LEN..].to_vec();
    let mut b = with_vnet(icmp_error(FROM_ROUTER, [198, 51, 100, 1], VIP, &sent, 4), 0);
    assert_eq!(r.run(&mut b, 2), Verdict::Forward { egress: 0 });
    let f = &b[VNET_HDR_LEN..];
    assert_eq!(&f[0..6], &RS1_MAC);
    assert_eq!(
        ipv4::dst(&f[14..]),
        u32::from_be_bytes(RS1),
        "outer destination := the real"
    );
    let quoted = &f[14 + 20 + 8..];
    assert_eq!(ipv4::src(quoted), u32::from_be_bytes(RS1));
    assert_eq!(wire::l4::sport(&quoted[20..]), 8080, "as the real sent it");
    assert!(icmp_valid(f));
    // About no flow: not uvs's.
    let b = with_vnet(tcp(FROM_RS1, RS1, 8080, FAR, 49999, tcp::ACK), 0);
    let other = b[VNET_HDR_LEN..].to_vec();
    let mut b = with_vnet(
        icmp_error(FROM_ROUTER, [198, 51, 100, 1], VIP, &other, 4),
        0,
    );
    assert_eq!(r.run(&mut b, 2), Verdict::Drop(DropReason::IcmpNoFlow));
}

/// HA hooks that learn and send, for the sync tests; the records sent come out of the receiver.
fn with_sync(r: &mut Rig) -> crossbeam_channel::Receiver<SyncRecord> {
    let (hooks, rx) = HaHooks::new(crate::sync::gate::HaGate::new(), 64);
    hooks
        .sending
        .store(true, std::sync::atomic::Ordering::Relaxed);
    r.fwd.ha = hooks;
    rx
}

fn synced(client: [u8; 4], cport: u16) -> SyncRecord {
    SyncRecord {
        key: FlowKey {
            saddr: u32::from_be_bytes(client),
            daddr: u32::from_be_bytes(VIP),
            sport: cport,
            dport: 80,
            proto: 6,
        },
        real_addr: u32::from_be_bytes(RS1),
        real_port: 8080,
        forward: ForwardMethod::Masq,
        state: TcpState::Established,
        timeout_secs: 900,
    }
}

#[test]
fn a_nat_flow_is_synced_with_the_masq_flag_and_the_reals_port() {
    let mut r = rig();
    let rx = with_sync(&mut r);
    let mut b = with_vnet(tcp(FROM_ROUTER, FAR, 40000, VIP, 80, tcp::SYN), 0);
    r.run(&mut b, 0);
    let sent = rx.try_recv().unwrap();
    assert_eq!(
        (sent.forward, sent.real_addr, sent.real_port, sent.state),
        (
            ForwardMethod::Masq,
            u32::from_be_bytes(RS1),
            8080,
            TcpState::SynRecv
        )
    );
    // The real's SYN-ACK moves nothing (SYN_RECV stays), the client's ACK establishes: synced.
    let mut b = with_vnet(tcp(FROM_RS1, RS1, 8080, FAR, 40000, tcp::SYN | tcp::ACK), 0);
    r.run(&mut b, 1);
    let mut b = with_vnet(tcp(FROM_ROUTER, FAR, 40000, VIP, 80, tcp::ACK), 0);
    r.run(&mut b, 2);
    assert_eq!(rx.try_recv().unwrap().state, TcpState::Established);
}

#[test]
fn a_taken_over_nat_flow_is_adopted_by_its_reply_or_by_its_request() {
    let mut r = rig();
    let _rx = with_sync(&mut r);
    let now = 10;
    // The real speaks first after the takeover (a download): adopted by the reply.
    r.fwd.ha.synced.learn(&synced(FAR, 40000), 0);
    let mut b = with_vnet(tcp(FROM_RS1, RS1, 8080, FAR, 40000, tcp::ACK), 0);
    assert_eq!(r.run(&mut b, now), Verdict::Forward { egress: 0 });
    let f = &b[VNET_HDR_LEN..];
    assert_eq!(&f[0..6], &ROUTER_MAC);
    let ff = fields(f);
    assert_eq!((ff.saddr, ff.sport), (u32::from_be_bytes(VIP), 80));
    let key = synced(FAR, 40000).key;
    assert_eq!(
        r.fwd.flows.lookup(&key, now).unwrap().1.state,
        TcpState::Established
    );
    // ... and the client's next segment (no SYN, no sloppy_tcp) continues it.
    let mut b = with_vnet(tcp(FROM_ROUTER, FAR, 40000, VIP, 80, tcp::ACK), 0);
    assert_eq!(r.run(&mut b, now), Verdict::Forward { egress: 0 });
    assert_eq!(fields(&b[VNET_HDR_LEN..]).dport, 8080);
    assert!(r.fwd.ha.synced.is_empty());

    // The client speaks first (an upload): adopted by the request, replies follow it.
    r.fwd.ha.synced.learn(&synced(FAR, 40001), 0);
    let mut b = with_vnet(tcp(FROM_ROUTER, FAR, 40001, VIP, 80, tcp::ACK), 0);
    assert_eq!(r.run(&mut b, now), Verdict::Forward { egress: 0 });
    let mut b = with_vnet(tcp(FROM_RS1, RS1, 8080, FAR, 40001, tcp::ACK), 0);
    assert_eq!(r.run(&mut b, now), Verdict::Forward { egress: 0 });

    // A client on the LAN: its MAC is known only from its own frames, so the reply waits
    // (dropped, the synced entry kept) and the client's next segment adopts the flow.
    const NEAR_MAC: [u8; 6] = [2, 0, 0, 0, 0x50, 1];
    r.fwd.ha.synced.learn(&synced(NEAR, 41000), 0);
    let mut b = with_vnet(tcp(FROM_RS1, RS1, 8080, NEAR, 41000, tcp::ACK), 0);
    assert_eq!(r.run(&mut b, now), Verdict::Drop(DropReason::ReplyNoFlow));
    assert_eq!(r.fwd.ha.synced.len(), 1);
    let mut b = with_vnet(tcp((NEAR_MAC, DIR_MAC), NEAR, 41000, VIP, 80, tcp::ACK), 0);
    assert_eq!(r.run(&mut b, now), Verdict::Forward { egress: 0 });
    let mut b = with_vnet(tcp(FROM_RS1, RS1, 8080, NEAR, 41000, tcp::ACK), 0);
    assert_eq!(r.run(&mut b, now), Verdict::Forward { egress: 0 });
    assert_eq!(&b[VNET_HDR_LEN..VNET_HDR_LEN + 6], &NEAR_MAC);

    // Synced for another port of the real than the service now uses: not adopted.
    r.fwd.ha.synced.learn(
        &SyncRecord {
            real_port: 9090,
            ..synced(FAR, 40002)
        },
        0,
    );
    let mut b = with_vnet(tcp(FROM_ROUTER, FAR, 40002, VIP, 80, tcp::ACK), 0);
    assert_eq!(r.run(&mut b, now), Verdict::Drop(DropReason::TcpNoFlow));
}
