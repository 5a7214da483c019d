//! The control thread: owns all mutable shared state, answers ARP, resolves real-server MACs,
//! applies configuration changes, runs health reconciliation, HA and trace sessions, reads
//! ring statistics, serves /metrics. Workers never wait for it.
//!
//! The admin socket reaches it through [`AdminPort`], implemented one layer up
//! (`crate::ctl`): this module offers typed operations ([`admin`]) and knows nothing of the
//! wire protocol.

pub mod admin;
pub mod announce;
pub mod fullnat;
pub mod health;
pub mod placement;
pub mod stats;
pub mod takeover;
pub mod tunnel_icmp;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conns::ConnCounts;
use crate::datapath::counters::{DropReason, ReuseReason, WorkerCounters};
use crate::datapath::tap::TraceHub;
use crate::datapath::templates::TemplateTable;
use crate::datapath::worker::WorkerInbox;
use crate::interfaces::Interface;
use crate::io::clock;
use crate::io::sd_notify;
use crate::io::signals;
use crate::io::socket::{RingStats, recv_frame, send_frame, take_ring_stats, wait_readable};
use crate::kernel_filter::KernelFilter;
use crate::metrics::{Backend, Endpoint, Figures, RingFigures, WorkerFigures};
use crate::model::change::{AdminState, diff};
use crate::model::change::{Structure, Touched};
use crate::neigh::arp::{ArpEngine, ArpIgnore, Outgoing};
use crate::neigh::cache::NeighTable;
use crate::snapshot::{Compiler, SharedSnapshot, Snapshot};
use crate::trace::events::{ArpSnapshot, arp_event, arp_events, vrrp_events};
use crate::trace::session::{Session, dropped_by_reason, pump};
use crate::vrrp::control::HaRuntime;
use health::HealthCtl;
use placement::Placer;
use stats::StatsKeeper;

/// The admin socket as the control loop sees it: descriptors to wait on, and a turn to serve
/// what arrived with the control thread's operations.
pub trait AdminPort {
    fn fds(&self) -> Vec<RawFd>;
    fn serve(&mut self, control: &mut Control);
}

/// How often the control loop runs its timers when nothing arrives.
const TICK_MS: i32 = 20;
/// Ring statistics are read this often (each read resets the kernel's counters).
const RING_STATS_EVERY: Duration = Duration::from_secs(1);

pub struct Control {
    pub interfaces: Vec<Interface>,
    pub arp_sockets: Vec<OwnedFd>,
    pub arp: ArpEngine,
    pub neigh: Arc<NeighTable>,
    pub workers: Vec<Arc<WorkerCounters>>,
    pub worker_requests: Vec<WorkerInbox>,
    pub conns: Arc<ConnCounts>,
    /// Persistence templates, shared with the workers (listed by `-Lc`).
    pub templates: Arc<TemplateTable>,
    /// (interface index, receive socket) of every worker ring.
    pub ring_fds: Vec<(usize, RawFd)>,
    pub ring_totals: Vec<RingStats>,
    /// FullNAT local addresses: the workers' port pools and their figures.
    pub local_ports: fullnat::LocalPortPlan,
    /// The configured state the admin interface changes.
    pub state: AdminState,
    pub snapshot: SharedSnapshot,
    /// What the next snapshot is compiled from besides the published one (see
    /// `snapshot::Compiler`); always the books of the snapshot published last.
    pub compiler: Compiler,
    /// Replaced snapshots a worker may still hold: freed here once none does.
    pub retired: Vec<Arc<Snapshot>>,
    pub placer: Placer,
    pub kernel_filter: Option<KernelFilter>,
    pub stats: StatsKeeper,
    pub admin: Option<Box<dyn AdminPort>>,
    pub metrics: Option<Endpoint>,
    /// `uvs run --takeover` in progress (see [`takeover`]).
    pub takeover: Option<takeover::Phase>,
    /// The instance lock, when it came from a takeover (else `daemon::run` holds it).
    pub instance_lock: Option<Box<dyn std::any::Any>>,
    /// Written (with the PID) once uvs can forward: every real server's MAC is known, or
    /// [`READY_TIMEOUT`] has passed (then the unresolved ones are logged).
    pub ready_file: Option<std::path::PathBuf>,
    /// `uvs trace` / `uvs capture`: the workers' trace rings and the attached sessions.
    pub trace: Arc<TraceHub>,
    pub trace_sessions: Vec<Session>,
    /// Re-reads the configuration files (SIGHUP). `None`: nothing to reload.
    pub reload: Option<Box<dyn Fn() -> anyhow::Result<crate::model::ServiceTable>>>,
    /// Health checks: reports drained each tick, applied through `publish`.
    pub health: HealthCtl,
    /// VRRP and connection sync (inert when neither is configured).
    pub ha: HaRuntime,
    /// Readable when the kernel's routes, addresses or links change.
    pub route_watch: Option<crate::io::rtnetlink::RouteWatch>,
    /// `[announce]`: the VIPs this director can serve, held on the announcement device for
    /// the routing daemon to export.
    pub announce: Option<announce::Announcer>,
    /// What the translator of tunnel-path ICMP errors counted.
    pub tunnel_icmp: Arc<tunnel_icmp::Counts>,
}

/// Longest wait for real-server MACs before declaring readiness anyway.
pub const READY_TIMEOUT: Duration = Duration::from_secs(3);

impl Control {
    /// Runs until SIGINT or SIGTERM.
    pub fn run(&mut self) {
        let pollfd = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let fixed: Vec<libc::pollfd> = self
            .arp_sockets
            .iter()
            .map(|fd| fd.as_raw_fd())
            .chain(self.metrics.as_ref().map(|m| m.raw_fd()))
            .chain(self.ha.fds())
            .chain(self.route_watch.as_ref().map(|w| w.raw_fd()))
            .map(pollfd)
            .collect();
        let mut pollfds = fixed.clone();
        let mut last_ring_read = Instant::now();
        let mut last_estimate = Instant::now();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 2048];
        let mut last_conflict = None;
        let started = Instant::now();
        let mut ready = false;
        let mut trace_buf = Vec::new();
        loop {
            // With an announcement, a stop first withdraws the VIPs and drains.
            if signals::stop_requested() && self.may_stop(ready) {
                break;
            }
            // The admin socket's descriptors change as connections come and go.
            pollfds.clone_from(&fixed);
            if let Some(a) = &self.admin {
                pollfds.extend(a.fds().into_iter().map(pollfd));
            }
            wait_readable(&mut pollfds, TICK_MS);
            let now = clock::now_ms();
            for i in 0..self.arp_sockets.len() {
                let fd = self.arp_sockets[i].as_raw_fd();
                // Bounded per tick so an ARP flood cannot starve the rest of the loop.
                for _ in 0..256 {
                    match recv_frame(fd, &mut buf) {
                        Ok(Some(n)) => {
                            let frame = &buf[..n];
                            let before = (!self.trace_sessions.is_empty())
                                .then(|| ArpSnapshot::of(&self.arp, frame));
                            if let Some(reply) = self.arp.on_frame(i, frame, now, &self.neigh) {
                                out.push(reply);
                            }
                            if let Some(b) = before {
                                let ifc = self.interfaces.get(i);
                                let name = ifc.map_or("?", |c| c.name.as_str());
                                let mac = ifc.map(|c| c.mac).unwrap_or_default();
                                for (ips, line) in arp_events(&self.arp, frame, name, mac, &b) {
                                    arp_event(&self.trace_sessions, &ips, &line);
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            log::warn!("ARP socket on {}: {e}", self.interfaces[i].name);
                            break;
                        }
                    }
                }
            }
            // VRRP adverts and timers, sync messages; VRRP state changes go to `uvs trace`.
            let before = (!self.trace_sessions.is_empty()).then(|| self.ha.status().instances);
            self.ha
                .poll(&mut self.arp, self.snapshot.load().vips().to_vec(), now);
            if let Some(b) = before {
                for (ips, line) in vrrp_events(&b, &self.ha.status().instances) {
                    arp_event(&self.trace_sessions, &ips, &line);
                }
            }
            self.arp.on_tick(now, &self.neigh, &mut out);
            self.send(&mut out);
            if self.arp.last_conflict != last_conflict {
                if let Some((vip, mac)) = self.arp.last_conflict {
                    log::warn!(
                        "another host ({mac}) claims VIP {vip} on the LAN — a real server without arp_ignore=1/arp_announce=2?"
                    );
                }
                last_conflict = self.arp.last_conflict;
            }
            if !ready {
                ready = self.announce_ready_when_resolved(started.elapsed());
            }
            if last_estimate.elapsed() >= Duration::from_secs(stats::PERIOD_SECS) {
                self.estimate();
                last_estimate += Duration::from_secs(stats::PERIOD_SECS);
            }
            self.serve_admin();
            pump(&self.trace, &mut self.trace_sessions, &mut trace_buf);
            if self.route_watch.as_ref().is_some_and(|w| w.changed()) {
                self.reroute();
            }
            if signals::take_reload() {
                sd_notify::tell(sd_notify::Status::Reloading);
                self.reload_config();
                if ready {
                    sd_notify::tell(sd_notify::Status::Ready);
                }
            }
            self.drain_health();
            self.announce_turn(ready);
            self.free_retired();
            self.takeover_turn();
            if last_ring_read.elapsed() >= RING_STATS_EVERY {
                self.read_ring_stats();
                last_ring_read = Instant::now();
            }
            if let Some(m) = self.metrics.take() {
                m.serve_pending(&mut || {
                    self.read_ring_stats();
                    let mut text = crate::metrics::render(&self.figures());
                    text.push_str(&self.ha.render_metrics());
                    if let Some(a) = &self.announce {
                        text.push_str(&a.render_metrics());
                    }
                    text
                });
                self.metrics = Some(m);
            }
        }
        sd_notify::tell(sd_notify::Status::Stopping);
        // A MASTER resigns with priority 0 so the peer takes over at once.
        self.ha.shutdown();
    }

    /// SIGHUP: re-read the files and apply the difference, all or nothing. Reals present
    /// before and after keep their ids and their flows. An invalid file changes nothing.
    /// Interfaces, workers and ring settings are fixed at start and not reloaded.
    fn reload_config(&mut self) {
        let Some(load) = &self.reload else {
            log::warn!("SIGHUP: nothing to reload");
            return;
        };
        let desired = match load() {
            Ok(t) => t,
            Err(e) => {
                log::error!("SIGHUP: configuration refused, keeping the running one: {e:#}");
                return;
            }
        };
        let changes = diff(&self.state.table, &desired);
        if changes.is_empty() {
            log::info!("SIGHUP: configuration unchanged");
            return;
        }
        let n = changes.len();
        match self.apply_operator(&changes) {
            Ok(()) => log::info!("SIGHUP: configuration reloaded ({n} changes)"),
            Err(r) => log::error!(
                "SIGHUP: reload refused, keeping the running configuration: {}",
                r.message
            ),
        }
    }

    /// The kernel's routes changed: re-read them and republish, so routed next hops and the
    /// replies' way back follow. A table that cannot be read keeps the previous one.
    fn reroute(&mut self) {
        // A link's MTU (a tunnel's) changes without its routes changing.
        let mtu_changed = self.placer.refresh_mtus();
        match crate::io::rtnetlink::dump_ipv4_routes() {
            Ok(routes) if routes == self.placer.routes && !mtu_changed => {}
            Ok(routes) => {
                self.placer.routes = routes;
                let local = self.health.local.clone();
                match self.publish_state(Touched::all(), Structure::all(), &local) {
                    Ok(()) => log::info!("routes changed: next hops recomputed"),
                    Err(r) => log::error!(
                        "routes changed, but the configuration no longer places: {} (keeping the previous next hops)",
                        r.message
                    ),
                }
            }
            Err(e) => log::warn!("cannot re-read the routing table: {e}"),
        }
    }

    /// Serves every pending admin connection (one request each).
    fn serve_admin(&mut self) {
        if let Some(mut port) = self.admin.take() {
            port.serve(self);
            self.admin = Some(port);
        }
    }

    fn announce_ready_when_resolved(&mut self, waited: Duration) -> bool {
        let unresolved: Vec<String> = self
            .arp
            .neighbors
            .iter()
            .filter(|n| n.mac.is_none())
            .map(|n| n.addr.to_string())
            .collect();
        if !unresolved.is_empty() && waited < READY_TIMEOUT {
            return false;
        }
        // A takeover starts receiving now, with every MAC known.
        self.take_over_now();
        if unresolved.is_empty() {
            log::info!("ready: every real server's MAC is known");
        } else {
            log::warn!(
                "ready, but no ARP answer yet from {}; their traffic is dropped as no_neighbor until they answer",
                unresolved.join(", ")
            );
        }
        if let Some(p) = &self.ready_file {
            if let Err(e) = std::fs::write(p, format!("{}\n", std::process::id())) {
                log::warn!("cannot write ready file {}: {e}", p.display());
            }
        }
        sd_notify::tell(sd_notify::Status::Ready);
        true
    }

    fn send(&self, out: &mut Vec<Outgoing>) {
        for o in out.drain(..) {
            if o.frame.is_empty() {
                continue;
            }
            if let Some(fd) = self.arp_sockets.get(o.interface) {
                if let Err(e) = send_frame(fd.as_raw_fd(), &o.frame) {
                    log::debug!("ARP send on {}: {e}", self.interfaces[o.interface].name);
                }
            }
        }
    }

    fn read_ring_stats(&mut self) {
        for &(iface, fd) in &self.ring_fds {
            if let (Ok(s), Some(t)) = (take_ring_stats(fd), self.ring_totals.get_mut(iface)) {
                t.packets += s.packets;
                t.drops += s.drops;
                t.freezes += s.freezes;
            }
        }
    }

    /// Sums every worker's counters into one scrape.
    pub fn figures(&self) -> Figures {
        use std::sync::atomic::Ordering::Relaxed;
        let mut f = Figures::default();
        for svc in self.state.table.services() {
            for r in &svc.reals {
                for w in &self.workers {
                    if let Some(c) = w.real(r.id) {
                        f.ipvs.connections += c.conns.load(Relaxed);
                        f.ipvs.in_packets += c.in_packets.load(Relaxed);
                        f.ipvs.in_bytes += c.in_bytes.load(Relaxed);
                        f.ipvs.out_packets += c.out_packets.load(Relaxed);
                        f.ipvs.out_bytes += c.out_bytes.load(Relaxed);
                    }
                }
                // node_exporter labels a fwmark service: no address, proto FWM, local_mark.
                let fwm = svc.key.is_fwmark();
                f.backends.push(Backend {
                    local_address: if fwm {
                        String::new()
                    } else {
                        svc.key.vip.to_string()
                    },
                    local_port: svc.key.port,
                    remote_address: r.addr.to_string(),
                    remote_port: r.port,
                    proto: if fwm {
                        "FWM"
                    } else {
                        svc.key.proto.ipvsadm_name()
                    },
                    local_mark: fwm.then_some(svc.key.fwmark),
                    active: u64::from(self.conns.active(r.id)),
                    inactive: u64::from(self.conns.inactive(r.id)),
                    weight: r.weight,
                });
            }
        }
        f.drops = DropReason::ALL
            .iter()
            .map(|d| {
                (
                    d.name(),
                    self.workers.iter().map(|w| w.drop_count(*d)).sum(),
                )
            })
            .collect();
        f.arp_ignored = ArpIgnore::ALL
            .iter()
            .map(|r| (r.name(), self.arp.counters.ignored[*r as usize]))
            .collect();
        f.arp_answered = self.arp.counters.requests_answered;
        f.tunnel_path_translated = self.tunnel_icmp.translated.load(Relaxed);
        f.tunnel_path_rate_limited = self.tunnel_icmp.rate_limited.load(Relaxed);
        f.arp_requests_sent = self.arp.counters.requests_sent;
        f.arp_gratuitous_sent = self.arp.counters.gratuitous_sent;
        f.arp_replies_learned = self.arp.counters.replies_learned;
        f.neighbors_resolved = self
            .arp
            .neighbors
            .iter()
            .filter(|n| n.mac.is_some())
            .count() as u64;
        f.neighbors_unresolved = self.arp.neighbors.len() as u64 - f.neighbors_resolved;
        f.workers = self
            .workers
            .iter()
            .map(|w| WorkerFigures {
                rx_frames: w.totals.rx_frames.load(Relaxed),
                forwarded: w.totals.forwarded.load(Relaxed),
                batches: w.totals.batches.load(Relaxed),
                busy_seconds: w.totals.busy_us.load(Relaxed) as f64 / 1e6,
                flows: w.totals.flows.load(Relaxed),
                evictions: w.totals.flow_evictions.load(Relaxed),
                flow_reuse: ReuseReason::ALL
                    .iter()
                    .map(|r| (r.name(), w.totals.flow_reuse[*r as usize].load(Relaxed)))
                    .collect(),
                tx_syscalls: w.totals.tx_syscalls.load(Relaxed),
                coalesce_waits: w.totals.coalesce_waits.load(Relaxed),
                tunnel_frag_needed: w.totals.icmp_frag_needed.load(Relaxed),
                tunnel_icmp_rate_limited: w.totals.icmp_rate_limited.load(Relaxed),
                tunnel_segmented: w.totals.segmented.load(Relaxed),
            })
            .collect();
        f.rings = self
            .interfaces
            .iter()
            .zip(&self.ring_totals)
            .map(|(i, t)| RingFigures {
                interface: i.name.clone(),
                packets: t.packets,
                drops: t.drops,
                freezes: t.freezes,
            })
            .collect();
        f.health = self.health_listing();
        f.trace_dropped = dropped_by_reason(&self.trace).to_vec();
        f.fullnat_laddrs = self
            .local_ports
            .all()
            .into_iter()
            .map(|(a, fig)| (a.to_string(), fig.conns, fig.exhausted))
            .collect();
        f
    }
}
