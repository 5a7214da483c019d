//! Where each real server lives: the served interface whose network contains its address, and
//! its neighbour slot. Slots are kept for the daemon's life so a real that stays across a
//! configuration change keeps its learned MAC.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::interfaces::Interface;
use crate::model::ServiceTable;
use crate::neigh::arp::Neighbor;
use crate::snapshot::Placement;

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
    fn place(&mut self, addr: Ipv4Addr) -> Option<(u16, u32)> {
        let egress = self
            .interfaces
            .iter()
            .position(|i| i.source_for(addr).is_some())? as u16;
        if let Some(&slot) = self.slots.get(&(egress, addr)) {
            return Some((egress, slot));
        }
        let next = u32::try_from(self.slots.len()).ok()?;
        if next as usize >= self.capacity {
            return None;
        }
        self.slots.insert((egress, addr), next);
        Some((egress, next))
    }
}
