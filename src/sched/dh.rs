//! `dh`: destination hashing: a 256-bucket table filled by cycling through the destinations
//! (weights ignored), indexed by `(daddr × 2654435761) & 255`; an unusable destination in
//! the bucket means no destination, there is no fallback (ip_vs_dh.c).

use super::Dest;
use super::{Schedule, usable};
use crate::conns::ConnCounts;
use crate::flow::FlowKey;

const TAB_BITS: u32 = 8;
const TAB_SIZE: usize = 1 << TAB_BITS;
const NONE: u16 = u16::MAX;

#[derive(Debug)]
pub struct DestinationHash {
    buckets: [u16; TAB_SIZE],
}

impl DestinationHash {
    pub fn new(reals: &[Dest]) -> DestinationHash {
        let mut buckets = [NONE; TAB_SIZE];
        if !reals.is_empty() {
            for (i, b) in buckets.iter_mut().enumerate() {
                *b = (i % reals.len()) as u16;
            }
        }
        DestinationHash { buckets }
    }

    /// Bucket of a destination address (host order), the kernel's multiplicative hash.
    fn bucket(daddr: u32) -> usize {
        (daddr.wrapping_mul(2_654_435_761) as usize) & (TAB_SIZE - 1)
    }
}

impl Schedule for DestinationHash {
    fn pick(&self, reals: &[Dest], flow: &FlowKey, conns: &ConnCounts, _now: u32) -> Option<usize> {
        let i = self.buckets[Self::bucket(flow.daddr)];
        let r = reals.get(usize::from(i))?;
        usable(r, conns).then_some(usize::from(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conns::Thresholds;
    use crate::sched::test_util::flow;
    use crate::sched::test_util::reals_with_weights;

    #[test]
    fn destination_maps_to_one_real_by_the_kernel_hash() {
        let reals = reals_with_weights(&[1, 5, 1]);
        let s = DestinationHash::new(&reals);
        let c = ConnCounts::new();
        for daddr in [0x0a00_0001u32, 0xc0a8_0102, 0x0808_0808] {
            let want = (daddr.wrapping_mul(2_654_435_761) & 255) as usize % 3;
            for src in 0..20 {
                assert_eq!(
                    s.pick(&reals, &flow(src, daddr, 1000 + src as u16), &c, 0),
                    Some(want)
                );
            }
        }
        // Buckets cycle A B C regardless of weight: 86/85/85.
        let count = |k: u16| s.buckets.iter().filter(|&&b| b == k).count();
        assert_eq!((count(0), count(1), count(2)), (86, 85, 85));
    }

    #[test]
    fn unusable_bucket_gives_none_without_fallback() {
        let reals = reals_with_weights(&[1, 0]);
        let s = DestinationHash::new(&reals);
        let c = ConnCounts::new();
        // daddr 1 → bucket (2654435761 & 255) = 0xB1 = 177 → odd → real B (weight 0).
        assert_eq!(DestinationHash::bucket(1), 177);
        assert_eq!(s.pick(&reals, &flow(9, 1, 9), &c, 0), None);
        assert_eq!(s.pick(&reals, &flow(9, 0, 9), &c, 0), Some(0));
        c.bind(reals[0].id, true, Thresholds { upper: 1, lower: 0 });
        assert_eq!(s.pick(&reals, &flow(9, 0, 9), &c, 0), None);
        assert_eq!(
            DestinationHash::new(&[]).pick(&[], &flow(9, 0, 9), &c, 0),
            None
        );
    }
}
