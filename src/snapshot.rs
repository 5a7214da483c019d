//! The immutable, compiled view of the configuration that workers forward with.
//!
//! Invariants: workers load one snapshot per batch and hold it for the whole batch. Control
//! never mutates a published snapshot (scheduler cursors are atomics inside a service's entry,
//! advanced by workers; an entry no change touched is shared, cursor included, by consecutive
//! snapshots, as IPVS keeps a service's scheduler state across changes to other services).
//! Everything a worker reads to forward one packet is reachable from one `Arc<Snapshot>` plus
//! the neighbour slots, which are per real address and updated in place by control (one
//! atomic word each).
//!
//! Publication is build aside → `ArcSwap::store` → the old snapshot is freed once no worker
//! holds it, on the control thread (IPVS: "No more failures, attach state", then `call_rcu`).
//! Building aside costs what changed, not what the table holds: see [`Compiler`].

mod compile;
mod paged;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::conns::Thresholds;
use crate::flow::tcp_state::Timeouts;
use crate::model::change::Touched;
use crate::model::{
    ForwardMethod, Protocol, ProxyVersion, RealId, ServiceKey, ServiceTable, Tunnel, VirtualService,
};
use crate::sched::{Dest, Scheduler};
pub use compile::{Compiler, Delta, Planned};
use paged::Paged;

/// The smallest service index (slots; a power of two).
const MIN_INDEX: usize = 8;

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

impl ServiceEntry {
    /// Compiles one service: its reals placed on their next hops, its scheduler built.
    pub fn compile(
        svc: &VirtualService,
        placement: &mut dyn Placement,
    ) -> Result<ServiceEntry, SnapshotError> {
        let mut reals = Vec::with_capacity(svc.reals.len());
        let mut paths = Vec::with_capacity(svc.reals.len());
        for r in &svc.reals {
            let hop = placement.next_hop(r.addr, r.forward)?;
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
                // Whether the source is a VIP depends on every other service: the compiler
                // checks it (`Compiler::check_sources`).
                ForwardMethod::FullNat => Xmit::FullNat {
                    port: r.port,
                    source: placement.tunnel_end(r.addr, hop)?.source,
                },
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
        Ok(ServiceEntry {
            key: svc.key,
            scheduler,
            persistence,
            // A fwmark service applies OPS to its UDP packets only (the datapath checks).
            ops: svc.ops && (svc.key.proto == Protocol::Udp || svc.key.is_fwmark()),
            reals,
            paths,
            laddrs: svc.local_addrs.iter().map(|l| u32::from(l.addr)).collect(),
            proxy: svc.proxy_protocol,
        })
    }

    /// The FullNAT reals that take the director's address towards them as local address
    /// (the service has none of its own): (real, that address).
    fn default_sources(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let own = !self.laddrs.is_empty();
        self.reals
            .iter()
            .zip(&self.paths)
            .filter_map(move |(d, p)| match p.xmit {
                Xmit::FullNat { source, .. } if !own => Some((d.addr, source)),
                _ => None,
            })
    }

    /// Every FullNAT local address its flows may take, sorted: its own, else its FullNAT
    /// reals' default sources.
    fn laddrs_in_use(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.laddrs.clone();
        v.extend(self.default_sources().map(|(_, source)| source));
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The default sources alone, sorted (those must not be VIPs).
    fn sources_in_use(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.default_sources().map(|(_, source)| source).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The (protocol, real address, port) keys its masquerading and FullNAT reals answer from, given the
    /// (protocol, VIP, port) keys that reach this service: a real's own port, or (a fwmark
    /// service's real with port 0, which keeps the packet's port) every port that reaches it.
    fn nat_replies(&self, reaching: &[ServiceKey]) -> Vec<ServiceKey> {
        let mut out = Vec::new();
        for (d, p) in self.reals.iter().zip(&self.paths) {
            let (Xmit::Masq { port } | Xmit::FullNat { port, .. }) = p.xmit else {
                continue;
            };
            let addr = Ipv4Addr::from(d.addr);
            if port != 0 {
                if self.key.is_fwmark() {
                    out.push(ServiceKey::addr(Protocol::Tcp, addr, port));
                    out.push(ServiceKey::addr(Protocol::Udp, addr, port));
                } else {
                    out.push(ServiceKey::addr(self.key.proto, addr, port));
                }
                continue;
            }
            out.extend(
                reaching
                    .iter()
                    .map(|k| ServiceKey::addr(k.proto, addr, k.port)),
            );
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Where a real is: its service's slot + 1 (0 = no such real) and its position there.
#[derive(Clone, Copy, Debug, Default)]
struct RealLoc {
    svc: u32,
    position: u32,
}

/// The compiled configuration. Built by a [`Compiler`] from the previous snapshot: every
/// service the changes did not touch is the same `Arc<ServiceEntry>` (and the same scheduler
/// state) in both, and the tables below share every page the changes did not touch.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    /// Flow timeouts per TCP state and for UDP (`--set tcp tcpfin udp`).
    pub timeouts: Timeouts,
    /// Services by slot: a service keeps its slot for as long as it exists; `None` = free.
    services: Paged<Option<Arc<ServiceEntry>>>,
    /// Open-addressing index of (protocol, VIP, port) → service: address services, and the
    /// ports of mark rules expanded onto their fwmark service (which take precedence).
    index: Paged<IndexSlot>,
    index_mask: usize,
    /// Where each real is, by id.
    real_by_id: Paged<RealLoc>,
    /// The routes replies take back to their clients.
    pub routes: Routes,
    /// The director's own addresses.
    local_addrs: Arc<[u32]>,
    /// The director's address on each served interface, by egress index (0 = none).
    interface_addrs: Arc<[u32]>,
    /// VIPs with at least one forwarded key, sorted.
    vips: Arc<[Ipv4Addr]>,
    /// (address, port) of every masquerading and FullNAT real: where the replies uvs
    /// rewrites come from.
    nat_sources: Arc<[(u32, u16)]>,
    /// The same as (protocol, address, port) keys, for the kernel filter.
    nat_replies: Arc<[ServiceKey]>,
    /// Every FullNAT local address in use (sorted): the services' own and the reals' default
    /// sources.
    laddrs: Arc<[u32]>,
}

/// One slot of the service index; `svc` = service slot + 1 (0 = empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct IndexSlot {
    vip: u32,
    svc: u32,
    port: u16,
    proto: u8,
}

impl IndexSlot {
    fn key(&self) -> Option<ServiceKey> {
        let proto = Protocol::from_number(self.proto)?;
        Some(ServiceKey::addr(proto, Ipv4Addr::from(self.vip), self.port))
    }
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
            services: Paged::new(0),
            index: Paged::new(MIN_INDEX),
            index_mask: MIN_INDEX - 1,
            real_by_id: Paged::new(0),
            routes: Routes::default(),
            local_addrs: Arc::from(Vec::new()),
            interface_addrs: Arc::from(Vec::new()),
            vips: Arc::from(Vec::new()),
            nat_sources: Arc::from(Vec::new()),
            nat_replies: Arc::from(Vec::new()),
            laddrs: Arc::from(Vec::new()),
        }
    }

    /// Compiles a whole service table. Fails (and nothing is published) if a real server
    /// cannot be placed on an interface. The control thread compiles changes incrementally
    /// instead ([`Compiler`]).
    pub fn build(
        table: &ServiceTable,
        generation: u64,
        placement: &mut dyn Placement,
    ) -> Result<Snapshot, SnapshotError> {
        let mut c = Compiler::default();
        let next = c.plan(
            &Snapshot::empty(),
            table,
            &BTreeSet::new(),
            &Touched::all(),
            placement,
        )?;
        Ok(c.commit(next).with_generation(generation))
    }

    /// The same snapshot with other flow timeouts.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Snapshot {
        self.timeouts = timeouts;
        self
    }

    /// The same snapshot with another generation number.
    pub fn with_generation(mut self, generation: u64) -> Snapshot {
        self.generation = generation;
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
                return self.services.get(e.svc as usize - 1)?.as_deref();
            }
            slot = (slot + 1) & self.index_mask;
        }
    }

    /// A real server by id, if it still exists in this snapshot.
    #[inline]
    pub fn real(&self, id: RealId) -> Option<Real<'_>> {
        let loc = self.real_by_id.get(id.index())?;
        if loc.svc == 0 {
            return None;
        }
        self.services
            .get(loc.svc as usize - 1)?
            .as_deref()?
            .real(loc.position as usize)
    }

    /// Every service, in slot order (the order they were first compiled in).
    pub fn services(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.services.iter().filter_map(|s| s.as_deref())
    }

    /// The compiled entry of a service, shared: the same allocation in every snapshot until
    /// a change touches that service.
    pub fn shared_service(&self, key: &ServiceKey) -> Option<&Arc<ServiceEntry>> {
        self.services.iter().flatten().find(|s| s.key == *key)
    }

    /// Every (protocol, VIP, port) this snapshot forwards (address services and the expanded
    /// mark rules), sorted, for the kernel filter.
    pub fn forwarded_keys(&self) -> Vec<ServiceKey> {
        let mut v: Vec<ServiceKey> = self
            .index
            .iter()
            .filter(|e| e.svc != 0)
            .filter_map(IndexSlot::key)
            .collect();
        v.sort();
        v
    }

    /// VIPs with at least one service or marked port, sorted, for the receive filter and ARP.
    pub fn vips(&self) -> &[Ipv4Addr] {
        &self.vips
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
        let p = |s: &Snapshot| s.services().find(|e| e.key == fwm).unwrap().persistence;
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
