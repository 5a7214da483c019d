//! The immutable, compiled view of the configuration that workers forward with.
//!
//! Invariants: workers load one snapshot per batch and hold it for the whole batch. Control
//! never mutates a published snapshot (scheduler cursors are atomics inside it, advanced by
//! workers, and belong to that snapshot alone). Everything a worker reads to forward one packet
//! is reachable from one `Arc<Snapshot>` plus the neighbour slots, which are per real address
//! and updated in place by control (one atomic word each).
//!
//! Publication is build aside → `ArcSwap::store` → the old snapshot is freed when the last
//! worker drops its guard (IPVS: "No more failures, attach state", then `call_rcu`).

use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::conns::Thresholds;
use crate::datapath::tcp_state::Timeouts;
use crate::model::{Protocol, RealId, ServiceKey, ServiceTable};
use crate::sched::Scheduler;

/// IPVS's `FTPPORT`: persistent FTP services share one template per client across ports.
const FTP_PORT: u16 = 21;

/// A real server as a worker sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealEntry {
    pub id: RealId,
    pub addr: u32,
    pub weight: u32,
    /// The last non-zero weight (`mh`'s table uses it; see `model::RealServer`).
    pub last_weight: u32,
    /// Index into the neighbour table (one slot per egress interface + address).
    pub neigh: u32,
    /// Index of the egress interface in the daemon's interface list.
    pub egress: u16,
    pub thresholds: Thresholds,
}

/// Persistence of a service (`-p`, `-M`), compiled for the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persistence {
    /// Template timeout (`svc->timeout`) in milliseconds.
    pub timeout_ms: u32,
    /// `-M`, host order: the client address is masked with it.
    pub netmask: u32,
    /// Virtual port in the template key: the service port, or 0 for FTP (port 21) and
    /// port-zero services, as `ip_vs_sched_persist` builds it.
    pub template_vport: u16,
}

#[derive(Debug)]
pub struct ServiceEntry {
    pub key: ServiceKey,
    pub scheduler: Scheduler,
    /// `None` = not persistent.
    pub persistence: Option<Persistence>,
    /// One-packet scheduling (`-o`; only ever set on UDP services).
    pub ops: bool,
    /// This service's reals in configuration order (IPVS's tie-break order).
    pub reals: Vec<RealEntry>,
}

/// Where a real server is reachable: egress interface index and neighbour slot.
pub trait Placement {
    fn place(&mut self, addr: Ipv4Addr) -> Option<(u16, u32)>;
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "real server {0} is not on-link on any served interface (direct routing needs the real server on the director's LAN)"
    )]
    NotOnLink(Ipv4Addr),
}

#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    /// Flow timeouts per TCP state and for UDP (`--set tcp tcpfin udp`).
    pub timeouts: Timeouts,
    services: Vec<ServiceEntry>,
    /// Open-addressing index: slot → service index + 1 (0 = empty).
    index: Vec<u32>,
    index_mask: usize,
    /// `real_by_id[id]` = (service index, position in its reals) + 1 packed, 0 = absent.
    real_by_id: Vec<(u32, u32)>,
}

fn service_hash(proto: u8, vip: u32, port: u16) -> u64 {
    let x = (u64::from(vip) << 24) | (u64::from(port) << 8) | u64::from(proto);
    let h = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 31)
}

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            generation: 0,
            timeouts: Timeouts::default(),
            services: Vec::new(),
            index: vec![0; 1],
            index_mask: 0,
            real_by_id: Vec::new(),
        }
    }

    /// Compiles a service table. Fails (and nothing is published) if a real server cannot be
    /// placed on an interface.
    pub fn build(
        table: &ServiceTable,
        generation: u64,
        placement: &mut dyn Placement,
    ) -> Result<Snapshot, SnapshotError> {
        let mut services = Vec::with_capacity(table.services().len());
        let mut max_id = 0usize;
        for svc in table.services() {
            let mut reals = Vec::with_capacity(svc.reals.len());
            for r in &svc.reals {
                let (egress, neigh) = placement
                    .place(r.addr)
                    .ok_or(SnapshotError::NotOnLink(r.addr))?;
                max_id = max_id.max(r.id.index());
                reals.push(RealEntry {
                    id: r.id,
                    addr: u32::from(r.addr),
                    weight: r.weight,
                    last_weight: r.last_weight,
                    neigh,
                    egress,
                    thresholds: Thresholds {
                        upper: r.upper_threshold,
                        lower: r.lower_threshold,
                    },
                });
            }
            let scheduler = Scheduler::build(svc.scheduler, &reals, svc.sched_flags, svc.key.port);
            let persistence = svc.persistence_timeout.map(|t| Persistence {
                timeout_ms: t.saturating_mul(1000),
                netmask: u32::from(svc.persistence_netmask),
                template_vport: if svc.key.port == FTP_PORT {
                    0
                } else {
                    svc.key.port
                },
            });
            services.push(ServiceEntry {
                key: svc.key,
                scheduler,
                persistence,
                ops: svc.ops && svc.key.proto == Protocol::Udp,
                reals,
            });
        }
        let cap = (services.len() * 2).max(8).next_power_of_two();
        let mask = cap - 1;
        let mut index = vec![0u32; cap];
        for (i, s) in services.iter().enumerate() {
            let mut slot = service_hash(s.key.proto.number(), u32::from(s.key.vip), s.key.port)
                as usize
                & mask;
            while index[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            index[slot] = i as u32 + 1;
        }
        let mut real_by_id = vec![(0u32, 0u32); max_id + 1];
        for (si, s) in services.iter().enumerate() {
            for (ri, r) in s.reals.iter().enumerate() {
                real_by_id[r.id.index()] = (si as u32 + 1, ri as u32);
            }
        }
        Ok(Snapshot {
            generation,
            timeouts: Timeouts::default(),
            services,
            index,
            index_mask: mask,
            real_by_id,
        })
    }

    /// The same snapshot with other flow timeouts.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Snapshot {
        self.timeouts = timeouts;
        self
    }

    /// The service for a packet's protocol, destination address and port.
    #[inline]
    pub fn service(&self, proto: u8, daddr: u32, dport: u16) -> Option<&ServiceEntry> {
        let mut slot = service_hash(proto, daddr, dport) as usize & self.index_mask;
        loop {
            let i = *self.index.get(slot)?;
            if i == 0 {
                return None;
            }
            let s = self.services.get(i as usize - 1)?;
            if s.key.port == dport && u32::from(s.key.vip) == daddr && s.key.proto.number() == proto
            {
                return Some(s);
            }
            slot = (slot + 1) & self.index_mask;
        }
    }

    /// A real server by id, if it still exists in this snapshot.
    #[inline]
    pub fn real(&self, id: RealId) -> Option<&RealEntry> {
        let &(si, ri) = self.real_by_id.get(id.index())?;
        if si == 0 {
            return None;
        }
        self.services.get(si as usize - 1)?.reals.get(ri as usize)
    }

    pub fn services(&self) -> &[ServiceEntry] {
        &self.services
    }

    /// VIPs with at least one service, for the receive filter and ARP.
    pub fn vips(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self.services.iter().map(|s| s.key.vip).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn has_protocol(&self, p: Protocol) -> bool {
        self.services.iter().any(|s| s.key.proto == p)
    }
}

/// The single publication point shared by control (writer) and workers (readers).
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{RealSpec, SchedulerKind, ServiceSpec};
    use std::num::NonZeroU32;

    pub(crate) fn reals_with_weights(w: &[u32]) -> Vec<RealEntry> {
        w.iter()
            .enumerate()
            .map(|(i, &weight)| RealEntry {
                id: RealId(NonZeroU32::new(i as u32 + 1).unwrap()),
                addr: 0x0a00_000b + i as u32,
                weight,
                last_weight: weight,
                neigh: i as u32,
                egress: 0,
                thresholds: Thresholds::default(),
            })
            .collect()
    }

    pub(crate) struct AllOnLink;
    impl Placement for AllOnLink {
        fn place(&mut self, addr: Ipv4Addr) -> Option<(u16, u32)> {
            Some((0, u32::from(addr) & 0xff))
        }
    }

    #[test]
    fn finds_services_and_reals_by_id() {
        let mut t = ServiceTable::new();
        let mut ids = Vec::new();
        for port in [80u16, 443, 53] {
            let proto = if port == 53 {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            let key = ServiceKey {
                proto,
                vip: Ipv4Addr::new(10, 0, 0, 100),
                port,
            };
            t.add_service(ServiceSpec::new(key, SchedulerKind::Rr))
                .unwrap();
            ids.push(
                t.add_real(&key, RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), port))
                    .unwrap(),
            );
        }
        let s = Snapshot::build(&t, 1, &mut AllOnLink).unwrap();
        let vip = u32::from(Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(s.service(6, vip, 443).unwrap().key.port, 443);
        assert_eq!(s.service(17, vip, 53).unwrap().key.proto, Protocol::Udp);
        assert!(
            s.service(17, vip, 80).is_none(),
            "protocol is part of the key"
        );
        assert!(s.service(6, vip + 1, 80).is_none());
        assert_eq!(
            s.real(ids[2]).unwrap().addr,
            u32::from(Ipv4Addr::new(10, 0, 0, 11))
        );
        assert!(s.real(RealId(NonZeroU32::new(99).unwrap())).is_none());
        assert_eq!(s.vips(), vec![Ipv4Addr::new(10, 0, 0, 100)]);
    }

    #[test]
    fn a_real_that_is_not_on_link_is_refused() {
        struct Nowhere;
        impl Placement for Nowhere {
            fn place(&mut self, _: Ipv4Addr) -> Option<(u16, u32)> {
                None
            }
        }
        let mut t = ServiceTable::new();
        let key = ServiceKey {
            proto: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 0, 0, 100),
            port: 80,
        };
        t.add_service(ServiceSpec::new(key, SchedulerKind::Rr))
            .unwrap();
        t.add_real(&key, RealSpec::route(Ipv4Addr::new(192, 168, 9, 9), 80))
            .unwrap();
        assert!(matches!(
            Snapshot::build(&t, 1, &mut Nowhere),
            Err(SnapshotError::NotOnLink(_))
        ));
    }
}
