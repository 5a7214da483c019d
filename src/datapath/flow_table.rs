//! Per-worker flow table: fixed capacity, open addressing with linear probing inside a bounded
//! window, backward-shift deletion (no tombstones), no allocation after construction.
//!
//! Lock-free by construction: the fanout hash delivers every packet of a flow to the same
//! worker, so each worker owns its table outright.
//!
//! Sizing: linear probing stays short while the table is at most about half full, so the
//! configured capacity should be at least twice the flows a worker is expected to hold.
//!
//! Table full: an insert that finds no free slot within its probe window of
//! [`PROBE_WINDOW`] slots replaces an entry of that window: an expired one first, then the
//! not-established TCP entry that expires soonest (SYN_RECV, closing states), and only then
//! the established (or UDP) flow that expires soonest; a live victim counts as an eviction.
//! Memory never grows and no insert ever fails.
//!
//! Expiry is incremental: [`FlowTable::expire_some`] examines a bounded number of slots per
//! call, so no call ever pauses for the whole table. Lookups treat an expired entry as absent,
//! so late reaping never extends a flow's life.
//!
//! Entry: 32 bytes, all included (IPVS estimates 128 bytes per connection): the five-tuple,
//! TCP state, real id, expiry, and the persistence template the flow is a child of.

use crate::flow::{FlowKey, TcpState, reached};
use crate::io::huge_array::{HugeArray, MapError, prefetch};
use crate::model::RealId;

/// Slots examined by a lookup or insert, at most.
pub const PROBE_WINDOW: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Zeroable)]
#[repr(C)]
struct Slot {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    /// TCP: [`TcpState`] as u8; UDP: 0.
    state: u8,
    _pad: u16,
    /// Real id; 0 = empty slot.
    real: u32,
    /// Expiry time in milliseconds on the worker's clock, wrapping.
    expires: u32,
    /// Persistence template slot + 1 this flow is a child of; 0 = none.
    template: u32,
    _pad2: u32,
}

const EMPTY: Slot = Slot {
    saddr: 0,
    daddr: 0,
    sport: 0,
    dport: 0,
    proto: 0,
    state: 0,
    _pad: 0,
    real: 0,
    expires: 0,
    template: 0,
    _pad2: 0,
};

const _: () = assert!(std::mem::size_of::<Slot>() == 32);

impl Slot {
    fn key(&self) -> FlowKey {
        FlowKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
        }
    }
    fn is_empty(&self) -> bool {
        self.real == 0
    }
    fn matches(&self, k: &FlowKey) -> bool {
        self.real != 0
            && self.saddr == k.saddr
            && self.daddr == k.daddr
            && self.sport == k.sport
            && self.dport == k.dport
            && self.proto == k.proto
    }
}

/// A live flow, as seen by a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub real: RealId,
    pub state: TcpState,
    pub expires: u32,
}

/// Where a lookup found (or would insert) a flow; pass back to [`FlowTable::update`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRef(usize);

pub struct FlowTable {
    slots: HugeArray<Slot>,
    mask: usize,
    len: usize,
    expire_cursor: usize,
    pub evictions: u64,
}

impl FlowTable {
    /// A table of at least `capacity` slots (rounded up to a power of two, minimum 64), all
    /// empty, its memory mapped and faulted in now (on huge pages where available).
    pub fn new(capacity: usize) -> Result<FlowTable, MapError> {
        let cap = capacity.max(64).next_power_of_two();
        Ok(FlowTable {
            slots: HugeArray::zeroed(cap)?,
            mask: cap - 1,
            len: 0,
            expire_cursor: 0,
            evictions: 0,
        })
    }

    /// Starts loading the cache line where a lookup of `key` begins, so that a batch can
    /// overlap the misses of several frames instead of waiting for each in turn.
    #[inline]
    pub fn prefetch(&self, key: &FlowKey) {
        prefetch(self.slots.addr_of(key.hash() as usize & self.mask));
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Occupied slots (expired but not yet reaped ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes_per_flow() -> usize {
        std::mem::size_of::<Slot>()
    }

    /// Finds a live flow.
    #[inline]
    pub fn lookup(&self, key: &FlowKey, now: u32) -> Option<(SlotRef, Flow)> {
        let home = key.hash() as usize & self.mask;
        for i in 0..PROBE_WINDOW {
            let idx = (home + i) & self.mask;
            let s = &self.slots[idx];
            if s.is_empty() {
                return None;
            }
            if s.matches(key) {
                if reached(now, s.expires) {
                    return None;
                }
                let real = RealId(std::num::NonZeroU32::new(s.real)?);
                return Some((
                    SlotRef(idx),
                    Flow {
                        real,
                        state: TcpState::from_u8(s.state),
                        expires: s.expires,
                    },
                ));
            }
        }
        None
    }

    /// Updates the state and expiry of the flow at `at` (from a lookup in the same batch).
    #[inline]
    pub fn update(&mut self, at: SlotRef, state: TcpState, expires: u32) {
        let s = &mut self.slots[at.0];
        s.state = state as u8;
        s.expires = expires;
    }

    /// Inserts (or replaces) the flow for `key`. Returns the entry it overwrote, if any, so
    /// the caller can undo that entry's connection counts; `Overwritten::evicted` is true when
    /// a live, unrelated flow had to make room (table full within the probe window).
    /// `template`: the persistence template slot the flow is a child of, if any.
    pub fn insert(
        &mut self,
        key: &FlowKey,
        real: RealId,
        state: TcpState,
        expires: u32,
        now: u32,
        template: Option<u32>,
    ) -> Option<Overwritten> {
        let tmpl = template.map_or(0, |t| t + 1);
        let home = key.hash() as usize & self.mask;
        let mut victim = home;
        let mut victim_rank = (u8::MAX, i64::MAX);
        for i in 0..PROBE_WINDOW {
            let idx = (home + i) & self.mask;
            let s = self.slots[idx];
            if s.is_empty() {
                self.len += 1;
                self.slots[idx] = slot(key, real, state, expires, tmpl);
                return None;
            }
            if s.matches(key) {
                self.slots[idx] = slot(key, real, state, expires, tmpl);
                return overwritten(&s, false);
            }
            let rank = eviction_rank(&s, now);
            if rank < victim_rank {
                victim_rank = rank;
                victim = idx;
            }
        }
        let old = self.slots[victim];
        self.slots[victim] = slot(key, real, state, expires, tmpl);
        let evicted = victim_rank.1 > 0;
        if evicted {
            self.evictions += 1;
        }
        overwritten(&old, evicted)
    }

    /// Reaps expired entries among the next `budget` slots, reporting each to `on_remove`
    /// (real, state, template slot). Returns how many were removed.
    pub fn expire_some(
        &mut self,
        now: u32,
        budget: usize,
        mut on_remove: impl FnMut(RealId, TcpState, Option<u32>),
    ) -> usize {
        let mut removed = 0;
        let mut examined = 0;
        while examined < budget.min(self.slots.len()) {
            let idx = self.expire_cursor;
            let s = self.slots[idx];
            if !s.is_empty() && reached(now, s.expires) {
                if let Some(o) = overwritten(&s, false) {
                    on_remove(o.real, o.state, o.template);
                }
                self.remove_at(idx);
                removed += 1;
                // The backward shift may have moved a later entry into `idx`: look again.
                examined += 1;
                continue;
            }
            self.expire_cursor = (idx + 1) & self.mask;
            examined += 1;
        }
        removed
    }

    /// Backward-shift deletion: pull later entries of the same probe run into the hole.
    fn remove_at(&mut self, mut hole: usize) {
        self.slots[hole] = EMPTY;
        self.len -= 1;
        let mut next = (hole + 1) & self.mask;
        loop {
            let s = self.slots[next];
            if s.is_empty() {
                return;
            }
            let home = s.key().hash() as usize & self.mask;
            // Distance from home to the entry's slot and to the hole (cyclic).
            let dist_next = next.wrapping_sub(home) & self.mask;
            let dist_hole = hole.wrapping_sub(home) & self.mask;
            if dist_hole < dist_next {
                self.slots[hole] = s;
                self.slots[next] = EMPTY;
                hole = next;
            }
            next = (next + 1) & self.mask;
            if next == hole {
                return;
            }
        }
    }

    /// Visits every live flow (control-path use: listings). Not for the packet path.
    pub fn for_each_live(&self, now: u32, mut f: impl FnMut(&FlowKey, &Flow)) {
        for s in self.slots.iter() {
            if s.is_empty() || reached(now, s.expires) {
                continue;
            }
            if let Some(id) = std::num::NonZeroU32::new(s.real) {
                f(
                    &s.key(),
                    &Flow {
                        real: RealId(id),
                        state: TcpState::from_u8(s.state),
                        expires: s.expires,
                    },
                );
            }
        }
    }
}

/// Eviction order, lowest first: expired entries; then TCP entries that are not established
/// (SYN_RECV and the closing states — what a SYN flood of random sources fills a table with);
/// then established TCP and UDP flows. Within a class, the entry that expires soonest.
///
/// Ranking by expiry alone would sacrifice established flows whenever their timeout is the
/// shorter one (`--set 30 …` makes ESTABLISHED 30 s against SYN_RECV's 60 s), so a SYN flood
/// would evict a legitimate client's keep-alive connection before the flood's own entries.
fn eviction_rank(s: &Slot, now: u32) -> (u8, i64) {
    let left = i64::from(s.expires.wrapping_sub(now) as i32);
    let class = if left <= 0 {
        0
    } else if s.proto == crate::wire::IPPROTO_TCP
        && TcpState::from_u8(s.state) != TcpState::Established
    {
        1
    } else {
        2
    };
    (class, left)
}

/// An entry that an insert replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overwritten {
    pub real: RealId,
    pub state: TcpState,
    pub evicted: bool,
    /// The persistence template slot it was a child of.
    pub template: Option<u32>,
}

fn overwritten(s: &Slot, evicted: bool) -> Option<Overwritten> {
    Some(Overwritten {
        real: RealId(std::num::NonZeroU32::new(s.real)?),
        state: TcpState::from_u8(s.state),
        evicted,
        template: s.template.checked_sub(1),
    })
}

fn slot(key: &FlowKey, real: RealId, state: TcpState, expires: u32, template: u32) -> Slot {
    Slot {
        saddr: key.saddr,
        daddr: key.daddr,
        sport: key.sport,
        dport: key.dport,
        proto: key.proto,
        state: state as u8,
        _pad: 0,
        real: real.0.get(),
        expires,
        template,
        _pad2: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn rid(n: u32) -> RealId {
        RealId(NonZeroU32::new(n).unwrap())
    }

    fn key(i: u32) -> FlowKey {
        FlowKey {
            saddr: 0x0a00_0000 + i,
            daddr: 0x0a00_0064,
            sport: (i % 60000) as u16 + 1024,
            dport: 80,
            proto: 6,
        }
    }

    #[test]
    fn insert_lookup_update_expire() {
        let mut t = FlowTable::new(1024).unwrap();
        t.insert(&key(1), rid(7), TcpState::SynRecv, 60_000, 0, None);
        let (at, f) = t.lookup(&key(1), 10).unwrap();
        assert_eq!(f.real, rid(7));
        assert_eq!(f.state, TcpState::SynRecv);
        t.update(at, TcpState::Established, 900_000);
        assert_eq!(
            t.lookup(&key(1), 70_000).unwrap().1.state,
            TcpState::Established
        );
        assert!(
            t.lookup(&key(1), 900_000).is_none(),
            "expired flows are absent"
        );
        assert!(t.lookup(&key(2), 10).is_none());
    }

    #[test]
    fn incremental_expiry_reaps_everything_in_bounded_steps() {
        let mut t = FlowTable::new(4096).unwrap();
        // 49 % full (the sizing rule in the module doc): no insert needs an eviction.
        for i in 0..2000 {
            t.insert(
                &key(i),
                rid(1),
                TcpState::Established,
                if i % 2 == 0 { 100 } else { 10_000 },
                0,
                None,
            );
        }
        assert_eq!(t.len(), 2000);
        assert_eq!(t.evictions, 0);
        let mut removed = 0;
        // One sweep examines every slot once plus once more per removal.
        for _ in 0..((4096 + 1000) / 64 + 1) {
            let r = t.expire_some(200, 64, |_, _, _| {});
            assert!(r <= 64);
            removed += r;
        }
        assert_eq!(removed, 1000);
        assert_eq!(t.len(), 1000);
        for i in (1..2000).step_by(2) {
            assert!(
                t.lookup(&key(i), 200).is_some(),
                "survivor {i} still found after shifts"
            );
        }
    }

    #[test]
    fn a_full_table_evicts_within_its_bounds_and_counts_it() {
        let mut t = FlowTable::new(64).unwrap();
        for i in 0..1000 {
            t.insert(&key(i), rid(1), TcpState::Established, 1000 + i, 0, None);
        }
        assert_eq!(t.len(), 64, "never grows");
        assert!(t.evictions > 0);
        // The newest flow is always findable right after its insert.
        t.insert(&key(5000), rid(2), TcpState::SynRecv, 5000, 0, None);
        assert_eq!(t.lookup(&key(5000), 1).unwrap().1.real, rid(2));
    }

    #[test]
    fn a_syn_flood_evicts_embryonic_flows_before_established_ones() {
        let mut t = FlowTable::new(64).unwrap();
        // Established flows with a short timeout (`--set 10 …`), shorter than SYN_RECV's.
        for i in 0..16 {
            t.insert(&key(i), rid(1), TcpState::Established, 10_000, 0, None);
        }
        // A flood of SYNs from random sources, each SYN_RECV for 60 s, far beyond capacity.
        for i in 0..5000u32 {
            let k = FlowKey {
                saddr: 0xc633_0000 ^ i.wrapping_mul(0x9e37_79b9),
                daddr: 0x0a00_0064,
                sport: (i % 50_000) as u16 + 1,
                dport: 80,
                proto: 6,
            };
            t.insert(&k, rid(2), TcpState::SynRecv, 1000 + 60_000, 1000, None);
        }
        assert!(t.evictions > 4000, "{}", t.evictions);
        for i in 0..16 {
            assert!(
                t.lookup(&key(i), 1000).is_some(),
                "established flow {i} survived the flood"
            );
        }
    }

    #[test]
    fn wrapping_clock() {
        assert!(reached(5, u32::MAX - 5));
        assert!(!reached(u32::MAX - 5, 5));
        let mut t = FlowTable::new(64).unwrap();
        let now = u32::MAX - 10;
        t.insert(
            &key(1),
            rid(1),
            TcpState::Established,
            now.wrapping_add(100),
            now,
            None,
        );
        assert!(t.lookup(&key(1), now.wrapping_add(50)).is_some());
        assert!(t.lookup(&key(1), now.wrapping_add(100)).is_none());
    }
}
