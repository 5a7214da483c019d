//! `rr`: the next usable destination after the last one chosen, circularly
//! (ip_vs_rr.c: weight-0 and overloaded destinations are skipped).

use std::sync::atomic::{AtomicU32, Ordering};

use super::Dest;
use super::{Schedule, usable};
use crate::conns::ConnCounts;
use crate::flow::FlowKey;

/// Position of the last destination chosen; `u32::MAX` = none yet (the list head).
#[derive(Debug)]
pub struct RoundRobin {
    last: AtomicU32,
}

impl RoundRobin {
    pub fn new() -> RoundRobin {
        RoundRobin {
            last: AtomicU32::new(u32::MAX),
        }
    }
}

impl Default for RoundRobin {
    fn default() -> Self {
        RoundRobin::new()
    }
}

fn next_after(last: u32, reals: &[Dest], conns: &ConnCounts) -> Option<usize> {
    let n = reals.len();
    let start = if last == u32::MAX {
        0
    } else {
        last as usize + 1
    };
    (0..n)
        .map(|i| (start + i) % n)
        .find(|&i| usable(&reals[i], conns))
}

impl Schedule for RoundRobin {
    fn pick(
        &self,
        reals: &[Dest],
        _flow: &FlowKey,
        conns: &ConnCounts,
        _now: u32,
    ) -> Option<usize> {
        let mut chosen = None;
        // CAS so that concurrent workers each take the next one in turn.
        let _ = self
            .last
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                chosen = next_after(last, reals, conns);
                chosen.map(|i| i as u32)
            });
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::test_util::reals_with_weights;

    fn key() -> FlowKey {
        FlowKey {
            saddr: 1,
            daddr: 2,
            sport: 3,
            dport: 80,
            proto: 6,
        }
    }

    #[test]
    fn cycles_in_order_and_skips_weight_zero() {
        let reals = reals_with_weights(&[1, 0, 5]);
        let rr = RoundRobin::new();
        let seq: Vec<usize> = (0..6)
            .map(|_| rr.pick(&reals, &key(), &ConnCounts::new(), 0).unwrap())
            .collect();
        assert_eq!(seq, [0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn nothing_usable() {
        let rr = RoundRobin::new();
        assert_eq!(
            rr.pick(&reals_with_weights(&[0, 0]), &key(), &ConnCounts::new(), 0),
            None
        );
        assert_eq!(rr.pick(&[], &key(), &ConnCounts::new(), 0), None);
    }
}
