//! Tunnelling (`-i`), as IPVS's `ip_vs_tunnel_xmit` builds it: the client's IP packet,
//! unchanged but for its TTL (decremented first, header checksum refreshed), inside a new IPv4
//! header from the director's tunnel source to the real:
//!
//! - outer TTL = the inner TTL (after the decrement); TOS = the inner DSCP with the inner ECN,
//!   a CE mark becoming ECT(0) (`INET_ECN_encapsulate`); DF copied from the inner packet
//!   (`pmtu_disc` = 1, the default); a fresh IP ID; no options;
//! - IPIP: protocol 4; GUE: UDP (sport from the inner flow's hash, as `udp_flow_src_port`
//!   gives ECMP and RSS their entropy; dport `--tun-port`) and a 4-byte GUE header (version 0,
//!   `proto_ctype` 4); GRE: protocol 47, a 4-byte header (version 0, protocol 0x0800), 8 bytes
//!   with the checksum (`--tun-csum`).
//!
//! The frame is not moved: a transmit queue entry is the outer headers, written into the
//! queue's own header slot (see [`crate::io::tx`]), followed by the inner packet where the ring
//! holds it (two `iovec`s). [`Composer`] holds what a worker decided for the frame it last
//! processed, and fills the queue's slots from it.
//!
//! Checksum offload: the legacy `virtio_net_hdr` the transmit socket takes has no tunnel GSO
//! type and one partial checksum. So a GSO super-frame (only TCP over IPv4 is ever handed out
//! by veth) is cut into segments here, as the kernel's `tcp_gso_segment` cuts it (sequence
//! numbers advanced by the MSS, FIN and PSH on the last segment only, CWR on the first, IP ID
//! incremented per segment); each segment's inner TCP checksum is left partial for the kernel
//! (`VNET_F_NEEDS_CSUM` at the inner TCP header), and an outer UDP/GRE checksum is computed
//! from headers only, the way the kernel's local checksum offload (`lco_csum`) does. A frame
//! whose inner checksum is complete leaves the outer one to the kernel instead. With
//! `--tun-remcsum` a partial inner checksum stays partial: GUE's remote checksum offload
//! option tells the real where to finish it, and the UDP checksum covers the packet as sent.
//!
//! PMTU (`ensure_mtu_is_adequate`): the tunnel MTU is the egress MTU less the outer headers; a
//! packet with DF that does not fit is dropped and answered with ICMP fragmentation-needed
//! carrying that MTU, at most [`ICMP_PER_SECOND`] per worker (a token bucket, as the kernel
//! rate-limits `icmp_send`). Without DF IPVS fragments the outer packet; uvs counts a drop.
//! Errors from routers on the tunnel's path reach the director's kernel, not this path:
//! `control::tunnel_icmp` translates them.

use crate::datapath::counters::DropReason;
use crate::io::tx::HEAD_CAP;
use crate::io::{VNET_F_NEEDS_CSUM, VNET_HDR_LEN};
use crate::model::{Tunnel, TunnelCsum, TunnelKind};
use crate::snapshot::TunnelEnd;
use crate::wire::{ETH_HDR_LEN, IPPROTO_TCP, IPPROTO_UDP, MacAddr, csum, icmp, ipv4};

/// IP protocol numbers of the encapsulations.
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_GRE: u8 = 47;
/// GRE's protocol type for an IPv4 payload.
const GRE_PROTO_IPV4: u16 = 0x0800;
/// GRE flags word with the checksum present (C bit).
const GRE_FLAG_CSUM: u16 = 0x8000;
/// GUE flags: the private flags field follows (`GUE_FLAG_PRIV`).
const GUE_FLAG_PRIV: u16 = 0x0001;
/// GUE private flags: remote checksum offload option present (`GUE_PFLAG_REMCSUM`).
const GUE_PFLAG_REMCSUM: u32 = 0x8000_0000;

/// `virtio_net_hdr.gso_type` values (linux/virtio_net.h).
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_ECN: u8 = 0x80;

/// ICMP errors a worker sends per second at most (bucket depth [`ICMP_BURST`]).
pub const ICMP_PER_SECOND: u32 = 1000;
const ICMP_BURST: u32 = 100;
/// The smallest tunnel MTU IPVS accepts.
const MIN_TUNNEL_MTU: usize = 68;
/// The local port range `udp_flow_src_port` maps the flow hash into (Linux's default
/// `ip_local_port_range`).
const GUE_SPORT_MIN: u32 = 32768;
const GUE_SPORT_MAX: u32 = 61000;

/// Bytes the encapsulation adds in front of the inner packet (outer IPv4 header included).
pub fn overhead(t: Tunnel, remcsum_option: bool) -> usize {
    20 + encap_len(t, remcsum_option)
}

/// The encapsulation header between the outer IPv4 header and the inner packet.
fn encap_len(t: Tunnel, remcsum_option: bool) -> usize {
    match t.kind {
        TunnelKind::Ipip => 0,
        TunnelKind::Gue => 8 + 4 + if remcsum_option { 8 } else { 0 },
        TunnelKind::Gre if t.csum == TunnelCsum::Csum => 8,
        TunnelKind::Gre => 4,
    }
}

/// What a worker decided to send for its last frame, other than the frame itself.
pub struct Composer {
    /// Prototype of every packet's head: virtio header, Ethernet, outer headers and, for a
    /// segmented super-frame, the inner IP and TCP headers.
    head: [u8; HEAD_CAP],
    head_len: usize,
    /// Where the payload starts in the frame buffer (virtio header included), and its length.
    payload_from: usize,
    payload_len: usize,
    /// How many packets to send; 0 = none composed (the frame goes out as it is).
    packets: u16,
    seg: Option<Segmenting>,
    next_id: u16,
    icmp: TokenBucket,
    /// Where an ICMP error composed for a dropped frame leaves (`None`: none composed).
    pub egress: Option<u16>,
    limited: bool,
    /// The head is a whole packet to send before the frame itself, which follows unchanged
    /// (this many bytes, virtio header included): a FullNAT connection's PROXY header.
    then_frame: Option<usize>,
}

/// How a super-frame's segments differ from the prototype.
#[derive(Clone, Copy, Debug)]
struct Segmenting {
    mss: usize,
    /// Offsets in the head: the outer IPv4 header, the encapsulation header, the inner IPv4
    /// and TCP headers.
    outer: usize,
    encap: usize,
    inner: usize,
    tcp: usize,
    tunnel: Tunnel,
    remcsum: bool,
}

/// One packet the [`Composer`] filled into a transmit slot: the head's length, and the
/// payload (offset and length in the frame buffer) that follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub head_len: usize,
    pub payload_from: usize,
    pub payload_len: usize,
}

/// A token bucket refilled from the batch clock (milliseconds).
#[derive(Clone, Copy, Debug)]
struct TokenBucket {
    tokens: u32,
    last_ms: u32,
}

impl TokenBucket {
    fn take(&mut self, now_ms: u32) -> bool {
        let elapsed = now_ms.wrapping_sub(self.last_ms);
        let refill = u64::from(elapsed) * u64::from(ICMP_PER_SECOND) / 1000;
        if refill > 0 {
            self.tokens = (u64::from(self.tokens) + refill).min(u64::from(ICMP_BURST)) as u32;
            self.last_ms = now_ms;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

impl Default for Composer {
    fn default() -> Self {
        Composer::new()
    }
}

impl Composer {
    pub fn new() -> Composer {
        Composer {
            head: [0; HEAD_CAP],
            head_len: 0,
            payload_from: 0,
            payload_len: 0,
            packets: 0,
            seg: None,
            next_id: 1,
            icmp: TokenBucket {
                tokens: ICMP_BURST,
                last_ms: 0,
            },
            egress: None,
            limited: false,
            then_frame: None,
        }
    }

    /// Forgets the last decision (called before each frame).
    #[inline]
    pub fn clear(&mut self) {
        self.packets = 0;
        self.egress = None;
        self.limited = false;
        self.then_frame = None;
    }

    /// Composes a packet, written whole by `write` (virtio header first; returns its length),
    /// to go out before the frame, which follows unchanged (`frame_len` bytes, virtio header
    /// included).
    pub fn before_frame(
        &mut self,
        frame_len: usize,
        write: impl FnOnce(&mut [u8; HEAD_CAP]) -> usize,
    ) {
        self.head_len = write(&mut self.head).min(HEAD_CAP);
        self.payload_from = 0;
        self.payload_len = 0;
        self.seg = None;
        self.then_frame = Some(frame_len);
        self.packets = 2;
    }

    /// Composes the frame anew: a head written by `write` (virtio header first; returns its
    /// length), then `payload_len` bytes of the frame from `payload_from` (virtio header
    /// included in the count): a datagram with bytes inserted after its headers.
    pub fn with_head(
        &mut self,
        payload_from: usize,
        payload_len: usize,
        write: impl FnOnce(&mut [u8; HEAD_CAP]) -> usize,
    ) {
        self.head_len = write(&mut self.head).min(HEAD_CAP);
        self.payload_from = payload_from;
        self.payload_len = payload_len;
        self.seg = None;
        self.then_frame = None;
        self.packets = 1;
    }

    /// Whether the last ICMP error was held back by the rate limit.
    pub fn rate_limited(&self) -> bool {
        self.limited
    }

    /// How many packets were composed for the last frame (0: send the frame itself).
    #[inline]
    pub fn packets(&self) -> u16 {
        self.packets
    }

    /// Writes packet `k` (< [`Composer::packets`]) into `slot`.
    #[inline]
    pub fn fill(&self, k: u16, slot: &mut [u8; HEAD_CAP]) -> Part {
        if let (Some(frame_len), 1..) = (self.then_frame, k) {
            return Part {
                head_len: 0,
                payload_from: 0,
                payload_len: frame_len,
            };
        }
        slot[..self.head_len].copy_from_slice(&self.head[..self.head_len]);
        let Some(s) = self.seg else {
            return Part {
                head_len: self.head_len,
                payload_from: self.payload_from,
                payload_len: self.payload_len,
            };
        };
        let k = usize::from(k);
        let from = k * s.mss;
        let len = s.mss.min(self.payload_len - from);
        let last = from + len == self.payload_len;
        let head = &mut slot[..self.head_len];
        let tcp_len = self.head_len - s.tcp + len;
        let inner_len = s.tcp - s.inner + tcp_len;
        // Inner IPv4: length, ID + k, header checksum.
        {
            let ip = &mut head[s.inner..s.tcp];
            ip[2..4].copy_from_slice(&(inner_len as u16).to_be_bytes());
            let id = crate::wire::be16(ip, 4).wrapping_add(k as u16);
            ip[4..6].copy_from_slice(&id.to_be_bytes());
            ip[10..12].fill(0);
            let c = ipv4::checksum(ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
        // TCP: sequence number, flags, and the pseudo-header sum the kernel completes.
        {
            let (ip, tcp) = head.split_at_mut(s.tcp);
            let seq = crate::wire::be32(tcp, 4).wrapping_add(from as u32);
            tcp[4..8].copy_from_slice(&seq.to_be_bytes());
            if !last {
                tcp[13] &= !(TCP_FIN | TCP_PSH);
            }
            if k > 0 {
                tcp[13] &= !TCP_CWR;
            }
            let inner = &ip[s.inner..];
            let pseudo = pseudo_sum(ipv4::src(inner), ipv4::dst(inner), IPPROTO_TCP, tcp_len);
            tcp[16..18].copy_from_slice(&csum::fold(pseudo).to_be_bytes());
        }
        let csum_start = s.tcp - VNET_HDR_LEN;
        set_vnet(head, VNET_F_NEEDS_CSUM, csum_start as u16, 16);
        // A fresh outer ID per segment (the prototype holds the first).
        let id = crate::wire::be16(head, s.outer + 4).wrapping_add(k as u16);
        head[s.outer + 4..s.outer + 6].copy_from_slice(&id.to_be_bytes());
        finish_outer(
            head,
            s.outer,
            s.encap,
            s.tunnel,
            s.remcsum,
            inner_len,
            Partial::At {
                start: csum_start,
                offset: 16,
            },
            &[],
        );
        Part {
            head_len: self.head_len,
            payload_from: self.payload_from + from,
            payload_len: len,
        }
    }

    fn fresh_id(&mut self, n: u16) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(n.max(1));
        id
    }
}

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Where the inner packet's partial checksum is, if it is partial (offsets from the start of
/// the Ethernet frame, as `virtio_net_hdr.csum_start` counts).
#[derive(Clone, Copy, Debug)]
enum Partial {
    None,
    At { start: usize, offset: usize },
}

/// What the tunnel transmit needs to answer a packet that is too big: how to reach the
/// client, and from which address.
#[derive(Clone, Copy, Debug)]
pub struct ClientRoute {
    pub egress: u16,
    pub next_hop: MacAddr,
    pub src_mac: MacAddr,
    pub source: u32,
}

/// The tunnel decision for one frame.
pub enum Sent {
    /// Encapsulated (composed into `Composer`), to leave by `egress`.
    Encapsulated { egress: u16 },
    /// Too big for the tunnel with DF set: dropped, and the ICMP error composed (unless rate
    /// limited, then nothing is).
    TooBig { egress: Option<u16> },
}

/// Encapsulates the frame in `buf` (virtio header + Ethernet frame, parsed and checked,
/// TTL > 1) for the real at `real_addr`. `hop_mac`/`src_mac`/`egress`: the next hop towards
/// the real. `client`: how to answer when the packet is too big (looked up only then).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn encapsulate(
    out: &mut Composer,
    tunnel: Tunnel,
    end: TunnelEnd,
    real_addr: u32,
    hop_mac: MacAddr,
    src_mac: MacAddr,
    egress: u16,
    buf: &mut [u8],
    client: impl FnOnce(&[u8]) -> Option<ClientRoute>,
    now_ms: u32,
) -> Result<Sent, DropReason> {
    let flags = buf[0];
    let gso_type = buf[1] & !GSO_ECN;
    let partial = flags & VNET_F_NEEDS_CSUM != 0;
    let eth = VNET_HDR_LEN;
    let ip_at = eth + ETH_HDR_LEN;
    let ihl = ipv4::header_len(&buf[ip_at..]);
    let ip_len = ipv4::total_len(&buf[ip_at..]);
    let df = crate::wire::be16(&buf[ip_at..], 6) & 0x4000 != 0;
    let segmenting = match gso_type {
        GSO_NONE => None,
        GSO_TCPV4 if ipv4::protocol(&buf[ip_at..]) == IPPROTO_TCP => {
            let mss = usize::from(u16::from_le_bytes([buf[4], buf[5]]));
            let tcp_at = ip_at + ihl;
            let doff = crate::wire::tcp::header_len(&buf[tcp_at..]);
            if mss == 0 || ihl + doff + VNET_HDR_LEN + ETH_HDR_LEN + 20 + 20 > HEAD_CAP {
                return Err(DropReason::UnsupportedGso);
            }
            Some((mss, doff))
        }
        _ => return Err(DropReason::UnsupportedGso),
    };
    // Segments always carry a partial inner checksum.
    let remcsum = tunnel.csum == TunnelCsum::RemCsum
        && tunnel.kind == TunnelKind::Gue
        && (partial || segmenting.is_some());
    let over = overhead(tunnel, remcsum);
    let mtu = usize::from(end.mtu).saturating_sub(over);
    if mtu < MIN_TUNNEL_MTU {
        return Err(DropReason::TunnelTooBig);
    }
    // The largest inner packet that will leave: a segment, or the whole packet.
    let largest = match segmenting {
        Some((mss, doff)) => (ihl + doff + mss).min(ip_len),
        None => ip_len,
    };
    if largest > mtu {
        if !df {
            return Err(DropReason::TunnelNeedsFragments);
        }
        let Some(to) = client(&buf[eth..]) else {
            return Ok(Sent::TooBig { egress: None });
        };
        out.limited = !out.icmp.take(now_ms);
        if out.limited {
            return Ok(Sent::TooBig { egress: None });
        }
        let id = out.fresh_id(1);
        compose_frag_needed(out, &buf[ip_at..ip_at + ip_len], mtu as u16, &to, id);
        return Ok(Sent::TooBig {
            egress: Some(to.egress),
        });
    }

    // The inner packet: TTL − 1 (its header checksum follows incrementally).
    ipv4::decrement_ttl(&mut buf[ip_at..]);
    let inner = &buf[ip_at..ip_at + ihl];
    let tos = ecn_encapsulate(inner[1]);
    let ttl = ipv4::ttl(inner);
    let packets = match segmenting {
        Some((mss, doff)) => (ip_len - ihl - doff).div_ceil(mss).max(1),
        None => 1,
    };
    let Ok(packets) = u16::try_from(packets) else {
        return Err(DropReason::UnsupportedGso);
    };
    let id = out.fresh_id(packets);
    let outer = VNET_HDR_LEN + ETH_HDR_LEN;
    let encap = outer + 20;
    let inner_at = encap + encap_len(tunnel, remcsum);
    let h = &mut out.head;
    h[..VNET_HDR_LEN].fill(0);
    ethernet_header(&mut h[VNET_HDR_LEN..], hop_mac, src_mac);
    let o = &mut h[outer..encap];
    o[0] = 0x45;
    o[1] = tos;
    o[4..6].copy_from_slice(&id.to_be_bytes());
    o[6..8].copy_from_slice(&(if df { 0x4000u16 } else { 0 }).to_be_bytes());
    o[8] = ttl;
    o[9] = match tunnel.kind {
        TunnelKind::Ipip => IPPROTO_IPIP,
        TunnelKind::Gue => IPPROTO_UDP,
        TunnelKind::Gre => IPPROTO_GRE,
    };
    o[12..16].copy_from_slice(&end.source.to_be_bytes());
    o[16..20].copy_from_slice(&real_addr.to_be_bytes());
    let e = &mut h[encap..inner_at];
    match tunnel.kind {
        TunnelKind::Ipip => {}
        TunnelKind::Gue => {
            let hash = flow_hash(&buf[ip_at..ip_at + ihl], &buf[ip_at + ihl..]);
            let sport = GUE_SPORT_MIN
                + ((u64::from(hash) * u64::from(GUE_SPORT_MAX - GUE_SPORT_MIN)) >> 32) as u32;
            e[0..2].copy_from_slice(&(sport as u16).to_be_bytes());
            e[2..4].copy_from_slice(&tunnel.port.to_be_bytes());
            let gue = &mut e[8..];
            gue[1] = IPPROTO_IPIP;
            if remcsum {
                // hlen counts the optional fields, in 32-bit words.
                gue[0] = 2;
                gue[2..4].copy_from_slice(&GUE_FLAG_PRIV.to_be_bytes());
                gue[4..8].copy_from_slice(&GUE_PFLAG_REMCSUM.to_be_bytes());
            } else {
                gue[0] = 0;
                gue[2..4].fill(0);
            }
        }
        TunnelKind::Gre => {
            let flags = if tunnel.csum == TunnelCsum::Csum {
                GRE_FLAG_CSUM
            } else {
                0
            };
            e[0..2].copy_from_slice(&flags.to_be_bytes());
            e[2..4].copy_from_slice(&GRE_PROTO_IPV4.to_be_bytes());
        }
    }
    let shift = inner_at - (VNET_HDR_LEN + ETH_HDR_LEN);
    out.packets = packets;
    match segmenting {
        Some((mss, doff)) => {
            // Segments: the inner headers become part of the head.
            let hdrs = ihl + doff;
            out.head[inner_at..inner_at + hdrs].copy_from_slice(&buf[ip_at..ip_at + hdrs]);
            out.head_len = inner_at + hdrs;
            out.payload_from = ip_at + hdrs;
            out.payload_len = ip_len - hdrs;
            out.seg = Some(Segmenting {
                mss,
                outer,
                encap,
                inner: inner_at,
                tcp: inner_at + ihl,
                tunnel,
                remcsum,
            });
        }
        None => {
            out.head_len = inner_at;
            out.payload_from = ip_at;
            out.payload_len = ip_len;
            out.seg = None;
            let part = if partial {
                let start = usize::from(u16::from_le_bytes([buf[6], buf[7]]));
                let offset = usize::from(u16::from_le_bytes([buf[8], buf[9]]));
                // The inner checksum must lie within the inner packet.
                if start < ETH_HDR_LEN + ihl || start + offset + 2 > ETH_HDR_LEN + ip_len {
                    return Err(DropReason::BadL4Header);
                }
                Partial::At {
                    start: start + shift,
                    offset,
                }
            } else {
                Partial::None
            };
            match part {
                Partial::At { start, offset } => set_vnet(
                    &mut out.head,
                    VNET_F_NEEDS_CSUM,
                    start as u16,
                    offset as u16,
                ),
                Partial::None => set_vnet(&mut out.head, 0, 0, 0),
            }
            let inner_bytes = &buf[ip_at..ip_at + ip_len];
            finish_outer(
                &mut out.head[..inner_at],
                outer,
                encap,
                tunnel,
                remcsum,
                ip_len,
                part,
                inner_bytes,
            );
        }
    }
    Ok(Sent::Encapsulated { egress })
}

/// Fills in what depends on the inner packet's length: outer total length and header
/// checksum, UDP length, the remote checksum offload option, and the outer checksum (UDP for
/// GUE, GRE's own) as the options ask. `head` ends where the inner packet starts; `inner`
/// is the inner packet's bytes when the head holds none of them (not a segment).
#[allow(clippy::too_many_arguments)]
fn finish_outer(
    head: &mut [u8],
    outer: usize,
    encap: usize,
    tunnel: Tunnel,
    remcsum: bool,
    inner_len: usize,
    part: Partial,
    inner: &[u8],
) {
    let inner_at = encap + encap_len(tunnel, remcsum && matches!(part, Partial::At { .. }));
    let total = inner_at - outer + inner_len;
    {
        let o = &mut head[outer..encap];
        o[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        o[10..12].fill(0);
        let c = ipv4::checksum(o);
        o[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let (src, dst) = (ipv4::src(&head[outer..]), ipv4::dst(&head[outer..]));
    let l4_len = total - 20;
    let eth = VNET_HDR_LEN;
    match tunnel.kind {
        TunnelKind::Ipip => {}
        TunnelKind::Gue => {
            head[encap + 4..encap + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            head[encap + 6..encap + 8].fill(0);
            let with_remcsum = remcsum && matches!(part, Partial::At { .. });
            if with_remcsum {
                if let Partial::At { start, offset } = part {
                    // Offsets from the start of the inner packet.
                    let from = start - (inner_at - eth);
                    let opt = &mut head[encap + 16..encap + 20];
                    opt[0..2].copy_from_slice(&(from as u16).to_be_bytes());
                    opt[2..4].copy_from_slice(&((from + offset) as u16).to_be_bytes());
                }
            }
            match (tunnel.csum, part) {
                (TunnelCsum::NoCsum, _) => {}
                // Remote checksum offload: the inner checksum stays partial for the real to
                // complete; the UDP checksum covers the packet as sent, so the kernel
                // computes it in full (IPVS sets CHECKSUM_NONE and `udp_set_csum`).
                (TunnelCsum::RemCsum, Partial::At { .. }) | (_, Partial::None) => {
                    let pseudo = pseudo_sum(src, dst, IPPROTO_UDP, l4_len);
                    head[encap + 6..encap + 8].copy_from_slice(&csum::fold(pseudo).to_be_bytes());
                    set_vnet(head, VNET_F_NEEDS_CSUM, (encap - eth) as u16, 6);
                }
                (_, Partial::At { start, offset }) => {
                    let pseudo = pseudo_sum(src, dst, IPPROTO_UDP, l4_len);
                    let c = lco(head, encap, inner_at, inner, start, offset, pseudo);
                    let c = if c == 0 { 0xffff } else { c };
                    head[encap + 6..encap + 8].copy_from_slice(&c.to_be_bytes());
                }
            }
        }
        TunnelKind::Gre => {
            if tunnel.csum == TunnelCsum::Csum {
                head[encap + 4..encap + 8].fill(0);
                match part {
                    Partial::None => set_vnet(head, VNET_F_NEEDS_CSUM, (encap - eth) as u16, 4),
                    Partial::At { start, offset } => {
                        let c = lco(head, encap, inner_at, inner, start, offset, 0);
                        head[encap + 4..encap + 6].copy_from_slice(&c.to_be_bytes());
                    }
                }
            }
        }
    }
}

/// The outer checksum over a packet whose inner transport checksum is still partial, from
/// headers alone (the kernel's `lco_csum`): once completed, the inner transport segment sums
/// to the complement of the pseudo-header sum its checksum field holds now. `start`/`offset`
/// locate that field (from the start of the Ethernet frame); the bytes before it come from
/// `head` (from `l4`) and, past the head, from `inner` (the inner packet).
fn lco(
    head: &[u8],
    l4: usize,
    inner_at: usize,
    inner: &[u8],
    start: usize,
    offset: usize,
    pseudo: u32,
) -> u16 {
    let start_in_head = start + VNET_HDR_LEN;
    let (acc, field) = if start_in_head + offset + 2 <= head.len() {
        let acc = csum::sum(&head[l4..start_in_head], pseudo);
        (acc, crate::wire::be16(head, start_in_head + offset))
    } else {
        let acc = csum::sum(&head[l4..inner_at], pseudo);
        let from = start_in_head - inner_at;
        let acc = csum::sum(&inner[..from], acc);
        (acc, crate::wire::be16(inner, from + offset))
    };
    !csum::fold(acc + u32::from(!field))
}

/// The pseudo-header sum of a TCP/UDP segment, not folded.
fn pseudo_sum(src: u32, dst: u32, proto: u8, len: usize) -> u32 {
    let [a, b] = csum::words(src);
    let [c, d] = csum::words(dst);
    u32::from(a) + u32::from(b) + u32::from(c) + u32::from(d) + u32::from(proto) + len as u32
}

fn set_vnet(head: &mut [u8], flags: u8, csum_start: u16, csum_offset: u16) {
    head[0] = flags;
    head[1] = GSO_NONE;
    head[2..6].fill(0);
    head[6..8].copy_from_slice(&csum_start.to_le_bytes());
    head[8..10].copy_from_slice(&csum_offset.to_le_bytes());
}

fn ethernet_header(h: &mut [u8], dst: MacAddr, src: MacAddr) {
    h[0..6].copy_from_slice(&dst.0);
    h[6..12].copy_from_slice(&src.0);
    h[12..14].copy_from_slice(&crate::wire::ETHERTYPE_IPV4.to_be_bytes());
}

/// `INET_ECN_encapsulate(tos, tos)`: the outer TOS keeps the DSCP and ECN, but a CE mark
/// becomes ECT(0) (congestion seen before the tunnel is not the tunnel's).
pub fn ecn_encapsulate(tos: u8) -> u8 {
    const ECN_MASK: u8 = 0x03;
    const CE: u8 = 0x03;
    const ECT_0: u8 = 0x02;
    if tos & ECN_MASK == CE {
        (tos & !ECN_MASK) | ECT_0
    } else {
        tos
    }
}

/// A hash of the inner flow (addresses, protocol, ports) for GUE's source port.
fn flow_hash(ip: &[u8], l4: &[u8]) -> u32 {
    let ports = match ipv4::protocol(ip) {
        IPPROTO_TCP | IPPROTO_UDP if l4.len() >= 4 => crate::wire::be32(l4, 0),
        _ => 0,
    };
    let x = (u64::from(ipv4::src(ip)) << 32 | u64::from(ipv4::dst(ip)))
        ^ (u64::from(ports) << 8 | u64::from(ipv4::protocol(ip)))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let h = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    (h ^ (h >> 29)) as u32
}

/// ICMP fragmentation-needed (RFC 1191) to the client about `inner` (its IP packet as
/// received), quoting its IP header and first 8 bytes, with `mtu` as the next-hop MTU.
fn compose_frag_needed(out: &mut Composer, inner: &[u8], mtu: u16, to: &ClientRoute, id: u16) {
    let ihl = ipv4::header_len(inner);
    let quote = (ihl + 8).min(inner.len());
    let icmp_len = icmp::HDR_LEN + quote;
    let total = 20 + icmp_len;
    let h = &mut out.head;
    set_vnet(h, 0, 0, 0);
    ethernet_header(&mut h[VNET_HDR_LEN..], to.next_hop, to.src_mac);
    let ip_at = VNET_HDR_LEN + ETH_HDR_LEN;
    {
        let ip = &mut h[ip_at..ip_at + 20];
        ip.fill(0);
        ip[0] = 0x45;
        // IPTOS_PREC_INTERNETCONTROL, as the kernel's ICMP errors have.
        ip[1] = 0xc0;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip[8] = 64;
        ip[9] = crate::wire::IPPROTO_ICMP;
        ip[12..16].copy_from_slice(&to.source.to_be_bytes());
        ip[16..20].copy_from_slice(&ipv4::src(inner).to_be_bytes());
        let c = ipv4::checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let m = &mut h[ip_at + 20..ip_at + total];
    m[0] = icmp::DEST_UNREACH;
    m[1] = icmp::FRAG_NEEDED;
    m[2..6].fill(0);
    m[6..8].copy_from_slice(&mtu.to_be_bytes());
    m[8..8 + quote].copy_from_slice(&inner[..quote]);
    let c = csum::checksum(m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    out.head_len = ip_at + total;
    out.payload_from = 0;
    out.payload_len = 0;
    out.seg = None;
    out.packets = 1;
}

#[cfg(test)]
mod tests;
