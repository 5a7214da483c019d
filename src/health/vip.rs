//! The DR-specific "through the VIP" probe.
//!
//! A real server that lacks the VIP on `lo` passes every check sent to its own address, yet
//! drops every request the director forwards (they are addressed to the VIP). This probe sends
//! what the director would forward: a TCP SYN to VIP:port, in an Ethernet frame addressed to
//! the real server's MAC (taken from the control thread's ARP-resolved neighbour slot, read
//! only), from the director's interface address. A real with the VIP answers with a SYN-ACK
//! from VIP:port to the director's address (passes; the probe then resets the half-open
//! connection with a RST), or a RST (service closed: fails). A real without the VIP drops the
//! frame: the probe times out (fails).
//!
//! The director's own kernel also sees the SYN-ACK and answers it with a RST towards the VIP;
//! that is harmless (nobody on the LAN answers ARP for the VIP but uvs, which ignores its own
//! kernel's requests, so it is dropped).
//!
//! For a tunnelling real the SYN goes through the tunnel, encapsulated exactly as the datapath
//! encapsulates the real's traffic (`datapath::tunnel`), to the next hop towards the real: a
//! real whose tunnel end is down (no `tunl0`, no decapsulation) or that lacks the VIP never
//! answers. Its SYN-ACK comes back unencapsulated, routed to the director's tunnel source.
//!
//! Frames are built and parsed here (pure, unit tested); the socket is an AF_PACKET socket
//! bound to the interface with `ETH_P_IP`.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fsm::Outcome;
use crate::io::socket::{open_probe, recv_frame, send_frame, wait_readable};
use crate::neigh::cache::NeighTable;
use crate::wire::{self, MacAddr};

/// Everything the probe needs to reach one real server.
#[derive(Clone)]
pub struct VipPath {
    pub interface: String,
    pub ifindex: u32,
    pub src_mac: MacAddr,
    pub src_ip: Ipv4Addr,
    /// The real's neighbour slot (written by the control thread's ARP engine); for a
    /// tunnelling real, its next hop's.
    pub slot: u32,
    pub neigh: Arc<NeighTable>,
    /// A tunnelling real: its encapsulation and address (the probe's SYN is tunnelled).
    pub tunnel: Option<TunnelTo>,
}

/// Where a tunnelled probe goes: the real's address, the encapsulation, the director's end.
#[derive(Clone, Copy, Debug)]
pub struct TunnelTo {
    pub real: Ipv4Addr,
    pub encap: crate::model::Tunnel,
    pub end: crate::snapshot::TunnelEnd,
}

/// `frame` (an Ethernet frame holding an IPv4 packet) encapsulated for `to` as the datapath
/// does it, addressed to `next_hop`; `None` if it does not fit the tunnel.
pub fn encapsulated(
    frame: &[u8],
    to: &TunnelTo,
    next_hop: MacAddr,
    src_mac: MacAddr,
) -> Option<Vec<u8>> {
    use crate::datapath::tunnel::{Composer, Sent, encapsulate};
    let mut buf = vec![0u8; crate::io::VNET_HDR_LEN];
    buf.extend_from_slice(frame);
    let mut out = Composer::new();
    let sent = encapsulate(
        &mut out,
        to.encap,
        to.end,
        u32::from(to.real),
        next_hop,
        src_mac,
        0,
        &mut buf,
        |_| None,
        0,
    )
    .ok()?;
    if !matches!(sent, Sent::Encapsulated { .. }) || out.packets() != 1 {
        return None;
    }
    let mut slot = [0u8; crate::io::tx::HEAD_CAP];
    let part = out.fill(0, &mut slot);
    let mut f = slot.get(crate::io::VNET_HDR_LEN..part.head_len)?.to_vec();
    f.extend_from_slice(buf.get(part.payload_from..part.payload_from + part.payload_len)?);
    // The head's virtio header may ask the kernel for a checksum the probe socket (without
    // an offload header) cannot; complete it here.
    if slot[0] & crate::io::VNET_F_NEEDS_CSUM != 0 {
        let start = usize::from(u16::from_le_bytes([slot[6], slot[7]]));
        let offset = usize::from(u16::from_le_bytes([slot[8], slot[9]]));
        let c = !wire::csum::fold(wire::csum::sum(f.get(start..)?, 0));
        let c = if c == 0 { 0xffff } else { c };
        f.get_mut(start + offset..start + offset + 2)?
            .copy_from_slice(&c.to_be_bytes());
    }
    Some(f)
}

impl std::fmt::Debug for VipPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VipPath({} from {})", self.interface, self.src_ip)
    }
}

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP segment in an Ethernet frame, checksums complete.
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    dst_mac: MacAddr,
    src_mac: MacAddr,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    seq: u32,
    ack: u32,
    flags: u8,
) -> Vec<u8> {
    let mss: &[u8] = if flags & wire::tcp::SYN != 0 {
        &[2, 4, 0x05, 0xb4]
    } else {
        &[]
    };
    let tcp_len = 20 + mss.len();
    let total = 20 + tcp_len;
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&dst_mac.0);
    f.extend_from_slice(&src_mac.0);
    f.extend_from_slice(&wire::ETHERTYPE_IPV4.to_be_bytes());
    let ip_at = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src.0.octets());
    f.extend_from_slice(&dst.0.octets());
    let c = csum_fold(csum_add(0, &f[ip_at..ip_at + 20]));
    f[ip_at + 10..ip_at + 12].copy_from_slice(&c.to_be_bytes());
    let tcp_at = f.len();
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&ack.to_be_bytes());
    f.push(((tcp_len / 4) as u8) << 4);
    f.push(flags);
    f.extend_from_slice(&64240u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(mss);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.0.octets());
    pseudo.extend_from_slice(&dst.0.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    let c = csum_fold(csum_add(csum_add(0, &pseudo), &f[tcp_at..]));
    f[tcp_at + 16..tcp_at + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// What came back for our SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// SYN-ACK; carries its sequence number.
    SynAck(u32),
    Rst,
}

/// Matches a received frame against the probe `(us, vip)`.
pub fn match_answer(frame: &[u8], us: (Ipv4Addr, u16), vip: (Ipv4Addr, u16)) -> Option<Answer> {
    if frame.len() < 14 + 20 + 20 || wire::ethernet::ethertype(frame) != wire::ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[14..];
    if wire::ipv4::protocol(ip) != wire::IPPROTO_TCP
        || wire::ipv4::src(ip) != u32::from(vip.0)
        || wire::ipv4::dst(ip) != u32::from(us.0)
    {
        return None;
    }
    let t = &ip[wire::ipv4::header_len(ip)..];
    if t.len() < 20 || wire::be16(t, 0) != vip.1 || wire::be16(t, 2) != us.1 {
        return None;
    }
    let flags = wire::tcp::flags(t);
    if flags & wire::tcp::RST != 0 {
        return Some(Answer::Rst);
    }
    (flags & (wire::tcp::SYN | wire::tcp::ACK) == wire::tcp::SYN | wire::tcp::ACK)
        .then(|| Answer::SynAck(wire::be32(t, 4)))
}

fn pseudo_random() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let x = (t.subsec_nanos() as u64) ^ ((std::process::id() as u64) << 32) ^ t.as_secs();
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
}

/// What a SYN to VIP:port, addressed to one real server's MAC, got back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynReply {
    /// The real server holds the VIP and something listens on the port.
    SynAck,
    /// The real server holds the VIP but nothing listens on the port.
    Rst,
    /// No answer: typically the VIP is not on the real server's loopback.
    Nothing,
}

/// Where a probe leaves from: the director's interface and its address on the real's LAN.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSource<'a> {
    pub interface: &'a str,
    pub ifindex: u32,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
}

/// Sends one SYN from `from` to `vip:port` in a frame addressed to `rs_mac`, and waits up to
/// `timeout` for the answer. A half-open connection it opened on the real server is reset.
/// Shared by the health checker (`through_vip`) and `uvs doctor`.
pub fn syn_through_vip(
    from: &ProbeSource<'_>,
    rs_mac: MacAddr,
    vip: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> std::io::Result<SynReply> {
    syn_through(from, rs_mac, None, vip, port, timeout)
}

/// [`syn_through_vip`], the SYN (and the RST that tears it down) tunnelled when `tunnel` says
/// so, to `hop_mac`, the next hop towards the real.
pub fn syn_through(
    from: &ProbeSource<'_>,
    hop_mac: MacAddr,
    tunnel: Option<&TunnelTo>,
    vip: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> std::io::Result<SynReply> {
    let (src_mac, src_ip) = (from.mac, from.ip);
    let rs_mac = hop_mac;
    let fd = open_probe(from.interface, from.ifindex).map_err(std::io::Error::other)?;
    let r = pseudo_random();
    let sport = 40_000 + (r % 20_000) as u16;
    let seq = r.rotate_left(13);
    let us = (src_ip, sport);
    let wrap = |f: Vec<u8>| -> std::io::Result<Vec<u8>> {
        match tunnel {
            None => Ok(f),
            Some(t) => encapsulated(&f, t, hop_mac, src_mac).ok_or_else(|| {
                std::io::Error::other("the probe does not fit the tunnel to the real")
            }),
        }
    };
    let syn = wrap(tcp_frame(
        rs_mac,
        src_mac,
        us,
        (vip, port),
        seq,
        0,
        wire::tcp::SYN,
    ))?;
    send_frame(fd.as_raw_fd(), &syn)?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    let mut pfd = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    loop {
        while let Ok(Some(n)) = recv_frame(fd.as_raw_fd(), &mut buf) {
            match match_answer(&buf[..n], us, (vip, port)) {
                Some(Answer::SynAck(their_seq)) => {
                    // Tear the half-open connection down on the real server.
                    let rst = wrap(tcp_frame(
                        rs_mac,
                        src_mac,
                        us,
                        (vip, port),
                        seq.wrapping_add(1),
                        their_seq.wrapping_add(1),
                        wire::tcp::RST | wire::tcp::ACK,
                    ));
                    if let Ok(rst) = rst {
                        let _ = send_frame(fd.as_raw_fd(), &rst);
                    }
                    return Ok(SynReply::SynAck);
                }
                Some(Answer::Rst) => return Ok(SynReply::Rst),
                None => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(SynReply::Nothing);
        }
        wait_readable(&mut pfd, left.as_millis().clamp(1, 1000) as i32);
    }
}

/// The health checker's `through_vip` probe: one SYN to `vip:port` at the real's MAC.
pub fn probe(path: &VipPath, vip: Ipv4Addr, port: u16, timeout: Duration) -> Outcome {
    let Some(rs_mac) = path.neigh.get(path.slot) else {
        return Outcome::Fail("through-the-VIP: the real server's MAC is not known yet".into());
    };
    let from = ProbeSource {
        interface: &path.interface,
        ifindex: path.ifindex,
        mac: path.src_mac,
        ip: path.src_ip,
    };
    match syn_through(&from, rs_mac, path.tunnel.as_ref(), vip, port, timeout) {
        Ok(SynReply::SynAck) => Outcome::Pass { weight: None },
        Ok(SynReply::Rst) => Outcome::Fail(format!(
            "through-the-VIP: {vip}:{port} answered RST (service not listening)"
        )),
        Ok(SynReply::Nothing) => Outcome::Fail(match &path.tunnel {
            None => format!(
                "through-the-VIP: no answer from {vip}:{port} at {rs_mac} within {timeout:?} (VIP not on the real server's lo?)"
            ),
            Some(t) => format!(
                "through-the-tunnel: no answer from {vip}:{port} through the {} tunnel to {} within {timeout:?} (tunnel end down, or VIP not on the real server's lo?)",
                t.encap.kind.name(),
                t.real
            ),
        }),
        Err(e) => Outcome::Fail(format!(
            "through-the-VIP: packet socket on {}: {e}",
            path.interface
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_frame_has_valid_checksums_and_matches_its_answer() {
        let a = MacAddr([2, 0, 0, 0, 0, 0x11]);
        let b = MacAddr([2, 0, 0, 0, 0, 0x02]);
        let us = (Ipv4Addr::new(10, 0, 0, 2), 45_000);
        let vip = (Ipv4Addr::new(10, 0, 0, 100), 80);
        let f = tcp_frame(a, b, us, vip, 7, 0, wire::tcp::SYN);
        assert_eq!(f.len(), 14 + 20 + 24);
        assert_eq!(wire::ipv4::checksum(&f[14..34]), 0);
        // TCP checksum over pseudo header + segment folds to zero.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&us.0.octets());
        pseudo.extend_from_slice(&vip.0.octets());
        pseudo.extend_from_slice(&[0, 6, 0, 24]);
        assert_eq!(csum_fold(csum_add(csum_add(0, &pseudo), &f[34..])), 0);
        // The SYN-ACK a real with the VIP sends back.
        let synack = tcp_frame(b, a, vip, us, 99, 8, wire::tcp::SYN | wire::tcp::ACK);
        assert_eq!(match_answer(&synack, us, vip), Some(Answer::SynAck(99)));
        let rst = tcp_frame(b, a, vip, us, 0, 8, wire::tcp::RST | wire::tcp::ACK);
        assert_eq!(match_answer(&rst, us, vip), Some(Answer::Rst));
        // Our own SYN, or an answer for another port, is not an answer.
        assert_eq!(match_answer(&f, us, vip), None);
        let other = tcp_frame(b, a, vip, (us.0, 1), 0, 0, wire::tcp::SYN | wire::tcp::ACK);
        assert_eq!(match_answer(&other, us, vip), None);
    }

    #[test]
    fn a_tunnelled_probe_is_what_the_real_decapsulates_into_the_syn() {
        let hop = MacAddr([2, 0, 0, 0, 1, 2]);
        let dir = MacAddr([2, 0, 0, 0, 2, 0]);
        let us = (Ipv4Addr::new(203, 0, 113, 10), 45_000);
        let vip = (Ipv4Addr::new(203, 0, 113, 2), 80);
        let syn = tcp_frame(hop, dir, us, vip, 7, 0, wire::tcp::SYN);
        for encap in [
            crate::model::Tunnel::IPIP,
            crate::model::Tunnel {
                kind: crate::model::TunnelKind::Gue,
                port: 6080,
                csum: crate::model::TunnelCsum::Csum,
            },
        ] {
            let to = TunnelTo {
                real: Ipv4Addr::new(10, 0, 0, 2),
                encap,
                end: crate::snapshot::TunnelEnd {
                    source: u32::from(us.0),
                    mtu: 1500,
                },
            };
            let f = encapsulated(&syn, &to, hop, dir).unwrap();
            assert_eq!(&f[..6], &hop.0);
            let mut with_vnet = vec![0u8; crate::io::VNET_HDR_LEN];
            with_vnet.extend_from_slice(&f);
            let gue = (encap.kind == crate::model::TunnelKind::Gue).then_some(6080);
            let inner = crate::lab::tunl0::decapsulate(&mut with_vnet, gue).unwrap();
            // The SYN, TTL − 1 (as the datapath sends it).
            let got = &with_vnet[inner];
            let want = &syn[14..];
            assert_eq!(got.len(), want.len());
            assert_eq!(got[8], want[8] - 1);
            assert_eq!(got[20..], want[20..], "{encap:?}");
        }
    }
}
