//! The IPVS sync protocol, version 1 (net/netfilter/ipvs/ip_vs_sync.c), IPv4 records.
//!
//! ```text
//! header (8): u8 reserved=0 | u8 syncid | be16 size | u8 nr_conns | s8 version=1 | be16 spare
//! record (36): u8 type=0 (v4) | u8 protocol | be16 ver_size (ver 0 << 12 | 36) | be32 flags
//!            | be16 state | be16 cport | be16 vport | be16 dport | be32 fwmark
//!            | be32 timeout (s) | be32 caddr | be32 vaddr | be32 daddr  [options, padded to 4]
//! ```
//! Version 0 messages (the old format, first byte = nr_conns ≠ 0) are refused. The forwarding
//! method is the low bits of `flags` (MASQ 0, DROUTE 3); `dport` is the real's port, which
//! differs from `vport` only for a NAT real.

use crate::flow::FlowKey;
use crate::flow::tcp_state::TcpState;
use crate::model::ForwardMethod;
use crate::wire::{IPPROTO_TCP, IPPROTO_UDP};

use super::SyncRecord;

pub const SYNC_GROUP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(224, 0, 0, 81);
pub const SYNC_PORT: u16 = 8848;
pub const HEADER_LEN: usize = 8;
pub const RECORD_LEN: usize = 36;
/// Records per message: keeps a message within a 1500-byte MTU (8 + 40 × 36 = 1448).
pub const MAX_PER_MESSAGE: usize = 40;
/// IP_VS_CONN_F_FWD_MASK: the forwarding method's bits.
pub const F_FWD_MASK: u32 = 0x0007;
/// IP_VS_CONN_F_MASQ, IP_VS_CONN_F_TUNNEL, IP_VS_CONN_F_DROUTE: the forwarding method.
pub const F_MASQ: u32 = 0x0000;
pub const F_TUNNEL: u32 = 0x0002;
pub const F_DROUTE: u32 = 0x0003;
/// IP_VS_CONN_F_INACTIVE.
pub const F_INACTIVE: u32 = 0x0100;
/// IP_VS_CONN_F_TEMPLATE: persistence templates are not adopted (uvs keeps none here).
pub const F_TEMPLATE: u32 = 0x1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    Truncated,
    NotVersion1,
    BadSize,
}

/// One message of up to [`MAX_PER_MESSAGE`] records. FullNAT connections are not in IPVS's
/// format (it has no local address or port): leave them out (see [`syncable`]).
pub fn encode(syncid: u8, records: &[SyncRecord]) -> Vec<u8> {
    let n = records.len().min(MAX_PER_MESSAGE);
    let size = HEADER_LEN + n * RECORD_LEN;
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(&[0, syncid]);
    b.extend_from_slice(&(size as u16).to_be_bytes());
    b.extend_from_slice(&[n as u8, 1, 0, 0]);
    for r in &records[..n] {
        b.push(0);
        b.push(r.key.proto);
        b.extend_from_slice(&(RECORD_LEN as u16).to_be_bytes());
        let mut flags = forward_flag(r.forward);
        if !r.state.is_active() {
            flags |= F_INACTIVE;
        }
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&(r.state as u16).to_be_bytes());
        b.extend_from_slice(&r.key.sport.to_be_bytes());
        b.extend_from_slice(&r.key.dport.to_be_bytes());
        b.extend_from_slice(&r.real_port.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&r.timeout_secs.to_be_bytes());
        b.extend_from_slice(&r.key.saddr.to_be_bytes());
        b.extend_from_slice(&r.key.daddr.to_be_bytes());
        b.extend_from_slice(&r.real_addr.to_be_bytes());
    }
    b
}

fn forward_flag(m: ForwardMethod) -> u32 {
    match m {
        ForwardMethod::Route => F_DROUTE,
        // Never encoded (see `syncable`); masquerading is the nearest IPVS knows.
        ForwardMethod::Masq | ForwardMethod::FullNat => F_MASQ,
        ForwardMethod::Tunnel(_) => F_TUNNEL,
    }
}

/// Whether IPVS's sync format can carry a connection forwarded by `m`: not FullNAT, whose
/// local address and port it has no room for (and an IPVS peer could not use).
pub fn syncable(m: ForwardMethod) -> bool {
    m != ForwardMethod::FullNat
}

/// The forwarding method of a record's flags, if uvs forwards that way. The flags do not say
/// which encapsulation a tunnel used: the adopting director's real says (see
/// `SyncRecord::forward`).
fn forward_of(flags: u32) -> Option<ForwardMethod> {
    match flags & F_FWD_MASK {
        F_DROUTE => Some(ForwardMethod::Route),
        F_MASQ => Some(ForwardMethod::Masq),
        F_TUNNEL => Some(ForwardMethod::IPIP),
        _ => None,
    }
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Decodes a message: its syncid and the IPv4 TCP/UDP records of connections forwarded by
/// direct routing, NAT or tunnelling (templates and the rest are skipped).
pub fn decode(m: &[u8]) -> Result<(u8, Vec<SyncRecord>), WireError> {
    if m.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    if m[0] != 0 || m[5] != 1 {
        return Err(WireError::NotVersion1);
    }
    let size = usize::from(be16(m, 2));
    if size != m.len() {
        return Err(WireError::BadSize);
    }
    let mut out = Vec::new();
    let mut off = HEADER_LEN;
    for _ in 0..m[4] {
        if off + 4 > m.len() {
            return Err(WireError::Truncated);
        }
        let rsize = usize::from(be16(m, off + 2) & 0x0fff);
        if rsize < RECORD_LEN || off + rsize > m.len() {
            return Err(WireError::BadSize);
        }
        let r = &m[off..off + rsize];
        let flags = be32(r, 4);
        let is_v6 = r[0] & 1 != 0;
        let forward = forward_of(flags);
        if let Some(forward) = forward
            && !is_v6
            && flags & F_TEMPLATE == 0
            && (r[1] == IPPROTO_TCP || r[1] == IPPROTO_UDP)
        {
            out.push(SyncRecord {
                key: FlowKey {
                    saddr: be32(r, 24),
                    daddr: be32(r, 28),
                    sport: be16(r, 10),
                    dport: be16(r, 12),
                    proto: r[1],
                },
                real_addr: be32(r, 32),
                real_port: be16(r, 14),
                forward,
                state: if r[1] == IPPROTO_TCP {
                    TcpState::from_u8(be16(r, 8) as u8)
                } else {
                    TcpState::None
                },
                timeout_secs: be32(r, 20),
            });
        }
        // Records (with options) are padded to 32 bits.
        off += (rsize + 3) & !3;
    }
    Ok((m[1], out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let r = SyncRecord {
            key: FlowKey {
                saddr: 0xac1e_000a,
                daddr: 0x0a00_0064,
                sport: 40000,
                dport: 80,
                proto: 6,
            },
            real_addr: 0x0a00_000b,
            real_port: 80,
            forward: ForwardMethod::Route,
            state: TcpState::Established,
            timeout_secs: 900,
        };
        let m = encode(5, &[r, r]);
        assert_eq!(m.len(), 8 + 72);
        assert_eq!(&m[..8], &[0, 5, 0, 80, 2, 1, 0, 0]);
        assert_eq!(&m[8..12], &[0, 6, 0, 36]);
        assert_eq!(&m[12..16], &[0, 0, 0, 3], "DROUTE, active");
        assert_eq!(&m[16..18], &[0, 1], "ESTABLISHED");
        assert_eq!(decode(&m), Ok((5, vec![r, r])));
        for cut in 0..m.len() {
            assert!(decode(&m[..cut]).is_err());
        }
        let mut v0 = m.clone();
        v0[0] = 2;
        assert_eq!(decode(&v0), Err(WireError::NotVersion1));
        let mut big = m;
        big[8 + 3] = 200; // record size beyond the message
        assert_eq!(decode(&big), Err(WireError::BadSize));
    }

    #[test]
    fn a_nat_record_carries_the_masq_flag_and_the_reals_own_port() {
        let r = SyncRecord {
            key: FlowKey {
                saddr: 0xc633_640a,
                daddr: 0xc0a8_500a,
                sport: 40000,
                dport: 80,
                proto: 6,
            },
            real_addr: 0xc0a8_500b,
            real_port: 8080,
            forward: ForwardMethod::Masq,
            state: TcpState::TimeWait,
            timeout_secs: 60,
        };
        let m = encode(0, &[r]);
        assert_eq!(&m[12..16], &[0, 0, 1, 0], "MASQ, inactive");
        assert_eq!(
            &m[18..24],
            &[0x9c, 0x40, 0, 80, 0x1f, 0x90],
            "cport vport dport"
        );
        assert_eq!(decode(&m), Ok((0, vec![r])));
        // A connection to the director itself (IP_VS_CONN_F_LOCALNODE) is not uvs's: skipped.
        let mut local = m;
        local[15] = 1;
        assert_eq!(decode(&local), Ok((0, vec![])));
    }

    #[test]
    fn a_tunnelled_connection_carries_ipvs_tunnel_flag() {
        let r = SyncRecord {
            key: FlowKey {
                saddr: 0xc633_640a,
                daddr: 0xcb00_7102,
                sport: 40000,
                dport: 80,
                proto: 6,
            },
            real_addr: 0x0a00_0002,
            real_port: 80,
            forward: ForwardMethod::IPIP,
            state: TcpState::SynRecv,
            timeout_secs: 60,
        };
        let m = encode(1, &[r]);
        assert_eq!(&m[12..16], &[0, 0, 0, 2], "IP_VS_CONN_F_TUNNEL, active");
        assert_eq!(decode(&m), Ok((1, vec![r])));
        // A bypass (4) or local-node (1) connection is not adopted.
        for other in [1u8, 4] {
            let mut x = m.clone();
            x[15] = other;
            assert_eq!(decode(&x), Ok((1, vec![])));
        }
    }
}
