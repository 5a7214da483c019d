//! `ovf`: overflow: the highest-weight usable destination whose active connections do not
//! exceed its weight (`active <= weight`), so traffic spills to the next one when the
//! first is "full"; inactive connections are not counted (ip_vs_ovf.c).

use super::Dest;
use super::{Schedule, usable};
use crate::conns::ConnCounts;
use crate::flow::FlowKey;

#[derive(Debug, Default)]
pub struct Overflow;

impl Schedule for Overflow {
    fn pick(
        &self,
        reals: &[Dest],
        _flow: &FlowKey,
        conns: &ConnCounts,
        _now: u32,
    ) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        for (i, r) in reals.iter().enumerate() {
            if !usable(r, conns) || conns.active(r.id) > r.weight {
                continue;
            }
            if best.is_none_or(|(_, w)| r.weight > w) {
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
    fn overflows_when_active_exceeds_weight() {
        let reals = reals_with_weights(&[2, 3, 1]);
        let c = ConnCounts::new();
        let t = Thresholds::default();
        let mut s = String::new();
        for _ in 0..7 {
            let p = Overflow.pick(&reals, &flow(1, 2, 3), &c, 0);
            if let Some(i) = p {
                c.bind(reals[i].id, true, t);
            }
            s.push(crate::sched::test_util::letter(p));
        }
        // B takes 4 (0..=3 active allowed), then A takes 3, then C takes 2, then none: the
        // first 7 picks are B B B B A A A.
        assert_eq!(s, "BBBBAAA");
        // Inactive connections do not count.
        c.set(reals[0].id, 0, 100);
        assert_eq!(Overflow.pick(&reals, &flow(1, 2, 3), &c, 0), Some(0));
    }

    #[test]
    fn eventually_none() {
        let reals = reals_with_weights(&[1, 0]);
        let c = ConnCounts::new();
        c.set(reals[0].id, 2, 0);
        assert_eq!(Overflow.pick(&reals, &flow(1, 2, 3), &c, 0), None);
    }
}
