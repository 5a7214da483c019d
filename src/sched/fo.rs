//! `fo`: weighted failover: the usable destination with the highest weight, the earliest
//! on ties (ip_vs_fo.c).

use super::Dest;
use super::{Schedule, usable};
use crate::conns::ConnCounts;
use crate::flow::FlowKey;

#[derive(Debug, Default)]
pub struct WeightedFailover;

impl Schedule for WeightedFailover {
    fn pick(
        &self,
        reals: &[Dest],
        _flow: &FlowKey,
        conns: &ConnCounts,
        _now: u32,
    ) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        for (i, r) in reals.iter().enumerate() {
            if usable(r, conns) && best.is_none_or(|(_, w)| r.weight > w) {
                best = Some((i, r.weight));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conns::Thresholds;
    use crate::sched::test_util::flow;
    use crate::sched::test_util::reals_with_weights;

    #[test]
    fn highest_weight_then_fails_over() {
        let reals = reals_with_weights(&[5, 10, 10, 1]);
        let c = ConnCounts::new();
        c.set(reals[1].id, 9999, 0); // load is irrelevant
        assert_eq!(
            WeightedFailover.pick(&reals, &flow(1, 2, 3), &c, 0),
            Some(1)
        );
        c.bind(reals[1].id, true, Thresholds { upper: 1, lower: 0 });
        assert_eq!(
            WeightedFailover.pick(&reals, &flow(1, 2, 3), &c, 0),
            Some(2)
        );
        let reals = reals_with_weights(&[0, 0]);
        assert_eq!(WeightedFailover.pick(&reals, &flow(1, 2, 3), &c, 0), None);
    }
}
