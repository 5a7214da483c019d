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
use crate::flow::tcp_state::Timeouts;
use crate::model::{
    ForwardMethod, Protocol, ProxyVersion, RealId, ServiceKey, ServiceTable, Tunnel,
};
use crate::sched::{Dest, Scheduler};

/// IPVS's `FTPPORT`: persistent FTP services share one template per client across ports.
const FTP_PORT: u16 = 21;

/// The link-layer next hop of a real server's frames: the egress interface (its index in the
/// daemon's interface list) and the neighbour slot whose MAC the frames are addressed to.
/// Direct routing's next hop is the real itself, on-link; a routed method's is a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub egress: u16,
    pub neigh: u32,
}

/// The transmit function of a real, compiled from its forwarding method (IPVS chooses
/// `cp->packet_xmit` once per connection from the destination's method; uvs once per real
/// per snapshot). `datapath::xmit` has one function per variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Xmit {
    /// Direct routing (`-g`): only the MAC addresses change.
    Route,
    /// Masquerading (`-m`): the destination becomes the real's address and `port`; replies
    /// come back through the director and are rewritten to come from the VIP.
    Masq { port: u16 },
    /// Tunnelling (`-i`): the packet, unchanged but for its TTL, inside an outer IP header
    /// from the director's `end.source` to the real, encapsulated as `encap` says.
    Tunnel { encap: Tunnel, end: TunnelEnd },
    /// FullNAT: source and destination rewritten, `CIP:cport → VIP:vport` becoming
    /// `LIP:lport → RIP:port`; the reply to `LIP:lport` is rewritten back. `source` is the
    /// local address used when the service has none of its own: the director's address
    /// towards the real.
    FullNat { port: u16, source: u32 },
}

impl Xmit {
    /// Replies pass the director (they are rewritten back): the TCP state follows IPVS's
    /// INPUT/OUTPUT rows, not INPUT_ONLY.
    pub fn sees_replies(self) -> bool {
        matches!(self, Xmit::Masq { .. } | Xmit::FullNat { .. })
    }
}

/// The director's end of a tunnel to a real: the outer source address (the address the
/// director's kernel would send from towards the real: the route's preferred source, else the
/// egress interface's address) and the MTU of the link the outer packets leave by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelEnd {
    pub source: u32,
    pub mtu: u16,
}

/// How a destination is reached from the director: the egress interface, and the neighbour
/// slot of the gateway, or `None` when the destination is on the link itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteHop {
    pub egress: u16,
    pub gateway: Option<u32>,
}

/// One route of the director's routing table, compiled: `None` as hop when it leaves by an
/// interface uvs does not serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub prefix: u32,
    pub prefix_len: u8,
    pub metric: u32,
    pub hop: Option<RouteHop>,
}

/// The director's routes, longest prefix first (then lowest metric): how replies reach
/// their clients. Linear: a director's table has a handful of routes; the lookup runs once
/// per reply frame.
#[derive(Clone, Debug, Default)]
pub struct Routes(Vec<RouteEntry>);

impl Routes {
    pub fn new(mut entries: Vec<RouteEntry>) -> Routes {
        entries.sort_by_key(|e| (std::cmp::Reverse(e.prefix_len), e.metric));
        Routes(entries)
    }

    /// The most specific route to `addr`.
    #[inline]
    pub fn lookup(&self, addr: u32) -> Option<&RouteEntry> {
        self.0.iter().find(|e| {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(e.prefix_len.min(32)))
                .unwrap_or(0);
            addr & mask == e.prefix & mask
        })
    }
}

/// How a real server is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RealPath {
    pub xmit: Xmit,
    pub hop: NextHop,
}

/// A real server of a snapshot: what the schedulers read and how it is reached.
#[derive(Clone, Copy, Debug)]
pub struct Real<'s> {
    pub dest: &'s Dest,
    pub path: &'s RealPath,
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
    /// Nonzero for a fwmark service: its templates are keyed `<IPPROTO_IP, snet, 0, mark, 0>`
    /// as in IPVS (protocol 0, the mark in the address field, port 0), so one client keeps
    /// its real across every port and protocol the mark covers.
    pub fwmark: u32,
}

#[derive(Debug)]
pub struct ServiceEntry {
    pub key: ServiceKey,
    pub scheduler: Scheduler,
    /// `None` = not persistent.
    pub persistence: Option<Persistence>,
    /// One-packet scheduling (`-o`; only ever set on UDP services).
    pub ops: bool,
    /// This service's reals in configuration order (IPVS's tie-break order), as the
    /// scheduler sees them.
    pub reals: Vec<Dest>,
    /// How each real is reached, at the same position as in `reals`.
    pub paths: Vec<RealPath>,
    /// FullNAT local addresses of the service, in configuration order (empty: each real's
    /// `Xmit::FullNat::source`).
    pub laddrs: Vec<u32>,
    /// The PROXY protocol header FullNAT reals get.
    pub proxy: ProxyVersion,
}

impl ServiceEntry {
    /// The real at `position` in the service's list.
    #[inline]
    pub fn real(&self, position: usize) -> Option<Real<'_>> {
        Some(Real {
            dest: self.reals.get(position)?,
            path: self.paths.get(position)?,
        })
    }
}

/// Where frames go next: the real servers' next hops, and the routes replies take.
pub trait Placement {
    /// The next hop for real server `addr` forwarded with `method`.
    fn next_hop(&mut self, addr: Ipv4Addr, method: ForwardMethod) -> Result<NextHop, PlaceError>;
    /// The director's routes, each with its gateway's neighbour slot.
    fn routes(&mut self) -> Result<Vec<RouteEntry>, PlaceError> {
        Ok(Vec::new())
    }
    /// The director's own addresses: what reaches them is the kernel's, not uvs's.
    fn local_addrs(&self) -> Vec<u32> {
        Vec::new()
    }
    /// The director's end of a tunnel to `addr`, reached through `hop`.
    fn tunnel_end(&mut self, addr: Ipv4Addr, hop: NextHop) -> Result<TunnelEnd, PlaceError> {
        let _ = hop;
        Err(PlaceError::NoTunnelSource(addr))
    }
    /// The director's address on served interface `egress` (the source of the ICMP errors
    /// uvs sends out of it): 0 for an interface without one, `None` past the last.
    fn interface_addr(&self, egress: u16) -> Option<u32> {
        let _ = egress;
        None
    }
}

/// Why a real server has no next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error(
        "real server {0} is not on-link on any served interface (direct routing needs the real server on the director's LAN)"
    )]
    NotOnLink(Ipv4Addr),
    #[error("no neighbour slot left for {0} (at most {1} distinct next hops)")]
    NoNeighborSlot(Ipv4Addr, usize),
    #[error(
        "real server {0} is not reachable through a served interface (no route to it leaves by one)"
    )]
    NotRoutable(Ipv4Addr),
    #[error(
        "no source address for a tunnel to real server {0}: the interface its route leaves by has no IPv4 address"
    )]
    NoTunnelSource(Ipv4Addr),
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Place(#[from] PlaceError),
    #[error(
        "FullNAT real server {0} of service {1}: the director's address towards it, {2}, is a VIP, so replies to it would be taken for requests; give the service a local address of its own (uvsadm --add-laddr -z LIP -t|-u VIP:PORT)"
    )]
    SourceIsVip(Ipv4Addr, ServiceKey, Ipv4Addr),
}

#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    /// Flow timeouts per TCP state and for UDP (`--set tcp tcpfin udp`).
    pub timeouts: Timeouts,
    services: Vec<ServiceEntry>,
    /// Open-addressing index of (protocol, VIP, port) → service: address services, and the
    /// ports of mark rules expanded onto their fwmark service (which take precedence).
    index: Vec<IndexSlot>,
    index_mask: usize,
    /// `real_by_id[id]` = (service index, position in its reals) + 1 packed, 0 = absent.
    real_by_id: Vec<(u32, u32)>,
    /// The routes replies take back to their clients.
    pub routes: Routes,
    /// The director's own addresses.
    local_addrs: Vec<u32>,
    /// The director's address on each served interface, by egress index (0 = none).
    interface_addrs: Vec<u32>,
    /// (address, port) of every masquerading real: where the replies uvs rewrites come from.
    nat_sources: Vec<(u32, u16)>,
    /// The same as (protocol, address, port) keys, for the kernel filter.
    nat_replies: Vec<ServiceKey>,
    /// Every FullNAT local address in use (sorted): the services' own and the reals' default
    /// sources.
    laddrs: Vec<u32>,
}

/// One slot of the service index; `svc` = service index + 1 (0 = empty).
#[derive(Clone, Copy, Debug, Default)]
struct IndexSlot {
    vip: u32,
    svc: u32,
    port: u16,
    proto: u8,
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
            index: vec![IndexSlot::default(); 1],
            index_mask: 0,
            real_by_id: Vec::new(),
            routes: Routes::default(),
            local_addrs: Vec::new(),
            interface_addrs: Vec::new(),
            nat_sources: Vec::new(),
            nat_replies: Vec::new(),
            laddrs: Vec::new(),
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
        let vips = table.vips();
        for svc in table.services() {
            let mut reals = Vec::with_capacity(svc.reals.len());
            let mut paths = Vec::with_capacity(svc.reals.len());
            for r in &svc.reals {
                let hop = placement.next_hop(r.addr, r.forward)?;
                max_id = max_id.max(r.id.index());
                reals.push(Dest {
                    id: r.id,
                    addr: u32::from(r.addr),
                    port: r.port,
                    weight: r.weight,
                    last_weight: r.last_weight,
                    thresholds: Thresholds {
                        upper: r.upper_threshold,
                        lower: r.lower_threshold,
                    },
                });
                let xmit = match r.forward {
                    ForwardMethod::Route => Xmit::Route,
                    ForwardMethod::Masq => Xmit::Masq { port: r.port },
                    ForwardMethod::Tunnel(encap) => Xmit::Tunnel {
                        encap,
                        end: placement.tunnel_end(r.addr, hop)?,
                    },
                    ForwardMethod::FullNat => {
                        let source = placement.tunnel_end(r.addr, hop)?.source;
                        if svc.local_addrs.is_empty() && vips.contains(&Ipv4Addr::from(source)) {
                            return Err(SnapshotError::SourceIsVip(
                                r.addr,
                                svc.key,
                                Ipv4Addr::from(source),
                            ));
                        }
                        Xmit::FullNat {
                            port: r.port,
                            source,
                        }
                    }
                };
                paths.push(RealPath { xmit, hop });
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
                fwmark: svc.key.fwmark,
            });
            services.push(ServiceEntry {
                key: svc.key,
                scheduler,
                persistence,
                // A fwmark service applies OPS to its UDP packets only (the datapath checks).
                ops: svc.ops && (svc.key.proto == Protocol::Udp || svc.key.is_fwmark()),
                reals,
                paths,
                laddrs: svc.local_addrs.iter().map(|l| u32::from(l.addr)).collect(),
                proxy: svc.proxy_protocol,
            });
        }
        // Index entries: mark rules first (IPVS finds fwmark services before address ones),
        // then address services whose (protocol, VIP, port) no mark rule took.
        let position = |k: &ServiceKey| services.iter().position(|s| s.key == *k);
        let mut entries: Vec<(ServiceKey, usize)> = Vec::new();
        for (k, svc) in table.marked_keys() {
            if let Some(i) = position(&svc) {
                entries.push((k, i));
            }
        }
        for (i, s) in services.iter().enumerate() {
            if !s.key.is_fwmark() && !entries.iter().any(|(k, _)| *k == s.key) {
                entries.push((s.key, i));
            }
        }
        let cap = (entries.len() * 2).max(8).next_power_of_two();
        let mask = cap - 1;
        let mut index = vec![IndexSlot::default(); cap];
        for (k, i) in entries {
            let (proto, vip) = (k.proto.number(), u32::from(k.vip));
            let mut slot = service_hash(proto, vip, k.port) as usize & mask;
            while index[slot].svc != 0 {
                slot = (slot + 1) & mask;
            }
            index[slot] = IndexSlot {
                vip,
                svc: i as u32 + 1,
                port: k.port,
                proto,
            };
        }
        let mut real_by_id = vec![(0u32, 0u32); max_id + 1];
        for (si, s) in services.iter().enumerate() {
            for (ri, r) in s.reals.iter().enumerate() {
                real_by_id[r.id.index()] = (si as u32 + 1, ri as u32);
            }
        }
        // A masquerading real answers from its port, or (a fwmark service's real with port 0,
        // which keeps the packet's port) from every port the service's mark rules cover.
        let mut nat_replies: Vec<ServiceKey> = Vec::new();
        for (i, svc) in services.iter().enumerate() {
            for (d, p) in svc.reals.iter().zip(&svc.paths) {
                let (Xmit::Masq { port } | Xmit::FullNat { port, .. }) = p.xmit else {
                    continue;
                };
                let addr = Ipv4Addr::from(d.addr);
                if port != 0 {
                    let protos: Vec<Protocol> = if svc.key.is_fwmark() {
                        vec![Protocol::Tcp, Protocol::Udp]
                    } else {
                        vec![svc.key.proto]
                    };
                    nat_replies.extend(protos.into_iter().map(|p| ServiceKey::addr(p, addr, port)));
                    continue;
                }
                for e in index.iter().filter(|e| e.svc as usize == i + 1) {
                    if let Some(proto) = Protocol::from_number(e.proto) {
                        nat_replies.push(ServiceKey::addr(proto, addr, e.port));
                    }
                }
            }
        }
        nat_replies.sort();
        nat_replies.dedup();
        let mut nat_sources: Vec<(u32, u16)> = nat_replies
            .iter()
            .map(|k| (u32::from(k.vip), k.port))
            .collect();
        nat_sources.sort_unstable();
        nat_sources.dedup();
        let mut local_addrs = placement.local_addrs();
        local_addrs.sort_unstable();
        let mut laddrs: Vec<u32> = services
            .iter()
            .flat_map(|s| {
                let own = s.laddrs.iter().copied();
                let sources = s.paths.iter().filter_map(|p| match p.xmit {
                    Xmit::FullNat { source, .. } if s.laddrs.is_empty() => Some(source),
                    _ => None,
                });
                own.chain(sources)
            })
            .collect();
        laddrs.sort_unstable();
        laddrs.dedup();
        let interface_addrs = (0..=u16::MAX)
            .map_while(|e| placement.interface_addr(e))
            .collect();
        Ok(Snapshot {
            generation,
            timeouts: Timeouts::default(),
            services,
            index,
            index_mask: mask,
            real_by_id,
            routes: Routes::new(placement.routes()?),
            local_addrs,
            interface_addrs,
            nat_sources,
            nat_replies,
            laddrs,
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
            let e = self.index.get(slot)?;
            if e.svc == 0 {
                return None;
            }
            if e.port == dport && e.vip == daddr && e.proto == proto {
                return self.services.get(e.svc as usize - 1);
            }
            slot = (slot + 1) & self.index_mask;
        }
    }

    /// A real server by id, if it still exists in this snapshot.
    #[inline]
    pub fn real(&self, id: RealId) -> Option<Real<'_>> {
        let &(si, ri) = self.real_by_id.get(id.index())?;
        if si == 0 {
            return None;
        }
        self.services.get(si as usize - 1)?.real(ri as usize)
    }

    pub fn services(&self) -> &[ServiceEntry] {
        &self.services
    }

    /// Every (protocol, VIP, port) this snapshot forwards (address services and the expanded
    /// mark rules), for the kernel filter.
    pub fn forwarded_keys(&self) -> Vec<ServiceKey> {
        let mut v: Vec<ServiceKey> = self
            .index
            .iter()
            .filter(|e| e.svc != 0)
            .filter_map(|e| {
                let proto = Protocol::from_number(e.proto)?;
                Some(ServiceKey::addr(proto, Ipv4Addr::from(e.vip), e.port))
            })
            .collect();
        v.sort();
        v
    }

    /// VIPs with at least one service or marked port, for the receive filter and ARP.
    pub fn vips(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self.forwarded_keys().iter().map(|k| k.vip).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether `addr` is one of the director's own addresses.
    #[inline]
    pub fn is_local(&self, addr: u32) -> bool {
        self.local_addrs.binary_search(&addr).is_ok()
    }

    /// (address, port) of every masquerading real, sorted: the sources of the replies uvs
    /// rewrites (for the receive filter and the workers' fanout).
    pub fn nat_sources(&self) -> &[(u32, u16)] {
        &self.nat_sources
    }

    /// The same sources as (protocol, real address, port) keys, sorted (for the kernel
    /// filter, which holds the raw replies back from the director's kernel).
    pub fn nat_replies(&self) -> &[ServiceKey] {
        &self.nat_replies
    }

    /// The director's own addresses, sorted.
    pub fn local_addrs(&self) -> &[u32] {
        &self.local_addrs
    }

    /// FullNAT local addresses (sorted): what frames to them carry are replies of FullNAT
    /// connections, found by their local port.
    pub fn laddrs(&self) -> &[u32] {
        &self.laddrs
    }

    /// Whether `addr` is a FullNAT local address.
    #[inline]
    pub fn is_laddr(&self, addr: u32) -> bool {
        !self.laddrs.is_empty() && self.laddrs.binary_search(&addr).is_ok()
    }

    /// The director's address on served interface `egress`, if it has one.
    #[inline]
    pub fn interface_addr(&self, egress: u16) -> Option<u32> {
        self.interface_addrs
            .get(usize::from(egress))
            .copied()
            .filter(|&a| a != 0)
    }

    pub fn has_protocol(&self, p: Protocol) -> bool {
        self.index
            .iter()
            .any(|e| e.svc != 0 && e.proto == p.number())
    }
}

/// The single publication point shared by control (writer) and workers (readers).
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{RealSpec, SchedulerKind, ServiceSpec};
    use std::num::NonZeroU32;

    pub(crate) struct AllOnLink;
    impl Placement for AllOnLink {
        fn next_hop(&mut self, addr: Ipv4Addr, _: ForwardMethod) -> Result<NextHop, PlaceError> {
            Ok(NextHop {
                egress: 0,
                neigh: u32::from(addr) & 0xff,
            })
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
                fwmark: 0,
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
            s.real(ids[2]).unwrap().dest.addr,
            u32::from(Ipv4Addr::new(10, 0, 0, 11))
        );
        assert!(s.real(RealId(NonZeroU32::new(99).unwrap())).is_none());
        assert_eq!(s.vips(), vec![Ipv4Addr::new(10, 0, 0, 100)]);
    }

    #[test]
    fn mark_rules_expand_onto_their_fwmark_service_and_win_over_address_services() {
        use crate::model::MarkRule;
        let vip = Ipv4Addr::new(10, 0, 0, 100);
        let mut t = ServiceTable::new();
        let addr80 = ServiceKey::addr(Protocol::Tcp, vip, 80);
        let addr22 = ServiceKey::addr(Protocol::Tcp, vip, 22);
        let fwm = ServiceKey::fwmark(1);
        for k in [addr80, addr22, fwm] {
            t.add_service(ServiceSpec::new(k, SchedulerKind::Rr))
                .unwrap();
        }
        t.add_real(&fwm, RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), 0))
            .unwrap();
        let rule = |mark, proto, ports: &[u16]| MarkRule {
            proto,
            vip,
            ports: ports.to_vec(),
            mark,
        };
        t.add_mark_rule(rule(1, Protocol::Tcp, &[80, 443])).unwrap();
        t.add_mark_rule(rule(1, Protocol::Udp, &[53])).unwrap();
        // A rule whose mark has no service matches nothing.
        t.add_mark_rule(rule(7, Protocol::Tcp, &[8080])).unwrap();
        let s = Snapshot::build(&t, 1, &mut AllOnLink).unwrap();
        let v = u32::from(vip);
        for (proto, port) in [(6, 80), (6, 443), (17, 53)] {
            assert_eq!(
                s.service(proto, v, port).unwrap().key,
                fwm,
                "{proto}/{port}"
            );
        }
        assert_eq!(s.service(6, v, 22).unwrap().key, addr22);
        assert!(s.service(6, v, 8080).is_none());
        assert!(
            s.service(6, 0, 0).is_none(),
            "the placeholder key is not indexed"
        );
        assert_eq!(
            s.forwarded_keys(),
            vec![
                addr22,
                addr80,
                ServiceKey::addr(Protocol::Tcp, vip, 443),
                ServiceKey::addr(Protocol::Udp, vip, 53),
            ]
        );
        assert_eq!(s.vips(), vec![vip]);
        let p = |s: &Snapshot| {
            s.services()
                .iter()
                .find(|e| e.key == fwm)
                .unwrap()
                .persistence
        };
        assert_eq!(p(&s), None);
        let mut spec = ServiceSpec::new(fwm, SchedulerKind::Rr);
        spec.persistence_timeout = Some(60);
        t.edit_service(spec).unwrap();
        let s = Snapshot::build(&t, 2, &mut AllOnLink).unwrap();
        assert_eq!(p(&s).map(|p| (p.fwmark, p.template_vport)), Some((1, 0)));
        // Without the fwmark service the address service is back on port 80.
        t.delete_service(&fwm).unwrap();
        let s = Snapshot::build(&t, 3, &mut AllOnLink).unwrap();
        assert_eq!(s.service(6, v, 80).unwrap().key, addr80);
        assert!(s.service(6, v, 443).is_none());
    }

    #[test]
    fn a_real_that_is_not_on_link_is_refused() {
        struct Nowhere;
        impl Placement for Nowhere {
            fn next_hop(&mut self, a: Ipv4Addr, _: ForwardMethod) -> Result<NextHop, PlaceError> {
                Err(PlaceError::NotOnLink(a))
            }
        }
        let mut t = ServiceTable::new();
        let key = ServiceKey {
            proto: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 0, 0, 100),
            port: 80,
            fwmark: 0,
        };
        t.add_service(ServiceSpec::new(key, SchedulerKind::Rr))
            .unwrap();
        t.add_real(&key, RealSpec::route(Ipv4Addr::new(192, 168, 9, 9), 80))
            .unwrap();
        assert!(matches!(
            Snapshot::build(&t, 1, &mut Nowhere),
            Err(SnapshotError::Place(PlaceError::NotOnLink(_)))
        ));
    }
}
