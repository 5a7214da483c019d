//! The announcement on the control thread: every turn, decide which VIPs this director can
//! serve ([`crate::announce::decide`]) and make the announcement device hold exactly those;
//! on a graceful stop, withdraw them all and keep forwarding until the router has moved the
//! flows away (the drain), then let the loop end.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::Control;
use crate::announce::{AnnounceConfig, Drain, Inputs, ServiceView, Verdict, decide};
use crate::io::announce_device::AnnounceDevice;
use crate::io::{sd_notify, signals};
use crate::model::ServiceKey;

/// How soon a device change the kernel refused is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// One VIP as `uvs announce` and the metrics show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipRow {
    pub vip: Ipv4Addr,
    pub verdict: Verdict,
    /// On the device (normally: announced; not while a change is being retried).
    pub held: bool,
    /// Seconds since the verdict last changed.
    pub since_secs: u64,
    /// Times it was announced or withdrawn since uvs started.
    pub transitions: u64,
}

/// What `uvs announce` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceReport {
    pub device: String,
    pub require: &'static str,
    /// `uvs announce drain` is in force.
    pub operator_drain: bool,
    /// A graceful stop is draining.
    pub stopping: bool,
    pub vips: Vec<VipRow>,
}

struct VipState {
    vip: Ipv4Addr,
    verdict: Verdict,
    since: Instant,
    transitions: u64,
}

/// The announcement state owned by the control thread.
pub struct Announcer {
    pub cfg: AnnounceConfig,
    device: AnnounceDevice,
    /// The VIPs the device holds.
    held: BTreeSet<Ipv4Addr>,
    vips: Vec<VipState>,
    /// `uvs announce drain`: withdrawn until `uvs announce resume`.
    operator_drain: bool,
    /// The drain of a graceful stop, once one started.
    stop_drain: Option<Drain>,
    retry_at: Option<Instant>,
    /// uvs forwards (the control loop's readiness, as of the last turn).
    ready: bool,
}

impl Announcer {
    /// Creates the announcement device (empty: nothing is announced before uvs is ready).
    pub fn open(cfg: AnnounceConfig) -> anyhow::Result<Announcer> {
        let device = AnnounceDevice::create(&cfg.device)
            .map_err(|e| anyhow::anyhow!("[announce] device {}: {e}", cfg.device))?;
        log::info!(
            "announcement device {}: a VIP this director can serve is an address on it, for the routing daemon to export",
            cfg.device
        );
        Ok(Announcer {
            cfg,
            device,
            held: BTreeSet::new(),
            vips: Vec::new(),
            operator_drain: false,
            stop_drain: None,
            retry_at: None,
            ready: false,
        })
    }

    /// See [`AnnounceDevice::release_first_on_exit`]: once every socket is open.
    pub fn release_first_on_exit(&mut self) {
        if let Err(e) = self.device.release_first_on_exit() {
            log::warn!(
                "{}: cannot move to the top descriptor ({e}); a killed uvs may withdraw later",
                self.cfg.device
            );
        }
    }

    fn draining(&self) -> bool {
        self.operator_drain || self.stop_drain.is_some()
    }

    /// Makes the device hold exactly the announced VIPs of `verdicts` and records them.
    fn apply(&mut self, verdicts: Vec<(Ipv4Addr, Verdict)>) {
        let now = Instant::now();
        for &(vip, verdict) in &verdicts {
            match self.vips.iter_mut().find(|v| v.vip == vip) {
                Some(v) if v.verdict == verdict => {}
                Some(v) => {
                    if (v.verdict == Verdict::Announced) != (verdict == Verdict::Announced) {
                        v.transitions += 1;
                    }
                    log_change(vip, Some(v.verdict), verdict);
                    v.verdict = verdict;
                    v.since = now;
                }
                None => {
                    if verdict != Verdict::Starting {
                        log_change(vip, None, verdict);
                    }
                    self.vips.push(VipState {
                        vip,
                        verdict,
                        since: now,
                        transitions: u64::from(verdict == Verdict::Announced),
                    });
                }
            }
        }
        // VIPs no longer configured.
        self.vips
            .retain(|v| verdicts.iter().any(|(vip, _)| *vip == v.vip));
        if self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        self.retry_at = None;
        let want: BTreeSet<Ipv4Addr> = verdicts
            .iter()
            .filter(|(_, v)| *v == Verdict::Announced)
            .map(|(vip, _)| *vip)
            .collect();
        for vip in self.held.difference(&want).copied().collect::<Vec<_>>() {
            match self.device.remove(vip) {
                Ok(()) => {
                    self.held.remove(&vip);
                }
                Err(e) => {
                    log::error!("cannot withdraw {vip} from {}: {e}", self.cfg.device);
                    self.retry_at = Some(now + RETRY_EVERY);
                }
            }
        }
        for vip in want.difference(&self.held).copied().collect::<Vec<_>>() {
            match self.device.add(vip) {
                Ok(()) => {
                    self.held.insert(vip);
                }
                Err(e) => {
                    log::error!("cannot announce {vip} on {}: {e}", self.cfg.device);
                    self.retry_at = Some(now + RETRY_EVERY);
                }
            }
        }
    }

    pub fn report(&self) -> AnnounceReport {
        let now = Instant::now();
        AnnounceReport {
            device: self.cfg.device.clone(),
            require: self.cfg.require.name(),
            operator_drain: self.operator_drain,
            stopping: self.stop_drain.is_some(),
            vips: self
                .vips
                .iter()
                .map(|v| VipRow {
                    vip: v.vip,
                    verdict: v.verdict,
                    held: self.held.contains(&v.vip),
                    since_secs: now.duration_since(v.since).as_secs(),
                    transitions: v.transitions,
                })
                .collect(),
        }
    }

    /// Prometheus text: whether each VIP is announced (with the reason as a label), how often
    /// it changed, whether the director drains.
    pub fn render_metrics(&self) -> String {
        let mut s = String::from(
            "# HELP uvs_announced Whether the VIP is announced (on the announcement device); reason says why not.\n\
             # TYPE uvs_announced gauge\n",
        );
        for v in &self.vips {
            s.push_str(&format!(
                "uvs_announced{{vip=\"{}\",reason=\"{}\"}} {}\n",
                v.vip,
                v.verdict.name(),
                u8::from(self.held.contains(&v.vip))
            ));
        }
        s.push_str(
            "# HELP uvs_announce_transitions_total Times a VIP was announced or withdrawn.\n\
             # TYPE uvs_announce_transitions_total counter\n",
        );
        for v in &self.vips {
            s.push_str(&format!(
                "uvs_announce_transitions_total{{vip=\"{}\"}} {}\n",
                v.vip, v.transitions
            ));
        }
        s.push_str(&format!(
            "# HELP uvs_announce_draining Whether the director withdrew every VIP (uvs announce drain, or stopping).\n\
             # TYPE uvs_announce_draining gauge\nuvs_announce_draining {}\n",
            u8::from(self.draining())
        ));
        s
    }
}

fn log_change(vip: Ipv4Addr, before: Option<Verdict>, after: Verdict) {
    let was = before.is_some_and(|b| b == Verdict::Announced);
    match (was, after) {
        (false, Verdict::Announced) => log::info!("announcing {vip}"),
        (true, v) => log::warn!("withdrawing {vip}: {}", v.name()),
        (false, v) => log::info!("{vip} not announced: {}", v.name()),
    }
}

impl Control {
    /// What the gate reads about every service, VIP by VIP: address services, and fwmark
    /// services under each VIP of their mark rules.
    fn service_views(&self) -> Vec<ServiceView> {
        let table = &self.state.table;
        let snap = self.snapshot.load();
        let mut keys: Vec<(Ipv4Addr, ServiceKey)> = table
            .services()
            .iter()
            .filter(|s| !s.key.is_fwmark())
            .map(|s| (s.key.vip, s.key))
            .collect();
        keys.extend(table.marked_keys().into_iter().map(|(k, svc)| (k.vip, svc)));
        keys.into_iter()
            .map(|(vip, key)| {
                let sorry = self.health.book.sorry_active(&key);
                match snap.shared_service(&key) {
                    // Handed to the director's own stack (a sorry server on the director).
                    None => ServiceView {
                        vip,
                        live: 0,
                        resolved: 0,
                        sorry_active: true,
                    },
                    Some(e) => {
                        let live = || e.reals.iter().zip(&e.paths).filter(|(d, _)| d.weight > 0);
                        ServiceView {
                            vip,
                            live: live().count(),
                            resolved: live()
                                .filter(|(_, p)| self.neigh.get(p.hop.neigh).is_some())
                                .count(),
                            sorry_active: sorry,
                        }
                    }
                }
            })
            .collect()
    }

    /// One turn of the announcement: decide and apply. `ready`: uvs forwards (the same point
    /// as READY=1).
    pub(crate) fn announce_turn(&mut self, ready: bool) {
        let Some(draining) = self.announce.as_ref().map(Announcer::draining) else {
            return;
        };
        let views = self.service_views();
        let vips: Vec<Ipv4Addr> = views.iter().map(|v| v.vip).collect();
        let answered = self.ha.arp_vips(vips.clone());
        let standby: Vec<Ipv4Addr> = vips.into_iter().filter(|v| !answered.contains(v)).collect();
        let Some(a) = &mut self.announce else { return };
        a.ready = ready;
        let verdicts = decide(&Inputs {
            services: &views,
            standby: &standby,
            ready,
            draining,
            require: a.cfg.require,
        });
        a.apply(verdicts);
    }

    /// Service packets received so far (every worker, every real): a drain watches them stop.
    fn service_packets(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let mut n = 0;
        for svc in self.state.table.services() {
            for r in &svc.reals {
                for w in &self.workers {
                    n += w.real(r.id).map_or(0, |c| c.in_packets.load(Relaxed));
                }
            }
        }
        n
    }

    /// Asked once per turn after SIGTERM/SIGINT: whether the loop may end now. With an
    /// announcement, the first call withdraws every VIP and starts the drain, and the loop
    /// ends once service packets stopped arriving (`drain_quiet_ms`) or at
    /// `drain_timeout_secs`. A second stop signal ends it at once.
    pub(crate) fn may_stop(&mut self, ready: bool) -> bool {
        let packets = self.service_packets();
        let now = crate::io::clock::now_ms();
        let Some(a) = &mut self.announce else {
            return true;
        };
        match &mut a.stop_drain {
            None => {
                a.stop_drain = Some(Drain::start(now, packets));
                sd_notify::tell(sd_notify::Status::Stopping);
                log::info!(
                    "stopping: every VIP withdrawn; forwarding until no service packet arrives for {} ms (at most {} s; a second signal stops at once)",
                    a.cfg.drain_quiet_ms,
                    a.cfg.drain_timeout_secs
                );
                self.announce_turn(ready);
                false
            }
            Some(_) if signals::stop_requests() > 1 => {
                log::warn!("second stop signal: stopping before the drain is over");
                true
            }
            Some(d) => {
                let done = d.done(now, packets, &a.cfg);
                if done {
                    log::info!("drained after {} ms", d.elapsed_ms(now));
                }
                done
            }
        }
    }

    /// `uvs announce`.
    pub fn announce_report(&self) -> Option<AnnounceReport> {
        self.announce.as_ref().map(Announcer::report)
    }

    /// `uvs announce drain` (`true`) / `resume` (`false`), applied at once (the reply shows
    /// the result); `Err` when uvs announces nothing.
    pub fn announce_drain(&mut self, drain: bool) -> Result<(), String> {
        let Some(a) = &mut self.announce else {
            return Err(
                "this director announces no VIP (no [announce] in its configuration)".into(),
            );
        };
        if a.operator_drain != drain {
            a.operator_drain = drain;
            if drain {
                log::warn!("drain: every VIP withdrawn until `uvs announce resume`");
            } else {
                log::info!("resume: VIPs announced again as they can be served");
            }
        }
        let ready = a.ready;
        self.announce_turn(ready);
        Ok(())
    }
}
