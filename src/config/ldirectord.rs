//! `uvs run --ldirectord FILE`: an ldirectord.cf (ipvs-semantics.md §4).
//!
//! `key = value` lines; `#` comments. Lines before the first `virtual=` are global; a
//! `virtual=` line starts a block whose lines are indented (4+ spaces or a tab). Global keys
//! may be overridden inside a block.
//!
//! Understood: `virtual=IP:PORT`, `virtual=MARK` (a firewall-mark service, `-f MARK`; uvs sees
//! no iptables marks, so its packets are chosen with uvs's mark rules, `uvsadm --add-mark`),
//! `real=IP[->IP2][:PORT] gate|masq|ipip|fullnat [WEIGHT] ["request", "receive"]` (`fullnat`
//! is uvs's: ldirectord knows no FullNAT; with it the real is reached by FullNAT from the
//! director's own address, as no ldirectord key gives local addresses or a PROXY protocol;
//! add those with `uvsadm --add-laddr` / `-E … --proxy-protocol`),
//! `checktype` (`negotiate` default, `connect`, `external`, `on`; `off`, `ping` and `N` are
//! approximated with a warning), `service` (`http` for a negotiate check; the default comes
//! from the port, 80 → http), `request` (the URI; a bare `index.html` means `/index.html`),
//! `receive` (a regex the body must match), `httpmethod`, `virtualhost`, `checkport`,
//! `checkcommand` (run as `CMD VIP VPORT RIP RPORT`), `checkinterval` (10), `checktimeout` (5),
//! `negotiatetimeout` (30), `failurecount` (1), `quiescent` (yes), `fallback=IP[:PORT] gate|masq|ipip|fullnat`,
//! `fallbackcommand` (run with `start` when all reals are down and `stop` when one returns),
//! `scheduler` (wrr), `persistent`, `netmask`, `protocol` (tcp; udp for port 53; fwm for a
//! mark), `autoreload` (as ldirectord: the file is re-read when it changes, checked every
//! global `checkinterval`; see [`spawn_autoreload`]).
//! Accepted and ignored (they concern the ldirectord process): `logfile`,
//! `callback`, `supervised`, `fork`, `cleanstop`, `monitorfile`, `emailalert*`, `smtp`,
//! `execute`, `maintenancedir`, `readdquiescent`. Refused clearly: IPv6 virtuals, host
//! names. Unknown keys are warnings with the line.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::ConfigError;
use crate::health::fsm::Timing;
use crate::health::{CheckKind, CheckSpec, HealthConfig, HttpCheck, RealHealth, ServiceHealth};
use crate::model::{
    ForwardMethod, Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec, ServiceTable,
};

/// The parse result plus the warnings (also logged by [`load`]).
#[derive(Debug)]
pub struct Parsed {
    pub table: ServiceTable,
    pub health: HealthConfig,
    pub warnings: Vec<String>,
    /// `autoreload=yes`: re-read the file when it changes.
    pub autoreload: bool,
    /// The global `checkinterval`: how often ldirectord looks at the file for `autoreload`.
    pub check_interval: Duration,
}

pub fn load(path: &Path) -> Result<(ServiceTable, HealthConfig), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let p = parse(&text, path)?;
    for w in &p.warnings {
        log::warn!("{w}");
    }
    Ok((p.table, p.health))
}

#[derive(Clone, Debug, Default)]
struct Settings {
    checktype: Option<(String, usize)>,
    service: Option<String>,
    request: Option<String>,
    receive: Option<(String, usize)>,
    httpmethod: Option<String>,
    virtualhost: Option<String>,
    checkport: Option<u16>,
    checkcommand: Option<String>,
    checkinterval: Option<f64>,
    checktimeout: Option<f64>,
    negotiatetimeout: Option<f64>,
    failurecount: Option<u32>,
    quiescent: Option<bool>,
    scheduler: Option<SchedulerKind>,
    persistent: Option<u32>,
    netmask: Option<Ipv4Addr>,
    /// With the line it was set on (its check against the virtual's kind names it).
    protocol: Option<(VirtualProtocol, usize)>,
    fallback: Option<(SocketAddrV4, ForwardMethod)>,
    fallbackcommand: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VirtualProtocol {
    Ip(Protocol),
    /// `protocol=fwm`: the only one a firewall-mark virtual takes.
    Fwm,
}

struct Real {
    line: usize,
    addr: Ipv4Addr,
    /// The port written after the address, if any (a firewall-mark service keeps it, NAT
    /// maps to it).
    port: Option<String>,
    method: ForwardMethod,
    weight: u32,
    request: Option<String>,
    receive: Option<(String, usize)>,
}

struct Virtual {
    line: usize,
    /// `virtual=MARK`; then `vip` is unspecified and `port` 0, as ldirectord sets them.
    fwmark: Option<u32>,
    vip: Ipv4Addr,
    port: u16,
    s: Settings,
    reals: Vec<Real>,
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(v)
        .to_string()
}

fn yes_no(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// `"a", "b"` → ("a", "b"): the per-real request/receive pair.
fn quoted_pair(s: &str) -> Vec<String> {
    s.split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, x)| x.to_string())
        .collect()
}

pub fn parse(text: &str, path: &Path) -> Result<Parsed, ConfigError> {
    let at = |line: usize, m: String| ConfigError::At {
        path: path.to_path_buf(),
        line,
        message: m,
    };
    let mut warnings = Vec::new();
    let mut global = Settings::default();
    let mut virtuals: Vec<Virtual> = Vec::new();
    let mut autoreload = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("");
        if content.trim().is_empty() {
            continue;
        }
        let indented = raw.starts_with('\t') || raw.starts_with("    ");
        let Some((key, value)) = content.split_once('=') else {
            return Err(at(
                line,
                format!("expected key=value, found {:?}", content.trim()),
            ));
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim();
        if key == "virtual" && !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            let mark = value
                .parse::<u32>()
                .ok()
                .filter(|m| *m > 0)
                .ok_or_else(|| {
                    at(
                        line,
                        format!("virtual={value}: a firewall mark is 1..=4294967295"),
                    )
                })?;
            warnings.push(format!(
                "{}:{line}: virtual={mark}: a packet socket sees no iptables marks: choose the packets of this service with uvs's mark rules (uvsadm --add-mark {mark} -t VIP:PORT[,PORT...], or such lines in a --rules file)",
                path.display()
            ));
            virtuals.push(Virtual {
                line,
                fwmark: Some(mark),
                vip: Ipv4Addr::UNSPECIFIED,
                port: 0,
                s: Settings::default(),
                reals: Vec::new(),
            });
            continue;
        }
        if key == "virtual" {
            let (ip, port) = value.rsplit_once(':').ok_or_else(|| {
                at(
                    line,
                    format!("virtual={value}: expected IP:PORT or a firewall mark"),
                )
            })?;
            let vip: Ipv4Addr = ip.parse().map_err(|_| {
                at(line, format!("virtual={value}: {ip:?} is not an IPv4 address (names and IPv6 are not supported)"))
            })?;
            let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                at(
                    line,
                    format!("virtual={value}: bad port {port:?} (service names are not supported)"),
                )
            })?;
            virtuals.push(Virtual {
                line,
                fwmark: None,
                vip,
                port,
                s: Settings::default(),
                reals: Vec::new(),
            });
            continue;
        }
        if key == "virtual6" || key == "real6" || key == "fallback6" {
            return Err(at(line, format!("{key}: IPv6 is not supported")));
        }
        let in_virtual = indented && !virtuals.is_empty();
        if key == "real" {
            let Some(v) = virtuals.last_mut().filter(|_| in_virtual) else {
                return Err(at(
                    line,
                    "real= outside a virtual= block (indent it)".into(),
                ));
            };
            let mut words = value.split_whitespace();
            let target = words.next().unwrap_or("");
            let method = match words.next().unwrap_or("gate").to_ascii_lowercase().as_str() {
                "gate" => ForwardMethod::Route,
                "masq" => ForwardMethod::Masq,
                "ipip" => ForwardMethod::IPIP,
                "fullnat" => ForwardMethod::FullNat,
                other => {
                    return Err(at(
                        line,
                        format!(
                            "real={value}: forwarding method {other:?} is unknown (gate, masq, ipip or fullnat)"
                        ),
                    ));
                }
            };
            let mut weight = 1;
            let rest: Vec<&str> = words.collect();
            if let Some(w) = rest.first().filter(|w| !w.starts_with('"')) {
                weight = w
                    .parse::<u32>()
                    .ok()
                    .filter(|w| *w <= crate::model::MAX_WEIGHT)
                    .ok_or_else(|| {
                        at(line, format!("real={value}: weight {w:?} is not 0..65535"))
                    })?;
            }
            let pair = quoted_pair(&rest.join(" "));
            let (addrs, port) = match target.rsplit_once(':') {
                Some((a, p)) => (a, Some(p)),
                None => (target, None),
            };
            let (first, last) = match addrs.split_once("->") {
                Some((a, b)) => (a, b),
                None => (addrs, addrs),
            };
            let parse_ip = |s: &str| -> Result<Ipv4Addr, ConfigError> {
                s.parse()
                    .map_err(|_| at(line, format!("real={value}: {s:?} is not an IPv4 address")))
            };
            let (a, b) = (u32::from(parse_ip(first)?), u32::from(parse_ip(last)?));
            if b < a || b - a > 1024 {
                return Err(at(line, format!("real={value}: bad address range")));
            }
            for n in a..=b {
                v.reals.push(Real {
                    line,
                    addr: Ipv4Addr::from(n),
                    port: port.map(str::to_string),
                    method,
                    weight,
                    request: pair.first().cloned(),
                    receive: pair.get(1).map(|r| (r.clone(), line)),
                });
            }
            continue;
        }
        let s = match virtuals.last_mut() {
            Some(v) if in_virtual => &mut v.s,
            _ => &mut global,
        };
        let bad = |what: &str| at(line, format!("{key}={value}: {what}"));
        let secs = |v: &str| -> Result<f64, ConfigError> {
            v.parse::<f64>()
                .ok()
                .filter(|x| (0.001..=86_400.0).contains(x))
                .ok_or_else(|| bad("expected seconds (0.001..86400)"))
        };
        match key.as_str() {
            "checktype" => s.checktype = Some((value.to_ascii_lowercase(), line)),
            "service" => s.service = Some(value.to_ascii_lowercase()),
            "request" => s.request = Some(unquote(value)),
            "receive" => {
                let r = unquote(value);
                regex::Regex::new(&r).map_err(|e| bad(&format!("not a valid regex: {e}")))?;
                s.receive = Some((r, line));
            }
            "httpmethod" => s.httpmethod = Some(value.to_ascii_uppercase()),
            "virtualhost" => s.virtualhost = Some(unquote(value)),
            "checkport" => s.checkport = Some(value.parse().map_err(|_| bad("bad port"))?),
            "checkcommand" => s.checkcommand = Some(unquote(value)),
            "checkinterval" => s.checkinterval = Some(secs(value)?),
            "checktimeout" => s.checktimeout = Some(secs(value)?),
            "negotiatetimeout" => s.negotiatetimeout = Some(secs(value)?),
            "failurecount" => {
                s.failurecount = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| bad("expected a count ≥ 1"))?,
                )
            }
            "quiescent" => {
                s.quiescent = Some(yes_no(value).ok_or_else(|| bad("expected yes or no"))?)
            }
            "scheduler" => {
                s.scheduler = Some(SchedulerKind::parse(value).map_err(|e| bad(&e.to_string()))?)
            }
            "persistent" => {
                s.persistent = Some(value.parse().map_err(|_| bad("expected seconds"))?)
            }
            "netmask" => {
                s.netmask = Some(match value.parse::<u8>() {
                    Ok(n) if n <= 32 => {
                        Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(n)).unwrap_or(0))
                    }
                    _ => value
                        .parse()
                        .map_err(|_| bad("expected a netmask or prefix length"))?,
                })
            }
            "protocol" => {
                let p = match value.to_ascii_lowercase().as_str() {
                    "tcp" => VirtualProtocol::Ip(Protocol::Tcp),
                    "udp" => VirtualProtocol::Ip(Protocol::Udp),
                    "fwm" => VirtualProtocol::Fwm,
                    _ => return Err(bad("only tcp, udp and fwm are supported")),
                };
                s.protocol = Some((p, line));
            }
            "autoreload" => {
                autoreload = yes_no(value).ok_or_else(|| bad("autoreload must be 'yes' or 'no'"))?
            }
            "fallback" => {
                let target = value.split_whitespace().next().unwrap_or("");
                let method = value.split_whitespace().nth(1).unwrap_or("gate");
                let method = match method.to_ascii_lowercase().as_str() {
                    "gate" => ForwardMethod::Route,
                    "masq" => ForwardMethod::Masq,
                    "ipip" => ForwardMethod::IPIP,
                    "fullnat" => ForwardMethod::FullNat,
                    _ => return Err(bad("the fallback method is gate, masq, ipip or fullnat")),
                };
                let target = crate::health::parse_sorry(target, 0).map_err(|e| bad(&e))?;
                s.fallback = Some((target, method));
            }
            "fallbackcommand" => s.fallbackcommand = Some(unquote(value)),
            "logfile" | "callback" | "supervised" | "fork" | "cleanstop" | "monitorfile"
            | "emailalert" | "emailalertfreq" | "emailalertstatus" | "emailalertfrom" | "smtp"
            | "execute" | "maintenancedir" | "readdquiescent" | "checkcount" => {}
            "login" | "passwd" | "database" | "secret" | "ops" => {
                warnings.push(format!(
                    "{}:{line}: {key}: not supported by uvs, ignored",
                    path.display()
                ));
            }
            other => warnings.push(format!(
                "{}:{line}: unknown key {other:?}, ignored",
                path.display()
            )),
        }
    }

    let mut table = ServiceTable::new();
    let mut health = HealthConfig::default();
    for v in virtuals {
        let s = merged(&v.s, &global);
        let key = match (v.fwmark, s.protocol) {
            // ldirectord's own checks and words.
            (Some(_), Some((VirtualProtocol::Ip(_), l))) => {
                return Err(at(
                    l,
                    "protocol must be fwm if the virtual service is a fwmark (a number)".into(),
                ));
            }
            (None, Some((VirtualProtocol::Fwm, l))) => {
                return Err(at(
                    l,
                    "protocol must be tcp or udp if the virtual service is an address and port"
                        .into(),
                ));
            }
            (Some(mark), _) => ServiceKey::fwmark(mark),
            (None, p) => ServiceKey {
                proto: match p {
                    Some((VirtualProtocol::Ip(p), _)) => p,
                    _ if v.port == 53 => Protocol::Udp,
                    _ => Protocol::Tcp,
                },
                vip: v.vip,
                port: v.port,
                fwmark: 0,
            },
        };
        let name = match v.fwmark {
            Some(mark) => mark.to_string(),
            None => format!("{}:{}", v.vip, v.port),
        };
        let mut spec = ServiceSpec::new(key, s.scheduler.unwrap_or(SchedulerKind::Wrr));
        spec.persistence_timeout = s.persistent;
        spec.persistence_netmask = s.netmask.unwrap_or(Ipv4Addr::BROADCAST);
        table
            .add_service(spec)
            .map_err(|e| at(v.line, format!("virtual={name}: {e}")))?;
        let mut sh = ServiceHealth::new(key);
        sh.quiescent = s.quiescent.unwrap_or(true);
        if let Some((a, method)) = s.fallback {
            let port = if a.port() == 0 { v.port } else { a.port() };
            sh.sorry = Some(SocketAddrV4::new(*a.ip(), port));
            sh.sorry_forward = method;
        }
        if let Some(cmd) = &s.fallbackcommand {
            sh.quorum_down = Some(format!("{cmd} start"));
            sh.quorum_up = Some(format!("{cmd} stop"));
        }
        for r in &v.reals {
            // Direct routing keeps the service's port; a firewall-mark service keeps the
            // real's own (0 when none is written), as ipvsadm does; NAT maps to the real's.
            let given = match &r.port {
                None => None,
                Some(p) => Some(p.parse::<u16>().map_err(|_| {
                    at(
                        r.line,
                        format!(
                            "real={}:{p}: the real server's port must be a number",
                            r.addr
                        ),
                    )
                })?),
            };
            let port = match (v.fwmark, r.method) {
                (Some(_), _) => given.unwrap_or(0),
                (None, m) if m.maps_ports() => given.unwrap_or(v.port),
                (None, _) => v.port,
            };
            let mut rs = RealSpec::route(r.addr, port);
            rs.weight = r.weight;
            rs.forward = r.method;
            table
                .add_real(&key, rs)
                .map_err(|e| at(r.line, format!("real={}: {e}", r.addr)))?;
            let mut check = check_of(&s, &v, r, port, &mut warnings, path);
            if v.fwmark.is_some() {
                // ldirectord's ld_checkport: checkport, else the real's port, else the
                // service's well-known port. A mark has no port of its own.
                check.connect_port = s
                    .checkport
                    .or(Some(port).filter(|p| *p != 0))
                    .or_else(|| well_known_port(s.service.as_deref().unwrap_or("none")));
                let needs_port = matches!(check.kind, CheckKind::Tcp | CheckKind::Http(_));
                if needs_port && check.connect_port.is_none() {
                    return Err(at(
                        r.line,
                        format!(
                            "real={}: virtual={name} is a firewall-mark service: its checks need checkport=, a port on the real= line or a service=",
                            r.addr
                        ),
                    ));
                }
            }
            sh.reals.push(RealHealth {
                addr: r.addr,
                check,
                notify_up: None,
                notify_down: None,
                quiescent: None,
            });
        }
        health.services.push(sh);
    }
    Ok(Parsed {
        table,
        health,
        warnings,
        autoreload,
        check_interval: Duration::from_secs_f64(global.checkinterval.unwrap_or(10.0)),
    })
}

/// ldirectord's `ld_service_to_port`: the port a `service=` negotiates on.
fn well_known_port(service: &str) -> Option<u16> {
    Some(match service {
        "ftp" => 21,
        "smtp" => 25,
        "dns" => 53,
        "http" => 80,
        "pop" => 110,
        "nntp" => 119,
        "imap" => 143,
        "ldap" => 389,
        "https" => 443,
        "submission" => 587,
        "imaps" => 993,
        "pops" => 995,
        "oracle" => 1521,
        "radius" => 1812,
        "http_proxy" => 3128,
        "mysql" => 3306,
        "sip" => 5060,
        "pgsql" => 5432,
        _ => return None,
    })
}

/// What `autoreload` compares: ldirectord looks at the modification time, then at the
/// content (its MD5), so touching the file does not reload it.
fn file_state(path: &Path) -> Option<(SystemTime, Vec<u8>)> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    Some((modified, std::fs::read(path).ok()?))
}

/// `autoreload=yes` in `path`: starts a thread that looks at the file every global
/// `checkinterval` (as ldirectord's main loop does) and calls `reload` when its content has
/// changed, until `stop` says so. Nothing is started for `autoreload=no` or an unreadable file.
pub fn spawn_autoreload(path: &Path, reload: fn(), stop: fn() -> bool) -> std::io::Result<bool> {
    let Some(mut seen) = file_state(path) else {
        return Ok(false);
    };
    let parsed = match parse(&String::from_utf8_lossy(&seen.1), path) {
        Ok(p) if p.autoreload => p,
        _ => return Ok(false),
    };
    let path: PathBuf = path.to_path_buf();
    let every = parsed.check_interval;
    std::thread::Builder::new()
        .name("uvs-autoreload".into())
        .spawn(move || {
            let step = Duration::from_millis(100).min(every);
            let mut waited = Duration::ZERO;
            while !stop() {
                std::thread::sleep(step);
                waited += step;
                if waited < every {
                    continue;
                }
                waited = Duration::ZERO;
                let Some(now) = file_state(&path) else {
                    continue;
                };
                if now.0 != seen.0 && now.1 != seen.1 {
                    log::info!(
                        "{} changed on disk (autoreload=yes): reloading",
                        path.display()
                    );
                    reload();
                }
                seen = now;
            }
        })?;
    Ok(true)
}

macro_rules! or_global {
    ($v:expr, $g:expr, $($f:ident),*) => {
        Settings { $($f: $v.$f.clone().or_else(|| $g.$f.clone()),)* }
    };
}

fn merged(v: &Settings, g: &Settings) -> Settings {
    or_global!(
        v,
        g,
        checktype,
        service,
        request,
        receive,
        httpmethod,
        virtualhost,
        checkport,
        checkcommand,
        checkinterval,
        checktimeout,
        negotiatetimeout,
        failurecount,
        quiescent,
        scheduler,
        persistent,
        netmask,
        protocol,
        fallback,
        fallbackcommand
    )
}

/// `real_port`: the real server's port in the table (the virtual's, or for a firewall-mark
/// service the real's own).
fn check_of(
    s: &Settings,
    v: &Virtual,
    r: &Real,
    real_port: u16,
    warnings: &mut Vec<String>,
    path: &Path,
) -> CheckSpec {
    let (ct, ct_line) = s.checktype.clone().unwrap_or(("negotiate".into(), v.line));
    let mut warn = |m: String| warnings.push(format!("{}:{ct_line}: {m}", path.display()));
    let service = s.service.clone().unwrap_or_else(|| match v.port {
        80 => "http".into(),
        _ => "none".into(),
    });
    let negotiate = || {
        if service == "http" {
            let request = r
                .request
                .clone()
                .or_else(|| s.request.clone())
                .unwrap_or_else(|| "/".into());
            let path = match request.split_once("://") {
                Some((_, rest)) => rest
                    .find('/')
                    .map_or("/".to_string(), |i| rest[i..].to_string()),
                None if request.starts_with('/') => request,
                None => format!("/{request}"),
            };
            Some(CheckKind::Http(HttpCheck {
                method: s.httpmethod.clone().unwrap_or_else(|| "GET".into()),
                path,
                host: s.virtualhost.clone(),
                regex: r
                    .receive
                    .clone()
                    .or_else(|| s.receive.clone())
                    .map(|(x, _)| x),
                ..HttpCheck::default()
            }))
        } else {
            None
        }
    };
    let mut timeout = s.checktimeout.unwrap_or(5.0);
    let kind = match ct.as_str() {
        "negotiate" => {
            timeout = s.negotiatetimeout.or(s.checktimeout).unwrap_or(30.0);
            negotiate().unwrap_or_else(|| {
                warn(format!("service={service}: negotiate checks of this service are not supported by uvs; using a TCP connect check"));
                CheckKind::Tcp
            })
        }
        "connect" => CheckKind::Tcp,
        "external" | "external-perl" => CheckKind::Misc {
            // ldirectord passes the virtual (its address, or the mark) and port, then the
            // real's address and port.
            command: format!(
                "{} {} {} {} {}",
                s.checkcommand.clone().unwrap_or_else(|| "/bin/true".into()),
                v.fwmark
                    .map_or_else(|| v.vip.to_string(), |m| m.to_string()),
                v.port,
                r.addr,
                real_port
            ),
            dynamic: false,
        },
        "on" => CheckKind::None,
        "off" => {
            warn("checktype=off: uvs treats it as on (never checked); set the weight to 0 to keep a real out".into());
            CheckKind::None
        }
        "ping" => {
            warn("checktype=ping is not supported by uvs; using a TCP connect check".into());
            CheckKind::Tcp
        }
        n if n.parse::<u32>().is_ok() => {
            warn(format!(
                "checktype={n}: uvs runs the negotiate check every time"
            ));
            timeout = s.negotiatetimeout.or(s.checktimeout).unwrap_or(30.0);
            negotiate().unwrap_or(CheckKind::Tcp)
        }
        other => {
            warn(format!(
                "checktype={other} is unknown; using a TCP connect check"
            ));
            CheckKind::Tcp
        }
    };
    let interval = Duration::from_secs_f64(s.checkinterval.unwrap_or(10.0));
    CheckSpec {
        kind,
        connect_ip: None,
        connect_port: s.checkport,
        timing: Timing {
            interval,
            timeout: Duration::from_secs_f64(timeout),
            retry: 0,
            delay_before_retry: interval,
            rise: 1,
            fall: s.failurecount.unwrap_or(1),
            alpha: false,
            warmup: Duration::ZERO,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TUTORIAL: &str = r#"checktimeout=3
checkinterval=1
autoreload=yes
logfile="/var/log/ldirectord.log"
quiescent=no
virtual=10.0.0.100:80
        real=10.0.0.11:80 gate
        real=10.0.0.12:80 gate 3
        fallback=127.0.0.1:80 gate
        service=http
        scheduler=rr
        persistent=600
        protocol=tcp
        checktype=negotiate
        checkport=80
        request="index.html"
        receive="Test"
"#;

    #[test]
    fn the_tutorial_file_loads() {
        let p = parse(TUTORIAL, Path::new("ldirectord.cf")).unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let svc = &p.table.services()[0];
        assert_eq!(svc.scheduler, SchedulerKind::Rr);
        assert_eq!(svc.persistence_timeout, Some(600));
        assert_eq!(svc.reals[1].weight, 3);
        let h = &p.health.services[0];
        assert!(!h.quiescent);
        assert_eq!(h.sorry, Some("127.0.0.1:80".parse().unwrap()));
        let c = &h.reals[0].check;
        assert_eq!(c.timing.interval, Duration::from_secs(1));
        assert_eq!(c.timing.timeout, Duration::from_secs(3));
        assert_eq!(c.connect_port, Some(80));
        match &c.kind {
            CheckKind::Http(hc) => {
                assert_eq!(hc.path, "/index.html");
                assert_eq!(hc.regex.as_deref(), Some("Test"));
            }
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn a_masq_fallback_is_a_nat_sorry_server_on_its_own_port() {
        let cf = "virtual=192.168.80.10:80\n    real=192.168.80.11:8080 masq\n    \
                  fallback=192.168.80.20:8080 masq\n";
        let p = parse(cf, Path::new("ldirectord.cf")).unwrap();
        let h = &p.health.services[0];
        assert_eq!(h.sorry, Some("192.168.80.20:8080".parse().unwrap()));
        assert_eq!(h.sorry_forward, ForwardMethod::Masq);
        let e = parse(
            "virtual=192.168.80.10:80\n    real=192.168.80.11:8080 masq\n    fallback=192.168.80.20 tunnel\n",
            Path::new("l.cf"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("gate, masq, ipip or fullnat"), "{e}");
    }

    /// uvs's `fullnat` token (ldirectord has none): the real keeps its port, as with masq,
    /// and a `fullnat` fallback is a FullNAT sorry server.
    #[test]
    fn fullnat_reals_and_fallback() {
        let cf = "virtual=192.168.70.100:80\n    real=10.10.0.11:8080 fullnat 2\n    \
                  fallback=10.10.0.50:8080 fullnat\n";
        let p = parse(cf, Path::new("ldirectord.cf")).unwrap();
        let r = &p.table.services()[0].reals[0];
        assert_eq!(
            (r.forward, r.port, r.weight),
            (ForwardMethod::FullNat, 8080, 2)
        );
        assert_eq!(p.health.services[0].sorry_forward, ForwardMethod::FullNat);
    }

    #[test]
    fn refusals_and_warnings_name_the_line() {
        let e = parse(
            "virtual=10.0.0.100:80\n    real=10.0.0.11:80 vxlan\n",
            Path::new("l.cf"),
        )
        .unwrap_err();
        assert!(
            matches!(e, ConfigError::At { line: 2, ref message, .. } if message.contains("\"vxlan\" is unknown")),
            "{e}"
        );
        // ipip: an IPIP tunnel to the real, on the virtual's port.
        let p = parse(
            "virtual=203.0.113.2:80\n    real=10.0.0.2:8080 ipip 2\n",
            Path::new("l.cf"),
        )
        .unwrap();
        let r = &p.table.services()[0].reals[0];
        assert_eq!((r.forward, r.port, r.weight), (ForwardMethod::IPIP, 80, 2));
        // masq maps the real's port.
        let p = parse(
            "virtual=192.168.80.10:80\n    real=192.168.80.11:8080 masq 3\n    real=192.168.80.12 masq\n",
            Path::new("l.cf"),
        )
        .unwrap();
        let reals = &p.table.services()[0].reals;
        assert_eq!(
            (reals[0].forward, reals[0].port, reals[0].weight),
            (ForwardMethod::Masq, 8080, 3)
        );
        assert_eq!(reals[1].port, 80, "no port: the service's");
        let e = parse("virtual=www.example.com:http\n", Path::new("l.cf")).unwrap_err();
        assert!(matches!(e, ConfigError::At { line: 1, .. }), "{e}");
        let e = parse(
            "virtual=10.0.0.100:80\n    receive=\"(\"\n",
            Path::new("l.cf"),
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::At { line: 2, .. }), "{e}");
        let p = parse("frob=1\nvirtual=10.0.0.100:80\n\treal=10.0.0.11->10.0.0.12:80 gate\n\tchecktype=external\n\tcheckcommand=/bin/check\n\tfallbackcommand=/bin/fb\n", Path::new("l.cf")).unwrap();
        assert_eq!(
            p.warnings,
            vec!["l.cf:1: unknown key \"frob\", ignored".to_string()]
        );
        let h = &p.health.services[0];
        assert_eq!(h.reals.len(), 2);
        assert_eq!(
            h.reals[1].check.kind,
            CheckKind::Misc {
                command: "/bin/check 10.0.0.100 80 10.0.0.12 80".into(),
                dynamic: false
            }
        );
        assert_eq!(h.quorum_down.as_deref(), Some("/bin/fb start"));
        assert_eq!(p.table.services()[0].scheduler, SchedulerKind::Wrr);
    }
}

#[cfg(test)]
mod fwmark_and_autoreload {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A tutorial's firewall-mark virtual (HTTP and HTTPS as one service, marked by iptables).
    const FWMARK: &str = "checkinterval=1
autoreload=yes
virtual=5
        real=10.0.0.11 gate
        real=10.0.0.12 gate 2
        service=http
        checkport=80
        request=\"/\"
        receive=\"rs\"
        scheduler=rr
        persistent=600
        protocol=fwm
";

    fn p(text: &str) -> Result<Parsed, ConfigError> {
        parse(text, Path::new("ldirectord.cf"))
    }

    #[track_caller]
    fn refused(text: &str, line: usize, needle: &str) {
        match p(text) {
            Err(ConfigError::At {
                line: l, message, ..
            }) => {
                assert_eq!(l, line, "{message}");
                assert!(message.contains(needle), "{message:?} lacks {needle:?}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn a_firewall_mark_virtual_is_a_fwmark_service() {
        let r = p(FWMARK).unwrap();
        let svc = &r.table.services()[0];
        assert_eq!(svc.key, ServiceKey::fwmark(5));
        assert_eq!(svc.scheduler, SchedulerKind::Rr);
        assert_eq!(svc.persistence_timeout, Some(600));
        let reals: Vec<(Ipv4Addr, u16, u32)> = svc
            .reals
            .iter()
            .map(|r| (r.addr, r.port, r.weight))
            .collect();
        assert_eq!(
            reals,
            vec![
                (Ipv4Addr::new(10, 0, 0, 11), 0, 1),
                (Ipv4Addr::new(10, 0, 0, 12), 0, 2)
            ]
        );
        let h = &r.health.services[0];
        assert_eq!(h.key, ServiceKey::fwmark(5));
        assert_eq!(h.reals[0].check.connect_port, Some(80));
        assert!(matches!(h.reals[0].check.kind, CheckKind::Http(_)));
        assert!(
            r.warnings
                .iter()
                .any(|w| w.starts_with("ldirectord.cf:3: ") && w.contains("--add-mark 5")),
            "{:?}",
            r.warnings
        );
        assert!(r.autoreload);
        assert_eq!(r.check_interval, Duration::from_secs(1));
    }

    /// The iptables MARK rule of the tutorial becomes an `--add-mark` line of a `--rules`
    /// file, which `uvs run --ldirectord F --rules R` applies on top.
    #[test]
    fn mark_rules_from_a_rules_file_choose_the_packets() {
        let r = p(FWMARK).unwrap();
        let t = crate::config::rules::parse(
            "--add-mark 5 -t 10.0.0.100:80,443\n",
            Path::new("marks.rules"),
            &r.table,
        )
        .unwrap();
        let marked: Vec<(ServiceKey, ServiceKey)> = t.marked_keys();
        let vip = Ipv4Addr::new(10, 0, 0, 100);
        assert_eq!(
            marked,
            vec![
                (
                    ServiceKey::addr(Protocol::Tcp, vip, 80),
                    ServiceKey::fwmark(5)
                ),
                (
                    ServiceKey::addr(Protocol::Tcp, vip, 443),
                    ServiceKey::fwmark(5)
                )
            ]
        );
    }

    #[test]
    fn fwmark_check_ports_and_refusals_follow_ldirectord() {
        // The real's own port is kept and checked; else the service's well-known port.
        let r = p("virtual=7\n    real=10.0.0.11:8080 gate\n    checktype=connect\n").unwrap();
        assert_eq!(r.table.services()[0].reals[0].port, 8080);
        assert_eq!(r.health.services[0].reals[0].check.connect_port, Some(8080));
        let r = p("virtual=7\n    real=10.0.0.11 gate\n    checktype=connect\n    service=https\n")
            .unwrap();
        assert_eq!(r.health.services[0].reals[0].check.connect_port, Some(443));
        let r = p("virtual=7\n    real=10.0.0.11 gate\n    checktype=on\n").unwrap();
        assert_eq!(r.health.services[0].reals[0].check.kind, CheckKind::None);
        let r = p("virtual=7\n    real=10.0.0.11:25 gate\n    checktype=external\n    checkcommand=/bin/chk\n").unwrap();
        assert_eq!(
            r.health.services[0].reals[0].check.kind,
            CheckKind::Misc {
                command: "/bin/chk 7 0 10.0.0.11 25".into(),
                dynamic: false
            }
        );
        refused(
            "virtual=7\n    real=10.0.0.11 gate\n    checktype=connect\n",
            2,
            "checkport=",
        );
        refused(
            "virtual=7\n    real=10.0.0.11 gate\n    checkport=80\n    protocol=tcp\n",
            4,
            "protocol must be fwm if the virtual service is a fwmark (a number)",
        );
        refused(
            "virtual=10.0.0.100:80\n    real=10.0.0.11 gate\n    protocol=fwm\n",
            3,
            "protocol must be tcp or udp if the virtual service is an address and port",
        );
        refused("virtual=0\n", 1, "firewall mark");
        refused("autoreload=maybe\n", 1, "autoreload must be 'yes' or 'no'");
    }

    static RELOADS: AtomicUsize = AtomicUsize::new(0);
    static STOP: AtomicBool = AtomicBool::new(false);

    fn count_reload() {
        RELOADS.fetch_add(1, Ordering::SeqCst);
    }

    fn stopped() -> bool {
        STOP.load(Ordering::SeqCst)
    }

    fn wait_for_reloads(n: usize) -> usize {
        for _ in 0..50 {
            if RELOADS.load(Ordering::SeqCst) >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        RELOADS.load(Ordering::SeqCst)
    }

    #[test]
    fn autoreload_reloads_when_the_content_changes_not_when_touched() {
        let dir = std::env::temp_dir().join(format!("uvs-autoreload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ldirectord.cf");
        let text = "checkinterval=0.05\nautoreload=yes\nvirtual=10.0.0.100:80\n    real=10.0.0.11:80 gate\n";
        std::fs::write(&file, text).unwrap();
        let set_mtime = |secs: u64| {
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                .unwrap();
        };
        set_mtime(1_000);
        assert!(spawn_autoreload(&file, count_reload, stopped).unwrap());
        // Touched only: same content, no reload.
        set_mtime(2_000);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(RELOADS.load(Ordering::SeqCst), 0);
        // Edited: one reload.
        std::fs::write(&file, format!("{text}    real=10.0.0.12:80 gate\n")).unwrap();
        set_mtime(3_000);
        assert_eq!(wait_for_reloads(1), 1);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(RELOADS.load(Ordering::SeqCst), 1, "one change, one reload");
        STOP.store(true, Ordering::SeqCst);
        // autoreload=no starts nothing.
        std::fs::write(&file, "autoreload=no\n").unwrap();
        assert!(!spawn_autoreload(&file, count_reload, stopped).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod shipped {
    /// The example configs in configs/ load (warnings allowed, errors not).
    #[test]
    fn shipped_examples_load() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        for f in ["keepalived/keepalived.conf", "keepalived/quorum.conf"] {
            let (t, h) = super::super::keepalived::load(&root.join(f)).unwrap();
            assert_eq!((t.services().len(), h.services.len()), (1, 1), "{f}");
        }
        let (t, _) = super::load(&root.join("ldirectord/ldirectord.cf")).unwrap();
        assert_eq!(t.services()[0].reals.len(), 2);
        let cfg = super::super::toml_file::load(&root.join("full.toml")).unwrap();
        assert_eq!(cfg.health.services.len(), 1);
    }
}
