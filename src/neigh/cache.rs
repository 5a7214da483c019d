//! Neighbour slots: one atomic word per (egress interface, real-server address), written only
//! by the control thread, read by workers for every forwarded packet. The word holds the MAC in
//! its low 48 bits and a valid bit, so a reader always sees a whole MAC or none (the per-dest
//! route cache of `ip_vs_xmit.c`, with an atomic store standing in for RCU).
//!
//! If a real has no MAC the packet is dropped as `no_neighbor`; control keeps asking at a
//! bounded rate (`arp.retry_ms`), whether or not packets are waiting.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::wire::MacAddr;

const VALID: u64 = 1 << 63;

pub struct NeighTable {
    slots: Box<[AtomicU64]>,
}

impl NeighTable {
    pub fn new(capacity: usize) -> NeighTable {
        NeighTable {
            slots: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The MAC of a slot, if known.
    #[inline]
    pub fn get(&self, slot: u32) -> Option<MacAddr> {
        let v = self.slots.get(slot as usize)?.load(Ordering::Relaxed);
        (v & VALID != 0).then(|| MacAddr::from_u64(v & !VALID))
    }

    /// Control only.
    pub fn set(&self, slot: u32, mac: Option<MacAddr>) {
        if let Some(s) = self.slots.get(slot as usize) {
            s.store(mac.map_or(0, |m| m.to_u64() | VALID), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_clear() {
        let t = NeighTable::new(4);
        assert_eq!(t.get(1), None);
        let m = MacAddr([2, 0, 0, 0, 1, 1]);
        t.set(1, Some(m));
        assert_eq!(t.get(1), Some(m));
        t.set(1, None);
        assert_eq!(t.get(1), None);
        assert_eq!(t.get(99), None);
        t.set(99, Some(m));
    }

    #[test]
    fn the_all_zero_mac_is_still_a_valid_entry() {
        let t = NeighTable::new(1);
        t.set(0, Some(MacAddr::ZERO));
        assert_eq!(t.get(0), Some(MacAddr::ZERO));
    }
}
