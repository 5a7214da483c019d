//! The per-frame decision, pure: bytes in, verdict out, frame rewritten in place when it is
//! forwarded. No I/O, no allocation, no lock; time is a parameter.
//!
//! DR rewrites the two MAC fields only: destination := the real server's MAC, source := the
//! egress interface's MAC (keeping the router's MAC as source would teach the LAN switch the
//! router's MAC on the director's port). IP addresses and ports never change. Like IPVS
//! (`ip_vs_dr_xmit` → `decrement_ttl` + `ip_send_check`), the TTL is decremented and the IP
//! header checksum refreshed — incrementally here (RFC 1624), which is exact for a valid
//! header, and headers are verified first. The transport checksum is not touched: it does not
//! cover the TTL, and when it is still partial (veth offloads) the `virtio_net_hdr` carried
//! along tells the kernel to finish it on transmit.

use std::sync::Arc;

use crate::conns::ConnCounts;
use crate::datapath::counters::{DropReason, WorkerCounters, bump};
use crate::datapath::flow_table::{FlowKey, FlowTable};
use crate::datapath::huge_array::MapError;
use crate::datapath::tcp_state::{TcpState, next_state};
use crate::datapath::templates::{TemplateKey, TemplateTable};
use crate::io::ring::RxFrame;
use crate::io::{VNET_F_DATA_VALID, VNET_HDR_LEN};
use crate::neigh::cache::NeighTable;
use crate::snapshot::{RealEntry, ServiceEntry, Snapshot};
use crate::wire::{
    self, ETH_HDR_LEN, ETHERTYPE_IPV4, IPV4_MIN_HDR_LEN, MacAddr, ethernet, ipv4, tcp,
};

/// What to do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten in place; send it (virtio header + frame) on egress interface `egress`.
    Forward {
        egress: u16,
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
    /// VRRP standby gate, synced flows, sync records out. `None`: no HA.
    pub ha: Option<Arc<crate::sync::HaHooks>>,
    /// `uvs trace` / `uvs capture` producer side (see `crate::trace`); `None` in tests.
    pub tap: Option<crate::trace::Tap>,
}

/// Template slots a worker's [`Forwarder::new`] gets until the daemon hands it the shared
/// table ([`Forwarder::with_templates`]).
const PRIVATE_TEMPLATES: usize = 1024;

/// Parsed fields of a frame worth a flow lookup.
struct Parsed {
    key: FlowKey,
    tcp_flags: u8,
    ip_len: usize,
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
        0x8100 | 0x88a8 | 0x9100 => return Err(DropReason::VlanTagged),
        _ => return Err(DropReason::NotIpv4),
    }
    if ethernet::src(frame).is_group() {
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
    let tcp_flags = match proto {
        6 => {
            if l4.len() < wire::TCP_MIN_HDR_LEN {
                return Err(DropReason::BadL4Header);
            }
            let doff = tcp::header_len(l4);
            if doff < wire::TCP_MIN_HDR_LEN || doff > l4.len() {
                return Err(DropReason::BadL4Header);
            }
            tcp::flags(l4)
        }
        17 => {
            if l4.len() < wire::UDP_HDR_LEN {
                return Err(DropReason::BadL4Header);
            }
            0
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
        ip_len: total,
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
            ha: None,
            tap: None,
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
        let removed = self
            .flows
            .expire_some(now, budget, |real, state, template| {
                let t = snap.real(real).map(|r| r.thresholds).unwrap_or_default();
                conns.unbind(real, state.is_active(), t);
                if let Some(slot) = template {
                    templates.release(slot, now);
                }
            });
        templates.expire_some(now, budget / 4 + 1, |real| {
            let t = snap.real(real).map(|r| r.thresholds).unwrap_or_default();
            conns.unbind_template(real, t);
        });
        removed
    }

    /// Picks the real for a new connection of `svc`: through its persistence template if
    /// the service is persistent (`ip_vs_sched_persist`), else by its scheduler. Returns the
    /// real's position in the snapshot, the template slot the connection is a child of, and
    /// how the real was found (`trace::VIA_*`, for `uvs trace`).
    #[inline]
    fn schedule<'s>(
        &self,
        snap: &'s Snapshot,
        svc: &'s ServiceEntry,
        key: &FlowKey,
        child: bool,
        now: u32,
    ) -> Result<(&'s RealEntry, Option<u32>, u8), DropReason> {
        use crate::trace::{VIA_SCHEDULER, VIA_TEMPLATE_FULL, VIA_TEMPLATE_HIT, VIA_TEMPLATE_NEW};
        let Some(p) = svc.persistence else {
            let i = svc
                .scheduler
                .pick(&svc.reals, key, &self.conns)
                .ok_or(DropReason::NoRealServer)?;
            let real = svc.reals.get(i).ok_or(DropReason::NoRealServer)?;
            return Ok((real, None, VIA_SCHEDULER));
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
        let valid = |id| snap.real(id).is_some_and(|r| !(eqt && r.weight == 0));
        let mut via = VIA_TEMPLATE_HIT;
        let placed = match self.templates.lookup(&tkey, now, child, valid) {
            Some(hit) => hit,
            None => {
                via = VIA_TEMPLATE_NEW;
                let i = svc
                    .scheduler
                    .pick(&svc.reals, key, &self.conns)
                    .ok_or(DropReason::NoRealServer)?;
                let real = svc.reals.get(i).ok_or(DropReason::NoRealServer)?;
                match self
                    .templates
                    .insert(&tkey, real.id, p.timeout_ms, now, child, valid)
                {
                    Some(placed) => placed,
                    // No room for a template: schedule without persistence (counted).
                    None => return Ok((real, None, VIA_TEMPLATE_FULL)),
                }
            }
        };
        if let Some(old) = placed.displaced {
            let t = snap.real(old).map(|r| r.thresholds).unwrap_or_default();
            self.conns.unbind_template(old, t);
        }
        if let Some(new) = placed.created {
            let t = snap.real(new).map(|r| r.thresholds).unwrap_or_default();
            self.conns.bind_template(new, t);
        }
        match snap.real(placed.real) {
            Some(r) => Ok((r, placed.slot, via)),
            None => {
                if let Some(slot) = placed.slot {
                    self.templates.release(slot, now);
                }
                Err(DropReason::NoRealServer)
            }
        }
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
        // ---- trace hook: `armed` is refreshed once per worker round (crate::trace) ----
        if self.tap.as_ref().is_some_and(|t| t.armed) {
            return self.process_traced(snap, neigh, counters, frame, now);
        }
        // ---- end trace hook ----
        match self.decide(snap, neigh, counters, frame, now) {
            Ok(egress) => Verdict::Forward { egress },
            Err(reason) => {
                counters.count_drop(reason);
                Verdict::Drop(reason)
            }
        }
    }

    /// [`Forwarder::process`] with a trace attached: the same decision, plus one record.
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
        let rx = crate::trace::rx_header(eth);
        if let Some(t) = self.tap.as_mut() {
            t.note = crate::trace::Note::default();
        }
        let again = RxFrame {
            buf: &mut *buf,
            wire_len,
            status,
            scratch,
        };
        let result = self.decide(snap, neigh, counters, again, now);
        if let Err(reason) = result {
            counters.count_drop(reason);
        }
        if let Some(t) = self.tap.as_mut() {
            t.record(
                buf.get(VNET_HDR_LEN..).unwrap_or(&[]),
                wire_len,
                &rx,
                result,
            );
        }
        match result {
            Ok(egress) => Verdict::Forward { egress },
            Err(reason) => Verdict::Drop(reason),
        }
    }

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
        let svc = snap
            .service(p.key.proto, p.key.daddr, p.key.dport)
            .ok_or(DropReason::NotAService)?;
        // HA (issue 8): a VRRP BACKUP forwards nothing for its instance's VIPs.
        if let Some(ha) = &self.ha {
            if ha.gate.is_standby(p.key.daddr) {
                return Err(DropReason::NotAService);
            }
        }
        let ip_off = VNET_HDR_LEN + ETH_HDR_LEN;
        if ipv4::ttl(&buf[ip_off..]) <= 1 {
            return Err(DropReason::TtlExceeded);
        }
        let is_tcp = p.key.proto == 6;
        let real = match self.flows.lookup(&p.key, now) {
            Some((at, flow)) => {
                let (state, timeout) = after_packet(snap, is_tcp, flow.state, p.tcp_flags);
                self.flows.update(at, state, now.wrapping_add(timeout));
                if state.is_active() != flow.state.is_active() {
                    self.conns.moved(flow.real, state.is_active());
                }
                // HA (issue 8): state changes go to the sync backup.
                if state != flow.state {
                    if let (Some(ha), Some(r)) = (&self.ha, snap.real(flow.real)) {
                        ha.emit(crate::sync::SyncRecord {
                            key: p.key,
                            real_addr: r.addr,
                            state,
                            timeout_secs: timeout / 1000,
                        });
                    }
                }
                snap.real(flow.real).ok_or(DropReason::RealRemoved)?
            }
            None => {
                // HA (issue 8): a flow synced from the former MASTER is adopted on its first
                // packet here, whichever worker the fanout hash picked.
                let adopted = self.ha.as_ref().and_then(|ha| {
                    let f = ha.synced.take(&p.key, now)?;
                    let i = svc.reals.iter().position(|r| r.addr == f.real_addr)?;
                    Some((i, f.state))
                });
                let syn_only = p.tcp_flags & (tcp::SYN | tcp::RST) == tcp::SYN;
                if is_tcp && !syn_only && !self.sloppy_tcp && adopted.is_none() {
                    return Err(DropReason::TcpNoFlow);
                }
                // One-packet scheduling (UDP only, the snapshot guarantees it): the entry is
                // created, bound and freed at once, so it is never inserted.
                // A fwmark service may carry TCP too: OPS is for its UDP packets only.
                let ops = svc.ops && !is_tcp;
                // An adopted (synced) flow keeps the real the former MASTER chose; it is not
                // scheduled again and takes no persistence template of its own.
                let (real, template, via) = match adopted {
                    Some((i, _)) => (
                        svc.reals.get(i).ok_or(DropReason::NoRealServer)?,
                        None,
                        crate::trace::VIA_SYNCED,
                    ),
                    None => self.schedule(snap, svc, &p.key, !ops, now)?,
                };
                let prior = adopted.map_or(TcpState::None, |(_, s)| s);
                if let Some(t) = self.tap.as_mut().filter(|t| t.armed) {
                    // trace hook: what the scheduler compared, before this flow is bound.
                    t.note.new_flow = true;
                    if let Some(i) = svc.reals.iter().position(|r| r.id == real.id) {
                        t.note.why = crate::trace::explain(svc, &self.conns, i);
                    }
                    t.note.why.via = via;
                }
                let (state, timeout) = after_packet(snap, is_tcp, prior, p.tcp_flags);
                if ops {
                    // `ip_vs_bind_dest` then `ip_vs_unbind_dest`: no count remains, but the
                    // thresholds see the connection pass, as in the kernel.
                    self.conns.bind(real.id, false, real.thresholds);
                    self.conns.unbind(real.id, false, real.thresholds);
                } else {
                    if let Some(old) = self.flows.insert(
                        &p.key,
                        real.id,
                        state,
                        now.wrapping_add(timeout),
                        now,
                        template,
                    ) {
                        let t = snap
                            .real(old.real)
                            .map(|r| r.thresholds)
                            .unwrap_or_default();
                        self.conns.unbind(old.real, old.state.is_active(), t);
                        if let Some(slot) = old.template {
                            self.templates.release(slot, now);
                        }
                        if old.evicted {
                            bump(&counters.totals.flow_evictions, 1);
                        }
                    }
                    self.conns.bind(real.id, state.is_active(), real.thresholds);
                }
                if let Some(c) = counters.real(real.id) {
                    bump(&c.conns, 1);
                }
                // HA (issue 8): new flows go to the sync backup.
                if let Some(ha) = &self.ha {
                    ha.emit(crate::sync::SyncRecord {
                        key: p.key,
                        real_addr: real.addr,
                        state,
                        timeout_secs: timeout / 1000,
                    });
                }
                real
            }
        };
        if let Some(t) = self.tap.as_mut().filter(|t| t.armed) {
            t.note.real_addr = real.addr; // trace hook
        }
        let mac = neigh.get(real.neigh).ok_or(DropReason::NoNeighbor)?;
        let src = *self
            .interface_macs
            .get(usize::from(real.egress))
            .ok_or(DropReason::NoNeighbor)?;
        ethernet::set_macs(&mut buf[VNET_HDR_LEN..], mac, src);
        ipv4::decrement_ttl(&mut buf[ip_off..]);
        // The receive side's "checksum verified" flag means nothing on transmit.
        buf[0] &= !VNET_F_DATA_VALID;
        if let Some(c) = counters.real(real.id) {
            bump(&c.in_packets, 1);
            bump(&c.in_bytes, p.ip_len as u64);
        }
        Ok(real.egress)
    }
}

/// A flow's state and timeout (ms) after a client packet: TCP follows the INPUT_ONLY table;
/// UDP has no state and one timeout.
#[inline]
fn after_packet(snap: &Snapshot, is_tcp: bool, prior: TcpState, flags: u8) -> (TcpState, u32) {
    if is_tcp {
        let s = next_state(prior, flags);
        (s, snap.timeouts.tcp(s))
    } else {
        (TcpState::None, snap.timeouts.udp_ms)
    }
}

#[cfg(test)]
mod tests;
