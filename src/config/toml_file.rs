//! The daemon's TOML configuration file (`--config`).
//!
//! Two steps, as everywhere in [`crate::config`]: serde reads the text into raw structs whose
//! every field is optional (`deny_unknown_fields`, so a typo is an error, not a silent default),
//! then [`parse`] validates each value and builds the [`DaemonConfig`]. Every refusal is a
//! [`ConfigError::At`] naming the 1-based line: toml syntax and type errors carry a byte span,
//! and the raw structs keep [`Spanned`] values so that a bad value points at its key and a
//! refused service or real server points at its `[[service]]` / `[[service.real]]` header.
//!
//! Schema (defaults are those of the `Default` impls in [`crate::config`]; see
//! `configs/full.toml` for every key):
//!
//! ```toml
//! interfaces = ["eth0"]          # [] = every up non-loopback IPv4 interface
//! workers = 2                    # absent = one per core; 1..=256
//! metrics = "127.0.0.1:9477"     # "off" disables the exporter
//! kernel_filter = true
//! [ring]       # version = "v3" | "v2", block_size, block_count, block_timeout_ms, frame_size,
//!              # busy_poll_us (0 = sleep as soon as the rings are empty),
//!              # coalesce_us (0 = no receive coalescing under load),
//!              # cpu_latency_us (absent = no CPU latency request; 0 = idle CPUs poll)
//! [flow_table] # capacity, sloppy_tcp, template_capacity, expire_quiescent_template
//! [arp]        # reachable_secs, retry_ms, garp_repeat, garp_delay_secs,
//!              # vip_mac ("02:…", absent = each interface's own MAC)
//! [fullnat]    # ports = [1024, 32767] (or "1024-32767"): the local ports of every local address
//! [[service]]  # protocol = "tcp" | "udp", vip, port, scheduler (default "wlc", as ipvsadm),
//!              # persistence_timeout, persistence_netmask, sched_flags ([]), ops (false)
//!              # or fwmark = N instead of protocol/vip/port (a fwmark service, `-f N`)
//!              # proxy_protocol = "disable" | "v1" | "v2" (FullNAT reals; `--proxy-protocol`)
//!              # local_addresses = ["10.1.0.2", { address = "10.1.0.3", interface = "eth1" }]
//!              # (FullNAT; `--add-laddr`; [] = the director's own address towards each real)
//! [[service.real]] # address, port (= service port; "nat" and "fullnat" map it), weight (1),
//!                  # upper_threshold (0), lower_threshold (0),
//!                  # forward = "route" ("dr", "gate") | "nat" ("masq", "masquerading")
//!                  #         | "tunnel" ("ipip", "tun") | "fullnat" ("fnat", "full-nat")
//! [[mark_rule]]    # vip, protocol ("tcp"), ports = [80, 443], mark: the stand-in for
//!                  # `iptables -t mangle … -j MARK --set-mark N` (see model::MarkRule)
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::{
    ArpOptions, ConfigError, DEFAULT_METRICS_ADDR, DaemonConfig, FlowTableOptions, RingOptions,
    RingVersion,
};
use crate::model::{
    ForwardMethod, MAX_WEIGHT, Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec,
    ServiceTable, Tunnel, TunnelCsum, TunnelKind,
};
use crate::wire::MacAddr;

/// Smallest ring block: one page.
const PAGE_SIZE: u32 = 4096;
/// Smallest TPACKET frame slot.
const MIN_FRAME_SIZE: u32 = 256;
/// Flow-table capacity bounds (entries per worker).
const MIN_FLOW_CAPACITY: i64 = 1024;
const MAX_FLOW_CAPACITY: i64 = 1 << 27;
const MAX_WORKERS: i64 = 256;
/// Longest busy-poll window: one second (a longer one is a core spinning for nothing).
const MAX_BUSY_POLL_US: u32 = 1_000_000;
/// Longest coalescing wait: 10 ms, well inside the default ring's headroom (~20 ms at 400 kpps).
const MAX_COALESCE_US: u32 = 10_000;
/// Largest CPU latency request: one second (no idle state takes that long to leave).
const MAX_CPU_LATENCY_US: u32 = 1_000_000;
/// Linux `IFNAMSIZ` − 1.
const MAX_IFNAME_LEN: usize = 15;
/// Longest persistence timeout accepted: 31 days.
pub(crate) const MAX_PERSISTENCE_TIMEOUT: u32 = 31 * 86_400;
/// Largest `-x` / `-y` connection threshold ipvsadm accepts.
pub(crate) const MAX_THRESHOLD: u32 = 65_535;
/// Scheduler used when a service names none, as ipvsadm does.
pub(crate) const DEFAULT_SCHEDULER: SchedulerKind = SchedulerKind::Wlc;

/// Reads and parses the TOML file at `path`.
pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates TOML `text`; `path` is only used in error messages.
pub fn parse(text: &str, path: &Path) -> Result<DaemonConfig, ConfigError> {
    let at = |span: Range<usize>, message: String| ConfigError::At {
        path: path.to_path_buf(),
        line: line_of(text, span.start),
        message,
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let start = e.span().map_or(0, |s| s.start);
        at(start..start, e.message().trim_end().to_string())
    })?;
    build(raw).map_err(|e| at(e.span, e.message))
}

/// 1-based line of byte `offset` in `text` (offsets past the end count as the last line).
fn line_of(text: &str, offset: usize) -> usize {
    text.bytes()
        .take(offset)
        .filter(|&b| b == b'\n')
        .count()
        .saturating_add(1)
}

/// A refusal before the line number is known.
struct Located {
    span: Range<usize>,
    message: String,
}

fn err<T>(span: Range<usize>, message: impl Into<String>) -> Result<T, Located> {
    Err(Located {
        span,
        message: message.into(),
    })
}

// ---------------------------------------------------------------------------------------------
// Raw (as written) structs.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Option<Vec<Spanned<String>>>,
    workers: Option<Spanned<i64>>,
    metrics: Option<Spanned<String>>,
    kernel_filter: Option<bool>,
    ring: Option<RawRing>,
    flow_table: Option<RawFlowTable>,
    arp: Option<RawArp>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
    #[serde(default)]
    mark_rule: Vec<Spanned<RawMarkRule>>,
    // High availability: VRRP and connection sync.
    #[serde(default)]
    vrrp: Vec<Spanned<crate::vrrp::config_toml::RawVrrp>>,
    sync: Option<crate::vrrp::config_toml::RawSync>,
    fullnat: Option<RawFullNat>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFullNat {
    /// `[LO, HI]` or `"LO-HI"` (read by [`fullnat_ports`]).
    ports: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRing {
    version: Option<RingVersion>,
    block_size: Option<Spanned<i64>>,
    block_count: Option<Spanned<i64>>,
    block_timeout_ms: Option<Spanned<i64>>,
    frame_size: Option<Spanned<i64>>,
    busy_poll_us: Option<Spanned<i64>>,
    coalesce_us: Option<Spanned<i64>>,
    cpu_latency_us: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFlowTable {
    capacity: Option<Spanned<i64>>,
    sloppy_tcp: Option<bool>,
    template_capacity: Option<Spanned<i64>>,
    expire_quiescent_template: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawArp {
    reachable_secs: Option<Spanned<i64>>,
    retry_ms: Option<Spanned<i64>>,
    garp_repeat: Option<Spanned<i64>>,
    garp_delay_secs: Option<Spanned<i64>>,
    vip_mac: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    protocol: Option<Spanned<String>>,
    /// Required unless `fwmark` is set.
    vip: Option<Spanned<String>>,
    /// Required unless `fwmark` is set.
    port: Option<Spanned<i64>>,
    /// A fwmark service (`-f N`): no protocol, vip or port.
    fwmark: Option<Spanned<i64>>,
    scheduler: Option<Spanned<String>>,
    persistence_timeout: Option<Spanned<i64>>,
    persistence_netmask: Option<Spanned<String>>,
    sched_flags: Option<Spanned<Vec<String>>>,
    ops: Option<bool>,
    proxy_protocol: Option<Spanned<String>>,
    /// Each `"ADDRESS"` or `{ address = "…", interface = "…" }` (read by [`local_addr_of`]).
    local_addresses: Option<Vec<Spanned<toml::Value>>>,
    #[serde(default)]
    real: Vec<Spanned<RawReal>>,
    /// quorum, sorry server, quiescent.
    health: Option<RawSvcHealth>,
    /// the checker of every real of the service.
    check: Option<RawCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMarkRule {
    vip: Spanned<String>,
    protocol: Option<Spanned<String>>,
    ports: Spanned<Vec<i64>>,
    mark: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReal {
    address: Spanned<String>,
    port: Option<Spanned<i64>>,
    weight: Option<Spanned<i64>>,
    upper_threshold: Option<Spanned<i64>>,
    lower_threshold: Option<Spanned<i64>>,
    forward: Option<Spanned<String>>,
    /// tunnelling: the encapsulation (`--tun-type`), GUE's port, the checksum option.
    tunnel_type: Option<Spanned<String>>,
    tunnel_port: Option<Spanned<i64>>,
    tunnel_csum: Option<Spanned<String>>,
    /// overrides the service's `check` keys for this real.
    check: Option<RawCheck>,
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// A tunnelling real's encapsulation: `tunnel_type` (default "ipip"), `tunnel_port` (GUE's,
/// required there), `tunnel_csum` ("nocsum", the default, "csum", "remcsum"), checked by
/// ipvsadm's rules.
fn tunnel_of(real: &RawReal, real_label: &str) -> Result<Tunnel, Located> {
    let kind = match &real.tunnel_type {
        None => TunnelKind::Ipip,
        Some(t) => TunnelKind::parse(&t.get_ref().to_ascii_lowercase()).ok_or_else(|| Located {
            span: t.span(),
            message: format!(
                "{real_label}: tunnel_type = \"{}\" is unknown (expected \"ipip\", \"gue\" or \"gre\")",
                t.get_ref()
            ),
        })?,
    };
    let port = opt_ranged(real.tunnel_port.as_ref(), 0, 1, 65_535, "tunnel_port")?;
    let csum = match &real.tunnel_csum {
        None => TunnelCsum::NoCsum,
        Some(c) => match c.get_ref().to_ascii_lowercase().as_str() {
            "nocsum" | "none" => TunnelCsum::NoCsum,
            "csum" => TunnelCsum::Csum,
            "remcsum" => TunnelCsum::RemCsum,
            other => {
                return err(
                    c.span(),
                    format!(
                        "{real_label}: tunnel_csum = \"{other}\" is unknown (expected \"nocsum\", \"csum\" or \"remcsum\")"
                    ),
                );
            }
        },
    };
    let t = Tunnel {
        kind,
        port: u16::try_from(port).unwrap_or(0),
        csum,
    };
    t.check().map_err(|e| Located {
        span: real
            .tunnel_type
            .as_ref()
            .map(|v| v.span())
            .or(real.forward.as_ref().map(|v| v.span()))
            .unwrap_or(0..0),
        message: format!("{real_label}: {e}"),
    })?;
    Ok(t)
}

/// `value` as a `u32` within `lo..=hi`, or an error naming `what` and the range.
fn ranged(value: &Spanned<i64>, lo: u32, hi: u32, what: &str) -> Result<u32, Located> {
    let v = *value.get_ref();
    match u32::try_from(v) {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => err(
            value.span(),
            format!("{what} = {v} is out of range {lo}..={hi}"),
        ),
    }
}

fn opt_ranged(
    value: Option<&Spanned<i64>>,
    default: u32,
    lo: u32,
    hi: u32,
    what: &str,
) -> Result<u32, Located> {
    value.map_or(Ok(default), |v| ranged(v, lo, hi, what))
}

fn parse_ipv4(value: &Spanned<String>, what: &str) -> Result<Ipv4Addr, Located> {
    let s = value.get_ref().trim();
    s.parse().or_else(|_| {
        let hint = if s.contains(':') {
            " (IPv6 is not supported yet)"
        } else {
            ""
        };
        err(
            value.span(),
            format!("{what} = \"{s}\" is not an IPv4 address{hint}"),
        )
    })
}

fn build(raw: RawConfig) -> Result<DaemonConfig, Located> {
    let defaults = DaemonConfig::default();

    let mut interfaces = Vec::new();
    for name in raw.interfaces.unwrap_or_default() {
        let n = name.get_ref();
        if n.is_empty() {
            return err(
                name.span(),
                "interfaces: an interface name must not be empty",
            );
        }
        if n.len() > MAX_IFNAME_LEN {
            return err(
                name.span(),
                format!("interfaces: \"{n}\" is longer than {MAX_IFNAME_LEN} bytes (IFNAMSIZ)"),
            );
        }
        if n.contains(['/', ' ', '\t', '\n', '\0']) || n == "." || n == ".." {
            return err(
                name.span(),
                format!("interfaces: \"{n}\" is not a valid interface name"),
            );
        }
        if interfaces.iter().any(|i| i == n) {
            return err(name.span(), format!("interfaces: \"{n}\" is listed twice"));
        }
        interfaces.push(n.clone());
    }

    let workers = match &raw.workers {
        None => defaults.workers,
        Some(w) => {
            let n = ranged(w, 1, MAX_WORKERS as u32, "workers")?;
            usize::try_from(n).ok()
        }
    };

    let metrics = match &raw.metrics {
        None => defaults.metrics,
        Some(m) if m.get_ref().trim() == "off" => None,
        Some(m) => match m.get_ref().trim().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                return err(
                    m.span(),
                    format!(
                        "metrics = \"{}\" is not an address:port (like \"{DEFAULT_METRICS_ADDR}\") or \"off\"",
                        m.get_ref()
                    ),
                );
            }
        },
    };

    let ring = build_ring(raw.ring.unwrap_or_default())?;
    let flow_table = build_flow_table(raw.flow_table.unwrap_or_default())?;
    let arp = build_arp(raw.arp.unwrap_or_default())?;

    let mut services = ServiceTable::new();
    let mut health = crate::health::HealthConfig::default();
    for svc in &raw.service {
        add_service(&mut services, svc)?;
        if let Some(h) = health_of(&services, svc)? {
            health.services.push(h);
        }
    }
    for rule in &raw.mark_rule {
        add_mark_rule(&mut services, rule)?;
    }
    // After every service: a local address must not be any service's VIP, whichever comes
    // first in the file.
    for svc in &raw.service {
        add_local_addrs(&mut services, svc)?;
    }
    let fullnat_ports = match raw.fullnat.as_ref().and_then(|f| f.ports.as_ref()) {
        None => defaults.fullnat_ports,
        Some(p) => fullnat_ports(p, workers)?,
    };

    // High availability: VRRP and connection sync.
    let located = |(span, message): (Range<usize>, String)| Located { span, message };
    let vrrp = crate::vrrp::config_toml::build_vrrp(&raw.vrrp).map_err(located)?;
    let sync = match &raw.sync {
        Some(s) => Some(crate::vrrp::config_toml::build_sync(s, &vrrp).map_err(located)?),
        None => None,
    };

    Ok(DaemonConfig {
        vrrp,
        sync,
        interfaces,
        workers,
        metrics,
        kernel_filter: raw.kernel_filter.unwrap_or(defaults.kernel_filter),
        ring,
        flow_table,
        arp,
        services,
        health,
        fullnat_ports,
    })
}

/// `[fullnat] ports`: `[LO, HI]` or `"LO-HI"`, 1 ≤ LO ≤ HI ≤ 65535, and when the file sets
/// `workers`, at least one port per worker (see [`super::check_fullnat_ports`]).
fn fullnat_ports(v: &Spanned<toml::Value>, workers: Option<usize>) -> Result<(u16, u16), Located> {
    let bad = |why: &str| err(v.span(), format!("fullnat.ports = {}: {why}", v.get_ref()));
    let ends: Option<(i64, i64)> = match v.get_ref() {
        toml::Value::Array(a) => match a.as_slice() {
            [toml::Value::Integer(lo), toml::Value::Integer(hi)] => Some((*lo, *hi)),
            _ => None,
        },
        toml::Value::String(t) => t
            .split_once('-')
            .and_then(|(lo, hi)| Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?))),
        _ => None,
    };
    let Some((lo, hi)) = ends else {
        return bad("expected [LOW, HIGH] or \"LOW-HIGH\", e.g. [1024, 32767]");
    };
    let (Ok(lo), Ok(hi)) = (u16::try_from(lo), u16::try_from(hi)) else {
        return bad("ports are 1..=65535");
    };
    if let Err(why) = super::check_fullnat_ports((lo, hi), workers.unwrap_or(1)) {
        return bad(&why);
    }
    Ok((lo, hi))
}

/// `proxy_protocol = "…"`: `--proxy-protocol`'s words.
fn proxy_protocol_of(
    v: &Spanned<String>,
    label: &str,
) -> Result<crate::model::ProxyVersion, Located> {
    let text = v.get_ref().trim();
    if let Some(version) = crate::model::ProxyVersion::parse(text) {
        return Ok(version);
    }
    let why = if text.to_ascii_lowercase().ends_with("-insecure") {
        "DPVS's insecure modes (passing on a PROXY header the client sent) are not supported; use \"v1\" or \"v2\""
    } else {
        "expected \"disable\", \"v1\" or \"v2\""
    };
    err(
        v.span(),
        format!("{label}: proxy_protocol = \"{text}\" is unknown: {why}"),
    )
}

/// One entry of `local_addresses`: `"10.1.0.2"` or `{ address = "10.1.0.2", interface = "eth1" }`.
fn local_addr_of(
    v: &Spanned<toml::Value>,
    label: &str,
) -> Result<crate::model::LocalAddr, Located> {
    let bad = |why: String| err(v.span(), format!("{label}: local_addresses: {why}"));
    let (address, interface) = match v.get_ref() {
        toml::Value::String(a) => (a.as_str(), None),
        toml::Value::Table(t) => {
            if let Some(k) = t.keys().find(|k| *k != "address" && *k != "interface") {
                return bad(format!(
                    "unknown key `{k}` (expected `address` and optionally `interface`)"
                ));
            }
            let address = match t.get("address") {
                Some(toml::Value::String(a)) => a.as_str(),
                Some(other) => return bad(format!("address = {other} is not a string")),
                None => return bad("missing key `address`".into()),
            };
            let interface = match t.get("interface") {
                None => None,
                Some(toml::Value::String(i)) => Some(i.clone()),
                Some(other) => return bad(format!("interface = {other} is not a string")),
            };
            (address, interface)
        }
        other => {
            return bad(format!(
                "{other} is neither an address (\"10.1.0.2\") nor a table ({{ address = \"10.1.0.2\", interface = \"eth1\" }})"
            ));
        }
    };
    let Ok(addr) = address.trim().parse::<Ipv4Addr>() else {
        let hint = if address.contains(':') {
            " (IPv6 is not supported yet)"
        } else {
            ""
        };
        return bad(format!("\"{address}\" is not an IPv4 address{hint}"));
    };
    let la = crate::model::LocalAddr { addr, interface };
    if let Err(e) = la.check() {
        return bad(e.to_string());
    }
    Ok(la)
}

fn add_local_addrs(table: &mut ServiceTable, spanned: &Spanned<RawService>) -> Result<(), Located> {
    let svc = spanned.get_ref();
    let Some(list) = &svc.local_addresses else {
        return Ok(());
    };
    // The service was added by `add_service`, which refuses a file whose key it cannot build.
    let Some(key) = service_key(svc).ok() else {
        return Ok(());
    };
    let label = format!("service {key}");
    for entry in list {
        let la = local_addr_of(entry, &label)?;
        let addr = la.addr;
        table
            .add_local_addr(&key, la)
            .or_else(|e| err(entry.span(), format!("{label}: local address {addr}: {e}")))?;
    }
    Ok(())
}

fn build_ring(raw: RawRing) -> Result<RingOptions, Located> {
    let d = RingOptions::default();
    let block_size = opt_ranged(
        raw.block_size.as_ref(),
        d.block_size,
        PAGE_SIZE,
        1 << 30,
        "ring.block_size",
    )?;
    if let Some(v) = &raw.block_size
        && (!block_size.is_power_of_two() || block_size % PAGE_SIZE != 0)
    {
        return err(
            v.span(),
            format!(
                "ring.block_size = {block_size} must be a power of two and a multiple of {PAGE_SIZE}"
            ),
        );
    }
    let block_count = opt_ranged(
        raw.block_count.as_ref(),
        d.block_count,
        2,
        1 << 16,
        "ring.block_count",
    )?;
    let block_timeout_ms = opt_ranged(
        raw.block_timeout_ms.as_ref(),
        d.block_timeout_ms,
        1,
        60_000,
        "ring.block_timeout_ms",
    )?;
    let frame_size = opt_ranged(
        raw.frame_size.as_ref(),
        d.frame_size,
        MIN_FRAME_SIZE,
        1 << 30,
        "ring.frame_size",
    )?;
    if !frame_size.is_power_of_two() || frame_size > block_size {
        // Point at frame_size if given, else at block_size (which made the default too big).
        let span = raw
            .frame_size
            .as_ref()
            .or(raw.block_size.as_ref())
            .map_or(0..0, Spanned::span);
        return err(
            span,
            format!(
                "ring.frame_size = {frame_size} must be a power of two, at least {MIN_FRAME_SIZE} and at most ring.block_size ({block_size})"
            ),
        );
    }
    let busy_poll_us = opt_ranged(
        raw.busy_poll_us.as_ref(),
        d.busy_poll_us,
        0,
        MAX_BUSY_POLL_US,
        "ring.busy_poll_us",
    )?;
    let coalesce_us = opt_ranged(
        raw.coalesce_us.as_ref(),
        d.coalesce_us,
        0,
        MAX_COALESCE_US,
        "ring.coalesce_us",
    )?;
    let cpu_latency_us = raw
        .cpu_latency_us
        .as_ref()
        .map(|v| ranged(v, 0, MAX_CPU_LATENCY_US, "ring.cpu_latency_us"))
        .transpose()?;
    Ok(RingOptions {
        version: raw.version.unwrap_or(d.version),
        block_size,
        block_count,
        block_timeout_ms,
        frame_size,
        busy_poll_us,
        coalesce_us,
        cpu_latency_us,
    })
}

fn build_flow_table(raw: RawFlowTable) -> Result<FlowTableOptions, Located> {
    let d = FlowTableOptions::default();
    Ok(FlowTableOptions {
        capacity: opt_ranged(
            raw.capacity.as_ref(),
            d.capacity,
            MIN_FLOW_CAPACITY as u32,
            MAX_FLOW_CAPACITY as u32,
            "flow_table.capacity",
        )?,
        sloppy_tcp: raw.sloppy_tcp.unwrap_or(d.sloppy_tcp),
        template_capacity: opt_ranged(
            raw.template_capacity.as_ref(),
            d.template_capacity,
            MIN_FLOW_CAPACITY as u32,
            MAX_FLOW_CAPACITY as u32,
            "flow_table.template_capacity",
        )?,
        expire_quiescent_template: raw
            .expire_quiescent_template
            .unwrap_or(d.expire_quiescent_template),
    })
}

fn build_arp(raw: RawArp) -> Result<ArpOptions, Located> {
    let d = ArpOptions::default();
    Ok(ArpOptions {
        reachable_secs: opt_ranged(
            raw.reachable_secs.as_ref(),
            d.reachable_secs,
            1,
            86_400,
            "arp.reachable_secs",
        )?,
        retry_ms: opt_ranged(
            raw.retry_ms.as_ref(),
            d.retry_ms,
            1,
            3_600_000,
            "arp.retry_ms",
        )?,
        garp_repeat: opt_ranged(
            raw.garp_repeat.as_ref(),
            d.garp_repeat,
            0,
            1000,
            "arp.garp_repeat",
        )?,
        garp_delay_secs: opt_ranged(
            raw.garp_delay_secs.as_ref(),
            d.garp_delay_secs,
            0,
            86_400,
            "arp.garp_delay_secs",
        )?,
        vip_mac: match raw.vip_mac.as_ref() {
            None => None,
            Some(m) => Some(parse_vip_mac(m)?),
        },
    })
}

fn parse_vip_mac(m: &Spanned<String>) -> Result<MacAddr, Located> {
    let text = m.get_ref();
    match MacAddr::parse(text) {
        Some(mac) if !mac.is_group() && mac != MacAddr::ZERO => Ok(mac),
        Some(_) => err(
            m.span(),
            format!(
                "arp.vip_mac = \"{text}\" is not a unicast address (the first octet must be even, and not all zero); a locally administered one such as \"02:00:5e:00:01:01\" is a good choice"
            ),
        ),
        None => err(
            m.span(),
            format!(
                "arp.vip_mac = \"{text}\" is not a MAC address (expected six hex octets, e.g. \"02:00:5e:00:01:01\")"
            ),
        ),
    }
}

fn parse_protocol(protocol: Option<&Spanned<String>>) -> Result<Protocol, Located> {
    Ok(match protocol {
        None => Protocol::Tcp,
        Some(p) => match p.get_ref().to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => return err(p.span(), "protocol \"sctp\" is not supported yet"),
            other => {
                return err(
                    p.span(),
                    format!("protocol = \"{other}\" is unknown (expected \"tcp\" or \"udp\")"),
                );
            }
        },
    })
}

fn add_mark_rule(table: &mut ServiceTable, spanned: &Spanned<RawMarkRule>) -> Result<(), Located> {
    let r = spanned.get_ref();
    let proto = parse_protocol(r.protocol.as_ref())?;
    let vip = parse_ipv4(&r.vip, "vip")?;
    let mark = ranged(&r.mark, 1, u32::MAX, "mark")?;
    let mut ports = Vec::new();
    for &p in r.ports.get_ref() {
        match u16::try_from(p) {
            Ok(n) if n > 0 => ports.push(n),
            _ => {
                return err(
                    r.ports.span(),
                    format!("ports: {p} is out of range 1..65535"),
                );
            }
        }
    }
    table
        .add_mark_rule(crate::model::MarkRule {
            proto,
            vip,
            ports,
            mark,
        })
        .or_else(|e| err(spanned.span(), format!("mark_rule: {e}")))
}

/// The service's key: `fwmark`, or `protocol`, `vip` and `port`.
fn service_key(svc: &RawService) -> Result<ServiceKey, Located> {
    Ok(match (&svc.fwmark, &svc.vip, &svc.port) {
        (Some(m), None, None) if svc.protocol.is_none() => {
            ServiceKey::fwmark(ranged(m, 1, u32::MAX, "fwmark")?)
        }
        (Some(m), ..) => {
            return err(
                m.span(),
                "a fwmark service has no protocol, vip or port (mark rules say which packets carry the mark)",
            );
        }
        (None, Some(vip), Some(port)) => {
            let proto = parse_protocol(svc.protocol.as_ref())?;
            let vip = parse_ipv4(vip, "vip")?;
            let port = ranged(port, 1, 65_535, "port")?;
            ServiceKey::addr(proto, vip, u16::try_from(port).unwrap_or(0))
        }
        (None, None, _) => return err(0..0, "missing field `vip` (or set fwmark)"),
        (None, _, None) => return err(0..0, "missing field `port` (or set fwmark)"),
    })
}

fn add_service(table: &mut ServiceTable, spanned: &Spanned<RawService>) -> Result<(), Located> {
    let header = spanned.span();
    let svc = spanned.get_ref();

    // A missing key is reported at the service's header.
    let key = service_key(svc).map_err(|e| Located {
        span: if e.span == (0..0) {
            header.clone()
        } else {
            e.span
        },
        message: e.message,
    })?;
    let checked = svc.real.iter().any(|r| r.get_ref().check.is_some());
    if key.is_fwmark() && (svc.check.is_some() || svc.health.is_some() || checked) {
        return err(
            header,
            format!("service {key}: health checks of fwmark services are not supported yet"),
        );
    }
    let label = format!("service {key}");

    let scheduler = match &svc.scheduler {
        None => DEFAULT_SCHEDULER,
        Some(s) => SchedulerKind::parse(s.get_ref().trim())
            .or_else(|e| err(s.span(), format!("{label}: {e}")))?,
    };
    let persistence_timeout = svc
        .persistence_timeout
        .as_ref()
        .map(|t| ranged(t, 1, MAX_PERSISTENCE_TIMEOUT, "persistence_timeout"))
        .transpose()?;
    let persistence_netmask = match &svc.persistence_netmask {
        None => Ipv4Addr::BROADCAST,
        Some(m) => parse_ipv4(m, "persistence_netmask")?,
    };
    let sched_flags = match &svc.sched_flags {
        None => crate::sched::SchedFlags::default(),
        Some(f) => crate::sched::SchedFlags::parse(&f.get_ref().join(","), scheduler)
            .or_else(|e| err(f.span(), format!("{label}: sched_flags: {e}")))?,
    };
    let proxy_protocol = match &svc.proxy_protocol {
        None => crate::model::ProxyVersion::Off,
        Some(v) => {
            let version = proxy_protocol_of(v, &label)?;
            if version == crate::model::ProxyVersion::V1 && key.proto == Protocol::Udp {
                return err(
                    v.span(),
                    format!("{label}: {}", crate::model::ModelError::ProxyV1Udp),
                );
            }
            version
        }
    };
    let spec = ServiceSpec {
        key,
        scheduler,
        persistence_timeout,
        persistence_netmask,
        sched_flags,
        ops: svc.ops.unwrap_or(false),
        proxy_protocol,
    };
    table
        .add_service(spec)
        .or_else(|e| err(header.clone(), format!("{label}: {e}")))?;

    for real in &svc.real {
        add_real(table, &key, &label, real)?;
    }
    Ok(())
}

fn add_real(
    table: &mut ServiceTable,
    key: &ServiceKey,
    label: &str,
    spanned: &Spanned<RawReal>,
) -> Result<(), Located> {
    let header = spanned.span();
    let real = spanned.get_ref();
    let addr = parse_ipv4(&real.address, "address")?;
    let port = opt_ranged(real.port.as_ref(), u32::from(key.port), 1, 65_535, "port")?;
    let port = u16::try_from(port).unwrap_or(key.port);
    let real_label = format!("{label}: real {addr}:{port}");
    let weight = match &real.weight {
        None => 1,
        Some(w) => match u32::try_from(*w.get_ref()) {
            Ok(n) if n <= MAX_WEIGHT => n,
            _ => {
                let shown = *w.get_ref();
                return err(
                    w.span(),
                    format!("{real_label}: weight {shown} is out of range 0..65535"),
                );
            }
        },
    };
    let upper_threshold = opt_ranged(
        real.upper_threshold.as_ref(),
        0,
        0,
        MAX_THRESHOLD,
        "upper_threshold",
    )?;
    let lower_threshold = opt_ranged(
        real.lower_threshold.as_ref(),
        0,
        0,
        MAX_THRESHOLD,
        "lower_threshold",
    )?;
    let forward = match &real.forward {
        None => ForwardMethod::Route,
        Some(f) => match forward_method(f, &real_label)? {
            ForwardMethod::Tunnel(_) => ForwardMethod::Tunnel(tunnel_of(real, &real_label)?),
            m => m,
        },
    };
    if !matches!(forward, ForwardMethod::Tunnel(_)) {
        let stray = [
            real.tunnel_type.as_ref().map(|v| v.span()),
            real.tunnel_port.as_ref().map(|v| v.span()),
            real.tunnel_csum.as_ref().map(|v| v.span()),
        ];
        if let Some(span) = stray.into_iter().flatten().next() {
            return err(
                span,
                format!("{real_label}: tunnel_* keys need forward = \"tunnel\""),
            );
        }
    }
    let spec = RealSpec {
        addr,
        port,
        weight,
        forward,
        upper_threshold,
        lower_threshold,
    };
    table
        .add_real(key, spec)
        .map(|_| ())
        .or_else(|e| err(header, format!("{real_label}: {e}")))
}

/// `forward = "..."`: the method a real (or a sorry server) is reached by; tunnelling with
/// IPVS's default encapsulation (IPIP), which a real's `tunnel_*` keys refine.
fn forward_method(f: &Spanned<String>, label: &str) -> Result<ForwardMethod, Located> {
    match f.get_ref().to_ascii_lowercase().as_str() {
        "route" | "dr" | "gate" | "droute" => Ok(ForwardMethod::Route),
        "masq" | "nat" | "masquerading" => Ok(ForwardMethod::Masq),
        "tunnel" | "ipip" | "tun" => Ok(ForwardMethod::IPIP),
        "fullnat" | "fnat" | "full-nat" => Ok(ForwardMethod::FullNat),
        m => err(
            f.span(),
            format!(
                "{label}: forward = \"{m}\" is unknown (expected \"route\" (\"dr\", \"gate\"), \"nat\" (\"masq\"), \"tunnel\" (\"ipip\") or \"fullnat\" (\"fnat\"))"
            ),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Health checks: `[service.health]`, `[service.check]`, `[service.real.check]`.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSvcHealth {
    quiescent: Option<bool>,
    quorum: Option<Spanned<i64>>,
    hysteresis: Option<Spanned<i64>>,
    sorry_server: Option<Spanned<String>>,
    /// How the sorry server is reached; by default as the service's reals are, when they
    /// agree (a NAT service's sorry server is a NAT real), else by direct routing.
    sorry_forward: Option<Spanned<String>>,
    quorum_up: Option<String>,
    quorum_down: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    interval: Option<Spanned<f64>>,
    timeout: Option<Spanned<f64>>,
    retry: Option<Spanned<i64>>,
    delay_before_retry: Option<Spanned<f64>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    alpha: Option<bool>,
    warmup: Option<Spanned<f64>>,
    connect_ip: Option<Spanned<String>>,
    connect_port: Option<Spanned<i64>>,
    method: Option<Spanned<String>>,
    path: Option<String>,
    host: Option<String>,
    status: Option<Spanned<String>>,
    expect: Option<String>,
    regex: Option<Spanned<String>>,
    digest: Option<String>,
    command: Option<String>,
    misc_dynamic: Option<bool>,
    notify_up: Option<String>,
    notify_down: Option<String>,
}

macro_rules! merge_fields {
    ($a:expr, $b:expr, $($f:ident),*) => {
        RawCheck { $($f: $a.$f.clone().or_else(|| $b.$f.clone()),)* }
    };
}

impl RawCheck {
    /// `self`'s keys over `base`'s.
    fn over(&self, base: &RawCheck) -> RawCheck {
        merge_fields!(
            self,
            base,
            kind,
            interval,
            timeout,
            retry,
            delay_before_retry,
            rise,
            fall,
            alpha,
            warmup,
            connect_ip,
            connect_port,
            method,
            path,
            host,
            status,
            expect,
            regex,
            digest,
            command,
            misc_dynamic,
            notify_up,
            notify_down
        )
    }
}

fn secs(
    v: Option<&Spanned<f64>>,
    default: std::time::Duration,
    what: &str,
) -> Result<std::time::Duration, Located> {
    match v {
        None => Ok(default),
        Some(s) => {
            let x = *s.get_ref();
            if !(0.001..=86_400.0).contains(&x) {
                return err(
                    s.span(),
                    format!("{what} = {x} is out of range 0.001..=86400 seconds"),
                );
            }
            Ok(std::time::Duration::from_secs_f64(x))
        }
    }
}

fn build_check(c: &RawCheck) -> Result<crate::health::CheckSpec, Located> {
    use crate::health::{CheckKind, CheckSpec, HttpCheck, fsm::Timing};
    let kind_name = c
        .kind
        .as_ref()
        .map_or("none".to_string(), |k| k.get_ref().to_ascii_lowercase());
    let d = Timing::default();
    let mut http = HttpCheck::default();
    if let Some(m) = &c.method {
        match m.get_ref().to_ascii_uppercase().as_str() {
            v @ ("GET" | "HEAD") => http.method = v.to_string(),
            v => {
                return err(
                    m.span(),
                    format!("check.method = \"{v}\" (expected GET or HEAD)"),
                );
            }
        }
    }
    if let Some(p) = &c.path {
        http.path = if p.starts_with('/') {
            p.clone()
        } else {
            format!("/{p}")
        };
    }
    http.host = c.host.clone();
    if let Some(s) = &c.status {
        http.status = crate::health::parse_status(s.get_ref()).or_else(|e| err(s.span(), e))?;
    }
    http.expect = c.expect.clone();
    if let Some(r) = &c.regex {
        regex::Regex::new(r.get_ref()).or_else(|e| err(r.span(), format!("check.regex: {e}")))?;
        http.regex = Some(r.get_ref().clone());
    }
    http.digest = c.digest.clone();
    let kind = match kind_name.as_str() {
        "none" => CheckKind::None,
        "tcp" => CheckKind::Tcp,
        "http" => CheckKind::Http(http),
        "vip" => CheckKind::ThroughVip,
        "misc" => match &c.command {
            Some(cmd) => CheckKind::Misc {
                command: cmd.clone(),
                dynamic: c.misc_dynamic.unwrap_or(false),
            },
            None => {
                return err(
                    c.kind.as_ref().map_or(0..0, Spanned::span),
                    "check.type = \"misc\" needs check.command",
                );
            }
        },
        other => {
            return err(
                c.kind.as_ref().map_or(0..0, Spanned::span),
                format!(
                    "check.type = \"{other}\" is unknown (expected none, tcp, http, misc or vip)"
                ),
            );
        }
    };
    let retry_default = if matches!(kind, CheckKind::Misc { .. }) {
        0
    } else {
        d.retry
    };
    let timing = Timing {
        interval: secs(c.interval.as_ref(), d.interval, "check.interval")?,
        timeout: secs(c.timeout.as_ref(), d.timeout, "check.timeout")?,
        retry: opt_ranged(c.retry.as_ref(), retry_default, 0, 1000, "check.retry")?,
        delay_before_retry: secs(
            c.delay_before_retry.as_ref(),
            d.delay_before_retry,
            "check.delay_before_retry",
        )?,
        rise: opt_ranged(c.rise.as_ref(), d.rise, 1, 1000, "check.rise")?,
        fall: opt_ranged(c.fall.as_ref(), d.fall, 1, 1000, "check.fall")?,
        alpha: c.alpha.unwrap_or(d.alpha),
        warmup: match &c.warmup {
            None => d.warmup,
            Some(w) if *w.get_ref() == 0.0 => std::time::Duration::ZERO,
            Some(_) => secs(c.warmup.as_ref(), d.warmup, "check.warmup")?,
        },
    };
    let connect_ip = c
        .connect_ip
        .as_ref()
        .map(|a| parse_ipv4(a, "check.connect_ip"))
        .transpose()?;
    let connect_port = c
        .connect_port
        .as_ref()
        .map(|p| ranged(p, 1, 65_535, "check.connect_port").map(|n| n as u16))
        .transpose()?;
    Ok(CheckSpec {
        kind,
        connect_ip,
        connect_port,
        timing,
    })
}

/// The forwarding method every real of service `key` has, or direct routing.
fn shared_forward(table: &ServiceTable, key: &crate::model::ServiceKey) -> ForwardMethod {
    let methods = table.service(key).map(|s| {
        let mut m = s.reals.iter().map(|r| r.forward);
        let first = m.next();
        (first, m.all(|x| Some(x) == first))
    });
    match methods {
        Some((Some(m), true)) => m,
        _ => ForwardMethod::Route,
    }
}

fn health_of(
    table: &ServiceTable,
    spanned: &Spanned<RawService>,
) -> Result<Option<crate::health::ServiceHealth>, Located> {
    use crate::health::{RealHealth, ServiceHealth};
    let svc = spanned.get_ref();
    if svc.health.is_none()
        && svc.check.is_none()
        && svc.real.iter().all(|r| r.get_ref().check.is_none())
    {
        return Ok(None);
    }
    let Some(key) = table.services().last().map(|s| s.key) else {
        return Ok(None);
    };
    let mut h = ServiceHealth::new(key);
    if let Some(sh) = &svc.health {
        h.quiescent = sh.quiescent.unwrap_or(true);
        h.quorum = opt_ranged(sh.quorum.as_ref(), 1, 0, u32::MAX, "health.quorum")?;
        h.hysteresis = opt_ranged(sh.hysteresis.as_ref(), 0, 0, u32::MAX, "health.hysteresis")?;
        h.quorum_up = sh.quorum_up.clone();
        h.quorum_down = sh.quorum_down.clone();
        h.sorry_forward = match &sh.sorry_forward {
            Some(f) => forward_method(f, "health.sorry_forward")?,
            None => shared_forward(table, &key),
        };
        if let Some(s) = &sh.sorry_server {
            h.sorry = Some(
                crate::health::parse_sorry(s.get_ref(), key.port)
                    .or_else(|e| err(s.span(), format!("health.sorry_server: {e}")))?,
            );
        }
    }
    let base = svc.check.clone().unwrap_or_default();
    for r in &svc.real {
        let raw = r.get_ref();
        let merged = raw
            .check
            .as_ref()
            .map_or_else(|| base.clone(), |c| c.over(&base));
        let addr = parse_ipv4(&raw.address, "address")?;
        h.reals.push(RealHealth {
            addr,
            check: build_check(&merged)?,
            notify_up: merged.notify_up.clone(),
            notify_down: merged.notify_down.clone(),
            quiescent: None,
        });
    }
    Ok(Some(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(text: &str) -> Result<DaemonConfig, ConfigError> {
        parse(text, Path::new("uvs.toml"))
    }

    /// Asserts `text` is refused at `line` with a message containing every one of `needles`.
    #[track_caller]
    fn refused(text: &str, line: usize, needles: &[&str]) {
        match p(text) {
            Err(ConfigError::At {
                line: l, message, ..
            }) => {
                assert_eq!(l, line, "wrong line for {message:?}");
                for n in needles {
                    assert!(message.contains(n), "{message:?} lacks {n:?}");
                }
            }
            other => panic!("expected At error, got {other:?}"),
        }
    }

    fn key(proto: Protocol, port: u16) -> ServiceKey {
        ServiceKey {
            proto,
            vip: Ipv4Addr::new(10, 0, 0, 100),
            port,
            fwmark: 0,
        }
    }

    const MINIMAL: &str = include_str!("../../configs/minimal.toml");
    const FULL: &str = include_str!("../../configs/full.toml");

    #[test]
    fn the_sorry_server_follows_the_reals_method_unless_given() {
        let svc = |extra: &str| {
            format!(
                "[[service]]\nvip = \"10.0.0.100\"\nport = 80\n\
                 [service.health]\nsorry_server = \"10.0.0.50:8080\"\n{extra}\
                 [[service.real]]\naddress = \"10.0.0.11\"\nport = 8080\nforward = \"nat\"\n"
            )
        };
        let sorry_forward = |text: &str| p(text).unwrap().health.services[0].sorry_forward;
        assert_eq!(sorry_forward(&svc("")), ForwardMethod::Masq);
        assert_eq!(
            sorry_forward(&svc("sorry_forward = \"dr\"\n")),
            ForwardMethod::Route
        );
        refused(
            &svc("sorry_forward = \"carrier-pigeon\"\n"),
            6,
            &["health.sorry_forward"],
        );
    }

    #[test]
    fn sched_flags_ops_and_template_options() {
        let cfg = p("[flow_table]\nexpire_quiescent_template = true\ntemplate_capacity = 4096\n\
                     [[service]]\nvip = \"10.0.0.100\"\nport = 80\nscheduler = \"mh\"\n\
                     sched_flags = [\"mh-port\"]\n\
                     [[service]]\nprotocol = \"udp\"\nvip = \"10.0.0.100\"\nport = 53\nops = true\n")
        .unwrap();
        assert!(cfg.flow_table.expire_quiescent_template);
        assert_eq!(cfg.flow_table.template_capacity, 4096);
        let svcs = cfg.services.services();
        assert!(svcs[0].sched_flags.mh_port && !svcs[0].ops);
        assert!(svcs[1].ops);
        assert!(p("[[service]]\nvip = \"10.0.0.100\"\nport = 80\nops = true\n").is_err());
        assert!(
            p("[[service]]\nvip = \"10.0.0.100\"\nport = 80\nsched_flags = [\"sh-port\"]\n")
                .is_err()
        );
    }

    #[test]
    fn fwmark_services_and_mark_rules() {
        let cfg = p(
            "[[mark_rule]]\nvip = \"10.0.0.100\"\nports = [80, 443]\nmark = 1\n\
                     [[service]]\nfwmark = 1\nscheduler = \"rr\"\n\
                     [[service.real]]\naddress = \"10.0.0.11\"\n",
        )
        .unwrap();
        let svc = cfg.services.service(&ServiceKey::fwmark(1)).unwrap();
        assert_eq!(svc.reals[0].port, 0);
        assert_eq!(cfg.services.marked_keys().len(), 2);
        assert_eq!(cfg.services.mark_rules()[0].proto, Protocol::Tcp);
        refused(
            "[[service]]\nfwmark = 1\nvip = \"10.0.0.100\"\n",
            2,
            &["a fwmark service has no protocol, vip or port"],
        );
        refused("[[service]]\nfwmark = 0\n", 2, &["fwmark"]);
        refused(
            "[[mark_rule]]\nvip = \"10.0.0.100\"\nports = [80]\nmark = 1\n\
             [[mark_rule]]\nvip = \"10.0.0.100\"\nports = [80]\nmark = 2\n",
            5,
            &["mark_rule:", "already marked"],
        );
        refused(
            "[[mark_rule]]\nvip = \"10.0.0.100\"\nports = [0]\nmark = 1\n",
            3,
            &["ports: 0"],
        );
    }

    #[test]
    fn empty_file_is_the_default_config() {
        assert_eq!(p("").unwrap(), DaemonConfig::default());
    }

    #[test]
    fn full_toml_equals_the_defaults_except_services() {
        let mut cfg = p(FULL).unwrap();
        assert!(!cfg.services.services().is_empty());
        cfg.services = ServiceTable::new();
        // Health keys are per service: full.toml's are the defaults.
        let mut want = crate::health::ServiceHealth::new(key(Protocol::Tcp, 80));
        want.reals.push(crate::health::RealHealth {
            addr: Ipv4Addr::new(10, 0, 0, 11),
            check: crate::health::CheckSpec::default(),
            notify_up: None,
            notify_down: None,
            quiescent: None,
        });
        assert_eq!(cfg.health.services, vec![want]);
        cfg.health = crate::health::HealthConfig::default();
        assert_eq!(cfg, DaemonConfig::default());
    }

    #[test]
    fn full_toml_service_is_complete() {
        let cfg = p(FULL).unwrap();
        let svc = cfg.services.service(&key(Protocol::Tcp, 80)).unwrap();
        assert_eq!(svc.scheduler, SchedulerKind::Rr);
        assert_eq!(svc.persistence_timeout, None);
        assert_eq!(svc.persistence_netmask, Ipv4Addr::BROADCAST);
        assert_eq!(svc.reals.len(), 1);
        assert_eq!(svc.reals[0].weight, 1);
        assert_eq!(svc.proxy_protocol, crate::model::ProxyVersion::Off);
        assert!(svc.local_addrs.is_empty());
    }

    const FULLNAT: &str = r#"workers = 2
[fullnat]
ports = "20000-29999"
[[service]]
vip = "192.168.70.100"
port = 80
scheduler = "rr"
proxy_protocol = "v2"
local_addresses = ["192.168.70.200", { address = "192.168.70.201", interface = "eth0" }]
[service.health]
sorry_server = "10.10.0.50:8080"
[[service.real]]
address = "10.10.0.11"
port = 8080
forward = "fullnat"
[[service.real]]
address = "10.10.0.12"
port = 8080
forward = "FNAT"
"#;

    #[test]
    fn fullnat_services_local_addresses_and_ports() {
        let cfg = p(FULLNAT).unwrap();
        assert_eq!(cfg.fullnat_ports, (20000, 29999));
        let web = ServiceKey::addr(Protocol::Tcp, Ipv4Addr::new(192, 168, 70, 100), 80);
        let svc = cfg.services.service(&web).unwrap();
        assert_eq!(svc.proxy_protocol, crate::model::ProxyVersion::V2);
        assert_eq!(
            svc.local_addrs,
            vec![
                crate::model::LocalAddr {
                    addr: Ipv4Addr::new(192, 168, 70, 200),
                    interface: None
                },
                crate::model::LocalAddr {
                    addr: Ipv4Addr::new(192, 168, 70, 201),
                    interface: Some("eth0".into())
                },
            ]
        );
        let reals: Vec<_> = svc.reals.iter().map(|r| (r.forward, r.port)).collect();
        assert_eq!(
            reals,
            vec![
                (ForwardMethod::FullNat, 8080),
                (ForwardMethod::FullNat, 8080)
            ]
        );
        // The sorry server is reached as the reals are.
        assert_eq!(cfg.health.services[0].sorry_forward, ForwardMethod::FullNat);
        let cfg = p(&FULLNAT.replace("\"20000-29999\"", "[1024, 32767]")).unwrap();
        assert_eq!(cfg.fullnat_ports, (1024, 32767));
        assert_eq!(p("").unwrap().fullnat_ports, (1024, 32767), "the default");
        for alias in ["full-nat", "FullNat"] {
            let text = FULLNAT.replace("\"FNAT\"", &format!("\"{alias}\""));
            assert_eq!(
                p(&text).unwrap().services.services()[0].reals[1].forward,
                ForwardMethod::FullNat
            );
        }
    }

    #[test]
    fn fullnat_refusals_name_line_and_problem() {
        let ports = |v: &str| FULLNAT.replace("\"20000-29999\"", v);
        refused(
            &ports("[2000, 1000]"),
            3,
            &[
                "fullnat.ports = [2000, 1000]",
                "low end 2000 is above the high end 1000",
            ],
        );
        refused(&ports("[0, 10]"), 3, &["port 0 is not a port"]);
        refused(&ports("[1, 70000]"), 3, &["ports are 1..=65535"]);
        refused(&ports("\"1024:2048\""), 3, &["expected [LOW, HIGH]"]);
        refused(&ports("[1, 2, 3]"), 3, &["expected [LOW, HIGH]"]);
        refused(
            &ports("[1000, 1000]").replace("workers = 2", "workers = 4"),
            3,
            &[
                "1 port(s) for 4 workers",
                "each worker needs ports of its own",
            ],
        );
        refused("[fullnat]\nport = [1, 2]\n", 2, &["unknown field `port`"]);
        let svc = |key: &str| FULLNAT.replace("proxy_protocol = \"v2\"", key);
        refused(
            &svc("proxy_protocol = \"v3\""),
            8,
            &["service TCP 192.168.70.100:80: proxy_protocol = \"v3\" is unknown"],
        );
        refused(
            &svc("proxy_protocol = \"v2-insecure\""),
            8,
            &["insecure modes", "not supported"],
        );
        refused(
            "[[service]]\nprotocol = \"udp\"\nvip = \"10.0.0.100\"\nport = 53\nproxy_protocol = \"v1\"\n",
            5,
            &["service UDP 10.0.0.100:53: the PROXY protocol v1 has no UDP"],
        );
        let laddrs = |list: &str| {
            FULLNAT.replace(
                "[\"192.168.70.200\", { address = \"192.168.70.201\", interface = \"eth0\" }]",
                list,
            )
        };
        refused(
            &laddrs("[\"192.168.70.300\"]"),
            9,
            &["local_addresses: \"192.168.70.300\" is not an IPv4 address"],
        );
        refused(&laddrs("[42]"), 9, &["42 is neither an address"]);
        refused(
            &laddrs("[{ addr = \"192.168.70.200\" }]"),
            9,
            &["unknown key `addr`"],
        );
        refused(
            &laddrs("[{ address = \"192.168.70.200\", interface = \"a/b\" }]"),
            9,
            &["illegal interface name \"a/b\""],
        );
        refused(
            &laddrs("[\"192.168.70.200\", \"192.168.70.200\"]"),
            9,
            &["local address 192.168.70.200: Local address already exists"],
        );
        refused(
            &laddrs("[\"127.0.0.1\"]"),
            9,
            &["illegal local address 127.0.0.1"],
        );
        // A local address that is the VIP of a service further down the file.
        refused(
            &format!(
                "{}[[service]]\nvip = \"192.168.70.200\"\nport = 443\n",
                FULLNAT
            ),
            9,
            &["local address 192.168.70.200 is a VIP"],
        );
        refused(
            &FULLNAT.replace("\"FNAT\"", "\"snat\""),
            19,
            &["\"fullnat\" (\"fnat\")"],
        );
    }

    #[test]
    fn minimal_toml_parses_to_the_expected_model() {
        let cfg = p(MINIMAL).unwrap();
        assert_eq!(cfg.interfaces, vec!["eth0".to_string()]);
        let mut want = ServiceTable::new();
        want.add_service(ServiceSpec::new(key(Protocol::Tcp, 80), SchedulerKind::Rr))
            .unwrap();
        for last in [11, 12] {
            want.add_real(
                &key(Protocol::Tcp, 80),
                RealSpec::route(Ipv4Addr::new(10, 0, 0, last), 80),
            )
            .unwrap();
        }
        assert_eq!(cfg.services, want);
    }

    #[test]
    fn every_field_is_read() {
        let cfg = p(r#"
interfaces = ["eth0", "eth1"]
workers = 4
metrics = "0.0.0.0:9100"
kernel_filter = false
[ring]
version = "v2"
block_size = 65536
block_count = 8
block_timeout_ms = 3
frame_size = 4096
busy_poll_us = 2500
coalesce_us = 0
cpu_latency_us = 20
[flow_table]
capacity = 1024
sloppy_tcp = true
[arp]
reachable_secs = 10
retry_ms = 200
garp_repeat = 2
garp_delay_secs = 0
vip_mac = "02:00:5E:00:01:07"
[[service]]
protocol = "udp"
vip = "10.0.0.100"
port = 53
scheduler = "wrr"
persistence_timeout = 600
persistence_netmask = "255.255.255.0"
[[service.real]]
address = "10.0.0.11"
port = 53
weight = 3
upper_threshold = 100
lower_threshold = 50
forward = "gate"
"#)
        .unwrap();
        assert_eq!(cfg.interfaces, ["eth0", "eth1"]);
        assert_eq!(cfg.workers, Some(4));
        assert_eq!(cfg.metrics, "0.0.0.0:9100".parse().ok());
        assert!(!cfg.kernel_filter);
        assert_eq!(
            cfg.ring,
            RingOptions {
                version: RingVersion::V2,
                block_size: 65536,
                block_count: 8,
                block_timeout_ms: 3,
                frame_size: 4096,
                busy_poll_us: 2500,
                coalesce_us: 0,
                cpu_latency_us: Some(20),
            }
        );
        assert_eq!(
            cfg.flow_table,
            FlowTableOptions {
                capacity: 1024,
                sloppy_tcp: true,
                ..FlowTableOptions::default()
            }
        );
        assert_eq!(
            cfg.arp,
            ArpOptions {
                reachable_secs: 10,
                retry_ms: 200,
                garp_repeat: 2,
                garp_delay_secs: 0,
                vip_mac: Some(MacAddr([0x02, 0x00, 0x5e, 0x00, 0x01, 0x07])),
            }
        );
        let svc = cfg.services.service(&key(Protocol::Udp, 53)).unwrap();
        assert_eq!(svc.scheduler, SchedulerKind::Wrr);
        assert_eq!(svc.persistence_timeout, Some(600));
        assert_eq!(svc.persistence_netmask, Ipv4Addr::new(255, 255, 255, 0));
        let r = &svc.reals[0];
        assert_eq!(
            (
                r.addr,
                r.port,
                r.weight,
                r.upper_threshold,
                r.lower_threshold
            ),
            (Ipv4Addr::new(10, 0, 0, 11), 53, 3, 100, 50)
        );
    }

    #[test]
    fn metrics_off_disables_the_exporter() {
        assert_eq!(p("metrics = \"off\"").unwrap().metrics, None);
    }

    #[test]
    fn real_port_defaults_to_the_service_port() {
        let cfg = p("[[service]]\nvip = \"10.0.0.100\"\nport = 8080\nscheduler = \"rr\"\n[[service.real]]\naddress = \"10.0.0.11\"\n").unwrap();
        let svc = cfg.services.service(&key(Protocol::Tcp, 8080)).unwrap();
        assert_eq!(svc.reals[0].port, 8080);
        assert_eq!(svc.key.proto, Protocol::Tcp);
    }

    #[test]
    fn syntax_and_unknown_keys_are_refused_with_their_line() {
        refused("workers = 2\n\nbogus = 1\n", 3, &["unknown field", "bogus"]);
        refused(
            "[ring]\nblock_size = 4096\nblok_count = 2\n",
            3,
            &["blok_count"],
        );
        refused("interfaces = [\"eth0\"\nworkers = 1\n", 2, &["comma"]);
        refused("\n\nworkers = \"two\"\n", 3, &["invalid type"]);
        refused("[ring]\nversion = \"v4\"\n", 2, &["v4"]);
        refused("[[service]]\nport = 80\n", 1, &["missing field", "vip"]);
        refused(
            "[[service]]\nvip = \"10.0.0.1\"\nport = 80\n[[service.real]]\naddress = \"10.0.0.2\"\nweight = 1\ncolour = 1\n",
            7,
            &["colour"],
        );
    }

    #[test]
    fn bad_values_are_refused_at_their_key() {
        refused("\nworkers = 0\n", 2, &["workers", "1..=256"]);
        refused("workers = 257\n", 1, &["workers"]);
        refused("workers = -1\n", 1, &["workers"]);
        refused("metrics = \"localhost\"\n", 1, &["metrics", "localhost"]);
        refused("interfaces = [\"eth0\",\n  \"\"]\n", 2, &["empty"]);
        refused(
            "interfaces = [\"averyveryverylongname\"]\n",
            1,
            &["longer than 15"],
        );
        refused(
            "[ring]\nblock_size = 12288\n",
            2,
            &["block_size", "power of two"],
        );
        refused("[ring]\nblock_size = 2048\n", 2, &["block_size"]);
        refused("[ring]\nblock_count = 1\n", 2, &["block_count"]);
        refused(
            "[arp]\nvip_mac = \"01:00:5e:00:00:01\"\n",
            2,
            &["arp.vip_mac", "not a unicast address"],
        );
        refused(
            "[arp]\nvip_mac = \"00:00:00:00:00:00\"\n",
            2,
            &["arp.vip_mac", "not a unicast address"],
        );
        refused(
            "[arp]\nvip_mac = \"02:00:5e\"\n",
            2,
            &["arp.vip_mac", "not a MAC address"],
        );
        refused("[ring]\nblock_timeout_ms = 0\n", 2, &["block_timeout_ms"]);
        refused(
            "[ring]\nframe_size = 1000\n",
            2,
            &["frame_size", "power of two"],
        );
        refused("[ring]\nframe_size = 128\n", 2, &["frame_size"]);
        refused(
            "[ring]\nbusy_poll_us = 2000000\n",
            2,
            &["ring.busy_poll_us", "1000000"],
        );
        refused("[ring]\nbusy_poll_us = -1\n", 2, &["ring.busy_poll_us"]);
        refused(
            "[ring]\ncoalesce_us = 20000\n",
            2,
            &["ring.coalesce_us", "10000"],
        );
        refused("[ring]\ncoalesce_us = -5\n", 2, &["ring.coalesce_us"]);
        refused(
            "[ring]\ncpu_latency_us = 2000000\n",
            2,
            &["ring.cpu_latency_us", "1000000"],
        );
        refused("[ring]\ncpu_latency_us = -1\n", 2, &["ring.cpu_latency_us"]);
        refused(
            "[ring]\nblock_size = 4096\n\nframe_size = 8192\n",
            4,
            &["frame_size", "block_size"],
        );
        refused(
            "[flow_table]\ncapacity = 1023\n",
            2,
            &["flow_table.capacity", "1024"],
        );
        refused(
            "[flow_table]\ncapacity = 134217729\n",
            2,
            &["flow_table.capacity"],
        );
        refused("[arp]\nretry_ms = 0\n", 2, &["arp.retry_ms"]);
    }

    const SVC: &str = "[[service]]\nvip = \"10.0.0.100\"\nport = 80\nscheduler = \"rr\"\n";

    #[test]
    fn service_errors_point_at_the_service() {
        refused(
            "workers = 1\n\n[[service]]\nvip = \"10.0.0.100\"\nport = 0\n",
            5,
            &["port = 0 is out of range"],
        );
        refused(
            &format!("{SVC}\n{SVC}"),
            6,
            &["service TCP 10.0.0.100:80: Service already exists"],
        );
        refused(
            "[[service]]\nvip = \"10.0.0.100\"\nport = 80\nscheduler = \"roundrobin\"\n",
            4,
            &["Scheduler not found", "roundrobin"],
        );
        refused(
            "[[service]]\nvip = \"10.0.0.300\"\nport = 80\n",
            2,
            &["vip", "10.0.0.300"],
        );
        refused("[[service]]\nvip = \"::1\"\nport = 80\n", 2, &["IPv6"]);
        refused(
            "[[service]]\nvip = \"10.0.0.1\"\nport = 0\n",
            3,
            &["port", "1..=65535"],
        );
        refused(
            "[[service]]\nvip = \"10.0.0.1\"\nport = 65536\n",
            3,
            &["port"],
        );
        refused(
            "[[service]]\nprotocol = \"icmp\"\nvip = \"10.0.0.1\"\nport = 1\n",
            2,
            &["icmp"],
        );
        refused(
            &format!("{SVC}persistence_timeout = 0\n"),
            5,
            &["persistence_timeout"],
        );
        refused(
            &format!("{SVC}persistence_netmask = \"255.255.255\"\n"),
            5,
            &["persistence_netmask"],
        );
    }

    #[test]
    fn real_errors_point_at_the_real() {
        let real = "[[service.real]]\naddress = \"10.0.0.11\"\n";
        refused(
            &format!("{SVC}{real}{real}"),
            7,
            &["service TCP 10.0.0.100:80: real 10.0.0.11:80: Destination already exists"],
        );
        refused(
            &format!("{SVC}{real}weight = 65536\n"),
            7,
            &["weight 65536 is out of range"],
        );
        refused(&format!("{SVC}{real}weight = -1\n"), 7, &["weight -1"]);
        refused(
            &format!("{SVC}{real}forward = \"tunnel\"\ntunnel_type = \"gue\"\n"),
            8,
            &["You need to supply the 'tun-port' option for the 'gue' tunnel type"],
        );
        refused(
            &format!("{SVC}{real}forward = \"ipip\"\ntunnel_type = \"vxlan\"\n"),
            8,
            &["tunnel_type", "vxlan"],
        );
        refused(
            &format!("{SVC}{real}tunnel_port = 6080\n"),
            7,
            &["need forward = \"tunnel\""],
        );
        refused(
            &format!("{SVC}{real}forward = \"magic\"\n"),
            7,
            &["magic", "unknown"],
        );
        refused(&format!("{SVC}{real}port = 0\n"), 7, &["port"]);
        refused(
            &format!("{SVC}{real}upper_threshold = 70000\n"),
            7,
            &["upper_threshold"],
        );
        refused(
            &format!("{SVC}[[service.real]]\naddress = \"10.0.0\"\n"),
            6,
            &["address", "10.0.0"],
        );
    }

    #[test]
    fn tunnelling_reals_take_their_encapsulation() {
        let real = "[[service.real]]\naddress = \"10.0.9.2\"\nport = 8080\n";
        let forward = |extra: &str| {
            let c = p(&format!("{SVC}{real}{extra}")).unwrap();
            let r = &c.services.services()[0].reals[0];
            (r.forward, r.port)
        };
        assert_eq!(forward("forward = \"tunnel\"\n"), (ForwardMethod::IPIP, 80));
        assert_eq!(
            forward(
                "forward = \"ipip\"\ntunnel_type = \"gue\"\ntunnel_port = 6080\ntunnel_csum = \"remcsum\"\n"
            ),
            (
                ForwardMethod::Tunnel(Tunnel {
                    kind: TunnelKind::Gue,
                    port: 6080,
                    csum: TunnelCsum::RemCsum
                }),
                80
            )
        );
        assert_eq!(
            forward("forward = \"tun\"\ntunnel_type = \"gre\"\ntunnel_csum = \"csum\"\n").0,
            ForwardMethod::Tunnel(Tunnel {
                kind: TunnelKind::Gre,
                port: 0,
                csum: TunnelCsum::Csum
            })
        );
    }

    #[test]
    fn load_reports_unreadable_files() {
        assert!(matches!(
            load(Path::new("/nonexistent/uvs.toml")),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn line_of_counts_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a\nb\nc", 400), 3);
    }

    proptest! {
        #[test]
        fn random_text_never_panics(text in "\\PC*") {
            let _ = p(&text);
        }

        #[test]
        fn random_toml_shaped_text_never_panics(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("[[service]]".to_string()),
                    Just("[[service.real]]".to_string()),
                    Just("[ring]".to_string()),
                    Just("[arp]".to_string()),
                    Just("[flow_table]".to_string()),
                    "(vip|address|port|weight|workers|scheduler|forward|frame_size|block_size|capacity|metrics|interfaces) = (-?[0-9]{1,12}|\"[a-z0-9.:]{0,20}\"|\\[\\])",
                ],
                0..20,
            )
        ) {
            let text = lines.join("\n");
            if let Err(ConfigError::At { line, .. }) = p(&text) {
                prop_assert!(line >= 1 && line <= lines.len().max(1));
            }
        }
    }
}
