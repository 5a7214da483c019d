//! Health checks: checkers on health threads, desired state on the control thread.
//!
//! ```text
//! health thread (one per checked real) ──Report──► crossbeam channel ──► control loop (each tick)
//!   probe (tcp/http/misc/vip)                                            Book: configured weight,
//!   Fsm: retry/rise/fall/alpha/warmup                                    alive, quorum, sorry
//!                                                                        └─► Vec<Change> ──► Control::apply_changes
//! ```
//!
//! Checks never run on a worker, and health never touches the snapshot itself: the control
//! thread turns every state change into ordinary [`crate::model::change::Change`]s and applies
//! them through the same build-aside → publish path as `uvsadm` (so nft, socket filters, ARP
//! and the snapshot stay consistent, and a change the model refuses is refused, not forced).
//!
//! **Configured vs effective weight.** The [`book::Book`] keeps the operator's configured
//! weight; the service table (what `uvsadm -Ln` and the workers see) holds the effective one:
//! configured (or MISC_CHECK's dynamic weight) while up; 0 while down if the service is
//! quiescent; absent while down if not. An operator's `uvsadm -e -w N` on a checked real sets
//! its *configured* weight: it takes effect at once if the real is up, and when it recovers if
//! it is down (the edit is rewritten to weight 0 in the same transaction, so a down real never
//! gets traffic). An operator's `-d` or `-D` of a checked real or service ends its management
//! (its checker's reports are ignored from then on). See `book` for quorum and the sorry
//! server, including the sorry server on the director itself.

pub mod book;
pub mod fsm;
pub mod md5;
pub mod probe;
pub mod vip;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::model::{ForwardMethod, ServiceKey};
use fsm::{Fsm, Outcome, Timing, Transition};

/// HTTP check settings (keepalived HTTP_GET `url { … }`, ldirectord `request`/`receive`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HttpCheck {
    /// `GET` or `HEAD`.
    pub method: String,
    pub path: String,
    /// Host header; default the connect address.
    pub host: Option<String>,
    /// Accepted status codes, as inclusive ranges (default 200-299).
    pub status: Vec<(u16, u16)>,
    /// Substring the body must contain.
    pub expect: Option<String>,
    /// Regular expression the body must match (Rust `regex` syntax: Perl-like, no
    /// look-around or back-references).
    pub regex: Option<String>,
    /// Hex MD5 of the body (keepalived `digest`, as `genhash` prints it).
    pub digest: Option<String>,
}

impl Default for HttpCheck {
    fn default() -> Self {
        HttpCheck {
            method: "GET".into(),
            path: "/".into(),
            host: None,
            status: vec![(200, 299)],
            expect: None,
            regex: None,
            digest: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// No checker: always up (keepalived: a real_server without a checker).
    None,
    Tcp,
    Http(HttpCheck),
    /// `sh -c command`; keepalived MISC_CHECK exit codes.
    Misc {
        command: String,
        dynamic: bool,
    },
    /// TCP SYN to VIP:port delivered to the real's MAC (see [`vip`]).
    ThroughVip,
}

impl CheckKind {
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::None => "none",
            CheckKind::Tcp => "tcp",
            CheckKind::Http(_) => "http",
            CheckKind::Misc { .. } => "misc",
            CheckKind::ThroughVip => "vip",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// Connect address; default the real's address.
    pub connect_ip: Option<Ipv4Addr>,
    /// Connect port; default the real's port.
    pub connect_port: Option<u16>,
    pub timing: Timing,
}

impl Default for CheckSpec {
    fn default() -> Self {
        CheckSpec {
            kind: CheckKind::None,
            connect_ip: None,
            connect_port: None,
            timing: Timing::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealHealth {
    pub addr: Ipv4Addr,
    pub check: CheckSpec,
    pub notify_up: Option<String>,
    pub notify_down: Option<String>,
    /// Per-real override of the service's `quiescent` (keepalived `inhibit_on_failure`).
    pub quiescent: Option<bool>,
}

/// Health settings of one virtual service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    pub key: ServiceKey,
    /// Failed reals get weight 0 (true, ldirectord's default) or are removed (false,
    /// keepalived's default unless `inhibit_on_failure`).
    pub quiescent: bool,
    /// Minimum total weight of live reals (keepalived `quorum`, default 1).
    pub quorum: u32,
    pub hysteresis: u32,
    /// Used while quorum is lost (all reals down with the default quorum of 1).
    pub sorry: Option<SocketAddrV4>,
    /// How the sorry server is reached: keepalived's default is the virtual server's
    /// `lb_kind`, so a NAT service's sorry server is a NAT real on its own port.
    pub sorry_forward: ForwardMethod,
    pub quorum_up: Option<String>,
    pub quorum_down: Option<String>,
    pub reals: Vec<RealHealth>,
}

impl ServiceHealth {
    pub fn new(key: ServiceKey) -> ServiceHealth {
        ServiceHealth {
            key,
            quiescent: true,
            quorum: 1,
            hysteresis: 0,
            sorry: None,
            sorry_forward: ForwardMethod::Route,
            quorum_up: None,
            quorum_down: None,
            reals: Vec::new(),
        }
    }
}

/// Health settings of every service that has any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthConfig {
    pub services: Vec<ServiceHealth>,
}

impl HealthConfig {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// Parses status codes as keepalived's `status_code` takes them: `200`, `200-299`, lists
/// separated by commas or spaces (`"200,301-302"`).
pub fn parse_status(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut out = Vec::new();
    for part in s.split([',', ' ']).filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let p = |x: &str| {
            x.trim()
                .parse::<u16>()
                .ok()
                .filter(|n| (100..=599).contains(n))
                .ok_or_else(|| format!("status code {part:?} is not 100..=599 or a range of those"))
        };
        let (lo, hi) = (p(lo)?, p(hi)?);
        if lo > hi {
            return Err(format!("status range {part:?} is reversed"));
        }
        out.push((lo, hi));
    }
    if out.is_empty() {
        return Err("no status code given".into());
    }
    Ok(out)
}

/// Parses a sorry server: `IP`, `IP:PORT` or `IP PORT`; the port defaults to the service's.
pub fn parse_sorry(s: &str, default_port: u16) -> Result<SocketAddrV4, String> {
    let s = s.trim();
    let (ip, port) = match s.split_once([':', ' ']) {
        Some((ip, port)) => (
            ip,
            port.trim()
                .parse::<u16>()
                .map_err(|_| format!("{s:?}: bad port"))?,
        ),
        None => (s, default_port),
    };
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{s:?} is not IPv4[:port]"))?;
    Ok(SocketAddrV4::new(ip, port))
}

/// One finished check, sent from a health thread to the control thread.
#[derive(Clone, Debug)]
pub struct Report {
    /// Every service whose real this check stands for (one checker serves every service that
    /// asks for the same check of the same real, see [`Runner`]).
    pub services: Arc<[ServiceKey]>,
    pub addr: Ipv4Addr,
    pub passed: bool,
    /// The checker's state after this check.
    pub up: bool,
    pub weight: Option<u32>,
    pub transition: Option<Transition>,
    pub latency: Duration,
    pub message: String,
}

/// A checker ready to run on its own thread. One checker serves every service that asks for
/// the same check (kind, target, timing) of the same real — keepalived checks a real once per
/// virtual server, so a real behind 2,000 services gets 2,000 identical probes per interval;
/// uvs sends one, and its report moves all 2,000 at once (one publication, see
/// `control::health`).
pub struct Runner {
    /// The services it reports for (a through-the-VIP check's all share one VIP and port).
    pub services: Arc<[ServiceKey]>,
    pub addr: Ipv4Addr,
    /// The real's port: a check without `connect_port` probes it (a NAT real listens on its
    /// own port; a DR real on the service's).
    pub port: u16,
    pub spec: CheckSpec,
    pub regex: Option<regex::Regex>,
    pub vip_path: Option<vip::VipPath>,
    pub reports: Sender<Report>,
}

impl Runner {
    fn target(&self) -> SocketAddrV4 {
        SocketAddrV4::new(
            self.spec.connect_ip.unwrap_or(self.addr),
            self.spec.connect_port.unwrap_or(self.port),
        )
    }

    fn attempt(&self) -> Outcome {
        let timeout = self.spec.timing.timeout;
        match &self.spec.kind {
            CheckKind::None => Outcome::Pass { weight: None },
            CheckKind::Tcp => probe::tcp(self.target(), timeout),
            CheckKind::Http(h) => probe::http(h, self.regex.as_ref(), self.target(), timeout),
            CheckKind::Misc { command, dynamic } => probe::misc(command, *dynamic, timeout),
            CheckKind::ThroughVip => match (&self.vip_path, self.services.first()) {
                (Some(p), Some(svc)) => vip::probe(
                    p,
                    svc.vip,
                    self.spec.connect_port.unwrap_or(svc.port),
                    timeout,
                ),
                _ => Outcome::Fail("through-the-VIP: the real is not on a served link".into()),
            },
        }
    }

    /// Runs until `stop` says so or the control thread goes away.
    pub fn run(self, stop: &dyn Fn() -> bool) {
        let origin = Instant::now();
        let t = self.spec.timing;
        // Spread first checks over `warmup` (keepalived picks a random delay up to it).
        let spread = if t.warmup.is_zero() {
            Duration::ZERO
        } else {
            let salt = u64::from(u32::from(self.addr)) ^ u64::from(origin.elapsed().subsec_nanos());
            Duration::from_millis(
                salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) % (t.warmup.as_millis() as u64 + 1),
            )
        };
        let mut fsm = Fsm::new(t, Duration::ZERO, spread);
        while !stop() {
            let now = origin.elapsed();
            let due = fsm.due();
            if now < due {
                std::thread::sleep((due - now).min(Duration::from_millis(100)));
                continue;
            }
            let started = Instant::now();
            let outcome = self.attempt();
            let latency = started.elapsed();
            let transition = fsm.on_result(origin.elapsed(), latency, &outcome);
            let (passed, message) = match &outcome {
                Outcome::Pass { .. } if latency > t.timeout => (
                    false,
                    format!("check took {latency:?} > timeout {:?}", t.timeout),
                ),
                Outcome::Pass { .. } => (true, String::from("ok")),
                Outcome::Fail(m) => (false, m.clone()),
            };
            let report = Report {
                services: Arc::clone(&self.services),
                addr: self.addr,
                passed,
                up: fsm.is_up(),
                weight: fsm.weight(),
                transition,
                latency,
                message,
            };
            if self.reports.send(report).is_err() {
                return;
            }
        }
    }
}
