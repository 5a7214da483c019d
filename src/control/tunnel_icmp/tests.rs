//! Fragmentation-needed from a router on the tunnel path, as the director receives it.

use super::*;
use crate::model::{
    ForwardMethod, Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec, ServiceTable,
    Tunnel, TunnelCsum,
};
use crate::snapshot::{NextHop, PlaceError, Placement, TunnelEnd};

const SOURCE: [u8; 4] = [203, 0, 113, 10];
const REAL: [u8; 4] = [10, 0, 0, 2];
const VIP: [u8; 4] = [203, 0, 113, 2];
const CLIENT: [u8; 4] = [198, 51, 100, 10];

struct Routed;
impl Placement for Routed {
    fn next_hop(&mut self, _: Ipv4Addr, _: ForwardMethod) -> Result<NextHop, PlaceError> {
        Ok(NextHop {
            egress: 0,
            neigh: 1,
        })
    }
    fn tunnel_end(&mut self, _: Ipv4Addr, _: NextHop) -> Result<TunnelEnd, PlaceError> {
        Ok(TunnelEnd {
            source: u32::from_be_bytes(SOURCE),
            mtu: 1500,
        })
    }
}

fn snapshot(t: Tunnel) -> Snapshot {
    let mut table = ServiceTable::new();
    let key = ServiceKey::addr(Protocol::Tcp, Ipv4Addr::from(VIP), 80);
    table
        .add_service(ServiceSpec::new(key, SchedulerKind::Rr))
        .unwrap();
    let spec = RealSpec {
        forward: ForwardMethod::Tunnel(t),
        ..RealSpec::route(Ipv4Addr::from(REAL), 80)
    };
    table.add_real(&key, spec).unwrap();
    Snapshot::build(&table, 1, &mut Routed).unwrap()
}

fn header(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize, df: bool) -> Vec<u8> {
    let mut h = vec![
        0x45,
        0,
        0,
        0,
        0,
        7,
        if df { 0x40 } else { 0 },
        0,
        61,
        proto,
        0,
        0,
    ];
    h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = ipv4::checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// The router's message: fragmentation-needed (`mtu`) to the director, quoting the outer
/// header, `encap` and the client's TCP packet (header + 20 bytes of TCP).
fn router_message(outer_proto: u8, encap: &[u8], mtu: u16, inner_df: bool) -> Vec<u8> {
    let mut inner = header(CLIENT, VIP, 6, 1480, inner_df);
    inner.extend_from_slice(&[
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 1, 0, 0, 0, 0, 0,
    ]);
    let mut quoted = header(SOURCE, REAL, outer_proto, 1500, true);
    quoted.extend_from_slice(encap);
    quoted.extend_from_slice(&inner);
    let mut m = vec![3, 4, 0, 0, 0, 0, 0, 0];
    m[6..8].copy_from_slice(&mtu.to_be_bytes());
    m.extend_from_slice(&quoted);
    let c = csum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let mut p = header([10, 0, 0, 1], SOURCE, 1, 20 + m.len(), false);
    p.extend_from_slice(&m);
    p
}

#[test]
fn frag_needed_on_the_tunnel_path_reaches_the_client_with_the_inner_mtu() {
    let cases: [(Tunnel, u8, Vec<u8>, u16); 3] = [
        (Tunnel::IPIP, 4, vec![], 1380),
        (
            Tunnel {
                kind: TunnelKind::Gue,
                port: 6080,
                csum: TunnelCsum::NoCsum,
            },
            17,
            vec![0x9c, 0x41, 0x17, 0xc0, 0, 0, 0, 0, 0, 4, 0, 0],
            1368,
        ),
        (
            Tunnel {
                kind: TunnelKind::Gre,
                port: 0,
                csum: TunnelCsum::Csum,
            },
            47,
            vec![0x80, 0, 8, 0, 0, 0, 0, 0],
            1372,
        ),
    ];
    for (t, proto, encap, want) in cases {
        let snap = snapshot(t);
        let got = translate(&snap, &router_message(proto, &encap, 1400, true))
            .unwrap_or_else(|| panic!("{t:?}: not translated"));
        assert_eq!(got.client, Ipv4Addr::from(CLIENT));
        let m = &got.message;
        assert_eq!((m[0], m[1]), (3, 4));
        assert_eq!(be16(m, 6), want, "{t:?}");
        assert_eq!(csum::checksum(m), 0);
        assert_eq!(
            ipv4::src(&m[8..]),
            u32::from_be_bytes(CLIENT),
            "quotes the client's packet"
        );
        assert_eq!(m.len(), 8 + 20 + 8);
    }
}

#[test]
fn only_errors_about_our_tunnels_with_df_are_translated() {
    let snap = snapshot(Tunnel::IPIP);
    // Without DF in the client's packet: IPVS sends nothing back.
    assert_eq!(translate(&snap, &router_message(4, &[], 1400, false)), None);
    // About GRE, when the real is an IPIP one.
    assert_eq!(
        translate(&snap, &router_message(47, &[0, 0, 8, 0], 1400, true)),
        None
    );
    // A damaged message.
    let mut m = router_message(4, &[], 1400, true);
    m[30] ^= 1;
    assert_eq!(translate(&snap, &m), None);
    // An MTU that leaves nothing usable.
    assert_eq!(translate(&snap, &router_message(4, &[], 80, true)), None);
    // Nothing, or less than an IP header.
    assert_eq!(translate(&snap, &[]), None);
    assert_eq!(translate(&snap, &[0x45, 0, 0]), None);
    // Too little quoted to name the flow.
    let mut short = router_message(4, &[], 1400, true);
    short.truncate(20 + 8 + 20 + 20 + 4);
    assert_eq!(translate(&snap, &short), None);
}
