//! ARP handling: any frame, on any interface index, at any time, against an engine that has
//! outstanding requests for its real servers. Checks: no panic; a reply is a well-formed
//! Ethernet/ARP frame from the interface's MAC; a real server's MAC is only ever learned from
//! a unicast-looking reply (never a group address), and never changes without a reply.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use uvs::config::ArpOptions;
use uvs::neigh::arp::{ArpEngine, ArpInterface, Neighbor};
use uvs::neigh::cache::NeighTable;
use uvs::wire::MacAddr;

fuzz_target!(|data: &[u8]| {
    let mut e = ArpEngine::new(
        vec![ArpInterface {
            name: "eth0".into(),
            mac: MacAddr(uvs_fuzz::DIR_MAC),
            source: Some(Ipv4Addr::from(uvs_fuzz::DIP)),
        }],
        ArpOptions::default(),
    );
    let table = NeighTable::new(64);
    e.set_vips(vec![Ipv4Addr::from(uvs_fuzz::VIP)], 0);
    e.set_neighbors(
        uvs_fuzz::RS
            .iter()
            .enumerate()
            .map(|(i, a)| Neighbor::new(i as u32 + 1, 0, Ipv4Addr::from(*a)))
            .collect(),
        &table,
    );
    let mut out = Vec::new();
    e.on_tick(0, &table, &mut out);
    let mut rest = data;
    let mut now = 0u32;
    while rest.len() >= 4 {
        let iface = usize::from(rest[0] % 3);
        now = now.wrapping_add(u32::from(rest[1]) * 50);
        let len = usize::from(u16::from_be_bytes([0, rest[2]])).min(rest.len() - 4);
        let _ = rest[3];
        let frame = &rest[4..4 + len];
        rest = &rest[4 + len..];
        let learned_before = e.counters.replies_learned;
        let before: Vec<_> = e.neighbors.iter().map(|n| n.mac).collect();
        if let Some(o) = e.on_frame(iface, frame, now, &table) {
            assert_eq!(o.interface, iface);
            assert_eq!(o.frame.len(), 42);
            assert_eq!(&o.frame[6..12], &uvs_fuzz::DIR_MAC);
            assert_eq!(&o.frame[12..14], &[0x08, 0x06]);
        }
        for (n, b) in e.neighbors.iter().zip(before) {
            if let Some(m) = n.mac {
                assert!(!m.is_group(), "learned a group MAC");
                assert_eq!(table.get(n.slot), Some(m));
            }
            if e.counters.replies_learned == learned_before {
                assert_eq!(n.mac, b, "a MAC changed without a learned reply");
            }
        }
        out.clear();
        e.on_tick(now, &table, &mut out);
    }
});
