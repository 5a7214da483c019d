//! `uvs tun-endpoint`: the real server's end of LVS-TUN on kernels without the `ipip`, `fou`
//! and `ip_gre` modules (`ip link add … type ipip` answers "Unknown device type"), where the
//! seeds' `tunl0` cannot exist. It stands in for `tunl0` (IPIP), `ip fou add port N gue` (GUE)
//! and `gre0` (GRE): it receives the tunnel's frames addressed to this host on one interface,
//! decapsulates them as those drivers do, and hands the inner packet to the local IP stack
//! through a TUN device (named `tunl0` by default). The real then answers the client
//! directly, from the VIP on `lo`, as with the kernel's drivers; the same sysctls apply
//! (`arp_ignore=1`, `arp_announce=2`, `rp_filter=0` on all, the device and the NIC).
//!
//! Like the drivers it checks what it strips: the outer IPv4 header checksum, GRE's and
//! UDP's checksums when present, GUE's version, and completes a checksum the sender left
//! partial (veth offloads keep `CHECKSUM_PARTIAL` across namespaces; the `virtio_net_hdr`
//! says where), including GUE's remote checksum offload. Sink sockets claim protocols 4 and
//! 47 and the GUE port, so the kernel sends no ICMP unreachable for what the endpoint takes.
//! On a kernel with `ipip`, use `tunl0` itself: the labs do.

use std::ops::Range;

use anyhow::{Context, Result};

use crate::io::{VNET_F_NEEDS_CSUM, VNET_HDR_LEN};
use crate::wire::{ETH_HDR_LEN, ETHERTYPE_IPV4, IPPROTO_UDP, csum, ipv4};

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_GRE: u8 = 47;
const GRE_C: u16 = 0x8000;
const GRE_K: u16 = 0x2000;
const GRE_S: u16 = 0x1000;
const GRE_VERSION: u16 = 0x0007;
const GUE_FLAG_PRIV: u16 = 0x0001;
const GUE_PFLAG_REMCSUM: u32 = 0x8000_0000;

/// Why a frame was not decapsulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("truncated or malformed headers")]
    Malformed,
    #[error("bad outer IPv4 header checksum")]
    OuterChecksum,
    #[error("an outer fragment (not reassembled)")]
    Fragment,
    #[error("bad GRE or UDP checksum")]
    TunnelChecksum,
    #[error("not IPv4 inside, or a GRE/GUE version or option this endpoint does not take")]
    Unsupported,
    #[error("UDP to another port than the GUE port")]
    NotGue,
}

/// The inner IPv4 packet of a tunnel frame (`virtio_net_hdr` + Ethernet frame), as a range of
/// `buf`, with every checksum the sender left partial completed in place.
pub fn decapsulate(buf: &mut [u8], gue_port: Option<u16>) -> Result<Range<usize>, Reject> {
    if buf.len() < VNET_HDR_LEN + ETH_HDR_LEN + 20 {
        return Err(Reject::Malformed);
    }
    if buf[0] & VNET_F_NEEDS_CSUM != 0 {
        let start = usize::from(u16::from_le_bytes([buf[6], buf[7]])) + VNET_HDR_LEN;
        let offset = usize::from(u16::from_le_bytes([buf[8], buf[9]]));
        complete(buf, start, offset)?;
    }
    let eth = VNET_HDR_LEN;
    if crate::wire::be16(buf, eth + 12) != ETHERTYPE_IPV4 {
        return Err(Reject::Malformed);
    }
    let ip_at = eth + ETH_HDR_LEN;
    let ip = &buf[ip_at..];
    let ihl = ipv4::header_len(ip);
    let total = ipv4::total_len(ip);
    if ipv4::version(ip) != 4 || ihl < 20 || total < ihl || total > ip.len() {
        return Err(Reject::Malformed);
    }
    if ipv4::checksum(&ip[..ihl]) != 0 {
        return Err(Reject::OuterChecksum);
    }
    if ipv4::is_fragment(ip) {
        return Err(Reject::Fragment);
    }
    let (src, dst) = (ipv4::src(ip), ipv4::dst(ip));
    let payload = ip_at + ihl..ip_at + total;
    let inner_at = match ipv4::protocol(ip) {
        IPPROTO_IPIP => payload.start,
        IPPROTO_GRE => payload.start + gre_header(&buf[payload.clone()])?,
        IPPROTO_UDP => {
            let udp = &buf[payload.clone()];
            if udp.len() < 8 + 4 {
                return Err(Reject::Malformed);
            }
            if Some(crate::wire::be16(udp, 2)) != gue_port {
                return Err(Reject::NotGue);
            }
            if usize::from(crate::wire::be16(udp, 4)) != udp.len() {
                return Err(Reject::Malformed);
            }
            if crate::wire::be16(udp, 6) != 0 {
                let pseudo = pseudo_sum(src, dst, IPPROTO_UDP, udp.len());
                if csum::fold(csum::sum(udp, pseudo)) != 0xffff {
                    return Err(Reject::TunnelChecksum);
                }
            }
            let (len, remcsum) = gue_header(&udp[8..])?;
            let inner_at = payload.start + 8 + len;
            if let Some((start, field)) = remcsum {
                complete(&mut buf[..payload.end], inner_at + start, field - start)?;
            }
            inner_at
        }
        _ => return Err(Reject::Unsupported),
    };
    let inner = buf.get(inner_at..payload.end).ok_or(Reject::Malformed)?;
    if inner.len() < 20 || ipv4::version(inner) != 4 {
        return Err(Reject::Unsupported);
    }
    let inner_total = ipv4::total_len(inner);
    if inner_total < 20 || inner_total > inner.len() {
        return Err(Reject::Malformed);
    }
    Ok(inner_at..inner_at + inner_total)
}

/// The length of a GRE header (RFC 2890: checksum, key, sequence number), its checksum
/// verified; only IPv4 inside.
fn gre_header(gre: &[u8]) -> Result<usize, Reject> {
    if gre.len() < 4 {
        return Err(Reject::Malformed);
    }
    let flags = crate::wire::be16(gre, 0);
    if flags & GRE_VERSION != 0 || crate::wire::be16(gre, 2) != ETHERTYPE_IPV4 {
        return Err(Reject::Unsupported);
    }
    let mut len = 4;
    if flags & GRE_C != 0 {
        if csum::fold(csum::sum(gre, 0)) != 0xffff {
            return Err(Reject::TunnelChecksum);
        }
        len += 4;
    }
    for bit in [GRE_K, GRE_S] {
        if flags & bit != 0 {
            len += 4;
        }
    }
    if gre.len() < len {
        return Err(Reject::Malformed);
    }
    Ok(len)
}

/// GUE (draft-ietf-intarea-gue) version 0 carrying IPv4: its length, and the remote checksum
/// offload option's (start, field) offsets from the inner packet's start when present.
fn gue_header(gue: &[u8]) -> Result<(usize, Option<(usize, usize)>), Reject> {
    let (control, version) = (gue[0] & 0x20 != 0, gue[0] >> 6);
    let len = 4 + usize::from(gue[0] & 0x1f) * 4;
    if version != 0 || control || gue[1] != IPPROTO_IPIP {
        return Err(Reject::Unsupported);
    }
    if gue.len() < len {
        return Err(Reject::Malformed);
    }
    let flags = crate::wire::be16(gue, 2);
    if flags & GUE_FLAG_PRIV == 0 {
        return Ok((len, None));
    }
    if len < 4 + 4 || flags & !GUE_FLAG_PRIV != 0 {
        return Err(Reject::Unsupported);
    }
    let private = crate::wire::be32(gue, 4);
    if private & GUE_PFLAG_REMCSUM == 0 {
        return Ok((len, None));
    }
    if len < 4 + 4 + 4 {
        return Err(Reject::Malformed);
    }
    let start = usize::from(crate::wire::be16(gue, 8));
    let field = usize::from(crate::wire::be16(gue, 10));
    if field < start {
        return Err(Reject::Malformed);
    }
    Ok((len, Some((start, field))))
}

/// Completes a partial checksum: the field at `start + offset` holds the pseudo-header sum;
/// the checksum covers everything from `start` to the end of `buf`.
fn complete(buf: &mut [u8], start: usize, offset: usize) -> Result<(), Reject> {
    if start + offset + 2 > buf.len() {
        return Err(Reject::Malformed);
    }
    let c = !csum::fold(csum::sum(&buf[start..], 0));
    buf[start + offset..start + offset + 2].copy_from_slice(&c.to_be_bytes());
    buf[0] &= !VNET_F_NEEDS_CSUM;
    Ok(())
}

fn pseudo_sum(src: u32, dst: u32, proto: u8, len: usize) -> u32 {
    let [a, b] = csum::words(src);
    let [c, d] = csum::words(dst);
    u32::from(a) + u32::from(b) + u32::from(c) + u32::from(d) + u32::from(proto) + len as u32
}

/// What `uvs tun-endpoint` serves.
#[derive(Clone, Debug)]
pub struct EndpointOptions {
    /// The interface the tunnel's frames arrive on.
    pub interface: String,
    /// The TUN device decapsulated packets enter by.
    pub device: String,
    /// GUE's UDP port (`ip fou add port N gue`), if GUE is taken.
    pub gue_port: Option<u16>,
}

/// Runs the endpoint until the process is stopped.
pub fn run(opts: &EndpointOptions) -> Result<()> {
    use std::os::fd::AsRawFd;
    let tun = crate::io::tun::open_tun(&opts.device)
        .with_context(|| format!("creating TUN device {} (/dev/net/tun)", opts.device))?;
    crate::io::tun::set_up(&opts.device).with_context(|| format!("setting {} up", opts.device))?;
    let _ipip = crate::io::tun::open_protocol_sink(IPPROTO_IPIP).context("raw socket, IPIP")?;
    let _gre = crate::io::tun::open_protocol_sink(IPPROTO_GRE).context("raw socket, GRE")?;
    let _gue = match opts.gue_port {
        Some(p) => Some(
            crate::io::tun::open_udp_sink(p).with_context(|| format!("UDP port {p} for GUE"))?,
        ),
        None => None,
    };
    let rx = crate::io::tun::open_endpoint_rx(&opts.interface, opts.gue_port.unwrap_or(0))?;
    log::info!(
        "tunnel endpoint on {}: IPIP, GRE{} into {}",
        opts.interface,
        opts.gue_port
            .map(|p| format!(", GUE on UDP port {p}"))
            .unwrap_or_default(),
        opts.device
    );
    // A GSO super-frame of the sender's may arrive whole: room for 64 KiB plus headers.
    let mut buf = vec![0u8; VNET_HDR_LEN + (1 << 16) + 256];
    let (mut taken, mut rejected) = (0u64, 0u64);
    loop {
        let Some(n) = crate::io::tun::recv_timeout(rx.as_raw_fd(), &mut buf, 1000)? else {
            continue;
        };
        match decapsulate(&mut buf[..n], opts.gue_port) {
            Ok(inner) => {
                taken += 1;
                if let Err(e) = crate::io::tun::write_packet(tun.as_raw_fd(), &buf[inner]) {
                    log::warn!("writing to {}: {e}", opts.device);
                }
            }
            Err(why) => {
                rejected += 1;
                log::debug!("frame not decapsulated: {why} ({taken} taken, {rejected} not)");
            }
        }
    }
}

#[cfg(test)]
mod tests;
