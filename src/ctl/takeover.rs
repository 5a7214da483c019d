//! `uvs run --takeover`: the new process's side of a restart or upgrade that breaks no
//! connection. uvs's connection table lives in the process, so the running director hands it
//! over. The new process starts beside it (its rings accepting nothing yet, see
//! `control::takeover`); once ready it asks with [`Request::Handover`]: the old process stops
//! receiving, lets its workers finish their rings, answers every connection and exits at
//! once. The new one attaches its receive filters at once and puts the connections in its
//! synced table, from which a worker adopts each on its next packet with the real (and
//! state) it had, as a backup adopts a failed MASTER's (`sync`): whatever the scheduler, DR,
//! NAT or TUN. When the old process is gone, the new one takes its instance lock, admin
//! socket, metrics port and nftables table ([`Handover::inherit`]).
//!
//! Not handed over: FullNAT connections (their local address and port are not in the listing,
//! as they are not in IPVS's sync), persistence templates (a persistent client's next *new*
//! connection is scheduled afresh), the statistics and rate estimates. A director with VRRP,
//! the sync daemon or `[announce]` refuses `--takeover` (see `daemon::run`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::control::takeover::{Inheritance, Takeover};
use crate::ctl::backend::{Backend, SocketBackend, SocketLocation};
use crate::ctl::proto::{ConnEntry, Reply, Request};
use crate::ctl::serve::AdminServer;
use crate::flow::{FlowKey, TcpState};
use crate::kernel_filter::{Filtered, KernelFilter, ServiceHook};
use crate::metrics::Endpoint;
use crate::model::{ForwardMethod, Protocol, ServiceKey, ServiceTable};
use crate::snapshot::Snapshot;
use crate::sync::SyncRecord;

/// Asks the director on `location` to hand over and stop. Its answer is the connection list
/// of `-Lnc`.
pub fn ask(location: SocketLocation) -> Result<Vec<ConnEntry>, String> {
    let mut backend = SocketBackend { location };
    match backend.call(&Request::Handover) {
        Ok(Reply::Connections(entries)) => Ok(entries),
        Ok(Reply::Refused(r)) => Err(format!(
            "the running uvs refused the handover: {}",
            r.message
        )),
        Ok(other) => Err(format!(
            "the running uvs answered the handover with {other:?} (an older version without --takeover?)"
        )),
        Err(e) => Err(format!("no running uvs to take over from: {e}")),
    }
}

/// Fails unless a director answers on `location` (a `--takeover` with no one to take over from
/// stops before it opens anything).
pub fn check_reachable(location: &SocketLocation) -> Result<(), String> {
    let mut backend = SocketBackend {
        location: location.clone(),
    };
    backend
        .call(&Request::Ha)
        .map(|_| ())
        .map_err(|e| format!("no running uvs to take over from: {e}"))
}

/// What the new process does with the handed-over list.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inherited {
    /// Connections to adopt.
    pub records: Vec<SyncRecord>,
    /// FullNAT connections, which cannot be adopted (see the module doc).
    pub fullnat: usize,
    /// Connections whose service or real `table` does not have (the configuration changed
    /// with the restart): scheduled afresh on their next SYN, dropped otherwise.
    pub unknown: usize,
}

/// Turns the old process's connections into records of `table`'s reals (persistence
/// templates are skipped).
pub fn inherit(entries: &[ConnEntry], table: &ServiceTable) -> Inherited {
    let marked = table.marked_keys();
    let mut out = Inherited::default();
    for e in entries {
        if e.fwmark_template || e.state == "NONE" {
            continue;
        }
        let (vip, vport) = e.virt;
        let addr_key = ServiceKey::addr(e.proto, vip, vport);
        let service = table.service(&addr_key).or_else(|| {
            marked
                .iter()
                .find(|(k, _)| *k == addr_key)
                .and_then(|(_, svc)| table.service(svc))
        });
        let (dest, dport) = e.dest;
        let real = service.and_then(|s| {
            s.reals.iter().find(|r| {
                r.addr == dest
                    && (r.forward != ForwardMethod::Masq || r.port == 0 || r.port == dport)
            })
        });
        let Some(real) = real else {
            out.unknown += 1;
            continue;
        };
        if real.forward == ForwardMethod::FullNat {
            out.fullnat += 1;
            continue;
        }
        let state = match e.proto {
            Protocol::Tcp => TcpState::from_name(&e.state).unwrap_or(TcpState::Established),
            Protocol::Udp => TcpState::None,
        };
        out.records.push(SyncRecord {
            key: FlowKey {
                saddr: u32::from(e.client.0),
                daddr: u32::from(vip),
                sport: e.client.1,
                dport: vport,
                proto: e.proto.number(),
            },
            real_addr: u32::from(dest),
            real_port: dport,
            forward: real.forward,
            state,
            // A connection about to expire still gets its next packet's worth of life.
            timeout_secs: e.expires.max(1),
        });
    }
    out
}

/// How long the new process waits for the old one to be gone after the handover.
const OLD_EXIT_WAIT: Duration = Duration::from_secs(10);

/// The takeover steps of `daemon::run`: where the old process is, and how to open what it
/// holds once it is gone.
pub struct Handover {
    pub location: SocketLocation,
    /// `--admin-socket` (else the abstract name).
    pub admin_socket: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    /// `Some` when the configuration wants the kernel filter: the interfaces and the hook.
    pub kernel_filter: Option<(Vec<String>, ServiceHook)>,
    pub fullnat_ports: (u16, u16),
    /// Set by the handover; what is already taken while the rest waits.
    since: Option<Instant>,
    lock: Option<std::os::unix::net::UnixListener>,
    admin: Option<AdminServer>,
}

impl Handover {
    pub fn new(
        location: SocketLocation,
        admin_socket: Option<PathBuf>,
        metrics: Option<SocketAddr>,
        kernel_filter: Option<(Vec<String>, ServiceHook)>,
        fullnat_ports: (u16, u16),
    ) -> Handover {
        Handover {
            location,
            admin_socket,
            metrics,
            kernel_filter,
            fullnat_ports,
            since: None,
            lock: None,
            admin: None,
        }
    }

    /// Still waiting after the handover: an error once the old process has had its time.
    fn waiting(&self, what: &str) -> Option<Result<Inheritance, String>> {
        match self.since {
            Some(t) if t.elapsed() > OLD_EXIT_WAIT => Some(Err(format!(
                "the old uvs did not release {what} within {} s",
                OLD_EXIT_WAIT.as_secs()
            ))),
            _ => None,
        }
    }
}

impl Takeover for Handover {
    fn hand_over(&mut self, table: &ServiceTable) -> Result<Vec<SyncRecord>, String> {
        let entries = ask(self.location.clone())?;
        self.since = Some(Instant::now());
        let inherited = inherit(&entries, table);
        if inherited.fullnat + inherited.unknown > 0 {
            log::warn!(
                "takeover: {} FullNAT connection(s) cannot be adopted, {} belong to services or reals no longer configured",
                inherited.fullnat,
                inherited.unknown
            );
        }
        Ok(inherited.records)
    }

    fn inherit(&mut self, snapshot: &Snapshot) -> Option<Result<Inheritance, String>> {
        if self.lock.is_none() {
            match crate::ctl::server::instance_lock() {
                Ok(l) => self.lock = Some(l),
                Err(_) => return self.waiting("its instance lock"),
            }
        }
        if self.admin.is_none() {
            match crate::ctl::server::bind(self.admin_socket.as_deref()) {
                Ok(l) => self.admin = Some(AdminServer::new(l)),
                Err(_) => return self.waiting("the admin socket"),
            }
        }
        let kernel_filter = match &self.kernel_filter {
            None => None,
            Some((interfaces, hook)) => {
                let keys = snapshot.forwarded_keys();
                let filtered = Filtered {
                    services: &keys,
                    nat_replies: snapshot.nat_replies(),
                    locals: snapshot.local_addrs(),
                    laddrs: snapshot.laddrs(),
                    fullnat_ports: self.fullnat_ports,
                };
                // The old table goes with the old process's netlink socket, a moment after
                // its lock.
                match KernelFilter::install(interfaces, &filtered, *hook) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        return self
                            .waiting("its nftables table")
                            .map(|r| r.map_err(|m| format!("{m}: {e}")));
                    }
                }
            }
        };
        let metrics = match self.metrics {
            None => None,
            Some(addr) => match Endpoint::bind(addr) {
                Ok(m) => Some(m),
                Err(e) => {
                    log::warn!("takeover: cannot listen for metrics on {addr}: {e}");
                    None
                }
            },
        };
        let (Some(lock), Some(admin)) = (self.lock.take(), self.admin.take()) else {
            return Some(Err("takeover: lost track of the lock".into()));
        };
        Some(Ok(Inheritance {
            instance_lock: Box::new(lock),
            admin: Box::new(admin),
            metrics,
            kernel_filter,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rules;
    use std::net::Ipv4Addr;

    fn table(text: &str) -> ServiceTable {
        rules::parse(
            text,
            std::path::Path::new("rules"),
            &ServiceTable::default(),
        )
        .expect("rules")
    }

    fn entry(state: &str, client: u16, virt: (&str, u16), dest: (&str, u16)) -> ConnEntry {
        ConnEntry {
            proto: Protocol::Tcp,
            expires: 0,
            state: state.to_string(),
            client: (Ipv4Addr::new(198, 51, 100, 7), client),
            virt: (virt.0.parse().unwrap(), virt.1),
            dest: (dest.0.parse().unwrap(), dest.1),
            fwmark_template: false,
        }
    }

    #[test]
    fn each_method_keeps_its_real_and_state_and_fullnat_and_templates_are_left() {
        let t = table(
            "-A -t 10.0.0.100:80 -s rr\n\
             -a -t 10.0.0.100:80 -r 10.0.0.11:80 -g\n\
             -a -t 10.0.0.100:80 -r 10.0.0.12:8080 -m\n\
             -a -t 10.0.0.100:80 -r 10.9.0.13:80 -i\n\
             -a -t 10.0.0.100:80 -r 10.9.0.14:8081 --fullnat\n",
        );
        let vip = ("10.0.0.100", 80);
        let list = vec![
            entry("ESTABLISHED", 40001, vip, ("10.0.0.11", 80)),
            entry("FIN_WAIT", 40002, vip, ("10.0.0.12", 8080)),
            entry("SYN_RECV", 40003, vip, ("10.0.0.13", 80)),
            entry("ESTABLISHED", 40004, vip, ("10.9.0.13", 80)),
            entry("ESTABLISHED", 40005, vip, ("10.9.0.14", 8081)),
            entry("NONE", 0, vip, ("10.0.0.11", 80)),
        ];
        let got = inherit(&list, &t);
        assert_eq!((got.fullnat, got.unknown), (1, 1), "{got:?}");
        let summary: Vec<(u16, ForwardMethod, TcpState, u16, u32)> = got
            .records
            .iter()
            .map(|r| (r.key.sport, r.forward, r.state, r.real_port, r.timeout_secs))
            .collect();
        assert_eq!(
            summary,
            vec![
                (40001, ForwardMethod::Route, TcpState::Established, 80, 1),
                (40002, ForwardMethod::Masq, TcpState::FinWait, 8080, 1),
                (
                    40004,
                    ForwardMethod::Tunnel(crate::model::Tunnel::IPIP),
                    TcpState::Established,
                    80,
                    1
                ),
            ]
        );
        assert_eq!(
            got.records[0].key.daddr,
            u32::from(Ipv4Addr::new(10, 0, 0, 100))
        );
        assert_eq!(
            got.records[0].key.saddr,
            u32::from(Ipv4Addr::new(198, 51, 100, 7))
        );
    }
}
