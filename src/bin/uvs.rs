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
    },
    /// Build a namespace DR lab, run the director in it, send requests, show the packet flow.
    Demo,
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
        } => {
            let args = uvs::daemon::RunArgs {
                config,
                rules,
                interfaces,
                workers,
                metrics: metrics.as_deref().map(parse_metrics).transpose()?,
                ready_file,
                admin_socket,
            };
            uvs::daemon::run(&args)
        }
        Command::Demo => uvs::lab::demo::run(&std::env::current_exe()?),
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
