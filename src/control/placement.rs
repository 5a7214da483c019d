//! Where each real server lives: the served interface whose network contains its address, and
//! its neighbour slot. Slots are kept for the daemon's life so a real that stays across a
//! configuration change keeps its learned MAC.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::interfaces::Interface;
use crate::model::{ForwardMethod, ServiceTable};
use crate::neigh::arp::Neighbor;
use crate::snapshot::{NextHop, PlaceError, Placement};

#[derive(Clone, Debug)]
pub struct Placer {
    pub interfaces: Vec<Interface>,
    slots: HashMap<(u16, Ipv4Addr), u32>,
    capacity: usize,
}

impl Placer {
    pub fn new(interfaces: Vec<Interface>, capacity: usize) -> Placer {
        Placer {
            interfaces,
            slots: HashMap::new(),
            capacity,
        }
    }

    /// The neighbours to resolve for `table` (placed addresses only; slots must exist, i.e.
    /// call after a successful `Snapshot::build` with this placer).
    pub fn neighbors(&self, table: &ServiceTable) -> Vec<Neighbor> {
        let mut out: Vec<Neighbor> = Vec::new();
        for (_, r) in table.reals() {
            for (&(egress, addr), &slot) in &self.slots {
                if addr == r.addr && !out.iter().any(|n| n.slot == slot) {
                    out.push(Neighbor::new(slot, usize::from(egress), addr));
                }
            }
        }
        out.sort_by_key(|n| n.slot);
        out
    }
}

impl Placement for Placer {
    /// Direct routing's next hop is the real itself, on the served interface whose network
    /// contains it (IPVS's `IP_VS_RT_MODE_KNOWN_NH`).
    fn next_hop(&mut self, addr: Ipv4Addr, method: ForwardMethod) -> Result<NextHop, PlaceError> {
        match method {
            ForwardMethod::Route => self.on_link(addr),
        }
    }
}

impl Placer {
    fn on_link(&mut self, addr: Ipv4Addr) -> Result<NextHop, PlaceError> {
        let egress = self
            .interfaces
            .iter()
            .position(|i| i.source_for(addr).is_some())
            .and_then(|e| u16::try_from(e).ok())
            .ok_or(PlaceError::NotOnLink(addr))?;
        if let Some(&neigh) = self.slots.get(&(egress, addr)) {
            return Ok(NextHop { egress, neigh });
        }
        let full = PlaceError::NoNeighborSlot(addr, self.capacity);
        let neigh = u32::try_from(self.slots.len()).map_err(|_| full)?;
        if neigh as usize >= self.capacity {
            return Err(full);
        }
        self.slots.insert((egress, addr), neigh);
        Ok(NextHop { egress, neigh })
    }
}
