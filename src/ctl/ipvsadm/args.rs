//! ipvsadm's argument syntax, parsed the way ipvsadm 1.31 parses it with popt.
//!
//! - Short options combine (`-Ln`, `-lnc`, `-gw2`) and take attached values (`-t10.0.0.1:80`,
//!   `-w2`, `-w=2`); long options take `--name=value` or `--name value`.
//! - `-p`/`--persistent` has an optional value: attached, or the next argument unless that
//!   starts with `-`; alone it means 360 seconds.
//! - The first option must be the command (`-A`, `-L`, …); a command later on is
//!   "invalid option". Values are checked as they are met, then the command/option table
//!   (`commands_v_options` in ipvsadm.c) is checked, then the command-specific rules. Messages
//!   and exit codes are ipvsadm's: `fail()` exits 2, popt errors and `tryhelp` exit 255.
//! - What uvs cannot do yet (IPv6, SCTP, persistence engines, sync daemon
//!   group/port/ttl/maxlen) is recognised and refused after ipvsadm's own checks, with
//!   a message that says so (exit 2).
//! - DPVS's FullNAT commands and options, kept compatible with ipvsadm's own: `--fullnat` on
//!   `-a`/`-e` (and DPVS's `-b` there, where ipvsadm never accepts `--sched-flags`: see
//!   [`Scanner::b_is_fullnat`]), `--add-laddr`/`-P`, `--del-laddr`/`-Q`, `--get-laddr`/`-G`,
//!   `--laddr`/`-z`, `--ifname`/`-F`, `--proxy-protocol` on `-A`/`-E`. Their rows of the
//!   command/option table are DPVS's, except that `-F` is optional (Alibaba's LVS, whose
//!   syntax DPVS inherited, has no `-F`, and uvs does not need the interface).
//! - Host names are resolved as ipvsadm's `gethostbyname` does (`/etc/hosts`, then the system
//!   resolver; see [`Names::host_addr`]); port names are looked up in `/etc/services`, as its
//!   `getservbyname` does.

use std::net::Ipv4Addr;

use super::names::Names;
use crate::ctl::proto::Change;
use crate::model::{
    ForwardMethod, LocalAddr, Protocol, ProxyVersion, RealSpec, SchedulerKind, ServiceKey,
    ServiceSpec, Tunnel, TunnelCsum, TunnelKind,
};

/// `-p` without a timeout: libipvs's `IPVS_SVC_PERSISTENT_TIMEOUT`, `(6*60)` (ipvsadm's man
/// page still says 300, which the code stopped using long ago).
pub const DEFAULT_PERSISTENCE_TIMEOUT: u32 = 360;
/// ipvsadm's `MAX_TIMEOUT`: 31 days.
pub const MAX_TIMEOUT: u32 = 86_400 * 31;
/// ipvsadm's `DEF_SCHED`.
pub const DEFAULT_SCHEDULER: SchedulerKind = SchedulerKind::Wlc;

/// Exit status of ipvsadm's `fail()`.
pub const EXIT_FAIL: i32 = 2;
/// Exit status of `tryhelp_exit(…, -1)` and popt errors (`return -1` from main).
pub const EXIT_USAGE: i32 = 255;

/// Why an argument list was refused: the exact text ipvsadm prints on stderr (without the
/// final newline) and its exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgError {
    pub message: String,
    pub exit: i32,
    pub kind: ErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// ipvsadm's own message.
    Ipvsadm,
    /// The first option was not a command (ipvsadm prints its "Try … -h" line).
    NoCommand,
    /// A feature ipvsadm has and uvs has not (yet).
    Unsupported,
    /// A scheduler name ipvsadm would pass on and the kernel would refuse.
    UnknownScheduler(String),
}

impl ArgError {
    fn fail(message: impl Into<String>) -> ArgError {
        ArgError {
            message: message.into(),
            exit: EXIT_FAIL,
            kind: ErrorKind::Ipvsadm,
        }
    }
    fn popt(bad: &str, what: &str) -> ArgError {
        ArgError {
            message: format!("{bad}: {what}"),
            exit: EXIT_USAGE,
            kind: ErrorKind::Ipvsadm,
        }
    }
    fn unsupported(message: impl Into<String>) -> ArgError {
        ArgError {
            message: message.into(),
            exit: EXIT_FAIL,
            kind: ErrorKind::Unsupported,
        }
    }
    /// `tryhelp_exit(program, -1)`.
    pub fn try_help(program: &str) -> ArgError {
        ArgError {
            message: format!("Try `{program} -h' or '{program} --help' for more information."),
            exit: EXIT_USAGE,
            kind: ErrorKind::NoCommand,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands and options, in ipvsadm's order (the order decides which error is reported first).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Add,
    Edit,
    Del,
    Flush,
    List,
    AddDest,
    DelDest,
    EditDest,
    Timeout,
    StartDaemon,
    StopDaemon,
    Restore,
    Save,
    Zero,
    /// DPVS's `--add-laddr`/`-P`.
    AddLaddr,
    /// DPVS's `--del-laddr`/`-Q`.
    DelLaddr,
    /// DPVS's `--get-laddr`/`-G`.
    GetLaddr,
}

const CMD_NAMES: [&str; 17] = [
    "add-service",
    "edit-service",
    "delete-service",
    "flush",
    "list",
    "add-server",
    "delete-server",
    "edit-server",
    "set",
    "start-daemon",
    "stop-daemon",
    "restore",
    "save",
    "zero",
    "add-laddr",
    "del-laddr",
    "get-laddr",
];

// Option bits (ipvsadm's OPTC_*).
const O_NUMERIC: usize = 0;
const O_CONNECTION: usize = 1;
const O_SERVICE: usize = 2;
const O_SCHEDULER: usize = 3;
const O_PERSISTENT: usize = 4;
const O_NETMASK: usize = 5;
const O_SERVER: usize = 6;
const O_FORWARD: usize = 7;
const O_WEIGHT: usize = 8;
const O_UTHRESHOLD: usize = 9;
const O_LTHRESHOLD: usize = 10;
const O_MCAST: usize = 11;
const O_TIMEOUT: usize = 12;
const O_DAEMON: usize = 13;
const O_STATS: usize = 14;
const O_RATE: usize = 15;
const O_THRESHOLDS: usize = 16;
const O_PERSISTENTCONN: usize = 17;
const O_NOSORT: usize = 18;
const O_SYNCID: usize = 19;
const O_EXACT: usize = 20;
const O_ONEPACKET: usize = 21;
const O_PE: usize = 22;
const O_SCHED_FLAGS: usize = 23;
const O_MCAST_GROUP: usize = 24;
const O_MCAST_PORT: usize = 25;
const O_MCAST_TTL: usize = 26;
const O_SYNC_MAXLEN: usize = 27;
const O_TUN_INFO: usize = 28;
const O_TUN_TYPE: usize = 29;
const O_TUN_PORT: usize = 30;
const O_TUN_NOCSUM: usize = 31;
const O_TUN_CSUM: usize = 32;
const O_TUN_REMCSUM: usize = 33;
// DPVS's, after ipvsadm's.
const O_LADDR: usize = 34;
const O_IFNAME: usize = 35;
const O_PROXY_PROTOCOL: usize = 36;
const NUMBER_OF_OPT: usize = 37;

const OPT_NAMES: [&str; NUMBER_OF_OPT] = [
    "numeric",
    "connection",
    "service-address",
    "scheduler",
    "persistent",
    "netmask",
    "real-server",
    "forwarding-method",
    "weight",
    "u-threshold",
    "l-threshold",
    "mcast-interface",
    "timeout",
    "daemon",
    "stats",
    "rate",
    "thresholds",
    "persistent-conn",
    "nosort",
    "syncid",
    "exact",
    "ops",
    "pe",
    "sched-flags",
    "mcast-group",
    "mcast-port",
    "mcast-ttl",
    "sync-maxlen",
    "tun-info",
    "tun-type",
    "tun-port",
    "tun-nocsum",
    "tun-csum",
    "tun-remcsum",
    "local-address",
    "ifname",
    "proxy-protocol",
];

/// ipvsadm's `commands_v_options`: '+' compulsory, 'x' illegal, '1' exclusive, ' ' optional.
/// One row per command (in `Cmd` order), one column per option bit. The last three columns
/// (`-z`, `-F`, `--proxy-protocol`) and rows (`-P`, `-Q`, `-G`) are DPVS's, with `-F` optional
/// where DPVS makes it compulsory (see the module doc). DPVS checks `--proxy-protocol` against
/// no command at all; here it belongs to `-A`/`-E`, the only commands that use it.
const COMMANDS_V_OPTIONS: [&[u8; NUMBER_OF_OPT]; 17] = [
    b"xx+   xxxxxxxxxxxxxxx   xxxxxxxxxxxx ", // add-service
    b"xx+   xxxxxxxxxxxxxxx   xxxxxxxxxxxx ", // edit-service
    b"xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // delete-service
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // flush
    b" 11xxxxxxxxx11       xxxxxxx xxxxxxxx", // list
    b"xx+xxx+    xxxxxxxxxxxxxxxxxx     xxx", // add-server
    b"xx+xxx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // delete-server
    b"xx+xxx+    xxxxxxxxxxxxxxxxxx     xxx", // edit-server
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // set
    b"xxxxxxxxxxx xxxxxxx xxxx    xxxxxxxxx", // start-daemon
    b"xxxxxxxxxxxxxxxxxxx xxxxxxxxxxxxxxxxx", // stop-daemon
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // restore
    b" xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // save
    b"xx xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // zero
    b"xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx+ x", // add-laddr
    b"xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx+ x", // del-laddr
    b"xx xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // get-laddr
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArgKind {
    None,
    Required,
    Optional,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Cmd(Cmd),
    Help,
    Version,
    Tcp,
    Udp,
    Sctp,
    Fwmark,
    Scheduler,
    Persistent,
    Netmask,
    Real,
    Masq,
    Ipip,
    Gate,
    Weight,
    UThreshold,
    LThreshold,
    Numeric,
    Connection,
    McastInterface,
    SyncId,
    Timeout,
    Daemon,
    Stats,
    Rate,
    Thresholds,
    PersistentConn,
    NoSort,
    Sort,
    Exact,
    Ipv6,
    Ops,
    Pe,
    SchedFlags,
    McastGroup,
    McastPort,
    McastTtl,
    SyncMaxlen,
    TunInfo,
    TunType,
    TunPort,
    TunNocsum,
    TunCsum,
    TunRemcsum,
    FullNat,
    Laddr,
    Ifname,
    ProxyProtocol,
}

/// ipvsadm's popt option table: (long name, short name, argument, tag).
const OPTIONS: &[(&str, Option<char>, ArgKind, Tag)] = {
    use ArgKind::{None as N, Optional as O, Required as R};
    &[
        ("add-service", Some('A'), N, Tag::Cmd(Cmd::Add)),
        ("edit-service", Some('E'), N, Tag::Cmd(Cmd::Edit)),
        ("delete-service", Some('D'), N, Tag::Cmd(Cmd::Del)),
        ("clear", Some('C'), N, Tag::Cmd(Cmd::Flush)),
        ("list", Some('L'), N, Tag::Cmd(Cmd::List)),
        ("list", Some('l'), N, Tag::Cmd(Cmd::List)),
        ("zero", Some('Z'), N, Tag::Cmd(Cmd::Zero)),
        ("add-server", Some('a'), N, Tag::Cmd(Cmd::AddDest)),
        ("edit-server", Some('e'), N, Tag::Cmd(Cmd::EditDest)),
        ("delete-server", Some('d'), N, Tag::Cmd(Cmd::DelDest)),
        ("set", None, N, Tag::Cmd(Cmd::Timeout)),
        ("help", Some('h'), N, Tag::Help),
        ("version", Some('v'), N, Tag::Version),
        ("restore", Some('R'), N, Tag::Cmd(Cmd::Restore)),
        ("save", Some('S'), N, Tag::Cmd(Cmd::Save)),
        ("start-daemon", None, R, Tag::Cmd(Cmd::StartDaemon)),
        ("stop-daemon", None, R, Tag::Cmd(Cmd::StopDaemon)),
        ("tcp-service", Some('t'), R, Tag::Tcp),
        ("udp-service", Some('u'), R, Tag::Udp),
        ("sctp-service", None, R, Tag::Sctp),
        ("fwmark-service", Some('f'), R, Tag::Fwmark),
        ("scheduler", Some('s'), R, Tag::Scheduler),
        ("persistent", Some('p'), O, Tag::Persistent),
        ("netmask", Some('M'), R, Tag::Netmask),
        ("real-server", Some('r'), R, Tag::Real),
        ("masquerading", Some('m'), N, Tag::Masq),
        ("ipip", Some('i'), N, Tag::Ipip),
        ("gatewaying", Some('g'), N, Tag::Gate),
        ("weight", Some('w'), R, Tag::Weight),
        ("u-threshold", Some('x'), R, Tag::UThreshold),
        ("l-threshold", Some('y'), R, Tag::LThreshold),
        ("numeric", Some('n'), N, Tag::Numeric),
        ("connection", Some('c'), N, Tag::Connection),
        ("mcast-interface", None, R, Tag::McastInterface),
        ("syncid", None, R, Tag::SyncId),
        ("timeout", None, N, Tag::Timeout),
        ("daemon", None, N, Tag::Daemon),
        ("stats", None, N, Tag::Stats),
        ("rate", None, N, Tag::Rate),
        ("thresholds", None, N, Tag::Thresholds),
        ("persistent-conn", None, N, Tag::PersistentConn),
        ("nosort", None, N, Tag::NoSort),
        ("sort", None, N, Tag::Sort),
        ("exact", Some('X'), N, Tag::Exact),
        ("ipv6", Some('6'), N, Tag::Ipv6),
        ("ops", Some('o'), N, Tag::Ops),
        ("pe", None, R, Tag::Pe),
        ("sched-flags", Some('b'), R, Tag::SchedFlags),
        ("mcast-group", None, R, Tag::McastGroup),
        ("mcast-port", None, R, Tag::McastPort),
        ("mcast-ttl", None, R, Tag::McastTtl),
        ("sync-maxlen", None, R, Tag::SyncMaxlen),
        ("tun-info", None, N, Tag::TunInfo),
        ("tun-type", None, R, Tag::TunType),
        ("tun-port", None, R, Tag::TunPort),
        ("tun-nocsum", None, N, Tag::TunNocsum),
        ("tun-csum", None, N, Tag::TunCsum),
        ("tun-remcsum", None, N, Tag::TunRemcsum),
        // DPVS's FullNAT commands and options. Its `-b` short form of `--fullnat` is
        // ipvsadm's `--sched-flags`; the scanner reads `-b` as `--fullnat` on `-a`/`-e` only.
        ("add-laddr", Some('P'), N, Tag::Cmd(Cmd::AddLaddr)),
        ("del-laddr", Some('Q'), N, Tag::Cmd(Cmd::DelLaddr)),
        ("get-laddr", Some('G'), N, Tag::Cmd(Cmd::GetLaddr)),
        ("fullnat", None, N, Tag::FullNat),
        ("laddr", Some('z'), R, Tag::Laddr),
        ("ifname", Some('F'), R, Tag::Ifname),
        ("proxy-protocol", None, R, Tag::ProxyProtocol),
    ]
};

/// (long name, short letter, takes a value) of every option the parser knows, for the
/// documentation's check against it (`doc`).
#[cfg(test)]
pub(crate) fn option_table() -> impl Iterator<Item = (&'static str, Option<char>, bool)> {
    OPTIONS
        .iter()
        .map(|&(long, short, kind, _)| (long, short, kind != ArgKind::None))
}

// ---------------------------------------------------------------------------------------------
// popt-style scanning.

struct Scanner<'a> {
    args: &'a [String],
    next: usize,
    /// Remaining characters of a short-option cluster, and the argument it came from.
    cluster: Option<(&'a str, &'a str)>,
    only_positional: bool,
    positional: Vec<&'a str>,
    /// The argument the last option came from (`poptBadOption`).
    last: &'a str,
    /// `-b` is `--fullnat` (DPVS's meaning) rather than `--sched-flags FLAGS` (ipvsadm's).
    /// Set for `-a`/`-e` only: ipvsadm refuses `--sched-flags` with them whatever its value
    /// ("Illegal 'sched-flags' option with the 'add-server' command"), so reading DPVS's
    /// `-a … -r RIP -b` there takes nothing away from ipvsadm, and DPVS's tutorials and its
    /// `-S` output (`-b` for a FullNAT real) work as written.
    b_is_fullnat: bool,
}

enum Scanned<'a> {
    Opt(Tag, Option<&'a str>),
    End,
    Err(ArgError),
}

impl<'a> Scanner<'a> {
    fn new(args: &'a [String]) -> Scanner<'a> {
        Scanner {
            args,
            next: 1,
            cluster: None,
            only_positional: false,
            positional: Vec::new(),
            last: "",
            b_is_fullnat: false,
        }
    }

    fn take_next(&mut self) -> Option<&'a str> {
        let v = self.args.get(self.next)?;
        self.next += 1;
        Some(v.as_str())
    }

    fn peek_value_for_optional(&mut self) -> Option<&'a str> {
        match self.args.get(self.next) {
            Some(v) if !v.starts_with('-') => {
                self.next += 1;
                Some(v.as_str())
            }
            _ => None,
        }
    }

    fn next_opt(&mut self) -> Scanned<'a> {
        if let Some((rest, whole)) = self.cluster.take() {
            return self.short(rest, whole);
        }
        loop {
            let Some(arg) = self.take_next() else {
                return Scanned::End;
            };
            if self.only_positional || arg == "-" || !arg.starts_with('-') {
                self.positional.push(arg);
                continue;
            }
            if arg == "--" {
                self.only_positional = true;
                continue;
            }
            self.last = arg;
            if let Some(long) = arg.strip_prefix("--") {
                let (name, attached) = match long.split_once('=') {
                    Some((n, v)) => (n, Some(v)),
                    None => (long, None),
                };
                let Some(&(_, _, kind, tag)) = OPTIONS.iter().find(|o| o.0 == name) else {
                    return Scanned::Err(ArgError::popt(arg, "unknown option"));
                };
                let value = match (kind, attached) {
                    (ArgKind::None, Some(_)) => {
                        return Scanned::Err(ArgError::popt(
                            arg,
                            "option does not take an argument",
                        ));
                    }
                    (ArgKind::None, None) => None,
                    (_, Some(v)) => Some(v),
                    (ArgKind::Required, None) => match self.take_next() {
                        Some(v) => Some(v),
                        None => return Scanned::Err(ArgError::popt(arg, "missing argument")),
                    },
                    (ArgKind::Optional, None) => self.peek_value_for_optional(),
                };
                return Scanned::Opt(tag, value);
            }
            return self.short(&arg[1..], arg);
        }
    }

    fn short(&mut self, rest: &'a str, whole: &'a str) -> Scanned<'a> {
        self.last = whole;
        let mut chars = rest.chars();
        let Some(c) = chars.next() else {
            return Scanned::End;
        };
        let after = chars.as_str();
        let (kind, tag) = match OPTIONS.iter().find(|o| o.1 == Some(c)) {
            _ if c == 'b' && self.b_is_fullnat => (ArgKind::None, Tag::FullNat),
            Some(&(_, _, kind, tag)) => (kind, tag),
            None => return Scanned::Err(ArgError::popt(whole, "unknown option")),
        };
        if kind == ArgKind::None {
            if !after.is_empty() {
                self.cluster = Some((after, whole));
            }
            return Scanned::Opt(tag, None);
        }
        if !after.is_empty() {
            return Scanned::Opt(tag, Some(after.strip_prefix('=').unwrap_or(after)));
        }
        match kind {
            ArgKind::Required => match self.take_next() {
                Some(v) => Scanned::Opt(tag, Some(v)),
                None => Scanned::Err(ArgError::popt(whole, "missing argument")),
            },
            _ => Scanned::Opt(tag, self.peek_value_for_optional()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parsed command.

/// How listings are printed (ipvsadm's `FMT_*` flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub numeric: bool,
    pub stats: bool,
    pub rate: bool,
    pub thresholds: bool,
    pub persistent_conn: bool,
    pub nosort: bool,
    pub exact: bool,
    pub tun_info: bool,
    /// `-S`: print rules instead of a table.
    pub rule: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListWhat {
    All,
    Service(ServiceKey),
    Connections,
    Timeout,
    Daemon,
}

/// A service as `-A`/`-E` describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceArgs {
    pub key: ServiceKey,
    /// `-s`; `None` when absent (ipvsadm then uses `wlc`; see [`Command::to_change`]).
    pub scheduler: Option<String>,
    pub persistence_timeout: Option<u32>,
    pub netmask: Ipv4Addr,
    /// `-o`.
    pub ops: bool,
    /// `-b`, validated as ipvsadm does (names, and against the scheduler).
    pub sched_flags: Option<String>,
    /// `--proxy-protocol` (DPVS); absent = disable, as DPVS's `-E` also resets it.
    pub proxy_protocol: ProxyVersion,
}

/// A real server as `-a`/`-e` describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RealArgs {
    pub addr: Ipv4Addr,
    /// The port given with `-r`, if any (DR forces the service port anyway).
    pub port: Option<u16>,
    pub forward: ForwardMethod,
    pub weight: u32,
    pub upper_threshold: u32,
    pub lower_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    AddService(ServiceArgs),
    EditService(ServiceArgs),
    DeleteService(ServiceKey),
    AddServer(ServiceKey, RealArgs),
    EditServer(ServiceKey, RealArgs),
    DeleteServer(ServiceKey, RealArgs),
    Clear,
    SetTimeouts {
        tcp: u32,
        tcpfin: u32,
        udp: u32,
    },
    List(ListWhat, Format),
    Save(Format),
    Restore,
    Zero(Option<ServiceKey>),
    /// `--start-daemon`/`--stop-daemon`.
    Daemon(crate::ctl::proto::DaemonCommand),
    /// DPVS's `--add-laddr -t|-u|-f SERVICE -z LIP [-F IFNAME]`.
    AddLaddr(ServiceKey, LocalAddr),
    /// DPVS's `--del-laddr -t|-u|-f SERVICE -z LIP [-F IFNAME]` (the address alone says
    /// which; an `-F` is accepted, as DPVS requires it, and not compared).
    DelLaddr(ServiceKey, Ipv4Addr),
    /// DPVS's `--get-laddr [-t|-u|-f SERVICE]`.
    GetLaddr(Option<ServiceKey>),
    Help,
    Version,
}

impl Command {
    /// Whether this command changes the configuration (what `-R` and rules files accept).
    pub fn is_change(&self) -> bool {
        matches!(
            self,
            Command::AddService(_)
                | Command::EditService(_)
                | Command::DeleteService(_)
                | Command::AddServer(..)
                | Command::EditServer(..)
                | Command::DeleteServer(..)
                | Command::Clear
                | Command::SetTimeouts { .. }
                | Command::AddLaddr(..)
                | Command::DelLaddr(..)
        )
    }

    /// The change this command asks for (`None` for commands that change nothing). Without
    /// `-s`, `-A` and `-E` both mean ipvsadm's default scheduler, `wlc`, as in ipvsadm.
    pub fn to_change(&self) -> Result<Option<Change>, ArgError> {
        let service = |a: &ServiceArgs| -> Result<ServiceSpec, ArgError> {
            let scheduler = match &a.scheduler {
                Some(name) => SchedulerKind::parse(name).map_err(|_| ArgError {
                    message: "Scheduler or persistence engine not found".into(),
                    exit: EXIT_USAGE,
                    kind: ErrorKind::UnknownScheduler(name.clone()),
                })?,
                None => DEFAULT_SCHEDULER,
            };
            // The names were checked against the scheduler as ipvsadm does; this only maps
            // them onto the flag bits.
            let sched_flags = match &a.sched_flags {
                Some(f) => crate::sched::SchedFlags::parse(f, scheduler)
                    .map_err(|e| ArgError::fail(e.to_string()))?,
                None => Default::default(),
            };
            Ok(ServiceSpec {
                key: a.key,
                scheduler,
                persistence_timeout: a.persistence_timeout,
                persistence_netmask: a.netmask,
                sched_flags,
                ops: a.ops,
                proxy_protocol: a.proxy_protocol,
            })
        };
        let real = |r: &RealArgs, key: &ServiceKey| RealSpec {
            addr: r.addr,
            // Direct routing: ipvsadm forces the destination port to the service port, except
            // for fwmark services ("Don't worry about this if fwmark is used"). NAT maps it:
            // the given port, else the service's.
            port: if key.is_fwmark() {
                r.port.unwrap_or(0)
            } else if r.forward.maps_ports() {
                r.port.unwrap_or(key.port)
            } else {
                key.port
            },
            weight: r.weight,
            forward: r.forward,
            upper_threshold: r.upper_threshold,
            lower_threshold: r.lower_threshold,
        };
        Ok(Some(match self {
            Command::AddService(a) => Change::AddService(service(a)?),
            Command::EditService(a) => Change::EditService(service(a)?),
            Command::DeleteService(k) => Change::DeleteService(*k),
            Command::AddServer(k, r) => Change::AddReal(*k, real(r, k)),
            Command::EditServer(k, r) => Change::EditReal(*k, real(r, k)),
            Command::DeleteServer(k, r) => Change::DeleteReal(*k, r.addr, r.port.unwrap_or(0)),
            Command::Clear => Change::Clear,
            Command::AddLaddr(k, l) => Change::AddLocalAddr(*k, l.clone()),
            Command::DelLaddr(k, addr) => Change::DeleteLocalAddr(*k, *addr),
            Command::SetTimeouts { tcp, tcpfin, udp } => Change::SetTimeouts {
                tcp: *tcp,
                tcpfin: *tcpfin,
                udp: *udp,
            },
            _ => return Ok(None),
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Value parsers (ipvsadm's string_to_number, parse_service, parse_timeout, …).

/// `strtol` over the whole string, then a range check.
fn string_to_number(s: &str, min: i64, max: i64) -> Option<i64> {
    let t = s.trim_start();
    let n: i64 = t.parse().ok()?;
    (min..=max).contains(&n).then_some(n)
}

fn parse_timeout(s: Option<&str>, min: i64, max: i64) -> Result<u32, ArgError> {
    let Some(s) = s else {
        return Ok(DEFAULT_PERSISTENCE_TIMEOUT);
    };
    string_to_number(s, min, max)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| ArgError::fail(format!("invalid timeout value `{s}' specified")))
}

enum Endpoint {
    V4(Ipv4Addr, Option<u16>),
    V6,
}

/// ipvsadm's `parse_service`: `addr[:port]`, port numeric or a service name. `None` is
/// ipvsadm's SERVICE_NONE (the caller prints its "illegal … address[:port]" message).
fn parse_endpoint(buf: &str, proto: Option<Protocol>, names: &Names) -> Option<Endpoint> {
    if buf.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if buf.starts_with('[') || buf.matches(':').count() > 1 {
        return Some(Endpoint::V6);
    }
    let (addr, port) = match buf.rsplit_once(':') {
        Some((a, p)) => (a, Some(p)),
        None => (buf, None),
    };
    let addr = addr
        .parse::<Ipv4Addr>()
        .ok()
        .or_else(|| names.host_addr(addr))?;
    let port = match port {
        None => None,
        Some(p) => Some(match string_to_number(p, 0, 65535) {
            Some(n) => u16::try_from(n).ok()?,
            None => names.port_by_name(p, proto?)?,
        }),
    };
    Some(Endpoint::V4(addr, port))
}

/// ipvsadm's `parse_sched_flags`; returns the flags as ipvsadm prints them.
fn parse_sched_flags(sched: Option<&str>, arg: &str) -> Result<String, ArgError> {
    let sched = sched.filter(|s| !s.is_empty()).unwrap_or("wlc");
    let mut out: Vec<&str> = Vec::new();
    let flags: Vec<&str> = arg.split(',').filter(|f| !f.is_empty()).collect();
    for flag in flags {
        let needs = match flag {
            "flag-1" | "flag-2" | "flag-3" => None,
            "sh-fallback" | "sh-port" => Some("sh"),
            "mh-fallback" | "mh-port" => Some("mh"),
            _ => return Err(ArgError::fail(format!("invalid scheduler flag `{flag}'"))),
        };
        if needs.is_some_and(|s| s != sched) {
            return Err(ArgError::fail(format!(
                "incompatible scheduler flag `{flag}'"
            )));
        }
        out.push(flag);
    }
    Ok(out.join(","))
}

/// `--proxy-protocol`: DPVS's names, compared without case as DPVS does. DPVS takes any
/// other word for `disable` without a word; uvs refuses it. Its `v1-insecure`/`v2-insecure`
/// (pass on, or convert, a PROXY header the client itself sent) are refused: uvs never lets a
/// client speak for the header, so a real server can trust every header it gets.
fn parse_proxy_protocol(v: &str) -> Result<ProxyVersion, ArgError> {
    if let Some(version) = ProxyVersion::parse(v) {
        return Ok(version);
    }
    let lower = v.to_ascii_lowercase();
    if lower == "v1-insecure" || lower == "v2-insecure" {
        return Err(ArgError::unsupported(format!(
            "proxy protocol `{v}' is not supported: uvs never passes on a PROXY header a client sent; use {}",
            &lower[..2]
        )));
    }
    Err(ArgError::fail(format!(
        "illegal proxy protocol `{v}' specified (disable, v1 or v2)"
    )))
}

// ---------------------------------------------------------------------------------------------
// The parser.

#[derive(Default)]
struct Entry<'a> {
    options: u64,
    format: Format,
    proto: Option<Protocol>,
    service: Option<(Ipv4Addr, u16)>,
    ipv6: bool,
    fwmark: u32,
    sctp: bool,
    sched: Option<&'a str>,
    persistent: Option<u32>,
    netmask: Option<Ipv4Addr>,
    real: Option<(Ipv4Addr, Option<u16>)>,
    forward: Option<Tag>,
    weight: Option<u32>,
    upper: u32,
    lower: u32,
    sched_flags: Option<&'a str>,
    ops: bool,
    pe: bool,
    tunnel_options: bool,
    /// `--tun-type` (ipvsadm's default is ipip), `--tun-port`, the checksum option.
    tun_kind: Option<TunnelKind>,
    tun_port: u16,
    tun_csum: Option<TunnelCsum>,
    /// `--mcast-interface`, `--syncid` (sync daemon).
    mcast_ifn: Option<&'a str>,
    syncid: u8,
    /// `-z`, `-F`, `--proxy-protocol` (DPVS).
    laddr: Option<Ipv4Addr>,
    ifname: Option<&'a str>,
    proxy_protocol: ProxyVersion,
}

impl Entry<'_> {
    fn set_option(&mut self, optc: usize) -> Result<(), ArgError> {
        let bit = 1u64 << optc;
        if self.options & bit != 0 {
            return Err(ArgError::fail(format!(
                "multiple '{}' options specified",
                OPT_NAMES[optc]
            )));
        }
        self.options |= bit;
        Ok(())
    }
    fn has(&self, optc: usize) -> bool {
        self.options & (1u64 << optc) != 0
    }
}

/// ipvsadm's `tunnel_types_v_options`: per tunnel type, for `--tun-port`, `--tun-nocsum`,
/// `--tun-csum`, `--tun-remcsum`: `+` compulsory, `x` illegal, `1` at most one of them.
const TUN_OPTS: [usize; 4] = [O_TUN_PORT, O_TUN_NOCSUM, O_TUN_CSUM, O_TUN_REMCSUM];
fn tunnel_types_v_options(kind: TunnelKind) -> &'static [u8; 4] {
    match kind {
        TunnelKind::Ipip => b"xxxx",
        TunnelKind::Gue => b"+111",
        TunnelKind::Gre => b"x11x",
    }
}

/// ipvsadm's `tunnel_opt_check`, with its messages.
fn tunnel_opt_check(kind: TunnelKind, options: u64) -> Result<(), ArgError> {
    let row = tunnel_types_v_options(kind);
    let mut last: Option<usize> = None;
    for (j, &k) in TUN_OPTS.iter().enumerate() {
        if options & (1u64 << k) == 0 {
            if row[j] == b'+' {
                return Err(ArgError::fail(format!(
                    "You need to supply the '{}' option for the '{}' tunnel type",
                    OPT_NAMES[k],
                    kind.name()
                )));
            }
            continue;
        }
        if row[j] == b'x' {
            return Err(ArgError::fail(format!(
                "Illegal '{}' option with the '{}' tunnel type",
                OPT_NAMES[k],
                kind.name()
            )));
        }
        if row[j] == b'1' {
            if let Some(l) = last {
                return Err(ArgError::fail(format!(
                    "The option '{}' conflicts with the '{}' option in the '{}' tunnel type",
                    OPT_NAMES[k],
                    OPT_NAMES[l],
                    kind.name()
                )));
            }
            last = Some(k);
        }
    }
    Ok(())
}

fn generic_opt_check(cmd: Cmd, options: u64) -> Result<(), ArgError> {
    let i = cmd as usize;
    let row = COMMANDS_V_OPTIONS[i];
    let mut last: Option<usize> = None;
    for (j, &rule) in row.iter().enumerate() {
        if options & (1u64 << j) == 0 {
            if rule == b'+' {
                return Err(ArgError::fail(format!(
                    "You need to supply the '{}' option for the '{}' command",
                    OPT_NAMES[j], CMD_NAMES[i]
                )));
            }
        } else {
            if rule == b'x' {
                return Err(ArgError::fail(format!(
                    "Illegal '{}' option with the '{}' command",
                    OPT_NAMES[j], CMD_NAMES[i]
                )));
            }
            if rule == b'1' {
                match last {
                    None => last = Some(j),
                    Some(l) => {
                        return Err(ArgError::fail(format!(
                            "The option '{}' conflicts with the '{}' option in the '{}' command",
                            OPT_NAMES[j], OPT_NAMES[l], CMD_NAMES[i]
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Parses one ipvsadm argument vector (`argv[0]` is the program name, used in messages).
pub fn parse(argv: &[String], names: &Names) -> Result<Command, ArgError> {
    let program = argv.first().map(String::as_str).unwrap_or("ipvsadm");
    let mut sc = Scanner::new(argv);

    let mut daemon_master = false;
    let cmd = match sc.next_opt() {
        Scanned::Opt(Tag::Cmd(c), value) => {
            if matches!(c, Cmd::StartDaemon | Cmd::StopDaemon) {
                daemon_master = value == Some("master");
                let v = value.unwrap_or("");
                if v != "master" && v != "backup" {
                    return Err(ArgError::fail(if c == Cmd::StartDaemon {
                        "illegal start-daemon parameter specified"
                    } else {
                        "illegal start_daemon specified"
                    }));
                }
            }
            c
        }
        Scanned::Opt(Tag::Help, _) => return Ok(Command::Help),
        Scanned::Opt(Tag::Version, _) => return Ok(Command::Version),
        _ => return Err(ArgError::try_help(program)),
    };
    sc.b_is_fullnat = matches!(cmd, Cmd::AddDest | Cmd::EditDest);

    let mut ce = Entry::default();
    loop {
        let (tag, value) = match sc.next_opt() {
            Scanned::End => break,
            Scanned::Err(e) => return Err(e),
            Scanned::Opt(t, v) => (t, v),
        };
        let v = value.unwrap_or("");
        match tag {
            Tag::Tcp | Tag::Udp | Tag::Sctp => {
                ce.set_option(O_SERVICE)?;
                let proto = match tag {
                    Tag::Tcp => Some(Protocol::Tcp),
                    Tag::Udp => Some(Protocol::Udp),
                    _ => None,
                };
                ce.sctp = tag == Tag::Sctp;
                ce.proto = proto;
                match parse_endpoint(v, proto, names) {
                    None => {
                        return Err(ArgError::fail(
                            "illegal virtual server address[:port] specified",
                        ));
                    }
                    Some(Endpoint::V6) => ce.ipv6 = true,
                    Some(Endpoint::V4(a, p)) => ce.service = Some((a, p.unwrap_or(0))),
                }
            }
            Tag::Fwmark => {
                ce.set_option(O_SERVICE)?;
                ce.fwmark = match v.parse::<i64>() {
                    Ok(n) if n > 0 && n <= i64::from(u32::MAX) => n as u32,
                    _ => {
                        return Err(ArgError::fail(format!(
                            "invalid fwmark value `{v}' specified"
                        )));
                    }
                };
            }
            Tag::Scheduler => {
                ce.set_option(O_SCHEDULER)?;
                ce.sched = Some(value.unwrap_or(""));
            }
            Tag::Persistent => {
                ce.set_option(O_PERSISTENT)?;
                ce.persistent = Some(parse_timeout(value, 1, i64::from(MAX_TIMEOUT))?);
            }
            Tag::Netmask => {
                ce.set_option(O_NETMASK)?;
                ce.netmask = Some(v.parse().map_err(|_| {
                    ArgError::fail("illegal virtual server persistent mask specified")
                })?);
            }
            Tag::Real => {
                ce.set_option(O_SERVER)?;
                match parse_endpoint(v, ce.proto, names) {
                    None => {
                        return Err(ArgError::fail(
                            "illegal real server address[:port] specified",
                        ));
                    }
                    Some(Endpoint::V6) => ce.ipv6 = true,
                    Some(Endpoint::V4(a, p)) => ce.real = Some((a, p)),
                }
            }
            Tag::Masq | Tag::Ipip | Tag::Gate | Tag::FullNat => {
                ce.set_option(O_FORWARD)?;
                ce.forward = Some(tag);
            }
            Tag::Weight => {
                ce.set_option(O_WEIGHT)?;
                ce.weight = Some(
                    string_to_number(v, 0, 65535)
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| ArgError::fail("illegal weight specified"))?,
                );
            }
            Tag::UThreshold | Tag::LThreshold => {
                let upper = tag == Tag::UThreshold;
                ce.set_option(if upper { O_UTHRESHOLD } else { O_LTHRESHOLD })?;
                let n = string_to_number(v, 0, i64::from(i32::MAX))
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        ArgError::fail(if upper {
                            "illegal u_threshold specified"
                        } else {
                            "illegal l_threshold specified"
                        })
                    })?;
                if upper {
                    ce.upper = n;
                } else {
                    ce.lower = n;
                }
            }
            Tag::Connection => ce.set_option(O_CONNECTION)?,
            Tag::Numeric => {
                ce.set_option(O_NUMERIC)?;
                ce.format.numeric = true;
            }
            Tag::McastInterface => {
                ce.set_option(O_MCAST)?;
                // strncpy into IP_VS_IFNAME_MAXLEN - 1 bytes.
                ce.mcast_ifn = Some(value.unwrap_or(""));
            }
            Tag::SyncId => {
                ce.set_option(O_SYNCID)?;
                ce.syncid = string_to_number(v, 0, 255)
                    .ok_or_else(|| ArgError::fail("illegal syncid specified"))?
                    as u8;
            }
            Tag::Timeout => ce.set_option(O_TIMEOUT)?,
            Tag::Daemon => ce.set_option(O_DAEMON)?,
            Tag::Stats => {
                ce.set_option(O_STATS)?;
                ce.format.stats = true;
            }
            Tag::Rate => {
                ce.set_option(O_RATE)?;
                ce.format.rate = true;
            }
            Tag::Thresholds => {
                ce.set_option(O_THRESHOLDS)?;
                ce.format.thresholds = true;
            }
            Tag::PersistentConn => {
                ce.set_option(O_PERSISTENTCONN)?;
                ce.format.persistent_conn = true;
            }
            Tag::NoSort => {
                ce.set_option(O_NOSORT)?;
                ce.format.nosort = true;
            }
            Tag::Sort => {}
            Tag::Exact => {
                ce.set_option(O_EXACT)?;
                ce.format.exact = true;
            }
            Tag::Ipv6 => {
                if ce.fwmark == 0 {
                    // ipvsadm's message ends with its own newline before fail()'s.
                    return Err(ArgError::fail("-6 used before -f\n"));
                }
                ce.ipv6 = true;
            }
            Tag::Ops => {
                ce.set_option(O_ONEPACKET)?;
                ce.ops = true;
            }
            Tag::Pe => {
                ce.set_option(O_PE)?;
                ce.pe = true;
            }
            Tag::SchedFlags => {
                ce.set_option(O_SCHED_FLAGS)?;
                ce.sched_flags = Some(v);
            }
            Tag::McastGroup => {
                ce.set_option(O_MCAST_GROUP)?;
                let ok = if v.contains(':') {
                    v.parse::<std::net::Ipv6Addr>()
                        .is_ok_and(|a| a.is_multicast())
                } else {
                    v.parse::<Ipv4Addr>().is_ok_and(|a| a.is_multicast())
                };
                if !ok {
                    let fam = if v.contains(':') { "IPv6" } else { "IPv4" };
                    return Err(ArgError::fail(format!("invalid {fam} mcast-group `{v}'")));
                }
            }
            Tag::McastPort => {
                ce.set_option(O_MCAST_PORT)?;
                if string_to_number(v, 1, 65535).is_none() {
                    return Err(ArgError::fail("illegal mcast-port specified"));
                }
            }
            Tag::McastTtl => {
                ce.set_option(O_MCAST_TTL)?;
                if string_to_number(v, 1, 255).is_none() {
                    return Err(ArgError::fail("illegal mcast-ttl specified"));
                }
            }
            Tag::SyncMaxlen => {
                ce.set_option(O_SYNC_MAXLEN)?;
                if string_to_number(v, 1, 65535 - 20 - 8).is_none() {
                    return Err(ArgError::fail("illegal sync-maxlen specified"));
                }
            }
            Tag::TunInfo => {
                ce.set_option(O_TUN_INFO)?;
                ce.format.tun_info = true;
            }
            Tag::TunType => {
                ce.set_option(O_TUN_TYPE)?;
                ce.tun_kind = Some(
                    TunnelKind::parse(v)
                        .ok_or_else(|| ArgError::fail("illegal tunnel type specified"))?,
                );
                ce.tunnel_options = true;
            }
            Tag::TunPort => {
                ce.set_option(O_TUN_PORT)?;
                ce.tun_port = string_to_number(v, 1, 65535)
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| ArgError::fail("illegal tunnel port specified"))?;
                ce.tunnel_options = true;
            }
            Tag::TunNocsum | Tag::TunCsum | Tag::TunRemcsum => {
                let (optc, c) = match tag {
                    Tag::TunNocsum => (O_TUN_NOCSUM, TunnelCsum::NoCsum),
                    Tag::TunCsum => (O_TUN_CSUM, TunnelCsum::Csum),
                    _ => (O_TUN_REMCSUM, TunnelCsum::RemCsum),
                };
                ce.set_option(optc)?;
                ce.tun_csum = Some(c);
                ce.tunnel_options = true;
            }
            Tag::Laddr => {
                ce.set_option(O_LADDR)?;
                // DPVS's parse_service: an address or a host name; a port is ignored.
                match parse_endpoint(v, ce.proto, names) {
                    None => return Err(ArgError::fail("illegal local address")),
                    Some(Endpoint::V6) => ce.ipv6 = true,
                    Some(Endpoint::V4(a, _)) => {
                        LocalAddr::check_addr(a).map_err(|e| ArgError::fail(e.to_string()))?;
                        ce.laddr = Some(a);
                    }
                }
            }
            Tag::Ifname => {
                ce.set_option(O_IFNAME)?;
                LocalAddr::check_interface(v).map_err(|e| ArgError::fail(e.to_string()))?;
                ce.ifname = Some(v);
            }
            Tag::ProxyProtocol => {
                ce.set_option(O_PROXY_PROTOCOL)?;
                ce.proxy_protocol = parse_proxy_protocol(v)?;
            }
            Tag::Cmd(_) | Tag::Help | Tag::Version => {
                return Err(ArgError::fail(format!("invalid option `{}'", sc.last)));
            }
        }
    }

    let mut positional = sc.positional.into_iter();
    let mut timeouts = (0, 0, 0);
    if cmd == Cmd::Timeout {
        match (positional.next(), positional.next(), positional.next()) {
            (Some(a), Some(b), Some(c)) => {
                let max = i64::from(MAX_TIMEOUT);
                timeouts = (
                    parse_timeout(Some(a), 0, max)?,
                    parse_timeout(Some(b), 0, max)?,
                    parse_timeout(Some(c), 0, max)?,
                );
            }
            _ => return Err(ArgError::fail("--set option requires 3 timeout values")),
        }
    }
    if let Some(extra) = positional.next() {
        return Err(ArgError::fail(format!("unexpected argument {extra}")));
    }
    let sched_flags = match ce.sched_flags {
        Some(f) => Some(parse_sched_flags(ce.sched, f)?),
        None => None,
    };

    generic_opt_check(cmd, ce.options)?;

    if matches!(cmd, Cmd::Add | Cmd::Edit) {
        let port_zero = ce.service.is_some_and(|(_, p)| p == 0);
        if ce.fwmark == 0 && !ce.ipv6 && !ce.sctp && port_zero && ce.persistent.is_none() {
            return Err(ArgError::fail(
                "Zero port specified for non-persistent service",
            ));
        }
        if ce.ops && ce.fwmark == 0 && ce.proto != Some(Protocol::Udp) {
            return Err(ArgError::fail(
                "One-Packet Scheduling is only for UDP virtual services",
            ));
        }
        if ce.proxy_protocol == ProxyVersion::V1
            && ce.fwmark == 0
            && ce.proto == Some(Protocol::Udp)
        {
            return Err(ArgError::fail(
                crate::model::ModelError::ProxyV1Udp.to_string(),
            ));
        }
    }
    if matches!(cmd, Cmd::AddDest | Cmd::EditDest)
        && ce.tunnel_options
        && ce.forward != Some(Tag::Ipip)
    {
        return Err(ArgError::fail(
            "Tunnel options conflict with forward method",
        ));
    }
    if matches!(cmd, Cmd::AddDest | Cmd::EditDest) {
        tunnel_opt_check(ce.tun_kind.unwrap_or(TunnelKind::Ipip), ce.options)?;
    }
    if matches!(cmd, Cmd::List) {
        let o = |b| ce.has(b);
        if ((o(O_CONNECTION) || o(O_TIMEOUT) || o(O_DAEMON))
            && (o(O_STATS) || o(O_RATE) || o(O_THRESHOLDS)))
            || ((o(O_TIMEOUT) || o(O_DAEMON)) && o(O_PERSISTENTCONN))
        {
            return Err(ArgError::fail("options conflicts in the list command"));
        }
    }

    // What ipvsadm accepts and uvs does not support (yet).
    if cmd == Cmd::StartDaemon
        && (ce.has(O_MCAST_GROUP)
            || ce.has(O_MCAST_PORT)
            || ce.has(O_MCAST_TTL)
            || ce.has(O_SYNC_MAXLEN))
    {
        return Err(ArgError::unsupported(
            "--mcast-group, --mcast-port, --mcast-ttl and --sync-maxlen are not supported: uvs syncs to 224.0.0.81:8848, ttl 1, maxlen 1472",
        ));
    }
    if ce.sctp {
        return Err(ArgError::unsupported("SCTP services are not supported yet"));
    }
    if ce.ipv6 {
        return Err(ArgError::unsupported("IPv6 is not supported yet"));
    }
    if ce.pe {
        return Err(ArgError::unsupported(
            "persistence engines (--pe) are not supported yet",
        ));
    }

    let key = if ce.fwmark != 0 {
        // `-f N`: which packets carry the mark is decided by uvs's mark rules.
        Some(ServiceKey::fwmark(ce.fwmark))
    } else {
        // A service is always TCP or UDP here: SCTP was refused above.
        ce.service
            .map(|(vip, port)| ServiceKey::addr(ce.proto.unwrap_or(Protocol::Tcp), vip, port))
    };
    let need_key = || key.ok_or_else(|| ArgError::try_help(program));
    let real = || -> Result<RealArgs, ArgError> {
        let (addr, port) = ce.real.ok_or_else(|| ArgError::try_help(program))?;
        Ok(RealArgs {
            addr,
            port,
            // ipvsadm's default is -g, for -a and -e alike.
            forward: match ce.forward {
                Some(Tag::Masq) => ForwardMethod::Masq,
                Some(Tag::Ipip) => ForwardMethod::Tunnel(Tunnel {
                    kind: ce.tun_kind.unwrap_or(TunnelKind::Ipip),
                    port: ce.tun_port,
                    csum: ce.tun_csum.unwrap_or(TunnelCsum::NoCsum),
                }),
                Some(Tag::FullNat) => ForwardMethod::FullNat,
                _ => ForwardMethod::Route,
            },
            weight: ce.weight.unwrap_or(1),
            upper_threshold: ce.upper,
            lower_threshold: ce.lower,
        })
    };
    let service_args = || -> Result<ServiceArgs, ArgError> {
        Ok(ServiceArgs {
            key: need_key()?,
            scheduler: ce.sched.map(str::to_string),
            persistence_timeout: ce.persistent,
            netmask: ce.netmask.unwrap_or(Ipv4Addr::BROADCAST),
            ops: ce.ops,
            sched_flags: sched_flags.clone(),
            proxy_protocol: ce.proxy_protocol,
        })
    };
    // -z is compulsory for -P/-Q (the option table said so above).
    let laddr = || ce.laddr.ok_or_else(|| ArgError::try_help(program));
    Ok(match cmd {
        Cmd::Add => Command::AddService(service_args()?),
        Cmd::Edit => Command::EditService(service_args()?),
        Cmd::Del => Command::DeleteService(need_key()?),
        Cmd::Flush => Command::Clear,
        Cmd::AddDest => Command::AddServer(need_key()?, real()?),
        Cmd::EditDest => Command::EditServer(need_key()?, real()?),
        Cmd::DelDest => Command::DeleteServer(need_key()?, real()?),
        Cmd::Timeout => Command::SetTimeouts {
            tcp: timeouts.0,
            tcpfin: timeouts.1,
            udp: timeouts.2,
        },
        Cmd::List => {
            let what = if ce.has(O_CONNECTION) {
                ListWhat::Connections
            } else if let Some(k) = key {
                ListWhat::Service(k)
            } else if ce.has(O_TIMEOUT) {
                ListWhat::Timeout
            } else if ce.has(O_DAEMON) {
                ListWhat::Daemon
            } else {
                ListWhat::All
            };
            Command::List(what, ce.format)
        }
        Cmd::Save => Command::Save(Format {
            rule: true,
            ..ce.format
        }),
        Cmd::Restore => Command::Restore,
        Cmd::Zero => Command::Zero(key),
        Cmd::AddLaddr => Command::AddLaddr(
            need_key()?,
            LocalAddr {
                addr: laddr()?,
                interface: ce.ifname.map(str::to_string),
            },
        ),
        Cmd::DelLaddr => Command::DelLaddr(need_key()?, laddr()?),
        Cmd::GetLaddr => Command::GetLaddr(key),
        Cmd::StartDaemon | Cmd::StopDaemon => {
            Command::Daemon(crate::ctl::proto::DaemonCommand {
                start: cmd == Cmd::StartDaemon,
                master: daemon_master,
                // ipvsadm's DEF_MCAST_IFN when --mcast-interface is not given.
                interface: ce
                    .mcast_ifn
                    .filter(|s| !s.is_empty())
                    .map_or("eth0".to_string(), |s| s.chars().take(15).collect()),
                syncid: ce.syncid,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &str) -> Result<Command, ArgError> {
        let mut v = vec!["ipvsadm".to_string()];
        v.extend(args.split_whitespace().map(str::to_string));
        parse(&v, &Names::none())
    }

    fn err(args: &str) -> (String, i32) {
        let e = p(args).unwrap_err();
        (e.message, e.exit)
    }

    fn key(port: u16) -> ServiceKey {
        ServiceKey {
            proto: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 0, 0, 1),
            port,
            fwmark: 0,
        }
    }

    #[test]
    fn sync_daemon_commands() {
        use crate::ctl::proto::DaemonCommand;
        let d = |start, master, interface: &str, syncid| {
            Command::Daemon(DaemonCommand {
                start,
                master,
                interface: interface.into(),
                syncid,
            })
        };
        assert_eq!(
            p("--start-daemon master").unwrap(),
            d(true, true, "eth0", 0)
        );
        assert_eq!(
            p("--start-daemon=backup --mcast-interface eth1 --syncid 7").unwrap(),
            d(true, false, "eth1", 7)
        );
        assert_eq!(
            p("--stop-daemon backup").unwrap(),
            d(false, false, "eth0", 0)
        );
        assert_eq!(
            err("--start-daemon master --syncid 256"),
            ("illegal syncid specified".into(), 2)
        );
        assert_eq!(
            err("--start-daemon slave"),
            ("illegal start-daemon parameter specified".into(), 2)
        );
        assert_eq!(
            err("--stop-daemon master --mcast-interface eth0"),
            (
                "Illegal 'mcast-interface' option with the 'stop-daemon' command".into(),
                2
            )
        );
        assert_eq!(
            p("--start-daemon master --mcast-port 9000")
                .unwrap_err()
                .kind,
            ErrorKind::Unsupported
        );
        assert!(!p("--start-daemon master").unwrap().is_change());
    }

    #[test]
    fn option_table_rows_are_complete() {
        for row in COMMANDS_V_OPTIONS {
            assert_eq!(row.len(), NUMBER_OF_OPT);
        }
        assert_eq!(CMD_NAMES[Cmd::Zero as usize], "zero");
    }

    #[test]
    fn clusters_and_attached_values() {
        assert_eq!(
            p("-Ln").unwrap(),
            Command::List(
                ListWhat::All,
                Format {
                    numeric: true,
                    ..Format::default()
                }
            )
        );
        assert!(matches!(
            p("-lnc").unwrap(),
            Command::List(ListWhat::Connections, _)
        ));
        let Command::AddServer(k, r) = p("-a -t10.0.0.1:80 -r 10.0.0.2 -gw2").unwrap() else {
            panic!()
        };
        assert_eq!((k, r.weight, r.port), (key(80), 2, None));
        let Command::AddServer(_, r) = p("-a -t 10.0.0.1:80 -r 10.0.0.2:80 -w=3").unwrap() else {
            panic!()
        };
        assert_eq!(r.weight, 3);
        let Command::AddService(s) = p("-A -t 10.0.0.1:80 -p -s rr").unwrap() else {
            panic!()
        };
        assert_eq!(s.persistence_timeout, Some(360));
        let Command::AddService(s) =
            p("--add-service --tcp-service=10.0.0.1:80 --persistent 60").unwrap()
        else {
            panic!()
        };
        assert_eq!((s.persistence_timeout, s.scheduler), (Some(60), None));
    }

    #[test]
    fn ipvsadm_messages_and_exit_codes() {
        assert_eq!(
            err("-A -t 10.0.0.1:80 -s rr -w 2"),
            (
                "Illegal 'weight' option with the 'add-service' command".into(),
                2
            )
        );
        assert_eq!(
            err("-a -t 10.0.0.1:80 -w 2"),
            (
                "You need to supply the 'real-server' option for the 'add-server' command".into(),
                2
            )
        );
        assert_eq!(
            err("-t 10.0.0.1:80 -A"),
            (
                "Try `ipvsadm -h' or 'ipvsadm --help' for more information.".into(),
                255
            )
        );
        assert_eq!(err("-A -a"), ("invalid option `-a'".into(), 2));
        assert_eq!(err("-A -t"), ("-t: missing argument".into(), 255));
        assert_eq!(err("-L -k"), ("-k: unknown option".into(), 255));
        assert_eq!(err("-L --zap"), ("--zap: unknown option".into(), 255));
        assert_eq!(
            err("-a -t 10.0.0.1:80 -r 10.0.0.2 -w 65536"),
            ("illegal weight specified".into(), 2)
        );
        assert_eq!(
            err("-A -t 10.0.0.1:80 -p 0"),
            ("invalid timeout value `0' specified".into(), 2)
        );
        assert_eq!(
            err("-A -t 10.0.0.1 -s rr"),
            ("Zero port specified for non-persistent service".into(), 2)
        );
        assert_eq!(
            err("-Lc --stats"),
            ("options conflicts in the list command".into(), 2)
        );
        assert_eq!(
            err("-L -c -t 10.0.0.1:80"),
            (
                "The option 'service-address' conflicts with the 'connection' option in the 'list' command".into(),
                2
            )
        );
        assert_eq!(err("-L foo"), ("unexpected argument foo".into(), 2));
        assert_eq!(
            err("--set 1 2"),
            ("--set option requires 3 timeout values".into(), 2)
        );
        assert_eq!(
            err("-A -6 -t 10.0.0.1:80"),
            ("-6 used before -f\n".into(), 2)
        );
        assert_eq!(
            err("-A -t 10.0.0.1:80 -s rr -s wrr"),
            ("multiple 'scheduler' options specified".into(), 2)
        );
        assert_eq!(
            err("-A -t 10.0.0.1:80 -s rr -b sh-port"),
            ("incompatible scheduler flag `sh-port'".into(), 2)
        );
    }

    #[test]
    fn tunnel_options_are_checked_as_ipvsadm_checks_them() {
        let tunnel = |args: &str| match p(args) {
            Ok(Command::AddServer(_, r)) | Ok(Command::EditServer(_, r)) => r.forward,
            other => panic!("{args}: {other:?}"),
        };
        assert_eq!(
            tunnel("-a -t 10.0.0.1:80 -r 10.0.0.2 -i"),
            ForwardMethod::IPIP
        );
        assert_eq!(
            tunnel("-a -t 10.0.0.1:80 -r 10.0.0.2 --ipip --tun-type gue --tun-port 6080"),
            ForwardMethod::Tunnel(Tunnel {
                kind: TunnelKind::Gue,
                port: 6080,
                csum: TunnelCsum::NoCsum
            })
        );
        assert_eq!(
            tunnel("-e -t 10.0.0.1:80 -r 10.0.0.2 -i --tun-type gre --tun-csum"),
            ForwardMethod::Tunnel(Tunnel {
                kind: TunnelKind::Gre,
                port: 0,
                csum: TunnelCsum::Csum
            })
        );
        let cases = [
            (
                "-a -t 10.0.0.1:80 -r 10.0.0.2 -g --tun-type gue",
                "Tunnel options conflict with forward method",
            ),
            (
                "-a -t 10.0.0.1:80 -r 10.0.0.2 -i --tun-type gue",
                "You need to supply the 'tun-port' option for the 'gue' tunnel type",
            ),
            (
                "-a -t 10.0.0.1:80 -r 10.0.0.2 -i --tun-port 6080",
                "Illegal 'tun-port' option with the 'ipip' tunnel type",
            ),
            (
                "-a -t 10.0.0.1:80 -r 10.0.0.2 -i --tun-type gre --tun-remcsum",
                "Illegal 'tun-remcsum' option with the 'gre' tunnel type",
            ),
            (
                "-a -t 10.0.0.1:80 -r 10.0.0.2 -i --tun-type gue --tun-port 1 --tun-nocsum --tun-csum",
                "The option 'tun-csum' conflicts with the 'tun-nocsum' option in the 'gue' tunnel type",
            ),
            (
                "-a -t 10.0.0.1:80 -r 10.0.0.2 -i --tun-type vxlan",
                "illegal tunnel type specified",
            ),
            (
                "-a -t 10.0.0.1:80 -r 10.0.0.2 -i --tun-type gue --tun-port 0",
                "illegal tunnel port specified",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(err(args), (want.to_string(), 2), "{args}");
        }
    }

    /// DPVS's FullNAT syntax, as its tutorials and `ipvsadm -S` write it, next to ipvsadm's.
    #[test]
    fn dpvs_fullnat_commands_and_options() {
        let real = |args: &str| match p(args) {
            Ok(Command::AddServer(_, r)) | Ok(Command::EditServer(_, r)) => r,
            other => panic!("{args}: {other:?}"),
        };
        let r = real("-a -t 10.0.0.1:80 -r 10.0.0.2:8080 --fullnat");
        assert_eq!((r.forward, r.port), (ForwardMethod::FullNat, Some(8080)));
        let Ok(Some(Change::AddReal(_, spec))) = p("-a -t 10.0.0.1:80 -r 10.0.0.2:8080 --fullnat")
            .unwrap()
            .to_change()
        else {
            panic!()
        };
        assert_eq!(spec.port, 8080, "FullNAT maps ports, as NAT does");
        // DPVS's -b, which ipvsadm never accepts with -a/-e (its --sched-flags).
        let r = real("-a -t 10.0.0.1:80 -r 10.0.0.2 -b -w 3");
        assert_eq!((r.forward, r.weight), (ForwardMethod::FullNat, 3));
        let r = real("-e -t 10.0.0.1:80 -r 10.0.0.2 -bw2");
        assert_eq!((r.forward, r.weight), (ForwardMethod::FullNat, 2));
        assert_eq!(
            err("-A -t 10.0.0.1:80 -s rr -b sh-port"),
            ("incompatible scheduler flag `sh-port'".into(), 2),
            "-b stays --sched-flags for -A"
        );

        let service = |args: &str| match p(args) {
            Ok(Command::AddService(a)) | Ok(Command::EditService(a)) => a.proxy_protocol,
            other => panic!("{args}: {other:?}"),
        };
        assert_eq!(
            service("-A -t 10.0.0.1:80 -s rr --proxy-protocol v2"),
            ProxyVersion::V2
        );
        assert_eq!(
            service("-E -t 10.0.0.1:80 --proxy-protocol=V1"),
            ProxyVersion::V1
        );
        assert_eq!(
            service("-E -t 10.0.0.1:80 --proxy-protocol disable"),
            ProxyVersion::Off
        );
        assert_eq!(service("-E -t 10.0.0.1:80 -s rr"), ProxyVersion::Off);
        assert_eq!(
            service("-A -u 10.0.0.1:53 --proxy-protocol v2"),
            ProxyVersion::V2
        );

        let key80 = key(80);
        let laddr = |addr: [u8; 4], interface: Option<&str>| LocalAddr {
            addr: Ipv4Addr::from(addr),
            interface: interface.map(str::to_string),
        };
        assert_eq!(
            p("--add-laddr -t 10.0.0.1:80 -z 10.0.1.1 -F eth0").unwrap(),
            Command::AddLaddr(key80, laddr([10, 0, 1, 1], Some("eth0")))
        );
        // Alibaba's LVS syntax: no -F.
        assert_eq!(
            p("-P -t 10.0.0.1:80 -z 10.0.1.1").unwrap(),
            Command::AddLaddr(key80, laddr([10, 0, 1, 1], None))
        );
        assert_eq!(
            p("-Q -t 10.0.0.1:80 -z 10.0.1.1 -F eth0").unwrap(),
            Command::DelLaddr(key80, Ipv4Addr::new(10, 0, 1, 1))
        );
        assert_eq!(
            p("--del-laddr --laddr=10.0.1.1 --tcp-service=10.0.0.1:80").unwrap(),
            Command::DelLaddr(key80, Ipv4Addr::new(10, 0, 1, 1))
        );
        assert_eq!(p("-G").unwrap(), Command::GetLaddr(None));
        assert_eq!(
            p("--get-laddr -t 10.0.0.1:80").unwrap(),
            Command::GetLaddr(Some(key80))
        );
        assert!(p("-P -t 10.0.0.1:80 -z 10.0.1.1").unwrap().is_change());
        assert!(!p("-G").unwrap().is_change());
        assert_eq!(
            p("-P -f 3 -z 10.0.1.1").unwrap(),
            Command::AddLaddr(ServiceKey::fwmark(3), laddr([10, 0, 1, 1], None))
        );

        let cases = [
            (
                "-P -t 10.0.0.1:80",
                "You need to supply the 'local-address' option for the 'add-laddr' command",
            ),
            (
                "-Q -z 10.0.1.1",
                "You need to supply the 'service-address' option for the 'del-laddr' command",
            ),
            (
                "-G -n",
                "Illegal 'numeric' option with the 'get-laddr' command",
            ),
            (
                "-G -z 10.0.1.1",
                "Illegal 'local-address' option with the 'get-laddr' command",
            ),
            (
                "-P -t 10.0.0.1:80 -z 10.0.1.1 -w 2",
                "Illegal 'weight' option with the 'add-laddr' command",
            ),
            (
                "-A -t 10.0.0.1:80 -z 10.0.1.1",
                "Illegal 'local-address' option with the 'add-service' command",
            ),
            (
                "-a -t 10.0.0.1:80 -r 10.0.0.2 --proxy-protocol v2",
                "Illegal 'proxy-protocol' option with the 'add-server' command",
            ),
            (
                "-P -t 10.0.0.1:80 -z no-such-host!",
                "illegal local address",
            ),
            (
                "-P -t 10.0.0.1:80 -z 0.0.0.0",
                "illegal local address 0.0.0.0: a local address is a unicast address (not 0.0.0.0, 255.255.255.255, multicast or loopback)",
            ),
            (
                "-P -t 10.0.0.1:80 -z 10.0.1.1 -F eth0.1234567890123",
                "illegal interface name \"eth0.1234567890123\": 1 to 15 characters, no '/' or blank",
            ),
            (
                "-P -t 10.0.0.1:80 -z 10.0.1.1 -z 10.0.1.2",
                "multiple 'local-address' options specified",
            ),
            (
                "-a -t 10.0.0.1:80 -r 10.0.0.2 --fullnat -g",
                "multiple 'forwarding-method' options specified",
            ),
            (
                "-a -t 10.0.0.1:80 -r 10.0.0.2 --fullnat --tun-type gue",
                "Tunnel options conflict with forward method",
            ),
            (
                "-A -u 10.0.0.1:53 --proxy-protocol v1",
                "the PROXY protocol v1 has no UDP: use v2 for a UDP service",
            ),
            (
                "-A -t 10.0.0.1:80 --proxy-protocol v3",
                "illegal proxy protocol `v3' specified (disable, v1 or v2)",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(err(args), (want.to_string(), 2), "{args}");
        }
        let insecure = p("-A -t 10.0.0.1:80 --proxy-protocol v2-insecure").unwrap_err();
        assert_eq!(
            (insecure.kind, insecure.exit),
            (ErrorKind::Unsupported, 2),
            "{}",
            insecure.message
        );
        assert!(insecure.message.contains("use v2"), "{}", insecure.message);
    }

    #[test]
    fn unsupported_features_are_refused_after_ipvsadm_checks() {
        assert_eq!(
            p("-A -f 1 -s rr").unwrap(),
            p("-A --fwmark-service=1 -s rr").unwrap()
        );
        // -m is supported: masquerading, with the real's port mapped (or the service's).
        match p("-a -t 10.0.0.1:80 -r 10.0.0.2:8080 -m -w 3") {
            Ok(Command::AddServer(_, r)) => {
                assert_eq!(
                    (r.forward, r.port, r.weight),
                    (ForwardMethod::Masq, Some(8080), 3)
                );
            }
            other => panic!("{other:?}"),
        }
        match p("-e -t 10.0.0.1:80 -r 10.0.0.2:8080 -w 2") {
            Ok(Command::EditServer(_, r)) => assert_eq!(r.forward, ForwardMethod::Route),
            other => panic!("{other:?}: -e without -m means -g, as in ipvsadm"),
        }
        assert_eq!(
            err("-A -t 10.0.0.1:80 -s rr -m").0,
            "Illegal 'forwarding-method' option with the 'add-service' command"
        );
        assert!(err("-A -t 10.0.0.1:80 -s rr -o").0.contains("only for UDP"));
        // -o and -b are supported: they parse into the service.
        match p("-A -u 10.0.0.1:53 -s sh -o -b sh-port") {
            Ok(Command::AddService(a)) => {
                assert!(a.ops);
                assert_eq!(a.sched_flags.as_deref(), Some("sh-port"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn host_names_on_input_as_ipvsadm_save_prints_them() {
        // What `ipvsadm -S` without -n prints for the names /etc/hosts and /etc/services give.
        let names = Names::from_text(
            "http 80/tcp www\n",
            "10.0.0.1 vip.example.org vip\n10.0.0.2 web1 # primary\n",
        );
        let argv = |line: &str| -> Vec<String> {
            std::iter::once("ipvsadm")
                .chain(line.split_whitespace())
                .map(str::to_string)
                .collect()
        };
        let Command::AddServer(k, r) = parse(
            &argv("-a -t vip.example.org:http -r web1:http -g -w 1"),
            &names,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!((k, r.addr), (key(80), Ipv4Addr::new(10, 0, 0, 2)));
        let Command::AddService(s) = parse(&argv("-A -t vip:www -s rr"), &names).unwrap() else {
            panic!()
        };
        assert_eq!(s.key, key(80));
        assert_eq!(
            parse(&argv("-a -t vip:80 -r web2 -g"), &names)
                .unwrap_err()
                .message,
            "illegal real server address[:port] specified"
        );
        assert_eq!(
            parse(&argv("-A -t nowhere:80"), &names)
                .unwrap_err()
                .message,
            "illegal virtual server address[:port] specified"
        );
    }

    #[test]
    fn service_names_and_set() {
        let names = Names::from_text("http 80/tcp www\n", "");
        let v: Vec<String> = ["ipvsadm", "-A", "-t", "10.0.0.1:www", "-s", "rr"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let Command::AddService(s) = parse(&v, &names).unwrap() else {
            panic!()
        };
        assert_eq!(s.key, key(80));
        assert_eq!(
            p("--set 900 0 60").unwrap(),
            Command::SetTimeouts {
                tcp: 900,
                tcpfin: 0,
                udp: 60
            }
        );
    }
}
