//! Per-worker flow table: fixed capacity, open addressing with linear probing inside a bounded
//! window, backward-shift deletion (no tombstones), no allocation after construction.
//!
//! Lock-free by construction: the fanout program delivers every packet of a flow, both
//! directions, to the same worker, so each worker owns its table outright.
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
//! TCP state, real id, expiry, the persistence template the flow is a child of, and for a
//! FullNAT flow its local address and port (where `fullnat` keeps the rest of it).
//!
//! Return entries: a flow whose replies pass the director (NAT) also has an entry keyed by
//! its reply's five-tuple (real → client), in the same table, holding what the reply is
//! rewritten back to (the VIP and port) and the MAC the client's frames came from. The flow
//! entry stays the one authority on state and expiry: a return entry is only valid while
//! the flow entry it points back to exists with the same real ([`FlowTable::flow_of`]), and
//! the incremental expiry reaps it once it does not. Lookups of one kind never match the
//! other.

use crate::flow::{FlowKey, TcpState, reached};
use crate::io::huge_array::{HugeArray, MapError, prefetch};
use crate::model::RealId;
use crate::wire::MacAddr;

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
    /// TCP: [`TcpState`] as u8; UDP: 0. [`RETURN`] marks a return entry.
    state: u8,
    /// Return entry: the virtual port replies are rewritten to. FullNAT flow: the local port.
    vport: u16,
    /// Real id; 0 = empty slot.
    real: u32,
    /// Expiry time in milliseconds on the worker's clock, wrapping. Return entry: the last
    /// two bytes of the client-side MAC (in the low 16 bits).
    expires: u32,
    /// Persistence template slot + 1 this flow is a child of; 0 = none. Return entry: the VIP.
    template: u32,
    /// Return entry: the first four bytes of the client-side MAC. FullNAT flow: the local
    /// address (never 0).
    mac_head: u32,
}

/// The `state` bit of a return entry.
const RETURN: u8 = 0x80;

const EMPTY: Slot = Slot {
    saddr: 0,
    daddr: 0,
    sport: 0,
    dport: 0,
    proto: 0,
    state: 0,
    vport: 0,
    real: 0,
    expires: 0,
    template: 0,
    mac_head: 0,
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
    fn is_return(&self) -> bool {
        self.state & RETURN != 0
    }
    /// A flow entry (not a return entry) for `k`.
    fn matches(&self, k: &FlowKey) -> bool {
        !self.is_return() && self.same_key(k)
    }
    fn matches_return(&self, k: &FlowKey) -> bool {
        self.is_return() && self.same_key(k)
    }
    fn same_key(&self, k: &FlowKey) -> bool {
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
    /// A FullNAT flow's local address and port.
    pub local: Option<LocalPort>,
}

/// The local address and port a FullNAT flow leaves from (host order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalPort {
    pub addr: u32,
    pub port: u16,
}

impl Slot {
    fn local(&self) -> Option<LocalPort> {
        (!self.is_return() && self.mac_head != 0).then_some(LocalPort {
            addr: self.mac_head,
            port: self.vport,
        })
    }
}

/// What a return entry holds: how a reply of the flow is rewritten and where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Return {
    pub real: RealId,
    /// The VIP and port the reply is rewritten to come from.
    pub vip: u32,
    pub vport: u16,
    /// The MAC the client's frames arrived from (for a client on a directly connected
    /// network, the next hop of the replies).
    pub client_mac: MacAddr,
}

impl Return {
    /// The flow entry's key, for a return entry found under `key` (the reply's five-tuple):
    /// the client, the VIP and their ports.
    pub fn flow_key(&self, key: &FlowKey) -> FlowKey {
        FlowKey {
            saddr: key.daddr,
            daddr: self.vip,
            sport: key.dport,
            dport: self.vport,
            proto: key.proto,
        }
    }
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
                        local: s.local(),
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

    /// Finds the return entry for a reply with five-tuple `key`.
    #[inline]
    pub fn lookup_return(&self, key: &FlowKey) -> Option<Return> {
        let home = key.hash() as usize & self.mask;
        for i in 0..PROBE_WINDOW {
            let s = &self.slots[(home + i) & self.mask];
            if s.is_empty() {
                return None;
            }
            if s.matches_return(key) {
                return return_of(s);
            }
        }
        None
    }

    /// The live flow entry a return entry found under `key` points back to, if it still
    /// exists with the same real; else the return entry is stale.
    #[inline]
    pub fn flow_of(&self, key: &FlowKey, r: &Return, now: u32) -> Option<(SlotRef, Flow)> {
        self.lookup(&r.flow_key(key), now)
            .filter(|(_, f)| f.real == r.real)
    }

    /// Inserts (or replaces) the return entry for replies with five-tuple `key`. Evicts as
    /// [`FlowTable::insert`] does when the probe window is full; returns the flow entry it
    /// displaced, if it had to displace one.
    pub fn insert_return(&mut self, key: &FlowKey, r: &Return, now: u32) -> Option<Overwritten> {
        let m = r.client_mac.0;
        let entry = Slot {
            saddr: key.saddr,
            daddr: key.daddr,
            sport: key.sport,
            dport: key.dport,
            proto: key.proto,
            state: RETURN,
            vport: r.vport,
            real: r.real.0.get(),
            expires: u32::from(u16::from_be_bytes([m[4], m[5]])),
            template: r.vip,
            mac_head: u32::from_be_bytes([m[0], m[1], m[2], m[3]]),
        };
        self.put(key, entry, now, Slot::matches_return)
    }

    /// Inserts (or replaces) the flow for `key`. Returns the entry it overwrote, if any, so
    /// the caller can undo that entry's connection counts; `Overwritten::evicted` is true when
    /// a live, unrelated flow had to make room (table full within the probe window).
    /// `template`: the persistence template slot the flow is a child of, if any; `local`: a
    /// FullNAT flow's local address and port.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &mut self,
        key: &FlowKey,
        real: RealId,
        state: TcpState,
        expires: u32,
        now: u32,
        template: Option<u32>,
        local: Option<LocalPort>,
    ) -> Option<Overwritten> {
        let tmpl = template.map_or(0, |t| t + 1);
        let mut entry = slot(key, real, state, expires, tmpl);
        if let Some(l) = local {
            entry.mac_head = l.addr;
            entry.vport = l.port;
        }
        self.put(key, entry, now, Slot::matches)
    }

    /// Writes `entry` where an entry `same` as it is, or in the first free slot of its probe
    /// window, or over the window's lowest-ranked entry. Returns the flow entry it replaced.
    fn put(
        &mut self,
        key: &FlowKey,
        entry: Slot,
        now: u32,
        same: fn(&Slot, &FlowKey) -> bool,
    ) -> Option<Overwritten> {
        let home = key.hash() as usize & self.mask;
        let mut victim = home;
        let mut victim_rank = (u8::MAX, i64::MAX);
        for i in 0..PROBE_WINDOW {
            let idx = (home + i) & self.mask;
            let s = self.slots[idx];
            if s.is_empty() {
                self.len += 1;
                self.slots[idx] = entry;
                return None;
            }
            if same(&s, key) {
                self.slots[idx] = entry;
                return overwritten(&s, false);
            }
            let rank = eviction_rank(&s, now);
            if rank < victim_rank {
                victim_rank = rank;
                victim = idx;
            }
        }
        let old = self.slots[victim];
        self.slots[victim] = entry;
        let evicted = victim_rank.1 > 0;
        if evicted {
            self.evictions += 1;
        }
        overwritten(&old, evicted)
    }

    /// Reaps expired entries among the next `budget` slots, reporting each flow entry to
    /// `on_remove`. Returns how many were removed.
    pub fn expire_some(
        &mut self,
        now: u32,
        budget: usize,
        mut on_remove: impl FnMut(Overwritten),
    ) -> usize {
        let mut removed = 0;
        let mut examined = 0;
        while examined < budget.min(self.slots.len()) {
            let idx = self.expire_cursor;
            let s = self.slots[idx];
            let stale = if s.is_return() {
                return_of(&s).is_none_or(|r| self.flow_of(&s.key(), &r, now).is_none())
            } else {
                reached(now, s.expires)
            };
            if !s.is_empty() && stale {
                if let Some(o) = overwritten(&s, false) {
                    on_remove(o);
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
            if s.is_empty() || s.is_return() || reached(now, s.expires) {
                continue;
            }
            if let Some(id) = std::num::NonZeroU32::new(s.real) {
                f(
                    &s.key(),
                    &Flow {
                        real: RealId(id),
                        state: TcpState::from_u8(s.state),
                        expires: s.expires,
                        local: s.local(),
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
    if s.is_return() {
        // Lives as long as its flow: ranked with the established flows, last among them.
        return (2, i64::MAX);
    }
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
    /// A FullNAT flow's local port, to give back.
    pub local: Option<LocalPort>,
}

/// The flow entry `s` was, if it was one (a return entry holds no connection counts).
fn overwritten(s: &Slot, evicted: bool) -> Option<Overwritten> {
    if s.is_return() {
        return None;
    }
    Some(Overwritten {
        real: RealId(std::num::NonZeroU32::new(s.real)?),
        state: TcpState::from_u8(s.state),
        evicted,
        template: s.template.checked_sub(1),
        local: s.local(),
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
        vport: 0,
        real: real.0.get(),
        expires,
        template,
        mac_head: 0,
    }
}

fn return_of(s: &Slot) -> Option<Return> {
    let h = s.mac_head.to_be_bytes();
    let t = (s.expires as u16).to_be_bytes();
    Some(Return {
        real: RealId(std::num::NonZeroU32::new(s.real)?),
        vip: s.template,
        vport: s.vport,
        client_mac: MacAddr([h[0], h[1], h[2], h[3], t[0], t[1]]),
    })
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
        t.insert(&key(1), rid(7), TcpState::SynRecv, 60_000, 0, None, None);
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
                None,
            );
        }
        assert_eq!(t.len(), 2000);
        assert_eq!(t.evictions, 0);
        let mut removed = 0;
        // One sweep examines every slot once plus once more per removal.
        for _ in 0..((4096 + 1000) / 64 + 1) {
            let r = t.expire_some(200, 64, |_| {});
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
            t.insert(
                &key(i),
                rid(1),
                TcpState::Established,
                1000 + i,
                0,
                None,
                None,
            );
        }
        assert_eq!(t.len(), 64, "never grows");
        assert!(t.evictions > 0);
        // The newest flow is always findable right after its insert.
        t.insert(&key(5000), rid(2), TcpState::SynRecv, 5000, 0, None, None);
        assert_eq!(t.lookup(&key(5000), 1).unwrap().1.real, rid(2));
    }

    #[test]
    fn a_syn_flood_evicts_embryonic_flows_before_established_ones() {
        let mut t = FlowTable::new(64).unwrap();
        // Established flows with a short timeout (`--set 10 …`), shorter than SYN_RECV's.
        for i in 0..16 {
            t.insert(
                &key(i),
                rid(1),
                TcpState::Established,
                10_000,
                0,
                None,
                None,
            );
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
            t.insert(
                &k,
                rid(2),
                TcpState::SynRecv,
                1000 + 60_000,
                1000,
                None,
                None,
            );
        }
        assert!(t.evictions > 4000, "{}", t.evictions);
        for i in 0..16 {
            assert!(
                t.lookup(&key(i), 1000).is_some(),
                "established flow {i} survived the flood"
            );
        }
    }

    fn reply_key(i: u32) -> FlowKey {
        // The real 10.0.0.11:8080 answering key(i)'s client.
        let k = key(i);
        FlowKey {
            saddr: 0x0a00_000b,
            daddr: k.saddr,
            sport: 8080,
            dport: k.sport,
            proto: 6,
        }
    }

    fn ret(real: u32) -> Return {
        Return {
            real: rid(real),
            vip: 0x0a00_0064,
            vport: 80,
            client_mac: MacAddr([2, 0, 0, 0, 1, 0x2a]),
        }
    }

    #[test]
    fn a_return_entry_leads_back_to_its_flow_and_lives_as_long_as_it() {
        let mut t = FlowTable::new(1024).unwrap();
        t.insert(&key(1), rid(7), TcpState::SynRecv, 60_000, 0, None, None);
        assert_eq!(t.insert_return(&reply_key(1), &ret(7), 0), None);
        let r = t.lookup_return(&reply_key(1)).unwrap();
        assert_eq!(r, ret(7));
        assert_eq!(r.flow_key(&reply_key(1)), key(1));
        assert_eq!(t.flow_of(&reply_key(1), &r, 10).unwrap().1.real, rid(7));
        // Lookups of one kind never find the other.
        assert!(t.lookup(&reply_key(1), 10).is_none());
        assert!(t.lookup_return(&key(1)).is_none());
        // Listings show connections only.
        let mut n = 0;
        t.for_each_live(10, |_, _| n += 1);
        assert_eq!(n, 1);
        // The flow is rescheduled to another real: the return entry is stale at once.
        t.insert(&key(1), rid(8), TcpState::SynRecv, 60_000, 0, None, None);
        assert!(t.flow_of(&reply_key(1), &r, 10).is_none());
        // The flow expires: expiry reaps both, the return entry with it.
        assert_eq!(t.len(), 2);
        let mut removed = Vec::new();
        t.expire_some(60_000, 2048, |gone| removed.push(gone.real));
        assert_eq!(removed, vec![rid(8)], "only the flow held counts");
        assert_eq!(t.len(), 0);
        assert!(t.lookup_return(&reply_key(1)).is_none());
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
            None,
        );
        assert!(t.lookup(&key(1), now.wrapping_add(50)).is_some());
        assert!(t.lookup(&key(1), now.wrapping_add(100)).is_none());
    }
}
