//! `wlc` (ipvsadm's default): the usable destination with the smallest overhead/weight,
//! compared as `loh × w > doh × wl` so that no division happens and ties stay with the
//! earliest (ip_vs_wlc.c). lblc and lblcr use the same rule over all destinations.

use super::Dest;
use super::{Schedule, usable};
use crate::conns::ConnCounts;
use crate::flow::FlowKey;

#[derive(Debug, Default)]
pub struct WeightedLeastConn;

/// Index of the weighted least-connection destination among `reals`, `None` if none is
/// usable. Weight 0 can never win the comparison; the kernel skips it when seeding.
pub(crate) fn weighted_least(reals: &[Dest], conns: &ConnCounts) -> Option<usize> {
    let mut least: Option<(usize, u64, u64)> = None;
    for (i, r) in reals.iter().enumerate() {
        if !usable(r, conns) {
            continue;
        }
        let oh = conns.overhead(r.id);
        let w = u64::from(r.weight);
        match least {
            None => least = Some((i, oh, w)),
            Some((_, loh, lw)) if loh * w > oh * lw => least = Some((i, oh, w)),
            Some(_) => {}
        }
    }
    least.map(|(i, _, _)| i)
}

impl Schedule for WeightedLeastConn {
    fn pick(
        &self,
        reals: &[Dest],
        _flow: &FlowKey,
        conns: &ConnCounts,
        _now: u32,
    ) -> Option<usize> {
        weighted_least(reals, conns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conns::Thresholds;
    use crate::sched::test_util::flow;
    use crate::sched::test_util::reals_with_weights;

    #[test]
    fn overhead_over_weight() {
        // A: 2 active = 512; B: 1 active 5 inactive = 261. Same weight: B.
        let reals = reals_with_weights(&[1, 1]);
        let c = ConnCounts::new();
        c.set(reals[0].id, 2, 0);
        c.set(reals[1].id, 1, 5);
        assert_eq!(
            WeightedLeastConn.pick(&reals, &flow(1, 2, 3), &c, 0),
            Some(1)
        );
        // A weight 2: 512/2 = 256 < 261.
        let reals = reals_with_weights(&[2, 1]);
        c.set(reals[0].id, 2, 0);
        c.set(reals[1].id, 1, 5);
        assert_eq!(
            WeightedLeastConn.pick(&reals, &flow(1, 2, 3), &c, 0),
            Some(0)
        );
    }

    #[test]
    fn ties_go_to_the_earliest_and_idle_fill_in_order() {
        let reals = reals_with_weights(&[1, 2, 3]);
        let c = ConnCounts::new();
        // All idle: 0*w > 0*w never holds, so the first wins.
        assert_eq!(
            WeightedLeastConn.pick(&reals, &flow(1, 2, 3), &c, 0),
            Some(0)
        );
        // 256/1 vs 512/2: equal, keep A.
        c.set(reals[0].id, 1, 0);
        c.set(reals[1].id, 2, 0);
        c.set(reals[2].id, 4, 0);
        assert_eq!(
            WeightedLeastConn.pick(&reals, &flow(1, 2, 3), &c, 0),
            Some(0)
        );
    }

    #[test]
    fn sequence_with_live_counts_follows_weights() {
        // Each pick becomes one active connection: with weights 3 and 1 the kernel gives
        // A B A A A B A A ... (ties to the earliest).
        let reals = reals_with_weights(&[3, 1]);
        let c = ConnCounts::new();
        let mut s = String::new();
        for _ in 0..8 {
            let i = WeightedLeastConn
                .pick(&reals, &flow(1, 2, 3), &c, 0)
                .unwrap();
            c.bind(reals[i].id, true, Thresholds::default());
            s.push((b'A' + i as u8) as char);
        }
        // A(0,0) tie→A; A1/3 vs B0→B; A1/3 vs B1/1: A; A2/3 < 1: A; A3/3 = 1 tie→A;
        // A4/3 > 1: B; A4/3 < 2: A; A5/3 < 2: A.
        assert_eq!(s, "ABAAABAA");
    }

    #[test]
    fn weight_zero_and_overloaded_never_chosen() {
        let reals = reals_with_weights(&[0, 1]);
        let c = ConnCounts::new();
        c.set(reals[1].id, 1000, 0);
        assert_eq!(
            WeightedLeastConn.pick(&reals, &flow(1, 2, 3), &c, 0),
            Some(1)
        );
        c.bind(reals[1].id, true, Thresholds { upper: 1, lower: 0 });
        assert_eq!(WeightedLeastConn.pick(&reals, &flow(1, 2, 3), &c, 0), None);
    }
}
