//! The text `uvs health` and `uvs status` print from the director's replies.

use super::backend::{Backend, SocketBackend, SocketLocation};
use super::proto::{
    AnnounceCommand, AnnounceStatus, HaStatus, HealthListing, Reply, Request, VrrpState,
};

impl HealthListing {
    /// The text `uvs health` prints.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for svc in &self.services {
            s.push_str(&format!(
                "{}  quorum {} (live weight {} / quorum {} ± {}){}{}\n",
                svc.key,
                if svc.quorum_up { "up" } else { "LOST" },
                svc.live_weight,
                svc.quorum,
                svc.hysteresis,
                match (&svc.sorry, svc.sorry_active) {
                    (Some(a), true) => format!("  sorry server {a} ACTIVE"),
                    (Some(a), false) => format!("  sorry server {a} standby"),
                    _ => String::new(),
                },
                if svc.local {
                    "  (served by the director's own stack)"
                } else {
                    ""
                }
            ));
            s.push_str(
                "  Real             Check State  Weight(cfg/eff)  Checks  Fails  Trans  Latency  Last\n",
            );
            for r in &svc.reals {
                let eff = r
                    .effective_weight
                    .map_or_else(|| "removed".to_string(), |w| w.to_string());
                s.push_str(&format!(
                    "  {:<16} {:<5} {:<6} {:>6}/{:<8} {:>7} {:>6} {:>6} {:>6.1}ms  {}\n",
                    r.addr.to_string(),
                    r.check,
                    if r.up { "UP" } else { "DOWN" },
                    r.configured_weight,
                    eff,
                    r.checks,
                    r.failures,
                    r.transitions,
                    r.last_latency_us as f64 / 1000.0,
                    r.last_message
                ));
            }
        }
        s
    }
}

impl VrrpState {
    pub fn name(self) -> &'static str {
        match self {
            VrrpState::Init => "INIT",
            VrrpState::Backup => "BACKUP",
            VrrpState::Master => "MASTER",
            VrrpState::Fault => "FAULT",
        }
    }
}

/// `uvs status`: asks the director of this namespace and formats its HA state.
pub fn ha_status(admin_socket: Option<std::path::PathBuf>) -> anyhow::Result<String> {
    let mut b = SocketBackend {
        location: match admin_socket {
            Some(p) => SocketLocation::Path(p),
            None => SocketLocation::Abstract,
        },
    };
    let h = match b.call(&Request::Ha)? {
        Reply::Ha(h) => h,
        other => anyhow::bail!("unexpected reply {other:?}"),
    };
    Ok(h.render())
}

impl HaStatus {
    /// The text `uvs status` prints.
    pub fn render(&self) -> String {
        let h = self;
        let mut s = String::new();
        if h.instances.is_empty() {
            s.push_str("VRRP: not configured\n");
        }
        for i in &h.instances {
            s.push_str(&format!(
            "VRRP instance {} ({} vrid {} v{} priority {} advert {} ms): {}{}; VIPs {}; {} transitions\n",
            i.name,
            i.interface,
            i.vrid,
            i.version,
            i.priority,
            i.advert_int_ms,
            i.state.name(),
            i.master
                .map(|m| format!(", master {m}"))
                .unwrap_or_default(),
            i.vips
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            i.transitions
        ));
        }
        if h.daemon_listing.is_empty() {
            s.push_str("sync daemon: not running\n");
        } else {
            s.push_str(&h.daemon_listing);
            s.push_str(&format!(
                "synced connections waiting for adoption: {}\n",
                h.synced_flows
            ));
        }
        s
    }
}

impl AnnounceStatus {
    /// The text `uvs announce` prints.
    pub fn render(&self) -> String {
        if self.device.is_empty() {
            return "announcement: not configured (no [announce] section)\n".to_string();
        }
        let mut s = format!(
            "announcement device {} (a VIP is announced while {} of its services can be served){}\n",
            self.device,
            self.require,
            match (self.stopping, self.operator_drain) {
                (true, _) => "; STOPPING: draining",
                (false, true) => "; DRAINED by the operator (`uvs announce resume` to undo)",
                _ => "",
            }
        );
        if self.vips.is_empty() {
            s.push_str("no VIP configured\n");
        }
        for v in &self.vips {
            let state = if v.held && v.state == "announced" {
                "announced".to_string()
            } else if v.held {
                format!("announced, withdrawing ({})", v.state)
            } else {
                format!("withheld: {}", v.state)
            };
            s.push_str(&format!(
                "  {:<16} {:<34} for {}s, {} transitions\n",
                v.vip.to_string(),
                state,
                v.since_secs,
                v.transitions
            ));
        }
        s
    }
}

/// `uvs announce [drain|resume]`: asks the director of this namespace.
pub fn announce(
    admin_socket: Option<std::path::PathBuf>,
    command: AnnounceCommand,
) -> anyhow::Result<AnnounceStatus> {
    let mut b = SocketBackend {
        location: match admin_socket {
            Some(p) => SocketLocation::Path(p),
            None => SocketLocation::Abstract,
        },
    };
    match b.call(&Request::Announce(command))? {
        Reply::Announce(a) => Ok(a),
        Reply::Refused(r) => anyhow::bail!("{}", r.message),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::proto::AnnounceVip;

    #[test]
    fn announce_report_says_what_is_announced_and_why_not() {
        let mut a = AnnounceStatus {
            device: "uvs-announce".into(),
            require: "any".into(),
            operator_drain: false,
            stopping: false,
            vips: vec![
                AnnounceVip {
                    vip: "10.24.1.100".parse().unwrap(),
                    state: "announced".into(),
                    held: true,
                    since_secs: 3,
                    transitions: 1,
                },
                AnnounceVip {
                    vip: "10.24.1.101".parse().unwrap(),
                    state: "no_live_real".into(),
                    held: false,
                    since_secs: 9,
                    transitions: 2,
                },
            ],
        };
        let text = a.render();
        assert!(text.starts_with("announcement device uvs-announce (a VIP is announced while any"));
        assert!(text.contains("10.24.1.100      announced"), "{text}");
        assert!(
            text.contains("10.24.1.101      withheld: no_live_real"),
            "{text}"
        );
        a.operator_drain = true;
        assert!(a.render().contains("DRAINED by the operator"));
        a.device.clear();
        assert!(a.render().contains("not configured"));
    }
}
