//! `wrr`: weighted round robin by gcd stepping (ip_vs_wrr.c).
//!
//! `di` = gcd of the weights > 0, `mw` = max weight − (di − 1), `cw` starts at `mw`. Walk the
//! list from the saved position and take the first destination with `weight >= cw`; each time
//! the walk passes the end of the list, `cw -= di`, and when `cw <= 0` it restarts at `mw`.
//! Weights 4, 3, 2 give A A B A B C A B C.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Dest;
use super::{Schedule, usable};
use crate::conns::ConnCounts;
use crate::flow::FlowKey;

/// Position `u32::MAX` = the list head (before the first destination).
const HEAD: u32 = u32::MAX;

#[derive(Debug)]
pub struct WeightedRoundRobin {
    /// `(position << 32) | cw as u32`, advanced by CAS.
    state: AtomicU64,
    di: i64,
    mw: i64,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl WeightedRoundRobin {
    pub fn new(reals: &[Dest]) -> WeightedRoundRobin {
        let di = reals
            .iter()
            .filter(|r| r.weight > 0)
            .fold(0, |g, r| gcd(r.weight, g))
            .max(1);
        let max = reals.iter().map(|r| r.weight).max().unwrap_or(0);
        let mw = if max == 0 {
            0
        } else {
            i64::from(max) - (i64::from(di) - 1)
        };
        WeightedRoundRobin {
            state: AtomicU64::new(pack(HEAD, mw)),
            di: i64::from(di),
            mw,
        }
    }

    /// The current weight `cw` after the last pick (for `uvs trace`'s explanation).
    pub fn current_weight(&self) -> i64 {
        unpack(self.state.load(Ordering::Relaxed)).1
    }

    fn step(&self, pos: u32, cw: i64, reals: &[Dest], conns: &ConnCounts) -> Option<(usize, i64)> {
        if self.mw == 0 || reals.is_empty() {
            return None;
        }
        let n = reals.len();
        let mut cw = if cw <= 0 || cw > self.mw { self.mw } else { cw };
        let mut i = if pos == HEAD { 0 } else { pos as usize + 1 };
        // Every destination at every cw level, at most: (mw / di + 1) passes over the list.
        let limit = (n + 1) * (self.mw / self.di + 2) as usize;
        for _ in 0..limit {
            if i >= n {
                cw -= self.di;
                if cw <= 0 {
                    cw = self.mw;
                }
                i = 0;
                continue;
            }
            let r = &reals[i];
            if usable(r, conns) && i64::from(r.weight) >= cw {
                return Some((i, cw));
            }
            i += 1;
        }
        None
    }
}

fn pack(pos: u32, cw: i64) -> u64 {
    (u64::from(pos) << 32) | u64::from(cw as u32)
}

fn unpack(v: u64) -> (u32, i64) {
    ((v >> 32) as u32, i64::from(v as u32 as i32))
}

impl Schedule for WeightedRoundRobin {
    fn pick(
        &self,
        reals: &[Dest],
        _flow: &FlowKey,
        conns: &ConnCounts,
        _now: u32,
    ) -> Option<usize> {
        let mut chosen = None;
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                let (pos, cw) = unpack(v);
                let (i, cw) = self.step(pos, cw, reals, conns)?;
                chosen = Some(i);
                Some(pack(i as u32, cw))
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

    fn sequence(weights: &[u32], n: usize) -> String {
        let reals = reals_with_weights(weights);
        let s = WeightedRoundRobin::new(&reals);
        (0..n)
            .map(|_| match s.pick(&reals, &key(), &ConnCounts::new(), 0) {
                Some(i) => (b'A' + i as u8) as char,
                None => '-',
            })
            .collect()
    }

    #[test]
    fn kernel_sequence_for_4_3_2() {
        assert_eq!(sequence(&[4, 3, 2], 18), "AABABCABCAABABCABC");
    }

    #[test]
    fn gcd_stepping_and_zero_weights() {
        assert_eq!(sequence(&[2, 2], 4), "ABAB");
        assert_eq!(sequence(&[4, 2], 6), "AABAAB");
        assert_eq!(sequence(&[3, 0, 1], 8), "AAACAAAC");
        assert_eq!(sequence(&[0, 0], 2), "--");
    }

    #[test]
    fn distribution_follows_weights() {
        let s = sequence(&[5, 1], 600);
        assert_eq!(s.matches('A').count(), 500);
        assert_eq!(s.matches('B').count(), 100);
    }
}
