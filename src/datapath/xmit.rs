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
//!
//! FullNAT ([`fullnat`], [`fullnat_reply`]) rewrites both ends the same way: client → real
//! `CIP:cport → VIP:vport` becomes `LIP:lport → RIP:rport`, and the reply back. Its TCP
//! sequence translation and timestamp stripping (`datapath::fullnat`) change the segment's
//! own bytes: a complete checksum takes those changes too, a partial one needs nothing more.

use crate::datapath::counters::DropReason;
use crate::datapath::fullnat::{self, Checksum, FnatConn, LocalPort};
use crate::datapath::process::IcmpError;
use crate::datapath::tunnel::{self, Composer};
use crate::io::{VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM, VNET_HDR_LEN};
use crate::model::Tunnel;
use crate::neigh::cache::NeighTable;
use crate::snapshot::{NextHop, Real, Snapshot, TunnelEnd, Xmit};
use crate::wire::{ETH_HDR_LEN, IPPROTO_TCP, IPPROTO_UDP, MacAddr, csum, ethernet, ipv4, l4};

/// What every transmit function reads besides the frame: the neighbour slots (MACs of next
/// hops) and the director's interface MACs by egress index.
pub struct Link<'a> {
    pub neigh: &'a NeighTable,
    pub interface_macs: &'a [MacAddr],
}

/// What the tunnel transmit needs besides the frame: where composed packets go, and how
/// to answer a client whose packet does not fit the tunnel.
pub struct TunnelCtx<'a> {
    pub out: &'a mut Composer,
    pub snap: &'a Snapshot,
    pub now_ms: u32,
}

/// A FullNAT flow's side towards its real: the local address and port it leaves from, and
/// what its client → real sequence numbers gain (the PROXY header's length).
#[derive(Clone, Copy, Debug)]
pub struct FnatLeg {
    pub from: LocalPort,
    pub delta: u32,
}

/// Sends `buf` (virtio header + frame) to `real` the way its forwarding method says; returns
/// the egress interface. A tunnel composes its packets in `tun.out` instead of rewriting the
/// frame. `leg`: the flow's FullNAT side, for a FullNAT real.
#[inline]
pub fn transmit(
    real: Real<'_>,
    buf: &mut [u8],
    link: &Link<'_>,
    tun: &mut TunnelCtx<'_>,
    leg: Option<FnatLeg>,
) -> Result<u16, DropReason> {
    let hop = real.path.hop;
    match real.path.xmit {
        Xmit::Route => route(hop, buf, link),
        Xmit::Masq { port } => masq(hop, real.dest.addr, port, buf, link),
        Xmit::Tunnel { encap, end } => tunnel(real, encap, end, buf, link, tun),
        Xmit::FullNat { port, .. } => {
            let leg = leg.ok_or(DropReason::NoLocalPort)?;
            fullnat(hop, leg, (real.dest.addr, port), buf, link)
        }
    }
}

/// FullNAT, client → real: source := the local address and port, destination := the real's;
/// TCP: sequence numbers moved past the PROXY header, timestamps out of a SYN.
#[inline]
pub fn fullnat(
    hop: NextHop,
    leg: FnatLeg,
    real: (u32, u16),
    buf: &mut [u8],
    link: &Link<'_>,
) -> Result<u16, DropReason> {
    let (dst, src) = macs(hop, link)?;
    let partial = buf[0] & VNET_F_NEEDS_CSUM != 0;
    rewrite(buf, Side::Source, leg.from.addr, leg.from.port, dst, src);
    rewrite_again(buf, Side::Destination, real.0, real.1);
    if let Some(tcp) = tcp_header(buf) {
        fullnat::rewrite_to_real(tcp, leg.delta, checksum_kind(partial));
    }
    Ok(hop.egress)
}

/// FullNAT, real → client: source := the VIP and virtual port, destination := the client;
/// TCP: acknowledgements back into the client's numbering.
#[inline]
pub fn fullnat_reply(
    to: &ClientSide,
    conn: &FnatConn,
    buf: &mut [u8],
    link: &Link<'_>,
) -> Result<u16, DropReason> {
    let src = to.src_mac(link)?;
    let partial = buf[0] & VNET_F_NEEDS_CSUM != 0;
    rewrite(buf, Side::Source, to.vip, to.vport, to.next_hop, src);
    rewrite_again(buf, Side::Destination, conn.client, conn.client_port);
    if let Some(tcp) = tcp_header(buf) {
        fullnat::rewrite_to_client(tcp, conn, checksum_kind(partial));
    }
    Ok(to.egress)
}

fn checksum_kind(partial: bool) -> Checksum {
    if partial {
        Checksum::Partial
    } else {
        Checksum::Full
    }
}

/// The TCP header of a parsed TCP frame (options included).
fn tcp_header(buf: &mut [u8]) -> Option<&mut [u8]> {
    let ip = buf.get_mut(VNET_HDR_LEN + ETH_HDR_LEN..)?;
    if ipv4::protocol(ip) != IPPROTO_TCP {
        return None;
    }
    let ihl = ipv4::header_len(ip);
    let tcp = ip.get_mut(ihl..)?;
    let len = crate::wire::tcp::header_len(tcp);
    tcp.get_mut(..len)
}

/// Tunnelling: see `datapath::tunnel`. A packet too big for the tunnel is dropped; the ICMP
/// error answering it, if any, is composed in `tun.out` (to leave by `tun.out.egress`).
#[inline]
pub fn tunnel(
    real: Real<'_>,
    encap: Tunnel,
    end: TunnelEnd,
    buf: &mut [u8],
    link: &Link<'_>,
    tun: &mut TunnelCtx<'_>,
) -> Result<u16, DropReason> {
    let hop = real.path.hop;
    let (dst, src) = macs(hop, link)?;
    let snap = tun.snap;
    let client = |frame: &[u8]| client_route(snap, frame, link);
    let sent = tunnel::encapsulate(
        tun.out,
        encap,
        end,
        real.dest.addr,
        dst,
        src,
        hop.egress,
        buf,
        client,
        tun.now_ms,
    )?;
    match sent {
        tunnel::Sent::Encapsulated { egress } => Ok(egress),
        tunnel::Sent::TooBig { egress } => {
            tun.out.egress = egress;
            Err(DropReason::TunnelTooBig)
        }
    }
}

/// How to reach the sender of `frame` (an Ethernet frame to a VIP): the director's route to
/// its source address, the frame's own source MAC when the client is on-link.
fn client_route(snap: &Snapshot, frame: &[u8], link: &Link<'_>) -> Option<tunnel::ClientRoute> {
    let client = ipv4::src(&frame[ETH_HDR_LEN..]);
    let route = snap.routes.lookup(client)?.hop?;
    let next_hop = match route.gateway {
        Some(slot) => link.neigh.get(slot)?,
        None => ethernet::src(frame),
    };
    Some(tunnel::ClientRoute {
        egress: route.egress,
        next_hop,
        src_mac: *link.interface_macs.get(usize::from(route.egress))?,
        source: snap
            .interface_addr(route.egress)
            .unwrap_or_else(|| ipv4::dst(&frame[ETH_HDR_LEN..])),
    })
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

/// Where a masquerading real's reply goes: rewritten to come from `vip:vport`, to
/// `next_hop` (the client's gateway, or the client) out of `egress`.
#[derive(Clone, Copy, Debug)]
pub struct ClientSide {
    pub vip: u32,
    pub vport: u16,
    pub next_hop: MacAddr,
    pub egress: u16,
}

impl ClientSide {
    fn src_mac(&self, link: &Link<'_>) -> Result<MacAddr, DropReason> {
        link.interface_macs
            .get(usize::from(self.egress))
            .copied()
            .ok_or(DropReason::NoEgress)
    }
}

/// Masquerading, real → client: source := the VIP and virtual port.
#[inline]
pub fn masq_reply(to: &ClientSide, buf: &mut [u8], link: &Link<'_>) -> Result<u16, DropReason> {
    let src = to.src_mac(link)?;
    rewrite(buf, Side::Source, to.vip, to.vport, to.next_hop, src);
    Ok(to.egress)
}

/// An ICMP error about a packet the VIP sent a client, to the flow's real: unchanged but for
/// the MACs and TTL with direct routing, encapsulated with tunnelling (as IPVS sends it with
/// the connection's own transmit); with masquerading, addressed to
/// the real and quoting the packet as the real sent it (source := the real's address and
/// port).
///
/// With FullNAT, from the flow's local address to the real, quoting the packet as the
/// director sent it to the real (`LIP:lport → RIP:rport`).
pub fn icmp_to_real(
    real: Real<'_>,
    ic: IcmpError,
    buf: &mut [u8],
    link: &Link<'_>,
    tun: &mut TunnelCtx<'_>,
    leg: Option<FnatLeg>,
) -> Result<u16, DropReason> {
    let hop = real.path.hop;
    match real.path.xmit {
        Xmit::Route => route(hop, buf, link),
        Xmit::Tunnel { encap, end } => tunnel(real, encap, end, buf, link, tun),
        Xmit::Masq { port } => {
            let (dst, src) = macs(hop, link)?;
            rewrite_icmp(buf, ic, Side::Destination, real.dest.addr, port, dst, src);
            Ok(hop.egress)
        }
        Xmit::FullNat { port, .. } => {
            let leg = leg.ok_or(DropReason::NoLocalPort)?;
            let (dst, src) = macs(hop, link)?;
            let (lip, rip) = ((leg.from.addr, leg.from.port), (real.dest.addr, port));
            rewrite_icmp_ends(buf, ic, (lip.0, rip.0), (rip, lip), (dst, src));
            Ok(hop.egress)
        }
    }
}

/// An ICMP error about a packet the director sent a FullNAT real (from its local address),
/// to the client: from the VIP, quoting the packet as the client sent it.
pub fn icmp_fullnat_to_client(
    to: &ClientSide,
    conn: &FnatConn,
    ic: IcmpError,
    buf: &mut [u8],
    link: &Link<'_>,
) -> Result<u16, DropReason> {
    let src = to.src_mac(link)?;
    let client = (conn.client, conn.client_port);
    let vip = (to.vip, to.vport);
    rewrite_icmp_ends(
        buf,
        ic,
        (vip.0, client.0),
        (client, vip),
        (to.next_hop, src),
    );
    Ok(to.egress)
}

/// Rewrites both ends of an ICMP error's outer header (`outer`: source, destination) and of
/// the packet it quotes (`quoted`: source and destination address and port), the MACs
/// (`macs`: destination, source) and TTL; recomputes both IP header checksums and the ICMP
/// checksum. The quoted transport checksum is left alone, as IPVS leaves it.
fn rewrite_icmp_ends(
    buf: &mut [u8],
    ic: IcmpError,
    outer: (u32, u32),
    quoted: ((u32, u16), (u32, u16)),
    macs: (MacAddr, MacAddr),
) {
    buf[0] &= !(VNET_F_DATA_VALID | VNET_F_NEEDS_CSUM);
    let frame = &mut buf[VNET_HDR_LEN..];
    ethernet::set_macs(frame, macs.0, macs.1);
    let end = ETH_HDR_LEN + ipv4::total_len(&frame[ETH_HDR_LEN..]);
    {
        let inner = &mut frame[ic.inner_off..end];
        let (head, l4) = inner.split_at_mut(ic.inner_ihl);
        ipv4::set_src(head, quoted.0.0);
        ipv4::set_dst(head, quoted.1.0);
        l4::set_sport(l4, quoted.0.1);
        l4::set_dport(l4, quoted.1.1);
        head[10..12].fill(0);
        let c = ipv4::checksum(head);
        ipv4::set_header_checksum(head, c);
    }
    {
        let msg = &mut frame[ic.icmp_off..end];
        msg[2..4].fill(0);
        let c = csum::checksum(msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
    }
    let head = &mut frame[ETH_HDR_LEN..ic.icmp_off];
    ipv4::set_src(head, outer.0);
    ipv4::set_dst(head, outer.1);
    ipv4::decrement_ttl(head);
    head[10..12].fill(0);
    let c = ipv4::checksum(head);
    ipv4::set_header_checksum(head, c);
}

/// An ICMP error from a masquerading real about a packet it received, to the client: from
/// the VIP, quoting the packet as the client sent it (destination := the VIP and port).
pub fn icmp_to_client(
    to: &ClientSide,
    ic: IcmpError,
    buf: &mut [u8],
    link: &Link<'_>,
) -> Result<u16, DropReason> {
    let src = to.src_mac(link)?;
    rewrite_icmp(buf, ic, Side::Source, to.vip, to.vport, to.next_hop, src);
    Ok(to.egress)
}

/// Rewrites one end of an ICMP error's outer header and the other end of the packet it quotes
/// (the quoted packet went the other way), the MACs and TTL; updates both IP header
/// checksums, and recomputes the ICMP checksum over the whole message, as IPVS does. The
/// quoted transport checksum is left alone (IPVS leaves it too: the quote is 8 bytes).
fn rewrite_icmp(
    buf: &mut [u8],
    ic: IcmpError,
    outer: Side,
    addr: u32,
    port: u16,
    dst: MacAddr,
    src: MacAddr,
) {
    buf[0] &= !(VNET_F_DATA_VALID | VNET_F_NEEDS_CSUM);
    let frame = &mut buf[VNET_HDR_LEN..];
    ethernet::set_macs(frame, dst, src);
    let end = ETH_HDR_LEN + ipv4::total_len(&frame[ETH_HDR_LEN..]);
    {
        let inner = &mut frame[ic.inner_off..end];
        let (head, l4) = inner.split_at_mut(ic.inner_ihl);
        let old = match outer {
            Side::Destination => ipv4::src(head),
            Side::Source => ipv4::dst(head),
        };
        match outer {
            Side::Destination => {
                ipv4::set_src(head, addr);
                if port != 0 {
                    l4::set_sport(l4, port);
                }
            }
            Side::Source => {
                ipv4::set_dst(head, addr);
                if port != 0 {
                    l4::set_dport(l4, port);
                }
            }
        }
        let c = csum::update(
            ipv4::header_checksum(head),
            &csum::words(old),
            &csum::words(addr),
        );
        ipv4::set_header_checksum(head, c);
    }
    {
        let msg = &mut frame[ic.icmp_off..end];
        msg[2..4].fill(0);
        let c = csum::checksum(msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
    }
    let head = &mut frame[ETH_HDR_LEN..ic.icmp_off];
    let old = match outer {
        Side::Source => ipv4::src(head),
        Side::Destination => ipv4::dst(head),
    };
    match outer {
        Side::Source => ipv4::set_src(head, addr),
        Side::Destination => ipv4::set_dst(head, addr),
    }
    let c = csum::update(
        ipv4::header_checksum(head),
        &csum::words(old),
        &csum::words(addr),
    );
    ipv4::set_header_checksum(head, c);
    ipv4::decrement_ttl(head);
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
    // Port 0: a fwmark service's real that keeps the packet's port.
    let port = if port == 0 { old_port } else { port };
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

/// Rewrites the other end of a frame [`rewrite`] already rewrote one end of: address, port and
/// the checksums covering them (MACs and TTL are done).
fn rewrite_again(buf: &mut [u8], side: Side, addr: u32, port: u16) {
    let partial = buf[0] & VNET_F_NEEDS_CSUM != 0;
    let ip = &mut buf[VNET_HDR_LEN + ETH_HDR_LEN..];
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
    let port = if port == 0 { old_port } else { port };
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
