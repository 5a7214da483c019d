//! Validated, owned control-plane types: what ipvsadm talks about.
//!
//! Nothing here knows about packets, rings or threads. The control thread owns one
//! [`ServiceTable`]; every change goes through its methods, which either apply the whole
//! change or return a [`ModelError`] and leave the table as it was.
//!
//! Invariant: a [`RealId`] is stable for the life of a real server and never reused while the
//! daemon runs, so a flow-table entry that names a deleted real can never be mistaken for a
//! new one. `0` is never a valid id (`RealId` wraps a `NonZeroU32`, so `Option<RealId>` is free).

pub mod change;

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::num::NonZeroU32;
use std::sync::Arc;

/// Transport protocol of a virtual service (`-t` / `-u` in ipvsadm).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IANA protocol number, as it appears in the IPv4 header.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => crate::wire::IPPROTO_TCP,
            Protocol::Udp => crate::wire::IPPROTO_UDP,
        }
    }

    pub const fn from_number(n: u8) -> Option<Protocol> {
        match n {
            crate::wire::IPPROTO_TCP => Some(Protocol::Tcp),
            crate::wire::IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// Name as ipvsadm prints it (`TCP`, `UDP`).
    pub const fn ipvsadm_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// A virtual service: protocol, VIP and port (`-t`/`-u`), or a firewall mark (`-f`).
///
/// `fwmark == 0` is an address service. A nonzero `fwmark` is a fwmark service: its
/// `proto`/`vip`/`port` are the placeholders of [`ServiceKey::fwmark`] (TCP, 0.0.0.0, 0), so two
/// keys of the same mark are always equal. Which packets carry the mark is decided by the
/// table's [`MarkRule`]s (uvs's stand-in for `iptables … -j MARK --set-mark N`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ServiceKey {
    pub proto: Protocol,
    pub vip: Ipv4Addr,
    pub port: u16,
    /// 0 = address service; otherwise the mark of a fwmark service.
    #[serde(default)]
    pub fwmark: u32,
}

impl ServiceKey {
    /// An address service (`-t`/`-u VIP:PORT`).
    pub const fn addr(proto: Protocol, vip: Ipv4Addr, port: u16) -> ServiceKey {
        ServiceKey {
            proto,
            vip,
            port,
            fwmark: 0,
        }
    }

    /// The fwmark service `-f mark` (canonical placeholders for the address fields).
    pub const fn fwmark(mark: u32) -> ServiceKey {
        ServiceKey {
            proto: Protocol::Tcp,
            vip: Ipv4Addr::UNSPECIFIED,
            port: 0,
            fwmark: mark,
        }
    }

    pub const fn is_fwmark(&self) -> bool {
        self.fwmark != 0
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.fwmark != 0 {
            return write!(f, "FWM  {}", self.fwmark);
        }
        write!(
            f,
            "{} {}:{}",
            self.proto.ipvsadm_name(),
            self.vip,
            self.port
        )
    }
}

/// uvs's stand-in for the tutorials' `iptables -t mangle -A PREROUTING -d VIP -p PROTO -m
/// multiport --dports PORTS -j MARK --set-mark MARK`: packets to `vip` with protocol `proto` and
/// a destination port in `ports` belong to the fwmark service `mark` (if one is configured).
/// A (protocol, VIP, port) is covered by at most one rule. Mark rules win over an address
/// service with the same (protocol, VIP, port), as IPVS looks fwmark services up first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MarkRule {
    pub proto: Protocol,
    pub vip: Ipv4Addr,
    /// Destination ports, nonzero, in the order given (duplicates removed).
    pub ports: Vec<u16>,
    pub mark: u32,
}

impl MarkRule {
    /// Same rule: same mark, protocol, VIP and set of ports (order does not matter).
    fn same(&self, other: &MarkRule) -> bool {
        let mut a = self.ports.clone();
        let mut b = other.ports.clone();
        a.sort_unstable();
        b.sort_unstable();
        self.mark == other.mark && self.proto == other.proto && self.vip == other.vip && a == b
    }
}

impl fmt::Display for MarkRule {
    /// uvsadm's syntax: `--add-mark 1 -t 10.0.0.100:80,443`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = match self.proto {
            Protocol::Tcp => "-t",
            Protocol::Udp => "-u",
        };
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        write!(
            f,
            "--add-mark {} {flag} {}:{}",
            self.mark,
            self.vip,
            ports.join(",")
        )
    }
}

/// Scheduler names exactly as `ipvsadm -s` spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SchedulerKind {
    Rr,
    Wrr,
    Lc,
    Wlc,
    Lblc,
    Lblcr,
    Dh,
    Sh,
    Sed,
    Nq,
    Fo,
    Ovf,
    Mh,
    Twos,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 14] = [
        SchedulerKind::Rr,
        SchedulerKind::Wrr,
        SchedulerKind::Lc,
        SchedulerKind::Wlc,
        SchedulerKind::Lblc,
        SchedulerKind::Lblcr,
        SchedulerKind::Dh,
        SchedulerKind::Sh,
        SchedulerKind::Sed,
        SchedulerKind::Nq,
        SchedulerKind::Fo,
        SchedulerKind::Ovf,
        SchedulerKind::Mh,
        SchedulerKind::Twos,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            SchedulerKind::Rr => "rr",
            SchedulerKind::Wrr => "wrr",
            SchedulerKind::Lc => "lc",
            SchedulerKind::Wlc => "wlc",
            SchedulerKind::Lblc => "lblc",
            SchedulerKind::Lblcr => "lblcr",
            SchedulerKind::Dh => "dh",
            SchedulerKind::Sh => "sh",
            SchedulerKind::Sed => "sed",
            SchedulerKind::Nq => "nq",
            SchedulerKind::Fo => "fo",
            SchedulerKind::Ovf => "ovf",
            SchedulerKind::Mh => "mh",
            SchedulerKind::Twos => "twos",
        }
    }

    /// Parses an ipvsadm scheduler name. Unknown names are an error that lists the known ones.
    pub fn parse(name: &str) -> Result<SchedulerKind, ModelError> {
        SchedulerKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| ModelError::UnknownScheduler(name.to_string()))
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Forwarding method of a real server (ipvsadm `-g`, `-m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ForwardMethod {
    /// Direct routing (`-g`, "Route"): only the MAC addresses change; the real server has the
    /// VIP on a loopback and answers the client directly.
    Route,
    /// Masquerading, LVS-NAT (`-m`, "Masq"): destination address and port rewritten to the
    /// real's, and the replies, routed back through the director, rewritten to come from the
    /// VIP.
    Masq,
    /// Tunnelling, LVS-TUN (`-i`, "Tunnel"): the client's packet, unchanged but for its TTL,
    /// inside a new IP header to the real (IPIP, GUE or GRE); the real decapsulates it and
    /// answers the client directly, so it may be on any network the director can route to.
    Tunnel(Tunnel),
    /// FullNAT (`--fullnat`, "FullNat", DPVS's method): source and destination rewritten,
    /// `CIP:cport → VIP:vport` becoming `LIP:lport → RIP:rport` with a local address of the
    /// service's; the real answers the local address, so it needs no change at all and may be
    /// anywhere the director can route to. The client's address reaches it by the PROXY
    /// protocol when the service asks for it.
    FullNat,
}

impl ForwardMethod {
    /// Whether the real's port may differ from the service's (IPVS: only NAT rewrites ports;
    /// FullNAT too).
    pub fn maps_ports(self) -> bool {
        matches!(self, ForwardMethod::Masq | ForwardMethod::FullNat)
    }

    /// Tunnelling with IPVS's defaults: IPIP (`-i` alone).
    pub const IPIP: ForwardMethod = ForwardMethod::Tunnel(Tunnel::IPIP);
}

/// The encapsulation of a tunnelling real (ipvsadm `--tun-type`, `--tun-port`,
/// `--tun-nocsum|--tun-csum|--tun-remcsum`; the kernel's `tun_type`, `tun_port`,
/// `tun_flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Tunnel {
    pub kind: TunnelKind,
    /// GUE's UDP destination port (mandatory for GUE, 0 for the others).
    pub port: u16,
    pub csum: TunnelCsum,
}

/// `--tun-type`: the kernel's `IP_VS_CONN_F_TUNNEL_TYPE_*`, in its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TunnelKind {
    /// IP in IP (protocol 4), the default: the real's `tunl0` decapsulates it.
    Ipip,
    /// Generic UDP Encapsulation to `port` (the real's `ip fou add port N gue`).
    Gue,
    /// GRE (protocol 47), no key or sequence number (the real's `gre0`).
    Gre,
}

/// The tunnel checksum (`IP_VS_TUNNEL_ENCAP_FLAG_*`, which ipvsadm prints by index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TunnelCsum {
    /// `--tun-nocsum`, the default: GUE's UDP checksum 0, GRE without its checksum field.
    NoCsum,
    /// `--tun-csum`: GUE's UDP checksum, or GRE's checksum field (C bit).
    Csum,
    /// `--tun-remcsum` (GUE only): UDP checksum, and the inner transport checksum left for the
    /// real to complete (remote checksum offload) when it is still partial.
    RemCsum,
}

impl Tunnel {
    pub const IPIP: Tunnel = Tunnel {
        kind: TunnelKind::Ipip,
        port: 0,
        csum: TunnelCsum::NoCsum,
    };

    /// ipvsadm's `tunnel_types_v_options` table: GUE needs a port; IPIP takes neither port
    /// nor checksum option; GRE takes no port and no remote checksum.
    pub fn check(self) -> Result<(), ModelError> {
        let bad = |what| Err(ModelError::TunnelOption(what, self.kind.name()));
        match self.kind {
            TunnelKind::Ipip if self.port != 0 => bad("tun-port"),
            TunnelKind::Ipip if self.csum != TunnelCsum::NoCsum => bad(self.csum.option()),
            TunnelKind::Gue if self.port == 0 => Err(ModelError::TunnelPortMissing),
            TunnelKind::Gre if self.port != 0 => bad("tun-port"),
            TunnelKind::Gre if self.csum == TunnelCsum::RemCsum => bad("tun-remcsum"),
            _ => Ok(()),
        }
    }
}

impl TunnelKind {
    /// ipvsadm's `tunnames`.
    pub fn name(self) -> &'static str {
        match self {
            TunnelKind::Ipip => "ipip",
            TunnelKind::Gue => "gue",
            TunnelKind::Gre => "gre",
        }
    }

    pub fn parse(name: &str) -> Option<TunnelKind> {
        [TunnelKind::Ipip, TunnelKind::Gue, TunnelKind::Gre]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

impl TunnelCsum {
    /// The option that sets it, without its dashes (ipvsadm's `tun_flags_opts`).
    pub fn option(self) -> &'static str {
        match self {
            TunnelCsum::NoCsum => "tun-nocsum",
            TunnelCsum::Csum => "tun-csum",
            TunnelCsum::RemCsum => "tun-remcsum",
        }
    }

    /// ipvsadm's `tunflags`, as `--tun-info` shows them.
    pub fn short(self) -> &'static str {
        match self {
            TunnelCsum::NoCsum => "-c",
            TunnelCsum::Csum => "+c",
            TunnelCsum::RemCsum => "r+c",
        }
    }
}

/// Stable identity of a real server inside one daemon's lifetime (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RealId(pub NonZeroU32);

impl RealId {
    pub fn index(self) -> usize {
        self.0.get() as usize
    }
}

/// Largest weight ipvsadm accepts (`-w 0..65535`).
pub const MAX_WEIGHT: u32 = 65535;

/// A real server as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealServer {
    pub id: RealId,
    pub addr: Ipv4Addr,
    /// The port the real listens on: NAT may map it; for direct routing it is always the
    /// service port: ipvsadm forces it
    /// ("The destination port must be equal to service port … DROUTE"), because DR never
    /// rewrites the packet above layer 2, so a different port could never be honoured.
    /// Fwmark services keep the port given (normally 0), as ipvsadm does; DR ignores it.
    pub port: u16,
    pub weight: u32,
    /// The last non-zero weight (IPVS `last_weight`): `mh` keeps a quiesced real's table
    /// slots with it, so setting weight 0 and back does not reshuffle other flows.
    pub last_weight: u32,
    pub forward: ForwardMethod,
    /// `-x`: 0 = no upper connection threshold.
    pub upper_threshold: u32,
    /// `-y`: 0 = no lower connection threshold.
    pub lower_threshold: u32,
}

/// Per-service scheduler flags (`ipvsadm -b`). The kernel has three anonymous bits
/// (`IP_VS_SVC_F_SCHED1..3`); `sh` and `mh` give the first two a meaning each. Defined here so
/// the model does not depend on the schedulers; parsing and printing live in `crate::sched`,
/// which re-exports it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct SchedFlags {
    /// `sh`: probe further buckets when the hashed real is unusable (SCHED1).
    pub sh_fallback: bool,
    /// `sh`: hash the source port too (SCHED2).
    pub sh_port: bool,
    /// `mh`: probe further when the hashed real is unusable (SCHED1).
    pub mh_fallback: bool,
    /// `mh`: hash the source port too (SCHED2).
    pub mh_port: bool,
}

/// A virtual service with its real servers, in the order they were added (IPVS's tie-break
/// order: "ties go to the earliest destination in the service's list").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualService {
    pub key: ServiceKey,
    pub scheduler: SchedulerKind,
    /// `-p [timeout]` in seconds; `None` = not persistent.
    pub persistence_timeout: Option<u32>,
    /// `-M`: persistence granularity netmask.
    pub persistence_netmask: Ipv4Addr,
    /// `-b`: scheduler flags.
    pub sched_flags: SchedFlags,
    /// `-o`: one-packet scheduling (UDP only): every datagram is scheduled, no entry is kept.
    pub ops: bool,
    /// `--proxy-protocol`: the header FullNAT reals get before the client's first byte.
    pub proxy_protocol: ProxyVersion,
    /// FullNAT local addresses (`--add-laddr -z LIP [-F IF]`), in the order added. None: the
    /// director's own address towards each real.
    pub local_addrs: Vec<LocalAddr>,
    pub reals: Vec<RealServer>,
}

/// A FullNAT local address of a service: the source its requests to the reals leave from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct LocalAddr {
    pub addr: Ipv4Addr,
    /// `-F IFNAME`: the interface it is on (DPVS's `ifname`); informative, as uvs answers ARP
    /// for it on every served interface.
    pub interface: Option<String>,
}

impl LocalAddr {
    /// A local address is the source of the director's packets to the reals, and their
    /// replies come back to it: it must be an address one host may own.
    pub fn check_addr(addr: Ipv4Addr) -> Result<(), ModelError> {
        if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback()
        {
            return Err(ModelError::BadLocalAddr(addr));
        }
        Ok(())
    }

    /// `-F IFNAME`: what Linux accepts as an interface name (1..=15 bytes, `IFNAMSIZ`; no
    /// `/`, blank, or the names `.` and `..`), so a saved `-S` line reads back as it was.
    pub fn check_interface(name: &str) -> Result<(), ModelError> {
        let bad = name.is_empty()
            || name.len() > MAX_IFNAME_LEN
            || name == "."
            || name == ".."
            || name
                .chars()
                .any(|c| c == '/' || c.is_whitespace() || c.is_control());
        if bad {
            return Err(ModelError::BadInterface(name.to_string()));
        }
        Ok(())
    }

    pub fn check(&self) -> Result<(), ModelError> {
        Self::check_addr(self.addr)?;
        match &self.interface {
            Some(name) => Self::check_interface(name),
            None => Ok(()),
        }
    }
}

/// Linux `IFNAMSIZ` − 1.
pub const MAX_IFNAME_LEN: usize = 15;

pub use crate::proxy_protocol::Version as ProxyVersion;

/// Distinct FullNAT local addresses a table may have, all services together (each costs every
/// worker a port pool).
pub const MAX_LOCAL_ADDRS: usize = 256;

/// What an operator asks for when adding or editing a real server (no id yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RealSpec {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub forward: ForwardMethod,
    pub upper_threshold: u32,
    pub lower_threshold: u32,
}

impl RealSpec {
    /// A direct-routing real with ipvsadm's defaults (`-g -w 1`, no thresholds).
    pub fn route(addr: Ipv4Addr, port: u16) -> RealSpec {
        RealSpec {
            addr,
            port,
            weight: 1,
            forward: ForwardMethod::Route,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    /// A tunnelling real with ipvsadm's defaults (`-i -w 1`, IPIP).
    pub fn tunnel(addr: Ipv4Addr, port: u16) -> RealSpec {
        RealSpec {
            forward: ForwardMethod::IPIP,
            ..RealSpec::route(addr, port)
        }
    }

    /// A masquerading (NAT) real with ipvsadm's defaults (`-m -w 1`); `port` 0 = the
    /// service's.
    pub fn masq(addr: Ipv4Addr, port: u16) -> RealSpec {
        RealSpec {
            forward: ForwardMethod::Masq,
            ..RealSpec::route(addr, port)
        }
    }
}

/// What an operator asks for when adding or editing a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceSpec {
    pub key: ServiceKey,
    pub scheduler: SchedulerKind,
    pub persistence_timeout: Option<u32>,
    pub persistence_netmask: Ipv4Addr,
    pub sched_flags: SchedFlags,
    pub ops: bool,
    /// `--proxy-protocol v1|v2|disable` (FullNAT reals only). Absent from older clients.
    #[serde(default)]
    pub proxy_protocol: ProxyVersion,
}

impl ServiceSpec {
    /// A service with ipvsadm's defaults: not persistent, netmask /32, no flags, no OPS, no
    /// PROXY protocol.
    pub fn new(key: ServiceKey, scheduler: SchedulerKind) -> ServiceSpec {
        ServiceSpec {
            key,
            scheduler,
            persistence_timeout: None,
            persistence_netmask: Ipv4Addr::BROADCAST,
            sched_flags: SchedFlags::default(),
            ops: false,
            proxy_protocol: ProxyVersion::Off,
        }
    }

    /// ipvsadm's check: "One-Packet Scheduling is only for UDP virtual services".
    fn check(&self) -> Result<(), ModelError> {
        // A fwmark service may carry UDP: OPS then applies to its UDP packets (as in IPVS).
        if self.ops && self.key.proto != Protocol::Udp && !self.key.is_fwmark() {
            return Err(ModelError::OpsNotUdp(self.key));
        }
        if self.proxy_protocol == ProxyVersion::V1 && self.key.proto == Protocol::Udp {
            return Err(ModelError::ProxyV1Udp);
        }
        Ok(())
    }
}

/// Why a change to the service table was refused. Messages follow ipvsadm's wording where
/// ipvsadm has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("Service already exists")]
    ServiceExists(ServiceKey),
    #[error("Service not defined")]
    NoService(ServiceKey),
    #[error("Destination already exists")]
    RealExists(ServiceKey, Ipv4Addr, u16),
    #[error("No such destination")]
    NoReal(ServiceKey, Ipv4Addr, u16),
    #[error(
        "Scheduler not found: '{0}' (known: rr wrr lc wlc lblc lblcr dh sh sed nq fo ovf mh twos)"
    )]
    UnknownScheduler(String),
    #[error("weight {0} is out of range 0..65535")]
    WeightOutOfRange(u64),
    #[error("port 0 is not supported for a TCP/UDP service yet")]
    ZeroPort(ServiceKey),
    #[error("too many real servers (limit {0})")]
    TooManyReals(usize),
    #[error("One-Packet Scheduling is only for UDP virtual services")]
    OpsNotUdp(ServiceKey),
    #[error("a mark rule needs a nonzero mark and at least one nonzero port")]
    BadMarkRule,
    #[error("{0} port {1} of {2} is already marked by a rule with mark {3}")]
    MarkPortTaken(&'static str, u16, Ipv4Addr, u32),
    #[error("No such mark rule")]
    NoMarkRule,
    #[error("Illegal '{0}' option with the '{1}' tunnel type")]
    TunnelOption(&'static str, &'static str),
    #[error("You need to supply the 'tun-port' option for the 'gue' tunnel type")]
    TunnelPortMissing,
    #[error("the PROXY protocol v1 has no UDP: use v2 for a UDP service")]
    ProxyV1Udp,
    // DPVS's words (its libipvs `ipvs_strerror`), capital L included.
    #[error("Local address already exists")]
    LocalAddrExists(Ipv4Addr),
    #[error("No such Local address")]
    NoLocalAddr(Ipv4Addr),
    #[error("too many local addresses (limit {0})")]
    TooManyLocalAddrs(usize),
    #[error("local address {0} is a VIP: replies to it would be taken for requests")]
    LocalAddrIsVip(Ipv4Addr),
    #[error(
        "illegal local address {0}: a local address is a unicast address (not 0.0.0.0, 255.255.255.255, multicast or loopback)"
    )]
    BadLocalAddr(Ipv4Addr),
    #[error("illegal interface name {0:?}: 1 to 15 characters, no '/' or blank")]
    BadInterface(String),
}

/// One more (`up`) or one fewer real at `addr`.
fn count(counts: &mut HashMap<Ipv4Addr, u32>, addr: Ipv4Addr, up: bool) {
    if up {
        *counts.entry(addr).or_default() += 1;
    } else if let Some(n) = counts.get_mut(&addr) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(&addr);
        }
    }
}

/// The port a real gets. Direct routing: the service port, as ipvsadm forces it ("The
/// destination port must be equal to service port … DROUTE"), except in a fwmark service,
/// where ipvsadm keeps the given port ("Don't worry about this if fwmark is used"; usually 0).
/// NAT maps ports: the given one, or the service port when none is given (port 0).
fn real_port(key: &ServiceKey, given: u16, method: ForwardMethod) -> u16 {
    let keeps_given = key.is_fwmark() || (method.maps_ports() && given != 0);
    if keeps_given { given } else { key.port }
}

/// Upper bound on real servers alive at once (a real that serves N services counts N times,
/// as in IPVS, where each is a destination of its own). Real ids are never reused and the
/// per-real counters cover 2^16 ids over the daemon's life (`conns`, `datapath::counters`), so
/// this leaves room for changes after loading a table this large.
pub const MAX_REALS: usize = 1 << 15;

/// The whole configured state: services in the order they were added.
///
/// Services are shared (`Arc`) so that copying the table, and a change to one service, cost
/// what that one service costs: an edit copies the service it edits (copy-on-write) and leaves
/// the others shared with every earlier copy of the table. A lookup by key is a hash lookup
/// and a binary search: each service carries the sequence number it was added with, which
/// stays valid when services before it go (a position would not, and renumbering 10,000
/// positions is what deleting the first service would then cost).
#[derive(Clone, Debug, Default, Eq)]
pub struct ServiceTable {
    services: Vec<Arc<VirtualService>>,
    /// Sequence number of each service in `services`, at the same position (ascending).
    seqs: Vec<u64>,
    /// Sequence number of each service.
    by_key: HashMap<ServiceKey, u64>,
    next_seq: u64,
    next_real_id: u32,
    /// Reals of every service, counted as they are added and removed.
    live_reals: usize,
    /// Reals (of any service) at each address: which addresses ARP must resolve, without
    /// going through every service.
    real_addrs: HashMap<Ipv4Addr, u32>,
    /// Mark rules, in the order they were added. `-C` leaves them alone, as `ipvsadm -C`
    /// leaves iptables' mangle rules alone.
    mark_rules: Vec<MarkRule>,
}

/// What one accepted change overwrote, so that a list of changes applied in place can be
/// taken back (`change::AdminState::apply_in_place`). Undone in reverse order, each entry
/// finds the table exactly as the change left it.
#[derive(Debug)]
pub(crate) enum Undo {
    /// The service at this position was edited: the previous version.
    Replaced(usize, Arc<VirtualService>),
    /// A service was appended.
    Appended,
    /// The service at this position, with this sequence number, was deleted.
    Removed(usize, u64, Arc<VirtualService>),
    /// Every service (`-C`), with their sequence numbers, the key index and the real
    /// addresses' counts.
    Cleared(
        Vec<Arc<VirtualService>>,
        Vec<u64>,
        HashMap<ServiceKey, u64>,
        HashMap<Ipv4Addr, u32>,
    ),
    /// The mark rules before a mark-rule change.
    MarkRules(Vec<MarkRule>),
}

/// Two tables are equal when they hold the same services in the same order, the same mark
/// rules and counters, however they came to (sequence numbers are bookkeeping).
impl PartialEq for ServiceTable {
    fn eq(&self, other: &ServiceTable) -> bool {
        self.services == other.services
            && self.mark_rules == other.mark_rules
            && self.next_real_id == other.next_real_id
            && self.live_reals == other.live_reals
    }
}

/// What the undo journal restores whole after a list of changes: the real-id and service
/// sequence counters and the count of live reals.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Counters {
    next_real_id: u32,
    live_reals: usize,
    next_seq: u64,
}

impl ServiceTable {
    pub fn new() -> ServiceTable {
        ServiceTable::default()
    }

    /// Whether some service has a real at `addr`.
    pub fn has_real_at(&self, addr: Ipv4Addr) -> bool {
        self.real_addrs.contains_key(&addr)
    }

    fn count_reals(&mut self, svc: &VirtualService, up: bool) {
        for r in &svc.reals {
            count(&mut self.real_addrs, r.addr, up);
        }
    }

    /// Position of a service in `services`.
    fn position(&self, key: &ServiceKey) -> Option<usize> {
        let seq = self.by_key.get(key)?;
        self.seqs.binary_search(seq).ok()
    }

    pub fn services(&self) -> &[Arc<VirtualService>] {
        &self.services
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&VirtualService> {
        self.position(key)
            .and_then(|i| self.services.get(i))
            .map(|s| &**s)
    }

    /// The service by key, shared (what a snapshot keeps to tell whether it changed).
    pub fn shared_service(&self, key: &ServiceKey) -> Option<&Arc<VirtualService>> {
        self.position(key).and_then(|i| self.services.get(i))
    }

    /// Copy-on-write: the service is copied only if an earlier copy of the table shares it.
    fn service_mut(&mut self, key: &ServiceKey) -> Result<&mut VirtualService, ModelError> {
        let i = self.position(key).ok_or(ModelError::NoService(*key))?;
        let svc = self
            .services
            .get_mut(i)
            .ok_or(ModelError::NoService(*key))?;
        Ok(Arc::make_mut(svc))
    }

    /// Position and current version of a service, for the undo journal.
    pub(crate) fn saved(&self, key: &ServiceKey) -> Option<(usize, Arc<VirtualService>)> {
        let i = self.position(key)?;
        Some((i, Arc::clone(self.services.get(i)?)))
    }

    /// Counters the undo journal restores as they were before a list of changes.
    pub(crate) fn counters(&self) -> Counters {
        Counters {
            next_real_id: self.next_real_id,
            live_reals: self.live_reals,
            next_seq: self.next_seq,
        }
    }

    pub(crate) fn set_counters(&mut self, c: Counters) {
        self.next_real_id = c.next_real_id;
        self.live_reals = c.live_reals;
        self.next_seq = c.next_seq;
    }

    /// Takes back one change (see [`Undo`]).
    pub(crate) fn undo(&mut self, undo: Undo) {
        match undo {
            Undo::Replaced(i, svc) => {
                if let Some(now) = self.services.get(i).cloned() {
                    self.count_reals(&now, false);
                    self.count_reals(&svc, true);
                }
                if let Some(slot) = self.services.get_mut(i) {
                    *slot = svc;
                }
            }
            Undo::Appended => {
                if let Some(svc) = self.services.pop() {
                    self.seqs.pop();
                    self.by_key.remove(&svc.key);
                    self.count_reals(&svc, false);
                }
            }
            Undo::Removed(i, seq, svc) => {
                let i = i.min(self.services.len());
                self.by_key.insert(svc.key, seq);
                self.count_reals(&svc, true);
                self.services.insert(i, svc);
                self.seqs.insert(i, seq);
            }
            Undo::Cleared(services, seqs, by_key, real_addrs) => {
                self.services = services;
                self.seqs = seqs;
                self.by_key = by_key;
                self.real_addrs = real_addrs;
            }
            Undo::MarkRules(rules) => self.mark_rules = rules,
        }
    }

    /// Every real server of every service, with its service.
    pub fn reals(&self) -> impl Iterator<Item = (&VirtualService, &RealServer)> {
        self.services
            .iter()
            .flat_map(|s| s.reals.iter().map(move |r| (&**s, r)))
    }

    pub fn add_service(&mut self, spec: ServiceSpec) -> Result<(), ModelError> {
        if self.by_key.contains_key(&spec.key) {
            return Err(ModelError::ServiceExists(spec.key));
        }
        if spec.key.port == 0 && !spec.key.is_fwmark() {
            return Err(ModelError::ZeroPort(spec.key));
        }
        spec.check()?;
        self.by_key.insert(spec.key, self.next_seq);
        self.seqs.push(self.next_seq);
        self.next_seq += 1;
        self.services.push(Arc::new(VirtualService {
            key: spec.key,
            scheduler: spec.scheduler,
            persistence_timeout: spec.persistence_timeout,
            persistence_netmask: spec.persistence_netmask,
            sched_flags: spec.sched_flags,
            ops: spec.ops,
            proxy_protocol: spec.proxy_protocol,
            local_addrs: Vec::new(),
            reals: Vec::new(),
        }));
        Ok(())
    }

    pub fn edit_service(&mut self, spec: ServiceSpec) -> Result<(), ModelError> {
        spec.check()?;
        let svc = self.service_mut(&spec.key)?;
        svc.scheduler = spec.scheduler;
        svc.persistence_timeout = spec.persistence_timeout;
        svc.persistence_netmask = spec.persistence_netmask;
        svc.sched_flags = spec.sched_flags;
        svc.ops = spec.ops;
        svc.proxy_protocol = spec.proxy_protocol;
        Ok(())
    }

    /// `--add-laddr -z LIP -t VIP:PORT [-F IF]`.
    pub fn add_local_addr(&mut self, key: &ServiceKey, la: LocalAddr) -> Result<(), ModelError> {
        la.check()?;
        if self.vips().contains(&la.addr) {
            return Err(ModelError::LocalAddrIsVip(la.addr));
        }
        let all = self.local_addrs();
        if !all.contains(&la.addr) && all.len() >= MAX_LOCAL_ADDRS {
            return Err(ModelError::TooManyLocalAddrs(MAX_LOCAL_ADDRS));
        }
        let svc = self.service_mut(key)?;
        if svc.local_addrs.iter().any(|l| l.addr == la.addr) {
            return Err(ModelError::LocalAddrExists(la.addr));
        }
        svc.local_addrs.push(la);
        Ok(())
    }

    /// `--del-laddr -z LIP -t VIP:PORT`.
    pub fn delete_local_addr(
        &mut self,
        key: &ServiceKey,
        addr: Ipv4Addr,
    ) -> Result<(), ModelError> {
        let svc = self.service_mut(key)?;
        let before = svc.local_addrs.len();
        svc.local_addrs.retain(|l| l.addr != addr);
        if svc.local_addrs.len() == before {
            return Err(ModelError::NoLocalAddr(addr));
        }
        Ok(())
    }

    /// Distinct configured local addresses, in first-seen order.
    pub fn local_addrs(&self) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = Vec::new();
        for l in self.services.iter().flat_map(|s| &s.local_addrs) {
            if !out.contains(&l.addr) {
                out.push(l.addr);
            }
        }
        out
    }

    pub fn delete_service(&mut self, key: &ServiceKey) -> Result<(), ModelError> {
        self.remove_service(key).map(|_| ())
    }

    /// Deletes a service and hands it over with where it was (for the undo journal).
    pub(crate) fn remove_service(&mut self, key: &ServiceKey) -> Result<Undo, ModelError> {
        let i = self.position(key).ok_or(ModelError::NoService(*key))?;
        let seq = self.by_key.remove(key).unwrap_or_default();
        let gone = self.services.remove(i);
        self.seqs.remove(i);
        self.live_reals = self.live_reals.saturating_sub(gone.reals.len());
        self.count_reals(&gone, false);
        Ok(Undo::Removed(i, seq, gone))
    }

    /// Adds a real server. For direct routing the port is forced to the service port, as
    /// ipvsadm does (see [`RealServer::port`]).
    pub fn add_real(&mut self, key: &ServiceKey, spec: RealSpec) -> Result<RealId, ModelError> {
        if spec.weight > MAX_WEIGHT {
            return Err(ModelError::WeightOutOfRange(u64::from(spec.weight)));
        }
        if let ForwardMethod::Tunnel(t) = spec.forward {
            t.check()?;
        }
        if self.live_reals >= MAX_REALS - 1 {
            return Err(ModelError::TooManyReals(MAX_REALS - 1));
        }
        let next = self.next_real_id.checked_add(1);
        let svc = self.service(key).ok_or(ModelError::NoService(*key))?;
        let port = real_port(&svc.key, spec.port, spec.forward);
        if svc
            .reals
            .iter()
            .any(|r| r.addr == spec.addr && r.port == port)
        {
            return Err(ModelError::RealExists(*key, spec.addr, port));
        }
        let id = next
            .and_then(NonZeroU32::new)
            .map(RealId)
            .ok_or(ModelError::TooManyReals(MAX_REALS - 1))?;
        self.service_mut(key)?.reals.push(RealServer {
            id,
            addr: spec.addr,
            port,
            weight: spec.weight,
            last_weight: spec.weight,
            forward: spec.forward,
            upper_threshold: spec.upper_threshold,
            lower_threshold: spec.lower_threshold,
        });
        self.next_real_id = id.0.get();
        self.live_reals += 1;
        count(&mut self.real_addrs, spec.addr, true);
        Ok(id)
    }

    pub fn edit_real(&mut self, key: &ServiceKey, spec: RealSpec) -> Result<(), ModelError> {
        if spec.weight > MAX_WEIGHT {
            return Err(ModelError::WeightOutOfRange(u64::from(spec.weight)));
        }
        if let ForwardMethod::Tunnel(t) = spec.forward {
            t.check()?;
        }
        let svc = self.service(key).ok_or(ModelError::NoService(*key))?;
        let port = real_port(&svc.key, spec.port, spec.forward);
        let i = svc
            .reals
            .iter()
            .position(|r| r.addr == spec.addr && r.port == port)
            .ok_or(ModelError::NoReal(*key, spec.addr, port))?;
        let svc = self.service_mut(key)?;
        let Some(real) = svc.reals.get_mut(i) else {
            return Err(ModelError::NoReal(*key, spec.addr, port));
        };
        real.weight = spec.weight;
        if spec.weight > 0 {
            real.last_weight = spec.weight;
        }
        // ipvsadm -e always carries a method (-g when none is given), as the kernel's
        // __ip_vs_update_dest takes it.
        real.forward = spec.forward;
        real.upper_threshold = spec.upper_threshold;
        real.lower_threshold = spec.lower_threshold;
        Ok(())
    }

    pub fn delete_real(
        &mut self,
        key: &ServiceKey,
        addr: Ipv4Addr,
        port: u16,
    ) -> Result<(), ModelError> {
        let svc = self.service(key).ok_or(ModelError::NoService(*key))?;
        let port = if port == 0 { svc.key.port } else { port };
        let i = svc
            .reals
            .iter()
            .position(|r| r.addr == addr && r.port == port)
            .ok_or(ModelError::NoReal(*key, addr, port))?;
        self.service_mut(key)?.reals.remove(i);
        self.live_reals = self.live_reals.saturating_sub(1);
        count(&mut self.real_addrs, addr, false);
        Ok(())
    }

    /// Removes every service (`ipvsadm -C`). Real ids keep counting up, never reused.
    pub fn clear(&mut self) {
        self.take_all();
    }

    /// Removes every service and hands them over (for the undo journal).
    pub(crate) fn take_all(&mut self) -> Undo {
        self.live_reals = 0;
        Undo::Cleared(
            std::mem::take(&mut self.services),
            std::mem::take(&mut self.seqs),
            std::mem::take(&mut self.by_key),
            std::mem::take(&mut self.real_addrs),
        )
    }

    /// Distinct VIPs, in first-seen order: those of address services, then those of mark
    /// rules whose mark has a fwmark service.
    pub fn vips(&self) -> Vec<Ipv4Addr> {
        let mut seen = std::collections::HashSet::new();
        let marked = self.marked_keys();
        let addr = self.services.iter().filter(|s| !s.key.is_fwmark());
        addr.map(|s| s.key.vip)
            .chain(marked.iter().map(|(k, _)| k.vip))
            .filter(|vip| seen.insert(*vip))
            .collect()
    }

    pub fn mark_rules(&self) -> &[MarkRule] {
        &self.mark_rules
    }

    /// Adds a mark rule. Adding a rule identical to an existing one changes nothing (so a
    /// saved listing can be restored over a running table); a rule that covers a
    /// (protocol, VIP, port) another rule already covers is refused.
    pub fn add_mark_rule(&mut self, rule: MarkRule) -> Result<(), ModelError> {
        let mut rule = rule;
        let mut seen = Vec::with_capacity(rule.ports.len());
        rule.ports.retain(|p| {
            let new = !seen.contains(p);
            seen.push(*p);
            new
        });
        if rule.mark == 0 || rule.ports.is_empty() || rule.ports.contains(&0) {
            return Err(ModelError::BadMarkRule);
        }
        if self.mark_rules.iter().any(|r| r.same(&rule)) {
            return Ok(());
        }
        for r in &self.mark_rules {
            if r.proto != rule.proto || r.vip != rule.vip {
                continue;
            }
            if let Some(&p) = rule.ports.iter().find(|p| r.ports.contains(p)) {
                return Err(ModelError::MarkPortTaken(
                    rule.proto.ipvsadm_name(),
                    p,
                    rule.vip,
                    r.mark,
                ));
            }
        }
        self.mark_rules.push(rule);
        Ok(())
    }

    /// Deletes the rule with the same mark, protocol, VIP and ports (in any order).
    pub fn delete_mark_rule(&mut self, rule: &MarkRule) -> Result<(), ModelError> {
        let i = self
            .mark_rules
            .iter()
            .position(|r| r.same(rule))
            .ok_or(ModelError::NoMarkRule)?;
        self.mark_rules.remove(i);
        Ok(())
    }

    /// What the mark rules send to fwmark services: every (protocol, VIP, port) of a rule
    /// whose mark has a fwmark service in this table, with that service's key. Rules of a
    /// mark without a service match nothing (as a mark no IPVS service uses).
    pub fn marked_keys(&self) -> Vec<(ServiceKey, ServiceKey)> {
        let mut out = Vec::new();
        for r in &self.mark_rules {
            let svc = ServiceKey::fwmark(r.mark);
            if self.service(&svc).is_none() {
                continue;
            }
            for &port in &r.ports {
                out.push((ServiceKey::addr(r.proto, r.vip, port), svc));
            }
        }
        out
    }

    /// The (protocol, VIP, port) keys uvs forwards: address services, except those a mark
    /// rule takes over, then the marked keys. What the kernel filter must drop.
    pub fn forwarded_keys(&self) -> Vec<ServiceKey> {
        let marked: Vec<ServiceKey> = self.marked_keys().into_iter().map(|(k, _)| k).collect();
        let taken: std::collections::HashSet<ServiceKey> = marked.iter().copied().collect();
        let mut out: Vec<ServiceKey> = self
            .services
            .iter()
            .map(|s| s.key)
            .filter(|k| !k.is_fwmark() && !taken.contains(k))
            .collect();
        out.extend(marked);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ServiceKey {
        ServiceKey {
            proto: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 0, 0, 100),
            port,
            fwmark: 0,
        }
    }

    #[test]
    fn dr_real_port_is_forced_to_the_service_port_like_ipvsadm() {
        let mut t = ServiceTable::new();
        t.add_service(ServiceSpec::new(key(80), SchedulerKind::Rr))
            .unwrap();
        t.add_real(&key(80), RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), 8080))
            .unwrap();
        assert_eq!(t.service(&key(80)).unwrap().reals[0].port, 80);
    }

    #[test]
    fn refused_changes_leave_the_table_unchanged() {
        let mut t = ServiceTable::new();
        t.add_service(ServiceSpec::new(key(80), SchedulerKind::Rr))
            .unwrap();
        t.add_real(&key(80), RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), 80))
            .unwrap();
        let before = t.clone();
        assert_eq!(
            t.add_service(ServiceSpec::new(key(80), SchedulerKind::Rr)),
            Err(ModelError::ServiceExists(key(80)))
        );
        assert!(matches!(
            t.add_real(&key(80), RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), 80)),
            Err(ModelError::RealExists(..))
        ));
        let mut heavy = RealSpec::route(Ipv4Addr::new(10, 0, 0, 12), 80);
        heavy.weight = 70000;
        assert_eq!(
            t.add_real(&key(80), heavy),
            Err(ModelError::WeightOutOfRange(70000))
        );
        assert_eq!(
            t.add_service(ServiceSpec::new(key(0), SchedulerKind::Wlc)),
            Err(ModelError::ZeroPort(key(0)))
        );
        assert_eq!(t, before);
    }

    #[test]
    fn ops_is_refused_on_tcp_as_ipvsadm_does() {
        let mut t = ServiceTable::new();
        let mut spec = ServiceSpec::new(key(80), SchedulerKind::Rr);
        spec.ops = true;
        assert_eq!(t.add_service(spec), Err(ModelError::OpsNotUdp(key(80))));
        let udp = ServiceKey {
            proto: Protocol::Udp,
            ..key(53)
        };
        spec.key = udp;
        t.add_service(spec).unwrap();
        assert!(t.service(&udp).unwrap().ops);
        t.add_service(ServiceSpec::new(key(80), SchedulerKind::Rr))
            .unwrap();
        spec.key = key(80);
        assert_eq!(t.edit_service(spec), Err(ModelError::OpsNotUdp(key(80))));
        assert!(!t.service(&key(80)).unwrap().ops);
    }

    #[test]
    fn real_ids_are_never_reused_after_delete() {
        let mut t = ServiceTable::new();
        t.add_service(ServiceSpec::new(key(80), SchedulerKind::Rr))
            .unwrap();
        let a = t
            .add_real(&key(80), RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), 80))
            .unwrap();
        t.delete_real(&key(80), Ipv4Addr::new(10, 0, 0, 11), 80)
            .unwrap();
        let b = t
            .add_real(&key(80), RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), 80))
            .unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn mark_rules_refuse_overlaps_and_accept_identical_repeats() {
        let vip = Ipv4Addr::new(10, 0, 0, 100);
        let rule = |mark, ports: &[u16]| MarkRule {
            proto: Protocol::Tcp,
            vip,
            ports: ports.to_vec(),
            mark,
        };
        let mut t = ServiceTable::new();
        t.add_mark_rule(rule(1, &[80, 443])).unwrap();
        t.add_mark_rule(rule(1, &[443, 80])).unwrap();
        assert_eq!(t.mark_rules().len(), 1, "identical rule is a no-op");
        assert_eq!(
            t.add_mark_rule(rule(2, &[8080, 443])),
            Err(ModelError::MarkPortTaken("TCP", 443, vip, 1))
        );
        assert_eq!(t.add_mark_rule(rule(0, &[1])), Err(ModelError::BadMarkRule));
        assert_eq!(t.add_mark_rule(rule(3, &[])), Err(ModelError::BadMarkRule));
        assert_eq!(
            t.delete_mark_rule(&rule(1, &[80])),
            Err(ModelError::NoMarkRule)
        );
        t.add_service(ServiceSpec::new(ServiceKey::fwmark(1), SchedulerKind::Rr))
            .unwrap();
        t.clear();
        assert_eq!(t.mark_rules().len(), 1, "-C leaves mark rules");
        t.delete_mark_rule(&rule(1, &[443, 80])).unwrap();
        assert!(t.mark_rules().is_empty());
        assert_eq!(ServiceKey::fwmark(3).to_string(), "FWM  3");
    }

    #[test]
    fn scheduler_names_round_trip() {
        for k in SchedulerKind::ALL {
            assert_eq!(SchedulerKind::parse(k.name()), Ok(k));
        }
        assert!(SchedulerKind::parse("roundrobin").is_err());
    }
}
