//! Shared rigs for the fuzz targets: a small snapshot, an ARP engine, and seed frames.

use std::net::Ipv4Addr;
use std::sync::Arc;

use etherparse::PacketBuilder;
use uvs::conns::ConnCounts;
use uvs::datapath::counters::WorkerCounters;
use uvs::datapath::process::Forwarder;
use uvs::model::ForwardMethod;
use uvs::model::{Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec, ServiceTable};
use uvs::neigh::cache::NeighTable;
use uvs::snapshot::{NextHop, PlaceError, Placement, Snapshot};
use uvs::wire::MacAddr;

pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const DIR_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
pub const VIP: [u8; 4] = [10, 0, 0, 100];
pub const DIP: [u8; 4] = [10, 0, 0, 2];
pub const CLIENT: [u8; 4] = [172, 30, 0, 10];
pub const RS: [[u8; 4]; 2] = [[10, 0, 0, 11], [10, 0, 0, 12]];
pub const RS_MAC: [[u8; 6]; 2] = [[2, 0, 0, 0, 11, 1], [2, 0, 0, 0, 12, 1]];

struct OnLink;
impl Placement for OnLink {
    fn next_hop(&mut self, addr: Ipv4Addr, _: ForwardMethod) -> Result<NextHop, PlaceError> {
        Ok(NextHop {
            egress: 0,
            neigh: u32::from(addr) & 0xff,
        })
    }
}

/// Per-frame rig: TCP VIP:80 and UDP VIP:53 over two reals, with `sched`.
pub struct FrameRig {
    pub fwd: Forwarder,
    pub snap: Snapshot,
    pub neigh: NeighTable,
    pub counters: WorkerCounters,
}

pub fn frame_rig(sched: SchedulerKind, sloppy: bool) -> FrameRig {
    let mut t = ServiceTable::new();
    for (proto, port) in [(Protocol::Tcp, 80u16), (Protocol::Udp, 53)] {
        let key = ServiceKey::addr(proto, Ipv4Addr::from(VIP), port);
        t.add_service(ServiceSpec::new(key, sched)).unwrap();
        for rs in RS {
            t.add_real(&key, RealSpec::route(Ipv4Addr::from(rs), port))
                .unwrap();
        }
    }
    let snap = Snapshot::build(&t, 1, &mut OnLink).unwrap();
    let neigh = NeighTable::new(256);
    neigh.set(11, Some(MacAddr(RS_MAC[0])));
    // RS2's MAC is left unresolved, so `no_neighbor` is reachable too.
    FrameRig {
        // The smallest table: evictions happen within a few hundred frames.
        fwd: Forwarder::new(
            64,
            sloppy,
            vec![MacAddr(DIR_MAC)],
            Arc::new(ConnCounts::new()),
        )
        .expect("flow table"),
        snap,
        neigh,
        counters: WorkerCounters::new(),
    }
}

macro_rules! build {
    ($b:expr, $payload:expr $(,)?) => {{
        let mut v = Vec::new();
        $b.write(&mut v, $payload).unwrap();
        v
    }};
}

/// Valid frames of the kinds the director sees: TCP SYN/ACK/FIN/RST to the VIP, UDP to the VIP,
/// traffic to other ports and addresses, ARP requests and replies.
pub fn seed_frames() -> Vec<(&'static str, Vec<u8>)> {
    let eth = || PacketBuilder::ethernet2(CLIENT_MAC, DIR_MAC);
    let mut out = vec![
        (
            "tcp-syn",
            build!(
                eth().ipv4(CLIENT, VIP, 64).tcp(40000, 80, 1, 64240).syn(),
                &[]
            ),
        ),
        (
            "tcp-ack-data",
            build!(
                eth().ipv4(CLIENT, VIP, 64).tcp(40000, 80, 2, 64240).ack(1),
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
        ),
        (
            "tcp-fin",
            build!(
                eth()
                    .ipv4(CLIENT, VIP, 64)
                    .tcp(40000, 80, 3, 64240)
                    .fin()
                    .ack(1),
                &[],
            ),
        ),
        (
            "tcp-rst",
            build!(eth().ipv4(CLIENT, VIP, 64).tcp(40000, 80, 3, 0).rst(), &[]),
        ),
        (
            "tcp-other-port",
            build!(
                eth().ipv4(CLIENT, VIP, 64).tcp(40000, 22, 1, 64240).syn(),
                &[]
            ),
        ),
        (
            "udp-dns",
            build!(eth().ipv4(CLIENT, VIP, 64).udp(5353, 53), &[0u8; 32]),
        ),
        (
            "udp-ttl1",
            build!(eth().ipv4(CLIENT, VIP, 1).udp(5353, 53), &[0u8; 8]),
        ),
        (
            "icmp",
            build!(
                eth().ipv4(CLIENT, VIP, 64).icmpv4_echo_request(1, 1),
                &[0u8; 16],
            ),
        ),
    ];
    // IPv4 with options (IHL 6) to the VIP.
    {
        let mut f = out[0].1.clone();
        let ip = 14;
        let mut opt = f[..ip + 20].to_vec();
        opt.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
        opt.extend_from_slice(&f[ip + 20..]);
        f = opt;
        f[ip] = 0x46;
        let tot = (f.len() - ip) as u16;
        f[ip + 2..ip + 4].copy_from_slice(&tot.to_be_bytes());
        f[ip + 10] = 0;
        f[ip + 11] = 0;
        let c = uvs::wire::ipv4::checksum(&f[ip..ip + 24]);
        f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        out.push(("tcp-syn-ip-options", f));
    }
    // 802.1Q-tagged SYN.
    {
        let mut f = out[0].1.clone();
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
        tagged.extend_from_slice(&f[12..]);
        f = tagged;
        out.push(("vlan-syn", f));
    }
    out.push((
        "arp-request-vip",
        arp_frame(1, CLIENT_MAC, CLIENT, [0; 6], VIP, true),
    ));
    out.push((
        "arp-reply-rs",
        arp_frame(2, RS_MAC[0], RS[0], DIR_MAC, DIP, false),
    ));
    out.push((
        "arp-garp-vip",
        arp_frame(1, RS_MAC[1], VIP, [0xff; 6], VIP, true),
    ));
    out
}

/// An Ethernet/IPv4 ARP frame.
pub fn arp_frame(
    op: u16,
    smac: [u8; 6],
    sip: [u8; 4],
    tmac: [u8; 6],
    tip: [u8; 4],
    broadcast: bool,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(if broadcast { &[0xff; 6] } else { &DIR_MAC });
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&smac);
    f.extend_from_slice(&sip);
    f.extend_from_slice(&tmac);
    f.extend_from_slice(&tip);
    f
}
