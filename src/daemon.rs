//! `uvs run`: validate everything, then start. Nothing starts half-configured: configuration,
//! privileges, the one-instance-per-namespace lock, interfaces and placement of every real
//! server are all checked before the first socket is opened; any later set-up failure unwinds
//! what was done (RAII), including the nftables table.

use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;

use crate::config::{DaemonConfig, RingVersion};
use crate::conns::ConnCounts;
use crate::control::placement::Placer;
use crate::control::stats::StatsKeeper;
use crate::control::{Control, signals};
use crate::ctl::apply::AdminState;
use crate::ctl::proto::TimeoutsSecs;
use crate::datapath::counters::WorkerCounters;
use crate::datapath::process::Forwarder;
use crate::datapath::worker::{RxPort, Worker};
use crate::interfaces;
use crate::io::filter::receive_filter;
use crate::io::ring::{MAX_V2_BATCH, RxRing};
use crate::io::socket::{self, RingStats, RxSocketPlan};
use crate::kernel_filter::KernelFilter;
use crate::neigh::arp::{ArpEngine, ArpInterface};
use crate::neigh::cache::NeighTable;
use crate::snapshot::Snapshot;

/// The abstract Unix socket name that marks "a uvs serves this network namespace" (abstract
/// names are per namespace and vanish with the process, so a killed instance leaves no lock).
pub const INSTANCE_LOCK: &[u8] = b"uvs/instance";

/// Neighbour slots available (distinct real-server addresses per interface).
const NEIGH_SLOTS: usize = crate::model::MAX_REALS;

/// Command-line overrides on top of the files.
#[derive(Clone, Debug, Default)]
pub struct RunArgs {
    pub config: Option<PathBuf>,
    pub rules: Option<PathBuf>,
    pub interfaces: Vec<String>,
    pub workers: Option<usize>,
    /// `Some(None)` = `--metrics off`.
    pub metrics: Option<Option<std::net::SocketAddr>>,
    pub ready_file: Option<PathBuf>,
    /// Admin socket path; `None` = the abstract name (one per network namespace).
    pub admin_socket: Option<PathBuf>,
}

/// Reads and merges the configuration inputs; refuses with file, line and problem.
pub fn load_config(args: &RunArgs) -> Result<DaemonConfig> {
    if args.config.is_none() && args.rules.is_none() {
        bail!(
            "nothing to serve: give --config FILE (TOML) or --rules FILE (ipvsadm-save lines), or both"
        );
    }
    let mut cfg = match &args.config {
        Some(p) => crate::config::toml_file::load(p)?,
        None => DaemonConfig::default(),
    };
    if let Some(p) = &args.rules {
        cfg.services = crate::config::rules::load(p, &cfg.services)?;
    }
    if !args.interfaces.is_empty() {
        cfg.interfaces = args.interfaces.clone();
    }
    if let Some(w) = args.workers {
        if w == 0 || w > 256 {
            bail!("--workers {w}: must be 1..=256");
        }
        cfg.workers = Some(w);
    }
    if let Some(m) = args.metrics {
        cfg.metrics = m;
    }
    if cfg.services.services().is_empty() {
        bail!("the configuration defines no virtual service");
    }
    Ok(cfg)
}

fn check_privileges() -> Result<()> {
    // SAFETY: plain syscall; the descriptor is closed right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) || e.raw_os_error() == Some(libc::EACCES) {
            bail!("uvs needs root (or CAP_NET_RAW and CAP_NET_ADMIN) to open packet sockets: {e}");
        }
        bail!("cannot open a packet socket: {e}");
    }
    // SAFETY: closing the descriptor we just opened.
    unsafe { libc::close(fd) };
    Ok(())
}

fn take_instance_lock() -> Result<UnixListener> {
    let addr = UnixAddr::from_abstract_name(INSTANCE_LOCK).context("abstract socket name")?;
    UnixListener::bind_addr(&addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("another uvs is already running in this network namespace")
        } else {
            anyhow::anyhow!("cannot take the instance lock: {e}")
        }
    })
}

pub fn run(args: &RunArgs) -> Result<()> {
    let cfg = load_config(args)?;
    check_privileges()?;
    let _lock = take_instance_lock()?;
    let ifaces = interfaces::resolve(&cfg.interfaces)?;
    let if_names: Vec<String> = ifaces.iter().map(|i| i.name.clone()).collect();

    let mut placer = Placer::new(ifaces.clone(), NEIGH_SLOTS);
    let snapshot = Snapshot::build(&cfg.services, 1, &mut placer)?;
    let neigh = Arc::new(NeighTable::new(NEIGH_SLOTS));
    let neighbors = placer.neighbors(&cfg.services);
    let admin = crate::ctl::server::bind(args.admin_socket.as_deref())
        .map_err(|e| anyhow::anyhow!("cannot open the admin socket: {e}"))?;
    let vips = snapshot.vips();
    let service_keys: Vec<_> = cfg.services.services().iter().map(|s| s.key).collect();

    signals::install();
    let metrics = match cfg.metrics {
        Some(addr) => Some(
            crate::metrics::Endpoint::bind(addr)
                .with_context(|| format!("cannot listen for metrics on {addr}"))?,
        ),
        None => None,
    };
    let kernel_filter = if cfg.kernel_filter {
        KernelFilter::remove_stale();
        Some(KernelFilter::install(&if_names, &service_keys)?)
    } else {
        log::warn!("kernel_filter = false: the director's kernel also sees service traffic");
        None
    };

    let shared = Arc::new(ArcSwap::from_pointee(snapshot));
    let stop = Arc::new(AtomicBool::new(false));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let n_workers = cfg.workers.unwrap_or(cores.len().max(1));
    let filter = receive_filter(&vips);
    let pid = std::process::id();
    let tx_capacity = match cfg.ring.version {
        RingVersion::V3 => (cfg.ring.block_size as usize / 64).max(256),
        RingVersion::V2 => MAX_V2_BATCH,
    };
    let conns = Arc::new(ConnCounts::new());
    let mut workers = Vec::with_capacity(n_workers);
    let mut worker_requests = Vec::with_capacity(n_workers);
    let mut ring_fds = Vec::new();
    let mut counters = Vec::new();
    for w in 0..n_workers {
        let mut rx = Vec::new();
        let mut tx = Vec::new();
        for (i, ifc) in ifaces.iter().enumerate() {
            // One fanout group per interface, unique within the namespace.
            let group = ((pid as u16) << 4) ^ (ifc.index as u16);
            let plan = RxSocketPlan {
                interface: &ifc.name,
                ifindex: ifc.index,
                fanout_group: group,
                filter: &filter,
            };
            let (fd, ring) = socket::open_rx(&plan, |fd| RxRing::new(fd, &cfg.ring, &ifc.name))?;
            ring_fds.push((i, fd.as_raw_fd()));
            rx.push(RxPort { fd, ring });
            tx.push(socket::open_tx(&ifc.name, ifc.index)?);
        }
        let c = Arc::new(WorkerCounters::new());
        counters.push(Arc::clone(&c));
        let (requests_tx, requests) = crossbeam_channel::bounded(4);
        worker_requests.push(requests_tx);
        workers.push(Worker {
            index: w,
            core: cores.get(w % cores.len().max(1)).copied(),
            rx,
            tx,
            tx_queue_capacity: tx_capacity,
            forwarder: Forwarder::new(
                cfg.flow_table.capacity as usize,
                cfg.flow_table.sloppy_tcp,
                ifaces.iter().map(|i| i.mac).collect(),
                Arc::clone(&conns),
            ),
            counters: c,
            snapshot: Arc::clone(&shared),
            neigh: Arc::clone(&neigh),
            stop: Arc::clone(&stop),
            requests,
        });
    }

    let mut arp_sockets = Vec::new();
    for ifc in &ifaces {
        arp_sockets.push(socket::open_arp(&ifc.name, ifc.index)?);
    }
    let mut arp = ArpEngine::new(
        ifaces
            .iter()
            .map(|i| ArpInterface {
                name: i.name.clone(),
                mac: i.mac,
                source: i.ipv4.first().map(|(a, _)| *a),
            })
            .collect(),
        cfg.arp.clone(),
    );
    // Ask from the address on the real server's own network when the interface has several.
    for n in &neighbors {
        if let (Some(ai), Some(ifc)) = (arp.interfaces.get_mut(n.egress), ifaces.get(n.egress)) {
            if let Some(src) = ifc.source_for(n.addr) {
                ai.source = Some(src);
            }
        }
    }
    let now = crate::clock::now_ms();
    arp.set_vips(vips.clone(), now);
    arp.set_neighbors(neighbors, &neigh);

    let handles: Vec<_> = workers
        .into_iter()
        .map(|w| {
            let name = format!("uvs-worker-{}", w.index);
            std::thread::Builder::new()
                .name(name)
                .spawn(move || w.run())
        })
        .collect::<std::io::Result<_>>()
        .context("cannot start worker threads")?;

    log::info!(
        "uvs serving {} service(s) on {} with {} worker(s), {:?} rings; VIPs {:?}",
        cfg.services.services().len(),
        if_names.join(","),
        n_workers,
        cfg.ring.version,
        vips
    );
    let mut control = Control {
        interfaces: ifaces.clone(),
        arp_sockets,
        arp,
        neigh,
        workers: counters,
        worker_requests,
        conns,
        ring_fds,
        ring_totals: vec![RingStats::default(); ifaces.len()],
        state: AdminState {
            table: cfg.services.clone(),
            timeouts: TimeoutsSecs::default(),
        },
        snapshot: Arc::clone(&shared),
        placer,
        kernel_filter,
        stats: StatsKeeper::default(),
        admin: Some(admin),
        admin_conns: Default::default(),
        reload: {
            let args = args.clone();
            Some(Box::new(move || Ok(load_config(&args)?.services)))
        },
        metrics,
        ready_file: args.ready_file.clone(),
    };
    control.run();

    log::info!("stopping");
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    // Removes the nftables table and closes the admin socket.
    drop(control);
    if let Some(p) = &args.ready_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
