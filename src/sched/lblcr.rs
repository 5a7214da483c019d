//! `lblcr`: locality-based least-connection with replication (ip_vs_lblcr.c). Each
//! destination address has a set of reals; a flow goes to the set's weighted-least member,
//! unless that member is overloaded in lblc's sense (more active than its weight while
//! some real is below half its weight), in which case the wlc choice over all reals is
//! used and added to the set. A set of more than one member that has not changed for
//! `lblcr_expiration` (24 h) loses its most loaded member.
//!
//! The set is an ordered list, most recently added first (the kernel adds at the list head,
//! and the order decides ties), packed as one byte per member into one atomic word.
//! Limits, documented: up to 8 members per set (adding a 9th drops the oldest one, where
//! the kernel would keep it), and up to 255 reals per service (beyond that the service is
//! scheduled by plain wlc without a cache).

use super::Dest;
use super::Schedule;
use super::lbl_table::{DEFAULT_EXPIRATION_MS, DestTable, Entry};
use super::lblc::lbl_overloaded;
use super::wlc::weighted_least;
use crate::conns::ConnCounts;
use crate::flow::FlowKey;

pub const MAX_MEMBERS: usize = 8;
pub const MAX_REALS: usize = 255;

#[derive(Debug)]
pub struct LocalityReplicated {
    table: DestTable,
}

impl Default for LocalityReplicated {
    fn default() -> Self {
        LocalityReplicated::new()
    }
}

/// Members (real positions), most recent first.
fn members(set: u64) -> impl Iterator<Item = usize> {
    set.to_le_bytes()
        .into_iter()
        .take_while(|&b| b != 0)
        .map(|b| usize::from(b) - 1)
}

fn size(set: u64) -> usize {
    members(set).count()
}

fn push_front(set: u64, i: usize) -> u64 {
    // Shifting left drops the oldest member when the set is full.
    (set << 8) | (i as u64 + 1)
}

fn remove(set: u64, i: usize) -> u64 {
    let mut out = 0u64;
    let mut shift = 0;
    for m in members(set).filter(|&m| m != i) {
        out |= (m as u64 + 1) << shift;
        shift += 8;
    }
    out
}

/// `ip_vs_dest_set_min`: the first member with a weight and no threshold overload seeds,
/// later members replace it only when strictly less loaded per weight.
fn set_min(set: u64, reals: &[Dest], conns: &ConnCounts) -> Option<usize> {
    let mut least: Option<(usize, u64, u64)> = None;
    for i in members(set) {
        let r = &reals[i];
        if conns.overloaded(r.id) {
            continue;
        }
        let (oh, w) = (conns.overhead(r.id), u64::from(r.weight));
        match least {
            None if w > 0 => least = Some((i, oh, w)),
            Some((_, loh, lw)) if loh * w > oh * lw => least = Some((i, oh, w)),
            _ => {}
        }
    }
    least.map(|(i, _, _)| i)
}

/// `ip_vs_dest_set_max`: the most loaded member per weight, among those with a weight
/// (threshold overload does not matter here); ties stay with the most recent.
fn set_max(set: u64, reals: &[Dest], conns: &ConnCounts) -> Option<usize> {
    let mut most: Option<(usize, u64, u64)> = None;
    for i in members(set) {
        let r = &reals[i];
        let (oh, w) = (conns.overhead(r.id), u64::from(r.weight));
        if w == 0 {
            continue;
        }
        match most {
            None => most = Some((i, oh, w)),
            Some((_, moh, mw)) if moh * w < oh * mw => most = Some((i, oh, w)),
            _ => {}
        }
    }
    most.map(|(i, _, _)| i)
}

impl LocalityReplicated {
    pub fn new() -> LocalityReplicated {
        LocalityReplicated::with_expiration(DEFAULT_EXPIRATION_MS)
    }

    /// `expiration_ms`: the `lblcr_expiration` sysctl.
    pub fn with_expiration(expiration_ms: u32) -> LocalityReplicated {
        LocalityReplicated {
            table: DestTable::new(expiration_ms),
        }
    }

    fn hit(&self, e: Entry, reals: &[Dest], conns: &ConnCounts, now: u32) -> Option<usize> {
        self.table.touch(e, now);
        let mut set = e.value;
        let dest = set_min(set, reals, conns);
        // `time_after(now, lastmod + expiration)`: strictly after.
        let stale = now.wrapping_sub(
            self.table
                .lastmod(e)
                .wrapping_add(self.table.expiration_ms()),
        ) as i32
            > 0;
        if size(set) > 1 && stale {
            if let Some(m) = set_max(set, reals, conns) {
                let shrunk = remove(set, m);
                if self
                    .table
                    .update(Entry { value: set, ..e }, shrunk, Some(now))
                {
                    set = shrunk;
                }
            }
        }
        if let Some(d) = dest
            && !lbl_overloaded(&reals[d], reals, conns)
        {
            return Some(d);
        }
        let d = weighted_least(reals, conns)?;
        if !members(set).any(|m| m == d) {
            self.table
                .update(Entry { value: set, ..e }, push_front(set, d), Some(now));
        }
        Some(d)
    }

    pub(crate) fn pick_at(
        &self,
        reals: &[Dest],
        flow: &FlowKey,
        conns: &ConnCounts,
        now: u32,
    ) -> Option<usize> {
        if reals.len() > MAX_REALS {
            return weighted_least(reals, conns);
        }
        if let Some(e) = self.table.get(flow.daddr, now) {
            return self.hit(e, reals, conns, now);
        }
        let d = weighted_least(reals, conns)?;
        self.table.insert(flow.daddr, push_front(0, d), now);
        Some(d)
    }
}

impl Schedule for LocalityReplicated {
    fn pick(&self, reals: &[Dest], flow: &FlowKey, conns: &ConnCounts, now: u32) -> Option<usize> {
        self.pick_at(reals, flow, conns, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::test_util::flow;
    use crate::sched::test_util::reals_with_weights;

    const DST: u32 = 0x0a09_0001;

    fn set_of(s: &LocalityReplicated, now: u32) -> Vec<usize> {
        members(s.table.get(DST, now).unwrap().value).collect()
    }

    #[test]
    fn packed_set_keeps_order_and_limit() {
        let mut set = 0;
        for i in 0..10 {
            set = push_front(set, i);
        }
        assert_eq!(members(set).collect::<Vec<_>>(), [9, 8, 7, 6, 5, 4, 3, 2]);
        assert_eq!(
            members(remove(set, 5)).collect::<Vec<_>>(),
            [9, 8, 7, 6, 4, 3, 2]
        );
        assert_eq!(size(remove(push_front(0, 0), 0)), 0);
    }

    #[test]
    fn set_grows_on_overload_and_shrinks_after_expiration() {
        let reals = reals_with_weights(&[1, 1, 4]);
        let c = ConnCounts::new();
        let s = LocalityReplicated::with_expiration(1000);
        // Idle: wlc → A; the set is {A}.
        assert_eq!(s.pick_at(&reals, &flow(1, DST, 1), &c, 0), Some(0));
        assert_eq!(set_of(&s, 0), [0]);
        // A: 2 active > weight 1, and C has 0*2 < 4: overloaded → wlc over all:
        // B 0/1 ties C 0/4 → B, added at the head.
        c.set(reals[0].id, 2, 0);
        assert_eq!(s.pick_at(&reals, &flow(2, DST, 1), &c, 10), Some(1));
        assert_eq!(set_of(&s, 10), [1, 0]);
        // B fine: the set's least loaded (B 0) serves.
        assert_eq!(s.pick_at(&reals, &flow(3, DST, 1), &c, 20), Some(1));
        // Set unchanged since t=10; at t=1011 (strictly after 10+1000) its most loaded
        // member (A: 512/1) is dropped, and B (least loaded) still serves.
        assert_eq!(s.pick_at(&reals, &flow(4, DST, 1), &c, 1010), Some(1));
        assert_eq!(set_of(&s, 1010), [1, 0]);
        assert_eq!(s.pick_at(&reals, &flow(4, DST, 1), &c, 1011), Some(1));
        assert_eq!(set_of(&s, 1011), [1]);
    }

    #[test]
    fn ties_in_the_set_go_to_the_most_recent_member() {
        let reals = reals_with_weights(&[1, 1, 1]);
        let c = ConnCounts::new();
        let s = LocalityReplicated::new();
        assert_eq!(s.pick_at(&reals, &flow(1, DST, 1), &c, 0), Some(0));
        // A overloaded (2 > 1, B light): wlc → B (B 0 < C? tie → B), set [B, A].
        c.set(reals[0].id, 2, 0);
        assert_eq!(s.pick_at(&reals, &flow(1, DST, 1), &c, 0), Some(1));
        // Now A and B both idle: equal load, the head (B, most recent) wins, unlike wlc.
        c.set(reals[0].id, 0, 0);
        assert_eq!(s.pick_at(&reals, &flow(1, DST, 1), &c, 0), Some(1));
    }

    #[test]
    fn nothing_usable_and_too_many_reals() {
        let s = LocalityReplicated::new();
        let c = ConnCounts::new();
        assert_eq!(
            s.pick_at(&reals_with_weights(&[0, 0]), &flow(1, DST, 1), &c, 0),
            None
        );
        let many = reals_with_weights(&[1; 300]);
        assert_eq!(s.pick_at(&many, &flow(1, DST, 1), &c, 0), Some(0));
        assert!(s.table.get(DST, 0).is_none(), "not cached beyond MAX_REALS");
    }
}
