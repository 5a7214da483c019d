//! `twos`: power of two choices (ip_vs_twos.c). Two random numbers in `[0, Σweight]` each walk
//! the usable destinations subtracting weights and stop at the first where they reach ≤ 0;
//! the second choice wins only if strictly less loaded (`w2 × oh1 > w1 × oh2`, overhead =
//! active×256 + inactive). Because 0 is a possible draw, the first usable destination gets
//! weight + 1 chances out of Σweight + 1, as in the kernel.
//!
//! Randomness: a splitmix64 counter in one atomic (fetch_add, no CAS loop); the kernel uses
//! its own PRNG, so only the distribution, not the sequence, can match it.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Dest;
use super::{Schedule, usable};
use crate::conns::ConnCounts;
use crate::flow::FlowKey;

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug)]
pub struct PowerOfTwo {
    state: AtomicU64,
}

impl Default for PowerOfTwo {
    fn default() -> Self {
        PowerOfTwo::new()
    }
}

impl PowerOfTwo {
    /// Seeded from the wall clock and the process id, so two directors do not draw alike.
    pub fn new() -> PowerOfTwo {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        PowerOfTwo::with_seed(nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// Deterministic draws (tests, reproducible labs).
    pub fn with_seed(seed: u64) -> PowerOfTwo {
        PowerOfTwo {
            state: AtomicU64::new(seed),
        }
    }

    /// Uniform in `[0, bound)` (bound ≥ 1), by multiply-shift of a 32-bit draw, as the
    /// kernel's `get_random_u32_below` does.
    fn below(&self, bound: u32) -> u32 {
        let mut z = self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((u64::from(z as u32) * u64::from(bound)) >> 32) as u32
    }

    /// The selection given the two draws (each in `[0, Σweight]`).
    fn choose(reals: &[Dest], conns: &ConnCounts, r1: u32, r2: u32) -> Option<usize> {
        let (mut r1, mut r2) = (i64::from(r1), i64::from(r2));
        let mut c1: Option<(usize, u64, u64)> = None;
        let mut c2: Option<(usize, u64, u64)> = None;
        for (i, r) in reals.iter().enumerate() {
            if !usable(r, conns) {
                continue;
            }
            let w = i64::from(r.weight);
            r1 -= w;
            r2 -= w;
            if r1 <= 0 && c1.is_none() {
                c1 = Some((i, u64::from(r.weight), conns.overhead(r.id)));
            }
            if r2 <= 0 && c2.is_none() {
                c2 = Some((i, u64::from(r.weight), conns.overhead(r.id)));
            }
            if c1.is_some() && c2.is_some() {
                break;
            }
        }
        let (i1, w1, oh1) = c1?;
        match c2 {
            Some((i2, w2, oh2)) if w2 * oh1 > w1 * oh2 => Some(i2),
            _ => Some(i1),
        }
    }
}

impl Schedule for PowerOfTwo {
    fn pick(
        &self,
        reals: &[Dest],
        _flow: &FlowKey,
        conns: &ConnCounts,
        _now: u32,
    ) -> Option<usize> {
        let total: u64 = reals
            .iter()
            .filter(|r| usable(r, conns))
            .map(|r| u64::from(r.weight))
            .sum();
        if total == 0 {
            return None;
        }
        // Σweight + 1 draws so that both ends are inclusive (the kernel's comment).
        let bound = u32::try_from(total + 1).unwrap_or(u32::MAX);
        let r1 = self.below(bound);
        let r2 = self.below(bound);
        Self::choose(reals, conns, r1, r2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conns::Thresholds;
    use crate::sched::test_util::flow;
    use crate::sched::test_util::reals_with_weights;

    #[test]
    fn draws_walk_the_weights_and_the_less_loaded_wins() {
        let reals = reals_with_weights(&[2, 3]);
        let c = ConnCounts::new();
        // r = 0..=2 → A (0 included), 3..=5 → B.
        assert_eq!(PowerOfTwo::choose(&reals, &c, 0, 2), Some(0));
        assert_eq!(PowerOfTwo::choose(&reals, &c, 3, 5), Some(1));
        // Equal load: choice 1 stays.
        assert_eq!(PowerOfTwo::choose(&reals, &c, 0, 5), Some(0));
        assert_eq!(PowerOfTwo::choose(&reals, &c, 5, 0), Some(1));
        // A: 256/2 = 128 per weight, B: 300/3 = 100 → B less loaded.
        c.set(reals[0].id, 1, 0);
        c.set(reals[1].id, 1, 44);
        assert_eq!(PowerOfTwo::choose(&reals, &c, 0, 5), Some(1));
        assert_eq!(PowerOfTwo::choose(&reals, &c, 5, 0), Some(1));
    }

    #[test]
    fn skips_unusable() {
        let reals = reals_with_weights(&[0, 1, 1]);
        let c = ConnCounts::new();
        c.bind(reals[1].id, true, Thresholds { upper: 1, lower: 0 });
        let s = PowerOfTwo::with_seed(7);
        for _ in 0..50 {
            assert_eq!(s.pick(&reals, &flow(1, 2, 3), &c, 0), Some(2));
        }
        assert_eq!(
            s.pick(&reals_with_weights(&[0]), &flow(1, 2, 3), &c, 0),
            None
        );
    }

    #[test]
    fn deterministic_with_a_seed_and_roughly_proportional() {
        let reals = reals_with_weights(&[1, 3]);
        let c = ConnCounts::new();
        let run = |seed| {
            let s = PowerOfTwo::with_seed(seed);
            (0..4000)
                .map(|_| s.pick(&reals, &flow(1, 2, 3), &c, 0).unwrap())
                .collect::<Vec<_>>()
        };
        let a = run(42);
        assert_eq!(a, run(42));
        assert_ne!(a, run(43));
        // No load: choice 1 always wins, and it is A for r in 0..=1 of 0..=4: 40%.
        let share_a = a.iter().filter(|&&i| i == 0).count();
        assert!((1400..1800).contains(&share_a), "{share_a}");
    }
}
