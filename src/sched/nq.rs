//! `nq`: never queue: the first usable destination with no active connection, at once;
//! otherwise the sed rule (ip_vs_nq.c).

use super::Dest;
use super::Schedule;
use super::sed::expected_delay;
use crate::conns::ConnCounts;
use crate::flow::FlowKey;

#[derive(Debug, Default)]
pub struct NeverQueue;

impl Schedule for NeverQueue {
    fn pick(
        &self,
        reals: &[Dest],
        _flow: &FlowKey,
        conns: &ConnCounts,
        _now: u32,
    ) -> Option<usize> {
        expected_delay(reals, conns, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conns::Thresholds;
    use crate::sched::test_util::flow;
    use crate::sched::test_util::reals_with_weights;

    #[test]
    fn first_idle_wins_even_against_a_better_ratio() {
        let reals = reals_with_weights(&[100, 1, 1]);
        let c = ConnCounts::new();
        c.set(reals[0].id, 1, 0); // 2/100, far better than 1/1
        c.set(reals[1].id, 0, 40); // idle (inactive ignored)
        assert_eq!(NeverQueue.pick(&reals, &flow(1, 2, 3), &c, 0), Some(1));
    }

    #[test]
    fn without_idle_behaves_as_sed_and_skips_unusable() {
        let reals = reals_with_weights(&[0, 1, 3]);
        let c = ConnCounts::new();
        c.set(reals[1].id, 1, 0); // 2/1
        c.set(reals[2].id, 2, 0); // 3/3
        assert_eq!(NeverQueue.pick(&reals, &flow(1, 2, 3), &c, 0), Some(2));
        // Idle but overloaded, or weight 0: not chosen.
        c.set(reals[2].id, 0, 0);
        c.bind(reals[2].id, false, Thresholds { upper: 1, lower: 0 });
        assert_eq!(NeverQueue.pick(&reals, &flow(1, 2, 3), &c, 0), Some(1));
    }
}
