//! ipvsadm-save style rules (`--rules`): what `ipvsadm -S -n` prints and `ipvsadm -R` reads.
//!
//! One ipvsadm invocation per line, optionally starting with the word `ipvsadm`; blank lines and
//! `#` comments are ignored (a token starting with `#` ends the line). Options are parsed the way
//! ipvsadm's popt does: long options with a separate or `=`-attached value (`--weight 2`,
//! `--weight=2`), short options clustered with an attached value (`-gw2`, `-t10.0.0.1:80`).
//!
//! Supported: `-A -E -D` (services), `-a -e -d` (real servers), `-C`; `-t`/`-u ADDR:PORT`,
//! `-s NAME` (default `wlc`, as ipvsadm), `-p [TIMEOUT]` (default 300), `-M MASK`,
//! `-r ADDR[:PORT]` (default port: the service port), `-g`, `-w N` (default 1), `-x N`, `-y N`.
//!
//! Semantics follow ipvsadm: `-E` and `-e` replace the service's (server's) settings, so an
//! option left out gets its default (`-e` without `-w` sets weight 1, `-E` without `-p` makes the
//! service non-persistent). One deliberate difference: `-E` without `-s` keeps the service's
//! current scheduler instead of resetting it to `wlc`, which is not implemented yet.
//!
//! [`parse`] is transactional, unlike `ipvsadm -R`: every line is applied to a clone of the base
//! table and the new table is returned only if all of them were accepted.

use std::net::Ipv4Addr;
use std::path::Path;

use super::ConfigError;
use super::toml_file::{DEFAULT_SCHEDULER, MAX_PERSISTENCE_TIMEOUT, MAX_THRESHOLD};
use crate::model::{
    ForwardMethod, MAX_WEIGHT, ModelError, Protocol, RealSpec, SchedulerKind, ServiceKey,
    ServiceSpec, ServiceTable,
};

/// `-p` without a timeout, as ipvsadm (`DEF_PERSISTENCE_TIMEOUT`).
pub const DEFAULT_PERSISTENCE_TIMEOUT: u32 = 300;

/// Reads the rules file at `path` and applies it to a copy of `base`.
pub fn load(path: &Path, base: &ServiceTable) -> Result<ServiceTable, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, base)
}

/// Applies every line of `text` to a clone of `base`. Returns the new table only if every line
/// was accepted; otherwise the error names the first bad line (`path` is only used in errors).
pub fn parse(text: &str, path: &Path, base: &ServiceTable) -> Result<ServiceTable, ConfigError> {
    let mut table = base.clone();
    for (index, line) in text.lines().enumerate() {
        apply_line(&mut table, line).map_err(|message| ConfigError::At {
            path: path.to_path_buf(),
            line: index.saturating_add(1),
            message,
        })?;
    }
    Ok(table)
}

// ---------------------------------------------------------------------------------------------
// Option table.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    AddService,
    EditService,
    DeleteService,
    AddServer,
    EditServer,
    DeleteServer,
    Clear,
    TcpService,
    UdpService,
    Scheduler,
    Persistent,
    Netmask,
    SchedFlags,
    Ops,
    RealServer,
    Gatewaying,
    Weight,
    UThreshold,
    LThreshold,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arg {
    None,
    Required,
    Optional,
}

/// (short, long, option, argument)
const OPTIONS: [(char, &str, Opt, Arg); 19] = [
    ('A', "add-service", Opt::AddService, Arg::None),
    ('E', "edit-service", Opt::EditService, Arg::None),
    ('D', "delete-service", Opt::DeleteService, Arg::None),
    ('a', "add-server", Opt::AddServer, Arg::None),
    ('e', "edit-server", Opt::EditServer, Arg::None),
    ('d', "delete-server", Opt::DeleteServer, Arg::None),
    ('C', "clear", Opt::Clear, Arg::None),
    ('t', "tcp-service", Opt::TcpService, Arg::Required),
    ('u', "udp-service", Opt::UdpService, Arg::Required),
    ('s', "scheduler", Opt::Scheduler, Arg::Required),
    ('p', "persistent", Opt::Persistent, Arg::Optional),
    ('M', "netmask", Opt::Netmask, Arg::Required),
    ('b', "sched-flags", Opt::SchedFlags, Arg::Required),
    ('o', "ops", Opt::Ops, Arg::None),
    ('r', "real-server", Opt::RealServer, Arg::Required),
    ('g', "gatewaying", Opt::Gatewaying, Arg::None),
    ('w', "weight", Opt::Weight, Arg::Required),
    ('x', "u-threshold", Opt::UThreshold, Arg::Required),
    ('y', "l-threshold", Opt::LThreshold, Arg::Required),
];

const FORWARD_UNSUPPORTED: &str =
    "forwarding method tunnel/masquerading is not supported yet (only -g, direct routing)";

/// ipvsadm options that exist but that uvs refuses, with the reason.
fn unsupported(short: Option<char>, long: Option<&str>, shown: &str) -> Option<String> {
    let msg = match (short, long) {
        (Some('i' | 'm'), _) | (_, Some("ipip" | "masquerading")) => FORWARD_UNSUPPORTED.into(),
        (Some('f'), _) | (_, Some("fwmark-service")) => {
            "fwmark services are not supported yet".into()
        }
        (Some('6'), _) | (_, Some("ipv6")) => "IPv6 is not supported yet".into(),
        (_, Some("sctp-service")) => "SCTP services are not supported yet".into(),
        (_, Some("pe" | "tun-type" | "tun-port" | "tun-nocsum" | "tun-csum" | "tun-remcsum")) => {
            format!("option '{shown}' is not supported yet")
        }
        (Some('R' | 'S' | 'L' | 'l' | 'Z' | 'h' | 'c' | 'n' | 'v'), _)
        | (
            _,
            Some(
                "restore" | "save" | "list" | "zero" | "help" | "set" | "start-daemon"
                | "stop-daemon" | "version",
            ),
        ) => format!(
            "'{shown}' cannot be used in a rules file (expected -A, -E, -D, -a, -e, -d or -C)"
        ),
        _ => return None,
    };
    Some(msg)
}

fn by_short(c: char) -> Result<(Opt, Arg), String> {
    OPTIONS
        .iter()
        .find(|o| o.0 == c)
        .map(|o| (o.2, o.3))
        .ok_or_else(|| {
            let shown = format!("-{c}");
            unsupported(Some(c), None, &shown).unwrap_or(format!("unknown option '{shown}'"))
        })
}

fn by_long(name: &str) -> Result<(Opt, Arg), String> {
    OPTIONS
        .iter()
        .find(|o| o.1 == name)
        .map(|o| (o.2, o.3))
        .ok_or_else(|| {
            let shown = format!("--{name}");
            unsupported(None, Some(name), &shown).unwrap_or(format!("unknown option '{shown}'"))
        })
}

// ---------------------------------------------------------------------------------------------
// One line.

/// Options of one line as written: (option, spelling, value).
type Given<'a> = Vec<(Opt, String, Option<&'a str>)>;

fn tokenize(line: &str) -> Vec<&str> {
    let mut tokens: Vec<&str> = line
        .split_whitespace()
        .take_while(|t| !t.starts_with('#'))
        .collect();
    if tokens
        .first()
        .is_some_and(|t| *t == "ipvsadm" || t.ends_with("/ipvsadm"))
    {
        tokens.remove(0);
    }
    tokens
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Splits tokens into options, popt style.
fn scan<'a>(tokens: &[&'a str]) -> Result<Given<'a>, String> {
    let mut given: Given<'a> = Vec::new();
    let mut i = 0;
    while let Some(&tok) = tokens.get(i) {
        i += 1;
        // The value of an option that takes one: attached, else the next token.
        let mut next_value = |attached: &'a str, arg: Arg, shown: &str| match arg {
            Arg::None => Ok(None),
            _ if !attached.is_empty() => Ok(Some(attached)),
            Arg::Required => match tokens.get(i) {
                Some(&v) => {
                    i += 1;
                    Ok(Some(v))
                }
                None => Err(format!("option '{shown}' needs a value")),
            },
            Arg::Optional => match tokens.get(i) {
                Some(&v) if is_number(v) => {
                    i += 1;
                    Ok(Some(v))
                }
                _ => Ok(None),
            },
        };
        if let Some(long) = tok.strip_prefix("--") {
            let (name, attached) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            if name.is_empty() {
                return Err(format!("unexpected argument '{tok}'"));
            }
            let (opt, arg) = by_long(name)?;
            let shown = format!("--{name}");
            let value = match (arg, attached) {
                (Arg::None, Some(_)) => return Err(format!("option '{shown}' takes no value")),
                (_, Some("")) => return Err(format!("option '{shown}' needs a value")),
                (_, attached) => next_value(attached.unwrap_or(""), arg, &shown)?,
            };
            given.push((opt, shown, value));
        } else if let Some(cluster) = tok.strip_prefix('-').filter(|c| !c.is_empty()) {
            for (at, c) in cluster.char_indices() {
                let (opt, arg) = by_short(c)?;
                let shown = format!("-{c}");
                if arg == Arg::None {
                    given.push((opt, shown, None));
                    continue;
                }
                let attached = cluster.get(at.saturating_add(c.len_utf8())..).unwrap_or("");
                let value = next_value(attached, arg, &shown)?;
                given.push((opt, shown, value));
                break;
            }
        } else {
            return Err(format!("unexpected argument '{tok}'"));
        }
    }
    Ok(given)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Command {
    AddService,
    EditService,
    DeleteService,
    AddServer,
    EditServer,
    DeleteServer,
    Clear,
}

/// Everything one line says, before it is checked against its command.
#[derive(Default)]
struct Line<'a> {
    command: Option<(Command, String)>,
    service: Option<(Protocol, &'a str)>,
    scheduler: Option<&'a str>,
    /// `Some(None)`: `-p` without a timeout.
    persistent: Option<Option<&'a str>>,
    netmask: Option<&'a str>,
    sched_flags: Option<&'a str>,
    ops: bool,
    real: Option<&'a str>,
    weight: Option<&'a str>,
    upper: Option<&'a str>,
    lower: Option<&'a str>,
}

fn collect(given: Given<'_>) -> Result<(Line<'_>, Vec<(Opt, String)>), String> {
    let mut line = Line::default();
    let mut seen: Vec<(Opt, String)> = Vec::new();
    for (opt, shown, value) in given {
        if let Some((_, first)) = seen.iter().find(|(o, _)| *o == opt) {
            return Err(format!(
                "option '{shown}' is given twice (first as '{first}')"
            ));
        }
        let v = value.unwrap_or("");
        let command = match opt {
            Opt::AddService => Some(Command::AddService),
            Opt::EditService => Some(Command::EditService),
            Opt::DeleteService => Some(Command::DeleteService),
            Opt::AddServer => Some(Command::AddServer),
            Opt::EditServer => Some(Command::EditServer),
            Opt::DeleteServer => Some(Command::DeleteServer),
            Opt::Clear => Some(Command::Clear),
            _ => None,
        };
        if let Some(cmd) = command {
            if let Some((_, first)) = &line.command {
                return Err(format!(
                    "more than one command on one line ('{first}' and '{shown}')"
                ));
            }
            line.command = Some((cmd, shown.clone()));
        }
        match opt {
            Opt::TcpService | Opt::UdpService => {
                if line.service.is_some() {
                    return Err("more than one service selector (-t/-u) on one line".into());
                }
                let proto = if opt == Opt::TcpService {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                };
                line.service = Some((proto, v));
            }
            Opt::Scheduler => line.scheduler = Some(v),
            Opt::Persistent => line.persistent = Some(value),
            Opt::Netmask => line.netmask = Some(v),
            Opt::SchedFlags => line.sched_flags = Some(v),
            Opt::Ops => line.ops = true,
            Opt::RealServer => line.real = Some(v),
            Opt::Weight => line.weight = Some(v),
            Opt::UThreshold => line.upper = Some(v),
            Opt::LThreshold => line.lower = Some(v),
            _ => {}
        }
        seen.push((opt, shown));
    }
    Ok((line, seen))
}

/// Options (besides the command itself) each command accepts.
fn allowed(cmd: Command, opt: Opt) -> bool {
    use Opt::*;
    match cmd {
        Command::AddService | Command::EditService => {
            matches!(
                opt,
                TcpService | UdpService | Scheduler | Persistent | Netmask | SchedFlags | Ops
            )
        }
        Command::DeleteService => matches!(opt, TcpService | UdpService),
        Command::AddServer | Command::EditServer => matches!(
            opt,
            TcpService | UdpService | RealServer | Gatewaying | Weight | UThreshold | LThreshold
        ),
        Command::DeleteServer => matches!(opt, TcpService | UdpService | RealServer | Gatewaying),
        Command::Clear => false,
    }
}

fn is_command(opt: Opt) -> bool {
    use Opt::*;
    matches!(
        opt,
        AddService | EditService | DeleteService | AddServer | EditServer | DeleteServer | Clear
    )
}

fn apply_line(table: &mut ServiceTable, text: &str) -> Result<(), String> {
    let tokens = tokenize(text);
    if tokens.is_empty() {
        return Ok(());
    }
    let (line, seen) = collect(scan(&tokens)?)?;
    let Some((cmd, cmd_shown)) = line.command.clone() else {
        return Err("no command: expected -A, -E, -D, -a, -e, -d or -C".into());
    };
    if let Some((_, shown)) = seen
        .iter()
        .find(|(o, _)| !is_command(*o) && !allowed(cmd, *o))
    {
        return Err(format!("option '{shown}' cannot be used with {cmd_shown}"));
    }
    if cmd == Command::Clear {
        // Delete one by one rather than replacing the table: real ids must never be reused.
        let keys: Vec<ServiceKey> = table.services().iter().map(|s| s.key).collect();
        for key in &keys {
            table.delete_service(key).map_err(|e| format!("{e}"))?;
        }
        return Ok(());
    }
    let Some((proto, svc_text)) = line.service else {
        return Err(format!(
            "{cmd_shown} needs a service: -t ADDR:PORT or -u ADDR:PORT"
        ));
    };
    let (vip, port) = endpoint(svc_text, "service")?;
    let Some(port) = port else {
        return Err(format!("service '{svc_text}' needs a port (ADDR:PORT)"));
    };
    let key = ServiceKey { proto, vip, port };
    let label = format!("service {key}");
    let in_service = |e: ModelError| format!("{label}: {e}");

    match cmd {
        Command::AddService | Command::EditService => {
            let scheduler = match line.scheduler {
                Some(name) => SchedulerKind::parse(name).map_err(in_service)?,
                None if cmd == Command::EditService => table
                    .service(&key)
                    .map(|s| s.scheduler)
                    .ok_or_else(|| in_service(ModelError::NoService(key)))?,
                None => DEFAULT_SCHEDULER,
            };
            let persistence_timeout = match line.persistent {
                None => None,
                Some(None) => Some(DEFAULT_PERSISTENCE_TIMEOUT),
                Some(Some(t)) => Some(number(
                    t,
                    1,
                    MAX_PERSISTENCE_TIMEOUT,
                    "persistence timeout",
                )?),
            };
            let persistence_netmask = match line.netmask {
                None => Ipv4Addr::BROADCAST,
                Some(m) => m
                    .parse()
                    .map_err(|_| format!("netmask '{m}' is not a dotted-quad IPv4 netmask"))?,
            };
            let sched_flags =
                crate::sched::SchedFlags::parse(line.sched_flags.unwrap_or(""), scheduler)
                    .map_err(|e| format!("{label}: {e}"))?;
            let spec = ServiceSpec {
                key,
                scheduler,
                persistence_timeout,
                persistence_netmask,
                sched_flags,
                ops: line.ops,
            };
            let result = if cmd == Command::AddService {
                table.add_service(spec)
            } else {
                table.edit_service(spec)
            };
            result.map_err(&in_service)
        }
        Command::DeleteService => table.delete_service(&key).map_err(in_service),
        Command::AddServer | Command::EditServer | Command::DeleteServer => {
            let Some(real_text) = line.real else {
                return Err(format!("{cmd_shown} needs a real server: -r ADDR[:PORT]"));
            };
            let (addr, real_port) = endpoint(real_text, "real server")?;
            // Direct routing: the real port is always the service port (as ipvsadm forces it).
            let shown_port = real_port.unwrap_or(key.port);
            let real_label = format!("{label}: real {addr}:{shown_port}");
            let in_real = |e: ModelError| format!("{real_label}: {e}");
            if cmd == Command::DeleteServer {
                return table.delete_real(&key, addr, key.port).map_err(in_real);
            }
            let weight = match line.weight {
                None => 1,
                Some(w) => weight(w).map_err(|m| format!("{real_label}: {m}"))?,
            };
            let opt_threshold = |v: Option<&str>, what: &str| {
                v.map_or(Ok(0), |t| number(t, 0, MAX_THRESHOLD, what))
            };
            let spec = RealSpec {
                addr,
                port: shown_port,
                weight,
                forward: ForwardMethod::Route,
                upper_threshold: opt_threshold(line.upper, "upper threshold (-x)")?,
                lower_threshold: opt_threshold(line.lower, "lower threshold (-y)")?,
            };
            if cmd == Command::AddServer {
                table.add_real(&key, spec).map(|_| ()).map_err(in_real)
            } else {
                table.edit_real(&key, spec).map_err(in_real)
            }
        }
        Command::Clear => Ok(()),
    }
}

/// A decimal number in `lo..=hi`.
fn number(text: &str, lo: u32, hi: u32, what: &str) -> Result<u32, String> {
    if !is_number(text) {
        return Err(format!("{what} '{text}' is not a number"));
    }
    match text.parse::<u64>() {
        Ok(n) if n >= u64::from(lo) && n <= u64::from(hi) => {
            u32::try_from(n).map_err(|_| format!("{what} {text} is out of range {lo}..{hi}"))
        }
        _ => Err(format!("{what} {text} is out of range {lo}..{hi}")),
    }
}

fn weight(text: &str) -> Result<u32, String> {
    if !is_number(text) {
        return Err(format!("weight '{text}' is not a number"));
    }
    match text.parse::<u64>() {
        Ok(n) if n <= u64::from(MAX_WEIGHT) => u32::try_from(n).map_err(|_| String::new()),
        Ok(n) => Err(ModelError::WeightOutOfRange(n).to_string()),
        Err(_) => Err(format!("weight {text} is out of range 0..{MAX_WEIGHT}")),
    }
}

/// `ADDR[:PORT]` with a numeric IPv4 address and a port in 1..65535.
fn endpoint(text: &str, what: &str) -> Result<(Ipv4Addr, Option<u16>), String> {
    if text.starts_with('[') || text.matches(':').count() > 1 {
        return Err(format!("{what} '{text}': IPv6 is not supported yet"));
    }
    let (addr_text, port_text) = match text.split_once(':') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr = addr_text.parse::<Ipv4Addr>().map_err(|_| {
        format!(
            "{what} '{text}': '{addr_text}' is not an IPv4 address (host names are not resolved; save with ipvsadm -S -n)"
        )
    })?;
    let port = match port_text {
        None => None,
        Some(p) => {
            let n = number(p, 1, 65_535, "port")
                .map_err(|_| format!("{what} '{text}': port '{p}' is not in 1..65535"))?;
            Some(
                u16::try_from(n)
                    .map_err(|_| format!("{what} '{text}': port '{p}' is not in 1..65535"))?,
            )
        }
    };
    Ok((addr, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEMO: &str = include_str!("../../configs/demo.rules");

    fn p(text: &str) -> Result<ServiceTable, ConfigError> {
        parse(text, Path::new("r.rules"), &ServiceTable::new())
    }

    #[track_caller]
    fn refused_on(base: &ServiceTable, text: &str, line: usize, needles: &[&str]) {
        match parse(text, Path::new("r.rules"), base) {
            Err(e @ ConfigError::At { .. }) => {
                let shown = e.to_string();
                let ConfigError::At {
                    line: l, message, ..
                } = e
                else {
                    unreachable!()
                };
                assert_eq!(l, line, "wrong line for {shown:?}");
                assert!(shown.starts_with(&format!("r.rules:{line}: ")), "{shown}");
                for n in needles {
                    assert!(message.contains(n), "{message:?} lacks {n:?}");
                }
            }
            other => panic!("expected At error, got {other:?}"),
        }
    }

    #[track_caller]
    fn refused(text: &str, line: usize, needles: &[&str]) {
        refused_on(&ServiceTable::new(), text, line, needles);
    }

    fn key(proto: Protocol, port: u16) -> ServiceKey {
        ServiceKey {
            proto,
            vip: Ipv4Addr::new(10, 0, 0, 100),
            port,
        }
    }

    const RR80: &str = "-A -t 10.0.0.100:80 -s rr\n";

    #[test]
    fn demo_rules_parse_to_the_expected_model() {
        let t = p(DEMO).unwrap();
        let mut want = ServiceTable::new();
        for k in [key(Protocol::Tcp, 80), key(Protocol::Udp, 53)] {
            want.add_service(ServiceSpec::new(k, SchedulerKind::Rr))
                .unwrap();
            for last in [11, 12] {
                want.add_real(&k, RealSpec::route(Ipv4Addr::new(10, 0, 0, last), k.port))
                    .unwrap();
            }
        }
        assert_eq!(t, want);
    }

    #[test]
    fn ipvsadm_save_output_with_persistence_parses() {
        let t = p(
            "ipvsadm -A -t 10.0.0.100:443 -s wrr -p 600 -M 255.255.255.0\n\
                   -a -t 10.0.0.100:443 -r 10.0.0.11:443 -g -w 5\n",
        )
        .unwrap();
        let s = t.service(&key(Protocol::Tcp, 443)).unwrap();
        assert_eq!(s.scheduler, SchedulerKind::Wrr);
        assert_eq!(s.persistence_timeout, Some(600));
        assert_eq!(s.persistence_netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(s.reals[0].weight, 5);
    }

    #[test]
    fn sched_flags_and_ops_map_into_the_model() {
        let t = p("-A -t 10.0.0.100:80 -s sh -b sh-fallback,sh-port -p 60\n\
                   -A -u 10.0.0.100:53 -s rr -o\n")
        .unwrap();
        let s = t.service(&key(Protocol::Tcp, 80)).unwrap();
        assert!(s.sched_flags.sh_fallback && s.sched_flags.sh_port && !s.ops);
        assert_eq!(s.persistence_timeout, Some(60));
        assert!(t.service(&key(Protocol::Udp, 53)).unwrap().ops);
        assert!(
            p("-A -t 10.0.0.100:80 -s rr -o\n").is_err(),
            "OPS is UDP only"
        );
        assert!(p("-A -t 10.0.0.100:80 -s rr -b sh-port\n").is_err());
    }

    #[test]
    fn long_options_and_defaults() {
        let t = p("  # comment\n\n--add-service --tcp-service 10.0.0.100:80 --scheduler=rr --persistent\n\
                   --add-server --tcp-service=10.0.0.100:80 --real-server 10.0.0.11 --gatewaying --weight=0 --u-threshold 10 --l-threshold 5 # trailing\n")
        .unwrap();
        let s = t.service(&key(Protocol::Tcp, 80)).unwrap();
        assert_eq!(s.persistence_timeout, Some(DEFAULT_PERSISTENCE_TIMEOUT));
        let r = &s.reals[0];
        assert_eq!(
            (r.port, r.weight, r.upper_threshold, r.lower_threshold),
            (80, 0, 10, 5)
        );
    }

    #[test]
    fn attached_values_and_clusters() {
        let t = p("-At10.0.0.100:80 -srr -p\n-a -t10.0.0.100:80 -r10.0.0.11 -gw2\n-a -t 10.0.0.100:80 -r 10.0.0.12:80 -w3\n")
            .unwrap();
        let s = t.service(&key(Protocol::Tcp, 80)).unwrap();
        assert_eq!(s.persistence_timeout, Some(300));
        assert_eq!(s.reals[0].weight, 2);
        assert_eq!(s.reals[1].weight, 3);
        let t = p("-A -t 10.0.0.100:80 -s rr -p600\n").unwrap();
        let s = t.service(&key(Protocol::Tcp, 80)).unwrap();
        assert_eq!(s.persistence_timeout, Some(600));
    }

    #[test]
    fn weight_defaults_to_one_and_edit_replaces() {
        let t = p(&format!(
            "{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11:80\n-e -t 10.0.0.100:80 -r 10.0.0.11:80 -w 7 -x 9\n"
        ))
        .unwrap();
        let r = &t.service(&key(Protocol::Tcp, 80)).unwrap().reals[0];
        assert_eq!((r.weight, r.upper_threshold), (7, 9));
        let t = p(&format!(
            "{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11:80 -w 4\n-e -t 10.0.0.100:80 -r 10.0.0.11:80\n"
        ))
        .unwrap();
        assert_eq!(
            t.service(&key(Protocol::Tcp, 80)).unwrap().reals[0].weight,
            1
        );
    }

    #[test]
    fn edit_delete_and_clear() {
        let t = p(&format!(
            "{RR80}-E -t 10.0.0.100:80 -p 60\n-A -u 10.0.0.100:53 -s wrr\n-D -u 10.0.0.100:53\n"
        ))
        .unwrap();
        let s = t.service(&key(Protocol::Tcp, 80)).unwrap();
        assert_eq!(
            s.scheduler,
            SchedulerKind::Rr,
            "-E without -s keeps the scheduler"
        );
        assert_eq!(s.persistence_timeout, Some(60));
        assert_eq!(t.services().len(), 1);

        let t = p(&format!(
            "{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11\n-d -t 10.0.0.100:80 -r 10.0.0.11:80\n"
        ))
        .unwrap();
        assert!(t.service(&key(Protocol::Tcp, 80)).unwrap().reals.is_empty());

        let base = p(DEMO).unwrap();
        let first_id = base.reals().next().unwrap().1.id;
        let t = parse(
            "-C\n-A -t 10.0.0.100:80 -s rr\n-a -t 10.0.0.100:80 -r 10.0.0.11:80\n",
            Path::new("r.rules"),
            &base,
        )
        .unwrap();
        assert_eq!(t.services().len(), 1);
        let new_id = t.reals().next().unwrap().1.id;
        assert!(new_id > first_id, "clear must not recycle real ids");
    }

    #[test]
    fn unsupported_features_are_refused_clearly() {
        let fwd =
            "forwarding method tunnel/masquerading is not supported yet (only -g, direct routing)";
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11:80 -i -w 1\n"),
            2,
            &[fwd],
        );
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11:80 -m\n"),
            2,
            &[fwd],
        );
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11:80 --ipip\n"),
            2,
            &[fwd],
        );
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11:80 --masquerading\n"),
            2,
            &[fwd],
        );
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11:80 -gm\n"),
            2,
            &[fwd],
        );
        refused(
            "-A -f 1 -s rr\n",
            1,
            &["fwmark services are not supported yet"],
        );
        refused(
            "\n-A --fwmark-service 1 -s rr\n",
            2,
            &["fwmark services are not supported yet"],
        );
        refused("-A -f 1 -6 -s rr\n", 1, &["fwmark"]);
        refused(
            "-A -6 -t 10.0.0.1:80 -s rr\n",
            1,
            &["IPv6 is not supported yet"],
        );
        refused("-A -t [::1]:80 -s rr\n", 1, &["IPv6 is not supported yet"]);
        refused("-A -t 10.0.0.1:80 -s rr -z\n", 1, &["unknown option '-z'"]);
        refused(
            "-A -t 10.0.0.1:80 -s rr --zap\n",
            1,
            &["unknown option '--zap'"],
        );
        refused("-L -n\n", 1, &["cannot be used in a rules file"]);
    }

    #[test]
    fn malformed_lines_are_refused_with_their_line() {
        refused("-A -s rr\n", 1, &["needs a service"]);
        refused(&format!("{RR80}-a -r 10.0.0.11\n"), 2, &["needs a service"]);
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -w 1\n"),
            2,
            &["needs a real server"],
        );
        refused("-t 10.0.0.1:80 -s rr\n", 1, &["no command"]);
        refused("-A -a -t 10.0.0.1:80\n", 1, &["more than one command"]);
        refused(
            "-A -t 10.0.0.1:80 -u 10.0.0.1:80\n",
            1,
            &["more than one service"],
        );
        refused("-A -t 10.0.0.1:80 -s rr -s wrr\n", 1, &["given twice"]);
        refused(
            "-A -t 10.0.0.300:80 -s rr\n",
            1,
            &["10.0.0.300", "not an IPv4 address"],
        );
        refused("-A -t web:80 -s rr\n", 1, &["'web' is not an IPv4 address"]);
        refused("-A -t 10.0.0.1 -s rr\n", 1, &["needs a port"]);
        refused(
            "-A -t 10.0.0.1:0 -s rr\n",
            1,
            &["port '0' is not in 1..65535"],
        );
        refused("-A -t 10.0.0.1:65536 -s rr\n", 1, &["port '65536'"]);
        refused("-A -t 10.0.0.1:http -s rr\n", 1, &["port 'http'"]);
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11:99999\n"),
            2,
            &["port '99999'"],
        );
        refused("-A -t 10.0.0.1:80 -s\n", 1, &["'-s' needs a value"]);
        refused(
            "-A -t 10.0.0.1:80 -s rr bogus\n",
            1,
            &["unexpected argument 'bogus'"],
        );
        refused(
            "-A -t 10.0.0.1:80 -s rr -w 2\n",
            1,
            &["'-w' cannot be used with -A"],
        );
        refused("-C -t 10.0.0.1:80\n", 1, &["cannot be used with -C"]);
        refused(
            "-A -t 10.0.0.1:80 -s roundrobin\n",
            1,
            &["Scheduler not found: 'roundrobin'"],
        );
        refused(
            "-A -t 10.0.0.1:80 -s rr -p 0\n",
            1,
            &["persistence timeout"],
        );
        refused(
            "-A -t 10.0.0.1:80 -s rr -p 1 -M 255.255.0\n",
            1,
            &["netmask"],
        );
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11 -w 65536\n"),
            2,
            &["weight 65536 is out of range"],
        );
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11 -w -1\n"),
            2,
            &["weight '-1' is not a number"],
        );
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11 -x 70000\n"),
            2,
            &["upper threshold"],
        );
        refused("--weight=\n", 1, &["needs a value"]);
        refused("--clear=1\n", 1, &["takes no value"]);
    }

    #[test]
    fn model_refusals_name_the_service() {
        refused(
            "-a -t 10.0.0.100:80 -r 10.0.0.11:80 -g -w 1\n",
            1,
            &["service TCP 10.0.0.100:80", "Service not defined"],
        );
        refused(
            &format!("{RR80}{RR80}"),
            2,
            &["service TCP 10.0.0.100:80: Service already exists"],
        );
        refused(
            &format!(
                "{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11\n-a -t 10.0.0.100:80 -r 10.0.0.11:80\n"
            ),
            3,
            &["real 10.0.0.11:80: Destination already exists"],
        );
        refused(
            &format!("{RR80}-d -t 10.0.0.100:80 -r 10.0.0.11\n"),
            2,
            &["No such destination"],
        );
        refused(
            "-D -u 10.0.0.100:53\n",
            1,
            &["UDP 10.0.0.100:53: Service not defined"],
        );
        refused("-E -t 10.0.0.100:80\n", 1, &["Service not defined"]);
    }

    #[test]
    fn a_bad_line_leaves_the_base_untouched() {
        let base = p(DEMO).unwrap();
        let snapshot = base.clone();
        let text = "-D -t 10.0.0.100:80\n-A -t 10.0.0.200:80 -s rr\n-a -t 10.0.0.201:80 -r 10.0.0.11\n-A -t 10.0.0.202:80 -s rr\n";
        let e = parse(text, Path::new("r.rules"), &base).unwrap_err();
        assert!(e.to_string().contains(":3:"), "{e}");
        assert!(e.to_string().contains("Service not defined"), "{e}");
        assert_eq!(base, snapshot);
    }

    #[test]
    fn load_reports_unreadable_files() {
        assert!(matches!(
            load(Path::new("/nonexistent/uvs.rules"), &ServiceTable::new()),
            Err(ConfigError::Read { .. })
        ));
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(vec![
                "-A",
                "-E",
                "-D",
                "-a",
                "-e",
                "-d",
                "-C",
                "-t",
                "-u",
                "-s",
                "-p",
                "-M",
                "-r",
                "-g",
                "-w",
                "-x",
                "-y",
                "-i",
                "-m",
                "-f",
                "-6",
                "--weight=",
                "--persistent",
                "--tcp-service",
                "-gw2",
                "-At",
                "-",
                "--",
                "rr",
                "wrr",
                "wlc",
                "ipvsadm",
                "#",
                "10.0.0.100:80",
                "10.0.0.11",
                "10.0.0.11:80",
                "10.0.0.100:53",
                "300",
                "0",
                "65535",
                "65536",
                "4294967296",
                "255.255.255.0",
                ":",
                "[::1]:80",
                "é",
                "-é",
            ])
            .prop_map(str::to_string),
            "\\PC{0,12}",
        ]
    }

    proptest! {
        #[test]
        fn token_soup_never_panics(
            lines in proptest::collection::vec(proptest::collection::vec(token(), 0..10), 0..8)
        ) {
            let text: Vec<String> = lines.iter().map(|l| l.join(" ")).collect();
            let text = text.join("\n");
            let base = p(DEMO).unwrap();
            let snapshot = base.clone();
            match parse(&text, Path::new("r.rules"), &base) {
                Ok(_) => {}
                Err(ConfigError::At { line, .. }) => prop_assert!(line >= 1 && line <= lines.len()),
                Err(e) => prop_assert!(false, "unexpected error kind {e}"),
            }
            prop_assert_eq!(base, snapshot);
        }

        #[test]
        fn random_text_never_panics(text in "\\PC*") {
            let _ = p(&text);
        }
    }
}
