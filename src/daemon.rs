//! `uvs run`: validate everything, then start. Nothing starts half-configured: configuration,
//! privileges, the one-instance-per-namespace lock, interfaces and placement of every real
//! server are all checked before the first socket is opened; any later set-up failure unwinds
//! what was done (RAII), including the nftables table.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;

use crate::config::{DaemonConfig, RingVersion};
use crate::conns::ConnCounts;
use crate::control::Control;
use crate::control::fullnat::LocalPortPlan;
use crate::control::health::{HealthCtl, run_commands};
use crate::control::placement::Placer;
use crate::control::stats::StatsKeeper;
use crate::ctl::serve::AdminServer;
use crate::datapath::counters::WorkerCounters;
use crate::datapath::fullnat::LocalPorts;
use crate::datapath::process::Forwarder;
use crate::datapath::templates::TemplateTable;
use crate::datapath::worker::{RxPort, Worker};
use crate::interfaces;
use crate::io::cpu_latency::CpuLatencyRequest;
use crate::io::filter::receive_filter;
use crate::io::ring::{MAX_V2_BATCH, RxRing};
use crate::io::signals;
use crate::io::socket::{self, Fanout, RingStats, RxSocketPlan};
use crate::kernel_filter::{Filtered, KernelFilter, ServiceHook};
use crate::model::change::{AdminState, TimeoutsSecs, Touched, apply};
use crate::neigh::arp::{ArpEngine, ArpInterface};
use crate::neigh::cache::NeighTable;
use crate::snapshot::{Compiler, Snapshot};

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
    /// keepalived.conf whose `virtual_server` blocks to serve.
    pub keepalived: Option<PathBuf>,
    /// ldirectord.cf to serve.
    pub ldirectord: Option<PathBuf>,
    /// `--takeover`: adopt the connections of the uvs running in this namespace, which exits.
    pub takeover: bool,
}

/// Reads and merges the configuration inputs; refuses with file, line and problem. With
/// neither file, the director starts with no service, to be configured with `uvsadm` (as a
/// kernel with the ip_vs module loaded waits for `ipvsadm`).
pub fn load_config(args: &RunArgs) -> Result<DaemonConfig> {
    if args.keepalived.is_some() && args.ldirectord.is_some() {
        bail!("--keepalived and --ldirectord are exclusive");
    }
    let mut cfg = match &args.config {
        Some(p) => crate::config::toml_file::load(p)?,
        None => DaemonConfig::default(),
    };
    // keepalived.conf / ldirectord.cf: services and health on top of the TOML daemon options.
    let foreign = match (&args.keepalived, &args.ldirectord) {
        (Some(p), _) => {
            let k = crate::config::keepalived::load_all(p)?;
            merge_keepalived_ha(&mut cfg, &k)?;
            // A keepalived.conf with only vrrp_instance blocks leaves the services to the
            // TOML file, --rules or uvsadm.
            (!k.table.services().is_empty()).then_some((k.table, k.health))
        }
        (_, Some(p)) => Some(crate::config::ldirectord::load(p)?),
        _ => None,
    };
    if let Some((table, health)) = foreign {
        if !cfg.services.services().is_empty() {
            bail!(
                "services come either from the TOML file or from --keepalived/--ldirectord, not both"
            );
        }
        cfg.services = table;
        cfg.health = health;
    }
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
    // FullNAT: each worker owns ports of its own on every local address, so the range must
    // hold one per worker; only here is the worker count known (as `run` counts it).
    let workers = cfg
        .workers
        .unwrap_or_else(|| core_affinity::get_core_ids().map_or(0, |c| c.len()).max(1));
    let (lo, hi) = cfg.fullnat_ports;
    crate::config::check_fullnat_ports(cfg.fullnat_ports, workers)
        .map_err(|why| anyhow::anyhow!("[fullnat] ports = {lo}-{hi}: {why}"))?;
    Ok(cfg)
}

/// The `vrrp_instance` blocks and `lvs_sync_daemon` of a keepalived.conf, on
/// top of the TOML file (which then must not configure VRRP or sync itself).
fn merge_keepalived_ha(
    cfg: &mut DaemonConfig,
    k: &crate::config::keepalived::Parsed,
) -> Result<()> {
    if !k.vrrp.is_empty() {
        if !cfg.vrrp.is_empty() {
            bail!("VRRP instances come either from the TOML file or from --keepalived, not both");
        }
        cfg.vrrp = k.vrrp.clone();
    }
    if let Some(s) = &k.sync {
        if cfg.sync.is_some() {
            bail!("the sync daemon comes either from the TOML file or from --keepalived, not both");
        }
        cfg.sync = Some(s.clone());
    }
    if let Some(n) = k.garp_repeat {
        cfg.arp.garp_repeat = n;
    }
    if let Some(n) = k.garp_delay_secs {
        cfg.arp.garp_delay_secs = n;
    }
    Ok(())
}

fn check_privileges() -> Result<()> {
    if let Err(e) = socket::may_open_packet_sockets() {
        if e.raw_os_error() == Some(libc::EPERM) || e.raw_os_error() == Some(libc::EACCES) {
            bail!("uvs needs root (or CAP_NET_RAW and CAP_NET_ADMIN) to open packet sockets: {e}");
        }
        bail!("cannot open a packet socket: {e}");
    }
    Ok(())
}

fn take_instance_lock() -> Result<UnixListener> {
    crate::ctl::server::instance_lock().map_err(|e| {
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
    // A takeover starts beside the running director: what only one may hold (this lock, the
    // admin socket, the metrics port, the nftables table) it takes once the old one is gone
    // (`control::takeover`). VRRP, the sync daemon and the announcement device would need
    // their state handed over too.
    if args.takeover {
        if !cfg.vrrp.is_empty() || cfg.sync.is_some() || cfg.announce.is_some() {
            bail!(
                "--takeover is not supported with VRRP, the sync daemon or [announce]: fail over to the peer director (or drain) instead"
            );
        }
        crate::ctl::takeover::check_reachable(&admin_location(args))
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    let _lock = if args.takeover {
        None
    } else {
        Some(take_instance_lock()?)
    };
    // First, so a refusal leaves nothing set up. Held until `run` returns; the kernel also
    // withdraws it if the process dies.
    let _cpu_latency = hold_cpu_latency(cfg.ring.cpu_latency_us)?;
    // The announcement device, empty until uvs is ready; it goes when uvs goes, however.
    let announce = cfg
        .announce
        .clone()
        .map(crate::control::announce::Announcer::open)
        .transpose()?;

    let ifaces = interfaces::resolve(&cfg.interfaces)?;
    let if_names: Vec<String> = ifaces.iter().map(|i| i.name.clone()).collect();

    let mut placer = Placer::new(ifaces.clone(), NEIGH_SLOTS);
    // Routed next hops and the replies' way back come from the kernel's routing table; the
    // control thread re-reads it whenever it changes.
    let route_watch = crate::io::rtnetlink::RouteWatch::open()
        .context("cannot watch the routing table (rtnetlink)")?;
    placer.routes =
        crate::io::rtnetlink::dump_ipv4_routes().context("cannot read the routing table")?;
    // Health: the initial desired state (alpha reals start down), then every real
    // (also those health starts without) is placed so checks can reach it.
    let own: Vec<std::net::Ipv4Addr> = ifaces
        .iter()
        .flat_map(|i| i.ipv4.iter().map(|(a, _)| *a))
        .collect();
    let mut book = crate::health::book::Book::new(&cfg.health, &cfg.services, &own);
    Snapshot::build(&cfg.services, 0, &mut placer)?;
    let plan = book.reconcile(&cfg.services);
    let state0 = AdminState {
        table: cfg.services.clone(),
        timeouts: TimeoutsSecs::default(),
    };
    let table = apply(&state0, &plan.changes)
        .map_err(|r| anyhow::anyhow!("initial health state: {}", r.message))?
        .table;
    let mut compiler = Compiler::default();
    let planned = compiler.plan(
        &Snapshot::empty(),
        &table,
        &plan.local,
        &Touched::all(),
        &mut placer,
    )?;
    let snapshot = compiler.commit(planned);
    let neigh = Arc::new(NeighTable::new(NEIGH_SLOTS));
    let neighbors = placer.neighbors(&cfg.services);
    let admin = if args.takeover {
        None
    } else {
        Some(
            crate::ctl::server::bind(args.admin_socket.as_deref())
                .map_err(|e| anyhow::anyhow!("cannot open the admin socket: {e}"))?,
        )
    };
    let vips = snapshot.vips().to_vec();
    let nat_sources = snapshot.nat_sources().to_vec();
    let nat_replies = snapshot.nat_replies().to_vec();
    let locals = snapshot.local_addrs().to_vec();
    let laddrs = snapshot.laddrs().to_vec();
    // The expanded (protocol, VIP, port) keys, mark rules included.
    let service_keys = snapshot.forwarded_keys();

    signals::install();
    if let Some(p) = &args.ldirectord {
        crate::config::ldirectord::spawn_autoreload(
            p,
            signals::request_reload,
            signals::stop_requested,
        )
        .context("cannot start the ldirectord autoreload thread")?;
    }
    let metrics = match cfg.metrics.filter(|_| !args.takeover) {
        Some(addr) => Some(
            crate::metrics::Endpoint::bind(addr)
                .with_context(|| format!("cannot listen for metrics on {addr}"))?,
        ),
        None => None,
    };
    let hook = match cfg.arp.vip_mac {
        Some(_) => ServiceHook::Prerouting,
        None => ServiceHook::Ingress,
    };
    let kernel_filter = if args.takeover {
        None
    } else if cfg.kernel_filter {
        let filtered = Filtered {
            services: &service_keys,
            nat_replies: &nat_replies,
            locals: &locals,
            laddrs: &laddrs,
            fullnat_ports: cfg.fullnat_ports,
        };
        Some(KernelFilter::install(&if_names, &filtered, hook)?)
    } else {
        log::warn!("kernel_filter = false: the director's kernel also sees service traffic");
        None
    };

    // VRRP instances and the sync daemon, opened before the workers start so that a BACKUP
    // never forwards a frame.
    let mut ha = crate::vrrp::control::open(
        &cfg.vrrp,
        cfg.sync.as_ref(),
        cfg.flow_table.capacity as usize,
    )?;

    // FullNAT ports: each worker's pools of the first snapshot's local addresses, handed to
    // it before it starts; later ones come through its requests.
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let n_workers = cfg.workers.unwrap_or(cores.len().max(1));
    let mut local_ports = LocalPortPlan::new(cfg.fullnat_ports, n_workers);
    crate::control::fullnat::reserve_ports(cfg.fullnat_ports);
    let mut first_pools: Vec<(u32, Vec<Option<_>>)> = local_ports
        .pools_for(snapshot.laddrs())
        .into_iter()
        .map(|(a, pools)| (a, pools.into_iter().map(Some).collect()))
        .collect();
    let shared = Arc::new(ArcSwap::from_pointee(snapshot));
    let stop = Arc::new(AtomicBool::new(false));
    // A takeover's rings accept nothing until the old process has stopped receiving.
    let filter = if args.takeover {
        crate::io::filter::drop_all()
    } else {
        receive_filter(&vips, &nat_sources, &laddrs, cfg.arp.vip_mac)
    };
    let fanout_program = crate::io::filter::fanout_program(&nat_sources, &laddrs);
    let tx_capacity = match cfg.ring.version {
        RingVersion::V3 => (cfg.ring.block_size as usize / 64).max(256),
        RingVersion::V2 => MAX_V2_BATCH,
    };
    let conns = Arc::new(ConnCounts::new());
    // Persistence templates are global in IPVS: one table for all workers.
    let templates = Arc::new(TemplateTable::new(
        cfg.flow_table.template_capacity as usize,
    ));
    let trace = Arc::new(crate::datapath::tap::TraceHub::new(n_workers));
    let mut workers = Vec::with_capacity(n_workers);
    let mut worker_requests = Vec::with_capacity(n_workers);
    let mut ring_fds = Vec::new();
    let mut counters = Vec::new();
    // One fanout group per interface; the kernel picks ids no other group uses.
    let mut groups: Vec<Option<u16>> = vec![None; ifaces.len()];
    for w in 0..n_workers {
        let mut rx = Vec::new();
        let mut tx = Vec::new();
        for (i, ifc) in ifaces.iter().enumerate() {
            let fanout = match (n_workers, groups[i]) {
                (1, _) => Fanout::Alone,
                (_, None) => Fanout::NewGroup(&fanout_program),
                (_, Some(id)) => Fanout::Join(id),
            };
            let plan = RxSocketPlan {
                interface: &ifc.name,
                ifindex: ifc.index,
                fanout,
                filter: &filter,
            };
            let (fd, ring, group) =
                socket::open_rx(&plan, |fd| RxRing::new(fd, &cfg.ring.geometry(), &ifc.name))?;
            groups[i] = groups[i].or(group);
            ring_fds.push((i, fd.as_raw_fd()));
            rx.push(RxPort { fd, ring });
            tx.push(socket::open_tx(&ifc.name, ifc.index)?);
        }
        let c = Arc::new(WorkerCounters::new());
        counters.push(Arc::clone(&c));
        let mut forwarder = Forwarder::new(
            cfg.flow_table.capacity as usize,
            cfg.flow_table.sloppy_tcp,
            ifaces.iter().map(|i| i.mac).collect(),
            Arc::clone(&conns),
        )
        .with_context(|| {
            format!(
                "worker {w}'s flow table ([flow_table] capacity = {})",
                cfg.flow_table.capacity
            )
        })?
        .with_templates(
            Arc::clone(&templates),
            cfg.flow_table.expire_quiescent_template,
        );
        forwarder.ha = Arc::clone(&ha.hooks);
        forwarder.local_ports = LocalPorts::new(cfg.fullnat_ports);
        for (addr, pool, counters) in first_pools.iter_mut().filter_map(|(a, pools)| {
            let (pool, counters) = pools.get_mut(w)?.take()?;
            Some((*a, pool, counters))
        }) {
            forwarder.local_ports.add(addr, *pool, counters);
        }
        // Room for a pool per worker per local address of a change, and a flow dump.
        let (requests_tx, requests) = crossbeam_channel::bounded(64);
        let wakeup = Arc::new(
            crate::io::wakeup::Wakeup::new().context("cannot create a worker's wake-up eventfd")?,
        );
        worker_requests.push(crate::datapath::worker::WorkerInbox {
            requests: requests_tx,
            wakeup: Arc::clone(&wakeup),
        });
        forwarder.tap = trace.tap(w);
        workers.push(Worker {
            index: w,
            core: cores.get(w % cores.len().max(1)).copied(),
            rx,
            tx,
            tx_queue_capacity: tx_capacity,
            busy_poll: Duration::from_micros(u64::from(cfg.ring.busy_poll_us)),
            coalesce: Duration::from_micros(u64::from(cfg.ring.coalesce_us)),
            forwarder,
            counters: c,
            snapshot: Arc::clone(&shared),
            neigh: Arc::clone(&neigh),
            stop: Arc::clone(&stop),
            requests,
            wakeup,
        });
    }

    let mut arp_sockets = Vec::new();
    for ifc in &ifaces {
        arp_sockets.push(socket::open_arp(&ifc.name, ifc.index, cfg.arp.vip_mac)?);
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
    let now = crate::io::clock::now_ms();
    let mut arp_vips = table.vips();
    arp_vips.sort();
    arp.set_vips(arp_vips, now);
    arp.set_local_addrs(
        table
            .local_addrs()
            .into_iter()
            .filter(|a| !placer.is_local(*a))
            .collect(),
        now,
    );
    arp.set_neighbors(neighbors, &neigh);
    let health = start_health(&cfg, &mut book, &ifaces, &mut placer, &neigh, plan)?;
    ha.start(&mut arp, vips.clone(), now); // only MASTER VIPs are answered

    // ICMP errors from routers on a tunnel's path come to the director's own address.
    let tunnel_icmp = Arc::new(crate::control::tunnel_icmp::Counts::default());
    if let Err(e) = crate::control::tunnel_icmp::spawn(
        Arc::clone(&shared),
        Arc::clone(&tunnel_icmp),
        signals::stop_requested,
    ) {
        log::warn!("tunnel path ICMP errors will not be translated: {e}");
    }

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
        templates: Arc::clone(&templates),
        ring_fds,
        ring_totals: vec![RingStats::default(); ifaces.len()],
        local_ports,
        state: AdminState {
            table,
            timeouts: TimeoutsSecs::default(),
        },
        snapshot: Arc::clone(&shared),
        compiler,
        retired: Vec::new(),
        placer,
        kernel_filter,
        stats: StatsKeeper::default(),
        admin: admin.map(|l| Box::new(AdminServer::new(l)) as Box<dyn crate::control::AdminPort>),
        reload: {
            let args = args.clone();
            Some(Box::new(move || Ok(load_config(&args)?.services)))
        },
        metrics,
        ready_file: args.ready_file.clone(),
        route_watch: Some(route_watch),
        health,
        ha,
        trace,
        trace_sessions: Vec::new(),
        announce,
        tunnel_icmp,
        takeover: args.takeover.then(|| {
            crate::control::takeover::Phase::Starting(Box::new(
                crate::ctl::takeover::Handover::new(
                    admin_location(args),
                    args.admin_socket.clone(),
                    cfg.metrics,
                    cfg.kernel_filter.then(|| (if_names.clone(), hook)),
                    cfg.fullnat_ports,
                ),
            ))
        }),
        instance_lock: None,
    };
    // Every socket is open now: the announcement device goes first if uvs is killed.
    if let Some(a) = &mut control.announce {
        a.release_first_on_exit();
    }
    control.run();

    log::info!("stopping");
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    // Removes the nftables table and closes the admin socket.
    drop(control);
    // Unless a process that took over has written its own since.
    if let Some(p) = &args.ready_file
        && std::fs::read_to_string(p).is_ok_and(|t| t.trim() == std::process::id().to_string())
    {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// Where the admin socket of this namespace's director is.
fn admin_location(args: &RunArgs) -> crate::ctl::backend::SocketLocation {
    match &args.admin_socket {
        Some(p) => crate::ctl::backend::SocketLocation::Path(p.clone()),
        None => crate::ctl::backend::SocketLocation::Abstract,
    }
}

/// Takes the `[ring] cpu_latency_us` request, if the configuration asks for one.
fn hold_cpu_latency(microseconds: Option<u32>) -> Result<Option<CpuLatencyRequest>> {
    let Some(us) = microseconds else {
        return Ok(None);
    };
    let req = CpuLatencyRequest::hold(us).with_context(|| {
        format!(
            "[ring] cpu_latency_us = {us}: cannot hold a CPU latency request on {} \
             (a container without the device? remove the key)",
            crate::io::cpu_latency::DEVICE
        )
    })?;
    let effect = if us == 0 {
        " (idle CPUs poll instead of halting)"
    } else {
        ""
    };
    log::info!("CPU latency request: {us} µs while uvs runs{effect}");
    Ok(Some(req))
}

/// Starts one health thread per distinct check; returns the control side. Services that ask
/// for the same check (kind, target, timing) of the same real share one checker (see
/// `health::Runner`).
fn start_health(
    cfg: &DaemonConfig,
    book: &mut crate::health::book::Book,
    ifaces: &[interfaces::Interface],
    placer: &mut Placer,
    neigh: &Arc<NeighTable>,
    plan: crate::health::book::Plan,
) -> Result<HealthCtl> {
    use crate::health::{CheckKind, CheckSpec, Runner, vip::VipPath};
    use crate::model::ForwardMethod;
    use crate::snapshot::Placement;
    if cfg.health.is_empty() {
        return Ok(HealthCtl::default());
    }
    // (real address, real port, the check, and for a through-the-VIP check its VIP and
    // port) → the services that ask for it, in configuration order.
    type CheckKey = (
        std::net::Ipv4Addr,
        u16,
        CheckSpec,
        Option<(std::net::Ipv4Addr, u16)>,
    );
    // With each, the method of the real (a through-the-VIP probe is sent as the real's
    // traffic is: its key names one service, so one real and one method).
    type Check = (
        CheckKey,
        Option<ForwardMethod>,
        Vec<crate::model::ServiceKey>,
    );
    let mut checks: Vec<Check> = Vec::new();
    let mut found: std::collections::HashMap<CheckKey, usize> = std::collections::HashMap::new();
    for svc in &cfg.health.services {
        for r in &svc.reals {
            if r.check.kind == CheckKind::None {
                continue;
            }
            // The real's port as configured (a fwmark service's real may have none: the
            // service's then, and the check names its own).
            let port = cfg
                .services
                .service(&svc.key)
                .and_then(|s| s.reals.iter().find(|x| x.addr == r.addr))
                .map(|x| x.port)
                .filter(|p| *p != 0)
                .unwrap_or(svc.key.port);
            // What the probe reaches: the check's own port when it names one (every service
            // of a real then shares one probe whatever its port).
            let port = r.check.connect_port.unwrap_or(port);
            let through =
                (r.check.kind == CheckKind::ThroughVip).then_some((svc.key.vip, svc.key.port));
            let key: CheckKey = (r.addr, port, r.check.clone(), through);
            match found.get(&key) {
                Some(&i) => {
                    if let Some(c) = checks.get_mut(i) {
                        c.2.push(svc.key);
                    }
                }
                None => {
                    let forward = cfg
                        .services
                        .service(&svc.key)
                        .and_then(|s| s.reals.iter().find(|x| x.addr == r.addr))
                        .map(|x| x.forward);
                    found.insert(key.clone(), checks.len());
                    checks.push((key, forward, vec![svc.key]));
                }
            }
        }
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    let n = checks.len();
    for ((addr, port, spec, _), forward, services) in checks {
        let regex = match &spec.kind {
            CheckKind::Http(h) => h
                .regex
                .as_deref()
                .map(regex::Regex::new)
                .transpose()
                .context("HTTP check regex")?,
            _ => None,
        };
        // The through-the-VIP probe is a direct-routing frame to the real's MAC; for a
        // tunnelling real, a tunnelled one to its next hop.
        let vip_path = match forward {
            Some(ForwardMethod::Tunnel(encap)) => {
                let hop = placer.next_hop(addr, ForwardMethod::Tunnel(encap)).ok();
                hop.and_then(|hop| {
                    let ifc = ifaces.get(usize::from(hop.egress))?;
                    let end = placer.tunnel_end(addr, hop).ok()?;
                    Some(VipPath {
                        interface: ifc.name.clone(),
                        ifindex: ifc.index,
                        src_mac: ifc.mac,
                        src_ip: std::net::Ipv4Addr::from(end.source),
                        slot: hop.neigh,
                        neigh: Arc::clone(neigh),
                        tunnel: Some(crate::health::vip::TunnelTo {
                            real: addr,
                            encap,
                            end,
                        }),
                    })
                })
            }
            _ => {
                let hop = placer.next_hop(addr, ForwardMethod::Route).ok();
                hop.and_then(|hop| {
                    let ifc = ifaces.get(usize::from(hop.egress))?;
                    Some(VipPath {
                        interface: ifc.name.clone(),
                        ifindex: ifc.index,
                        src_mac: ifc.mac,
                        src_ip: ifc.source_for(addr)?,
                        slot: hop.neigh,
                        neigh: Arc::clone(neigh),
                        tunnel: None,
                    })
                })
            }
        };
        let runner = Runner {
            services: services.into(),
            addr,
            port,
            spec,
            regex,
            vip_path,
            reports: tx.clone(),
        };
        std::thread::Builder::new()
            .name(format!("uvs-health-{addr}"))
            .spawn(move || runner.run(&signals::stop_requested))
            .context("cannot start a health thread")?;
    }
    log::info!(
        "health: {n} checker(s) on {} service(s)",
        cfg.health.services.len()
    );
    run_commands(plan.commands);
    Ok(HealthCtl::new(std::mem::take(book), rx, plan.local))
}
