//! Where `uvsadm` sends its requests.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use super::proto::{
    ADMIN_SOCKET_NAME, EXIT_REFUSED, FrameError, MAX_REPLY, Refusal, Reply, Request, Stats, Status,
    read_frame, write_frame,
};
use crate::model::change::{AdminState, apply};

/// A director that answers admin requests.
pub trait Backend {
    fn call(&mut self, request: &Request) -> Result<Reply, BackendError>;
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Nobody listens on the admin socket.
    #[error("no uvs director is running in {0} (nothing listens on the admin socket)")]
    NoDaemon(String),
    #[error("talking to the uvs director: {0}")]
    Io(#[from] io::Error),
    #[error("talking to the uvs director: {0}")]
    Frame(#[from] FrameError),
}

/// Where the admin socket is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketLocation {
    /// The abstract name in the caller's network namespace (the default).
    Abstract,
    Path(PathBuf),
}

/// Names the caller's network namespace for messages ("network namespace NS" when it is a
/// named one, else the inode).
pub fn namespace_name() -> String {
    let ino = std::fs::metadata("/proc/self/ns/net").ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    if let (Some(ino), Ok(dir)) = (ino, std::fs::read_dir("/run/netns")) {
        for e in dir.flatten() {
            use std::os::unix::fs::MetadataExt;
            if e.metadata().ok().map(|m| m.ino()) == Some(ino) {
                return format!("network namespace {}", e.file_name().to_string_lossy());
            }
        }
    }
    match ino {
        Some(i) => format!("this network namespace (net:[{i}])"),
        None => "this network namespace".to_string(),
    }
}

/// The admin socket of a running daemon.
pub struct SocketBackend {
    pub location: SocketLocation,
}

impl SocketBackend {
    fn connect(&self) -> Result<UnixStream, BackendError> {
        let r = match &self.location {
            SocketLocation::Abstract => SocketAddr::from_abstract_name(ADMIN_SOCKET_NAME)
                .and_then(|a| UnixStream::connect_addr(&a)),
            SocketLocation::Path(p) => UnixStream::connect(p),
        };
        r.map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => {
                let place = match &self.location {
                    SocketLocation::Abstract => namespace_name(),
                    SocketLocation::Path(p) => p.display().to_string(),
                };
                BackendError::NoDaemon(place)
            }
            _ => BackendError::Io(e),
        })
    }
}

impl Backend for SocketBackend {
    fn call(&mut self, request: &Request) -> Result<Reply, BackendError> {
        let mut s = self.connect()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write_frame(&mut s, request)?;
        Ok(read_frame(&mut s, MAX_REPLY)?)
    }
}

/// An in-memory director: the same `apply` as the daemon, no traffic (all counts zero).
/// Used by tests and golden files.
#[derive(Default)]
pub struct MemoryBackend {
    pub state: AdminState,
}

impl Backend for MemoryBackend {
    fn call(&mut self, request: &Request) -> Result<Reply, BackendError> {
        Ok(match request {
            Request::Apply(changes) => match apply(&self.state, changes) {
                Ok(next) => {
                    self.state = next;
                    Reply::Done
                }
                Err(r) => Reply::Refused(Refusal {
                    message: r.message,
                    change: r.change,
                    exit_code: EXIT_REFUSED,
                }),
            },
            Request::Status => {
                Reply::Status(status_of(&self.state, &|_, _| Default::default(), &|_| {
                    (0, 0)
                }))
            }
            Request::Connections => Reply::Connections(Vec::new()),
            Request::Health => Reply::Health(Default::default()),
            Request::Ha => Reply::Ha(Default::default()),
            Request::SyncDaemon(_) => Reply::Refused(Refusal {
                message: "the in-memory director has no sync daemon".into(),
                change: None,
                exit_code: EXIT_REFUSED,
            }),
            Request::Zero(key) => {
                if let Some(k) = key {
                    if self.state.table.service(k).is_none() {
                        return Ok(Reply::Refused(Refusal {
                            message: "Service not defined".into(),
                            change: None,
                            exit_code: EXIT_REFUSED,
                        }));
                    }
                }
                Reply::Done
            }
            Request::Trace(_) => Reply::Refused(Refusal {
                message: "the in-memory director has no traffic to trace".into(),
                change: None,
                exit_code: EXIT_REFUSED,
            }),
            Request::Announce(_) => Reply::Refused(Refusal {
                message: "the in-memory director announces nothing".into(),
                change: None,
                exit_code: EXIT_REFUSED,
            }),
            Request::Handover => Reply::Refused(Refusal {
                message: "the in-memory director has no connections to hand over".into(),
                change: None,
                exit_code: EXIT_REFUSED,
            }),
        })
    }
}

/// Live figures of one real server.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFigures {
    pub active: u32,
    pub inactive: u32,
    pub persistent: u32,
    pub stats: Stats,
    pub rates: Stats,
}

/// IPVS's connection table size shown by `-L` ("size=4096"): the kernel default
/// (`CONFIG_IP_VS_TAB_BITS` = 12). uvs's table is per worker and sized by configuration; the
/// header keeps ipvsadm's value so scripts that parse it keep working.
pub const CONN_TAB_SIZE: u32 = 4096;

/// Builds a status reply from the configured state, per-real figures (`figures(service
/// index, real index)`; service figures are the sums of their reals') and per-local-address
/// figures (`laddr(addr)`: connections, refusals).
pub fn status_of(
    state: &AdminState,
    figures: &dyn Fn(usize, usize) -> RealFigures,
    laddr: &dyn Fn(std::net::Ipv4Addr) -> (u64, u64),
) -> Status {
    use super::proto::{LocalAddrStatus, RealStatus, ServiceStatus};
    let services = state
        .table
        .services()
        .iter()
        .enumerate()
        .map(|(si, s)| {
            let reals: Vec<RealStatus> = s
                .reals
                .iter()
                .enumerate()
                .map(|(ri, r)| {
                    let f = figures(si, ri);
                    RealStatus {
                        addr: r.addr,
                        port: r.port,
                        forward: r.forward,
                        weight: r.weight,
                        active: f.active,
                        inactive: f.inactive,
                        persistent: f.persistent,
                        upper_threshold: r.upper_threshold,
                        lower_threshold: r.lower_threshold,
                        stats: f.stats,
                        rates: f.rates,
                    }
                })
                .collect();
            let sum = |f: fn(&RealStatus) -> Stats| {
                reals.iter().map(f).fold(Stats::default(), |a, b| Stats {
                    conns: a.conns + b.conns,
                    in_pkts: a.in_pkts + b.in_pkts,
                    out_pkts: a.out_pkts + b.out_pkts,
                    in_bytes: a.in_bytes + b.in_bytes,
                    out_bytes: a.out_bytes + b.out_bytes,
                })
            };
            ServiceStatus {
                key: s.key,
                scheduler: s.scheduler,
                sched_flags: s.sched_flags.to_string(),
                ops: s.ops,
                persistence_timeout: s.persistence_timeout,
                persistence_netmask: s.persistence_netmask,
                stats: sum(|r| r.stats),
                rates: sum(|r| r.rates),
                reals,
                proxy_protocol: s.proxy_protocol,
                local_addrs: s
                    .local_addrs
                    .iter()
                    .map(|l| {
                        let (conns, conflicts) = laddr(l.addr);
                        LocalAddrStatus {
                            addr: l.addr,
                            interface: l.interface.clone(),
                            conns,
                            conflicts,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    Status {
        conn_tab_size: CONN_TAB_SIZE,
        services,
        timeouts: state.timeouts,
        mark_rules: state.table.mark_rules().to_vec(),
    }
}
