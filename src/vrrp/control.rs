//! The HA part of the control thread, kept in one place so the hooks in `control` stay
//! small: VRRP instances, the sync daemon, and their effect on the ARP engine.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::InstanceConfig;
use super::runtime::{InstanceStatus, Vrrp};
use crate::neigh::arp::ArpEngine;
use crate::sync::daemon::SyncDaemon;
use crate::sync::{DaemonCommand, HaHooks, SyncConfig, SyncRecord, SyncRole};

pub struct HaRuntime {
    pub vrrp: Option<Vrrp>,
    pub sync: Option<SyncDaemon>,
    pub hooks: Arc<HaHooks>,
    /// The workers' record queue, kept to (re)open the sync daemon (`--start-daemon`).
    queue: crossbeam_channel::Receiver<SyncRecord>,
}

/// What `uvs status` / the admin socket report about HA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HaStatus {
    pub instances: Vec<InstanceStatus>,
    /// ipvsadm `-L --daemon` text.
    pub daemon_listing: String,
    pub synced_flows: u64,
}

impl HaRuntime {
    pub fn fds(&self) -> Vec<RawFd> {
        let mut v = self.vrrp.as_ref().map(|v| v.fds()).unwrap_or_default();
        v.extend(self.sync.as_ref().map(|s| s.fd()));
        v
    }

    /// The VIPs the ARP engine answers for, given the services' VIPs.
    pub fn arp_vips(&self, service_vips: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
        match &self.vrrp {
            Some(v) => v.arp_vips(service_vips),
            None => service_vips,
        }
    }

    pub fn start(&mut self, arp: &mut ArpEngine, service_vips: Vec<Ipv4Addr>, now: u32) {
        // Without VRRP the ARP engine keeps the VIPs the daemon gave it.
        if let Some(v) = &mut self.vrrp {
            v.start();
            arp.set_vips(v.arp_vips(service_vips), now);
        }
    }

    /// One control-loop turn.
    pub fn poll(&mut self, arp: &mut ArpEngine, service_vips: Vec<Ipv4Addr>, now: u32) {
        if let Some(v) = &mut self.vrrp {
            let ch = v.poll();
            if ch.vips_changed {
                // Newly answered VIPs get keepalived's gratuitous ARP bursts from set_vips.
                arp.set_vips(v.arp_vips(service_vips), now);
            }
            if !ch.reannounce.is_empty() {
                arp.announce(&ch.reannounce, now);
            }
        }
        if let Some(s) = &mut self.sync {
            if let Some(v) = &self.vrrp {
                s.follow(|name| {
                    v.instances.iter().any(|i| {
                        i.cfg.name == name && i.machine.state() == super::machine::State::Master
                    })
                });
            }
            s.poll(now);
        }
    }

    /// `ipvsadm --start-daemon/--stop-daemon`, with the kernel's refusals as ipvsadm prints
    /// them. One daemon socket serves both roles, so a second role must use the same
    /// interface and syncid (the kernel allows different ones).
    pub fn sync_command(&mut self, c: &DaemonCommand) -> Result<(), String> {
        match (&mut self.sync, c.start) {
            (None, true) => {
                if !std::path::Path::new("/sys/class/net")
                    .join(&c.interface)
                    .exists()
                    || c.interface.contains('/')
                    || c.interface.starts_with('.')
                {
                    return Err("No such device".into());
                }
                let mut cfg = SyncConfig::new(&c.interface);
                cfg.syncid = c.syncid;
                cfg.role = if c.master {
                    SyncRole::Master
                } else {
                    SyncRole::Backup
                };
                let d = SyncDaemon::open(cfg, Arc::clone(&self.hooks), self.queue.clone())
                    .map_err(|e| format!("{e:#}"))?;
                self.sync = Some(d);
                Ok(())
            }
            (Some(d), true) => d.start_role(c.master, &c.interface, c.syncid),
            (None, false) => Err("No daemon is running".into()),
            (Some(d), false) => {
                d.stop_role(c.master)?;
                if !d.master && !d.backup {
                    // Closes the sockets; synced flows not yet adopted stay until they expire.
                    self.sync = None;
                }
                Ok(())
            }
        }
    }

    pub fn shutdown(&mut self) {
        if let Some(v) = &mut self.vrrp {
            v.shutdown();
        }
    }

    pub fn status(&self) -> HaStatus {
        HaStatus {
            instances: self.vrrp.as_ref().map(|v| v.status()).unwrap_or_default(),
            daemon_listing: self.sync.as_ref().map(|s| s.listing()).unwrap_or_default(),
            synced_flows: self.hooks.synced.len() as u64,
        }
    }

    pub fn render_metrics(&self) -> String {
        let mut s = self
            .vrrp
            .as_ref()
            .map(|v| v.render_metrics())
            .unwrap_or_default();
        if let Some(d) = &self.sync {
            s.push_str(&d.render_metrics());
        }
        s
    }
}

/// Opens the VRRP instances and the sync daemon configured. Every VRRP VIP starts standing
/// by. The workers get the hooks even without VRRP or sync, so `uvsadm --start-daemon` works
/// at run time (cost without HA: one relaxed load per frame for the gate, one per flow miss
/// and one per new flow). `flow_capacity`: one worker's flow table size (the synced table
/// holds four times as many, at least 65536).
pub fn open(
    vrrp: &[InstanceConfig],
    sync: Option<&SyncConfig>,
    flow_capacity: usize,
) -> anyhow::Result<HaRuntime> {
    let gate = super::HaGate::new();
    let capacity = flow_capacity.saturating_mul(4).max(1 << 16);
    let (hooks, queue) = HaHooks::new(Arc::clone(&gate), capacity);
    let vrrp = if vrrp.is_empty() {
        None
    } else {
        Some(Vrrp::open(vrrp, gate)?)
    };
    let sync = match sync {
        Some(s) => Some(SyncDaemon::open(
            s.clone(),
            Arc::clone(&hooks),
            queue.clone(),
        )?),
        None => None,
    };
    Ok(HaRuntime {
        vrrp,
        sync,
        hooks,
        queue,
    })
}
