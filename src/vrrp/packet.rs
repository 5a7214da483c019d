//! VRRP advertisement wire format, IPv4 only: VRRPv2 (RFC 3768) and VRRPv3 (RFC 5798).
//!
//! ```text
//!  0      1      2        3      4          5           6..8    8..        v2 only
//! +------+------+--------+------+----------+-----------+-------+---------+---------+
//! |ver|ty| vrid | prio   |naddr | v2: auth_type, adv(s) | csum  | addrs   | auth[8] |
//! |      |      |        |      | v3: rsvd4|max_adv(cs12)|       | 4*naddr |         |
//! +------+------+--------+------+----------------------+-------+---------+---------+
//! ```
//!
//! Checksums: v2 is the Internet checksum of the VRRP message; v3 also covers the IPv4
//! pseudo-header (source, destination, protocol 112, length) — keepalived does this for IPv4
//! too, which is what RFC 5798 says. Pure: bytes in, bytes out.

use std::net::Ipv4Addr;

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// The IPv4 VRRP multicast group.
pub const VRRP_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// TTL sent, and required on received multicast adverts.
pub const VRRP_TTL: u8 = 255;
const TYPE_ADVERT: u8 = 1;
const V2_AUTH_LEN: usize = 8;
pub const AUTH_NONE: u8 = 0;
pub const AUTH_PASS: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Version {
    V2,
    V3,
}

impl Version {
    pub fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

/// One advertisement, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    /// Advertisement interval in centiseconds (v2's seconds × 100).
    pub interval_cs: u16,
    /// v2: authentication type (0 none, 1 PASS); v3: 0.
    pub auth_type: u8,
    /// v2 PASS: the 8 bytes of authentication data.
    pub auth_data: [u8; 8],
    pub addrs: Vec<Ipv4Addr>,
}

/// Why a received packet was not accepted as an advertisement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    Truncated,
    NotVrrp,
    BadTtl,
    BadVersion,
    BadType,
    BadLength,
    BadChecksum,
}

impl Reject {
    pub fn name(self) -> &'static str {
        match self {
            Reject::Truncated => "truncated",
            Reject::NotVrrp => "not_vrrp",
            Reject::BadTtl => "bad_ttl",
            Reject::BadVersion => "bad_version",
            Reject::BadType => "bad_type",
            Reject::BadLength => "bad_length",
            Reject::BadChecksum => "bad_checksum",
        }
    }
}

/// The Internet checksum (RFC 1071) of the concatenation of `parts`, each of even length
/// except possibly the last.
pub fn inet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        let mut chunks = p.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[..4].copy_from_slice(&src.octets());
    h[4..8].copy_from_slice(&dst.octets());
    h[9] = IPPROTO_VRRP;
    h[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    h
}

/// v2 PASS data: the first 8 bytes of the password, zero padded (keepalived).
pub fn pass_data(password: &str) -> [u8; 8] {
    let mut d = [0u8; 8];
    for (o, b) in d.iter_mut().zip(password.bytes()) {
        *o = b;
    }
    d
}

impl Advert {
    /// The VRRP message (no IP header). `src`/`dst` are the IP addresses it is sent with (the
    /// v3 checksum covers them).
    pub fn encode(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + 4 * self.addrs.len() + V2_AUTH_LEN);
        b.push((self.version.number() << 4) | TYPE_ADVERT);
        b.push(self.vrid);
        b.push(self.priority);
        b.push(self.addrs.len() as u8);
        match self.version {
            Version::V2 => {
                b.push(self.auth_type);
                b.push((self.interval_cs / 100) as u8);
            }
            Version::V3 => b.extend_from_slice(&(self.interval_cs & 0x0fff).to_be_bytes()),
        }
        b.extend_from_slice(&[0, 0]);
        for a in &self.addrs {
            b.extend_from_slice(&a.octets());
        }
        let sum = match self.version {
            Version::V2 => {
                b.extend_from_slice(&self.auth_data);
                inet_checksum(&[&b])
            }
            Version::V3 => inet_checksum(&[&pseudo_header(src, dst, b.len()), &b]),
        };
        b[6..8].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Decodes a VRRP message received inside the IPv4 packet `src` → `dst`.
    pub fn decode(msg: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<Advert, Reject> {
        if msg.len() < 8 {
            return Err(Reject::Truncated);
        }
        let version = match msg[0] >> 4 {
            2 => Version::V2,
            3 => Version::V3,
            _ => return Err(Reject::BadVersion),
        };
        if msg[0] & 0x0f != TYPE_ADVERT {
            return Err(Reject::BadType);
        }
        let naddr = usize::from(msg[3]);
        let want = 8
            + 4 * naddr
            + if version == Version::V2 {
                V2_AUTH_LEN
            } else {
                0
            };
        // v2 senders that omit the auth trailer are refused; extra bytes are not accepted.
        if msg.len() != want {
            return Err(Reject::BadLength);
        }
        let ok = match version {
            Version::V2 => inet_checksum(&[msg]) == 0,
            Version::V3 => inet_checksum(&[&pseudo_header(src, dst, msg.len()), msg]) == 0,
        };
        if !ok {
            return Err(Reject::BadChecksum);
        }
        let addrs = msg[8..8 + 4 * naddr]
            .chunks_exact(4)
            .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
            .collect();
        let (interval_cs, auth_type, auth_data) = match version {
            Version::V2 => {
                let mut d = [0u8; 8];
                d.copy_from_slice(&msg[8 + 4 * naddr..]);
                (u16::from(msg[5]) * 100, msg[4], d)
            }
            Version::V3 => (u16::from_be_bytes([msg[4], msg[5]]) & 0x0fff, 0, [0; 8]),
        };
        Ok(Advert {
            version,
            vrid: msg[1],
            priority: msg[2],
            interval_cs,
            auth_type,
            auth_data,
            addrs,
        })
    }
}

/// A received IPv4 packet carrying VRRP: checks the IP header (protocol 112, and TTL 255 for
/// multicast — unicast TTL is not checked, as keepalived) and decodes the advert. Returns the
/// source address and the advert.
pub fn decode_ipv4(pkt: &[u8]) -> Result<(Ipv4Addr, Advert), Reject> {
    if pkt.len() < 20 {
        return Err(Reject::Truncated);
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    if pkt[0] >> 4 != 4 || ihl < 20 || pkt.len() < ihl {
        return Err(Reject::Truncated);
    }
    if pkt[9] != IPPROTO_VRRP {
        return Err(Reject::NotVrrp);
    }
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    let end = if total >= ihl && total <= pkt.len() {
        total
    } else {
        pkt.len()
    };
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    if dst.is_multicast() && pkt[8] != VRRP_TTL {
        return Err(Reject::BadTtl);
    }
    Advert::decode(&pkt[ihl..end], src, dst).map(|a| (src, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip_wrap(msg: &[u8], src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
        let mut p = vec![0x45, 0xc0, 0, 0, 0, 0, 0, 0, ttl, IPPROTO_VRRP, 0, 0];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        let len = (20 + msg.len()) as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p.extend_from_slice(msg);
        p
    }

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn v2_pass_matches_a_keepalived_capture() {
        // keepalived 2.2, vrid 51, prio 100, advert_int 1, auth PASS "1111", VIP 10.0.0.100.
        let a = Advert {
            version: Version::V2,
            vrid: 51,
            priority: 100,
            interval_cs: 100,
            auth_type: AUTH_PASS,
            auth_data: pass_data("1111"),
            addrs: vec![Ipv4Addr::new(10, 0, 0, 100)],
        };
        let m = a.encode(SRC, VRRP_GROUP);
        assert_eq!(
            &m[..8],
            &[0x21, 51, 100, 1, 1, 1, m[6], m[7]],
            "header fields"
        );
        assert_eq!(&m[8..12], &[10, 0, 0, 100]);
        assert_eq!(&m[12..], b"1111\0\0\0\0");
        assert_eq!(inet_checksum(&[&m]), 0);
        let (src, back) = decode_ipv4(&ip_wrap(&m, SRC, VRRP_GROUP, 255)).unwrap();
        assert_eq!((src, back), (SRC, a));
    }

    #[test]
    fn v3_checksum_covers_the_pseudo_header() {
        let a = Advert {
            version: Version::V3,
            vrid: 7,
            priority: 150,
            interval_cs: 10,
            auth_type: 0,
            auth_data: [0; 8],
            addrs: vec![Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 101)],
        };
        let m = a.encode(SRC, VRRP_GROUP);
        assert_eq!(m.len(), 16);
        assert_eq!(&m[..6], &[0x31, 7, 150, 2, 0, 10]);
        assert_eq!(Advert::decode(&m, SRC, VRRP_GROUP), Ok(a.clone()));
        // The same bytes from another source fail: the checksum includes the addresses.
        assert_eq!(
            Advert::decode(&m, Ipv4Addr::new(10, 0, 0, 3), VRRP_GROUP),
            Err(Reject::BadChecksum)
        );
        // Unicast destination: checksum against that destination.
        let peer = Ipv4Addr::new(10, 0, 0, 3);
        let u = a.encode(SRC, peer);
        assert_eq!(Advert::decode(&u, SRC, peer), Ok(a));
    }

    #[test]
    fn hostile_packets_are_refused() {
        let a = Advert {
            version: Version::V3,
            vrid: 7,
            priority: 150,
            interval_cs: 100,
            auth_type: 0,
            auth_data: [0; 8],
            addrs: vec![Ipv4Addr::new(10, 0, 0, 100)],
        };
        let m = a.encode(SRC, VRRP_GROUP);
        assert_eq!(
            decode_ipv4(&ip_wrap(&m, SRC, VRRP_GROUP, 64)),
            Err(Reject::BadTtl)
        );
        // Unicast: TTL not checked.
        let u = a.encode(SRC, Ipv4Addr::new(10, 0, 0, 3));
        assert!(decode_ipv4(&ip_wrap(&u, SRC, Ipv4Addr::new(10, 0, 0, 3), 64)).is_ok());
        for cut in 0..m.len() {
            assert!(Advert::decode(&m[..cut], SRC, VRRP_GROUP).is_err());
        }
        let mut bad = m.clone();
        bad[3] = 200; // naddr beyond the packet
        assert_eq!(
            Advert::decode(&bad, SRC, VRRP_GROUP),
            Err(Reject::BadLength)
        );
        let mut flip = m.clone();
        flip[2] ^= 1;
        assert_eq!(
            Advert::decode(&flip, SRC, VRRP_GROUP),
            Err(Reject::BadChecksum)
        );
        let mut ty = m;
        ty[0] = 0x32;
        assert_eq!(Advert::decode(&ty, SRC, VRRP_GROUP), Err(Reject::BadType));
        for junk in [&[][..], &[0x45; 19][..], &[0x45; 24][..]] {
            assert!(decode_ipv4(junk).is_err());
        }
    }
}
