//! Health-gated announcement of the VIPs to a routing daemon, for several directors behind
//! a router's ECMP (docs/scale-out.md). uvs speaks no BGP: it puts each VIP it can serve on
//! its announcement device ([`crate::io::announce_device`]) and takes it off when it cannot;
//! BIRD or FRR on the director exports what the device holds. This module decides, from what
//! the control thread knows, which VIPs to announce and why the others are withheld; the
//! control thread ([`crate::control`]) applies the decision and drains on a graceful stop.
//!
//! A VIP is announced while, in this order:
//! 1. the director is not draining (`uvs announce drain`, or a graceful stop: SIGTERM);
//! 2. uvs is ready: workers forwarding, the real servers' MACs resolved or the start-up wait
//!    over (what `--ready-file` and systemd's READY=1 mean);
//! 3. its VRRP instance, if it has one, is MASTER here;
//! 4. its services can be served ([`Require`]): a service can while it has a real server with
//!    a weight (after health checks) whose next hop's MAC is known, and no sorry server stands
//!    in for its reals. A sorry server does not count: a director whose reals all look dead
//!    while its peers see them alive is most likely the one with the problem, so it leaves
//!    the traffic to them.

use std::net::Ipv4Addr;

/// The interface name uvs gives its announcement device unless told otherwise.
pub const DEFAULT_DEVICE: &str = "uvs-announce";

/// The `[announce]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// Name of the TUN device whose addresses are the announced VIPs.
    pub device: String,
    /// Which of a VIP's services must be servable for the VIP to be announced.
    pub require: Require,
    /// A graceful stop ends its drain once no service packet has arrived for this long...
    pub drain_quiet_ms: u32,
    /// ... or after this long at most.
    pub drain_timeout_secs: u32,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            device: DEFAULT_DEVICE.to_string(),
            require: Require::Any,
            drain_quiet_ms: 1000,
            drain_timeout_secs: 10,
        }
    }
}

/// A VIP with several services (ports 80 and 443) is announced while...
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Require {
    /// ... any of them can be served (a VIP is one route: withdrawing it for one broken port
    /// would take the working ones away too).
    Any,
    /// ... every one of them can be served (peers that can serve all of it get the traffic).
    All,
}

impl Require {
    pub fn name(self) -> &'static str {
        match self {
            Require::Any => "any",
            Require::All => "all",
        }
    }
}

/// Why a VIP is, or is not, announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Announced,
    /// The operator drained the director, or it is stopping gracefully.
    Draining,
    /// Not ready yet: starting, resolving the real servers' MACs.
    Starting,
    /// Its VRRP instance is BACKUP or FAULT here.
    VrrpBackup,
    // The services' own verdicts, from the closest to being served to the furthest.
    /// Real servers with a weight, but none whose next hop's MAC is known.
    Unresolved,
    /// Quorum lost and a sorry server (or the director's own stack) answers instead.
    SorryServer,
    /// No real server with a weight: all down, quiesced or removed, or none configured.
    NoLiveReal,
}

impl Verdict {
    /// The label in metrics and `uvs announce`.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Announced => "announced",
            Verdict::Draining => "draining",
            Verdict::Starting => "starting",
            Verdict::VrrpBackup => "vrrp_backup",
            Verdict::SorryServer => "sorry_server",
            Verdict::NoLiveReal => "no_live_real",
            Verdict::Unresolved => "unresolved",
        }
    }
}

/// What the gate needs to know about one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceView {
    pub vip: Ipv4Addr,
    /// Its real servers with a weight above 0 in the published snapshot.
    pub live: usize,
    /// Of those, the ones whose next hop's MAC is known.
    pub resolved: usize,
    /// Its sorry server stands in for its reals (health checks lost the quorum).
    pub sorry_active: bool,
}

impl ServiceView {
    fn verdict(&self) -> Verdict {
        if self.sorry_active {
            Verdict::SorryServer
        } else if self.live == 0 {
            Verdict::NoLiveReal
        } else if self.resolved == 0 {
            Verdict::Unresolved
        } else {
            Verdict::Announced
        }
    }
}

/// Everything the decision reads.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// One entry per service (a VIP may have several); fwmark services by their mark rules'
    /// VIPs.
    pub services: &'a [ServiceView],
    /// VIPs whose VRRP instance is not MASTER here.
    pub standby: &'a [Ipv4Addr],
    pub ready: bool,
    pub draining: bool,
    pub require: Require,
}

/// The verdict for every VIP of `inputs`, sorted by VIP.
pub fn decide(inputs: &Inputs) -> Vec<(Ipv4Addr, Verdict)> {
    let mut vips: Vec<Ipv4Addr> = inputs.services.iter().map(|s| s.vip).collect();
    vips.sort();
    vips.dedup();
    vips.into_iter()
        .map(|vip| {
            let verdict = if inputs.draining {
                Verdict::Draining
            } else if !inputs.ready {
                Verdict::Starting
            } else if inputs.standby.contains(&vip) {
                Verdict::VrrpBackup
            } else {
                let each = inputs
                    .services
                    .iter()
                    .filter(|s| s.vip == vip)
                    .map(ServiceView::verdict);
                // A withheld VIP shows the furthest from served of its services' verdicts.
                match inputs.require {
                    Require::Any if each.clone().any(|v| v == Verdict::Announced) => {
                        Verdict::Announced
                    }
                    _ => each.max().unwrap_or(Verdict::NoLiveReal),
                }
            };
            (vip, verdict)
        })
        .collect()
}

/// A graceful stop's drain: the VIPs are withdrawn and uvs keeps forwarding until the router
/// has moved the flows away, which it sees as service packets no longer arriving.
#[derive(Clone, Copy, Debug)]
pub struct Drain {
    started_ms: u32,
    /// Service packets counted when they last moved, and when.
    packets: u64,
    moved_ms: u32,
}

impl Drain {
    pub fn start(now_ms: u32, packets: u64) -> Drain {
        Drain {
            started_ms: now_ms,
            packets,
            moved_ms: now_ms,
        }
    }

    /// Whether the drain is over at `now_ms`, given the service packets counted so far.
    pub fn done(&mut self, now_ms: u32, packets: u64, cfg: &AnnounceConfig) -> bool {
        if packets != self.packets {
            self.packets = packets;
            self.moved_ms = now_ms;
        }
        let quiet = now_ms.wrapping_sub(self.moved_ms) >= cfg.drain_quiet_ms;
        let over = now_ms.wrapping_sub(self.started_ms) >= cfg.drain_timeout_secs * 1000;
        quiet || over
    }

    pub fn elapsed_ms(&self, now_ms: u32) -> u32 {
        now_ms.wrapping_sub(self.started_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: Ipv4Addr = Ipv4Addr::new(10, 24, 1, 100);
    const V2: Ipv4Addr = Ipv4Addr::new(10, 24, 1, 101);

    fn svc(vip: Ipv4Addr, live: usize, resolved: usize) -> ServiceView {
        ServiceView {
            vip,
            live,
            resolved,
            sorry_active: false,
        }
    }

    fn run<'a>(
        services: &'a [ServiceView],
        f: impl Fn(&mut Inputs<'a>),
    ) -> Vec<(Ipv4Addr, Verdict)> {
        let mut i = Inputs {
            services,
            standby: &[],
            ready: true,
            draining: false,
            require: Require::Any,
        };
        f(&mut i);
        decide(&i)
    }

    #[test]
    fn a_vip_is_announced_while_a_real_with_a_weight_and_a_mac_serves_it() {
        let s = [svc(V1, 3, 1), svc(V2, 2, 0)];
        assert_eq!(
            run(&s, |_| {}),
            vec![(V1, Verdict::Announced), (V2, Verdict::Unresolved)]
        );
        let s = [svc(V1, 0, 0)];
        assert_eq!(run(&s, |_| {}), vec![(V1, Verdict::NoLiveReal)]);
        let mut sorry = svc(V1, 1, 1);
        sorry.sorry_active = true;
        assert_eq!(run(&[sorry], |_| {}), vec![(V1, Verdict::SorryServer)]);
    }

    #[test]
    fn draining_starting_and_vrrp_backup_come_first() {
        let s = [svc(V1, 1, 1), svc(V2, 1, 1)];
        assert!(
            run(&s, |i| i.draining = true)
                .iter()
                .all(|v| v.1 == Verdict::Draining)
        );
        assert!(
            run(&s, |i| i.ready = false)
                .iter()
                .all(|v| v.1 == Verdict::Starting)
        );
        let standby = [V2];
        assert_eq!(
            run(&s, |i| i.standby = &standby),
            vec![(V1, Verdict::Announced), (V2, Verdict::VrrpBackup)]
        );
    }

    #[test]
    fn any_or_all_of_a_vips_services() {
        // Port 80 can be served, port 443 cannot.
        let s = [svc(V1, 2, 2), svc(V1, 0, 0)];
        assert_eq!(run(&s, |_| {}), vec![(V1, Verdict::Announced)]);
        assert_eq!(
            run(&s, |i| i.require = Require::All),
            vec![(V1, Verdict::NoLiveReal)]
        );
        let s = [svc(V1, 2, 2), svc(V1, 1, 1)];
        assert_eq!(
            run(&s, |i| i.require = Require::All),
            vec![(V1, Verdict::Announced)]
        );
    }

    #[test]
    fn a_drain_ends_when_packets_stop_or_at_the_timeout() {
        let cfg = AnnounceConfig::default();
        let mut d = Drain::start(1000, 50);
        // Packets keep arriving every 100 ms: not done before the 10 s timeout.
        let mut t = 1000;
        let mut packets = 50;
        while t < 10_900 {
            t += 100;
            packets += 7;
            assert!(!d.done(t, packets, &cfg), "done at {t}");
        }
        assert!(d.done(11_000, packets + 1, &cfg), "the timeout ends it");
        // Traffic stops at 1.3 s: done once a second has passed without any.
        let mut d = Drain::start(1000, 0);
        assert!(!d.done(1300, 5, &cfg));
        assert!(!d.done(2200, 5, &cfg));
        assert!(d.done(2300, 5, &cfg));
        assert_eq!(d.elapsed_ms(2300), 1300);
    }
}
