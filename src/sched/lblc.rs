//! `lblc`: locality-based least-connection (ip_vs_lblc.c). Each destination address is
//! remembered with the real it was sent to, and keeps going there while that real has a
//! weight and is not "overloaded" in this scheduler's own sense: more active connections
//! than its weight while some real has fewer than half its weight active. Otherwise the
//! wlc choice over all reals replaces the entry. Like the kernel, a cached real is used even
//! when its connection-threshold (`-x`) overload flag is set; only the wlc choice skips it.
//!
//! Entries unused for 24 h (`lblc_expiration`) are forgotten; see `lbl_table` for the fixed
//! table that replaces the kernel's timer-trimmed hash.

use super::Dest;
use super::Schedule;
use super::lbl_table::{DEFAULT_EXPIRATION_MS, DestTable};
use super::wlc::weighted_least;
use crate::conns::ConnCounts;
use crate::flow::FlowKey;

#[derive(Debug)]
pub struct LocalityLeastConn {
    table: DestTable,
}

impl Default for LocalityLeastConn {
    fn default() -> Self {
        LocalityLeastConn::new()
    }
}

/// The lblc/lblcr notion of overload: `dest` has more active connections than its weight and
/// some real (any, even one that is not usable) has fewer than half of its weight active.
pub(crate) fn lbl_overloaded(dest: &Dest, reals: &[Dest], conns: &ConnCounts) -> bool {
    conns.active(dest.id) > dest.weight
        && reals
            .iter()
            .any(|d| u64::from(conns.active(d.id)) * 2 < u64::from(d.weight))
}

impl LocalityLeastConn {
    pub fn new() -> LocalityLeastConn {
        LocalityLeastConn::with_expiration(DEFAULT_EXPIRATION_MS)
    }

    /// `expiration_ms`: the `lblc_expiration` sysctl.
    pub fn with_expiration(expiration_ms: u32) -> LocalityLeastConn {
        LocalityLeastConn {
            table: DestTable::new(expiration_ms),
        }
    }

    pub(crate) fn pick_at(
        &self,
        reals: &[Dest],
        flow: &FlowKey,
        conns: &ConnCounts,
        now: u32,
    ) -> Option<usize> {
        let cached = self.table.get(flow.daddr, now);
        if let Some(e) = cached {
            self.table.touch(e, now);
            let i = (e.value as usize).wrapping_sub(1);
            if let Some(r) = reals.get(i)
                && r.weight > 0
                && !lbl_overloaded(r, reals, conns)
            {
                return Some(i);
            }
        }
        let dest = weighted_least(reals, conns)?;
        let value = dest as u64 + 1;
        match cached {
            Some(e) if e.value == value => {}
            // The kernel replaces the entry (new lastuse); an in-place swap is the same.
            Some(e) => {
                if self.table.update(e, value, Some(now)) {
                    self.table.touch(e, now);
                }
            }
            None => {
                self.table.insert(flow.daddr, value, now);
            }
        }
        Some(dest)
    }
}

impl Schedule for LocalityLeastConn {
    fn pick(&self, reals: &[Dest], flow: &FlowKey, conns: &ConnCounts, now: u32) -> Option<usize> {
        self.pick_at(reals, flow, conns, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conns::Thresholds;
    use crate::sched::test_util::flow;
    use crate::sched::test_util::reals_with_weights;

    const DST: u32 = 0x0a09_0001;

    #[test]
    fn destination_sticks_until_lblc_overload() {
        let reals = reals_with_weights(&[2, 2]);
        let c = ConnCounts::new();
        let s = LocalityLeastConn::new();
        let t = Thresholds::default();
        // First: wlc over idle reals → A; every later flow to DST stays on A...
        let mut now = 1000;
        for n in 0..3 {
            let i = s.pick_at(&reals, &flow(n, DST, 1), &c, now).unwrap();
            assert_eq!(i, 0, "flow {n}");
            c.bind(reals[i].id, true, t);
            now += 10;
        }
        // ... though A now has 3 active > weight 2. But B has 0*2 < 2: A is overloaded in
        // lblc's sense, so wlc picks B and the entry moves.
        assert_eq!(s.pick_at(&reals, &flow(9, DST, 1), &c, now), Some(1));
        c.set(reals[1].id, 1, 0);
        // B: 1 active ≤ weight 2: sticks, even though A... (A 3 > 2 but irrelevant).
        assert_eq!(s.pick_at(&reals, &flow(10, DST, 1), &c, now), Some(1));
        // Another destination is scheduled on its own: wlc → A 3*256/2 vs B 256/2 → B.
        assert_eq!(s.pick_at(&reals, &flow(10, DST + 1, 1), &c, now), Some(1));
    }

    #[test]
    fn overloaded_but_no_light_real_keeps_the_entry() {
        let reals = reals_with_weights(&[1, 2]);
        let c = ConnCounts::new();
        let s = LocalityLeastConn::new();
        assert_eq!(s.pick_at(&reals, &flow(1, DST, 1), &c, 0), Some(0));
        c.set(reals[0].id, 5, 0); // 5 > 1
        c.set(reals[1].id, 1, 0); // 1*2 < 2? no: nobody is light
        assert_eq!(s.pick_at(&reals, &flow(1, DST, 1), &c, 0), Some(0));
        // A connection-threshold overload flag does not break a cache hit (kernel quirk)...
        c.bind(reals[0].id, true, Thresholds { upper: 1, lower: 0 });
        assert_eq!(s.pick_at(&reals, &flow(1, DST, 1), &c, 0), Some(0));
        // ... but weight 0 does.
        let mut quiesced = reals.clone();
        quiesced[0].weight = 0;
        assert_eq!(s.pick_at(&quiesced, &flow(1, DST, 1), &c, 0), Some(1));
    }

    #[test]
    fn entries_expire_after_unused_expiration() {
        let reals = reals_with_weights(&[1, 1]);
        let c = ConnCounts::new();
        let s = LocalityLeastConn::with_expiration(60_000);
        assert_eq!(s.pick_at(&reals, &flow(1, DST, 1), &c, 0), Some(0));
        c.set(reals[0].id, 1, 0);
        // Used at 59 s: still cached at 118 s (lastuse refreshed).
        assert_eq!(s.pick_at(&reals, &flow(1, DST, 1), &c, 59_000), Some(0));
        assert_eq!(s.pick_at(&reals, &flow(1, DST, 1), &c, 118_000), Some(0));
        // Unused for 60 s: forgotten, wlc picks the idle B.
        assert_eq!(s.pick_at(&reals, &flow(1, DST, 1), &c, 178_000), Some(1));
        assert_eq!(s.pick_at(&reals, &flow(1, DST, 1), &c, 178_001), Some(1));
    }

    #[test]
    fn nothing_usable() {
        let s = LocalityLeastConn::new();
        let reals = reals_with_weights(&[0]);
        assert_eq!(
            s.pick_at(&reals, &flow(1, DST, 1), &ConnCounts::new(), 0),
            None
        );
    }
}
