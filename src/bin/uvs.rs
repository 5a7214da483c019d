//! `uvs`: the director daemon (`run`) and its embedded default lab (`demo`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "uvs",
    version,
    about = "Userspace Virtual Server: an LVS-DR director on AF_PACKET rings"
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
    /// Build a namespace DR lab, run the director in it, send requests, show the packet flow.
    Demo,
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
    /// Sends raw frames (file of u16-BE length + bytes records) on an interface; for tests.
    #[command(hide = true)]
    LabSendFrames {
        #[arg(long)]
        interface: String,
        #[arg(long)]
        file: PathBuf,
    },
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
            };
            uvs::daemon::run(&args)
        }
        Command::Health { admin_socket, json } => health(admin_socket, json),
        Command::Status { admin_socket } => {
            print!("{}", uvs::vrrp::control::status_text(admin_socket)?);
            Ok(())
        }
        Command::Demo => uvs::lab::demo::run(&std::env::current_exe()?),
        Command::LabHttp { name, port } => uvs::lab::responder::serve_http(&name, port),
        Command::LabUdpEcho { name, port } => uvs::lab::responder::serve_udp(&name, port),
        Command::LabSendFrames { interface, file } => {
            let r = uvs::lab::inject::send_frames(&interface, &file)?;
            println!("sent {} frames, {} too short to send", r.sent, r.too_short);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uvs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
