//! The FullNAT steps of the per-frame decision: a new flow's local port, the PROXY header a
//! connection's real gets first, the real's replies (found by their local port), and the ICMP
//! errors about them. The per-worker state they use is `datapath::fullnat`.

use super::*;
use crate::datapath::fullnat::{FnatConn, NoPort};
use crate::io::tx::HEAD_CAP;
use crate::proxy_protocol::{self, Endpoints};
use crate::wire::{IPV4_MIN_HDR_LEN, UDP_HDR_LEN};

/// The TCP flags of the PROXY header's segment.
const PSH_ACK: u8 = 0x18;

impl Forwarder {
    /// A local port for a new flow to FullNAT `real` (`port` its port, `source` the director's
    /// address towards it): on one of the service's local addresses, else on `source`.
    pub(super) fn local_port(
        &mut self,
        svc: &ServiceEntry,
        real: Real<'_>,
        (port, source): (u16, u32),
        p: &Parsed,
        counters: &WorkerCounters,
    ) -> Result<LocalPort, DropReason> {
        let tcp = p.key.proto == IPPROTO_TCP;
        let client = ipv4_from(p.key.saddr);
        let header = Endpoints {
            client,
            client_port: p.key.sport,
            server: ipv4_from(p.key.daddr),
            server_port: p.key.dport,
            udp: !tcp,
        };
        let mut scratch = [0u8; proxy_protocol::MAX_LEN];
        // The header goes before the client's first byte, which only a SYN tells (a flow
        // picked up mid-stream by sloppy_tcp gets none).
        let syn = tcp && p.tcp_flags & tcp::SYN != 0;
        let header_len = match (tcp, syn) {
            (true, false) => None,
            _ => proxy_protocol::encode(svc.proxy, &header, &mut scratch),
        };
        let conn = FnatConn {
            in_use: true,
            client: p.key.saddr,
            client_port: p.key.sport,
            vip: p.key.daddr,
            vport: p.key.dport,
            proto: p.key.proto,
            real_addr: real.dest.addr,
            real_port: masq_port(port, p.key.dport),
            real: Some(real.dest.id),
            client_mac: p.src_mac,
            client_isn: p.seq,
            delta: match (tcp, header_len) {
                (true, Some(n)) => n as u32,
                _ => 0,
            },
            header_unacked: header_len.is_some(),
            header_sent: false,
            proxy: svc.proxy,
        };
        let candidates: &[u32] = if svc.laddrs.is_empty() {
            std::slice::from_ref(&source)
        } else {
            &svc.laddrs
        };
        let _ = counters;
        self.local_ports
            .allocate(candidates, conn)
            .map_err(|_: NoPort| DropReason::NoLocalPort)
    }

    /// After a client frame of FullNAT flow `from` was rewritten for its real: a TCP
    /// connection's PROXY header, as its own segment before the frame, with the first client
    /// segment after the SYN (the handshake's last ACK, so a server that speaks first gets it
    /// too), and again after the real showed it never got it (see [`Self::fullnat_reply`]);
    /// a UDP flow's, in front of its first datagram.
    pub(super) fn send_proxy_header(&mut self, from: LocalPort, p: &Parsed, buf: &[u8]) {
        let Some(conn) = self.local_ports.conn(from).copied() else {
            return;
        };
        if !conn.header_unacked || self.compose.packets() > 0 {
            return;
        }
        let vip = ipv4_from(conn.vip);
        let header = Endpoints {
            client: ipv4_from(conn.client),
            client_port: conn.client_port,
            server: vip,
            server_port: conn.vport,
            udp: conn.proto == IPPROTO_UDP,
        };
        let mut text = [0u8; proxy_protocol::MAX_LEN];
        let Some(n) = proxy_protocol::encode(conn.proxy, &header, &mut text) else {
            return;
        };
        let text = &text[..n];
        if conn.proto == IPPROTO_TCP {
            let plain = p.tcp_flags & (tcp::SYN | tcp::RST) == 0;
            if plain && !conn.header_sent {
                let frame_len = buf.len();
                self.compose
                    .before_frame(frame_len, |head| proxy_segment(buf, &conn, text, head));
                if let Some(c) = self.local_ports.conn_mut(from) {
                    c.header_sent = true;
                }
            }
        } else if conn.proto == IPPROTO_UDP {
            if let Some(c) = self.local_ports.conn_mut(from) {
                c.header_unacked = false;
            }
            prepend_to_datagram(&mut self.compose, buf, text);
        }
    }

    /// A FullNAT real's reply to `LIP:lport`: its connection is found by the port, the flow's
    /// state advanced, and it leaves from the VIP to the client.
    pub(super) fn fullnat_reply(
        &mut self,
        snap: &Snapshot,
        neigh: &NeighTable,
        counters: &WorkerCounters,
        buf: &mut [u8],
        p: &Parsed,
        now: u32,
    ) -> Result<u16, DropReason> {
        let from = LocalPort {
            addr: p.key.daddr,
            port: p.key.dport,
        };
        let conn = *self
            .local_ports
            .conn(from)
            .filter(|c| {
                c.real_addr == p.key.saddr && c.real_port == p.key.sport && c.proto == p.key.proto
            })
            .ok_or(DropReason::ReplyNoFlow)?;
        let key = client_key(&conn);
        let (at, flow) = self
            .flows
            .lookup(&key, now)
            .filter(|(_, f)| f.local == Some(from))
            .ok_or(DropReason::ReplyNoFlow)?;
        if self.ha.gate.is_standby(conn.vip) {
            return Err(DropReason::Standby);
        }
        check_ttl(buf)?;
        let real = snap.real(flow.real).ok_or(DropReason::RealRemoved)?;
        let (state, timeout) = after_packet(snap, p, flow.state, Direction::Output);
        self.advance(at, &flow, state, timeout, now);
        // The real's acknowledgement tells whether it has the PROXY header: all of it (done),
        // or none of it after it went out (lost: the client's next segment takes it again).
        let plain_ack = p.tcp_flags & (tcp::ACK | tcp::SYN) == tcp::ACK;
        if conn.header_unacked
            && conn.proto == IPPROTO_TCP
            && plain_ack
            && let Some(c) = self.local_ports.conn_mut(from)
        {
            if c.acks_header(p.ack) {
                c.header_unacked = false;
            } else if c.header_sent && p.ack == c.client_isn.wrapping_add(1) {
                c.header_sent = false;
            }
        }
        let to = self.client_side(snap, neigh, &conn)?;
        self.trace_reply(real);
        let link = Link {
            neigh,
            interface_macs: &self.interface_macs,
        };
        let egress = xmit::fullnat_reply(&to, &conn, buf, &link)?;
        if let Some(c) = counters.real(real.dest.id) {
            bump(&c.out_packets, 1);
            bump(&c.out_bytes, p.ip_len as u64);
        }
        Ok(egress)
    }

    /// An ICMP error about a packet the director sent a FullNAT real (from `LIP:lport`): to
    /// the client, from the VIP, quoting what the client sent.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fullnat_icmp_to_client(
        &mut self,
        snap: &Snapshot,
        neigh: &NeighTable,
        counters: &WorkerCounters,
        buf: &mut [u8],
        p: &Parsed,
        ic: IcmpError,
        now: u32,
    ) -> Result<u16, DropReason> {
        let from = LocalPort {
            addr: p.key.daddr,
            port: p.key.dport,
        };
        let conn = *self
            .local_ports
            .conn(from)
            .filter(|c| {
                c.real_addr == p.key.saddr && c.real_port == p.key.sport && c.proto == p.key.proto
            })
            .ok_or(DropReason::IcmpNoFlow)?;
        let (_, flow) = self
            .flows
            .lookup(&client_key(&conn), now)
            .filter(|(_, f)| f.local == Some(from))
            .ok_or(DropReason::IcmpNoFlow)?;
        if self.ha.gate.is_standby(conn.vip) {
            return Err(DropReason::Standby);
        }
        check_ttl(buf)?;
        let real = snap.real(flow.real).ok_or(DropReason::RealRemoved)?;
        let to = self.client_side(snap, neigh, &conn)?;
        self.trace_reply(real);
        let link = Link {
            neigh,
            interface_macs: &self.interface_macs,
        };
        let egress = xmit::icmp_fullnat_to_client(&to, &conn, ic, buf, &link)?;
        if let Some(c) = counters.real(real.dest.id) {
            bump(&c.out_packets, 1);
            bump(&c.out_bytes, p.ip_len as u64);
        }
        Ok(egress)
    }

    /// How a FullNAT connection's replies reach its client: by the director's route to the
    /// client, whose gateway's MAC uvs resolves, or the client's own MAC on a direct link.
    fn client_side(
        &self,
        snap: &Snapshot,
        neigh: &NeighTable,
        conn: &FnatConn,
    ) -> Result<xmit::ClientSide, DropReason> {
        let route = snap
            .routes
            .lookup(conn.client)
            .and_then(|r| r.hop)
            .ok_or(DropReason::NoRoute)?;
        let next_hop = match route.gateway {
            Some(slot) => neigh.get(slot).ok_or(DropReason::NoNeighbor)?,
            None if conn.client_mac != MacAddr::ZERO => conn.client_mac,
            None => return Err(DropReason::NoNeighbor),
        };
        Ok(xmit::ClientSide {
            vip: conn.vip,
            vport: conn.vport,
            next_hop,
            egress: route.egress,
        })
    }
}

/// The flow key of a FullNAT connection (its client's side).
fn client_key(c: &FnatConn) -> FlowKey {
    FlowKey {
        saddr: c.client,
        daddr: c.vip,
        sport: c.client_port,
        dport: c.vport,
        proto: c.proto,
    }
}

fn ipv4_from(a: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(a)
}

/// Writes into `head` the segment that carries the PROXY header `text` to the real: the
/// rewritten frame's Ethernet and IP headers, its TCP header without options, sequence =
/// the client's first byte, ACK|PSH, complete checksums. Returns its length (virtio header
/// included), or 0 if it does not fit.
fn proxy_segment(frame: &[u8], conn: &FnatConn, text: &[u8], head: &mut [u8; HEAD_CAP]) -> usize {
    let ip_at = VNET_HDR_LEN + ETH_HDR_LEN;
    let tcp_at = ip_at + IPV4_MIN_HDR_LEN;
    let len = tcp_at + wire::TCP_MIN_HDR_LEN + text.len();
    let Some(ip) = frame.get(ip_at..) else {
        return 0;
    };
    let ihl = ipv4::header_len(ip);
    let Some(tcp) = frame.get(ip_at + ihl..ip_at + ihl + wire::TCP_MIN_HDR_LEN) else {
        return 0;
    };
    if len > HEAD_CAP {
        return 0;
    }
    head[..VNET_HDR_LEN].fill(0);
    head[VNET_HDR_LEN..ip_at].copy_from_slice(&frame[VNET_HDR_LEN..ip_at]);
    {
        let h = &mut head[ip_at..tcp_at];
        h.copy_from_slice(&ip[..IPV4_MIN_HDR_LEN]);
        h[0] = 0x45;
        let total = (IPV4_MIN_HDR_LEN + wire::TCP_MIN_HDR_LEN + text.len()) as u16;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[10..12].fill(0);
        let c = ipv4::checksum(h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
    }
    {
        let t = &mut head[tcp_at..len];
        t[..wire::TCP_MIN_HDR_LEN].copy_from_slice(tcp);
        t[4..8].copy_from_slice(&conn.client_isn.wrapping_add(1).to_be_bytes());
        t[12] = 5 << 4;
        t[13] = PSH_ACK;
        t[16..20].fill(0);
        t[wire::TCP_MIN_HDR_LEN..].copy_from_slice(text);
    }
    let (src, dst) = (ipv4::src(&head[ip_at..]), ipv4::dst(&head[ip_at..]));
    let seg_len = len - tcp_at;
    let c = l4_checksum(src, dst, IPPROTO_TCP, &[&head[tcp_at..len]]);
    head[tcp_at + 16..tcp_at + 18].copy_from_slice(&c.to_be_bytes());
    debug_assert_eq!(seg_len, wire::TCP_MIN_HDR_LEN + text.len());
    len
}

/// Composes the rewritten datagram in `frame` anew with `text` after its UDP header: lengths
/// and checksums fixed (a datagram sent without a checksum keeps none).
fn prepend_to_datagram(out: &mut Composer, frame: &[u8], text: &[u8]) {
    let ip_at = VNET_HDR_LEN + ETH_HDR_LEN;
    let Some(ip) = frame.get(ip_at..) else { return };
    let ihl = ipv4::header_len(ip);
    let total = ipv4::total_len(ip);
    let udp_at = ip_at + ihl;
    let payload_at = udp_at + UDP_HDR_LEN;
    let end = ip_at + total;
    let head_len = payload_at + text.len();
    // A GSO datagram (UDP segmentation offload) would be cut by the kernel after the header
    // went in once: send it as it is.
    if frame[1] != 0 || head_len > HEAD_CAP || end > frame.len() || payload_at > end {
        return;
    }
    let payload = &frame[payload_at..end];
    out.with_head(payload_at, end - payload_at, |head| {
        head[..payload_at].copy_from_slice(&frame[..payload_at]);
        head[payload_at..head_len].copy_from_slice(text);
        // Every checksum is complete: the kernel no longer knows where this one starts.
        head[0] = 0;
        head[2..VNET_HDR_LEN].fill(0);
        let new_total = (total + text.len()) as u16;
        {
            let h = &mut head[ip_at..udp_at];
            h[2..4].copy_from_slice(&new_total.to_be_bytes());
            h[10..12].fill(0);
            let c = ipv4::checksum(h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let udp_len = (UDP_HDR_LEN + text.len() + payload.len()) as u16;
        head[udp_at + 4..udp_at + 6].copy_from_slice(&udp_len.to_be_bytes());
        let had_checksum = wire::be16(frame, udp_at + 6) != 0;
        head[udp_at + 6..udp_at + 8].fill(0);
        if had_checksum {
            let (src, dst) = (ipv4::src(&head[ip_at..]), ipv4::dst(&head[ip_at..]));
            let c = l4_checksum(src, dst, IPPROTO_UDP, &[&head[udp_at..head_len], payload]);
            let c = if c == 0 { 0xffff } else { c };
            head[udp_at + 6..udp_at + 8].copy_from_slice(&c.to_be_bytes());
        }
        head_len
    });
}

/// The TCP/UDP checksum over the pseudo-header and `parts` (concatenated; every part but the
/// last of even length).
fn l4_checksum(src: u32, dst: u32, proto: u8, parts: &[&[u8]]) -> u16 {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.to_be_bytes());
    pseudo[4..8].copy_from_slice(&dst.to_be_bytes());
    pseudo[9] = proto;
    pseudo[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    let mut acc = wire::csum::sum(&pseudo, 0);
    for p in parts {
        acc = wire::csum::sum(p, acc);
    }
    !wire::csum::fold(acc)
}
