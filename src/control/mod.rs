//! The control thread: owns all mutable shared state, answers ARP, resolves real-server MACs,
//! reads ring statistics, serves /metrics. Workers never wait for it.

pub mod admin;
pub mod placement;
pub mod signals;
pub mod stats;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock;
use crate::conns::ConnCounts;
use crate::ctl::apply::AdminState;
use crate::datapath::counters::{DropReason, WorkerCounters};
use crate::datapath::worker::WorkerRequest;
use crate::interfaces::Interface;
use crate::io::sd_notify;
use crate::io::socket::{RingStats, recv_frame, send_frame, take_ring_stats, wait_readable};
use crate::kernel_filter::KernelFilter;
use crate::metrics::{Backend, Endpoint, Figures, IpvsTotals, RingFigures, WorkerFigures};
use crate::neigh::arp::{ArpEngine, ArpIgnore, Outgoing};
use crate::neigh::cache::NeighTable;
use crate::snapshot::SharedSnapshot;
use placement::Placer;
use stats::StatsKeeper;
use std::os::unix::net::UnixListener;

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
    pub worker_requests: Vec<crossbeam_channel::Sender<WorkerRequest>>,
    pub conns: Arc<ConnCounts>,
    /// Persistence templates, shared with the workers (listed by `-Lc`).
    pub templates: Arc<crate::datapath::templates::TemplateTable>,
    /// (interface index, receive socket) of every worker ring.
    pub ring_fds: Vec<(usize, RawFd)>,
    pub ring_totals: Vec<RingStats>,
    /// The configured state the admin interface changes.
    pub state: AdminState,
    pub snapshot: SharedSnapshot,
    pub placer: Placer,
    pub kernel_filter: Option<KernelFilter>,
    pub stats: StatsKeeper,
    pub admin: Option<UnixListener>,
    /// Admin connections whose requests are still arriving.
    pub admin_conns: crate::ctl::server::AdminConns,
    pub metrics: Option<Endpoint>,
    /// Written (with the PID) once uvs can forward: every real server's MAC is known, or
    /// [`READY_TIMEOUT`] has passed (then the unresolved ones are logged).
    pub ready_file: Option<std::path::PathBuf>,
    /// `uvs trace` / `uvs capture`: the workers' trace rings and the attached sessions.
    pub trace: Arc<crate::trace::TraceHub>,
    pub trace_sessions: Vec<crate::trace::Session>,
    /// Re-reads the configuration files (SIGHUP). `None`: nothing to reload.
    pub reload: Option<Box<dyn Fn() -> anyhow::Result<crate::model::ServiceTable>>>,
    /// Health checks: reports drained each tick, applied through `publish`.
    pub health: crate::health::control::HealthCtl,
    /// VRRP and connection sync; `None` when not configured.
    pub ha: Option<crate::vrrp::control::HaRuntime>,
}

/// Longest wait for real-server MACs before declaring readiness anyway.
pub const READY_TIMEOUT: Duration = Duration::from_secs(3);

impl Control {
    /// Runs until SIGINT or SIGTERM.
    pub fn run(&mut self) {
        let mut pollfds: Vec<libc::pollfd> = self
            .arp_sockets
            .iter()
            .map(|fd| fd.as_raw_fd())
            .chain(self.metrics.as_ref().map(|m| m.raw_fd()))
            .chain(self.admin.as_ref().map(|a| a.as_raw_fd()))
            .chain(self.ha.as_ref().map(|h| h.fds()).unwrap_or_default())
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut last_ring_read = Instant::now();
        let mut last_estimate = Instant::now();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 2048];
        let mut last_conflict = None;
        let started = Instant::now();
        let mut ready = false;
        let mut trace_buf = Vec::new();
        while !signals::stop_requested() {
            wait_readable(&mut pollfds, TICK_MS);
            let now = clock::now_ms();
            for i in 0..self.arp_sockets.len() {
                let fd = self.arp_sockets[i].as_raw_fd();
                // Bounded per tick so an ARP flood cannot starve the rest of the loop.
                for _ in 0..256 {
                    match recv_frame(fd, &mut buf) {
                        Ok(Some(n)) => {
                            // trace hook: ARP events for `uvs trace`
                            let before = (!self.trace_sessions.is_empty())
                                .then(|| self.arp_trace_before(&buf[..n]));
                            if let Some(reply) = self.arp.on_frame(i, &buf[..n], now, &self.neigh) {
                                out.push(reply);
                            }
                            if let Some(b) = before {
                                self.arp_trace_after(i, &buf[..n], b);
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
            if let Some(ha) = &mut self.ha {
                // HA (issue 8): VRRP adverts and timers, sync messages.
                // trace hook: VRRP state changes for `uvs trace` (only while attached).
                let before = (!self.trace_sessions.is_empty()).then(|| ha.status().instances);
                ha.poll(&mut self.arp, self.snapshot.load().vips(), now);
                if let Some(b) = before {
                    for (ips, line) in crate::trace::vrrp_events(&b, &ha.status().instances) {
                        crate::trace::arp_event(&self.trace_sessions, &ips, &line);
                    }
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
            crate::trace::pump(&self.trace, &mut self.trace_sessions, &mut trace_buf);
            if signals::take_reload() {
                sd_notify::tell(sd_notify::Status::Reloading);
                self.reload_config();
                if ready {
                    sd_notify::tell(sd_notify::Status::Ready);
                }
            }
            self.drain_health();
            if last_ring_read.elapsed() >= RING_STATS_EVERY {
                self.read_ring_stats();
                last_ring_read = Instant::now();
            }
            if let Some(m) = self.metrics.take() {
                m.serve_pending(&mut || {
                    self.read_ring_stats();
                    let mut text = crate::metrics::render(&self.figures());
                    if let Some(ha) = &self.ha {
                        text.push_str(&ha.render_metrics()); // HA (issue 8)
                    }
                    text
                });
                self.metrics = Some(m);
            }
        }
        sd_notify::tell(sd_notify::Status::Stopping);
        // HA (issue 8): a MASTER resigns with priority 0 so the peer takes over at once.
        if let Some(ha) = &mut self.ha {
            ha.shutdown();
        }
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
        let changes = crate::ctl::apply::diff(&self.state.table, &desired);
        if changes.is_empty() {
            log::info!("SIGHUP: configuration unchanged");
            return;
        }
        let n = changes.len();
        match self.handle(crate::ctl::proto::Request::Apply(changes)) {
            crate::ctl::proto::Reply::Done => {
                log::info!("SIGHUP: configuration reloaded ({n} changes)")
            }
            other => {
                log::error!("SIGHUP: reload refused, keeping the running configuration: {other:?}")
            }
        }
    }

    /// Serves every pending admin connection (one request each).
    fn serve_admin(&mut self) {
        let Some(listener) = self.admin.take() else {
            return;
        };
        let mut conns = std::mem::take(&mut self.admin_conns);
        {
            let me = std::cell::RefCell::new(&mut *self);
            conns.poll(
                &listener,
                &mut |req| me.borrow_mut().handle(req),
                &mut |req, s| me.borrow_mut().start_stream(req, s),
            );
        }
        self.admin_conns = conns;
        self.admin = Some(listener);
    }

    /// trace hook: ARP figures before a frame is handled.
    fn arp_trace_before(&self, frame: &[u8]) -> (u64, u64, Option<crate::wire::MacAddr>) {
        let sender = arp_fields(frame).map(|f| f.1);
        let known = sender.and_then(|ip| {
            self.arp
                .neighbors
                .iter()
                .find(|n| n.addr == ip)
                .and_then(|n| n.mac)
        });
        (
            self.arp.counters.requests_answered,
            self.arp.counters.replies_learned,
            known,
        )
    }

    /// trace hook: an ARP event line per change the frame caused.
    fn arp_trace_after(
        &self,
        iface: usize,
        frame: &[u8],
        before: (u64, u64, Option<crate::wire::MacAddr>),
    ) {
        let Some((op, sip, smac, tip)) = arp_fields(frame) else {
            return;
        };
        let ifname = self.interfaces.get(iface).map_or("?", |i| i.name.as_str());
        let t = crate::trace::clock(crate::trace::realtime_ns());
        let ours = self
            .interfaces
            .get(iface)
            .map(|i| i.mac.to_string())
            .unwrap_or_default();
        if self.arp.counters.requests_answered > before.0 {
            crate::trace::arp_event(
                &self.trace_sessions,
                &[tip],
                &format!(
                    "{t} ARP who-has {tip} tell {sip} ({smac}) in {ifname}: answered {tip} is-at {ours} (the VIP is uvs's)"
                ),
            );
        }
        if self.arp.counters.replies_learned > before.1 {
            let what = match before.2 {
                None => "learned".to_string(),
                Some(m) if m == smac => "refreshed".to_string(),
                Some(m) => format!("changed (was {m})"),
            };
            crate::trace::arp_event(
                &self.trace_sessions,
                &[sip],
                &format!("{t} ARP {sip} is-at {smac} in {ifname}: real server MAC {what}"),
            );
        }
        if op == 2 || op == 1 {
            if let Some((vip, mac)) = self.arp.last_conflict {
                if vip == sip && mac == smac {
                    crate::trace::arp_event(
                        &self.trace_sessions,
                        &[vip],
                        &format!(
                            "{t} ARP CONFLICT: {smac} claims VIP {vip} in {ifname} (a real server without arp_ignore=1/arp_announce=2?)"
                        ),
                    );
                }
            }
        }
    }

    fn announce_ready_when_resolved(&self, waited: Duration) -> bool {
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
                let (mut conns, mut pkts, mut bytes) = (0, 0, 0);
                for w in &self.workers {
                    if let Some(c) = w.real(r.id) {
                        conns += c.conns.load(Relaxed);
                        pkts += c.in_packets.load(Relaxed);
                        bytes += c.in_bytes.load(Relaxed);
                    }
                }
                f.ipvs.connections += conns;
                f.ipvs.in_packets += pkts;
                f.ipvs.in_bytes += bytes;
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
        let _ = IpvsTotals::default();
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
                tx_syscalls: w.totals.tx_syscalls.load(Relaxed),
                coalesce_waits: w.totals.coalesce_waits.load(Relaxed),
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
        f.trace_dropped = crate::trace::dropped_by_reason(&self.trace).to_vec();
        f
    }
}

/// (op, sender IP, sender MAC, target IP) of an Ethernet/ARP IPv4 frame.
fn arp_fields(
    f: &[u8],
) -> Option<(
    u16,
    std::net::Ipv4Addr,
    crate::wire::MacAddr,
    std::net::Ipv4Addr,
)> {
    if f.len() < 42 || f[12] != 0x08 || f[13] != 0x06 {
        return None;
    }
    let op = u16::from_be_bytes([f[20], f[21]]);
    let mut m = [0u8; 6];
    m.copy_from_slice(&f[22..28]);
    let sip = std::net::Ipv4Addr::new(f[28], f[29], f[30], f[31]);
    let tip = std::net::Ipv4Addr::new(f[38], f[39], f[40], f[41]);
    Some((op, sip, crate::wire::MacAddr(m), tip))
}
