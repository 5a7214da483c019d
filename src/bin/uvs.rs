//! `uvs`: the director daemon (`run`) and its embedded default lab (`demo`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "uvs",
    version,
    about = "Userspace Virtual Server: an LVS director (DR, NAT, TUN, FullNAT) on AF_PACKET rings",
    long_about = "uvs is an LVS load-balancing director that runs in userspace: a client sends \
to the virtual IP, uvs picks a real server and forwards the packet by the real's method — direct \
routing (-g: only the destination MAC is rewritten, the real answers the client directly), \
masquerading (-m: addresses and port rewritten both ways), tunnelling (-i: IPIP, GUE or GRE) \
or FullNAT (--fullnat: source and destination rewritten, the real needs no change, the \
client's address by the PROXY protocol). It reads ipvsadm-save rules, its TOML \
configuration, keepalived.conf or ldirectord.cf; uvsadm(8) changes it live with ipvsadm's \
command line.\n\n\
uvs run needs CAP_NET_RAW and CAP_NET_ADMIN (or root). SIGHUP re-reads the configuration \
and applies the difference, all or nothing; SIGINT and SIGTERM stop it cleanly (a VRRP \
MASTER resigns with priority 0). Started by systemd as a Type=notify service it reports \
READY=1 once it forwards, RELOADING=1 during a reload and STOPPING=1 when it stops."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the director in the current network namespace.
    Run {
        /// TOML configuration (see configs/full.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// ipvsadm-save style rules (`-A -t VIP:PORT -s rr`, `-a -t VIP:PORT -r RIP -g -w 1`).
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
        /// Interface to serve (repeatable). Default: every up non-loopback IPv4 interface.
        #[arg(long = "interface", short = 'i', value_name = "IF")]
        interfaces: Vec<String>,
        /// Worker threads (default: one per core).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
        /// Prometheus listen address, or `off`.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// Create FILE (containing the PID) once forwarding; removed on exit. For test harnesses.
        #[arg(long, value_name = "FILE", hide = true)]
        ready_file: Option<PathBuf>,
        /// Admin socket path for uvsadm (default: an abstract socket, one per network namespace).
        #[arg(long, value_name = "PATH")]
        admin_socket: Option<PathBuf>,
        /// keepalived.conf: serve its virtual_server blocks with their health checks.
        #[arg(long, value_name = "FILE")]
        keepalived: Option<PathBuf>,
        /// ldirectord.cf: serve its virtual services with their health checks.
        #[arg(long, value_name = "FILE")]
        ldirectord: Option<PathBuf>,
        /// Take over from the uvs running in this network namespace (a restart or an upgrade):
        /// it stops receiving, hands over every connection and exits; this one starts and
        /// adopts them, so no established connection breaks. Give the same arguments.
        #[arg(long)]
        takeover: bool,
    },
    /// Show the health-check state of a running director (asks its admin socket).
    Health {
        /// Admin socket path (default: the abstract socket of this network namespace).
        #[arg(long, value_name = "PATH")]
        admin_socket: Option<PathBuf>,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Show the HA state of the director of this network namespace: VRRP instances and the
    /// connection sync daemon.
    Status {
        /// Admin socket path (default: the abstract socket of this network namespace).
        #[arg(long, value_name = "PATH")]
        admin_socket: Option<PathBuf>,
    },
    /// Show which VIPs the director of this network namespace announces to its routing
    /// daemon (BGP, ECMP: `[announce]`) and why the others are withheld; or withdraw them all
    /// without stopping (`drain`) and announce them again (`resume`).
    Announce {
        /// `show` (default), `drain` or `resume`.
        #[arg(value_enum, default_value_t = AnnounceAction::Show)]
        action: AnnounceAction,
        /// Admin socket path (default: the abstract socket of this network namespace).
        #[arg(long, value_name = "PATH")]
        admin_socket: Option<PathBuf>,
    },
    /// Build a namespace DR lab, run the director in it, send requests, show the packet flow.
    Demo,
    /// Build, inspect and remove namespace labs described by lab files (configs/labs/).
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// Stream one line per forwarding decision (and ARP event) of the director of this network
    /// namespace: flow, flags, scheduler and why, MAC rewrite, egress — or the drop reason.
    Trace {
        /// Only this service (VIP:PORT) or VIP.
        #[arg(long, value_name = "VIP[:PORT]")]
        service: Option<String>,
        /// Only this client address.
        #[arg(long, value_name = "IP")]
        client: Option<std::net::Ipv4Addr>,
        /// Stop after N decisions.
        #[arg(long, value_name = "N", default_value_t = 0)]
        count: u64,
        /// Records per second per worker at most (default 20000).
        #[arg(long, value_name = "N", default_value_t = 0)]
        rate: u32,
        /// Admin socket path (default: the abstract socket of this network namespace).
        #[arg(long, value_name = "PATH")]
        admin_socket: Option<PathBuf>,
    },
    /// Record what the director received and sent (both, per interface) as pcapng.
    Capture {
        /// Output file (pcapng; tcpdump -r and Wireshark read it).
        #[arg(short = 'w', value_name = "FILE")]
        write: PathBuf,
        /// `service VIP[:PORT]` and/or `client IP`, e.g. --filter "service 10.0.0.100:80".
        #[arg(long, value_name = "EXPR")]
        filter: Option<String>,
        /// Stop after N decisions (a forwarded packet gives two frames).
        #[arg(long, value_name = "N", default_value_t = 0)]
        count: u64,
        /// Admin socket path (default: the abstract socket of this network namespace).
        #[arg(long, value_name = "PATH")]
        admin_socket: Option<PathBuf>,
    },
    /// Check the director's setup and probe the LAN: who answers ARP for a VIP, which real
    /// servers are reachable and answer on the VIP. Exits 1 when it finds a problem.
    Doctor {
        /// Interface to probe (repeatable). Default: the configuration's, else every up
        /// non-loopback IPv4 interface.
        #[arg(long = "interface", short = 'i', value_name = "IF")]
        interfaces: Vec<String>,
        /// TOML configuration to check (default: the running uvs's services).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// ipvsadm-save style rules to check (default: the running uvs's services).
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
        /// Admin socket of the running uvs (default: the abstract one of this namespace).
        #[arg(long, value_name = "PATH")]
        admin_socket: Option<PathBuf>,
    },
    /// The real server's end of LVS-TUN on a kernel without ipip/fou/ip_gre: a stand-in for
    /// tunl0 (IPIP), `ip fou add port N gue` (GUE) and gre0 (GRE). Receives the tunnel's
    /// frames on INTERFACE, decapsulates them and hands the inner packets to the local stack
    /// through the TUN device DEVICE. Runs until stopped.
    TunEndpoint {
        /// The interface the tunnelled frames arrive on.
        #[arg(long, value_name = "IF")]
        interface: String,
        /// The TUN device to create.
        #[arg(long, value_name = "NAME", default_value = "tunl0")]
        device: String,
        /// Also take GUE on this UDP port.
        #[arg(long, value_name = "PORT")]
        gue_port: Option<u16>,
    },
    /// Built-in HTTP responder used by labs when nginx is missing.
    #[command(hide = true)]
    LabHttp {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 80)]
        port: u16,
    },
    /// Built-in UDP responder used by labs.
    #[command(hide = true)]
    LabUdpEcho {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 53)]
        port: u16,
    },
    /// Writes the manual pages (man8/) and shell completions (bash/, zsh/, fish/) of uvs and
    /// uvsadm into DIR; for packaging.
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (created).
        dir: PathBuf,
    },
    /// Sends raw frames (file of u16-BE length + bytes records) on an interface; for tests.
    #[command(hide = true)]
    LabSendFrames {
        #[arg(long)]
        interface: String,
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AnnounceAction {
    /// Show each VIP and why it is or is not announced.
    Show,
    /// Withdraw every VIP; uvs keeps forwarding what still arrives.
    Drain,
    /// Announce again every VIP that can be served.
    Resume,
}

#[derive(Subcommand)]
enum LabAction {
    /// Build the lab, start its servers and director, and leave it running.
    Up(LabArgs),
    /// Remove everything `lab up` recorded (processes by PID, namespaces).
    Down(LabArgs),
    /// Show what is up.
    Status(LabArgs),
    /// Run the lab file's smoke check against the running lab.
    Check(LabArgs),
    /// Stop a host's processes (its HTTP server, its director), e.g. to fail a real server.
    Stop {
        #[command(flatten)]
        lab: LabArgs,
        /// Host name in the lab file (rs1, dir1, ...).
        host: String,
        /// SIGKILL at once (a crash) instead of SIGTERM (a clean stop).
        #[arg(long)]
        kill: bool,
        /// Only the host's processes running this program (uvs, bird, zebra, bgpd, nginx):
        /// e.g. uvs alone, its routing daemon still running.
        #[arg(long, value_name = "PROGRAM")]
        only: Option<String>,
    },
    /// Start again what `uvs lab stop` stopped on a host.
    Start {
        #[command(flatten)]
        lab: LabArgs,
        host: String,
    },
}

#[derive(clap::Args)]
struct LabArgs {
    /// Lab file (TOML), e.g. configs/labs/dr-router.toml.
    file: PathBuf,
    /// Namespace prefix instead of the file's (to run two copies).
    #[arg(long)]
    prefix: Option<String>,
}

fn parse_service(s: &str) -> anyhow::Result<(std::net::Ipv4Addr, Option<u16>)> {
    match s.split_once(':') {
        Some((a, p)) => Ok((a.parse()?, Some(p.parse()?))),
        None => Ok((s.parse()?, None)),
    }
}

fn parse_capture_filter(s: &str) -> anyhow::Result<uvs::ctl::proto::TraceFilter> {
    let mut f = uvs::ctl::proto::TraceFilter::default();
    let words: Vec<&str> = s.split_whitespace().collect();
    let mut i = 0;
    while i < words.len() {
        let v = words
            .get(i + 1)
            .ok_or_else(|| anyhow::anyhow!("--filter: {} needs a value", words[i]))?;
        match words[i] {
            "service" | "vip" => {
                let (a, p) = parse_service(v)?;
                f.vip = Some(a);
                f.port = p;
            }
            "client" | "host" => f.client = Some(v.parse()?),
            "port" => f.port = Some(v.parse()?),
            w => anyhow::bail!(
                "--filter: unknown term {w:?} (service VIP[:PORT], client IP, port N)"
            ),
        }
        i += 2;
    }
    Ok(f)
}

fn stream(
    admin_socket: Option<PathBuf>,
    req: uvs::ctl::proto::TraceRequest,
    sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<u64> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixStream};
    use uvs::ctl::proto::{ADMIN_SOCKET_NAME, MAX_REPLY, Reply, Request, read_frame, write_frame};
    let mut s = match &admin_socket {
        Some(p) => UnixStream::connect(p),
        None => SocketAddr::from_abstract_name(ADMIN_SOCKET_NAME)
            .and_then(|a| UnixStream::connect_addr(&a)),
    }
    .map_err(|e| {
        anyhow::anyhow!(
            "no uvs director is running in {} ({e})",
            uvs::ctl::backend::namespace_name()
        )
    })?;
    uvs::io::signals::install_stop()?;
    write_frame(&mut s, &Request::Trace(req))?;
    match read_frame::<Reply>(&mut s, MAX_REPLY)? {
        Reply::Streaming => {}
        Reply::Refused(r) => anyhow::bail!("{}", r.message),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
    Ok(uvs::trace::client::read_stream(
        &mut s,
        &uvs::io::signals::stop_requested,
        sink,
    )?)
}

fn parse_metrics(s: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| anyhow::anyhow!("--metrics {s}: {e} (expected ADDR:PORT or off)"))
}

fn health(admin_socket: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    use uvs::ctl::backend::{Backend, SocketBackend, SocketLocation};
    use uvs::ctl::proto::{Reply, Request};
    let mut b = SocketBackend {
        location: admin_socket.map_or(SocketLocation::Abstract, SocketLocation::Path),
    };
    match b.call(&Request::Health)? {
        Reply::Health(h) if json => println!("{}", serde_json::to_string_pretty(&h)?),
        Reply::Health(h) if h.services.is_empty() => println!("no health checks configured"),
        Reply::Health(h) => print!("{}", h.render()),
        Reply::Refused(r) => anyhow::bail!("{}", r.message),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
    Ok(())
}

/// Extra manual-page sections, in roff, after what clap_mangen renders from the parser.
const UVS_MAN_EXTRA: &str = r#".SH FILES
.TP
/etc/uvs/uvs.toml
The configuration uvs.service runs (see /usr/share/doc/uvs/examples/full.toml).
.TP
/etc/default/uvs
UVS_ARGS, the arguments of uvs run in uvs.service.
.TP
/etc/sysconfig/ipvsadm, /etc/ipvsadm.rules
The rules ipvsadm.service runs uvs with, as written by ipvsadm-save.
.SH ENVIRONMENT
.TP
RUST_LOG
Log level (error, warn, info, debug); default info.
.TP
NOTIFY_SOCKET, JOURNAL_STREAM
Set by systemd: readiness notifications, and log lines without a second timestamp.
.SH "SEE ALSO"
uvsadm(8), ipvsadm(8), keepalived.conf(5), ldirectord(8), systemd.service(5)
"#;

const UVSADM_MAN_EXTRA: &str = r#".SH "SEE ALSO"
uvs(8), ipvsadm(8), ipvsadm-save(8), ipvsadm-restore(8)
"#;

/// Renders `cmd`'s manual page (section 8) into `dir`, with `extra` roff sections before the
/// version.
fn write_man(cmd: &clap::Command, extra: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("uvs {}", env!("CARGO_PKG_VERSION")));
    let path = dir.join(man.get_filename());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|c| !c.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    out.write_all(extra.as_bytes())?;
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    std::fs::write(&path, out).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Manual pages of a command and of each visible subcommand (`uvs-run.8`, `uvs-lab-up.8`).
fn write_man_tree(cmd: &clap::Command, extra: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_tree(sub, "", dir)?;
    }
    write_man(cmd, extra, dir)
}

fn generate_docs(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let man = dir.join("man8");
    std::fs::create_dir_all(&man).map_err(|e| anyhow::anyhow!("{}: {e}", man.display()))?;
    let mut uvs = Cli::command().disable_help_subcommand(true);
    uvs.build();
    write_man_tree(&uvs, UVS_MAN_EXTRA, &man)?;
    let mut uvsadm = uvs::ctl::ipvsadm::doc::command("uvsadm");
    uvsadm.build();
    write_man(&uvsadm, UVSADM_MAN_EXTRA, &man)?;
    for (shell, sub, uvs_file, uvsadm_file) in [
        (Shell::Bash, "bash", "uvs", "uvsadm"),
        (Shell::Zsh, "zsh", "_uvs", "_uvsadm"),
        (Shell::Fish, "fish", "uvs.fish", "uvsadm.fish"),
    ] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| anyhow::anyhow!("{}: {e}", d.display()))?;
        for (cmd, name, file) in [
            (&mut uvs, "uvs", uvs_file),
            (&mut uvsadm, "uvsadm", uvsadm_file),
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, cmd, name, &mut out);
            let path = d.join(file);
            std::fs::write(&path, out).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            rules,
            interfaces,
            workers,
            metrics,
            ready_file,
            admin_socket,
            keepalived,
            ldirectord,
            takeover,
        } => {
            let args = uvs::daemon::RunArgs {
                config,
                rules,
                interfaces,
                workers,
                metrics: metrics.as_deref().map(parse_metrics).transpose()?,
                ready_file,
                admin_socket,
                keepalived,
                ldirectord,
                takeover,
            };
            uvs::daemon::run(&args)
        }
        Command::Health { admin_socket, json } => health(admin_socket, json),
        Command::Status { admin_socket } => {
            print!("{}", uvs::ctl::report::ha_status(admin_socket)?);
            Ok(())
        }
        Command::Announce {
            action,
            admin_socket,
        } => {
            use uvs::ctl::proto::AnnounceCommand;
            let command = match action {
                AnnounceAction::Show => AnnounceCommand::Show,
                AnnounceAction::Drain => AnnounceCommand::Drain,
                AnnounceAction::Resume => AnnounceCommand::Resume,
            };
            print!(
                "{}",
                uvs::ctl::report::announce(admin_socket, command)?.render()
            );
            Ok(())
        }
        Command::Demo => uvs::lab::demo::run(&std::env::current_exe()?),
        Command::Lab { action } => {
            use uvs::lab::build;
            match action {
                LabAction::Up(a) => {
                    build::up(&a.file, a.prefix.as_deref(), &std::env::current_exe()?)
                }
                LabAction::Down(a) => build::down(&a.file, a.prefix.as_deref()),
                LabAction::Status(a) => {
                    if build::status(&a.file, a.prefix.as_deref())? {
                        Ok(())
                    } else {
                        anyhow::bail!("lab is not (completely) up")
                    }
                }
                LabAction::Check(a) => build::check(&a.file, a.prefix.as_deref()),
                LabAction::Stop {
                    lab,
                    host,
                    kill,
                    only,
                } => build::stop(
                    &lab.file,
                    lab.prefix.as_deref(),
                    &host,
                    kill,
                    only.as_deref(),
                ),
                LabAction::Start { lab, host } => {
                    build::start(&lab.file, lab.prefix.as_deref(), &host)
                }
            }
        }
        Command::Trace {
            service,
            client,
            count,
            rate,
            admin_socket,
        } => {
            let mut filter = uvs::ctl::proto::TraceFilter {
                client,
                count,
                rate,
                ..Default::default()
            };
            if let Some(s) = service {
                let (a, p) = parse_service(&s)?;
                filter.vip = Some(a);
                filter.port = p;
            }
            let req = uvs::ctl::proto::TraceRequest {
                mode: uvs::ctl::proto::StreamMode::Trace,
                filter,
            };
            let mut out = std::io::stdout().lock();
            stream(admin_socket, req, &mut |b| {
                use std::io::Write;
                out.write_all(b)?;
                out.flush()
            })?;
            Ok(())
        }
        Command::Capture {
            write,
            filter,
            count,
            admin_socket,
        } => {
            let mut f = match filter {
                Some(s) => parse_capture_filter(&s)?,
                None => uvs::ctl::proto::TraceFilter::default(),
            };
            f.count = count;
            let req = uvs::ctl::proto::TraceRequest {
                mode: uvs::ctl::proto::StreamMode::Capture,
                filter: f,
            };
            let mut file = std::fs::File::create(&write)
                .map_err(|e| anyhow::anyhow!("{}: {e}", write.display()))?;
            eprintln!("uvs capture: writing {} (Ctrl-C to stop)", write.display());
            let n = stream(admin_socket, req, &mut |b| {
                use std::io::Write;
                file.write_all(b)?;
                file.flush()
            })?;
            eprintln!(
                "uvs capture: {} decisions written to {}",
                n.saturating_sub(1),
                write.display()
            );
            Ok(())
        }
        Command::Doctor {
            interfaces,
            config,
            rules,
            admin_socket,
        } => uvs::doctor::run(&uvs::doctor::DoctorArgs {
            interfaces,
            config,
            rules,
            admin_socket,
        }),
        Command::TunEndpoint {
            interface,
            device,
            gue_port,
        } => uvs::lab::tunl0::run(&uvs::lab::tunl0::EndpointOptions {
            interface,
            device,
            gue_port,
        }),
        Command::LabHttp { name, port } => uvs::lab::responder::serve_http(&name, port),
        Command::LabUdpEcho { name, port } => uvs::lab::responder::serve_udp(&name, port),
        Command::GenerateDocs { dir } => generate_docs(&dir),
        Command::LabSendFrames { interface, file } => {
            let r = uvs::lab::inject::send_frames(&interface, &file)?;
            println!("sent {} frames, {} too short to send", r.sent, r.too_short);
            Ok(())
        }
    }
}

/// Whether stderr is the journal stream systemd connected: `$JOURNAL_STREAM` names its device
/// and inode (systemd.exec(5)); a redirected stderr (`uvs run 2>file` in a unit) is not.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => journal_stream_is(&var.to_string_lossy(), m.dev(), m.ino()),
        Err(_) => false,
    }
}

/// `$JOURNAL_STREAM` is `DEVICE:INODE`, both decimal.
fn journal_stream_is(var: &str, dev: u64, ino: u64) -> bool {
    var.split_once(':')
        .is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

/// The sd-daemon(3) priority prefix journald reads from a stream line.
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

fn main() -> ExitCode {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    logger.format_target(false);
    let journal = stderr_is_journal();
    if journal {
        // journald stamps every line itself and takes its priority from a `<N>` prefix, so a
        // line carries neither a second timestamp nor a level word.
        logger.format(|buf, record| {
            use std::io::Write;
            writeln!(
                buf,
                "<{}>{}",
                syslog_priority(record.level()),
                record.args()
            )
        });
    }
    logger.init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let priority = if journal { "<3>" } else { "" };
            eprintln!("{priority}uvs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_names_device_and_inode() {
        assert!(journal_stream_is("64769:1234567", 64769, 1234567));
        assert!(!journal_stream_is("64769:1234567", 64769, 1234568));
        assert!(!journal_stream_is("64769", 64769, 0));
        assert!(!journal_stream_is("x:1", 0, 1));
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        let p: Vec<u8> = [
            log::Level::Error,
            log::Level::Warn,
            log::Level::Info,
            log::Level::Debug,
        ]
        .into_iter()
        .map(syslog_priority)
        .collect();
        assert_eq!(p, vec![3, 4, 6, 7]);
    }
}
