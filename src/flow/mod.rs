//! What a flow is, independent of where it is stored: its key (the five-tuple), its TCP
//! state as IPVS tracks it, the state's timeouts, and the wrapping millisecond clock
//! arithmetic every expiry uses. A leaf: the datapath's flow table, the schedulers, the
//! connection sync and the admin listings all speak these types.

pub mod tcp_state;

pub use tcp_state::{Direction, TcpState, Timeouts, next_state};

/// The five-tuple a flow is keyed by (network byte order values as host integers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl FlowKey {
    #[inline]
    pub(crate) fn hash(&self) -> u64 {
        // One multiply to fold the two words, then murmur3's 64-bit finaliser: every input bit
        // reaches every index bit, which linear probing needs (clustered keys such as
        // consecutive source ports must not map to clustered slots).
        let a = (u64::from(self.saddr) << 32) | u64::from(self.daddr);
        let b =
            (u64::from(self.sport) << 32) | (u64::from(self.dport) << 16) | u64::from(self.proto);
        let mut h = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b;
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^= h >> 33;
        h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        h ^ (h >> 33)
    }
}

/// `true` if `t` is at or after `deadline` on a wrapping millisecond clock.
#[inline]
pub fn reached(t: u32, deadline: u32) -> bool {
    (t.wrapping_sub(deadline) as i32) >= 0
}
