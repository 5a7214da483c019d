//! The PROXY protocol (HAProxy's proxy-protocol.txt), IPv4: the header a FullNAT director puts
//! before a connection's first byte so the real server learns the client's address and the
//! address the client connected to, which the rewritten packets no longer carry.
//!
//! ```text
//! v1 (TCP only, text):  "PROXY TCP4 <client> <vip> <cport> <vport>\r\n"          ≤ 107 bytes
//! v2 (binary, 28 bytes for IPv4): signature (12) | 0x21 (v2, PROXY) | 0x11 TCP / 0x12 UDP
//!                       | be16 length 12 | client (4) | vip (4) | cport (2) | vport (2)
//! ```
//!
//! Encoding writes into a caller's buffer (no allocation: it runs per connection on a
//! worker); decoding is for receivers (the lab's responder) and tests.

use std::net::Ipv4Addr;

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

/// Length of a v2 header for IPv4.
pub const V2_IPV4_LEN: usize = 28;

/// The longest header (v1's maximum, which bounds every IPv4 header of either version).
pub const MAX_LEN: usize = 107;

/// Which version a service sends (`--proxy-protocol v1|v2|disable`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Version {
    #[default]
    Off,
    V1,
    V2,
}

impl Version {
    /// As `--proxy-protocol` and keepalived's `proxy_protocol` name it.
    pub fn name(self) -> &'static str {
        match self {
            Version::Off => "disable",
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        match s.to_ascii_lowercase().as_str() {
            "disable" | "off" | "none" => Some(Version::Off),
            "v1" => Some(Version::V1),
            "v2" => Some(Version::V2),
            _ => None,
        }
    }
}

/// The connection a header describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub client: Ipv4Addr,
    pub client_port: u16,
    /// The address and port the client connected to (the VIP).
    pub server: Ipv4Addr,
    pub server_port: u16,
    /// UDP (only v2 can say so) rather than TCP.
    pub udp: bool,
}

/// Writes the header of `version` for `e` into `out`; its length, or `None` when the version
/// cannot describe the connection (v1 has no UDP) or is `Off`.
pub fn encode(version: Version, e: &Endpoints, out: &mut [u8; MAX_LEN]) -> Option<usize> {
    match version {
        Version::Off => None,
        Version::V1 if e.udp => None,
        Version::V1 => Some(encode_v1(e, out)),
        Version::V2 => {
            out[..12].copy_from_slice(&V2_SIGNATURE);
            out[12] = 0x21;
            out[13] = if e.udp { 0x12 } else { 0x11 };
            out[14..16].copy_from_slice(&12u16.to_be_bytes());
            out[16..20].copy_from_slice(&e.client.octets());
            out[20..24].copy_from_slice(&e.server.octets());
            out[24..26].copy_from_slice(&e.client_port.to_be_bytes());
            out[26..28].copy_from_slice(&e.server_port.to_be_bytes());
            Some(V2_IPV4_LEN)
        }
    }
}

/// "PROXY TCP4 a.b.c.d e.f.g.h p q\r\n", written digit by digit (no formatter, no allocation).
fn encode_v1(e: &Endpoints, out: &mut [u8; MAX_LEN]) -> usize {
    let mut w = Writer { out, at: 0 };
    w.bytes(b"PROXY TCP4 ");
    w.addr(e.client);
    w.bytes(b" ");
    w.addr(e.server);
    w.bytes(b" ");
    w.number(u32::from(e.client_port));
    w.bytes(b" ");
    w.number(u32::from(e.server_port));
    w.bytes(b"\r\n");
    w.at
}

struct Writer<'a> {
    out: &'a mut [u8; MAX_LEN],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.out[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }

    fn number(&mut self, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let d = digits;
        self.bytes(&d[i..]);
    }

    fn addr(&mut self, a: Ipv4Addr) {
        for (i, o) in a.octets().into_iter().enumerate() {
            if i > 0 {
                self.bytes(b".");
            }
            self.number(u32::from(o));
        }
    }
}

/// What [`decode`] found at the start of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A header describing a connection, `len` bytes long.
    Header { endpoints: Endpoints, len: usize },
    /// A header that describes no connection (v1 `UNKNOWN`, v2 `LOCAL` or another family),
    /// `len` bytes long: the connection's own addresses apply.
    Unknown { len: usize },
    /// The start of a header; more bytes are needed.
    Incomplete,
    /// Not a PROXY header.
    Absent,
    /// A PROXY header that breaks the specification.
    Invalid,
}

/// Reads a PROXY header (either version) at the start of `b`.
pub fn decode(b: &[u8]) -> Decoded {
    if b.len() < V2_SIGNATURE.len() && (V2_SIGNATURE.starts_with(b) || b"PROXY ".starts_with(b)) {
        return Decoded::Incomplete;
    }
    if b.starts_with(&V2_SIGNATURE) {
        return decode_v2(b);
    }
    if b.starts_with(b"PROXY ") {
        return decode_v1(b);
    }
    Decoded::Absent
}

fn decode_v2(b: &[u8]) -> Decoded {
    if b.len() < 16 {
        return Decoded::Incomplete;
    }
    if b[12] >> 4 != 2 {
        return Decoded::Invalid;
    }
    let len = 16 + usize::from(u16::from_be_bytes([b[14], b[15]]));
    if b.len() < len {
        return Decoded::Incomplete;
    }
    let local = b[12] & 0x0f == 0;
    let (family, transport) = (b[13] >> 4, b[13] & 0x0f);
    if local || family != 1 || !(transport == 1 || transport == 2) {
        return Decoded::Unknown { len };
    }
    if len < V2_IPV4_LEN {
        return Decoded::Invalid;
    }
    let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
    let port = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    Decoded::Header {
        endpoints: Endpoints {
            client: ip(16),
            server: ip(20),
            client_port: port(24),
            server_port: port(26),
            udp: transport == 2,
        },
        len,
    }
}

fn decode_v1(b: &[u8]) -> Decoded {
    let window = &b[..b.len().min(MAX_LEN)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if b.len() >= MAX_LEN {
            Decoded::Invalid
        } else {
            Decoded::Incomplete
        };
    };
    let len = end + 2;
    let Ok(line) = std::str::from_utf8(&b[..end]) else {
        return Decoded::Invalid;
    };
    let f: Vec<&str> = line.split(' ').collect();
    match f.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Decoded::Unknown { len },
        ["PROXY", "TCP4", c, s, cp, sp] => match (c.parse(), s.parse(), cp.parse(), sp.parse()) {
            (Ok(client), Ok(server), Ok(client_port), Ok(server_port)) => Decoded::Header {
                endpoints: Endpoints {
                    client,
                    client_port,
                    server,
                    server_port,
                    udp: false,
                },
                len,
            },
            _ => Decoded::Invalid,
        },
        _ => Decoded::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(udp: bool) -> Endpoints {
        Endpoints {
            client: Ipv4Addr::new(198, 51, 100, 10),
            client_port: 40000,
            server: Ipv4Addr::new(203, 0, 113, 80),
            server_port: 443,
            udp,
        }
    }

    #[test]
    fn v1_is_the_text_line_and_decodes_back() {
        let mut out = [0u8; MAX_LEN];
        let n = encode(Version::V1, &e(false), &mut out).unwrap();
        assert_eq!(
            &out[..n],
            b"PROXY TCP4 198.51.100.10 203.0.113.80 40000 443\r\n"
        );
        assert_eq!(
            decode(&out[..n]),
            Decoded::Header {
                endpoints: e(false),
                len: n
            }
        );
        // The longest possible line fits.
        let long = Endpoints {
            client: Ipv4Addr::new(255, 255, 255, 255),
            server: Ipv4Addr::new(255, 255, 255, 255),
            client_port: 65535,
            server_port: 65535,
            udp: false,
        };
        let n = encode(Version::V1, &long, &mut out).unwrap();
        assert!(n <= MAX_LEN);
        assert_eq!(
            encode(Version::V1, &e(true), &mut out),
            None,
            "v1 has no UDP"
        );
        assert_eq!(encode(Version::Off, &e(false), &mut out), None);
    }

    #[test]
    fn v2_is_28_bytes_and_decodes_back() {
        let mut out = [0u8; MAX_LEN];
        for udp in [false, true] {
            let n = encode(Version::V2, &e(udp), &mut out).unwrap();
            assert_eq!(n, V2_IPV4_LEN);
            assert_eq!(&out[..12], &V2_SIGNATURE);
            assert_eq!(out[12], 0x21);
            assert_eq!(out[13], if udp { 0x12 } else { 0x11 });
            assert_eq!(&out[16..20], &[198, 51, 100, 10]);
            assert_eq!(&out[24..26], &40000u16.to_be_bytes());
            assert_eq!(
                decode(&out[..n]),
                Decoded::Header {
                    endpoints: e(udp),
                    len: n
                }
            );
        }
    }

    #[test]
    fn partial_foreign_and_broken_headers_are_told_apart() {
        let mut out = [0u8; MAX_LEN];
        let n = encode(Version::V2, &e(false), &mut out).unwrap();
        for cut in 1..n {
            assert_eq!(decode(&out[..cut]), Decoded::Incomplete, "v2 cut at {cut}");
        }
        let n1 = encode(Version::V1, &e(false), &mut out).unwrap();
        for cut in 1..n1 {
            assert_eq!(decode(&out[..cut]), Decoded::Incomplete, "v1 cut at {cut}");
        }
        assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Decoded::Absent);
        assert_eq!(
            decode(b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n"),
            Decoded::Invalid
        );
        assert_eq!(
            decode(b"PROXY UNKNOWN\r\nGET"),
            Decoded::Unknown { len: 15 }
        );
        assert_eq!(decode(&[b'P'; 200][..]), Decoded::Absent);
        let mut local = [0u8; 16];
        local[..12].copy_from_slice(&V2_SIGNATURE);
        local[12] = 0x20;
        assert_eq!(decode(&local), Decoded::Unknown { len: 16 });
    }
}
