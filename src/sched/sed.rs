//! `sed`: shortest expected delay, the usable destination with the smallest
//! (active + 1)/weight; inactive connections are ignored (ip_vs_sed.c).

use super::Dest;
use super::{Schedule, usable};
use crate::conns::ConnCounts;
use crate::flow::FlowKey;

#[derive(Debug, Default)]
pub struct ShortestExpectedDelay;

/// (active + 1) / weight minimum by cross-multiplication, ties to the earliest; `idle_first`
/// makes it nq (return the first usable destination with no active connection at once).
pub(crate) fn expected_delay(
    reals: &[Dest],
    conns: &ConnCounts,
    idle_first: bool,
) -> Option<usize> {
    let mut least: Option<(usize, u64, u64)> = None;
    for (i, r) in reals.iter().enumerate() {
        if !usable(r, conns) {
            continue;
        }
        let active = conns.active(r.id);
        if idle_first && active == 0 {
            return Some(i);
        }
        let oh = u64::from(active) + 1;
        let w = u64::from(r.weight);
        match least {
            None => least = Some((i, oh, w)),
            Some((_, loh, lw)) if loh * w > oh * lw => least = Some((i, oh, w)),
            Some(_) => {}
        }
    }
    least.map(|(i, _, _)| i)
}

impl Schedule for ShortestExpectedDelay {
    fn pick(
        &self,
        reals: &[Dest],
        _flow: &FlowKey,
        conns: &ConnCounts,
        _now: u32,
    ) -> Option<usize> {
        expected_delay(reals, conns, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::test_util::flow;
    use crate::sched::test_util::reals_with_weights;

    #[test]
    fn ignores_inactive_and_weighs_active_plus_one() {
        let reals = reals_with_weights(&[1, 1]);
        let c = ConnCounts::new();
        c.set(reals[0].id, 1, 0);
        c.set(reals[1].id, 0, 1000);
        // (1+1)/1 vs (0+1)/1: B, whatever its inactive count.
        assert_eq!(
            ShortestExpectedDelay.pick(&reals, &flow(1, 2, 3), &c, 0),
            Some(1)
        );
        // Weights 3 and 1: A (2+1)/3 = 1 ties B (0+1)/1 → A.
        let reals = reals_with_weights(&[3, 1]);
        c.set(reals[0].id, 2, 0);
        c.set(reals[1].id, 0, 0);
        assert_eq!(
            ShortestExpectedDelay.pick(&reals, &flow(1, 2, 3), &c, 0),
            Some(0)
        );
        c.set(reals[0].id, 3, 0);
        assert_eq!(
            ShortestExpectedDelay.pick(&reals, &flow(1, 2, 3), &c, 0),
            Some(1)
        );
    }

    #[test]
    fn weight_zero_never_and_empty_none() {
        let reals = reals_with_weights(&[0, 2]);
        let c = ConnCounts::new();
        c.set(reals[1].id, 50, 0);
        assert_eq!(
            ShortestExpectedDelay.pick(&reals, &flow(1, 2, 3), &c, 0),
            Some(1)
        );
        assert_eq!(ShortestExpectedDelay.pick(&[], &flow(1, 2, 3), &c, 0), None);
    }
}
