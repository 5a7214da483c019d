//! The destination-address cache shared by lblc and lblcr: a fixed table of atomics that
//! workers read and update without a lock or an allocation.
//!
//! The kernel keeps an unbounded chained hash (1024 buckets) under the service's spin lock
//! and trims it from a 60 s timer: entries unused for `*_expiration` (24 h) go at the next
//! full pass, and entries unused for 6 min go when there are more than 16384. uvs has
//! 16384 slots probed linearly in windows of 16 and applies the same rules lazily: an entry
//! unused for the expiration is treated as absent on lookup, and a full window evicts its
//! least recently used entry (which is older than 6 min whenever the kernel itself would
//! have trimmed). The one difference: a destination may be evicted before 6 min when more
//! than 16 live destinations crowd one window, where the kernel would keep both.
//!
//! A slot's key word is `daddr << 32 | state`: state 0 = empty, odd = being written, even =
//! live (a generation count). A writer claims a slot by CAS to odd, fills it and publishes
//! it even; a reader that sees odd, or a key that changed while it read the value, treats
//! the slot as a miss (the kernel would have caught the writer's lock; here the flow is
//! simply scheduled afresh, which is also what the kernel does when it fails to cache).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::hash_32;

const SLOT_BITS: u32 = 14;
pub(crate) const SLOTS: usize = 1 << SLOT_BITS;
const WINDOW: usize = 16;

/// `DEFAULT_EXPIRATION` of lblc and lblcr (the `lblc_expiration`/`lblcr_expiration`
/// sysctls), in milliseconds.
pub(crate) const DEFAULT_EXPIRATION_MS: u32 = 24 * 60 * 60 * 1000;

#[derive(Debug, Default)]
#[repr(align(32))]
struct Slot {
    key: AtomicU64,
    value: AtomicU64,
    lastuse: AtomicU32,
    lastmod: AtomicU32,
}

#[derive(Debug)]
pub(crate) struct DestTable {
    slots: Box<[Slot]>,
    expiration_ms: u32,
}

/// A live entry as read: its slot and value at the time of reading.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub slot: usize,
    pub value: u64,
}

fn is_live(key: u64) -> bool {
    let state = key as u32;
    state != 0 && state & 1 == 0
}

fn next_generation(key: u64) -> u32 {
    let g = ((key as u32) >> 1).wrapping_add(1) & 0x7fff_ffff;
    g.max(1)
}

/// Wrapping "a is at least `d` ms after b" on the 32-bit millisecond clock.
pub(crate) fn aged(now: u32, then: u32, d: u32) -> bool {
    now.wrapping_sub(then) >= d
}

impl DestTable {
    pub fn new(expiration_ms: u32) -> DestTable {
        DestTable {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            expiration_ms,
        }
    }

    pub fn expiration_ms(&self) -> u32 {
        self.expiration_ms
    }

    fn window(daddr: u32) -> impl Iterator<Item = usize> {
        let start = hash_32(daddr, SLOT_BITS) as usize;
        (0..WINDOW).map(move |i| (start + i) & (SLOTS - 1))
    }

    /// The live, unexpired entry for `daddr`.
    pub fn get(&self, daddr: u32, now: u32) -> Option<Entry> {
        for j in Self::window(daddr) {
            let s = &self.slots[j];
            let k = s.key.load(Ordering::Acquire);
            if !is_live(k) || (k >> 32) as u32 != daddr {
                continue;
            }
            let value = s.value.load(Ordering::Acquire);
            if s.key.load(Ordering::Acquire) != k {
                return None;
            }
            if aged(now, s.lastuse.load(Ordering::Relaxed), self.expiration_ms) {
                return None;
            }
            return Some(Entry { slot: j, value });
        }
        None
    }

    /// `en->lastuse = jiffies`.
    pub fn touch(&self, e: Entry, now: u32) {
        self.slots[e.slot].lastuse.store(now, Ordering::Relaxed);
    }

    pub fn lastmod(&self, e: Entry) -> u32 {
        self.slots[e.slot].lastmod.load(Ordering::Relaxed)
    }

    /// Replaces the value read in `e` by `value` (fails if another worker changed it first);
    /// `modified` also sets the entry's last-modification time.
    pub fn update(&self, e: Entry, value: u64, modified: Option<u32>) -> bool {
        let s = &self.slots[e.slot];
        let ok = s
            .value
            .compare_exchange(e.value, value, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if let (true, Some(now)) = (ok, modified) {
            s.lastmod.store(now, Ordering::Relaxed);
        }
        ok
    }

    /// Adds (or replaces) the entry for `daddr`. `false` if another worker was writing the
    /// chosen slot: the caller then just uses its choice uncached.
    pub fn insert(&self, daddr: u32, value: u64, now: u32) -> bool {
        let mut same = None;
        let mut empty = None;
        let mut oldest: Option<(usize, u64, u32)> = None;
        for j in Self::window(daddr) {
            let s = &self.slots[j];
            let k = s.key.load(Ordering::Acquire);
            let state = k as u32;
            if state == 0 {
                empty.get_or_insert((j, k));
            } else if state & 1 == 0 {
                if (k >> 32) as u32 == daddr {
                    same = Some((j, k));
                    break;
                }
                let age = now.wrapping_sub(s.lastuse.load(Ordering::Relaxed));
                if oldest.is_none_or(|(_, _, a)| age > a) {
                    oldest = Some((j, k, age));
                }
            }
        }
        let Some((j, k)) = same.or(empty).or(oldest.map(|(j, k, _)| (j, k))) else {
            return false;
        };
        let g = next_generation(k);
        let base = u64::from(daddr) << 32;
        let s = &self.slots[j];
        if s.key
            .compare_exchange(
                k,
                base | u64::from(g << 1 | 1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        s.value.store(value, Ordering::Relaxed);
        s.lastuse.store(now, Ordering::Relaxed);
        s.lastmod.store(now, Ordering::Relaxed);
        s.key.store(base | u64::from(g << 1), Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_expire_and_evict_lru() {
        let t = DestTable::new(1000);
        assert!(t.get(5, 0).is_none());
        assert!(t.insert(5, 77, 10));
        let e = t.get(5, 500).unwrap();
        assert_eq!(e.value, 77);
        t.touch(e, 500);
        assert!(t.get(5, 1499).is_some());
        assert!(t.get(5, 1500).is_none(), "unused for the expiration: gone");
        // Re-inserting an expired destination reuses its slot.
        assert!(t.insert(5, 78, 1500));
        assert_eq!(t.get(5, 1500).unwrap().value, 78);
        // Crowd one window: destinations with the same start slot.
        let start = hash_32(5, SLOT_BITS);
        let crowd: Vec<u32> = (6..)
            .filter(|&a| hash_32(a, SLOT_BITS) == start)
            .take(WINDOW)
            .collect();
        for (n, &a) in crowd.iter().enumerate() {
            assert!(t.insert(a, 1, 1501 + n as u32));
        }
        assert!(t.get(5, 1600).is_none(), "least recently used evicted");
        assert!(t.get(crowd[0], 1600).is_some());
    }

    #[test]
    fn update_is_compare_and_swap() {
        let t = DestTable::new(DEFAULT_EXPIRATION_MS);
        t.insert(9, 1, 0);
        let e = t.get(9, 0).unwrap();
        assert!(t.update(e, 2, Some(50)));
        assert!(!t.update(e, 3, None), "stale read");
        let e = t.get(9, 60).unwrap();
        assert_eq!((e.value, t.lastmod(e)), (2, 50));
    }
}
