//! Packet-in / packet-out fixtures for the per-frame decision (Katran's fixture tables):
//! a description, an input frame, and the expected verdict and output.

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;

use super::*;
use crate::conns::ConnCounts;
use crate::io::VNET_F_DATA_VALID;
use crate::model::{Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec, ServiceTable};
use crate::snapshot::tests::AllOnLink;

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const DIR_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const RS1_MAC: [u8; 6] = [2, 0, 0, 0, 11, 1];
const RS2_MAC: [u8; 6] = [2, 0, 0, 0, 12, 1];
const VIP: [u8; 4] = [10, 0, 0, 100];
const CLIENT: [u8; 4] = [172, 30, 0, 10];

struct Rig {
    fwd: Forwarder,
    snap: Snapshot,
    neigh: NeighTable,
    counters: WorkerCounters,
}

fn rig() -> Rig {
    let mut t = ServiceTable::new();
    for (proto, port) in [(Protocol::Tcp, 80u16), (Protocol::Udp, 53)] {
        let key = ServiceKey {
            proto,
            vip: Ipv4Addr::from(VIP),
            port,
            fwmark: 0,
        };
        t.add_service(ServiceSpec::new(key, SchedulerKind::Rr))
            .unwrap();
        t.add_real(&key, RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), port))
            .unwrap();
        t.add_real(&key, RealSpec::route(Ipv4Addr::new(10, 0, 0, 12), port))
            .unwrap();
    }
    let snap = Snapshot::build(&t, 1, &mut AllOnLink).unwrap();
    let neigh = NeighTable::new(256);
    neigh.set(11, Some(MacAddr(RS1_MAC)));
    neigh.set(12, Some(MacAddr(RS2_MAC)));
    Rig {
        fwd: Forwarder::new(
            1024,
            false,
            vec![MacAddr(DIR_MAC)],
            Arc::new(ConnCounts::new()),
        )
        .unwrap(),
        snap,
        neigh,
        counters: WorkerCounters::new(),
    }
}

fn with_vnet(frame: Vec<u8>) -> Vec<u8> {
    let mut b = vec![0u8; VNET_HDR_LEN];
    b[0] = VNET_F_DATA_VALID;
    b.extend(frame);
    b
}

fn tcp(sport: u16, dport: u16, syn: bool, ack: bool, fin: bool, rst: bool) -> Vec<u8> {
    let mut t = PacketBuilder::ethernet2(CLIENT_MAC, DIR_MAC)
        .ipv4(CLIENT, VIP, 64)
        .tcp(sport, dport, 1000, 65535);
    if syn {
        t = t.syn();
    }
    if ack {
        t = t.ack(1);
    }
    if fin {
        t = t.fin();
    }
    if rst {
        t = t.rst();
    }
    let payload = b"GET / HTTP/1.0\r\n\r\n";
    let mut out = Vec::new();
    t.write(&mut out, payload).unwrap();
    with_vnet(out)
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, DIR_MAC)
        .ipv4(CLIENT, VIP, 64)
        .udp(sport, dport)
        .write(&mut out, b"query")
        .unwrap();
    with_vnet(out)
}

impl Rig {
    fn feed(&mut self, buf: &mut [u8], wire_len: usize, status: u32) -> Verdict {
        self.fwd.process(
            &self.snap,
            &self.neigh,
            &self.counters,
            RxFrame {
                buf,
                wire_len,
                status,
                scratch: false,
            },
            0,
        )
    }

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

#[test]
fn a_syn_is_scheduled_and_only_the_macs_ttl_and_ip_checksum_change() {
    let mut r = rig();
    let input = tcp(40000, 80, true, false, false, false);
    let mut buf = input.clone();
    assert_eq!(r.run(&mut buf, 0), Verdict::Forward { egress: 0 });
    let (ivn, ifr) = input.split_at(VNET_HDR_LEN);
    let (ovn, ofr) = buf.split_at(VNET_HDR_LEN);
    assert_eq!(&ofr[0..6], &RS1_MAC, "dst MAC := real server");
    assert_eq!(&ofr[6..12], &DIR_MAC, "src MAC := egress interface");
    assert_eq!(ovn[0] & VNET_F_DATA_VALID, 0);
    assert_eq!(&ivn[1..], &ovn[1..]);
    // IP addresses, ports and payload are untouched; TTL is one less, checksum valid.
    let ip_in = &ifr[14..];
    let ip_out = &ofr[14..];
    assert_eq!(ip_out[8], ip_in[8] - 1);
    assert_eq!(ipv4::checksum(&ip_out[..20]), 0);
    assert_eq!(&ip_out[12..20], &ip_in[12..20]);
    assert_eq!(&ip_out[20..], &ip_in[20..]);
    assert_eq!(ofr.len(), ifr.len());
}

#[test]
fn rr_alternates_new_flows_and_a_flow_stays_on_its_real() {
    let mut r = rig();
    let mut first_macs = Vec::new();
    for sport in 40000..40004u16 {
        let mut b = tcp(sport, 80, true, false, false, false);
        assert!(matches!(r.run(&mut b, 0), Verdict::Forward { .. }));
        first_macs.push(b[VNET_HDR_LEN..VNET_HDR_LEN + 6].to_vec());
    }
    assert_eq!(
        first_macs,
        [RS1_MAC, RS2_MAC, RS1_MAC, RS2_MAC].map(|m| m.to_vec())
    );
    for _ in 0..5 {
        let mut b = tcp(40001, 80, false, true, false, false);
        r.run(&mut b, 10);
        assert_eq!(&b[VNET_HDR_LEN..VNET_HDR_LEN + 6], &RS2_MAC);
    }
}

#[test]
fn tcp_without_syn_and_no_flow_is_dropped_unless_sloppy() {
    let mut r = rig();
    let mut b = tcp(40000, 80, false, true, false, false);
    assert_eq!(r.run(&mut b, 0), Verdict::Drop(DropReason::TcpNoFlow));
    let mut b = tcp(40000, 80, true, false, false, true);
    assert_eq!(
        r.run(&mut b, 0),
        Verdict::Drop(DropReason::TcpNoFlow),
        "SYN+RST creates nothing"
    );
    assert_eq!(r.counters.drop_count(DropReason::TcpNoFlow), 2);
    r.fwd.sloppy_tcp = true;
    let mut b = tcp(40000, 80, false, true, false, false);
    assert!(matches!(r.run(&mut b, 0), Verdict::Forward { .. }));
}

#[test]
fn flows_expire_by_tcp_state() {
    let mut r = rig();
    let mut b = tcp(40000, 80, true, false, false, false);
    r.run(&mut b, 0);
    // SYN_RECV lives 60 s: an ACK after 61 s finds no flow.
    let mut b = tcp(40000, 80, false, true, false, false);
    assert_eq!(r.run(&mut b, 61_000), Verdict::Drop(DropReason::TcpNoFlow));
    let mut b = tcp(40001, 80, true, false, false, false);
    r.run(&mut b, 0);
    let mut b = tcp(40001, 80, false, true, false, false);
    r.run(&mut b, 1000);
    // ESTABLISHED lives 900 s from its last packet.
    let mut b = tcp(40001, 80, false, true, false, false);
    assert!(matches!(r.run(&mut b, 800_000), Verdict::Forward { .. }));
}

#[test]
fn udp_is_forwarded_and_sticks_to_its_real() {
    let mut r = rig();
    let mut a = udp(5000, 53);
    assert!(matches!(r.run(&mut a, 0), Verdict::Forward { .. }));
    let mac = a[VNET_HDR_LEN..VNET_HDR_LEN + 6].to_vec();
    for _ in 0..3 {
        let mut b = udp(5000, 53);
        r.run(&mut b, 5);
        assert_eq!(b[VNET_HDR_LEN..VNET_HDR_LEN + 6], mac[..]);
    }
}

#[test]
fn weight_zero_reals_get_no_new_flows_but_keep_their_flows() {
    let mut r = rig();
    let mut b = tcp(40000, 80, true, false, false, false);
    r.run(&mut b, 0); // -> rs1
    // Quiesce rs1 in a new snapshot.
    let mut t = ServiceTable::new();
    let key = ServiceKey {
        proto: Protocol::Tcp,
        vip: Ipv4Addr::from(VIP),
        port: 80,
        fwmark: 0,
    };
    t.add_service(ServiceSpec::new(key, SchedulerKind::Rr))
        .unwrap();
    let mut rs1 = RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), 80);
    rs1.weight = 0;
    t.add_real(&key, rs1).unwrap();
    t.add_real(&key, RealSpec::route(Ipv4Addr::new(10, 0, 0, 12), 80))
        .unwrap();
    r.snap = Snapshot::build(&t, 2, &mut AllOnLink).unwrap();
    let mut b = tcp(40000, 80, false, true, false, false);
    assert!(matches!(r.run(&mut b, 1), Verdict::Forward { .. }));
    assert_eq!(
        &b[VNET_HDR_LEN..VNET_HDR_LEN + 6],
        &RS1_MAC,
        "existing flow stays"
    );
    for sport in 41000..41004 {
        let mut b = tcp(sport, 80, true, false, false, false);
        r.run(&mut b, 1);
        assert_eq!(
            &b[VNET_HDR_LEN..VNET_HDR_LEN + 6],
            &RS2_MAC,
            "new flows avoid weight 0"
        );
    }
}

#[test]
fn a_real_without_a_mac_drops_as_no_neighbor() {
    let mut r = rig();
    r.neigh.set(11, None);
    let mut b = tcp(40000, 80, true, false, false, false);
    assert_eq!(r.run(&mut b, 0), Verdict::Drop(DropReason::NoNeighbor));
}

/// Every malformed shape lands under its own named reason and nothing panics.
#[test]
fn malformed_frames_are_counted_by_reason() {
    let good = tcp(40000, 80, true, false, false, false);
    let e = VNET_HDR_LEN;
    let ip = e + 14;
    let l4 = ip + 20;
    let mut cases: Vec<(&str, Vec<u8>, DropReason)> = Vec::new();
    let mut m = |name: &'static str, f: &dyn Fn(&mut Vec<u8>), reason| {
        let mut b = good.clone();
        f(&mut b);
        cases.push((name, b, reason));
    };
    let fix_csum = |b: &mut Vec<u8>| {
        b[ip + 10] = 0;
        b[ip + 11] = 0;
        let ihl = usize::from(b[ip] & 15) * 4;
        let end = (ip + ihl).min(b.len());
        let c = ipv4::checksum(&b[ip..end]);
        b[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    };
    m(
        "no ethertype",
        &|b| b.truncate(e + 10),
        DropReason::Truncated,
    );
    m(
        "arp-less odd ethertype",
        &|b| b[e + 12..e + 14].copy_from_slice(&[0x88, 0xb5]),
        DropReason::NotIpv4,
    );
    m(
        "ipv6 ethertype",
        &|b| b[e + 12..e + 14].copy_from_slice(&[0x86, 0xdd]),
        DropReason::NotIpv4,
    );
    m(
        "truncated ip",
        &|b| b.truncate(ip + 10),
        DropReason::Truncated,
    );
    m(
        "ihl 4",
        &|b| {
            b[ip] = 0x44;
        },
        DropReason::BadIpHeader,
    );
    m(
        "version 6",
        &|b| {
            b[ip] = 0x65;
        },
        DropReason::BadIpHeader,
    );
    m(
        "ihl beyond frame",
        &|b| {
            b[ip] = 0x4f;
            b.truncate(ip + 40);
        },
        DropReason::Truncated,
    );
    m(
        "total length beyond frame",
        &|b| {
            b[ip + 2] = 0x05;
            b[ip + 3] = 0xdc;
            fix_csum(b);
        },
        DropReason::BadIpLength,
    );
    m(
        "total length below header",
        &|b| {
            b[ip + 2] = 0;
            b[ip + 3] = 10;
            fix_csum(b);
        },
        DropReason::BadIpLength,
    );
    m(
        "bad checksum",
        &|b| {
            b[ip + 10] ^= 0xff;
        },
        DropReason::BadIpChecksum,
    );
    m(
        "fragment MF",
        &|b| {
            b[ip + 6] |= 0x20;
            fix_csum(b);
        },
        DropReason::Fragment,
    );
    m(
        "fragment offset",
        &|b| {
            b[ip + 6] = 0;
            b[ip + 7] = 8;
            fix_csum(b);
        },
        DropReason::Fragment,
    );
    m(
        "multicast source ip",
        &|b| {
            b[ip + 12] = 224;
            fix_csum(b);
        },
        DropReason::BadSource,
    );
    m(
        "broadcast source mac",
        &|b| b[e + 6..e + 12].copy_from_slice(&[0xff; 6]),
        DropReason::BadSource,
    );
    m(
        "tcp doff 4",
        &|b| {
            b[l4 + 12] = 0x40;
        },
        DropReason::BadL4Header,
    );
    m(
        "tcp doff beyond",
        &|b| {
            b[l4 + 12] = 0xf0;
        },
        DropReason::BadL4Header,
    );
    m(
        "tcp truncated",
        &|b| {
            let t = ip + 30;
            b[ip + 2] = 0;
            b[ip + 3] = 30;
            fix_csum(b);
            b.truncate(t);
        },
        DropReason::BadL4Header,
    );
    m(
        "zero sport",
        &|b| {
            b[l4] = 0;
            b[l4 + 1] = 0;
        },
        DropReason::ZeroPort,
    );
    m(
        "zero dport",
        &|b| {
            b[l4 + 2] = 0;
            b[l4 + 3] = 0;
        },
        DropReason::ZeroPort,
    );
    m(
        "icmp",
        &|b| {
            b[ip + 9] = 1;
            fix_csum(b);
        },
        DropReason::NotAService,
    );
    m(
        "other port",
        &|b| {
            b[l4 + 3] = 81;
        },
        DropReason::NotAService,
    );
    m(
        "ttl 1",
        &|b| {
            b[ip + 8] = 1;
            fix_csum(b);
        },
        DropReason::TtlExceeded,
    );
    let mut r = rig();
    for (name, mut b, reason) in cases {
        let wire = b.len().saturating_sub(VNET_HDR_LEN);
        assert_eq!(r.feed(&mut b, wire, 0), Verdict::Drop(reason), "{name}");
    }
    let mut b = good.clone();
    assert_eq!(
        r.feed(&mut b, 2000, 0),
        Verdict::Drop(DropReason::RingTruncated)
    );
    let mut b = good.clone();
    assert_eq!(
        r.feed(&mut b, 60, STATUS_VLAN_VALID),
        Verdict::Drop(DropReason::VlanTagged)
    );
    // 802.1Q and 802.1ad tags left in the bytes count as VLAN-tagged too, not as odd ethertypes.
    for tpid in [0x8100u16, 0x88a8] {
        let mut b = good[..VNET_HDR_LEN + 12].to_vec();
        b.extend_from_slice(&tpid.to_be_bytes());
        b.extend_from_slice(&[0, 10]);
        b.extend_from_slice(&good[VNET_HDR_LEN + 12..]);
        let wire = b.len() - VNET_HDR_LEN;
        assert_eq!(
            r.feed(&mut b, wire, 0),
            Verdict::Drop(DropReason::VlanTagged),
            "tpid {tpid:#x}"
        );
    }
}

proptest::proptest! {
    #[test]
    fn random_frames_never_panic_and_are_always_accounted(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let mut r = rig();
        let mut b = bytes;
        let wire = b.len().saturating_sub(VNET_HDR_LEN);
        let before: u64 = DropReason::ALL.iter().map(|d| r.counters.drop_count(*d)).sum();
        let v = r.feed(&mut b, wire, 0);
        let after: u64 = DropReason::ALL.iter().map(|d| r.counters.drop_count(*d)).sum();
        match v {
            Verdict::Drop(_) => proptest::prop_assert_eq!(after, before + 1),
            Verdict::Forward { .. } | Verdict::Compose { .. } => {
                proptest::prop_assert_eq!(after, before)
            }
        }
    }
}

#[test]
fn connection_counts_follow_the_ipvs_lifecycle() {
    let mut r = rig();
    let rs1 = r
        .snap
        .service(6, u32::from(Ipv4Addr::from(VIP)), 80)
        .unwrap()
        .reals[0]
        .id;
    let counts = |r: &Rig| (r.fwd.conns.active(rs1), r.fwd.conns.inactive(rs1));
    let mut b = tcp(40000, 80, true, false, false, false);
    r.run(&mut b, 0);
    assert_eq!(counts(&r), (1, 0), "SYN_RECV is active");
    let mut b = tcp(40000, 80, false, true, false, false);
    r.run(&mut b, 1);
    assert_eq!(counts(&r), (1, 0), "ESTABLISHED is active");
    let mut b = tcp(40000, 80, false, true, true, false);
    r.run(&mut b, 2);
    assert_eq!(counts(&r), (0, 1), "FIN_WAIT is inactive");
    // FIN_WAIT lives 120 s; reaping after that leaves nothing counted.
    let snap = std::mem::replace(&mut r.snap, Snapshot::empty());
    r.fwd.expire_some(&snap, 200_000, 1 << 12);
    assert_eq!(counts(&r), (0, 0));
    // UDP is always inactive.
    let rs1_udp = snap
        .service(17, u32::from(Ipv4Addr::from(VIP)), 53)
        .unwrap()
        .reals[0]
        .id;
    r.snap = snap;
    let mut b = udp(5000, 53);
    r.run(&mut b, 0);
    assert_eq!(
        (r.fwd.conns.active(rs1_udp), r.fwd.conns.inactive(rs1_udp)),
        (0, 1)
    );
}

/// The rig's two services rebuilt with `-p persist` on both, `-o` on the UDP one, and rs1 at
/// weight `w1` (same real ids as `rig()`, so flows and templates carry over).
fn snapshot_with(persist: Option<u32>, ops: bool, w1: u32) -> Snapshot {
    let mut t = ServiceTable::new();
    for (proto, port) in [(Protocol::Tcp, 80u16), (Protocol::Udp, 53)] {
        let key = ServiceKey {
            proto,
            vip: Ipv4Addr::from(VIP),
            port,
            fwmark: 0,
        };
        let mut spec = ServiceSpec::new(key, SchedulerKind::Rr);
        spec.persistence_timeout = persist;
        spec.ops = ops && proto == Protocol::Udp;
        t.add_service(spec).unwrap();
        let mut rs1 = RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), port);
        rs1.weight = w1;
        t.add_real(&key, rs1).unwrap();
        t.add_real(&key, RealSpec::route(Ipv4Addr::new(10, 0, 0, 12), port))
            .unwrap();
    }
    Snapshot::build(&t, 2, &mut AllOnLink).unwrap()
}

fn dst_mac(b: &[u8]) -> [u8; 6] {
    b[VNET_HDR_LEN..VNET_HDR_LEN + 6].try_into().unwrap()
}

fn rid(n: u32) -> crate::model::RealId {
    crate::model::RealId(std::num::NonZeroU32::new(n).unwrap())
}

#[test]
fn persistence_keeps_a_client_on_one_real_under_rr() {
    let mut r = rig();
    r.snap = snapshot_with(Some(60), false, 1);
    for sport in 40000..40010u16 {
        let mut b = tcp(sport, 80, true, false, false, false);
        assert!(matches!(r.run(&mut b, 0), Verdict::Forward { .. }));
        assert_eq!(dst_mac(&b), RS1_MAC, "sport {sport}");
    }
    assert_eq!(r.fwd.conns.persistent(rid(1)), 1);
    assert_eq!(r.fwd.conns.active(rid(1)), 10);
    let live = r.fwd.templates.live(0);
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].n_control, 10);
    assert_eq!(live[0].key.snet, u32::from(Ipv4Addr::from(CLIENT)));
    assert_eq!(live[0].key.vport, 80);
    // The SYN_RECV children expire at 60 s; the template (timer at 60 s) goes with them.
    let snap = std::mem::replace(&mut r.snap, Snapshot::empty());
    r.fwd.expire_some(&snap, 61_000, 1 << 12);
    assert_eq!(r.fwd.conns.active(rid(1)), 0);
    // Its timer had fired with children: it ticks on to the next 60 s mark, 120 s.
    assert_eq!(r.fwd.templates.live(61_000)[0].n_control, 0);
    r.fwd.expire_some(&snap, 120_000, 1 << 12);
    assert!(r.fwd.templates.live(120_000).is_empty());
    assert_eq!(r.fwd.conns.persistent(rid(1)), 0);
    // A new connection after that is scheduled afresh (rr's cursor moved on: rs2).
    r.snap = snap;
    let mut b = tcp(41000, 80, true, false, false, false);
    r.run(&mut b, 120_000);
    assert_eq!(dst_mac(&b), RS2_MAC);
}

#[test]
fn persistence_sticks_to_a_quiesced_real_unless_expire_quiescent_template() {
    for eqt in [false, true] {
        let mut r = rig();
        r.fwd.expire_quiescent_template = eqt;
        r.snap = snapshot_with(Some(300), false, 1);
        let mut b = tcp(40000, 80, true, false, false, false);
        r.run(&mut b, 0);
        assert_eq!(dst_mac(&b), RS1_MAC);
        r.snap = snapshot_with(Some(300), false, 0);
        // The established connection stays on rs1 either way.
        let mut b = tcp(40000, 80, false, true, false, false);
        r.run(&mut b, 1);
        assert_eq!(dst_mac(&b), RS1_MAC);
        let mut b = tcp(40001, 80, true, false, false, false);
        r.run(&mut b, 2);
        let want = if eqt { RS2_MAC } else { RS1_MAC };
        assert_eq!(dst_mac(&b), want, "expire_quiescent_template = {eqt}");
    }
}

#[test]
fn ops_schedules_every_datagram_and_keeps_no_entry() {
    let mut r = rig();
    r.snap = snapshot_with(None, true, 1);
    let mut macs = Vec::new();
    for _ in 0..4 {
        let mut b = udp(5000, 53);
        assert!(matches!(r.run(&mut b, 0), Verdict::Forward { .. }));
        macs.push(dst_mac(&b));
    }
    assert_eq!(macs, [RS1_MAC, RS2_MAC, RS1_MAC, RS2_MAC]);
    assert_eq!(r.fwd.flows.len(), 0);
    let udp1 = rid(3);
    assert_eq!(
        (r.fwd.conns.active(udp1), r.fwd.conns.inactive(udp1)),
        (0, 0)
    );
    let conns = |id| {
        r.counters
            .real(id)
            .unwrap()
            .conns
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(
        (conns(rid(3)), conns(rid(4))),
        (2, 2),
        "a connection per datagram"
    );
}

#[test]
fn ops_with_persistence_keeps_the_template_without_children() {
    let mut r = rig();
    r.snap = snapshot_with(Some(60), true, 1);
    for i in 0..4 {
        let mut b = udp(5000 + i, 53);
        r.run(&mut b, 0);
        assert_eq!(dst_mac(&b), RS1_MAC);
    }
    assert_eq!(r.fwd.flows.len(), 0);
    let live = r.fwd.templates.live(0);
    assert_eq!((live.len(), live[0].n_control), (1, 0));
    assert_eq!(r.fwd.conns.persistent(rid(3)), 1);
}

/// A persistent fwmark service over TCP 80 and 443 and UDP 53 (`-f 1 -p 60`, mark rules).
fn fwmark_snapshot(ops: bool) -> Snapshot {
    let mut t = ServiceTable::new();
    let key = ServiceKey::fwmark(1);
    let mut spec = ServiceSpec::new(key, SchedulerKind::Rr);
    spec.persistence_timeout = Some(60);
    spec.ops = ops;
    t.add_service(spec).unwrap();
    t.add_real(&key, RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), 0))
        .unwrap();
    t.add_real(&key, RealSpec::route(Ipv4Addr::new(10, 0, 0, 12), 0))
        .unwrap();
    for (proto, ports) in [(Protocol::Tcp, vec![80, 443]), (Protocol::Udp, vec![53])] {
        t.add_mark_rule(crate::model::MarkRule {
            proto,
            vip: Ipv4Addr::from(VIP),
            ports,
            mark: 1,
        })
        .unwrap();
    }
    Snapshot::build(&t, 2, &mut AllOnLink).unwrap()
}

#[test]
fn a_persistent_fwmark_service_keeps_a_client_on_one_real_across_its_ports() {
    let mut r = rig();
    r.snap = fwmark_snapshot(false);
    for (i, port) in [80u16, 443, 80, 443].into_iter().enumerate() {
        let mut b = tcp(40000 + i as u16, port, true, false, false, false);
        assert!(matches!(r.run(&mut b, 0), Verdict::Forward { .. }));
        assert_eq!(dst_mac(&b), RS1_MAC, "port {port}");
    }
    let mut b = udp(5000, 53);
    assert!(matches!(r.run(&mut b, 0), Verdict::Forward { .. }));
    assert_eq!(dst_mac(&b), RS1_MAC, "UDP shares the template");
    // One template, keyed as IPVS keys a fwmark service's: <IPPROTO_IP, snet, mark, 0>.
    let live = r.fwd.templates.live(0);
    assert_eq!(live.len(), 1);
    assert_eq!(
        (live[0].key.proto, live[0].key.vip, live[0].key.vport),
        (0, 1, 0)
    );
    assert_eq!(live[0].n_control, 5);
    // Ports without a mark rule are not a service.
    let mut b = tcp(41000, 22, true, false, false, false);
    assert!(matches!(
        r.run(&mut b, 0),
        Verdict::Drop(DropReason::NotAService)
    ));
}

#[test]
fn ops_on_a_fwmark_service_applies_to_its_udp_packets_only() {
    let mut r = rig();
    r.snap = fwmark_snapshot(true);
    let mut b = tcp(40000, 80, true, false, false, false);
    assert!(matches!(r.run(&mut b, 0), Verdict::Forward { .. }));
    let counted = |r: &Rig| {
        [rid(1), rid(2)]
            .map(|id| r.fwd.conns.active(id) + r.fwd.conns.inactive(id))
            .iter()
            .sum::<u32>()
    };
    assert_eq!(counted(&r), 1, "the TCP flow is kept");
    // Its ACK is forwarded (had OPS applied to TCP, it would be dropped as TcpNoFlow).
    let mut b = tcp(40000, 80, false, true, false, false);
    assert!(matches!(r.run(&mut b, 0), Verdict::Forward { .. }));
    let mut b = udp(5000, 53);
    assert!(matches!(r.run(&mut b, 0), Verdict::Forward { .. }));
    assert_eq!(counted(&r), 1, "UDP under OPS keeps no entry");
}
