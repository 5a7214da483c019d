//! Where frames go next: the served interface and neighbour slot of each real server, and the
//! director's routes, compiled with the slots of their gateways. Slots are kept for the
//! daemon's life so a next hop that stays across a configuration change keeps its learned MAC.
//!
//! Direct routing's next hop is the real itself, on a served interface's network (IPVS's
//! `IP_VS_RT_MODE_KNOWN_NH`). The routed methods (NAT, tunnelling) reach a real on such a
//! network directly too, and any other real through the route the director's kernel would use
//! (`io::rtnetlink`): its gateway, if the route leaves by a served interface. A tunnel's outer
//! source is the address that kernel would send from (IPVS routes with
//! `IP_VS_RT_MODE_CONNECT`, caching the route's preferred source): the route's `src`, else the
//! egress interface's address on the next hop's network, else its first.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use crate::interfaces::{Interface, same_network};
use crate::io::rtnetlink::Route;
use crate::model::{ForwardMethod, ServiceTable};
use crate::neigh::arp::Neighbor;
use crate::snapshot::{NextHop, PlaceError, Placement, RouteEntry, RouteHop, TunnelEnd};

#[derive(Clone, Debug)]
pub struct Placer {
    pub interfaces: Vec<Interface>,
    /// The director's routing table (main), as last read from the kernel.
    pub routes: Vec<Route>,
    slots: HashMap<(u16, Ipv4Addr), u32>,
    capacity: usize,
    /// Interface MTUs as read once (by egress index).
    mtus: HashMap<u16, u16>,
}

/// The MTU assumed when an interface's cannot be read (a test's made-up interface).
const DEFAULT_MTU: u16 = 1500;

impl Placer {
    pub fn new(interfaces: Vec<Interface>, capacity: usize) -> Placer {
        Placer {
            interfaces,
            routes: Vec::new(),
            slots: HashMap::new(),
            capacity,
            mtus: HashMap::new(),
        }
    }

    /// The neighbours to resolve for `table`: its reals' next hops (slots must exist, i.e.
    /// call after a successful `Snapshot::build` with this placer), and every gateway of a
    /// route that leaves by a served interface.
    pub fn neighbors(&self, table: &ServiceTable) -> Vec<Neighbor> {
        let addrs: HashSet<Ipv4Addr> = table.reals().map(|(_, r)| r.addr).collect();
        self.neighbors_of(&addrs)
    }

    /// [`Placer::neighbors`] for reals at `addrs`.
    pub fn neighbors_of(&self, addrs: &HashSet<Ipv4Addr>) -> Vec<Neighbor> {
        self.neighbors_where(&|a| addrs.contains(&a))
    }

    /// [`Placer::neighbors`] for the placed addresses `wanted` keeps (asked once per next
    /// hop placed, not once per real).
    pub fn neighbors_where(&self, wanted: &dyn Fn(Ipv4Addr) -> bool) -> Vec<Neighbor> {
        let mut out: Vec<Neighbor> = Vec::new();
        let mut seen = HashSet::new();
        let mut add = |egress: u16, addr: Ipv4Addr, slot: u32| {
            if seen.insert(slot) {
                out.push(Neighbor::new(slot, usize::from(egress), addr));
            }
        };
        for (&(egress, addr), &slot) in &self.slots {
            if wanted(addr) {
                add(egress, addr, slot);
            }
        }
        for r in &self.routes {
            if let (Some(gw), Some(egress)) = (r.gateway, self.egress_of(r.oif)) {
                if let Some(&slot) = self.slots.get(&(egress, gw)) {
                    add(egress, gw, slot);
                }
            }
        }
        out.sort_by_key(|n| n.slot);
        out
    }

    /// Next hops placed so far (placing a real on a new one adds one).
    pub fn hops(&self) -> usize {
        self.slots.len()
    }

    fn egress_of(&self, ifindex: u32) -> Option<u16> {
        self.interfaces
            .iter()
            .position(|i| i.index == ifindex)
            .and_then(|e| u16::try_from(e).ok())
    }

    fn slot(&mut self, egress: u16, addr: Ipv4Addr) -> Result<u32, PlaceError> {
        if let Some(&neigh) = self.slots.get(&(egress, addr)) {
            return Ok(neigh);
        }
        let full = PlaceError::NoNeighborSlot(addr, self.capacity);
        let neigh = u32::try_from(self.slots.len()).map_err(|_| full)?;
        if neigh as usize >= self.capacity {
            return Err(full);
        }
        self.slots.insert((egress, addr), neigh);
        Ok(neigh)
    }

    /// The served interface whose network contains `addr`, and a slot for `addr` on it.
    fn on_link(&mut self, addr: Ipv4Addr) -> Option<Result<NextHop, PlaceError>> {
        let egress = self
            .interfaces
            .iter()
            .position(|i| i.source_for(addr).is_some())
            .and_then(|e| u16::try_from(e).ok())?;
        Some(
            self.slot(egress, addr)
                .map(|neigh| NextHop { egress, neigh }),
        )
    }

    /// Reads the MTU of every interface a tunnel leaves by again; whether one changed (the
    /// snapshot must then be rebuilt: tunnel MTUs are compiled into it).
    pub fn refresh_mtus(&mut self) -> bool {
        let mut changed = false;
        for (egress, mtu) in self.mtus.iter_mut() {
            let Some(ifc) = self.interfaces.get(usize::from(*egress)) else {
                continue;
            };
            let now = crate::io::socket::interface_mtu(&ifc.name)
                .ok()
                .and_then(|m| u16::try_from(m).ok())
                .unwrap_or(DEFAULT_MTU);
            if now != *mtu {
                log::info!("MTU of {} is now {now} (was {mtu})", ifc.name);
                *mtu = now;
                changed = true;
            }
        }
        changed
    }

    /// The kernel's most specific route to `addr`.
    fn best_route(&self, addr: Ipv4Addr) -> Option<Route> {
        self.routes
            .iter()
            .filter(|r| same_network(r.dst, addr, r.prefix_len))
            .min_by_key(|r| (std::cmp::Reverse(r.prefix_len), r.metric))
            .copied()
    }

    /// The kernel's most specific route to `addr`, if it leaves by a served interface: the
    /// gateway's slot, or `addr`'s own when the route has no gateway.
    fn routed(&mut self, addr: Ipv4Addr) -> Result<NextHop, PlaceError> {
        let best = self.best_route(addr).ok_or(PlaceError::NotRoutable(addr))?;
        let egress = self
            .egress_of(best.oif)
            .ok_or(PlaceError::NotRoutable(addr))?;
        let via = best.gateway.unwrap_or(addr);
        let neigh = self.slot(egress, via)?;
        Ok(NextHop { egress, neigh })
    }
}

impl Placer {
    /// Whether `addr` is one of the served interfaces' own addresses.
    pub fn is_local(&self, addr: Ipv4Addr) -> bool {
        self.interfaces
            .iter()
            .any(|i| i.ipv4.iter().any(|(a, _)| *a == addr))
    }
}

impl Placement for Placer {
    fn next_hop(&mut self, addr: Ipv4Addr, method: ForwardMethod) -> Result<NextHop, PlaceError> {
        let direct = self.on_link(addr);
        match method {
            ForwardMethod::Route => direct.unwrap_or(Err(PlaceError::NotOnLink(addr))),
            ForwardMethod::Masq | ForwardMethod::Tunnel(_) | ForwardMethod::FullNat => {
                direct.unwrap_or_else(|| self.routed(addr))
            }
        }
    }

    fn tunnel_end(&mut self, addr: Ipv4Addr, hop: NextHop) -> Result<TunnelEnd, PlaceError> {
        let ifc = self
            .interfaces
            .get(usize::from(hop.egress))
            .ok_or(PlaceError::NotRoutable(addr))?;
        let route = self.best_route(addr).filter(|r| r.oif == ifc.index);
        let via = route.and_then(|r| r.gateway).unwrap_or(addr);
        let source = route
            .and_then(|r| r.prefsrc)
            .or_else(|| ifc.source_for(via))
            .or_else(|| ifc.ipv4.first().map(|(a, _)| *a))
            .ok_or(PlaceError::NoTunnelSource(addr))?;
        let name = ifc.name.clone();
        let mtu = *self.mtus.entry(hop.egress).or_insert_with(|| {
            crate::io::socket::interface_mtu(&name)
                .ok()
                .and_then(|m| u16::try_from(m).ok())
                .unwrap_or(DEFAULT_MTU)
        });
        Ok(TunnelEnd {
            source: u32::from(source),
            mtu,
        })
    }

    fn interface_addr(&self, egress: u16) -> Option<u32> {
        let ifc = self.interfaces.get(usize::from(egress))?;
        Some(ifc.ipv4.first().map_or(0, |(a, _)| u32::from(*a)))
    }

    fn routes(&mut self) -> Result<Vec<RouteEntry>, PlaceError> {
        let routes = self.routes.clone();
        let mut out = Vec::with_capacity(routes.len() + self.interfaces.len());
        for r in routes {
            let hop = match self.egress_of(r.oif) {
                Some(egress) => Some(RouteHop {
                    egress,
                    gateway: r.gateway.map(|g| self.slot(egress, g)).transpose()?,
                }),
                None => None,
            };
            out.push(RouteEntry {
                prefix: u32::from(r.dst),
                prefix_len: r.prefix_len,
                metric: r.metric,
                hop,
            });
        }
        // The served interfaces' own networks, in case the table was not read (they are in
        // the kernel's table as connected routes anyway; the duplicates are harmless).
        for (e, ifc) in self.interfaces.iter().enumerate() {
            let Ok(egress) = u16::try_from(e) else {
                continue;
            };
            for &(a, len) in &ifc.ipv4 {
                out.push(RouteEntry {
                    prefix: u32::from(a),
                    prefix_len: len,
                    metric: u32::MAX,
                    hop: Some(RouteHop {
                        egress,
                        gateway: None,
                    }),
                });
            }
        }
        Ok(out)
    }

    fn local_addrs(&self) -> Vec<u32> {
        self.interfaces
            .iter()
            .flat_map(|i| i.ipv4.iter().map(|(a, _)| u32::from(*a)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MacAddr;

    fn placer() -> Placer {
        let mut p = Placer::new(
            vec![
                Interface {
                    name: "eth0".into(),
                    index: 2,
                    mac: MacAddr([2, 0, 0, 0, 0, 1]),
                    ipv4: vec![(Ipv4Addr::new(172, 30, 0, 200), 24)],
                },
                Interface {
                    name: "eth1".into(),
                    index: 3,
                    mac: MacAddr([2, 0, 0, 0, 0, 2]),
                    ipv4: vec![(Ipv4Addr::new(10, 0, 0, 1), 24)],
                },
            ],
            64,
        );
        p.routes = vec![
            Route {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Some(Ipv4Addr::new(172, 30, 0, 1)),
                oif: 2,
                metric: 0,
                prefsrc: None,
            },
            Route {
                dst: Ipv4Addr::new(10, 9, 0, 0),
                prefix_len: 16,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 254)),
                oif: 3,
                metric: 0,
                prefsrc: None,
            },
            Route {
                dst: Ipv4Addr::new(192, 168, 5, 0),
                prefix_len: 24,
                gateway: None,
                oif: 9,
                metric: 0,
                prefsrc: None,
            },
        ];
        p
    }

    #[test]
    fn direct_routing_needs_the_real_on_link_nat_follows_the_routes() {
        let mut p = placer();
        let on_link = Ipv4Addr::new(10, 0, 0, 7);
        let routed = Ipv4Addr::new(10, 9, 1, 1);
        let dr = p.next_hop(on_link, ForwardMethod::Route).unwrap();
        assert_eq!(dr.egress, 1);
        assert_eq!(
            p.next_hop(on_link, ForwardMethod::Masq).unwrap(),
            dr,
            "one slot per next hop"
        );
        assert_eq!(
            p.next_hop(routed, ForwardMethod::Route),
            Err(PlaceError::NotOnLink(routed))
        );
        let nat = p.next_hop(routed, ForwardMethod::Masq).unwrap();
        assert_eq!(nat.egress, 1);
        let gw = p
            .next_hop(Ipv4Addr::new(10, 0, 0, 254), ForwardMethod::Route)
            .unwrap();
        assert_eq!(nat.neigh, gw.neigh, "the gateway's slot");
        // A route by an interface uvs does not serve is no way out.
        let elsewhere = Ipv4Addr::new(192, 168, 5, 5);
        assert_eq!(
            p.next_hop(elsewhere, ForwardMethod::Masq),
            Err(PlaceError::NotRoutable(elsewhere))
        );
    }

    #[test]
    fn compiled_routes_carry_gateway_slots_and_neighbors_include_them() {
        let mut p = placer();
        let routes = crate::snapshot::Routes::new(p.routes().unwrap());
        let client = u32::from(Ipv4Addr::new(198, 51, 100, 7));
        let hop = routes.lookup(client).unwrap().hop.unwrap();
        assert_eq!(hop.egress, 0);
        let lan = routes
            .lookup(u32::from(Ipv4Addr::new(172, 30, 0, 9)))
            .unwrap();
        assert_eq!(lan.hop.unwrap().gateway, None, "on the public LAN itself");
        assert!(
            routes
                .lookup(u32::from(Ipv4Addr::new(192, 168, 5, 5)))
                .unwrap()
                .hop
                .is_none()
        );
        let n = p.neighbors(&ServiceTable::new());
        let addrs: Vec<Ipv4Addr> = n.iter().map(|n| n.addr).collect();
        assert!(addrs.contains(&Ipv4Addr::new(172, 30, 0, 1)), "{addrs:?}");
        assert!(addrs.contains(&Ipv4Addr::new(10, 0, 0, 254)), "{addrs:?}");
        assert_eq!(
            n.iter()
                .find(|n| n.addr == Ipv4Addr::new(172, 30, 0, 1))
                .unwrap()
                .slot,
            hop.gateway.unwrap()
        );
    }
}
