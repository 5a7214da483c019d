//! Daemon configuration: the TOML file (`--config`), the ipvsadm-save rules file (`--rules`) and
//! command-line overrides, merged into one validated [`DaemonConfig`].
//!
//! Raw → validated, once (ripgrep's low/high args): parsers in [`toml_file`] and [`rules`]
//! produce plain data with file/line context in every error; nothing is started until the
//! whole configuration has been accepted.

pub mod keepalived;
pub mod ldirectord;
pub mod rules;
pub mod toml_file;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use crate::io::ring::{RingGeometry, RingVersion};
use crate::model::ServiceTable;
pub use crate::neigh::arp::ArpOptions;

/// The `[ring]` section: the receive rings' geometry and how workers wait for frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingOptions {
    pub version: RingVersion,
    /// Bytes per ring block (V3) or per allocation unit (V2). Power of two, multiple of the page size.
    pub block_size: u32,
    pub block_count: u32,
    /// TPACKET_V3 block retire timeout in milliseconds (≥ 1).
    pub block_timeout_ms: u32,
    /// Bytes per frame slot for TPACKET_V2 (power of two).
    pub frame_size: u32,
    /// Microseconds a worker keeps polling its rings without sleeping after the last frame
    /// (as the kernel's `net.core.busy_poll`): no wake-up through the scheduler for a frame
    /// that arrives within that time, at the price of a core spinning while traffic is
    /// recent. 0 (the default) sleeps in `poll` as soon as the rings are empty.
    pub busy_poll_us: u32,
    /// Receive coalescing under sustained load (as a NIC's `rx-usecs`): a round that found
    /// frames right after another such round, but fewer than a batch's worth, is followed by
    /// this many microseconds of sleep so the next round forwards a batch with one `sendmmsg`
    /// instead of one frame per syscall. A frame arriving alone never waits (the round after it
    /// finds the rings empty). 0 turns it off.
    pub coalesce_us: u32,
    /// A CPU latency QoS request held while uvs runs (`/dev/cpu_dma_latency`, as tuned's
    /// `force_latency`): idle CPUs sleep no deeper than this many microseconds, so waking a
    /// sleeping worker is quick. 0 keeps idle CPUs polling instead of halting (bench full8,
    /// V2: added round trip over the nft path at low load, p99 120 -> 18 µs). `None` (the default)
    /// asks nothing: the machine's power management decides. Fixed at start.
    pub cpu_latency_us: Option<u32>,
}

impl RingOptions {
    /// What the receive ring itself needs.
    pub fn geometry(&self) -> RingGeometry {
        RingGeometry {
            version: self.version,
            block_size: self.block_size,
            block_count: self.block_count,
            block_timeout_ms: self.block_timeout_ms,
            frame_size: self.frame_size,
        }
    }
}

/// The default is TPACKET_V2 by measurement (bench/README.md, `cargo bench --bench latency`):
/// on this kind of machine a V3 block waits for its retire timer at low rates, adding about
/// 0.75 ms at the median even with the minimum 1 ms timer, while V2 wakes the worker per frame
/// and adds about 0.1 ms. Frames larger than a V2 slot (GSO super-frames) take the
/// `PACKET_COPY_THRESH` path, so default veth offloads work with either.
impl Default for RingOptions {
    fn default() -> Self {
        RingOptions {
            version: RingVersion::V2,
            block_size: 1 << 18,
            // 16 MiB per ring: 8192 V2 slots of 2 KiB. The 4 MiB ring dropped frames at 80 %
            // of the maximum rate in the bench.
            block_count: 64,
            block_timeout_ms: 1,
            frame_size: 1 << 11,
            busy_poll_us: 0,
            // bench: the V2 worker's CPU at 80 % of the maximum rate 0.90 -> 0.65 (50 µs)
            coalesce_us: 50,
            cpu_latency_us: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowTableOptions {
    /// Entries per worker (rounded up to a power of two).
    pub capacity: u32,
    /// Schedule TCP packets without SYN that match no entry (IPVS `sloppy_tcp`).
    pub sloppy_tcp: bool,
    /// Persistence-template slots, shared by all workers (rounded up to a power of two).
    pub template_capacity: u32,
    /// IPVS `expire_quiescent_template`: a template whose real has weight 0 is dropped when
    /// next used, so persistent clients move off a quiesced real.
    pub expire_quiescent_template: bool,
}

impl Default for FlowTableOptions {
    fn default() -> Self {
        FlowTableOptions {
            capacity: 1 << 18,
            sloppy_tcp: false,
            template_capacity: 1 << 16,
            expire_quiescent_template: false,
        }
    }
}

/// Everything `uvs run` needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Interfaces to serve. Empty = every up, non-loopback interface with an IPv4 address.
    pub interfaces: Vec<String>,
    /// Worker threads; `None` = one per core the process may run on.
    pub workers: Option<usize>,
    /// Prometheus listen address; `None` disables the exporter.
    pub metrics: Option<SocketAddr>,
    /// Install uvs's nftables table that keeps the director's own kernel off service traffic.
    pub kernel_filter: bool,
    pub ring: RingOptions,
    pub flow_table: FlowTableOptions,
    pub arp: ArpOptions,
    pub services: ServiceTable,
    /// Health checks, quorum and sorry servers per service.
    pub health: crate::health::HealthConfig,
    /// VRRP instances and the IPVS sync daemon.
    pub vrrp: Vec<crate::vrrp::InstanceConfig>,
    pub sync: Option<crate::sync::SyncConfig>,
    /// FullNAT: the local ports handed out on every local address (inclusive).
    pub fullnat_ports: (u16, u16),
}

/// FullNAT's local port range `(lo, hi)` for `workers` workers: every worker owns the ports of
/// the range congruent to its index modulo the worker count (`datapath::fullnat::PortPool`),
/// so each needs at least one; port 0 is no port.
pub fn check_fullnat_ports(range: (u16, u16), workers: usize) -> Result<(), String> {
    let (lo, hi) = range;
    if lo == 0 {
        return Err("port 0 is not a port: the range starts at 1 or above".into());
    }
    if lo > hi {
        return Err(format!("the low end {lo} is above the high end {hi}"));
    }
    let count = usize::from(hi - lo) + 1;
    if count < workers {
        return Err(format!(
            "{count} port(s) for {workers} workers: each worker needs ports of its own on every local address"
        ));
    }
    Ok(())
}

/// Default Prometheus address: loopback only, port from the Prometheus default-port registry range.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9477";

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            interfaces: Vec::new(),
            workers: None,
            metrics: DEFAULT_METRICS_ADDR.parse().ok(),
            kernel_filter: true,
            ring: RingOptions::default(),
            flow_table: FlowTableOptions::default(),
            arp: ArpOptions::default(),
            services: ServiceTable::new(),
            health: crate::health::HealthConfig::default(),
            vrrp: Vec::new(),
            sync: None,
            fullnat_ports: crate::datapath::fullnat::DEFAULT_PORTS,
        }
    }
}

/// A configuration input that was refused: which file, which line, what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    At {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}
