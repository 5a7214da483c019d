//! The per-frame decision, pure: bytes in, verdict out, frame rewritten in place when it is
//! forwarded. No I/O, no allocation, no lock; time is a parameter.
//!
//! The pipeline, in [`Forwarder::decide`]: parse and verify the headers → find the service
//! (and drop what a standing-by director must not forward) → the flow: its table entry, or a
//! new one (adopted from the connection sync, else scheduled, through a persistence template
//! when the service has one) → the real's transmit function (`xmit`), which rewrites the
//! frame as its forwarding method says. Every frame ends forwarded or counted under exactly
//! one drop reason.

use std::sync::Arc;

use crate::conns::ConnCounts;
use crate::datapath::counters::{DropReason, ReuseReason, WorkerCounters, bump};
use crate::datapath::flow_table::{Flow, FlowTable, LocalPort, Overwritten, Return, SlotRef};
use crate::datapath::fullnat::LocalPorts;
use crate::datapath::tap::{self, Outcome, Tap, Via};
use crate::datapath::templates::{TemplateKey, TemplateTable};
use crate::datapath::tunnel::Composer;
use crate::datapath::xmit::{self, Link, TunnelCtx};
use crate::flow::FlowKey;
use crate::flow::{Direction, TcpState, next_state};
use crate::io::VNET_HDR_LEN;
use crate::io::huge_array::MapError;
use crate::io::ring::RxFrame;
use crate::model::ForwardMethod;
use crate::neigh::cache::NeighTable;
use crate::snapshot::{Real, ServiceEntry, Snapshot, Xmit};
use crate::sync::{HaHooks, SyncRecord, SyncedFlow};
use crate::wire::{
    self, ETH_HDR_LEN, ETHERTYPE_IPV4, ETHERTYPES_VLAN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    IPV4_MIN_HDR_LEN, MacAddr, ethernet, ipv4, tcp,
};

/// What to do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten in place; send it (virtio header + frame) on egress interface `egress`.
    Forward {
        egress: u16,
    },
    /// Send the `packets` the forwarder composed ([`Forwarder::compose`]: a tunnel's
    /// encapsulated packet or segments, or the ICMP error answering a dropped frame) on
    /// `egress`.
    Compose {
        egress: u16,
        packets: u16,
    },
    Drop(DropReason),
}

/// Receive-ring status bit for a VLAN tag carried out of band.
pub const STATUS_VLAN_VALID: u32 = 1 << 4;

/// Per-worker forwarding state.
pub struct Forwarder {
    pub flows: FlowTable,
    pub sloppy_tcp: bool,
    /// MAC of each interface, by the index snapshots use for `egress`.
    pub interface_macs: Vec<MacAddr>,
    /// Live connection counts, shared by all workers (see `conns`).
    pub conns: Arc<ConnCounts>,
    /// Persistence templates, shared by all workers (see `templates`).
    pub templates: Arc<TemplateTable>,
    /// IPVS `expire_quiescent_template`.
    pub expire_quiescent_template: bool,
    /// VRRP standby gate, synced flows, sync records out (inert without HA).
    pub ha: Arc<HaHooks>,
    /// `uvs trace` / `uvs capture` producer side (see `tap`); `None` in tests.
    pub tap: Option<Tap>,
    /// What a tunnel composed for the last frame (see `tunnel`).
    pub compose: Composer,
    /// FullNAT: the local ports this worker owns, and their connections.
    pub local_ports: LocalPorts,
    /// A composed packet, whole, as a trace shows it.
    trace_buf: Vec<u8>,
}

/// The real server a new flow goes to, and how it was found.
struct Scheduled<'s> {
    real: Real<'s>,
    /// The persistence template slot the flow is a child of.
    template: Option<u32>,
    via: Via,
}

/// Template slots a worker's [`Forwarder::new`] gets until the daemon hands it the shared
/// table ([`Forwarder::with_templates`]).
const PRIVATE_TEMPLATES: usize = 1024;

/// Parsed fields of a frame worth a flow lookup.
struct Parsed {
    /// TCP/UDP: the frame's five-tuple. An ICMP error: the quoted packet's, reversed (the
    /// flow or return entry it is about).
    key: FlowKey,
    tcp_flags: u8,
    /// TCP: sequence and acknowledgement numbers (0 otherwise).
    seq: u32,
    ack: u32,
    ip_len: usize,
    /// Where the frame came from on the link (a client's next hop, for its replies).
    src_mac: MacAddr,
    /// An ICMP error about a TCP or UDP packet.
    icmp: Option<IcmpError>,
}

/// Where an ICMP error's parts are, as offsets into the Ethernet frame.
#[derive(Clone, Copy, Debug)]
pub struct IcmpError {
    /// The ICMP header.
    pub icmp_off: usize,
    /// The quoted packet's IP header, and its length.
    pub inner_off: usize,
    pub inner_ihl: usize,
}

fn parse(frame: &[u8], status: u32) -> Result<Parsed, DropReason> {
    if status & STATUS_VLAN_VALID != 0 {
        return Err(DropReason::VlanTagged);
    }
    if frame.len() < ETH_HDR_LEN {
        return Err(DropReason::Truncated);
    }
    match ethernet::ethertype(frame) {
        ETHERTYPE_IPV4 => {}
        // A tag still in the bytes (the NIC or veth did not strip it into metadata).
        t if ETHERTYPES_VLAN.contains(&t) => return Err(DropReason::VlanTagged),
        _ => return Err(DropReason::NotIpv4),
    }
    let src_mac = ethernet::src(frame);
    if src_mac.is_group() {
        return Err(DropReason::BadSource);
    }
    let ip = &frame[ETH_HDR_LEN..];
    if ip.len() < IPV4_MIN_HDR_LEN {
        return Err(DropReason::Truncated);
    }
    let ihl = ipv4::header_len(ip);
    if ipv4::version(ip) != 4 || ihl < IPV4_MIN_HDR_LEN {
        return Err(DropReason::BadIpHeader);
    }
    if ip.len() < ihl {
        return Err(DropReason::Truncated);
    }
    let total = ipv4::total_len(ip);
    if total < ihl || total > ip.len() {
        return Err(DropReason::BadIpLength);
    }
    if ipv4::checksum(&ip[..ihl]) != 0 {
        return Err(DropReason::BadIpChecksum);
    }
    let saddr = ipv4::src(ip);
    // 0.0.0.0, multicast, class E and broadcast are never a client.
    if saddr == 0 || saddr >= 0xE000_0000 {
        return Err(DropReason::BadSource);
    }
    if ipv4::is_fragment(ip) {
        return Err(DropReason::Fragment);
    }
    let proto = ipv4::protocol(ip);
    let l4 = &ip[ihl..total];
    if proto == IPPROTO_ICMP {
        return parse_icmp(l4, ihl, total, src_mac);
    }
    let (tcp_flags, seq, ack) = match proto {
        IPPROTO_TCP => {
            if l4.len() < wire::TCP_MIN_HDR_LEN {
                return Err(DropReason::BadL4Header);
            }
            let doff = tcp::header_len(l4);
            if doff < wire::TCP_MIN_HDR_LEN || doff > l4.len() {
                return Err(DropReason::BadL4Header);
            }
            (tcp::flags(l4), wire::be32(l4, 4), wire::be32(l4, 8))
        }
        IPPROTO_UDP => {
            if l4.len() < wire::UDP_HDR_LEN {
                return Err(DropReason::BadL4Header);
            }
            (0, 0, 0)
        }
        _ => return Err(DropReason::NotAService),
    };
    let sport = wire::be16(l4, 0);
    let dport = wire::be16(l4, 2);
    if sport == 0 || dport == 0 {
        return Err(DropReason::ZeroPort);
    }
    Ok(Parsed {
        key: FlowKey {
            saddr,
            daddr: ipv4::dst(ip),
            sport,
            dport,
            proto,
        },
        tcp_flags,
        seq,
        ack,
        ip_len: total,
        src_mac,
        icmp: None,
    })
}

/// An ICMP error (RFC 792: destination unreachable, source quench, time exceeded) quoting a
/// TCP or UDP packet: its header and the quoted IP header and first 8 bytes are checked as
/// IPVS's `ip_vs_in_icmp` checks them. Anything else ICMP is not uvs's.
fn parse_icmp(
    icmp: &[u8],
    ihl: usize,
    total: usize,
    src_mac: MacAddr,
) -> Result<Parsed, DropReason> {
    if icmp.len() < wire::icmp::HDR_LEN + IPV4_MIN_HDR_LEN + 8 {
        return Err(DropReason::NotAService);
    }
    if !wire::icmp::is_error_about_a_packet(icmp[0]) {
        return Err(DropReason::NotAService);
    }
    if wire::csum::checksum(icmp) != 0 {
        return Err(DropReason::BadL4Header);
    }
    let inner = &icmp[wire::icmp::HDR_LEN..];
    let inner_ihl = ipv4::header_len(inner);
    if ipv4::version(inner) != 4
        || inner_ihl < IPV4_MIN_HDR_LEN
        || inner.len() < inner_ihl + 8
        || ipv4::is_fragment(inner)
    {
        return Err(DropReason::BadL4Header);
    }
    let proto = ipv4::protocol(inner);
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(DropReason::NotAService);
    }
    let ports = &inner[inner_ihl..];
    Ok(Parsed {
        key: FlowKey {
            saddr: ipv4::dst(inner),
            daddr: ipv4::src(inner),
            sport: wire::l4::dport(ports),
            dport: wire::l4::sport(ports),
            proto,
        },
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        ip_len: total,
        src_mac,
        icmp: Some(IcmpError {
            icmp_off: ETH_HDR_LEN + ihl,
            inner_off: ETH_HDR_LEN + ihl + wire::icmp::HDR_LEN,
            inner_ihl,
        }),
    })
}

/// The flow key a frame will most likely be looked up under, read without validation (that
/// is [`parse`]'s job): a prefetch hint, where a wrong guess costs one wasted prefetch.
#[inline]
fn flow_hint(frame: &[u8]) -> Option<FlowKey> {
    if frame.len() < ETH_HDR_LEN + IPV4_MIN_HDR_LEN || ethernet::ethertype(frame) != ETHERTYPE_IPV4
    {
        return None;
    }
    let ip = &frame[ETH_HDR_LEN..];
    let ihl = ipv4::header_len(ip);
    let ports = ip.get(ihl..ihl + 4)?;
    Some(FlowKey {
        saddr: ipv4::src(ip),
        daddr: ipv4::dst(ip),
        sport: wire::be16(ports, 0),
        dport: wire::be16(ports, 2),
        proto: ipv4::protocol(ip),
    })
}

impl Forwarder {
    pub fn new(
        flow_capacity: usize,
        sloppy_tcp: bool,
        interface_macs: Vec<MacAddr>,
        conns: Arc<ConnCounts>,
    ) -> Result<Forwarder, MapError> {
        Ok(Forwarder {
            flows: FlowTable::new(flow_capacity)?,
            sloppy_tcp,
            interface_macs,
            conns,
            templates: Arc::new(TemplateTable::new(PRIVATE_TEMPLATES)),
            expire_quiescent_template: false,
            ha: HaHooks::inert(),
            tap: None,
            compose: Composer::new(),
            local_ports: LocalPorts::new(crate::datapath::fullnat::DEFAULT_PORTS),
            trace_buf: Vec::new(),
        })
    }

    /// Starts loading the flow-table slot `buf` (virtio header + frame, as a ring holds it)
    /// will be looked up in. The worker calls this a few frames ahead of [`Forwarder::process`],
    /// so the cache misses of a batch overlap instead of stalling one frame at a time.
    #[inline]
    pub fn prefetch_flow(&self, buf: &[u8]) {
        if let Some(key) = buf.get(VNET_HDR_LEN..).and_then(flow_hint) {
            self.flows.prefetch(&key);
        }
    }

    /// Uses the daemon's shared template table (every worker must share one, as IPVS's
    /// templates are global) and its `expire_quiescent_template` setting.
    pub fn with_templates(
        mut self,
        templates: Arc<TemplateTable>,
        expire_quiescent_template: bool,
    ) -> Forwarder {
        self.templates = templates;
        self.expire_quiescent_template = expire_quiescent_template;
        self
    }

    /// Reaps expired flows among the next `budget` slots, unbinding each from its real and
    /// its persistence template; then sweeps a quarter as many template slots (the sweep
    /// cursor is shared, so the workers together cover the template table).
    pub fn expire_some(&mut self, snap: &Snapshot, now: u32, budget: usize) -> usize {
        let conns = &self.conns;
        let templates = &self.templates;
        let ports = &mut self.local_ports;
        let removed = self.flows.expire_some(now, budget, |gone| {
            let real = gone.real;
            conns.unbind(real, gone.state.is_active(), thresholds(snap, real));
            if let Some(slot) = gone.template {
                templates.release(slot, now);
            }
            if let Some(lp) = gone.local {
                ports.release(lp);
            }
        });
        templates.expire_some(now, budget / 4 + 1, |real| {
            conns.unbind_template(real, thresholds(snap, real));
        });
        removed
    }

    /// Decides one frame (the `virtio_net_hdr` followed by the frame, as the ring holds it),
    /// rewriting it in place if it is to be forwarded; `now` in milliseconds.
    #[inline]
    pub fn process(
        &mut self,
        snap: &Snapshot,
        neigh: &NeighTable,
        counters: &WorkerCounters,
        frame: RxFrame<'_>,
        now: u32,
    ) -> Verdict {
        self.compose.clear();
        if self.tap.as_ref().is_some_and(|t| t.armed) {
            return self.process_traced(snap, neigh, counters, frame, now);
        }
        let result = self.decide(snap, neigh, counters, frame, now);
        self.verdict(result, counters)
    }

    /// The verdict on a decision; counts a drop (and an ICMP error answering it).
    #[inline]
    fn verdict(&self, result: Result<u16, DropReason>, counters: &WorkerCounters) -> Verdict {
        match result {
            Ok(egress) => match self.compose.packets() {
                0 => Verdict::Forward { egress },
                packets => {
                    if packets > 1 {
                        bump(&counters.totals.segmented, 1);
                    }
                    Verdict::Compose { egress, packets }
                }
            },
            Err(reason) => {
                counters.count_drop(reason);
                if self.compose.rate_limited() {
                    bump(&counters.totals.icmp_rate_limited, 1);
                }
                match self.compose.egress {
                    Some(egress) if self.compose.packets() > 0 => {
                        bump(&counters.totals.icmp_frag_needed, 1);
                        Verdict::Compose {
                            egress,
                            packets: self.compose.packets(),
                        }
                    }
                    _ => Verdict::Drop(reason),
                }
            }
        }
    }

    /// [`Forwarder::process`] with a trace attached: the same decision, plus one record when
    /// a session wants this frame.
    #[cold]
    #[inline(never)]
    fn process_traced(
        &mut self,
        snap: &Snapshot,
        neigh: &NeighTable,
        counters: &WorkerCounters,
        frame: RxFrame<'_>,
        now: u32,
    ) -> Verdict {
        let RxFrame {
            buf,
            wire_len,
            status,
            scratch,
        } = frame;
        let eth = buf.get(VNET_HDR_LEN..).unwrap_or(&[]);
        let pending = self.tap.as_mut().and_then(|t| t.want(eth, wire_len));
        let again = RxFrame {
            buf: &mut *buf,
            wire_len,
            status,
            scratch,
        };
        let result = self.decide(snap, neigh, counters, again, now);
        let verdict = self.verdict(result, counters);
        if let Some(p) = pending {
            // A composed packet is shown as it leaves (the first, of a segmented frame): its
            // head, then its part of the frame. Traces are rare; the buffer is reused.
            if let (Ok(_), Verdict::Compose { .. }) = (result, verdict) {
                let mut slot = [0u8; crate::io::tx::HEAD_CAP];
                let part = self.compose.fill(0, &mut slot);
                self.trace_buf.clear();
                self.trace_buf
                    .extend_from_slice(slot.get(VNET_HDR_LEN..part.head_len).unwrap_or(&[]));
                let end = part.payload_from + part.payload_len;
                self.trace_buf
                    .extend_from_slice(buf.get(part.payload_from..end).unwrap_or(&[]));
            }
            let (outcome, sent) = match (result, verdict) {
                (Ok(egress), Verdict::Compose { .. }) => {
                    (Outcome::Forwarded { egress }, &self.trace_buf[..])
                }
                (Ok(egress), _) => (
                    Outcome::Forwarded { egress },
                    buf.get(VNET_HDR_LEN..).unwrap_or(&[]),
                ),
                (Err(reason), _) => (Outcome::Dropped(reason), &[][..]),
            };
            if let Some(t) = self.tap.as_mut() {
                t.record(p, outcome, sent, wire_len);
            }
        }
        verdict
    }

    /// The pipeline (see the module documentation). Returns the egress interface.
    #[inline]
    fn decide(
        &mut self,
        snap: &Snapshot,
        neigh: &NeighTable,
        counters: &WorkerCounters,
        frame: RxFrame<'_>,
        now: u32,
    ) -> Result<u16, DropReason> {
        let RxFrame {
            buf,
            wire_len,
            status,
            ..
        } = frame;
        if buf.len() < VNET_HDR_LEN {
            return Err(DropReason::Truncated);
        }
        if buf.len() - VNET_HDR_LEN < wire_len {
            return Err(DropReason::RingTruncated);
        }
        let p = parse(&buf[VNET_HDR_LEN..], status)?;
        if let Some(ic) = p.icmp {
            return self.icmp(snap, neigh, counters, buf, &p, ic, now);
        }
        let Some(svc) = snap.service(p.key.proto, p.key.daddr, p.key.dport) else {
            return self.reply(snap, neigh, counters, buf, &p, now);
        };
        if self.ha.gate.is_standby(p.key.daddr) {
            return Err(DropReason::Standby);
        }
        check_ttl(buf)?;
        let (real, local) = match self.flows.lookup(&p.key, now) {
            Some((at, flow)) => match self.reuse(snap, &p, &flow) {
                None => (self.continue_flow(snap, &p, at, flow, now)?, flow.local),
                Some(why) => {
                    bump(&counters.totals.flow_reuse[why as usize], 1);
                    if let Some(t) = self.tap.as_mut().filter(|t| t.armed) {
                        t.note.reuse = Some(why);
                    }
                    // The insert replaces the old entry, and undoes its counts.
                    self.start_flow(snap, svc, &p, counters, now)?
                }
            },
            None => self.start_flow(snap, svc, &p, counters, now)?,
        };
        self.trace_real(real);
        let link = Link {
            neigh,
            interface_macs: &self.interface_macs,
        };
        let leg = local.map(|from| xmit::FnatLeg {
            from,
            delta: self.local_ports.conn(from).map_or(0, |c| c.delta),
        });
        let mut tun = TunnelCtx {
            out: &mut self.compose,
            snap,
            now_ms: now,
        };
        let egress = xmit::transmit(real, buf, &link, &mut tun, leg)?;
        if let Some(from) = local {
            self.send_proxy_header(from, &p, buf);
        }
        if let Some(c) = counters.real(real.dest.id) {
            bump(&c.in_packets, 1);
            bump(&c.in_bytes, p.ip_len as u64);
        }
        Ok(egress)
    }

    /// A frame to no service: a masquerading real's reply, rewritten back to come from the
    /// VIP and sent towards the client by the director's routes — or not uvs's to forward.
    #[inline]
    fn reply(
        &mut self,
        snap: &Snapshot,
        neigh: &NeighTable,
        counters: &WorkerCounters,
        buf: &mut [u8],
        p: &Parsed,
        now: u32,
    ) -> Result<u16, DropReason> {
        let from_nat_real = snap
            .nat_sources()
            .binary_search(&(p.key.saddr, p.key.sport))
            .is_ok();
        if !from_nat_real {
            return Err(DropReason::NotAService);
        }
        if snap.is_laddr(p.key.daddr) && self.local_ports.in_range(p.key.dport) {
            return self.fullnat_reply(snap, neigh, counters, buf, p, now);
        }
        if snap.is_local(p.key.daddr) {
            return Err(DropReason::ToDirector);
        }
        let ret = match self.flows.lookup_return(&p.key) {
            Some(ret) => ret,
            None => self.adopt_synced_reply(snap, counters, p, now)?,
        };
        let (at, flow) = self
            .flows
            .flow_of(&p.key, &ret, now)
            .ok_or(DropReason::ReplyNoFlow)?;
        if self.ha.gate.is_standby(ret.vip) {
            return Err(DropReason::Standby);
        }
        check_ttl(buf)?;
        let real = snap.real(flow.real).ok_or(DropReason::RealRemoved)?;
        let (state, timeout) = after_packet(snap, p, flow.state, Direction::Output);
        self.advance(at, &flow, state, timeout, now);
        if state != flow.state {
            self.sync_emit(&ret.flow_key(&p.key), real, state, timeout);
        }
        let route = snap
            .routes
            .lookup(p.key.daddr)
            .and_then(|r| r.hop)
            .ok_or(DropReason::NoRoute)?;
        let next_hop = match route.gateway {
            Some(slot) => neigh.get(slot).ok_or(DropReason::NoNeighbor)?,
            None if ret.client_mac != MacAddr::ZERO => ret.client_mac,
            None => return Err(DropReason::NoNeighbor),
        };
        self.trace_reply(real);
        let link = Link {
            neigh,
            interface_macs: &self.interface_macs,
        };
        let to = xmit::ClientSide {
            vip: ret.vip,
            vport: ret.vport,
            next_hop,
            egress: route.egress,
        };
        let egress = xmit::masq_reply(&to, buf, &link)?;
        if let Some(c) = counters.real(real.dest.id) {
            bump(&c.out_packets, 1);
            bump(&c.out_bytes, p.ip_len as u64);
        }
        Ok(egress)
    }

    /// An ICMP error about a flow, translated as IPVS translates it (`ip_vs_in_icmp`,
    /// `ip_vs_out_icmp`): about a packet the VIP sent a client (a router's fragmentation
    /// needed, the client's port unreachable), it goes to the flow's real, rewritten to quote
    /// what the real sent; from a masquerading real about a packet it received, it goes to
    /// the client, rewritten to come from the VIP and quote what the client sent. The flow's
    /// state does not change. Not about a flow: not uvs's.
    #[allow(clippy::too_many_arguments)]
    fn icmp(
        &mut self,
        snap: &Snapshot,
        neigh: &NeighTable,
        counters: &WorkerCounters,
        buf: &mut [u8],
        p: &Parsed,
        ic: IcmpError,
        now: u32,
    ) -> Result<u16, DropReason> {
        if let Some((_, flow)) = self.flows.lookup(&p.key, now) {
            if self.ha.gate.is_standby(p.key.daddr) {
                return Err(DropReason::Standby);
            }
            check_ttl(buf)?;
            let real = snap.real(flow.real).ok_or(DropReason::RealRemoved)?;
            self.trace_real(real);
            let leg = flow.local.map(|from| xmit::FnatLeg {
                from,
                delta: self.local_ports.conn(from).map_or(0, |c| c.delta),
            });
            let link = Link {
                neigh,
                interface_macs: &self.interface_macs,
            };
            let mut tun = TunnelCtx {
                out: &mut self.compose,
                snap,
                now_ms: now,
            };
            let egress = xmit::icmp_to_real(real, ic, buf, &link, &mut tun, leg)?;
            if let Some(c) = counters.real(real.dest.id) {
                bump(&c.in_packets, 1);
                bump(&c.in_bytes, p.ip_len as u64);
            }
            return Ok(egress);
        }
        if snap.is_laddr(p.key.daddr) && self.local_ports.in_range(p.key.dport) {
            return self.fullnat_icmp_to_client(snap, neigh, counters, buf, p, ic, now);
        }
        let ret = self
            .flows
            .lookup_return(&p.key)
            .ok_or(DropReason::IcmpNoFlow)?;
        let (_, flow) = self
            .flows
            .flow_of(&p.key, &ret, now)
            .ok_or(DropReason::IcmpNoFlow)?;
        if self.ha.gate.is_standby(ret.vip) {
            return Err(DropReason::Standby);
        }
        check_ttl(buf)?;
        let real = snap.real(flow.real).ok_or(DropReason::RealRemoved)?;
        let client = ipv4::dst(&buf[VNET_HDR_LEN + ETH_HDR_LEN..]);
        let route = snap
            .routes
            .lookup(client)
            .and_then(|r| r.hop)
            .ok_or(DropReason::NoRoute)?;
        let next_hop = match route.gateway {
            Some(slot) => neigh.get(slot).ok_or(DropReason::NoNeighbor)?,
            None if ret.client_mac != MacAddr::ZERO => ret.client_mac,
            None => return Err(DropReason::NoNeighbor),
        };
        self.trace_reply(real);
        let to = xmit::ClientSide {
            vip: ret.vip,
            vport: ret.vport,
            next_hop,
            egress: route.egress,
        };
        let link = Link {
            neigh,
            interface_macs: &self.interface_macs,
        };
        let egress = xmit::icmp_to_client(&to, ic, buf, &link)?;
        if let Some(c) = counters.real(real.dest.id) {
            bump(&c.out_packets, 1);
            bump(&c.out_bytes, p.ip_len as u64);
        }
        Ok(egress)
    }

    /// Whether a packet that matched `flow` starts a new connection instead: a SYN (without
    /// ACK or RST) whose flow is closing, or whose real is removed, quiesced or over its
    /// threshold. IPVS reschedules only a TIME_WAIT match (`conn_reuse_mode`), which a DR
    /// director never reaches, and otherwise drops the SYN while the old entry lingers
    /// (`expire_nodest_conn` off): a client whose ports wrap then loses its new connections
    /// to a removed real for minutes. A client sends such a SYN only for a connection it
    /// considers closed, so nothing of the old one is lost.
    #[inline]
    fn reuse(&self, snap: &Snapshot, p: &Parsed, flow: &Flow) -> Option<ReuseReason> {
        if p.key.proto != IPPROTO_TCP || p.tcp_flags & (tcp::SYN | tcp::ACK | tcp::RST) != tcp::SYN
        {
            return None;
        }
        let Some(real) = snap.real(flow.real) else {
            return Some(ReuseReason::RealRemoved);
        };
        if flow.state.is_closing() {
            Some(ReuseReason::Closing)
        } else if real.dest.weight == 0 {
            Some(ReuseReason::Quiesced)
        } else if self.conns.overloaded(real.dest.id) {
            Some(ReuseReason::Unavailable)
        } else {
            None
        }
    }

    /// A packet of a known flow: its real, if it still exists, and the flow's state advanced.
    #[inline]
    fn continue_flow<'s>(
        &mut self,
        snap: &'s Snapshot,
        p: &Parsed,
        at: SlotRef,
        flow: Flow,
        now: u32,
    ) -> Result<Real<'s>, DropReason> {
        let real = snap.real(flow.real).ok_or(DropReason::RealRemoved)?;
        let direction = client_direction(real);
        let (state, timeout) = after_packet(snap, p, flow.state, direction);
        self.advance(at, &flow, state, timeout, now);
        if state != flow.state {
            self.sync_emit(&p.key, real, state, timeout);
        }
        Ok(real)
    }

    /// Stores a flow's new state and expiry; moves its count between active and inactive.
    #[inline]
    fn advance(&mut self, at: SlotRef, flow: &Flow, state: TcpState, timeout: u32, now: u32) {
        self.flows.update(at, state, now.wrapping_add(timeout));
        if state.is_active() != flow.state.is_active() {
            self.conns.moved(flow.real, state.is_active());
        }
    }

    /// The first packet of a flow: adopt it from the connection sync or schedule it, bind it
    /// to its real, and remember it (unless one-packet scheduling forgets it at once); a
    /// masquerading real's flow also gets the return entry its replies are found by, a
    /// FullNAT real's flow its local port. Returns the real, and the local port.
    #[inline]
    fn start_flow<'s>(
        &mut self,
        snap: &'s Snapshot,
        svc: &'s ServiceEntry,
        p: &Parsed,
        counters: &WorkerCounters,
        now: u32,
    ) -> Result<(Real<'s>, Option<LocalPort>), DropReason> {
        let is_tcp = p.key.proto == IPPROTO_TCP;
        let adopted = self.adopt_synced(svc, &p.key, now);
        let syn_only = p.tcp_flags & (tcp::SYN | tcp::RST) == tcp::SYN;
        if is_tcp && !syn_only && !self.sloppy_tcp && adopted.is_none() {
            return Err(DropReason::TcpNoFlow);
        }
        // One-packet scheduling (UDP only, the snapshot guarantees it): the entry is created,
        // bound and freed at once, so it is never inserted. A fwmark service may carry TCP
        // too: OPS is for its UDP packets only.
        let ops = svc.ops && !is_tcp;
        let (chosen, prior) = match adopted {
            Some(a) => a,
            None => (self.schedule(snap, svc, &p.key, !ops, now)?, TcpState::None),
        };
        self.trace_new_flow(svc, &chosen);
        let real = chosen.real;
        let (state, timeout) = after_packet(snap, p, prior, client_direction(real));
        // A FullNAT flow keeps its entry even under OPS: its replies are found through it.
        let local = match real.path.xmit {
            Xmit::FullNat { port, source } => {
                Some(self.local_port(svc, real, (port, source), p, counters)?)
            }
            _ => None,
        };
        if ops && local.is_none() {
            // `ip_vs_bind_dest` then `ip_vs_unbind_dest`: no count remains, but the
            // thresholds see the connection pass, as in the kernel.
            self.conns.bind(real.dest.id, false, real.dest.thresholds);
            self.conns.unbind(real.dest.id, false, real.dest.thresholds);
        } else {
            let expires = now.wrapping_add(timeout);
            let old = self.flows.insert(
                &p.key,
                real.dest.id,
                state,
                expires,
                now,
                chosen.template,
                local,
            );
            self.forget(snap, old, counters, now);
            self.conns
                .bind(real.dest.id, state.is_active(), real.dest.thresholds);
            if let Xmit::Masq { port } = real.path.xmit {
                let back = FlowKey {
                    saddr: real.dest.addr,
                    daddr: p.key.saddr,
                    sport: masq_port(port, p.key.dport),
                    dport: p.key.sport,
                    proto: p.key.proto,
                };
                let ret = Return {
                    real: real.dest.id,
                    vip: p.key.daddr,
                    vport: p.key.dport,
                    client_mac: p.src_mac,
                };
                let old = self.flows.insert_return(&back, &ret, now);
                self.forget(snap, old, counters, now);
            }
        }
        if let Some(c) = counters.real(real.dest.id) {
            bump(&c.conns, 1);
        }
        self.sync_emit(&p.key, real, state, timeout);
        Ok((real, local))
    }

    /// Undoes the counts of a flow entry an insert replaced, and gives its local port back.
    #[inline]
    fn forget(
        &mut self,
        snap: &Snapshot,
        old: Option<Overwritten>,
        counters: &WorkerCounters,
        now: u32,
    ) {
        let Some(old) = old else {
            return;
        };
        self.conns
            .unbind(old.real, old.state.is_active(), thresholds(snap, old.real));
        if let Some(slot) = old.template {
            self.templates.release(slot, now);
        }
        if old.evicted {
            bump(&counters.totals.flow_evictions, 1);
        }
        if let Some(lp) = old.local {
            self.local_ports.release(lp);
        }
    }

    /// A flow synced from the former MASTER is adopted on its first packet here, whichever
    /// worker the fanout program picked, with the real and state it had there. It is not
    /// scheduled again and takes no persistence template of its own.
    #[inline]
    fn adopt_synced<'s>(
        &self,
        svc: &'s ServiceEntry,
        key: &FlowKey,
        now: u32,
    ) -> Option<(Scheduled<'s>, TcpState)> {
        let f = self.ha.synced.take(key, now)?;
        let real = synced_real(svc, key, &f)?;
        Some((
            Scheduled {
                real,
                template: None,
                via: Via::Synced,
            },
            f.state,
        ))
    }

    /// A NAT flow synced from the former MASTER whose real's reply arrives before the client's
    /// next packet: adopted here, with its return entry. A client on a directly connected
    /// network is reached by its MAC, which only its own frames tell, so such a flow waits for
    /// the client's next packet instead.
    #[cold]
    #[inline(never)]
    fn adopt_synced_reply(
        &mut self,
        snap: &Snapshot,
        counters: &WorkerCounters,
        p: &Parsed,
        now: u32,
    ) -> Result<Return, DropReason> {
        let key = self
            .ha
            .synced
            .owner_of_reply(&p.key)
            .ok_or(DropReason::ReplyNoFlow)?;
        if self.ha.gate.is_standby(key.daddr) {
            return Err(DropReason::Standby);
        }
        let on_link = snap
            .routes
            .lookup(key.saddr)
            .and_then(|r| r.hop)
            .is_some_and(|hop| hop.gateway.is_none());
        if on_link {
            return Err(DropReason::ReplyNoFlow);
        }
        let svc = snap
            .service(key.proto, key.daddr, key.dport)
            .ok_or(DropReason::ReplyNoFlow)?;
        let f = self
            .ha
            .synced
            .take(&key, now)
            .ok_or(DropReason::ReplyNoFlow)?;
        let real = synced_real(svc, &key, &f).ok_or(DropReason::ReplyNoFlow)?;
        let old = self
            .flows
            .insert(&key, real.dest.id, f.state, f.expires, now, None, None);
        self.forget(snap, old, counters, now);
        self.conns
            .bind(real.dest.id, f.state.is_active(), real.dest.thresholds);
        let ret = Return {
            real: real.dest.id,
            vip: key.daddr,
            vport: key.dport,
            client_mac: MacAddr::ZERO,
        };
        let old = self.flows.insert_return(&p.key, &ret, now);
        self.forget(snap, old, counters, now);
        if let Some(c) = counters.real(real.dest.id) {
            bump(&c.conns, 1);
        }
        if let Some(t) = self.tap.as_mut().filter(|t| t.armed) {
            t.note.new_flow = true;
            t.note.why.via = Via::Synced;
        }
        Ok(ret)
    }

    /// Picks the real for a new connection of `svc`: through its persistence template if
    /// the service is persistent (`ip_vs_sched_persist`), else by its scheduler.
    #[inline]
    fn schedule<'s>(
        &self,
        snap: &'s Snapshot,
        svc: &'s ServiceEntry,
        key: &FlowKey,
        child: bool,
        now: u32,
    ) -> Result<Scheduled<'s>, DropReason> {
        let Some(p) = svc.persistence else {
            return Ok(Scheduled {
                real: self.pick(svc, key, now)?,
                template: None,
                via: Via::Scheduler,
            });
        };
        // A fwmark service's template is `<IPPROTO_IP, snet, 0, mark, 0>`, as IPVS keys it.
        let tkey = if p.fwmark != 0 {
            TemplateKey {
                proto: 0,
                snet: key.saddr & p.netmask,
                vip: p.fwmark,
                vport: 0,
            }
        } else {
            TemplateKey {
                proto: key.proto,
                snet: key.saddr & p.netmask,
                vip: key.daddr,
                vport: p.template_vport,
            }
        };
        let eqt = self.expire_quiescent_template;
        // `ip_vs_check_template`: the real still exists (in this service's snapshot) and is
        // not quiesced when expire_quiescent_template is on.
        let valid = |id| snap.real(id).is_some_and(|r| !(eqt && r.dest.weight == 0));
        let mut via = Via::TemplateHit;
        let placed = match self.templates.lookup(&tkey, now, child, valid) {
            Some(hit) => hit,
            None => {
                via = Via::TemplateNew;
                let real = self.pick(svc, key, now)?;
                let timeout = p.timeout_ms;
                match self
                    .templates
                    .insert(&tkey, real.dest.id, timeout, now, child, valid)
                {
                    Some(placed) => placed,
                    // No room for a template: schedule without persistence (counted).
                    None => {
                        return Ok(Scheduled {
                            real,
                            template: None,
                            via: Via::TemplateFull,
                        });
                    }
                }
            }
        };
        if let Some(old) = placed.displaced {
            self.conns.unbind_template(old, thresholds(snap, old));
        }
        if let Some(new) = placed.created {
            self.conns.bind_template(new, thresholds(snap, new));
        }
        match snap.real(placed.real) {
            Some(real) => Ok(Scheduled {
                real,
                template: placed.slot,
                via,
            }),
            None => {
                if let Some(slot) = placed.slot {
                    self.templates.release(slot, now);
                }
                Err(DropReason::NoRealServer)
            }
        }
    }

    /// The service's scheduler's choice.
    #[inline]
    fn pick<'s>(
        &self,
        svc: &'s ServiceEntry,
        key: &FlowKey,
        now: u32,
    ) -> Result<Real<'s>, DropReason> {
        svc.scheduler
            .pick(&svc.reals, key, &self.conns, now)
            .and_then(|i| svc.real(i))
            .ok_or(DropReason::NoRealServer)
    }

    /// Connection sync: new flows and state changes go to the backup director.
    #[inline]
    fn sync_emit(&self, key: &FlowKey, real: Real<'_>, state: TcpState, timeout_ms: u32) {
        let (forward, real_port) = match real.path.xmit {
            Xmit::Route => (ForwardMethod::Route, key.dport),
            Xmit::Masq { port } => (ForwardMethod::Masq, masq_port(port, key.dport)),
            Xmit::Tunnel { encap, .. } => (ForwardMethod::Tunnel(encap), key.dport),
            // Not sent (IPVS's format has no local address): see `sync::wire::syncable`.
            Xmit::FullNat { port, .. } => (ForwardMethod::FullNat, masq_port(port, key.dport)),
        };
        self.ha.emit(SyncRecord {
            key: *key,
            real_addr: real.dest.addr,
            real_port,
            forward,
            state,
            timeout_secs: timeout_ms / 1000,
        });
    }

    /// Trace: what the scheduler compared, before the new flow is bound.
    #[inline]
    fn trace_new_flow(&mut self, svc: &ServiceEntry, chosen: &Scheduled<'_>) {
        let Some(t) = self.tap.as_mut().filter(|t| t.armed) else {
            return;
        };
        t.note.new_flow = true;
        if let Some(i) = svc.reals.iter().position(|r| r.id == chosen.real.dest.id) {
            t.note.why = tap::explain(svc, &self.conns, i);
        }
        t.note.why.via = chosen.via;
    }

    /// Trace: the real the frame goes to.
    #[inline]
    fn trace_real(&mut self, real: Real<'_>) {
        if let Some(t) = self.tap.as_mut().filter(|t| t.armed) {
            t.note.real_addr = real.dest.addr;
        }
    }

    /// Trace: a real's reply (or ICMP error) rewritten back towards the client.
    #[inline]
    fn trace_reply(&mut self, real: Real<'_>) {
        if let Some(t) = self.tap.as_mut().filter(|t| t.armed) {
            t.note.real_addr = real.dest.addr;
            t.note.reply = true;
        }
    }
}

/// The port a NAT real receives a flow on: its own, or (a fwmark service's real without
/// one) the port the client used.
#[inline]
fn masq_port(real_port: u16, client_dport: u16) -> u16 {
    if real_port == 0 {
        client_dport
    } else {
        real_port
    }
}

/// The real of `svc` a synced flow was on: same address, method and port (a service may
/// reach one address on several ports by NAT).
fn synced_real<'s>(svc: &'s ServiceEntry, key: &FlowKey, f: &SyncedFlow) -> Option<Real<'s>> {
    (0..svc.reals.len()).filter_map(|i| svc.real(i)).find(|r| {
        r.dest.addr == f.real_addr
            && match r.path.xmit {
                Xmit::Route => f.forward == ForwardMethod::Route,
                Xmit::Masq { port } => {
                    f.forward == ForwardMethod::Masq && masq_port(port, key.dport) == f.real_port
                }
                Xmit::Tunnel { .. } => matches!(f.forward, ForwardMethod::Tunnel(_)),
                Xmit::FullNat { .. } => false,
            }
    })
}

/// A real's connection thresholds, or none if it is gone from `snap`.
#[inline]
fn thresholds(snap: &Snapshot, id: crate::model::RealId) -> crate::conns::Thresholds {
    snap.real(id).map(|r| r.dest.thresholds).unwrap_or_default()
}

/// The direction of a client packet to `real`: INPUT when its replies pass the director,
/// else INPUT_ONLY.
#[inline]
fn client_direction(real: Real<'_>) -> Direction {
    if real.path.xmit.sees_replies() {
        Direction::Input
    } else {
        Direction::InputOnly
    }
}

/// TTL must stay above 0 after the decrement every method does.
#[inline]
fn check_ttl(buf: &[u8]) -> Result<(), DropReason> {
    if ipv4::ttl(&buf[VNET_HDR_LEN + ETH_HDR_LEN..]) <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    Ok(())
}

/// A flow's state and timeout (ms) after a packet seen in `direction`: TCP follows IPVS's
/// table; UDP has no state and one timeout.
#[inline]
fn after_packet(
    snap: &Snapshot,
    p: &Parsed,
    prior: TcpState,
    direction: Direction,
) -> (TcpState, u32) {
    if p.key.proto == IPPROTO_TCP {
        let s = next_state(direction, prior, p.tcp_flags);
        (s, snap.timeouts.tcp(s))
    } else {
        (TcpState::None, snap.timeouts.udp_ms)
    }
}

mod fullnat;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod nat_tests;

#[cfg(test)]
mod fullnat_tests;
