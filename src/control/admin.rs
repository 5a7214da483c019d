//! What the admin interface asks of the control thread, as typed operations: apply changes
//! live, report figures, list connections, zero statistics, start a trace. The wire protocol
//! that carries them is `crate::ctl`'s business, one layer up.
//!
//! A change is applied as build aside → publish → free later: the change is applied to the
//! service table in place (with a journal to take it back), the services it touched are
//! compiled again into the next snapshot, which shares every other service with the previous
//! one (`snapshot::Compiler`); the kernel filter gets the set elements that change, and the
//! workers' socket filters are re-attached only when the VIPs or NAT reply sources change;
//! only then is the snapshot published with one atomic store, and the replaced one is freed
//! on the control thread once no worker holds it. Any failure before the publish leaves the
//! running state as it was. What a change costs is what it touches: a weight change compiles
//! one service, whatever the number of services (bench/README.md, `cargo bench --bench
//! control`).
//! Established flows keep their real server across changes (they live in the workers' flow
//! tables, keyed by real id); a real set to weight 0 gets no new flows but keeps its
//! established ones (quiescing); a deleted real's flows are dropped (`real_removed`), as IPVS
//! does with `expire_nodest_conn = 0`.

use std::cell::OnceCell;
use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use super::Control;
use super::stats::Stats;
use crate::datapath::tap::TraceFilter;
use crate::datapath::worker::{FlowRecord, WorkerRequest};
use crate::flow::{TcpState, Timeouts};
use crate::io::filter::{drop_all, fanout_program, receive_filter};
use crate::io::socket::{attach_filter, set_fanout_program};
use crate::kernel_filter::FilterDelta;
use crate::model::change::{Change, Refused, Structure, Touched};
use crate::model::{Protocol, RealId, ServiceKey, ServiceTable};
use crate::snapshot::{Real, Snapshot, Xmit};
use crate::trace::session::{StreamMode, start_session};
use crate::wire::ipv4_from_u32;

/// How long a connection listing waits for each worker.
const DUMP_WAIT: Duration = Duration::from_millis(500);
/// After a handover detaches the receive filters, before the listing: a worker serves a
/// request only after forwarding everything its rings hold, so this covers only a frame the
/// kernel was handing to a ring while its filter changed.
const HANDOVER_DRAIN: Duration = Duration::from_millis(5);

/// Live figures of one real server.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFigures {
    pub active: u32,
    pub inactive: u32,
    pub persistent: u32,
    pub stats: Stats,
    pub rates: Stats,
}

/// What a connection entry is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    Tcp(TcpState),
    Udp,
    /// A persistence template (IPVS lists it with state NONE).
    Template,
}

/// One entry of the connection listing (`-Lc`): a flow of some worker, or a persistence
/// template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnRow {
    pub proto: Protocol,
    /// Seconds until it expires.
    pub expires: u32,
    pub state: ConnState,
    pub client: (Ipv4Addr, u16),
    pub virt: (Ipv4Addr, u16),
    pub dest: (Ipv4Addr, u16),
    /// A fwmark service's persistence template: IPVS keys it with protocol `IPPROTO_IP` and
    /// the mark as virtual address (`proto` is then unused).
    pub fwmark_template: bool,
}

/// The port a connection reaches its real on: a masquerading real's own, else the one the
/// client asked for.
fn dest_port(real: Real<'_>, asked: u16) -> u16 {
    match real.path.xmit {
        Xmit::Masq { port } | Xmit::FullNat { port, .. } if port != 0 => port,
        _ => asked,
    }
}

/// Every configured VIP, sorted: the snapshot's, and those of the services handed to the
/// director's own stack (`local`), which the snapshot leaves out — what `table.vips()` gives
/// without going through every service.
fn configured_vips(
    snap: &Snapshot,
    table: &ServiceTable,
    local: &BTreeSet<ServiceKey>,
) -> Vec<Ipv4Addr> {
    let mut vips = snap.vips().to_vec();
    for k in local.iter().filter(|k| table.service(k).is_some()) {
        if k.is_fwmark() {
            let rules = table.mark_rules().iter().filter(|r| r.mark == k.fwmark);
            vips.extend(rules.map(|r| r.vip));
        } else {
            vips.push(k.vip);
        }
    }
    vips.sort();
    vips.dedup();
    vips
}

impl Control {
    /// Applies `changes` and publishes the result; `local` = the services handed to the
    /// director's own stack (health's local sorry server, see `health::book`): they stay in
    /// the configured table but not in the snapshot, the socket filters or the nft table.
    pub(crate) fn publish(
        &mut self,
        changes: &[Change],
        local: &BTreeSet<ServiceKey>,
    ) -> Result<(), Refused> {
        let journal = self.state.apply_in_place(changes)?;
        match self.publish_state(Touched::of(changes), Structure::of(changes), local) {
            Ok(()) => {
                for c in changes {
                    log::debug!("applied: {c:?}");
                }
                if let [one] = changes {
                    log::info!("applied: {one:?}");
                } else {
                    log::info!("applied {} changes", changes.len());
                }
                Ok(())
            }
            Err(r) => {
                self.state.undo(journal);
                Err(r)
            }
        }
    }

    /// Compiles `self.state` into the next snapshot (again only for the `touched` services)
    /// and publishes it: the kernel filter first (the elements that change), the workers'
    /// socket filters only when the VIPs or the NAT reply sources change, then the snapshot
    /// with one store. A failure before the store leaves everything as it was (the caller
    /// takes the state back).
    pub(crate) fn publish_state(
        &mut self,
        mut touched: Touched,
        structure: Structure,
        local: &BTreeSet<ServiceKey>,
    ) -> Result<(), Refused> {
        // A service handed to the director's own stack, or taken back, is compiled again.
        for k in self.health.local.symmetric_difference(local) {
            touched.add(*k);
        }
        let prev = self.snapshot.load_full();
        // Placement on a copy, so a refused change leaves the slots as they were.
        let mut placer = self.placer.clone();
        let hops_before = placer.hops();
        let planned = self
            .compiler
            .plan(&prev, &self.state.table, local, &touched, &mut placer)
            .map_err(|e| Refused::whole(e.to_string()))?;
        let snap = planned.snapshot();
        let d = &planned.delta;
        if let Some(kf) = &mut self.kernel_filter {
            let delta = FilterDelta {
                services_added: &d.keys_added,
                services_removed: &d.keys_removed,
                vips: snap.vips(),
                nat_replies_added: &d.nat_added,
                nat_replies_removed: &d.nat_removed,
                locals: snap.local_addrs(),
                laddrs: snap.laddrs(),
            };
            kf.apply(&delta)
                .map_err(|e| Refused::whole(format!("cannot update the kernel filter: {e}")))?;
        }
        // The receive filter depends on the VIPs, the NAT reply sources and the local
        // addresses only: a weight or health change leaves the workers' sockets alone.
        if d.vips_changed || d.nat_sources_changed || d.laddrs_changed || d.full {
            let program = receive_filter(
                snap.vips(),
                snap.nat_sources(),
                snap.laddrs(),
                self.arp.vip_mac(),
            );
            for &(iface, fd) in &self.ring_fds {
                let name = self.interfaces.get(iface).map_or("?", |i| i.name.as_str());
                if let Err(e) = attach_filter(fd, &program, name) {
                    log::warn!("cannot update a worker's socket filter: {e}");
                }
            }
        }
        // Before the snapshot: a new masquerading real's replies must already reach the worker
        // of their flow when its first flow is scheduled.
        if (d.nat_sources_changed || d.laddrs_changed) && self.workers.len() > 1 {
            let program = fanout_program(snap.nat_sources(), snap.laddrs());
            let mut done = Vec::new();
            for &(iface, fd) in &self.ring_fds {
                if done.contains(&iface) {
                    continue;
                }
                done.push(iface);
                let name = self.interfaces.get(iface).map_or("?", |i| i.name.as_str());
                if let Err(e) = set_fanout_program(fd, &program, name) {
                    log::warn!("cannot update the fanout program on {name}: {e}");
                }
            }
        }
        // Before the snapshot: a worker must hold the ports of a local address before a flow
        // may need one (only the addresses it lacks are sent).
        self.local_ports
            .provision(snap.laddrs(), &self.worker_requests);
        let t = self.state.timeouts;
        let full = d.full;
        let snap = self
            .compiler
            .commit(planned)
            .with_timeouts(Timeouts::with_set(t.tcp, t.tcpfin, t.udp));
        let snap = Arc::new(snap);
        let old = self.snapshot.swap(Arc::clone(&snap));
        self.retire(old);
        let now = crate::io::clock::now_ms();
        if structure.vips || full {
            // ARP keeps answering for local services' VIPs too (the kernel filter no longer
            // drops those requests, so the director's kernel may answer as well, with the
            // same MAC) — except VIPs standing by (VRRP BACKUP), which are not answered.
            let arp_vips = configured_vips(&snap, &self.state.table, local);
            self.arp.set_vips(self.ha.arp_vips(arp_vips), now);
        }
        if structure.laddrs || full {
            // Configured local addresses the kernel does not own are uvs's to answer for.
            let local_addrs = self
                .state
                .table
                .local_addrs()
                .into_iter()
                .filter(|a| !placer.is_local(*a))
                .collect();
            self.arp.set_local_addrs(local_addrs, now);
        }
        if structure.reals || full || placer.hops() != hops_before {
            let (table, book) = (&self.state.table, &self.health.book);
            // Reals health removed stay resolved: their checks must see them come back. Looked
            // for only if a next hop is no configured real's.
            let absent: OnceCell<HashSet<Ipv4Addr>> = OnceCell::new();
            let wanted = |a: Ipv4Addr| {
                table.has_real_at(a)
                    || absent
                        .get_or_init(|| {
                            let gone = book.absent_reals(table).into_iter();
                            gone.map(|(_, spec)| spec.addr).collect()
                        })
                        .contains(&a)
            };
            let neighbors = placer.neighbors_where(&wanted);
            self.arp.set_neighbors(neighbors, &self.neigh);
        }
        self.placer = placer;
        self.health.local = local.clone();
        self.free_retired();
        Ok(())
    }

    /// Keeps a replaced snapshot until no worker holds it any more, so that freeing it (every
    /// service only it still shares) happens here, on the control thread, never on a worker
    /// at the end of its batch.
    fn retire(&mut self, old: Arc<Snapshot>) {
        self.retired.push(old);
    }

    /// Frees the retired snapshots no worker holds any more. `ArcSwap` turns a reader's
    /// borrowed load into a counted reference when the pointer is replaced, so the count is
    /// exact: 1 = only this list.
    pub(crate) fn free_retired(&mut self) {
        self.retired.retain(|s| Arc::strong_count(s) > 1);
    }

    /// Raw (monotonic) traffic sums of one real across workers.
    fn raw_stats(&self, id: RealId) -> Stats {
        use std::sync::atomic::Ordering::Relaxed;
        let mut s = Stats::default();
        for w in &self.workers {
            if let Some(c) = w.real(id) {
                s.conns += c.conns.load(Relaxed);
                s.in_pkts += c.in_packets.load(Relaxed);
                s.in_bytes += c.in_bytes.load(Relaxed);
                s.out_pkts += c.out_packets.load(Relaxed);
                s.out_bytes += c.out_bytes.load(Relaxed);
            }
        }
        s
    }

    /// Counts, totals since the last zeroing, and rates of one real.
    pub fn real_figures(&self, id: RealId) -> RealFigures {
        RealFigures {
            active: self.conns.active(id),
            inactive: self.conns.inactive(id),
            persistent: self.conns.persistent(id),
            stats: self.stats.shown(id, self.raw_stats(id)),
            rates: self.stats.rates(id),
        }
    }

    /// Runs one estimator period over every configured real.
    pub fn estimate(&mut self) {
        let reals: Vec<(RealId, Stats)> = self
            .state
            .table
            .reals()
            .map(|(_, r)| (r.id, self.raw_stats(r.id)))
            .collect();
        self.stats.tick(&reals);
    }

    /// `-Z [service]`: zeroes the statistics of one service, or of all.
    pub fn zero(&mut self, key: Option<ServiceKey>) -> Result<(), Refused> {
        let ids: Vec<RealId> = match key {
            Some(k) => match self.state.table.service(&k) {
                Some(s) => s.reals.iter().map(|r| r.id).collect(),
                None => return Err(Refused::whole("Service not defined")),
            },
            None => self.state.table.reals().map(|(_, r)| r.id).collect(),
        };
        for id in ids {
            let raw = self.raw_stats(id);
            self.stats.zero(id, raw);
        }
        Ok(())
    }

    /// `uvs run --takeover` asked for everything: stop receiving (every worker socket gets a
    /// filter that accepts nothing; the nftables table stays, so the kernel keeps out of the
    /// service traffic until this process is gone), let the workers finish their rings, list
    /// every connection and stop at once. The new process adopts the connections from the
    /// listing as a backup adopts synced ones.
    pub fn hand_over(&mut self) -> Vec<ConnRow> {
        let nothing = drop_all();
        for &(iface, fd) in &self.ring_fds {
            let name = self.interfaces.get(iface).map_or("?", |i| i.name.as_str());
            if let Err(e) = attach_filter(fd, &nothing, name) {
                log::warn!("handover: cannot detach a worker's socket: {e}");
            }
        }
        std::thread::sleep(HANDOVER_DRAIN);
        let rows = self.connections();
        log::info!(
            "handing over {} connection(s) to a new uvs (uvs run --takeover); stopping",
            rows.len()
        );
        crate::io::signals::request_stop_now();
        rows
    }

    /// `-Lc`: every worker's flows, then the persistence templates.
    pub fn connections(&self) -> Vec<ConnRow> {
        let mut records: Vec<FlowRecord> = Vec::new();
        let mut pending = Vec::new();
        for tx in &self.worker_requests {
            let (reply, rx) = crossbeam_channel::bounded(1);
            if tx.send(WorkerRequest::DumpFlows(reply)) {
                pending.push(rx);
            }
        }
        for rx in pending {
            match rx.recv_timeout(DUMP_WAIT) {
                Ok(mut v) => records.append(&mut v),
                Err(_) => log::warn!("a worker did not answer a connection listing in time"),
            }
        }
        let snap = self.snapshot.load();
        let now = crate::io::clock::now_ms();
        let mut rows: Vec<ConnRow> = records
            .into_iter()
            .filter_map(|f| {
                let real = snap.real(f.real)?;
                let proto = Protocol::from_number(f.key.proto)?;
                Some(ConnRow {
                    proto,
                    expires: f.expires_in / 1000,
                    state: match proto {
                        Protocol::Tcp => ConnState::Tcp(f.state),
                        Protocol::Udp => ConnState::Udp,
                    },
                    client: (ipv4_from_u32(f.key.saddr), f.key.sport),
                    virt: (ipv4_from_u32(f.key.daddr), f.key.dport),
                    dest: (ipv4_from_u32(real.dest.addr), dest_port(real, f.key.dport)),
                    fwmark_template: false,
                })
            })
            .collect();
        // Persistence templates, as IPVS lists them: state NONE, client port 0.
        rows.extend(self.templates.live(now).into_iter().filter_map(|t| {
            let real = snap.real(t.real)?;
            Some(ConnRow {
                proto: Protocol::from_number(t.key.proto).unwrap_or(Protocol::Tcp),
                fwmark_template: t.key.proto == 0,
                expires: t.expires_in_ms / 1000,
                state: ConnState::Template,
                client: (ipv4_from_u32(t.key.snet), 0),
                virt: (ipv4_from_u32(t.key.vip), t.key.vport),
                dest: (ipv4_from_u32(real.dest.addr), dest_port(real, t.key.vport)),
            })
        }));
        rows
    }

    /// `uvs trace` / `uvs capture`: attaches a session writing to `stream` (its own thread
    /// serves the stream); `Err` if every trace slot is taken.
    pub fn start_trace(
        &mut self,
        mode: StreamMode,
        filter: TraceFilter,
        stream: std::os::unix::net::UnixStream,
    ) -> std::io::Result<()> {
        let names: Vec<String> = self.interfaces.iter().map(|i| i.name.clone()).collect();
        let session = start_session(&self.trace, mode, filter, stream, names)?;
        self.trace_sessions.push(session);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{MarkRule, SchedulerKind, ServiceSpec};
    use crate::snapshot::tests::AllOnLink;

    #[test]
    fn arp_answers_every_configured_vip_local_services_included() {
        let vip = |last| Ipv4Addr::new(10, 0, 0, last);
        let mut t = ServiceTable::new();
        let keys = [
            ServiceKey::addr(Protocol::Tcp, vip(100), 80),
            ServiceKey::addr(Protocol::Tcp, vip(101), 80),
            ServiceKey::addr(Protocol::Udp, vip(101), 53),
            ServiceKey::fwmark(7),
        ];
        for k in keys {
            t.add_service(ServiceSpec::new(k, SchedulerKind::Rr))
                .unwrap();
        }
        t.add_mark_rule(MarkRule {
            proto: Protocol::Tcp,
            vip: vip(102),
            ports: vec![443],
            mark: 7,
        })
        .unwrap();
        let mut want = t.vips();
        want.sort();
        // Handed to the director's stack: 10.0.0.100:80 (its VIP only it has) and the fwmark
        // service (whose rule's VIP only it reaches).
        let local: BTreeSet<ServiceKey> = [keys[0], keys[3]].into_iter().collect();
        let snap = Snapshot::build(
            &crate::health::book::published(&t, &local),
            1,
            &mut AllOnLink,
        )
        .unwrap();
        assert_eq!(snap.vips(), [vip(101)]);
        assert_eq!(configured_vips(&snap, &t, &local), want);
    }
}
