//! Statistics as ipvsadm shows them: totals since start or the last `-Z`, and rates estimated
//! the way IPVS does (ip_vs_est.c): every 2 s, per counter, `avg += (rate − avg) / 4` in fixed
//! point (connections and packets scaled by 2^10 per second, bytes by 2^5), read back with
//! rounding. Zeroing keeps a baseline instead of touching the workers' counters, which have a
//! single writer each.

use std::collections::HashMap;

use crate::model::RealId;

/// IPVS's per-service and per-real counters (`struct ip_vs_kstats`), as `--stats` shows
/// them; `--rate` shows the same fields per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub conns: u64,
    pub in_pkts: u64,
    pub out_pkts: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

/// Estimation period, as the kernel's estimator timer.
pub const PERIOD_SECS: u64 = 2;

#[derive(Clone, Copy, Debug, Default)]
struct Estimator {
    last: Stats,
    /// Scaled averages: cps and pps × 2^10, bps × 2^5.
    cps: i64,
    inpps: i64,
    outpps: i64,
    inbps: i64,
    outbps: i64,
}

impl Estimator {
    fn update(&mut self, now: Stats) {
        // Over 2 s: per-second rate × 2^10 = delta × 2^9; bytes: × 2^5 = delta × 2^4.
        let step = |avg: &mut i64, delta: u64, shift: u32| {
            let rate = (delta as i64) << shift;
            *avg += (rate - *avg) >> 2;
        };
        step(&mut self.cps, now.conns.saturating_sub(self.last.conns), 9);
        step(
            &mut self.inpps,
            now.in_pkts.saturating_sub(self.last.in_pkts),
            9,
        );
        step(
            &mut self.outpps,
            now.out_pkts.saturating_sub(self.last.out_pkts),
            9,
        );
        step(
            &mut self.inbps,
            now.in_bytes.saturating_sub(self.last.in_bytes),
            4,
        );
        step(
            &mut self.outbps,
            now.out_bytes.saturating_sub(self.last.out_bytes),
            4,
        );
        self.last = now;
    }

    fn rates(&self) -> Stats {
        let down = |v: i64, round: i64, shift: u32| ((v.max(0) + round) >> shift) as u64;
        Stats {
            conns: down(self.cps, 0x1FF, 10),
            in_pkts: down(self.inpps, 0x1FF, 10),
            out_pkts: down(self.outpps, 0x1FF, 10),
            in_bytes: down(self.inbps, 0xF, 5),
            out_bytes: down(self.outbps, 0xF, 5),
        }
    }
}

fn minus(a: Stats, b: Stats) -> Stats {
    Stats {
        conns: a.conns.saturating_sub(b.conns),
        in_pkts: a.in_pkts.saturating_sub(b.in_pkts),
        out_pkts: a.out_pkts.saturating_sub(b.out_pkts),
        in_bytes: a.in_bytes.saturating_sub(b.in_bytes),
        out_bytes: a.out_bytes.saturating_sub(b.out_bytes),
    }
}

#[derive(Default)]
pub struct StatsKeeper {
    baselines: HashMap<RealId, Stats>,
    estimators: HashMap<RealId, Estimator>,
}

impl StatsKeeper {
    /// Totals since start or the last zeroing, from the raw (monotonic) sums.
    pub fn shown(&self, id: RealId, raw: Stats) -> Stats {
        minus(raw, self.baselines.get(&id).copied().unwrap_or_default())
    }

    pub fn rates(&self, id: RealId) -> Stats {
        self.estimators
            .get(&id)
            .map(Estimator::rates)
            .unwrap_or_default()
    }

    pub fn zero(&mut self, id: RealId, raw: Stats) {
        self.baselines.insert(id, raw);
    }

    /// One estimator period: `reals` are every configured real with its raw sums. Reals no
    /// longer configured are forgotten.
    pub fn tick(&mut self, reals: &[(RealId, Stats)]) {
        let mut next = HashMap::with_capacity(reals.len());
        for (id, raw) in reals {
            let mut e = self.estimators.get(id).copied().unwrap_or(Estimator {
                last: *raw,
                ..Estimator::default()
            });
            e.update(*raw);
            next.insert(*id, e);
        }
        self.estimators = next;
        self.baselines
            .retain(|id, _| reals.iter().any(|(r, _)| r == id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn id() -> RealId {
        RealId(NonZeroU32::MIN)
    }

    #[test]
    fn steady_rate_converges_like_the_kernel_estimator() {
        let mut k = StatsKeeper::default();
        let mut raw = Stats::default();
        k.tick(&[(id(), raw)]);
        // Error shrinks by 3/4 per period: 80 periods (160 s) is far past convergence.
        for _ in 0..80 {
            // 100 conns/s, 1000 pkts/s, 64000 bytes/s over each 2 s period.
            raw.conns += 200;
            raw.in_pkts += 2000;
            raw.in_bytes += 128_000;
            k.tick(&[(id(), raw)]);
        }
        let r = k.rates(id());
        assert_eq!(
            (r.conns, r.in_pkts, r.in_bytes, r.out_pkts),
            (100, 1000, 64000, 0)
        );
    }

    #[test]
    fn first_period_is_a_quarter_of_the_rate() {
        let mut k = StatsKeeper::default();
        k.tick(&[(id(), Stats::default())]);
        k.tick(&[(
            id(),
            Stats {
                conns: 800,
                ..Stats::default()
            },
        )]);
        assert_eq!(k.rates(id()).conns, 100, "W = 1/4 of 400 conns/s");
    }

    #[test]
    fn zeroing_uses_a_baseline() {
        let mut k = StatsKeeper::default();
        let raw = Stats {
            conns: 5,
            in_pkts: 50,
            ..Stats::default()
        };
        k.zero(id(), raw);
        assert_eq!(k.shown(id(), raw), Stats::default());
        let later = Stats {
            conns: 7,
            in_pkts: 60,
            ..Stats::default()
        };
        assert_eq!(k.shown(id(), later).conns, 2);
    }
}
