//! `uvs run --ldirectord FILE`: an ldirectord.cf (ipvs-semantics.md §4).
//!
//! `key = value` lines; `#` comments. Lines before the first `virtual=` are global; a
//! `virtual=` line starts a block whose lines are indented (4+ spaces or a tab). Global keys
//! may be overridden inside a block.
//!
//! Understood: `virtual=IP:PORT`, `real=IP[->IP2][:PORT] gate [WEIGHT] ["request", "receive"]`,
//! `checktype` (`negotiate` default, `connect`, `external`, `on`; `off`, `ping` and `N` are
//! approximated with a warning), `service` (`http` for a negotiate check; the default comes
//! from the port, 80 → http), `request` (the URI; a bare `index.html` means `/index.html`),
//! `receive` (a regex the body must match), `httpmethod`, `virtualhost`, `checkport`,
//! `checkcommand` (run as `CMD VIP VPORT RIP RPORT`), `checkinterval` (10), `checktimeout` (5),
//! `negotiatetimeout` (30), `failurecount` (1), `quiescent` (yes), `fallback=IP[:PORT] gate`,
//! `fallbackcommand` (run with `start` when all reals are down and `stop` when one returns),
//! `scheduler` (wrr), `persistent`, `netmask`, `protocol` (tcp; udp for port 53).
//! Accepted and ignored (they concern the ldirectord process): `logfile`, `autoreload`,
//! `callback`, `supervised`, `fork`, `cleanstop`, `monitorfile`, `emailalert*`, `smtp`,
//! `execute`, `maintenancedir`, `readdquiescent`. Refused clearly: `masq`/`ipip` reals,
//! fwmark and IPv6 virtuals, host names. Unknown keys are warnings with the line.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

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
    protocol: Option<Protocol>,
    fallback: Option<SocketAddrV4>,
    fallbackcommand: Option<String>,
}

struct Real {
    line: usize,
    addr: Ipv4Addr,
    weight: u32,
    request: Option<String>,
    receive: Option<(String, usize)>,
}

struct Virtual {
    line: usize,
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
        if key == "virtual" {
            let (ip, port) = value.rsplit_once(':').ok_or_else(|| {
                at(
                    line,
                    format!(
                        "virtual={value}: expected IP:PORT (fwmark virtuals are not supported)"
                    ),
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
            let method = words.next().unwrap_or("gate").to_ascii_lowercase();
            if method != "gate" {
                return Err(at(
                    line,
                    format!(
                        "real={value}: forwarding method {method:?} is not supported; uvs only does direct routing (gate)"
                    ),
                ));
            }
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
            let (addrs, _port) = match target.rsplit_once(':') {
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
                s.protocol = Some(match value.to_ascii_lowercase().as_str() {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    _ => return Err(bad("only tcp and udp are supported")),
                })
            }
            "fallback" => {
                let target = value.split_whitespace().next().unwrap_or("");
                let method = value.split_whitespace().nth(1).unwrap_or("gate");
                if !method.eq_ignore_ascii_case("gate") {
                    return Err(bad("only gate (direct routing) is supported"));
                }
                s.fallback = Some(crate::health::parse_sorry(target, 0).map_err(|e| bad(&e))?);
            }
            "fallbackcommand" => s.fallbackcommand = Some(unquote(value)),
            "logfile" | "autoreload" | "callback" | "supervised" | "fork" | "cleanstop"
            | "monitorfile" | "emailalert" | "emailalertfreq" | "emailalertstatus"
            | "emailalertfrom" | "smtp" | "execute" | "maintenancedir" | "readdquiescent"
            | "checkcount" => {}
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
        let proto = s.protocol.unwrap_or(if v.port == 53 {
            Protocol::Udp
        } else {
            Protocol::Tcp
        });
        let key = ServiceKey {
            proto,
            vip: v.vip,
            port: v.port,
            fwmark: 0,
        };
        let mut spec = ServiceSpec::new(key, s.scheduler.unwrap_or(SchedulerKind::Wrr));
        spec.persistence_timeout = s.persistent;
        spec.persistence_netmask = s.netmask.unwrap_or(Ipv4Addr::BROADCAST);
        table
            .add_service(spec)
            .map_err(|e| at(v.line, format!("virtual={}:{}: {e}", v.vip, v.port)))?;
        let mut sh = ServiceHealth::new(key);
        sh.quiescent = s.quiescent.unwrap_or(true);
        sh.sorry = s.fallback.map(|a| {
            if a.port() == 0 {
                SocketAddrV4::new(*a.ip(), v.port)
            } else {
                a
            }
        });
        if let Some(cmd) = &s.fallbackcommand {
            sh.quorum_down = Some(format!("{cmd} start"));
            sh.quorum_up = Some(format!("{cmd} stop"));
        }
        for r in &v.reals {
            let mut rs = RealSpec::route(r.addr, v.port);
            rs.weight = r.weight;
            rs.forward = ForwardMethod::Route;
            table
                .add_real(&key, rs)
                .map_err(|e| at(r.line, format!("real={}: {e}", r.addr)))?;
            let check = check_of(&s, &v, r, &mut warnings, path);
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
    })
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

fn check_of(
    s: &Settings,
    v: &Virtual,
    r: &Real,
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
            command: format!(
                "{} {} {} {} {}",
                s.checkcommand.clone().unwrap_or_else(|| "/bin/true".into()),
                v.vip,
                v.port,
                r.addr,
                v.port
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
    fn refusals_and_warnings_name_the_line() {
        let e = parse(
            "virtual=10.0.0.100:80\n    real=10.0.0.11:80 masq\n",
            Path::new("l.cf"),
        )
        .unwrap_err();
        assert!(
            matches!(e, ConfigError::At { line: 2, ref message, .. } if message.contains("direct routing")),
            "{e}"
        );
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
