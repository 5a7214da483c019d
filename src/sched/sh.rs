//! `sh`: source hashing: 256 buckets tiled in list order with each destination repeated
//! `weight` times (a weight-0 destination still takes one bucket), indexed by
//! `hash_32(sport_if_sh-port + saddr, 8)`. An unusable destination there means none, unless
//! sh-fallback, which probes bucket `(2·h + k) & 255` for k = 0..255 (the kernel adds the
//! offset to the hash once more; ip_vs_sh.c).

use super::Dest;
use super::{SchedFlags, Schedule, hash_32, hashed_sport, usable};
use crate::conns::ConnCounts;
use crate::flow::FlowKey;

const TAB_BITS: u32 = 8;
const TAB_SIZE: usize = 1 << TAB_BITS;
const TAB_MASK: u32 = TAB_SIZE as u32 - 1;
const NONE: u16 = u16::MAX;

#[derive(Debug)]
pub struct SourceHash {
    buckets: [u16; TAB_SIZE],
    fallback: bool,
    port: bool,
}

impl SourceHash {
    /// `sh-port`: the client's port is hashed with its address.
    pub fn hashes_port(&self) -> bool {
        self.port
    }

    pub fn new(reals: &[Dest], flags: SchedFlags) -> SourceHash {
        let mut buckets = [NONE; TAB_SIZE];
        if !reals.is_empty() {
            let (mut p, mut count) = (0usize, 0u32);
            for b in buckets.iter_mut() {
                *b = p as u16;
                count += 1;
                if count >= reals[p].weight {
                    p = (p + 1) % reals.len();
                    count = 0;
                }
            }
        }
        SourceHash {
            buckets,
            fallback: flags.sh_fallback,
            port: flags.sh_port,
        }
    }

    fn hashkey(addr: u32, port: u16, offset: u32) -> usize {
        (offset.wrapping_add(hash_32(u32::from(port).wrapping_add(addr), TAB_BITS)) & TAB_MASK)
            as usize
    }
}

impl Schedule for SourceHash {
    fn pick(&self, reals: &[Dest], flow: &FlowKey, conns: &ConnCounts, _now: u32) -> Option<usize> {
        let port = if self.port { hashed_sport(flow) } else { 0 };
        let ok = |b: u16| {
            reals
                .get(usize::from(b))
                .filter(|r| usable(r, conns))
                .is_some()
        };
        let ihash = Self::hashkey(flow.saddr, port, 0);
        let first = self.buckets[ihash];
        if first == NONE {
            return None;
        }
        if ok(first) {
            return Some(usize::from(first));
        }
        if !self.fallback {
            return None;
        }
        for offset in 0..TAB_SIZE as u32 {
            let roffset = (offset + ihash as u32) & TAB_MASK;
            let b = self.buckets[Self::hashkey(flow.saddr, port, roffset)];
            if ok(b) {
                return Some(usize::from(b));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::test_util::flow;
    use crate::sched::test_util::reals_with_weights;

    #[test]
    fn buckets_tile_by_weight_and_weight_zero_takes_one() {
        let s = SourceHash::new(&reals_with_weights(&[2, 0, 1]), SchedFlags::default());
        assert_eq!(&s.buckets[..8], &[0, 0, 1, 2, 0, 0, 1, 2]);
    }

    #[test]
    fn client_sticks_to_one_real_and_ports_count_only_with_sh_port() {
        let reals = reals_with_weights(&[1, 1, 1, 1]);
        let c = ConnCounts::new();
        let plain = SourceHash::new(&reals, SchedFlags::default());
        let saddr = 0xc0a8_0a07;
        let want = usize::from(plain.buckets[(hash_32(saddr, 8)) as usize]);
        for sport in 1000..1100 {
            assert_eq!(
                plain.pick(&reals, &flow(saddr, 9, sport), &c, 0),
                Some(want)
            );
        }
        let ported = SourceHash::new(
            &reals,
            SchedFlags {
                sh_port: true,
                ..SchedFlags::default()
            },
        );
        let mut seen = [false; 4];
        for sport in 1000..1100u16 {
            let got = ported.pick(&reals, &flow(saddr, 9, sport), &c, 0).unwrap();
            let b = hash_32(u32::from(sport) + saddr, 8) as usize;
            assert_eq!(got, b % 4, "weights 1 tile A B C D");
            seen[got] = true;
        }
        assert_eq!(seen, [true; 4]);
    }

    #[test]
    fn unusable_gives_none_unless_fallback() {
        let reals = reals_with_weights(&[1, 0]);
        let c = ConnCounts::new();
        let saddr = (0..).find(|&a| hash_32(a, 8) % 2 == 1).unwrap();
        let s = SourceHash::new(&reals, SchedFlags::default());
        assert_eq!(s.pick(&reals, &flow(saddr, 9, 1), &c, 0), None);
        let f = SourceHash::new(
            &reals,
            SchedFlags {
                sh_fallback: true,
                ..SchedFlags::default()
            },
        );
        // Probes (2h + 0) & 255 first: h odd → even bucket → A.
        assert_eq!(f.pick(&reals, &flow(saddr, 9, 1), &c, 0), Some(0));
        let none = reals_with_weights(&[0, 0]);
        let f = SourceHash::new(&none, f_flags());
        assert_eq!(f.pick(&none, &flow(saddr, 9, 1), &c, 0), None);
    }

    fn f_flags() -> SchedFlags {
        SchedFlags {
            sh_fallback: true,
            ..SchedFlags::default()
        }
    }
}
