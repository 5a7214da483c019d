//! Admin requests on the control thread: apply changes live, report status, list connections,
//! zero statistics.
//!
//! A change is applied as build aside → publish → free later: the new service table is
//! validated and compiled into a snapshot (placing every real on an interface); the kernel
//! filter and the workers' socket filters are updated; only then is the snapshot published with
//! one atomic store. Any failure before the publish leaves the running state as it was.
//! Established flows keep their real server across changes (they live in the workers' flow
//! tables, keyed by real id); a real set to weight 0 gets no new flows but keeps its
//! established ones (quiescing); a deleted real's flows are dropped (`real_removed`), as IPVS
//! does with `expire_nodest_conn = 0`.

use std::sync::Arc;
use std::time::Duration;

use super::Control;
use crate::ctl::apply::{EXIT_REFUSED, apply};
use crate::ctl::backend::{RealFigures, status_of};
use crate::ctl::proto::{Change, ConnEntry, Refusal, Reply, Request, Stats};
use crate::datapath::tcp_state::Timeouts;
use crate::datapath::worker::{FlowRecord, WorkerRequest};
use crate::io::filter::receive_filter;
use crate::io::socket::attach_filter;
use crate::model::{Protocol, RealId};
use crate::snapshot::Snapshot;
use crate::wire::ipv4_from_u32;

/// How long a connection listing waits for each worker.
const DUMP_WAIT: Duration = Duration::from_millis(500);

fn refused(message: String) -> Reply {
    Reply::Refused(Refusal {
        message,
        change: None,
        exit_code: EXIT_REFUSED,
    })
}

impl Control {
    pub fn handle(&mut self, req: Request) -> Reply {
        match req {
            Request::Apply(changes) => self.apply_operator(&changes),
            Request::Status => Reply::Status(self.status()),
            Request::Connections => Reply::Connections(self.connections()),
            Request::Zero(key) => self.zero(key),
            Request::Health => Reply::Health(self.health_listing()),
            Request::Ha => Reply::Ha(self.ha.as_ref().map(|h| h.status()).unwrap_or_default()),
            Request::SyncDaemon(c) => match self.ha.as_mut().map(|h| h.sync_command(&c)) {
                Some(Ok(())) => Reply::Done,
                Some(Err(m)) => refused(m),
                None => refused("this director runs without HA hooks".into()),
            },
            // Streams are started by `serve_admin` (see `start_stream`), never answered here.
            Request::Trace(_) => refused("trace requests are streamed".into()),
        }
    }

    /// `uvs trace` / `uvs capture`: attach a session; its own thread serves the stream.
    pub fn start_stream(
        &mut self,
        req: crate::ctl::proto::TraceRequest,
        mut stream: std::os::unix::net::UnixStream,
    ) {
        use crate::ctl::proto::write_frame;
        let names: Vec<String> = self.interfaces.iter().map(|i| i.name.clone()).collect();
        let Ok(clone) = stream.try_clone() else {
            return;
        };
        if let Err(e) = write_frame(&mut stream, &Reply::Streaming) {
            log::debug!("trace client gone: {e}");
            return;
        }
        match crate::trace::start_session(&self.trace, req.mode, req.filter, clone, names) {
            Ok(s) => self.trace_sessions.push(s),
            Err(e) => {
                // The client already has `Streaming`: say why in the stream, then close.
                let msg = format!("# uvs: {e}\n");
                let _ = std::io::Write::write_all(&mut stream, &(msg.len() as u32).to_be_bytes());
                let _ = std::io::Write::write_all(&mut stream, msg.as_bytes());
            }
        }
    }

    /// Applies `changes` and publishes the result; `local` = the services handed to the
    /// director's own stack (health's local sorry server, see `health::book`): they stay in
    /// the configured table but not in the snapshot, the socket filters or the nft table.
    pub(crate) fn publish(
        &mut self,
        changes: &[Change],
        local: &std::collections::BTreeSet<crate::model::ServiceKey>,
    ) -> Reply {
        let next = match apply(&self.state, changes) {
            Ok(n) => n,
            Err(r) => return Reply::Refused(r),
        };
        // Placement on a copy, so a refused change leaves the slots as they were.
        let mut placer = self.placer.clone();
        let generation = self.snapshot.load().generation + 1;
        let t = next.timeouts;
        let published = crate::health::book::published(&next.table, local);
        let snap = match Snapshot::build(&published, generation, &mut placer) {
            Ok(s) => s.with_timeouts(Timeouts::with_set(t.tcp, t.tcpfin, t.udp)),
            Err(e) => return refused(e.to_string()),
        };
        // The expanded (protocol, VIP, port) keys, mark rules included.
        let keys = snap.forwarded_keys();
        if let Some(kf) = &mut self.kernel_filter {
            if let Err(e) = kf.update(&keys) {
                return refused(format!("cannot update the kernel filter: {e}"));
            }
        }
        let vips = snap.vips();
        let program = receive_filter(&vips, self.arp.vip_mac());
        for &(iface, fd) in &self.ring_fds {
            let name = self.interfaces.get(iface).map_or("?", |i| i.name.as_str());
            if let Err(e) = attach_filter(fd, &program, name) {
                log::warn!("cannot update a worker's socket filter: {e}");
            }
        }
        self.snapshot.store(Arc::new(snap));
        let now = crate::clock::now_ms();
        // ARP keeps answering for local services' VIPs too (the kernel filter no longer
        // drops those requests, so the director's kernel may answer as well, with the same
        // MAC) — except VIPs standing by (VRRP BACKUP), which are not answered.
        let mut arp_vips = next.table.vips();
        arp_vips.sort();
        let arp_vips = match &self.ha {
            Some(ha) => ha.arp_vips(arp_vips),
            None => arp_vips,
        };
        self.arp.set_vips(arp_vips, now);
        let resolve = crate::health::control::with_managed_reals(&self.health.book, &next.table);
        self.arp
            .set_neighbors(placer.neighbors(&resolve), &self.neigh);
        self.placer = placer;
        for c in changes {
            log::info!("applied: {c:?}");
        }
        self.state = next;
        self.health.local = local.clone();
        Reply::Done
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
            }
        }
        s
    }

    pub fn status(&self) -> crate::ctl::proto::Status {
        let services = self.state.table.services();
        status_of(&self.state, &|si, ri| {
            let Some(r) = services.get(si).and_then(|s| s.reals.get(ri)) else {
                return RealFigures::default();
            };
            RealFigures {
                active: self.conns.active(r.id),
                inactive: self.conns.inactive(r.id),
                persistent: self.conns.persistent(r.id),
                stats: self.stats.shown(r.id, self.raw_stats(r.id)),
                rates: self.stats.rates(r.id),
            }
        })
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

    fn zero(&mut self, key: Option<crate::model::ServiceKey>) -> Reply {
        let ids: Vec<RealId> = match key {
            Some(k) => match self.state.table.service(&k) {
                Some(s) => s.reals.iter().map(|r| r.id).collect(),
                None => return refused("Service not defined".into()),
            },
            None => self.state.table.reals().map(|(_, r)| r.id).collect(),
        };
        for id in ids {
            let raw = self.raw_stats(id);
            self.stats.zero(id, raw);
        }
        Reply::Done
    }

    fn connections(&self) -> Vec<ConnEntry> {
        let mut records: Vec<FlowRecord> = Vec::new();
        let mut pending = Vec::new();
        for tx in &self.worker_requests {
            let (reply, rx) = crossbeam_channel::bounded(1);
            if tx.send(WorkerRequest::DumpFlows(reply)).is_ok() {
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
        let now = crate::clock::now_ms();
        // Persistence templates, as IPVS lists them: state NONE, client port 0.
        let templates: Vec<ConnEntry> = self
            .templates
            .live(now)
            .into_iter()
            .filter_map(|t| {
                let real = snap.real(t.real)?;
                let fwmark_template = t.key.proto == 0;
                Some(ConnEntry {
                    proto: Protocol::from_number(t.key.proto).unwrap_or(Protocol::Tcp),
                    fwmark_template,
                    expires: t.expires_in_ms / 1000,
                    state: "NONE".to_string(),
                    client: (ipv4_from_u32(t.key.snet), 0),
                    virt: (ipv4_from_u32(t.key.vip), t.key.vport),
                    dest: (ipv4_from_u32(real.addr), t.key.vport),
                })
            })
            .collect();
        let mut flows: Vec<ConnEntry> = records
            .into_iter()
            .filter_map(|f| {
                let real = snap.real(f.real)?;
                let proto = Protocol::from_number(f.key.proto)?;
                let state = match proto {
                    Protocol::Tcp => f.state.name().to_string(),
                    Protocol::Udp => "UDP".to_string(),
                };
                Some(ConnEntry {
                    proto,
                    expires: f.expires_in / 1000,
                    state,
                    client: (ipv4_from_u32(f.key.saddr), f.key.sport),
                    virt: (ipv4_from_u32(f.key.daddr), f.key.dport),
                    dest: (ipv4_from_u32(real.addr), f.key.dport),
                    fwmark_template: false,
                })
            })
            .collect();
        flows.extend(templates);
        flows
    }
}
