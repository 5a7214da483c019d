//! Transmit functions, one per forwarding method, as IPVS has them (`ip_vs_xmit.c`:
//! `ip_vs_dr_xmit`, `ip_vs_nat_xmit`, `ip_vs_tunnel_xmit`, chosen per connection as
//! `cp->packet_xmit`). The decision step ends in [`transmit`] with the real's compiled
//! [`RealPath`]; each function rewrites the frame in place and returns the egress interface,
//! or the reason it cannot be sent.
//!
//! Calling context: a worker, per frame, with the frame in the receive ring (`virtio_net_hdr`
//! followed by the Ethernet frame), already parsed and checked by `process::parse`: the IPv4
//! header is complete, its checksum verified, TTL > 1.
//!
//! Direct routing ([`route`]) rewrites the two MAC fields only: destination := the next hop's
//! MAC (the real server itself), source := the egress interface's MAC (keeping the router's
//! MAC as source would teach the LAN switch the router's MAC on the director's port). IP
//! addresses and ports never change. Like IPVS (`ip_vs_dr_xmit` → `decrement_ttl` +
//! `ip_send_check`), the TTL is decremented and the IP header checksum refreshed —
//! incrementally (RFC 1624), which is exact for a header whose checksum was verified. The
//! transport checksum is not touched: it does not cover the TTL, and when it is still partial
//! (veth offloads) the `virtio_net_hdr` carried along tells the kernel to finish it.

use crate::datapath::counters::DropReason;
use crate::io::{VNET_F_DATA_VALID, VNET_HDR_LEN};
use crate::neigh::cache::NeighTable;
use crate::snapshot::{NextHop, RealPath, Xmit};
use crate::wire::{ETH_HDR_LEN, MacAddr, ethernet, ipv4};

/// What every transmit function reads besides the frame: the neighbour slots (MACs of next
/// hops) and the director's interface MACs by egress index.
pub struct Link<'a> {
    pub neigh: &'a NeighTable,
    pub interface_macs: &'a [MacAddr],
}

/// Sends `buf` (virtio header + frame) the way `path` says; returns the egress interface.
#[inline]
pub fn transmit(path: &RealPath, buf: &mut [u8], link: &Link<'_>) -> Result<u16, DropReason> {
    match path.xmit {
        Xmit::Route => route(path.hop, buf, link),
    }
}

/// Direct routing: see the module documentation.
#[inline]
pub fn route(hop: NextHop, buf: &mut [u8], link: &Link<'_>) -> Result<u16, DropReason> {
    let (dst, src) = macs(hop, link)?;
    let frame = &mut buf[VNET_HDR_LEN..];
    ethernet::set_macs(frame, dst, src);
    ipv4::decrement_ttl(&mut frame[ETH_HDR_LEN..]);
    // The receive side's "checksum verified" flag means nothing on transmit.
    buf[0] &= !VNET_F_DATA_VALID;
    Ok(hop.egress)
}

/// The next hop's MAC and the egress interface's own.
#[inline]
fn macs(hop: NextHop, link: &Link<'_>) -> Result<(MacAddr, MacAddr), DropReason> {
    let dst = link.neigh.get(hop.neigh).ok_or(DropReason::NoNeighbor)?;
    let src = *link
        .interface_macs
        .get(usize::from(hop.egress))
        .ok_or(DropReason::NoEgress)?;
    Ok((dst, src))
}
