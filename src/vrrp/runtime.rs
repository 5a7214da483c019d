//! Drives the VRRP instances on the control thread: reads adverts, runs the timers, sends
//! adverts, publishes which VIPs stand by (the [`HaGate`]) and tells the control thread when
//! the set of VIPs uvs answers ARP for changed (then the ARP engine announces the new ones with
//! keepalived's gratuitous ARP bursts).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::machine::{Action, Machine, Params, State};
use super::packet::{self, AUTH_NONE, AUTH_PASS, Advert, VRRP_GROUP, pass_data};
use super::socket::VrrpSocket;
use super::{HaGate, InstanceConfig};

/// How often tracked interfaces are looked at.
const TRACK_EVERY_MS: u64 = 200;
/// Re-announcements (a lower-priority master heard) at most this often.
const REANNOUNCE_EVERY_MS: u64 = 1000;

#[derive(Default, Clone, Debug)]
pub struct InstanceCounters {
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub resigns_sent: u64,
    pub resigns_received: u64,
    /// Refused packets by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Entries into each state.
    pub became: BTreeMap<&'static str, u64>,
}

pub struct Instance {
    pub cfg: InstanceConfig,
    pub machine: Machine,
    sock: VrrpSocket,
    source: Ipv4Addr,
    pub counters: InstanceCounters,
    last_reannounce: Option<u64>,
    tracked_down: bool,
}

/// What the control thread must do after a [`Vrrp::poll`].
#[derive(Default, Debug)]
pub struct Changes {
    /// The MASTER set changed: recompute the ARP VIP set (new ones get gratuitous ARP).
    pub vips_changed: bool,
    /// VIPs to announce again although already answered.
    pub reannounce: Vec<Ipv4Addr>,
}

/// A snapshot of one instance, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceStatus {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    pub version: u8,
    pub priority: u8,
    pub advert_int_ms: u32,
    pub state: State,
    pub master: Option<Ipv4Addr>,
    pub vips: Vec<Ipv4Addr>,
    pub transitions: u64,
}

pub struct Vrrp {
    pub instances: Vec<Instance>,
    pub gate: Arc<HaGate>,
    epoch: Instant,
    last_track: u64,
    scripts: Vec<Child>,
    buf: Vec<u8>,
}

fn link_up(ifname: &str) -> bool {
    match std::fs::read_to_string(format!("/sys/class/net/{ifname}/operstate")) {
        Ok(s) => s.trim() != "down",
        Err(_) => false,
    }
}

impl Vrrp {
    pub fn open(cfgs: &[InstanceConfig], gate: Arc<HaGate>) -> Result<Vrrp> {
        let mut instances = Vec::new();
        for c in cfgs {
            let ifc = crate::interfaces::resolve(std::slice::from_ref(&c.interface))
                .with_context(|| format!("vrrp instance {}", c.name))?
                .remove(0);
            let Some(source) = c.source.or_else(|| ifc.ipv4.first().map(|(a, _)| *a)) else {
                bail!(
                    "vrrp instance {}: {} has no IPv4 address",
                    c.name,
                    c.interface
                );
            };
            let sock = VrrpSocket::open(&ifc.name, ifc.index, source, c.unicast_peers.is_empty())
                .with_context(|| {
                format!("vrrp instance {}: socket on {}", c.name, c.interface)
            })?;
            let machine = Machine::new(Params {
                version: c.version,
                vrid: c.vrid,
                priority: c.priority,
                interval_cs: c.advert_int_cs,
                start_master: c.start_master,
                preempt: c.preempt,
                preempt_delay_ms: u64::from(c.preempt_delay_secs) * 1000,
                address: source,
            });
            instances.push(Instance {
                cfg: c.clone(),
                machine,
                sock,
                source,
                counters: InstanceCounters::default(),
                last_reannounce: None,
                tracked_down: false,
            });
        }
        let v = Vrrp {
            instances,
            gate,
            epoch: Instant::now(),
            last_track: 0,
            scripts: Vec::new(),
            buf: vec![0u8; 2048],
        };
        v.publish();
        Ok(v)
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn fds(&self) -> Vec<RawFd> {
        self.instances.iter().map(|i| i.sock.raw_fd()).collect()
    }

    /// VIPs of instances that are not MASTER (and not also held by a MASTER instance).
    pub fn standby_vips(&self) -> Vec<Ipv4Addr> {
        let master = self.master_vips();
        let mut v: Vec<Ipv4Addr> = self
            .instances
            .iter()
            .filter(|i| i.machine.state() != State::Master)
            .flat_map(|i| i.cfg.vips.iter().copied())
            .filter(|a| !master.contains(a))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn master_vips(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self
            .instances
            .iter()
            .filter(|i| i.machine.state() == State::Master)
            .flat_map(|i| i.cfg.vips.iter().copied())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Is any instance MASTER (the sync daemon's role follows this)?
    pub fn any_master(&self) -> bool {
        self.instances
            .iter()
            .any(|i| i.machine.state() == State::Master)
    }

    /// The VIPs uvs answers ARP for: the services' VIPs and the MASTER instances' VIPs,
    /// minus those standing by.
    pub fn arp_vips(&self, service_vips: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
        let standby = self.standby_vips();
        let mut v: Vec<Ipv4Addr> = service_vips
            .into_iter()
            .chain(self.master_vips())
            .filter(|a| !standby.contains(a))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn publish(&self) {
        self.gate.set_standby(&self.standby_vips());
    }

    pub fn start(&mut self) -> Changes {
        let now = self.now();
        let mut ch = Changes::default();
        for i in 0..self.instances.len() {
            let acts = self.instances[i].machine.start(now);
            self.act(i, acts, now, &mut ch);
        }
        self.publish();
        ch
    }

    /// Reads pending adverts, runs timers and interface tracking.
    pub fn poll(&mut self) -> Changes {
        let now = self.now();
        let mut ch = Changes::default();
        for i in 0..self.instances.len() {
            for _ in 0..64 {
                let n = match self.instances[i].sock.recv(&mut self.buf) {
                    Ok(Some(n)) => n,
                    Ok(None) => break,
                    Err(e) => {
                        log::warn!("vrrp {}: receive: {e}", self.instances[i].cfg.name);
                        break;
                    }
                };
                let pkt = self.buf[..n].to_vec();
                self.on_packet(i, &pkt, now, &mut ch);
            }
        }
        if now >= self.last_track + TRACK_EVERY_MS {
            self.last_track = now;
            for i in 0..self.instances.len() {
                let inst = &self.instances[i];
                let down = !link_up(&inst.cfg.interface)
                    || inst.cfg.track_interfaces.iter().any(|t| !link_up(t));
                if down != inst.tracked_down {
                    log::warn!(
                        "vrrp {}: tracked interface {}",
                        inst.cfg.name,
                        if down { "down: FAULT" } else { "up again" }
                    );
                    self.instances[i].tracked_down = down;
                    let acts = self.instances[i].machine.set_fault(down, now);
                    self.act(i, acts, now, &mut ch);
                }
            }
        }
        for i in 0..self.instances.len() {
            let acts = self.instances[i].machine.on_tick(now);
            self.act(i, acts, now, &mut ch);
        }
        self.scripts
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
        if ch.vips_changed {
            self.publish();
        }
        ch
    }

    fn reject(&mut self, i: usize, why: &'static str) {
        *self.instances[i].counters.rejected.entry(why).or_insert(0) += 1;
    }

    fn on_packet(&mut self, i: usize, pkt: &[u8], now: u64, ch: &mut Changes) {
        let (src, adv) = match packet::decode_ipv4(pkt) {
            Ok(x) => x,
            Err(r) => {
                self.reject(i, r.name());
                return;
            }
        };
        let inst = &self.instances[i];
        let cfg = &inst.cfg;
        if adv.vrid != cfg.vrid || src == inst.source {
            return; // another router group, or ourselves
        }
        if !cfg.unicast_peers.is_empty() && !cfg.unicast_peers.contains(&src) {
            self.reject(i, "not_a_peer");
            return;
        }
        if adv.version != cfg.version {
            self.reject(i, "version_mismatch");
            return;
        }
        if cfg.version == packet::Version::V2 {
            let (want_type, want_data) = match &cfg.auth_pass {
                Some(p) => (AUTH_PASS, pass_data(p)),
                None => (AUTH_NONE, [0; 8]),
            };
            if adv.auth_type != want_type || (want_type == AUTH_PASS && adv.auth_data != want_data)
            {
                self.reject(i, "auth_mismatch");
                return;
            }
            if adv.interval_cs != cfg.advert_int_cs {
                self.reject(i, "interval_mismatch");
                return;
            }
        }
        let mut theirs = adv.addrs.clone();
        theirs.sort();
        let mut ours = cfg.vips.clone();
        ours.sort();
        if theirs != ours {
            // keepalived logs this and accepts the advert unless in strict mode; so do we.
            *self.instances[i]
                .counters
                .rejected
                .entry("addr_mismatch_accepted")
                .or_insert(0) += 1;
        }
        let c = &mut self.instances[i].counters;
        c.adverts_received += 1;
        if adv.priority == 0 {
            c.resigns_received += 1;
        }
        let acts = self.instances[i].machine.on_advert(&adv, src, now);
        self.act(i, acts, now, ch);
    }

    fn advert(&self, i: usize, priority: u8) -> Advert {
        let cfg = &self.instances[i].cfg;
        let (auth_type, auth_data) = match (&cfg.auth_pass, cfg.version) {
            (Some(p), packet::Version::V2) => (AUTH_PASS, pass_data(p)),
            _ => (AUTH_NONE, [0; 8]),
        };
        Advert {
            version: cfg.version,
            vrid: cfg.vrid,
            priority,
            interval_cs: cfg.advert_int_cs,
            auth_type,
            auth_data,
            addrs: cfg.vips.clone(),
        }
    }

    fn send(&mut self, i: usize, priority: u8) {
        let adv = self.advert(i, priority);
        let inst = &mut self.instances[i];
        let dsts: Vec<Ipv4Addr> = if inst.cfg.unicast_peers.is_empty() {
            vec![VRRP_GROUP]
        } else {
            inst.cfg.unicast_peers.clone()
        };
        for dst in dsts {
            // The v3 checksum covers the destination, so each peer gets its own encoding.
            let msg = adv.encode(inst.source, dst);
            match inst.sock.send_to(&msg, dst) {
                Ok(()) => {
                    inst.counters.adverts_sent += 1;
                    if priority == 0 {
                        inst.counters.resigns_sent += 1;
                    }
                }
                Err(e) => log::debug!("vrrp {}: send to {dst}: {e}", inst.cfg.name),
            }
        }
    }

    fn act(&mut self, i: usize, acts: Vec<Action>, now: u64, ch: &mut Changes) {
        for a in acts {
            match a {
                Action::Advertise(p) => self.send(i, p),
                Action::BecomeMaster | Action::BecomeBackup | Action::BecomeFault => {
                    let inst = &mut self.instances[i];
                    let st = inst.machine.state();
                    *inst.counters.became.entry(st.name()).or_insert(0) += 1;
                    log::info!(
                        "VRRP_Instance({}) Entering {} STATE (vrid {}, priority {})",
                        inst.cfg.name,
                        st.name(),
                        inst.cfg.vrid,
                        inst.cfg.priority
                    );
                    ch.vips_changed = true;
                    let script = match st {
                        State::Master => inst.cfg.notify_master.clone(),
                        State::Backup => inst.cfg.notify_backup.clone(),
                        State::Fault => inst.cfg.notify_fault.clone(),
                        State::Init => None,
                    };
                    if let Some(s) = script {
                        self.notify(&s);
                    }
                }
                Action::Reannounce => {
                    let inst = &mut self.instances[i];
                    if inst
                        .last_reannounce
                        .is_none_or(|t| now >= t + REANNOUNCE_EVERY_MS)
                    {
                        inst.last_reannounce = Some(now);
                        ch.reannounce.extend(inst.cfg.vips.iter().copied());
                    }
                }
            }
        }
    }

    fn notify(&mut self, script: &str) {
        match Command::new("/bin/sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .spawn()
        {
            Ok(c) => self.scripts.push(c),
            Err(e) => log::warn!("notify script {script:?}: {e}"),
        }
    }

    /// Graceful stop: every MASTER resigns with priority 0.
    pub fn shutdown(&mut self) {
        let now = self.now();
        let mut ch = Changes::default();
        for i in 0..self.instances.len() {
            let acts = self.instances[i].machine.shutdown();
            if acts.contains(&Action::Advertise(0)) {
                log::info!(
                    "VRRP_Instance({}) resigning: advert with priority 0",
                    self.instances[i].cfg.name
                );
            }
            self.act(i, acts, now, &mut ch);
        }
    }

    pub fn status(&self) -> Vec<InstanceStatus> {
        self.instances
            .iter()
            .map(|i| InstanceStatus {
                name: i.cfg.name.clone(),
                interface: i.cfg.interface.clone(),
                vrid: i.cfg.vrid,
                version: i.cfg.version.number(),
                priority: i.cfg.priority,
                advert_int_ms: u32::from(i.cfg.advert_int_cs) * 10,
                state: i.machine.state(),
                master: i.machine.master_addr,
                vips: i.cfg.vips.clone(),
                transitions: i.machine.transitions,
            })
            .collect()
    }

    /// Prometheus text for the VRRP figures.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP uvs_vrrp_state 1 for the state each VRRP instance is in."
        );
        let _ = writeln!(s, "# TYPE uvs_vrrp_state gauge");
        for i in &self.instances {
            for st in State::ALL {
                let _ = writeln!(
                    s,
                    "uvs_vrrp_state{{instance=\"{}\",vrid=\"{}\",state=\"{}\"}} {}",
                    i.cfg.name,
                    i.cfg.vrid,
                    st.name(),
                    u8::from(i.machine.state() == st)
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP uvs_vrrp_transitions_total State entries per VRRP instance."
        );
        let _ = writeln!(s, "# TYPE uvs_vrrp_transitions_total counter");
        for i in &self.instances {
            for st in State::ALL {
                let _ = writeln!(
                    s,
                    "uvs_vrrp_transitions_total{{instance=\"{}\",state=\"{}\"}} {}",
                    i.cfg.name,
                    st.name(),
                    i.counters.became.get(st.name()).copied().unwrap_or(0)
                );
            }
        }
        let _ = writeln!(s, "# TYPE uvs_vrrp_adverts_sent_total counter");
        for i in &self.instances {
            let _ = writeln!(
                s,
                "uvs_vrrp_adverts_sent_total{{instance=\"{}\"}} {}",
                i.cfg.name, i.counters.adverts_sent
            );
        }
        let _ = writeln!(s, "# TYPE uvs_vrrp_adverts_received_total counter");
        for i in &self.instances {
            let _ = writeln!(
                s,
                "uvs_vrrp_adverts_received_total{{instance=\"{}\"}} {}",
                i.cfg.name, i.counters.adverts_received
            );
        }
        let _ = writeln!(s, "# TYPE uvs_vrrp_rejected_total counter");
        for i in &self.instances {
            for (why, n) in &i.counters.rejected {
                let _ = writeln!(
                    s,
                    "uvs_vrrp_rejected_total{{instance=\"{}\",reason=\"{why}\"}} {n}",
                    i.cfg.name
                );
            }
        }
        let _ = writeln!(s, "# TYPE uvs_vrrp_standby_drops_total counter");
        let _ = writeln!(
            s,
            "uvs_vrrp_standby_drops_total {}",
            self.gate
                .standby_drops
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        s
    }
}
