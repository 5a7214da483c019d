//! `mh`: Maglev hashing (ip_vs_mh.c). A lookup table of prime size M = 4093 is filled
//! round-robin from each real's permutation (`offset`, `skip` from hsiphash of its
//! port + address with the kernel's fixed keys), each real taking
//! `(last_weight / gcd) >> rshift` slots per turn. The table uses `last_weight`, so a real set
//! to weight 0 keeps its slots and flows hashing there get no destination (unless
//! mh-fallback) instead of moving, and removing a real moves only that real's flows.
//! A flow hashes `hsiphash(k1, sport_if_mh-port + saddr) % M`.
//!
//! **Canonical fill order.** The kernel fills the table in the service's destination-list
//! order, and when two reals' permutations want the same slot the one filled first takes it:
//! two directors given the same reals in a different order build different tables, and a
//! flow that ECMP moves from one to the other lands on another real. uvs fills in ascending
//! (address, port) order instead, whatever order the reals were configured in, so every
//! director with the same reals and weights builds the same table (docs/scale-out.md). The
//! slots still hold positions in the service's own list. The result equals the kernel's
//! table when the reals were added in ascending address order (ipvsadm-save lists them in
//! the order they were added).
//!
//! hsiphash here is the kernel's 64-bit flavour (SipHash-1-3 with `unsigned long` keys, as
//! on x86_64/arm64): 32-bit kernels use HalfSipHash and build a different table.

use super::Dest;
use super::{SchedFlags, Schedule, hashed_sport, usable};
use crate::conns::ConnCounts;
use crate::flow::FlowKey;

/// `primes[CONFIG_IP_VS_MH_TAB_INDEX - 8]` with the default index 12.
pub const TAB_SIZE: usize = 4093;
/// `CONFIG_IP_VS_MH_TAB_INDEX / 2`: the number of weight bits kept before shifting.
const TAB_BITS: u32 = 6;
const KEY1: u64 = 2_654_435_761;
const KEY2: u64 = 2_654_446_892;
const NONE: u16 = u16::MAX;

#[derive(Debug)]
pub struct Maglev {
    lookup: Box<[u16]>,
    fallback: bool,
    port: bool,
}

#[inline]
fn sipround(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// The kernel's `hsiphash(&v, 4, key)` on a 64-bit kernel with `key = {k, k}`: SipHash-1-3
/// over the four little-endian bytes of `v`, folded to 32 bits.
pub(crate) fn hsiphash_u32(v: u32, k: u64) -> u32 {
    let mut s = [
        0x736f_6d65_7073_6575 ^ k,
        0x646f_7261_6e64_6f6d ^ k,
        0x6c79_6765_6e65_7261 ^ k,
        0x7465_6462_7974_6573 ^ k,
    ];
    let b = (4u64 << 56) | u64::from(v);
    s[3] ^= b;
    sipround(&mut s);
    s[0] ^= b;
    s[2] ^= 0xff;
    sipround(&mut s);
    sipround(&mut s);
    sipround(&mut s);
    (s[0] ^ s[1] ^ s[2] ^ s[3]) as u32
}

fn hashkey(addr: u32, port: u16, key: u64, offset: u32) -> u32 {
    hsiphash_u32(offset.wrapping_add(u32::from(port)).wrapping_add(addr), key)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// `fls`: 1-based index of the highest set bit, 0 for 0.
fn fls(x: u32) -> u32 {
    32 - x.leading_zeros()
}

impl Maglev {
    pub fn new(reals: &[Dest], flags: SchedFlags, dest_port: u16) -> Maglev {
        Maglev {
            lookup: populate(reals, dest_port),
            fallback: flags.mh_fallback,
            port: flags.mh_port,
        }
    }

    /// `mh-port`: the client's port is hashed with its address.
    pub fn hashes_port(&self) -> bool {
        self.port
    }

    fn slot(&self, addr: u32, port: u16, offset: u32) -> u16 {
        self.lookup[hashkey(addr, port, KEY1, offset) as usize % TAB_SIZE]
    }
}

fn populate(reals: &[Dest], dest_port: u16) -> Box<[u16]> {
    let mut lookup = vec![NONE; TAB_SIZE].into_boxed_slice();
    let g = reals
        .iter()
        .filter(|r| r.last_weight > 0)
        .fold(0, |g, r| gcd(r.last_weight, g));
    if g < 1 || reals.len() > TAB_SIZE {
        return lookup;
    }
    let max = reals.iter().map(|r| r.last_weight).max().unwrap_or(0);
    // Very large weights would make one real take thousands of consecutive turns: keep only
    // the top TAB_BITS bits of weight/gcd.
    let rshift = fls(max / g).saturating_sub(TAB_BITS);
    struct Setup {
        /// The real's position in the service's list: what a slot holds.
        position: u16,
        perm: usize,
        skip: usize,
        turns: u32,
    }
    // The fill order: positions in `reals` sorted by (address, port), see the module docs.
    let mut order: Vec<usize> = (0..reals.len()).collect();
    order.sort_by_key(|&i| (reals[i].addr, reals[i].port));
    let mut setup: Vec<Setup> = order
        .iter()
        .map(|&i| {
            let r = &reals[i];
            let offset = hashkey(r.addr, dest_port, KEY1, 0) as usize % TAB_SIZE;
            let skip = hashkey(r.addr, dest_port, KEY2, 0) as usize % (TAB_SIZE - 1) + 1;
            let lw = r.last_weight;
            let turns = match (lw / g) >> rshift {
                0 => u32::from(lw != 0),
                t => t,
            };
            Setup {
                position: i as u16,
                perm: offset,
                skip,
                turns,
            }
        })
        .collect();
    let mut taken = vec![false; TAB_SIZE];
    let mut n = 0;
    'fill: loop {
        let mut d = 0;
        let mut dt_count = 0;
        while d < setup.len() {
            let ds = &mut setup[d];
            if ds.turns < 1 {
                d += 1;
                continue;
            }
            while taken[ds.perm] {
                ds.perm += ds.skip;
                if ds.perm >= TAB_SIZE {
                    ds.perm -= TAB_SIZE;
                }
            }
            taken[ds.perm] = true;
            lookup[ds.perm] = ds.position;
            n += 1;
            if n == TAB_SIZE {
                break 'fill;
            }
            dt_count += 1;
            if dt_count >= ds.turns {
                dt_count = 0;
                d += 1;
            }
        }
    }
    lookup
}

impl Schedule for Maglev {
    fn pick(&self, reals: &[Dest], flow: &FlowKey, conns: &ConnCounts, _now: u32) -> Option<usize> {
        let port = if self.port { hashed_sport(flow) } else { 0 };
        let available = |i: u16| reals.get(usize::from(i)).is_some_and(|r| usable(r, conns));
        let ihash = hashkey(flow.saddr, port, KEY1, 0) as usize % TAB_SIZE;
        let first = self.lookup[ihash];
        if first == NONE {
            return None;
        }
        if available(first) {
            return Some(usize::from(first));
        }
        if !self.fallback {
            return None;
        }
        for offset in 0..TAB_SIZE {
            let roffset = ((offset + ihash) % TAB_SIZE) as u32;
            let i = self.slot(flow.saddr, port, roffset);
            if i == NONE {
                break;
            }
            if available(i) {
                return Some(usize::from(i));
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

    const PORT: u16 = 80;

    fn sources() -> impl Iterator<Item = u32> {
        (0..20_000u32).map(|i| 0x0a01_0000u32.wrapping_add(i.wrapping_mul(7919)))
    }

    #[test]
    fn hsiphash_is_siphash_1_3() {
        // std's DefaultHasher is SipHash-1-3 with a zero key: the same rounds, preamble and
        // finalisation as the kernel's 64-bit hsiphash, so with key 0 both must agree.
        use std::hash::Hasher;
        for v in [0u32, 1, 80 + 0x0a00_000b, 0xdead_beef, u32::MAX] {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            h.write(&v.to_le_bytes());
            assert_eq!(hsiphash_u32(v, 0), h.finish() as u32, "v = {v:#x}");
        }
    }

    #[test]
    fn every_slot_filled_and_proportional_to_last_weight() {
        let reals = reals_with_weights(&[1, 2, 3, 4]);
        let m = Maglev::new(&reals, SchedFlags::default(), PORT);
        let mut slots = [0usize; 4];
        for &i in m.lookup.iter() {
            slots[usize::from(i)] += 1;
        }
        assert_eq!(slots.iter().sum::<usize>(), TAB_SIZE);
        // Turns 1:2:3:4 per round: exact shares except the last partial round.
        for (k, &s) in slots.iter().enumerate() {
            let want = TAB_SIZE * (k + 1) / 10;
            assert!(s.abs_diff(want) <= 4, "real {k}: {s} slots, want ~{want}");
        }
        // Flows follow the slots.
        let c = ConnCounts::new();
        let mut flows = [0usize; 4];
        for a in sources() {
            flows[m.pick(&reals, &flow(a, 1, 1), &c, 0).unwrap()] += 1;
        }
        for (k, &f) in flows.iter().enumerate() {
            let want = 20_000 * (k + 1) / 10;
            assert!(
                f.abs_diff(want) < want / 10 + 100,
                "real {k}: {f} flows, want ~{want}"
            );
        }
    }

    #[test]
    fn removing_one_real_moves_only_its_flows() {
        let before = reals_with_weights(&[1, 1, 1, 1, 1]);
        let mut after = before.clone();
        let removed = after.remove(2);
        let c = ConnCounts::new();
        let mb = Maglev::new(&before, SchedFlags::default(), PORT);
        let ma = Maglev::new(&after, SchedFlags::default(), PORT);
        let (mut kept, mut moved) = (0, 0);
        for a in sources() {
            let f = flow(a, 1, 1);
            let b = &before[mb.pick(&before, &f, &c, 0).unwrap()];
            let x = &after[ma.pick(&after, &f, &c, 0).unwrap()];
            if b.id == removed.id {
                moved += 1;
            } else {
                // Maglev is minimal-disruption, not perfect: a few slots may change owner.
                if b.id == x.id {
                    kept += 1;
                }
            }
        }
        let others = 20_000 - moved;
        assert!(moved > 3000, "the removed real had its share ({moved})");
        assert!(
            kept * 100 >= others * 99,
            "{kept} of {others} flows stayed on their real"
        );
    }

    #[test]
    fn weight_zero_keeps_slots_and_returns_none_unless_fallback() {
        let reals = reals_with_weights(&[1, 1, 1]);
        let mut quiesced = reals.clone();
        quiesced[1].weight = 0; // last_weight stays 1
        let c = ConnCounts::new();
        let m1 = Maglev::new(&reals, SchedFlags::default(), PORT);
        let m2 = Maglev::new(&quiesced, SchedFlags::default(), PORT);
        assert_eq!(m1.lookup, m2.lookup, "same table: last_weight is used");
        let fb = Maglev::new(
            &quiesced,
            SchedFlags {
                mh_fallback: true,
                ..SchedFlags::default()
            },
            PORT,
        );
        let mut hit_b = 0;
        for a in sources().take(3000) {
            let f = flow(a, 1, 1);
            let orig = m1.pick(&reals, &f, &c, 0).unwrap();
            let q = m2.pick(&quiesced, &f, &c, 0);
            let with_fb = fb.pick(&quiesced, &f, &c, 0);
            if orig == 1 {
                hit_b += 1;
                assert_eq!(q, None);
                assert!(matches!(with_fb, Some(0 | 2)));
            } else {
                assert_eq!(q, Some(orig));
                assert_eq!(with_fb, Some(orig));
            }
        }
        assert!(hit_b > 500);
        // last_weight 0 too (never had a weight): no slots at all.
        let mut fresh = reals.clone();
        fresh[1].weight = 0;
        fresh[1].last_weight = 0;
        let m3 = Maglev::new(&fresh, SchedFlags::default(), PORT);
        assert!(!m3.lookup.contains(&1));
        let none = reals_with_weights(&[0, 0]);
        let m4 = Maglev::new(&none, SchedFlags::default(), PORT);
        assert!(m4.lookup.iter().all(|&i| i == NONE));
        assert_eq!(m4.pick(&none, &flow(1, 1, 1), &c, 0), None);
    }

    #[test]
    fn every_director_builds_the_same_table_whatever_the_configuration_order() {
        // Four reals with unequal weights, configured in two different orders (the same ids
        // and addresses): every flow must reach the same real on both. A kernel-style fill in
        // list order gives contested slots to whichever real comes first, so this fails
        // without the canonical order.
        let a = reals_with_weights(&[3, 1, 2, 1]);
        let b: Vec<Dest> = [2, 0, 3, 1].iter().map(|&i| a[i].clone()).collect();
        let c = ConnCounts::new();
        for flags in [
            SchedFlags::default(),
            SchedFlags {
                mh_port: true,
                ..SchedFlags::default()
            },
        ] {
            let ma = Maglev::new(&a, flags, PORT);
            let mb = Maglev::new(&b, flags, PORT);
            for (n, src) in sources().enumerate() {
                let f = flow(src, 1, 1000 + n as u16);
                let ra = ma.pick(&a, &f, &c, 0).map(|i| a[i].id);
                let rb = mb.pick(&b, &f, &c, 0).map(|i| b[i].id);
                assert_eq!(ra, rb, "flow from {src:#x}: different reals");
            }
        }
    }

    #[test]
    fn reals_on_one_address_are_ordered_by_port() {
        // NAT reals may share an address: the port breaks the tie, so the order still does
        // not depend on the configuration.
        let mut a = reals_with_weights(&[1, 1]);
        a[1].addr = a[0].addr;
        a[1].port = 8080;
        let b = vec![a[1].clone(), a[0].clone()];
        let c = ConnCounts::new();
        let (ma, mb) = (
            Maglev::new(&a, SchedFlags::default(), PORT),
            Maglev::new(&b, SchedFlags::default(), PORT),
        );
        for src in sources().take(2000) {
            let f = flow(src, 1, 1);
            let ra = ma.pick(&a, &f, &c, 0).map(|i| a[i].id);
            assert_eq!(ra, mb.pick(&b, &f, &c, 0).map(|i| b[i].id));
        }
    }

    #[test]
    fn mh_port_spreads_one_client() {
        let reals = reals_with_weights(&[1, 1, 1]);
        let c = ConnCounts::new();
        let plain = Maglev::new(&reals, SchedFlags::default(), PORT);
        let ported = Maglev::new(
            &reals,
            SchedFlags {
                mh_port: true,
                ..SchedFlags::default()
            },
            PORT,
        );
        let one = plain.pick(&reals, &flow(0x0a00_0001, 1, 1000), &c, 0);
        let mut seen = [false; 3];
        for sport in 1000..1200 {
            assert_eq!(plain.pick(&reals, &flow(0x0a00_0001, 1, sport), &c, 0), one);
            seen[ported
                .pick(&reals, &flow(0x0a00_0001, 1, sport), &c, 0)
                .unwrap()] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn large_weights_are_shifted() {
        // 1000/1 needs 10 bits: rshift 4, turns 62 and 0 → 1 (a real with a weight keeps at
        // least one turn).
        let reals = reals_with_weights(&[1000, 1]);
        let m = Maglev::new(&reals, SchedFlags::default(), PORT);
        let b = m.lookup.iter().filter(|&&i| i == 1).count();
        assert!((60..=70).contains(&b), "{b} slots for the weight-1 real");
    }
}
