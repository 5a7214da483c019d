//! The daemon's answers: each admin request carried out with the control thread's typed
//! operations (`crate::control::admin`), and their results turned into the protocol's
//! messages. The only place that knows both sides.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use super::proto::{self, EXIT_REFUSED, Refusal, Reply, Request};
use super::server::AdminConns;
use crate::control::admin::{ConnRow, ConnState, RealFigures};
use crate::control::announce::AnnounceReport;
use crate::control::stats::Stats;
use crate::control::{AdminPort, Control};
use crate::datapath::tap::TraceFilter;
use crate::model::change::Refused;
use crate::trace::session::StreamMode;

/// The admin socket of a running daemon: the listener and the connections whose requests
/// are still arriving, served on every control-loop turn.
pub struct AdminServer {
    listener: UnixListener,
    conns: AdminConns,
}

impl AdminServer {
    pub fn new(listener: UnixListener) -> AdminServer {
        AdminServer {
            listener,
            conns: AdminConns::default(),
        }
    }
}

impl AdminPort for AdminServer {
    fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.listener.as_raw_fd()];
        fds.extend(self.conns.fds());
        fds
    }

    fn serve(&mut self, control: &mut Control) {
        let control = std::cell::RefCell::new(control);
        self.conns.poll(
            &self.listener,
            &mut |req| handle(&mut control.borrow_mut(), req),
            &mut |req, stream| start_stream(&mut control.borrow_mut(), req, stream),
        );
    }
}

fn refused(message: impl Into<String>) -> Reply {
    Reply::Refused(Refusal {
        message: message.into(),
        change: None,
        exit_code: EXIT_REFUSED,
    })
}

fn outcome(r: Result<(), Refused>) -> Reply {
    match r {
        Ok(()) => Reply::Done,
        Err(r) => Reply::Refused(Refusal {
            message: r.message,
            change: r.change,
            exit_code: EXIT_REFUSED,
        }),
    }
}

/// Carries out one (authorised) request.
pub fn handle(control: &mut Control, req: Request) -> Reply {
    match req {
        Request::Apply(changes) => outcome(control.apply_operator(&changes)),
        Request::Status => Reply::Status(status(control)),
        Request::Connections => {
            Reply::Connections(control.connections().into_iter().map(conn_entry).collect())
        }
        Request::Handover => {
            Reply::Connections(control.hand_over().into_iter().map(conn_entry).collect())
        }
        Request::Zero(key) => outcome(control.zero(key)),
        Request::Health => Reply::Health(health_listing(control.health_listing())),
        Request::Ha => Reply::Ha(ha_status(control.ha.status())),
        Request::SyncDaemon(c) => {
            let cmd = crate::sync::DaemonCommand {
                start: c.start,
                master: c.master,
                interface: c.interface,
                syncid: c.syncid,
            };
            match control.ha.sync_command(&cmd) {
                Ok(()) => Reply::Done,
                Err(m) => refused(m),
            }
        }
        // Streams are started by `start_stream`, never answered here.
        Request::Trace(_) => refused("trace requests are streamed"),
        Request::Announce(cmd) => {
            let drain = match cmd {
                proto::AnnounceCommand::Show => None,
                proto::AnnounceCommand::Drain => Some(true),
                proto::AnnounceCommand::Resume => Some(false),
            };
            if let Some(d) = drain
                && let Err(m) = control.announce_drain(d)
            {
                return refused(m);
            }
            Reply::Announce(announce_status(control.announce_report()))
        }
    }
}

fn announce_status(r: Option<AnnounceReport>) -> proto::AnnounceStatus {
    let Some(r) = r else {
        return proto::AnnounceStatus {
            device: String::new(),
            require: String::new(),
            operator_drain: false,
            stopping: false,
            vips: Vec::new(),
        };
    };
    proto::AnnounceStatus {
        device: r.device,
        require: r.require.to_string(),
        operator_drain: r.operator_drain,
        stopping: r.stopping,
        vips: r
            .vips
            .into_iter()
            .map(|v| proto::AnnounceVip {
                vip: v.vip,
                state: v.verdict.name().to_string(),
                held: v.held,
                since_secs: v.since_secs,
                transitions: v.transitions,
            })
            .collect(),
    }
}

/// `uvs trace` / `uvs capture`: replies `Streaming`, then hands the connection to a trace
/// session, or says in the stream why none could start.
fn start_stream(control: &mut Control, req: proto::TraceRequest, mut stream: UnixStream) {
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    if let Err(e) = proto::write_frame(&mut stream, &Reply::Streaming) {
        log::debug!("trace client gone: {e}");
        return;
    }
    let mode = match req.mode {
        proto::StreamMode::Trace => StreamMode::Trace,
        proto::StreamMode::Capture => StreamMode::Capture,
    };
    let f = req.filter;
    let filter = TraceFilter {
        vip: f.vip,
        port: f.port,
        client: f.client,
        count: f.count,
        rate: f.rate,
    };
    if let Err(e) = control.start_trace(mode, filter, clone) {
        // The client already has `Streaming`: say why in the stream, then close.
        let msg = format!("# uvs: {e}\n");
        let _ = std::io::Write::write_all(&mut stream, &(msg.len() as u32).to_be_bytes());
        let _ = std::io::Write::write_all(&mut stream, msg.as_bytes());
    }
}

fn stats(s: Stats) -> proto::Stats {
    proto::Stats {
        conns: s.conns,
        in_pkts: s.in_pkts,
        out_pkts: s.out_pkts,
        in_bytes: s.in_bytes,
        out_bytes: s.out_bytes,
    }
}

fn figures(f: RealFigures) -> super::backend::RealFigures {
    super::backend::RealFigures {
        active: f.active,
        inactive: f.inactive,
        persistent: f.persistent,
        stats: stats(f.stats),
        rates: stats(f.rates),
    }
}

fn status(control: &Control) -> proto::Status {
    let services = control.state.table.services();
    super::backend::status_of(
        &control.state,
        &|si, ri| {
            services
                .get(si)
                .and_then(|s| s.reals.get(ri))
                .map(|r| figures(control.real_figures(r.id)))
                .unwrap_or_default()
        },
        &|addr| {
            let f = control.local_ports.figures(addr);
            (f.conns, f.exhausted)
        },
    )
}

fn conn_entry(c: ConnRow) -> proto::ConnEntry {
    proto::ConnEntry {
        proto: c.proto,
        expires: c.expires,
        state: match c.state {
            ConnState::Tcp(s) => s.name().to_string(),
            ConnState::Udp => "UDP".to_string(),
            ConnState::Template => "NONE".to_string(),
        },
        client: c.client,
        virt: c.virt,
        dest: c.dest,
        fwmark_template: c.fwmark_template,
    }
}

fn health_listing(h: crate::health::book::HealthListing) -> proto::HealthListing {
    proto::HealthListing {
        services: h
            .services
            .into_iter()
            .map(|s| proto::ServiceHealthRow {
                key: s.key,
                quorum_up: s.quorum_up,
                live_weight: s.live_weight,
                quorum: s.quorum,
                hysteresis: s.hysteresis,
                sorry: s.sorry,
                sorry_active: s.sorry_active,
                local: s.local,
                reals: s
                    .reals
                    .into_iter()
                    .map(|r| proto::RealHealthRow {
                        addr: r.addr,
                        check: r.check,
                        up: r.up,
                        configured_weight: r.configured_weight,
                        effective_weight: r.effective_weight,
                        checks: r.checks,
                        failures: r.failures,
                        transitions: r.transitions,
                        last_latency_us: r.last_latency_us,
                        last_message: r.last_message,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn ha_status(h: crate::vrrp::control::HaStatus) -> proto::HaStatus {
    use crate::vrrp::machine::State;
    proto::HaStatus {
        instances: h
            .instances
            .into_iter()
            .map(|i| proto::VrrpInstance {
                name: i.name,
                interface: i.interface,
                vrid: i.vrid,
                version: i.version,
                priority: i.priority,
                advert_int_ms: i.advert_int_ms,
                state: match i.state {
                    State::Init => proto::VrrpState::Init,
                    State::Backup => proto::VrrpState::Backup,
                    State::Master => proto::VrrpState::Master,
                    State::Fault => proto::VrrpState::Fault,
                },
                master: i.master,
                vips: i.vips,
                transitions: i.transitions,
            })
            .collect(),
        daemon_listing: h.daemon_listing,
        synced_flows: h.synced_flows,
    }
}
