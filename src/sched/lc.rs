//! `lc`: the usable destination with the smallest overhead (active×256 + inactive); weights
//! only matter in that 0 means quiesced (ip_vs_lc.c; its comment's `<<5` is stale, the code
//! shifts by 8).

use super::Dest;
use super::{Schedule, usable};
use crate::conns::ConnCounts;
use crate::flow::FlowKey;

#[derive(Debug, Default)]
pub struct LeastConn;

impl Schedule for LeastConn {
    fn pick(
        &self,
        reals: &[Dest],
        _flow: &FlowKey,
        conns: &ConnCounts,
        _now: u32,
    ) -> Option<usize> {
        let mut least: Option<(usize, u64)> = None;
        for (i, r) in reals.iter().enumerate() {
            if !usable(r, conns) {
                continue;
            }
            let oh = conns.overhead(r.id);
            // Strictly smaller only: ties stay with the earliest.
            if least.is_none_or(|(_, loh)| oh < loh) {
                least = Some((i, oh));
            }
        }
        least.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conns::Thresholds;
    use crate::sched::test_util::flow;
    use crate::sched::test_util::reals_with_weights;

    #[test]
    fn least_overhead_ignoring_weights() {
        let reals = reals_with_weights(&[1, 100, 1]);
        let c = ConnCounts::new();
        c.set(reals[0].id, 1, 0); // 256
        c.set(reals[1].id, 0, 300); // 300
        c.set(reals[2].id, 0, 255); // 255
        assert_eq!(LeastConn.pick(&reals, &flow(1, 2, 3), &c, 0), Some(2));
        c.set(reals[2].id, 0, 256);
        assert_eq!(
            LeastConn.pick(&reals, &flow(1, 2, 3), &c, 0),
            Some(0),
            "tie: earliest"
        );
    }

    #[test]
    fn skips_weight_zero_and_overloaded() {
        let reals = reals_with_weights(&[0, 1, 1]);
        let c = ConnCounts::new();
        c.set(reals[1].id, 5, 0);
        c.set(reals[2].id, 9, 0);
        assert_eq!(LeastConn.pick(&reals, &flow(1, 2, 3), &c, 0), Some(1));
        c.bind(reals[1].id, true, Thresholds { upper: 1, lower: 0 });
        assert_eq!(LeastConn.pick(&reals, &flow(1, 2, 3), &c, 0), Some(2));
        assert_eq!(
            LeastConn.pick(&reals_with_weights(&[0]), &flow(1, 2, 3), &c, 0),
            None
        );
    }
}
