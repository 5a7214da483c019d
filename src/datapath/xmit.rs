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
//!
//! Masquerading ([`masq`], IPVS's `ip_vs_nat_xmit` + `tcp_dnat_handler`) also rewrites the
//! destination address and port to the real's; its replies ([`masq_reply`], IPVS's
//! `handle_response` + `tcp_snat_handler`) get the VIP and virtual port back as source. Both
//! update the IP header checksum and the transport checksum incrementally (RFC 1624), with
//! the three cases IPVS has: a complete checksum takes the address and port changes; a
//! partial one (`VNET_F_NEEDS_CSUM`: the field holds the pseudo-header sum, and the kernel
//! completes it over the segment, ports included, on transmit) takes the address change
//! only; a UDP datagram sent without a checksum (zero) keeps none, and a computed zero is
//! sent as 0xFFFF. GSO super-frames are always partial, and are segmented by the kernel after
//! the rewrite, so each segment carries the new addresses.

use crate::datapath::counters::DropReason;
use crate::io::{VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM, VNET_HDR_LEN};
use crate::neigh::cache::NeighTable;
use crate::snapshot::{NextHop, Real, Xmit};
use crate::wire::{ETH_HDR_LEN, IPPROTO_UDP, MacAddr, csum, ethernet, ipv4, l4};

/// What every transmit function reads besides the frame: the neighbour slots (MACs of next
/// hops) and the director's interface MACs by egress index.
pub struct Link<'a> {
    pub neigh: &'a NeighTable,
    pub interface_macs: &'a [MacAddr],
}

/// Sends `buf` (virtio header + frame) to `real` the way its forwarding method says; returns
/// the egress interface.
#[inline]
pub fn transmit(real: Real<'_>, buf: &mut [u8], link: &Link<'_>) -> Result<u16, DropReason> {
    let hop = real.path.hop;
    match real.path.xmit {
        Xmit::Route => route(hop, buf, link),
        Xmit::Masq { port } => masq(hop, real.dest.addr, port, buf, link),
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

/// Masquerading, client → real: destination := the real's address and port.
#[inline]
pub fn masq(
    hop: NextHop,
    addr: u32,
    port: u16,
    buf: &mut [u8],
    link: &Link<'_>,
) -> Result<u16, DropReason> {
    let (dst, src) = macs(hop, link)?;
    rewrite(buf, Side::Destination, addr, port, dst, src);
    Ok(hop.egress)
}

/// Masquerading, real → client: source := the VIP and virtual port; the frame goes to
/// `next_hop` (the client's gateway, or the client) out of `egress`.
#[inline]
pub fn masq_reply(
    vip: u32,
    vport: u16,
    next_hop: MacAddr,
    egress: u16,
    buf: &mut [u8],
    link: &Link<'_>,
) -> Result<u16, DropReason> {
    let src = *link
        .interface_macs
        .get(usize::from(egress))
        .ok_or(DropReason::NoEgress)?;
    rewrite(buf, Side::Source, vip, vport, next_hop, src);
    Ok(egress)
}

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// Rewrites one end's address and port (TCP or UDP; headers checked by the parser), the
/// MACs, TTL − 1, and every checksum that covers what changed.
#[inline]
fn rewrite(buf: &mut [u8], side: Side, addr: u32, port: u16, dst: MacAddr, src: MacAddr) {
    let partial = buf[0] & VNET_F_NEEDS_CSUM != 0;
    buf[0] &= !VNET_F_DATA_VALID;
    let frame = &mut buf[VNET_HDR_LEN..];
    ethernet::set_macs(frame, dst, src);
    let ip = &mut frame[ETH_HDR_LEN..];
    let ihl = ipv4::header_len(ip);
    let proto = ipv4::protocol(ip);
    let old_addr = match side {
        Side::Source => ipv4::src(ip),
        Side::Destination => ipv4::dst(ip),
    };
    let (head, l4) = ip.split_at_mut(ihl);
    let old_port = match side {
        Side::Source => l4::sport(l4),
        Side::Destination => l4::dport(l4),
    };
    if let Some(at) = l4::checksum_offset(proto) {
        let check = crate::wire::be16(l4, at);
        let (o, n) = (csum::words(old_addr), csum::words(addr));
        let new = if partial {
            csum::update_partial(check, &o, &n)
        } else if proto == IPPROTO_UDP && check == 0 {
            0
        } else {
            let c = csum::update(check, &[o[0], o[1], old_port], &[n[0], n[1], port]);
            if proto == IPPROTO_UDP && c == 0 {
                0xffff
            } else {
                c
            }
        };
        l4[at..at + 2].copy_from_slice(&new.to_be_bytes());
    }
    match side {
        Side::Source => {
            l4::set_sport(l4, port);
            ipv4::set_src(head, addr);
        }
        Side::Destination => {
            l4::set_dport(l4, port);
            ipv4::set_dst(head, addr);
        }
    }
    let c = csum::update(
        ipv4::header_checksum(head),
        &csum::words(old_addr),
        &csum::words(addr),
    );
    ipv4::set_header_checksum(head, c);
    ipv4::decrement_ttl(head);
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
