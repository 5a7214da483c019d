//! `uvs run --keepalived FILE`: the `virtual_server` blocks of a keepalived.conf.
//!
//! Grammar subset (keepalived.conf(5), and keepalived's parser for what the manual leaves out):
//! tokens separated by blanks, `{ }` blocks, `"quoted strings"`, `!` and `#` comments to the
//! end of the line, `include GLOB` (relative to the including file; `*` and `?` in the last
//! path component). Statements end at the end of a line or at a brace, and keywords take a
//! known number of arguments, so one-line blocks (`url { path /  status_code 200 }`) work.
//!
//! - `virtual_server IP PORT { … }`: `delay_loop`, `lb_algo`/`lvs_sched`, `lb_kind`/`lvs_method`
//!   (`DR`, `NAT` (keepalived's default), `TUN` with keepalived 2.x's `type …` words, DPVS's
//!   `FNAT`; also per `real_server` as keepalived 2.x allows), `persistence_timeout [N]` (no
//!   value = 360 s), `persistence_granularity`,
//!   `protocol TCP|UDP`, `quorum`, `hysteresis`, `quorum_up`, `quorum_down`, `sorry_server IP
//!   PORT` (reached as `sorry_server_lvs_method` says, by default as `lb_kind`),
//!   `inhibit_on_failure` (for every real), `alpha`, checker defaults (`retry`,
//!   `delay_before_retry`, `connect_timeout`, `warmup`), `real_server IP PORT { … }`.
//! - DPVS's dialect (its keepalived's `check_parser.c`): `lb_kind FNAT`, `laddr_group_name
//!   NAME` (the service's FullNAT local addresses: a `local_address_group` of the file, which
//!   may come before or after; an unknown name is an error naming it), `proxy_protocol
//!   disable|v1|v2` (DPVS's `v1-insecure`/`v2-insecure` are refused), `syn_proxy` (a warning:
//!   uvs has no SYN proxy). At the root, `local_address_group NAME { LIP [IFNAME] … }`: an
//!   address, or a range of the last byte (`192.168.100.200-210`), each optionally followed by
//!   its interface (DPVS writes `192.168.100.200 dpdk0`; Alibaba's LVS writes none); the
//!   interface is recorded as `uvsadm -F` records it (uvs answers ARP for a local address on
//!   every interface it serves). A group may serve several virtual servers.
//! - `real_server`: `weight` (1), `inhibit_on_failure`, `uthreshold`, `lthreshold`, `notify_up`,
//!   `notify_down`, one checker: `TCP_CHECK`, `HTTP_GET`, `MISC_CHECK`.
//! - Checkers: `connect_ip`, `connect_port`, `connect_timeout` (5), `retry` (1; MISC 0;
//!   `nb_get_retry` is the deprecated alias), `delay_before_retry` (1; HTTP 3), `delay_loop`
//!   (the virtual server's, default 60), `warmup`, `alpha`; HTTP_GET: `url { path; digest;
//!   status_code; virtualhost; regex }`, `virtualhost`; MISC_CHECK: `misc_path`,
//!   `misc_timeout` (default `delay_loop`), `misc_dynamic`. uvs extension: `through_vip` in a
//!   TCP_CHECK makes it the DR through-the-VIP probe (see `health::vip`).
//!
//! - `vrrp_instance NAME { … }` (see [`Parser::vrrp_instance`]): `state`,
//!   `interface`, `virtual_router_id`, `priority`, `advert_int`, `version`, `nopreempt`,
//!   `preempt_delay`, `authentication { auth_type PASS; auth_pass }`, `virtual_ipaddress { }`,
//!   `unicast_peer { }`, `unicast_src_ip`/`mcast_src_ip`, `notify_master/backup/fault`,
//!   `track_interface { }`, the old `lvs_sync_daemon_interface`. `global_defs`: `vrrp_version`,
//!   `lvs_sync_daemon IF INSTANCE [id N]` (the sync role follows the instance; the syncid
//!   defaults to its VRID, as keepalived), `vrrp_garp_master_repeat`, `vrrp_garp_master_delay`.
//!   They produce the same `vrrp::InstanceConfig` / `sync::SyncConfig` as TOML `[[vrrp]]`.
//!
//! keepalived's leniency is kept where tutorials rely on it, with its warning text: blocks
//! left open at the end of the file are closed there ("There are N missing '}'s or extra
//! '{'s"), and an unknown `state` (`SLAVE`) is BACKUP.
//!
//! `vrrp_sync_group`, `vrrp_script`, … are read and reported as not supported, without
//! failing. Other unknown keywords are warnings naming file and line. Errors name file and line; nothing is returned (so nothing starts) unless the whole
//! file is accepted.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use super::ConfigError;
use crate::health::fsm::Timing;
use crate::health::{
    CheckKind, CheckSpec, HealthConfig, HttpCheck, RealHealth, ServiceHealth, parse_status,
};
use crate::model::{
    ForwardMethod, LocalAddr, Protocol, ProxyVersion, RealSpec, SchedulerKind, ServiceKey,
    ServiceSpec, ServiceTable, Tunnel, TunnelCsum, TunnelKind,
};

#[derive(Clone, Debug)]
struct Tok {
    text: String,
    file: Rc<PathBuf>,
    line: usize,
    /// First token of its line.
    bol: bool,
}

/// Deepest `include` nesting accepted.
const MAX_INCLUDE_DEPTH: usize = 8;

fn at(file: &Path, line: usize, message: impl Into<String>) -> ConfigError {
    ConfigError::At {
        path: file.to_path_buf(),
        line,
        message: message.into(),
    }
}

fn tokenize_text(
    text: &str,
    file: &Rc<PathBuf>,
    out: &mut Vec<Tok>,
    depth: usize,
) -> Result<(), ConfigError> {
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let mut toks: Vec<String> = Vec::new();
        let mut chars = raw.chars().peekable();
        let mut cur = String::new();
        while let Some(c) = chars.next() {
            match c {
                '#' | '!' if cur.is_empty() => break,
                '"' if cur.is_empty() => {
                    let mut q = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '"' {
                            closed = true;
                            break;
                        }
                        q.push(c);
                    }
                    if !closed {
                        return Err(at(file, line, "unterminated quoted string"));
                    }
                    toks.push(q);
                }
                '{' | '}' => {
                    if !cur.is_empty() {
                        toks.push(std::mem::take(&mut cur));
                    }
                    toks.push(c.to_string());
                }
                c if c.is_whitespace() => {
                    if !cur.is_empty() {
                        toks.push(std::mem::take(&mut cur));
                    }
                }
                c => cur.push(c),
            }
        }
        if !cur.is_empty() {
            toks.push(cur);
        }
        if toks.first().is_some_and(|t| t == "include") {
            let Some(pattern) = toks.get(1) else {
                return Err(at(file, line, "include needs a file name"));
            };
            if depth >= MAX_INCLUDE_DEPTH {
                return Err(at(file, line, "include nested too deeply"));
            }
            let base = file.parent().unwrap_or(Path::new("."));
            let pat = if Path::new(pattern).is_absolute() {
                PathBuf::from(pattern)
            } else {
                base.join(pattern)
            };
            for p in glob(&pat).map_err(|m| at(file, line, m))? {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| at(file, line, format!("include {}: {e}", p.display())))?;
                tokenize_text(&text, &Rc::new(p), out, depth + 1)?;
            }
            continue;
        }
        for (j, t) in toks.into_iter().enumerate() {
            out.push(Tok {
                text: t,
                file: Rc::clone(file),
                line,
                bol: j == 0,
            });
        }
    }
    Ok(())
}

fn wildcard(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => wildcard(&p[1..], s) || (!s.is_empty() && wildcard(p, &s[1..])),
        (Some(b'?'), Some(_)) => wildcard(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => wildcard(&p[1..], &s[1..]),
        _ => false,
    }
}

/// Expands `*`/`?` in the last component; a pattern without wildcards must exist.
fn glob(pat: &Path) -> Result<Vec<PathBuf>, String> {
    let name = pat.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.contains(['*', '?']) {
        return Ok(vec![pat.to_path_buf()]);
    }
    let dir = pat.parent().unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("include {}: {e}", pat.display()))?
        .flatten()
        .filter(|e| wildcard(name.as_bytes(), e.file_name().as_encoded_bytes()))
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// The parse result plus the warnings (also logged).
#[derive(Debug)]
pub struct Parsed {
    pub table: ServiceTable,
    pub health: HealthConfig,
    /// `vrrp_instance` blocks.
    pub vrrp: Vec<crate::vrrp::InstanceConfig>,
    /// `global_defs { lvs_sync_daemon … }`.
    pub sync: Option<crate::sync::SyncConfig>,
    /// `global_defs { vrrp_garp_master_repeat N; vrrp_garp_master_delay S }`.
    pub garp_repeat: Option<u32>,
    pub garp_delay_secs: Option<u32>,
    pub warnings: Vec<String>,
}

/// Reads `path` (and its includes).
pub fn load(path: &Path) -> Result<(ServiceTable, HealthConfig), ConfigError> {
    let p = load_all(path)?;
    Ok((p.table, p.health))
}

/// Reads `path` (and its includes): services, health, VRRP and sync; warnings are logged.
pub fn load_all(path: &Path) -> Result<Parsed, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let p = parse(&text, path)?;
    for w in &p.warnings {
        log::warn!("{w}");
    }
    Ok(p)
}

/// Parses keepalived.conf `text`; `path` names it in messages and anchors includes.
pub fn parse(text: &str, path: &Path) -> Result<Parsed, ConfigError> {
    let file = Rc::new(path.to_path_buf());
    let mut toks = Vec::new();
    tokenize_text(text, &file, &mut toks, 0)?;
    let mut warnings = Vec::new();
    close_open_blocks(&mut toks, &mut warnings);
    let mut p = Parser {
        toks,
        pos: 0,
        warnings,
        table: ServiceTable::new(),
        health: HealthConfig::default(),
        ha: HaRaw::default(),
        laddr_groups: Vec::new(),
        laddr_uses: Vec::new(),
    };
    p.top()?;
    p.finish_laddrs()?;
    let (vrrp, sync) = p.finish_ha()?;
    Ok(Parsed {
        table: p.table,
        health: p.health,
        vrrp,
        sync,
        garp_repeat: p.ha.garp_repeat,
        garp_delay_secs: p.ha.garp_delay_secs,
        warnings: p.warnings,
    })
}

/// keepalived reads a file whose last `}`s are missing (tutorials print such files) and logs
/// "There are N missing '}'s or extra '{'s" once it reaches the end: the open blocks end
/// there. So do they here, with the same words as a warning.
fn close_open_blocks(toks: &mut Vec<Tok>, warnings: &mut Vec<String>) {
    let mut depth: usize = 0;
    for t in toks.iter() {
        match t.text.as_str() {
            "{" => depth += 1,
            // An extra `}` is the parser's error ("unexpected }"), with its line.
            "}" => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let Some(last) = toks.last().cloned() else {
        return;
    };
    if depth == 0 {
        return;
    }
    warnings.push(format!(
        "{}:{}: There are {depth} missing '}}'s or extra '{{'s",
        last.file.display(),
        last.line
    ));
    toks.extend((0..depth).map(|_| Tok {
        text: "}".to_string(),
        bol: true,
        ..last.clone()
    }));
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    warnings: Vec<String>,
    table: ServiceTable,
    health: HealthConfig,
    ha: HaRaw,
    /// `local_address_group` blocks.
    laddr_groups: Vec<LaddrGroup>,
    /// `laddr_group_name` of each virtual server, resolved once the whole file is read.
    laddr_uses: Vec<(ServiceKey, Tok)>,
}

/// A `local_address_group NAME { … }` as read: its name token and each address with the
/// token it came from (a range gives several).
struct LaddrGroup {
    name: Tok,
    entries: Vec<(LocalAddr, Tok)>,
}

/// VRRP and sync as read, finished (defaults from `global_defs`, cross-checks) at the end.
#[derive(Default)]
struct HaRaw {
    /// Instance, its `vrrp_instance` token, whether `version` was given.
    instances: Vec<(crate::vrrp::InstanceConfig, Tok, bool)>,
    vrrp_version: Option<crate::vrrp::Version>,
    /// `lvs_sync_daemon IF INSTANCE [id N]` (or an instance's `lvs_sync_daemon_interface`).
    sync: Option<(Tok, String, String, Option<u8>)>,
    garp_repeat: Option<u32>,
    garp_delay_secs: Option<u32>,
}

/// A checker as written, before defaults.
#[derive(Default, Clone)]
struct RawChecker {
    kind: Option<(String, Tok)>,
    connect_ip: Option<Ipv4Addr>,
    connect_port: Option<u16>,
    connect_timeout: Option<Duration>,
    retry: Option<u32>,
    delay_before_retry: Option<Duration>,
    delay_loop: Option<Duration>,
    warmup: Option<Duration>,
    alpha: bool,
    http: HttpCheck,
    url_seen: bool,
    misc_path: Option<String>,
    misc_timeout: Option<Duration>,
    misc_dynamic: bool,
    through_vip: bool,
}

struct RawReal {
    tok: Tok,
    addr: Ipv4Addr,
    port: u16,
    /// The real's own `lvs_method`, else the virtual server's.
    method: Option<ForwardMethod>,
    weight: u32,
    inhibit: Option<bool>,
    uthreshold: u32,
    lthreshold: u32,
    notify_up: Option<String>,
    notify_down: Option<String>,
    checker: RawChecker,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn err(&self, t: &Tok, m: impl Into<String>) -> ConfigError {
        at(&t.file, t.line, m)
    }

    fn warn(&mut self, t: &Tok, m: impl std::fmt::Display) {
        self.warnings
            .push(format!("{}:{}: {m}", t.file.display(), t.line));
    }

    /// The next token if it continues `kw`'s line and is not a brace.
    fn arg_opt(&mut self) -> Option<Tok> {
        match self.peek() {
            Some(t) if !t.bol && t.text != "{" && t.text != "}" => self.next(),
            _ => None,
        }
    }

    fn arg(&mut self, kw: &Tok) -> Result<Tok, ConfigError> {
        self.arg_opt()
            .ok_or_else(|| self.err(kw, format!("{} needs a value", kw.text)))
    }

    fn rest_of_line(&mut self) -> Vec<Tok> {
        let mut v = Vec::new();
        while let Some(t) = self.arg_opt() {
            v.push(t);
        }
        v
    }

    fn open(&mut self, kw: &Tok) -> Result<(), ConfigError> {
        match self.next() {
            Some(t) if t.text == "{" => Ok(()),
            Some(t) => Err(self.err(
                &t,
                format!("expected {{ after {}, found {:?}", kw.text, t.text),
            )),
            None => Err(self.err(kw, format!("expected {{ after {}", kw.text))),
        }
    }

    /// Skips a `{ … }` block if one follows.
    fn skip_block(&mut self) -> Result<(), ConfigError> {
        if self.peek().is_none_or(|t| t.text != "{") {
            return Ok(());
        }
        let start = self.next().expect("peeked");
        let mut depth = 1;
        while depth > 0 {
            match self.next() {
                Some(t) if t.text == "{" => depth += 1,
                Some(t) if t.text == "}" => depth -= 1,
                Some(_) => {}
                None => return Err(self.err(&start, "block not closed (missing })")),
            }
        }
        Ok(())
    }

    fn number<T: std::str::FromStr>(&self, t: &Tok, what: &str) -> Result<T, ConfigError> {
        t.text
            .parse()
            .map_err(|_| self.err(t, format!("{what}: {:?} is not a valid number", t.text)))
    }

    fn secs(&self, t: &Tok, what: &str) -> Result<Duration, ConfigError> {
        let x: f64 = self.number(t, what)?;
        if !(0.0..=86_400.0).contains(&x) {
            return Err(self.err(t, format!("{what} {x} is out of range 0..=86400 seconds")));
        }
        Ok(Duration::from_secs_f64(x))
    }

    fn ipv4(&self, t: &Tok, what: &str) -> Result<Ipv4Addr, ConfigError> {
        t.text.parse().map_err(|_| {
            self.err(
                t,
                format!(
                    "{what}: {:?} is not an IPv4 address (IPv6 and names are not supported)",
                    t.text
                ),
            )
        })
    }

    fn num_arg<T: std::str::FromStr>(&mut self, kw: &Tok, what: &str) -> Result<T, ConfigError> {
        let v = self.arg(kw)?;
        self.number(&v, what)
    }

    fn secs_arg(&mut self, kw: &Tok, what: &str) -> Result<Duration, ConfigError> {
        let v = self.arg(kw)?;
        self.secs(&v, what)
    }

    fn ipv4_arg(&mut self, kw: &Tok, what: &str) -> Result<Ipv4Addr, ConfigError> {
        let v = self.arg(kw)?;
        self.ipv4(&v, what)
    }

    fn top(&mut self) -> Result<(), ConfigError> {
        while let Some(t) = self.next() {
            match t.text.as_str() {
                "virtual_server" => self.virtual_server(&t)?,
                "vrrp_instance" => self.vrrp_instance(&t)?,
                "vrrp_sync_group"
                | "vrrp_script"
                | "vrrp_track_file"
                | "static_ipaddress"
                | "static_routes"
                | "static_rules"
                | "linkbeat_interfaces"
                | "track_file" => {
                    let name: Vec<String> =
                        self.rest_of_line().into_iter().map(|t| t.text).collect();
                    self.warn(
                        &t,
                        format!(
                            "{} {}: not supported by uvs, ignored",
                            t.text,
                            name.join(" ")
                        ),
                    );
                    self.skip_block()?;
                }
                "global_defs" => self.global_defs(&t)?,
                "local_address_group" => self.local_address_group(&t)?,
                // DPVS's other root blocks.
                "deny_address_group" | "whitelist_address_group" | "tunnel_group" => {
                    let name: Vec<String> =
                        self.rest_of_line().into_iter().map(|t| t.text).collect();
                    self.warn(
                        &t,
                        format!(
                            "{} {}: DPVS's, not supported by uvs, ignored",
                            t.text,
                            name.join(" ")
                        ),
                    );
                    self.skip_block()?;
                }
                "virtual_server_group" => {
                    return Err(self.err(&t, "virtual_server_group is not supported; write one virtual_server per VIP:port"));
                }
                "}" => return Err(self.err(&t, "unexpected }")),
                other => {
                    self.warn(&t, format!("unknown keyword {other:?}, ignored"));
                    self.rest_of_line();
                    self.skip_block()?;
                }
            }
        }
        Ok(())
    }

    fn virtual_server(&mut self, kw: &Tok) -> Result<(), ConfigError> {
        let a = self.arg(kw)?;
        if a.text == "fwmark" || a.text == "group" {
            return Err(self.err(
                &a,
                format!(
                    "virtual_server {} is not supported; use virtual_server IP PORT",
                    a.text
                ),
            ));
        }
        let vip = self.ipv4(&a, "virtual_server")?;
        let pt = self.arg(kw)?;
        let port: u16 = self.number(&pt, "virtual_server port")?;
        self.open(kw)?;
        let mut proto = Protocol::Tcp;
        let mut sched = SchedulerKind::Wlc;
        // keepalived's default method is NAT.
        let mut method = ForwardMethod::Masq;
        let mut sorry_method = None;
        let mut persistence = None;
        let mut netmask = Ipv4Addr::BROADCAST;
        let mut delay_loop = Duration::from_secs(60);
        let mut sh = ServiceHealth::new(ServiceKey::addr(proto, vip, port));
        sh.quiescent = false; // keepalived removes a failed real unless inhibit_on_failure
        let mut defaults = RawChecker::default();
        let mut reals: Vec<RawReal> = Vec::new();
        let mut proxy_protocol: Option<(ProxyVersion, Tok)> = None;
        let mut laddr_group: Option<Tok> = None;
        loop {
            let Some(t) = self.next() else {
                return Err(self.err(kw, "virtual_server block not closed (missing })"));
            };
            match t.text.as_str() {
                "}" => break,
                "delay_loop" => delay_loop = self.secs_arg(&t, "delay_loop")?,
                "lb_algo" | "lvs_sched" => {
                    let v = self.arg(&t)?;
                    sched =
                        SchedulerKind::parse(&v.text).map_err(|e| self.err(&v, e.to_string()))?;
                }
                "lb_kind" | "lvs_method" => {
                    method = self.lvs_method(&t)?;
                }
                "persistence_timeout" => {
                    persistence = Some(match self.arg_opt() {
                        Some(v) => self.number::<u32>(&v, "persistence_timeout")?,
                        None => 360,
                    });
                }
                "persistence_granularity" => {
                    let v = self.arg(&t)?;
                    netmask = self.ipv4(&v, "persistence_granularity")?;
                }
                "protocol" => {
                    let v = self.arg(&t)?;
                    proto = match v.text.to_ascii_uppercase().as_str() {
                        "TCP" => Protocol::Tcp,
                        "UDP" => Protocol::Udp,
                        other => {
                            return Err(self.err(
                                &v,
                                format!("protocol {other} is not supported (TCP or UDP)"),
                            ));
                        }
                    };
                }
                "quorum" => sh.quorum = self.num_arg(&t, "quorum")?,
                "hysteresis" => sh.hysteresis = self.num_arg(&t, "hysteresis")?,
                "quorum_up" => sh.quorum_up = Some(self.command(&t)?),
                "quorum_down" => sh.quorum_down = Some(self.command(&t)?),
                "sorry_server" => {
                    let ip = self.arg(&t)?;
                    let ip = self.ipv4(&ip, "sorry_server")?;
                    let p = match self.arg_opt() {
                        Some(p) => self.number(&p, "sorry_server port")?,
                        None => port,
                    };
                    sh.sorry = Some(SocketAddrV4::new(ip, p));
                }
                "sorry_server_lvs_method" => sorry_method = Some(self.lvs_method(&t)?),
                "inhibit_on_failure" => sh.quiescent = true,
                "alpha" => defaults.alpha = true,
                "retry" | "delay_before_retry" | "connect_timeout" | "warmup" => {
                    self.checker_key(&t, &mut defaults)?;
                }
                "real_server" => reals.push(self.real_server(&t)?),
                "laddr_group_name" => laddr_group = Some(self.arg(&t)?),
                "proxy_protocol" => {
                    let v = self.arg(&t)?;
                    proxy_protocol = Some((self.proxy_protocol(&v)?, v));
                }
                "syn_proxy" => {
                    self.warn(
                        &t,
                        "syn_proxy: uvs has no SYN proxy (DPVS's); ignored, the real servers see the client's SYN",
                    );
                    self.rest_of_line();
                }
                "daddr_group_name"
                | "whitelist_group_name"
                | "vip_bind_dev"
                | "establish_timeout"
                | "bps"
                | "limit_proportion"
                | "hash_target"
                | "src-range"
                | "dst-range"
                | "iif"
                | "oif" => {
                    self.warn(
                        &t,
                        format!("{}: DPVS's, not supported by uvs, ignored", t.text),
                    );
                    self.rest_of_line();
                }
                "omega"
                | "ha_suspend"
                | "hashed"
                | "sorry_server_inhibit"
                | "ops"
                | "sh-port"
                | "sh-fallback"
                | "mh-port"
                | "mh-fallback"
                | "virtualhost"
                | "lvs_timeouts" => {
                    self.warn(&t, format!("{}: not supported by uvs, ignored", t.text));
                    self.rest_of_line();
                }
                other => {
                    self.warn(
                        &t,
                        format!("unknown keyword {other:?} in virtual_server, ignored"),
                    );
                    self.rest_of_line();
                    self.skip_block()?;
                }
            }
        }
        let key = ServiceKey::addr(proto, vip, port);
        sh.key = key;
        sh.sorry_forward = sorry_method.unwrap_or(method);
        let mut spec = ServiceSpec::new(key, sched);
        spec.persistence_timeout = persistence;
        spec.persistence_netmask = netmask;
        if let Some((version, v)) = proxy_protocol {
            if version == ProxyVersion::V1 && proto == Protocol::Udp {
                return Err(self.err(
                    &v,
                    format!(
                        "virtual_server {vip} {port}: {}",
                        crate::model::ModelError::ProxyV1Udp
                    ),
                ));
            }
            spec.proxy_protocol = version;
        }
        if let Some(g) = laddr_group {
            self.laddr_uses.push((key, g));
        }
        self.table
            .add_service(spec)
            .map_err(|e| self.err(kw, format!("virtual_server {vip} {port}: {e}")))?;
        for r in reals {
            let rs = RealSpec {
                addr: r.addr,
                port: r.port,
                weight: r.weight,
                forward: r.method.unwrap_or(method),
                upper_threshold: r.uthreshold,
                lower_threshold: r.lthreshold,
            };
            self.table
                .add_real(&key, rs)
                .map_err(|e| self.err(&r.tok, format!("real_server {}: {e}", r.addr)))?;
            let check = self.finish_checker(&r.checker, &defaults, delay_loop);
            sh.reals.push(RealHealth {
                addr: r.addr,
                check,
                notify_up: r.notify_up,
                notify_down: r.notify_down,
                quiescent: r.inhibit,
            });
        }
        self.health.services.push(sh);
        Ok(())
    }

    fn command(&mut self, kw: &Tok) -> Result<String, ConfigError> {
        let parts = self.rest_of_line();
        if parts.is_empty() {
            return Err(self.err(kw, format!("{} needs a command", kw.text)));
        }
        Ok(parts
            .into_iter()
            .map(|t| t.text)
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// `lb_kind`/`lvs_method DR|NAT|TUN|FNAT`; keepalived 2.x's `TUN` takes its encapsulation
    /// on the same line: `type ipip`, `type gue port N`, `type gre`, then `nocsum`, `csum` or
    /// `remcsum`. `FNAT` is DPVS's FullNAT.
    fn lvs_method(&mut self, t: &Tok) -> Result<ForwardMethod, ConfigError> {
        let v = self.arg(t)?;
        let m = match v.text.to_ascii_uppercase().as_str() {
            "DR" => ForwardMethod::Route,
            "NAT" => ForwardMethod::Masq,
            "TUN" => return self.tunnel(t),
            "FNAT" => ForwardMethod::FullNat,
            "SNAT" => {
                return Err(self.err(
                    &v,
                    format!(
                        "{} SNAT (DPVS's source NAT of outgoing traffic) is not supported by uvs",
                        t.text
                    ),
                ));
            }
            _ => {
                return Err(self.err(
                    &v,
                    format!("{} {:?} is unknown (DR, NAT, TUN or FNAT)", t.text, v.text),
                ));
            }
        };
        self.rest_of_line();
        Ok(m)
    }

    /// DPVS's `proxy_protocol disable|v1|v2` (its words, without case).
    fn proxy_protocol(&self, v: &Tok) -> Result<ProxyVersion, ConfigError> {
        if let Some(version) = ProxyVersion::parse(&v.text) {
            return Ok(version);
        }
        let why = if v.text.to_ascii_lowercase().ends_with("-insecure") {
            "DPVS's insecure modes (passing on a PROXY header the client sent) are not supported by uvs; use v1 or v2"
        } else {
            "expected disable, v1 or v2"
        };
        Err(self.err(v, format!("proxy_protocol {:?}: {why}", v.text)))
    }

    /// DPVS's `local_address_group NAME { LIP [IFNAME] … }` (see the module doc).
    fn local_address_group(&mut self, kw: &Tok) -> Result<(), ConfigError> {
        let name = self.arg(kw)?;
        self.rest_of_line();
        self.open(kw)?;
        let mut entries: Vec<(LocalAddr, Tok)> = Vec::new();
        // Addresses of the latest entry (a range gives several), until its interface comes.
        let mut latest: std::ops::Range<usize> = 0..0;
        loop {
            let Some(t) = self.next() else {
                return Err(self.err(kw, "local_address_group block not closed (missing })"));
            };
            if t.text == "}" {
                break;
            }
            if t.text == "{" {
                return Err(self.err(&t, "unexpected { in local_address_group"));
            }
            if let Some(addrs) = self.laddr_range(&t)? {
                let start = entries.len();
                for addr in addrs {
                    LocalAddr::check_addr(addr).map_err(|e| {
                        self.err(&t, format!("local_address_group {}: {e}", name.text))
                    })?;
                    entries.push((
                        LocalAddr {
                            addr,
                            interface: None,
                        },
                        t.clone(),
                    ));
                }
                latest = start..entries.len();
                continue;
            }
            // Not an address: the interface of the entry just before it.
            let takes_it = !latest.is_empty()
                && entries[latest.start].1.line == t.line
                && entries[latest.start].0.interface.is_none();
            if !takes_it {
                return Err(self.err(
                    &t,
                    format!(
                        "local_address_group {}: {:?} is not an IPv4 address (expected LIP [IFNAME], e.g. 192.168.100.200 eth0)",
                        name.text, t.text
                    ),
                ));
            }
            LocalAddr::check_interface(&t.text)
                .map_err(|e| self.err(&t, format!("local_address_group {}: {e}", name.text)))?;
            for (la, _) in &mut entries[latest.clone()] {
                la.interface = Some(t.text.clone());
            }
        }
        if let Some(other) = self.laddr_groups.iter().find(|g| g.name.text == name.text) {
            return Err(self.err(
                &name,
                format!(
                    "local_address_group {} is already defined at line {}",
                    name.text, other.name.line
                ),
            ));
        }
        if entries.is_empty() {
            self.warn(
                &name,
                format!(
                    "local_address_group {} is empty: its virtual servers use the director's own address",
                    name.text
                ),
            );
        }
        self.laddr_groups.push(LaddrGroup { name, entries });
        Ok(())
    }

    /// `192.168.100.200`, or keepalived's range of the last byte `192.168.100.200-210`; `None`
    /// when `t` is not an address at all (an interface name).
    fn laddr_range(&self, t: &Tok) -> Result<Option<Vec<Ipv4Addr>>, ConfigError> {
        let (first, last) = match t.text.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (t.text.as_str(), None),
        };
        let Ok(first) = first.parse::<Ipv4Addr>() else {
            return Ok(None);
        };
        let Some(last) = last else {
            return Ok(Some(vec![first]));
        };
        let [a, b, c, lo] = first.octets();
        match last.parse::<u8>() {
            Ok(hi) if hi >= lo => Ok(Some(
                (lo..=hi).map(|d| Ipv4Addr::new(a, b, c, d)).collect(),
            )),
            _ => Err(self.err(
                t,
                format!(
                    "local_address_group: range {:?}: the end is a last byte {lo}..=255 (e.g. 192.168.100.200-210)",
                    t.text
                ),
            )),
        }
    }

    /// Gives each virtual server the addresses of its `laddr_group_name`.
    fn finish_laddrs(&mut self) -> Result<(), ConfigError> {
        for (key, name) in std::mem::take(&mut self.laddr_uses) {
            let Some(group) = self.laddr_groups.iter().find(|g| g.name.text == name.text) else {
                return Err(self.err(
                    &name,
                    format!(
                        "laddr_group_name {}: no local_address_group named {:?}",
                        name.text, name.text
                    ),
                ));
            };
            for (la, tok) in group.entries.clone() {
                let addr = la.addr;
                self.table.add_local_addr(&key, la).map_err(|e| {
                    self.err(
                        &tok,
                        format!(
                            "local_address_group {} (laddr_group_name of virtual_server {} {} at line {}): local address {addr}: {e}",
                            name.text, key.vip, key.port, name.line
                        ),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The rest of an `lvs_method TUN` line (see [`Parser::lvs_method`]).
    fn tunnel(&mut self, kw: &Tok) -> Result<ForwardMethod, ConfigError> {
        let mut t = Tunnel::IPIP;
        let words = self.rest_of_line();
        let mut it = words.iter();
        while let Some(w) = it.next() {
            match w.text.as_str() {
                "type" => {
                    let k = it
                        .next()
                        .ok_or_else(|| self.err(w, "type needs ipip, gue or gre"))?;
                    t.kind = TunnelKind::parse(&k.text).ok_or_else(|| {
                        self.err(
                            k,
                            format!("tunnel type {:?} is unknown (ipip, gue or gre)", k.text),
                        )
                    })?;
                }
                "port" => {
                    let n = it
                        .next()
                        .ok_or_else(|| self.err(w, "port needs a number"))?;
                    t.port = self.number(n, "tunnel port")?;
                }
                "nocsum" => t.csum = TunnelCsum::NoCsum,
                "csum" => t.csum = TunnelCsum::Csum,
                "remcsum" => t.csum = TunnelCsum::RemCsum,
                other => {
                    return Err(self.err(
                        w,
                        format!(
                            "{} TUN: {other:?} is unknown (type, port, nocsum, csum, remcsum)",
                            kw.text
                        ),
                    ));
                }
            }
        }
        t.check()
            .map_err(|e| self.err(kw, format!("{} TUN: {e}", kw.text)))?;
        Ok(ForwardMethod::Tunnel(t))
    }

    fn real_server(&mut self, kw: &Tok) -> Result<RawReal, ConfigError> {
        let a = self.arg(kw)?;
        let addr = self.ipv4(&a, "real_server")?;
        let pt = self.arg(kw)?;
        // The real's port: NAT maps to it; DR ignores it (the service's port is used).
        let port: u16 = self.number(&pt, "real_server port")?;
        let mut r = RawReal {
            tok: kw.clone(),
            addr,
            port,
            method: None,
            weight: 1,
            inhibit: None,
            uthreshold: 0,
            lthreshold: 0,
            notify_up: None,
            notify_down: None,
            checker: RawChecker::default(),
        };
        self.open(kw)?;
        loop {
            let Some(t) = self.next() else {
                return Err(self.err(kw, "real_server block not closed (missing })"));
            };
            match t.text.as_str() {
                "}" => break,
                "weight" => {
                    r.weight = self.num_arg(&t, "weight")?;
                    if r.weight > crate::model::MAX_WEIGHT {
                        return Err(
                            self.err(&t, format!("weight {} is out of range 0..65535", r.weight))
                        );
                    }
                }
                "inhibit_on_failure" => r.inhibit = Some(true),
                // keepalived 2.x: a real's own forwarding method.
                "lb_kind" | "lvs_method" => r.method = Some(self.lvs_method(&t)?),
                "uthreshold" => r.uthreshold = self.num_arg(&t, "uthreshold")?,
                "lthreshold" => r.lthreshold = self.num_arg(&t, "lthreshold")?,
                "notify_up" => r.notify_up = Some(self.command(&t)?),
                "notify_down" => r.notify_down = Some(self.command(&t)?),
                "TCP_CHECK" | "HTTP_GET" | "MISC_CHECK" => {
                    if r.checker.kind.is_some() {
                        self.warn(
                            &t,
                            format!(
                                "{}: uvs runs one checker per real server; this one is ignored",
                                t.text
                            ),
                        );
                        self.skip_block()?;
                        continue;
                    }
                    r.checker.kind = Some((t.text.clone(), t.clone()));
                    self.checker_block(&t, &mut r.checker)?;
                }
                "SSL_GET" | "SMTP_CHECK" | "DNS_CHECK" | "UDP_CHECK" | "PING_CHECK"
                | "BFD_CHECK" | "FILE_CHECK" => {
                    self.warn(
                        &t,
                        format!("{}: not supported by uvs; this checker is ignored", t.text),
                    );
                    self.skip_block()?;
                }
                other => {
                    self.warn(
                        &t,
                        format!("unknown keyword {other:?} in real_server, ignored"),
                    );
                    self.rest_of_line();
                    self.skip_block()?;
                }
            }
        }
        Ok(r)
    }

    fn checker_block(&mut self, kw: &Tok, c: &mut RawChecker) -> Result<(), ConfigError> {
        self.open(kw)?;
        loop {
            let Some(t) = self.next() else {
                return Err(self.err(kw, format!("{} block not closed (missing }})", kw.text)));
            };
            if t.text == "}" {
                return Ok(());
            }
            self.checker_key(&t, c)?;
        }
    }

    fn checker_key(&mut self, t: &Tok, c: &mut RawChecker) -> Result<(), ConfigError> {
        match t.text.as_str() {
            "connect_ip" => c.connect_ip = Some(self.ipv4_arg(t, "connect_ip")?),
            "connect_port" => c.connect_port = Some(self.num_arg(t, "connect_port")?),
            "connect_timeout" => c.connect_timeout = Some(self.secs_arg(t, "connect_timeout")?),
            "retry" => c.retry = Some(self.num_arg(t, "retry")?),
            "nb_get_retry" => {
                self.warn(t, "nb_get_retry is deprecated - please use 'retry'");
                c.retry = Some(self.num_arg(t, "nb_get_retry")?);
            }
            "delay_before_retry" => {
                c.delay_before_retry = Some(self.secs_arg(t, "delay_before_retry")?)
            }
            "delay_loop" => c.delay_loop = Some(self.secs_arg(t, "delay_loop")?),
            "warmup" => c.warmup = Some(self.secs_arg(t, "warmup")?),
            "alpha" => c.alpha = true,
            "through_vip" => c.through_vip = true,
            "misc_path" => c.misc_path = Some(self.command(t)?),
            "misc_timeout" => c.misc_timeout = Some(self.secs_arg(t, "misc_timeout")?),
            "misc_dynamic" => c.misc_dynamic = true,
            "virtualhost" => c.http.host = Some(self.arg(t)?.text),
            "url" => {
                if c.url_seen {
                    self.warn(
                        t,
                        "uvs checks the first url block only; this one is ignored",
                    );
                    self.skip_block()?;
                    return Ok(());
                }
                c.url_seen = true;
                self.open(t)?;
                loop {
                    let Some(u) = self.next() else {
                        return Err(self.err(t, "url block not closed (missing })"));
                    };
                    match u.text.as_str() {
                        "}" => break,
                        "path" => c.http.path = self.arg(&u)?.text,
                        "digest" => c.http.digest = Some(self.arg(&u)?.text),
                        "status_code" => {
                            let v: Vec<String> =
                                self.rest_of_line().into_iter().map(|x| x.text).collect();
                            c.http.status = parse_status(&v.join(","))
                                .map_err(|m| self.err(&u, format!("status_code: {m}")))?;
                        }
                        "virtualhost" => c.http.host = Some(self.arg(&u)?.text),
                        "regex" => {
                            let v = self.arg(&u)?;
                            regex::Regex::new(&v.text)
                                .map_err(|e| self.err(&v, format!("regex: {e}")))?;
                            c.http.regex = Some(v.text);
                        }
                        other => {
                            self.warn(&u, format!("url: {other:?} not supported by uvs, ignored"));
                            self.rest_of_line();
                        }
                    }
                }
            }
            "bindto" | "bind_port" | "bind_if" | "fwmark" | "http_protocol" | "user"
            | "log_all_failures" | "fast_recovery" | "enable_sni" | "sni_name"
            | "tls_compliant" => {
                self.warn(t, format!("{}: not supported by uvs, ignored", t.text));
                self.rest_of_line();
            }
            other => {
                self.warn(t, format!("unknown checker keyword {other:?}, ignored"));
                self.rest_of_line();
                self.skip_block()?;
            }
        }
        Ok(())
    }

    fn finish_checker(&self, c: &RawChecker, d: &RawChecker, delay_loop: Duration) -> CheckSpec {
        let name = c.kind.as_ref().map(|(n, _)| n.as_str());
        let kind = match name {
            None => CheckKind::None,
            Some("TCP_CHECK") if c.through_vip => CheckKind::ThroughVip,
            Some("TCP_CHECK") => CheckKind::Tcp,
            Some("HTTP_GET") => CheckKind::Http(c.http.clone()),
            Some(_) => CheckKind::Misc {
                command: c.misc_path.clone().unwrap_or_else(|| "/bin/false".into()),
                dynamic: c.misc_dynamic,
            },
        };
        let interval = c.delay_loop.unwrap_or(delay_loop);
        let is_misc = matches!(kind, CheckKind::Misc { .. });
        let timeout = if is_misc {
            c.misc_timeout.unwrap_or(interval)
        } else {
            c.connect_timeout
                .or(d.connect_timeout)
                .unwrap_or(Duration::from_secs(5))
        };
        let dbr_default = if matches!(kind, CheckKind::Http(_)) {
            3
        } else {
            1
        };
        CheckSpec {
            kind,
            connect_ip: c.connect_ip,
            connect_port: c.connect_port,
            timing: Timing {
                interval,
                timeout,
                retry: c.retry.or(d.retry).unwrap_or(if is_misc { 0 } else { 1 }),
                delay_before_retry: c
                    .delay_before_retry
                    .or(d.delay_before_retry)
                    .unwrap_or(Duration::from_secs(dbr_default)),
                rise: 1,
                fall: 1,
                alpha: c.alpha || d.alpha,
                warmup: c.warmup.or(d.warmup).unwrap_or(Duration::ZERO),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `vrrp_instance` blocks and the VRRP/sync part of `global_defs`.

impl Parser {
    /// Reads a `{ … }` list of one item per line (`virtual_ipaddress`, `unicast_peer`,
    /// `track_interface`): the first word of each line, plus the rest of the line.
    fn line_list(&mut self, kw: &Tok) -> Result<Vec<(Tok, Vec<Tok>)>, ConfigError> {
        self.open(kw)?;
        let mut out = Vec::new();
        loop {
            let Some(t) = self.next() else {
                return Err(self.err(kw, format!("{} block not closed (missing }})", kw.text)));
            };
            if t.text == "}" {
                return Ok(out);
            }
            if t.text == "{" {
                return Err(self.err(&t, format!("unexpected {{ in {}", kw.text)));
            }
            let rest = self.rest_of_line();
            out.push((t, rest));
        }
    }

    /// An address as keepalived writes it in lists: `10.0.0.100`, `10.0.0.100/24`, followed
    /// by `dev`, `label`, … words (which uvs does not need: it answers ARP, it adds no address).
    fn list_ipv4(&self, t: &Tok, what: &str) -> Result<Ipv4Addr, ConfigError> {
        let a = t.text.split('/').next().unwrap_or("");
        a.parse().map_err(|_| {
            self.err(
                t,
                format!(
                    "{what}: {:?} is not an IPv4 address (IPv6 VRRP is not supported)",
                    t.text
                ),
            )
        })
    }

    pub(crate) fn vrrp_instance(&mut self, kw: &Tok) -> Result<(), ConfigError> {
        use crate::vrrp::{InstanceConfig, Version};
        let name = self.arg(kw)?.text;
        self.rest_of_line();
        self.open(kw)?;
        let mut c = InstanceConfig::new(&name, "", 0);
        let mut vrid_seen = false;
        let mut version_seen = false;
        let mut auth_type: Option<Tok> = None;
        loop {
            let Some(t) = self.next() else {
                return Err(self.err(kw, "vrrp_instance block not closed (missing })"));
            };
            match t.text.as_str() {
                "}" => break,
                "state" => {
                    let v = self.arg(&t)?;
                    c.start_master = match v.text.to_ascii_uppercase().as_str() {
                        "MASTER" => true,
                        "BACKUP" => false,
                        // keepalived's words and choice (`state SLAVE` in tutorials).
                        _ => {
                            self.warn(
                                &v,
                                format!(
                                    "({name}) unknown state '{}', defaulting to BACKUP",
                                    v.text
                                ),
                            );
                            false
                        }
                    };
                }
                "interface" => c.interface = self.arg(&t)?.text,
                "virtual_router_id" => {
                    let v = self.arg(&t)?;
                    let n: u32 = self.number(&v, "virtual_router_id")?;
                    if !(1..=255).contains(&n) {
                        return Err(self.err(&v, format!("virtual_router_id {n}: must be 1..=255")));
                    }
                    c.vrid = n as u8;
                    vrid_seen = true;
                }
                "priority" => {
                    let v = self.arg(&t)?;
                    let n: u32 = self.number(&v, "priority")?;
                    if !(1..=255).contains(&n) {
                        return Err(self.err(&v, format!("priority {n}: must be 1..=255")));
                    }
                    c.priority = n as u8;
                }
                "advert_int" => {
                    let v = self.arg(&t)?;
                    let x: f64 = self.number(&v, "advert_int")?;
                    let cs = (x * 100.0).round();
                    if !(1.0..=4095.0).contains(&cs) {
                        return Err(self.err(&v, format!("advert_int {x}: must be 0.01..=40.95")));
                    }
                    c.advert_int_cs = cs as u16;
                }
                "version" => {
                    let v = self.arg(&t)?;
                    c.version = match v.text.as_str() {
                        "2" => Version::V2,
                        "3" => Version::V3,
                        _ => return Err(self.err(&v, format!("version {:?}: 2 or 3", v.text))),
                    };
                    version_seen = true;
                }
                "nopreempt" => c.preempt = false,
                "preempt" => c.preempt = true,
                "preempt_delay" => {
                    let v = self.arg(&t)?;
                    let x: f64 = self.number(&v, "preempt_delay")?;
                    if !(0.0..=1000.0).contains(&x) {
                        return Err(self.err(&v, format!("preempt_delay {x}: must be 0..=1000")));
                    }
                    c.preempt_delay_secs = x.round() as u32;
                }
                "authentication" => {
                    self.open(&t)?;
                    loop {
                        let Some(a) = self.next() else {
                            return Err(self.err(&t, "authentication block not closed (missing })"));
                        };
                        match a.text.as_str() {
                            "}" => break,
                            "auth_type" => auth_type = Some(self.arg(&a)?),
                            "auth_pass" => c.auth_pass = Some(self.arg(&a)?.text),
                            other => {
                                self.warn(&a, format!("authentication: {other:?} ignored"));
                                self.rest_of_line();
                            }
                        }
                    }
                }
                "virtual_ipaddress" => {
                    for (a, _) in self.line_list(&t)? {
                        c.vips.push(self.list_ipv4(&a, "virtual_ipaddress")?);
                    }
                }
                "unicast_peer" => {
                    for (a, _) in self.line_list(&t)? {
                        c.unicast_peers.push(self.list_ipv4(&a, "unicast_peer")?);
                    }
                }
                "unicast_src_ip" | "mcast_src_ip" => {
                    c.source = Some(self.ipv4_arg(&t, &t.text.clone())?);
                }
                "track_interface" => {
                    for (a, rest) in self.line_list(&t)? {
                        if !rest.is_empty() {
                            self.warn(&a, "track_interface: weights are not supported; a down interface means FAULT");
                        }
                        c.track_interfaces.push(a.text);
                    }
                }
                "notify_master" => c.notify_master = Some(self.command(&t)?),
                "notify_backup" => c.notify_backup = Some(self.command(&t)?),
                "notify_fault" => c.notify_fault = Some(self.command(&t)?),
                "lvs_sync_daemon_interface" => {
                    let v = self.arg(&t)?;
                    self.warn(&t, "lvs_sync_daemon_interface is deprecated - please use 'lvs_sync_daemon' in global_defs");
                    if self.ha.sync.is_none() {
                        self.ha.sync = Some((t.clone(), v.text, name.clone(), None));
                    }
                }
                "virtual_ipaddress_excluded"
                | "virtual_routes"
                | "virtual_rules"
                | "track_script"
                | "track_file"
                | "track_process"
                | "track_bfd" => {
                    self.warn(&t, format!("{}: not supported by uvs, ignored", t.text));
                    self.rest_of_line();
                    self.skip_block()?;
                }
                other => {
                    self.warn(
                        &t,
                        format!("{other:?} in vrrp_instance: not supported by uvs, ignored"),
                    );
                    self.rest_of_line();
                    self.skip_block()?;
                }
            }
        }
        if c.interface.is_empty() {
            return Err(self.err(kw, format!("vrrp_instance {name}: interface is missing")));
        }
        if !vrid_seen {
            return Err(self.err(
                kw,
                format!("vrrp_instance {name}: virtual_router_id is missing"),
            ));
        }
        if let Some(a) = &auth_type {
            match a.text.to_ascii_uppercase().as_str() {
                "PASS" if c.auth_pass.is_some() => {}
                "PASS" => return Err(self.err(a, "auth_type PASS needs auth_pass")),
                _ => {
                    return Err(
                        self.err(a, format!("auth_type {}: only PASS is supported", a.text))
                    );
                }
            }
        } else if c.auth_pass.is_some() {
            return Err(self.err(
                kw,
                format!("vrrp_instance {name}: auth_pass without auth_type PASS"),
            ));
        }
        // keepalived clears these with a warning rather than refusing the file.
        if c.start_master && !c.preempt {
            self.warn(
                kw,
                format!("({name}) nopreempt will not work with initial state MASTER - clearing"),
            );
            c.preempt = true;
        }
        if c.start_master && c.preempt_delay_secs > 0 {
            self.warn(
                kw,
                format!(
                    "({name}) preempt_delay will not work with initial state MASTER - clearing"
                ),
            );
            c.preempt_delay_secs = 0;
        }
        if let Some((o, ot, _)) =
            self.ha.instances.iter().find(|(o, _, _)| {
                o.name == c.name || (o.vrid == c.vrid && o.interface == c.interface)
            })
        {
            return Err(self.err(
                kw,
                format!(
                    "vrrp_instance {name}: name or (interface, virtual_router_id) already used by {} at line {}",
                    o.name, ot.line
                ),
            ));
        }
        self.ha.instances.push((c, kw.clone(), version_seen));
        Ok(())
    }

    pub(crate) fn global_defs(&mut self, kw: &Tok) -> Result<(), ConfigError> {
        if self.peek().is_none_or(|t| t.text != "{") {
            return Err(self.err(kw, "expected { after global_defs"));
        }
        self.open(kw)?;
        loop {
            let Some(t) = self.next() else {
                return Err(self.err(kw, "global_defs block not closed (missing })"));
            };
            match t.text.as_str() {
                "}" => return Ok(()),
                "vrrp_version" => {
                    let v = self.arg(&t)?;
                    self.ha.vrrp_version = Some(match v.text.as_str() {
                        "2" => crate::vrrp::Version::V2,
                        "3" => crate::vrrp::Version::V3,
                        _ => return Err(self.err(&v, format!("vrrp_version {:?}: 2 or 3", v.text))),
                    });
                }
                "lvs_sync_daemon" => {
                    let ifc = self.arg(&t)?.text;
                    let inst = self.arg(&t)?.text;
                    let mut id = None;
                    while let Some(k) = self.arg_opt() {
                        let v = self.arg(&k)?;
                        match k.text.as_str() {
                            "id" => {
                                let n: u32 = self.number(&v, "lvs_sync_daemon id")?;
                                if n > 255 {
                                    return Err(self.err(
                                        &v,
                                        format!("lvs_sync_daemon id {n}: must be 0..=255"),
                                    ));
                                }
                                id = Some(n as u8);
                            }
                            "maxlen" | "port" | "ttl" | "group" => {
                                self.warn(&k, format!("lvs_sync_daemon {}: uvs uses the defaults (maxlen 1472, 224.0.0.81:8848, ttl 1); ignored", k.text));
                            }
                            other => {
                                return Err(self.err(&k, format!("lvs_sync_daemon: unknown option {other:?} (id, maxlen, port, ttl, group)")));
                            }
                        }
                    }
                    self.ha.sync = Some((t.clone(), ifc, inst, id));
                }
                "vrrp_garp_master_repeat" => {
                    self.ha.garp_repeat = Some(self.num_arg(&t, "vrrp_garp_master_repeat")?);
                }
                "vrrp_garp_master_delay" => {
                    self.ha.garp_delay_secs = Some(self.num_arg(&t, "vrrp_garp_master_delay")?);
                }
                "vrrp_strict"
                | "vrrp_mcast_group4"
                | "vrrp_skip_check_adv_addr"
                | "vrrp_garp_master_refresh"
                | "vrrp_garp_lower_prio_repeat"
                | "vrrp_check_unicast_src"
                | "vrrp_priority"
                | "lvs_flush"
                | "vrrp_garp_interval"
                | "vrrp_gna_interval" => {
                    self.warn(
                        &t,
                        format!("global_defs {}: not supported by uvs, ignored", t.text),
                    );
                    self.rest_of_line();
                }
                _ => {
                    // router_id, notification_email, smtp_*, …: nothing uvs does.
                    self.rest_of_line();
                    self.skip_block()?;
                }
            }
        }
    }

    /// Applies `vrrp_version`, validates every instance, resolves `lvs_sync_daemon`.
    fn finish_ha(
        &mut self,
    ) -> Result<
        (
            Vec<crate::vrrp::InstanceConfig>,
            Option<crate::sync::SyncConfig>,
        ),
        ConfigError,
    > {
        let mut out = Vec::new();
        let instances = std::mem::take(&mut self.ha.instances);
        for (mut c, tok, version_seen) in instances {
            if !version_seen {
                if let Some(v) = self.ha.vrrp_version {
                    c.version = v;
                }
            }
            if c.version == crate::vrrp::Version::V3 && c.auth_pass.is_some() {
                self.warn(
                    &tok,
                    format!(
                        "({}) authentication is not supported with VRRPv3 - ignoring",
                        c.name
                    ),
                );
                c.auth_pass = None;
            }
            c.validate()
                .map_err(|m| self.err(&tok, format!("vrrp_instance {}: {m}", c.name)))?;
            out.push(c);
        }
        let sync = match self.ha.sync.take() {
            None => None,
            Some((tok, ifc, inst, id)) => {
                let Some(i) = out.iter().find(|c| c.name == inst) else {
                    return Err(self.err(
                        &tok,
                        format!("lvs_sync_daemon: no vrrp_instance named {inst:?}"),
                    ));
                };
                let mut s = crate::sync::SyncConfig::new(&ifc);
                // keepalived: the syncid defaults to the instance's VRID.
                s.syncid = id.unwrap_or(i.vrid);
                s.role = crate::sync::SyncRole::FollowVrrp(inst);
                Some(s)
            }
        };
        Ok((out, sync))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Parsed, ConfigError> {
        parse(text, Path::new("keepalived.conf"))
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

    const TUTORIAL: &str = r#"! Configuration File for keepalived
global_defs {
   router_id LVS_DEVEL
}

vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 100
    advert_int 1
    authentication {
        auth_type PASS
        auth_pass 1111
    }
    virtual_ipaddress {
        10.0.0.100
    }
}

virtual_server 10.0.0.100 80 {
    delay_loop 6
    lb_algo rr
    lb_kind DR
    persistence_timeout 50
    protocol TCP
    sorry_server 127.0.0.1 80

    real_server 10.0.0.11 80 {
        weight 3
        TCP_CHECK {
            connect_timeout 3
            nb_get_retry 3
            delay_before_retry 3
            connect_port 80
        }
    }
    real_server 10.0.0.12 80 {
        weight 1
        inhibit_on_failure
        HTTP_GET { url { path /health  status_code 200-299 } connect_timeout 3  retry 3  delay_before_retry 3 }
    }
}
"#;

    #[test]
    fn the_sorry_server_is_reached_as_lb_kind_says_unless_told_otherwise() {
        let vs = |extra: &str| {
            format!(
                "virtual_server 192.168.80.10 80 {{\n lb_kind NAT\n sorry_server 192.168.80.20 8080\n {extra}\n \
                 real_server 192.168.80.11 8080 {{\n TCP_CHECK {{ connect_timeout 1 }}\n }}\n}}\n"
            )
        };
        let r = p(&vs("")).unwrap();
        assert_eq!(r.health.services[0].sorry_forward, ForwardMethod::Masq);
        let r = p(&vs("sorry_server_lvs_method DR")).unwrap();
        assert_eq!(r.health.services[0].sorry_forward, ForwardMethod::Route);
    }

    #[test]
    fn the_tutorial_file_loads() {
        let r = p(TUTORIAL).unwrap();
        let svc = &r.table.services()[0];
        assert_eq!(svc.key.vip, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(svc.scheduler, SchedulerKind::Rr);
        assert_eq!(svc.persistence_timeout, Some(50));
        assert_eq!(svc.reals.len(), 2);
        assert_eq!(svc.reals[0].weight, 3);
        let h = &r.health.services[0];
        assert_eq!(h.sorry, Some("127.0.0.1:80".parse().unwrap()));
        assert!(!h.quiescent);
        assert_eq!(h.reals[0].check.kind, CheckKind::Tcp);
        assert_eq!(h.reals[0].check.timing.retry, 3);
        assert_eq!(h.reals[0].check.timing.interval, Duration::from_secs(6));
        assert_eq!(h.reals[0].check.timing.timeout, Duration::from_secs(3));
        assert_eq!(h.reals[0].check.connect_port, Some(80));
        assert_eq!(h.reals[1].quiescent, Some(true));
        match &h.reals[1].check.kind {
            CheckKind::Http(hc) => {
                assert_eq!(hc.path, "/health");
                assert_eq!(hc.status, vec![(200, 299)]);
            }
            other => panic!("{other:?}"),
        }
        let v = &r.vrrp[0];
        assert_eq!((v.name.as_str(), v.interface.as_str()), ("VI_1", "eth0"));
        assert_eq!((v.vrid, v.priority, v.advert_int_cs), (51, 100, 100));
        assert!(v.start_master);
        assert_eq!(v.auth_pass.as_deref(), Some("1111"));
        assert_eq!(v.vips, vec![Ipv4Addr::new(10, 0, 0, 100)]);
        assert!(r.sync.is_none());
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("nb_get_retry is deprecated"))
        );
    }

    /// A tutorial prints its keepalived.conf without the last `}`: keepalived warns and runs
    /// it, and so does uvs, with the same table as the complete file.
    #[test]
    fn a_missing_last_brace_is_a_warning_as_in_keepalived() {
        let cut = TUTORIAL.trim_end().strip_suffix('}').unwrap();
        let r = p(cut).unwrap();
        let whole = p(TUTORIAL).unwrap();
        assert_eq!(r.table, whole.table);
        assert_eq!(r.health, whole.health);
        let last_line = cut.lines().count();
        assert!(
            r.warnings.contains(&format!(
                "keepalived.conf:{last_line}: There are 1 missing '}}'s or extra '{{'s"
            )),
            "{:?}",
            r.warnings
        );
        // Two blocks left open: both end at the end of the file.
        let r = p(
            "virtual_server 10.0.0.100 80 {\n lb_kind DR\n real_server 10.0.0.11 80 {\n weight 2\n",
        )
        .unwrap();
        assert_eq!(r.table.services()[0].reals[0].weight, 2);
        assert!(
            r.warnings
                .iter()
                .any(|w| w.ends_with("There are 2 missing '}'s or extra '{'s"))
        );
        // An extra `}` is still refused with its line.
        refused("global_defs {\n}\n}\n", 3, "unexpected }");
    }

    /// `state SLAVE` (a tutorial's word): keepalived warns and starts the instance as BACKUP.
    #[test]
    fn an_unknown_state_is_backup_with_keepalived_warning() {
        let text = TUTORIAL.replace("state MASTER", "state SLAVE");
        let r = p(&text).unwrap();
        assert!(!r.vrrp[0].start_master);
        assert!(
            r.warnings.contains(
                &"keepalived.conf:7: (VI_1) unknown state 'SLAVE', defaulting to BACKUP"
                    .to_string()
            ),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn nat_is_keepalived_s_default_and_maps_the_real_s_port() {
        let conf = "virtual_server 192.168.80.10 80 {
    lb_algo wrr
    real_server 192.168.80.11 8080 {
        weight 3
        TCP_CHECK {
            connect_timeout 3
        }
    }
    real_server 192.168.80.12 8080 {
        weight 2
        lvs_method DR
    }
}
virtual_server 172.30.0.200 80 {
    lb_kind NAT
    real_server 10.0.0.7 80 {
    }
}
";
        let r = p(conf).unwrap();
        let s = &r.table.services()[0];
        assert_eq!(
            (s.reals[0].forward, s.reals[0].port, s.reals[0].weight),
            (ForwardMethod::Masq, 8080, 3)
        );
        // A real of its own method; DR keeps the service's port.
        assert_eq!(
            (s.reals[1].forward, s.reals[1].port),
            (ForwardMethod::Route, 80)
        );
        let t = &r.table.services()[1].reals[0];
        assert_eq!((t.forward, t.port), (ForwardMethod::Masq, 80));
    }

    #[test]
    fn tun_reals_take_lb_kind_and_the_2x_lvs_method_words() {
        let r = p("virtual_server 203.0.113.2 80 {\n lb_kind TUN\n real_server 10.0.0.2 8080 {\n }\n real_server 10.0.0.6 80 {\n  lvs_method TUN type gue port 6080 csum\n }\n real_server 10.0.0.10 80 {\n  lvs_method TUN type gre csum\n }\n}\n").unwrap();
        let reals = &r.table.services()[0].reals;
        assert_eq!((reals[0].forward, reals[0].port), (ForwardMethod::IPIP, 80));
        assert_eq!(
            reals[1].forward,
            ForwardMethod::Tunnel(Tunnel {
                kind: TunnelKind::Gue,
                port: 6080,
                csum: TunnelCsum::Csum
            })
        );
        assert_eq!(
            reals[2].forward,
            ForwardMethod::Tunnel(Tunnel {
                kind: TunnelKind::Gre,
                port: 0,
                csum: TunnelCsum::Csum
            })
        );
    }

    #[test]
    fn refusals_name_the_line() {
        refused(
            "virtual_server 10.0.0.100 80 {\n lvs_method TUN type gue\n}\n",
            2,
            "You need to supply the 'tun-port' option for the 'gue' tunnel type",
        );
        refused(
            "virtual_server 10.0.0.100 80 {\n lvs_method TUN type vxlan\n}\n",
            2,
            "tunnel type \"vxlan\" is unknown",
        );
        refused(
            "virtual_server 10.0.0.100 80 {\n lb_kind XYZ\n}\n",
            2,
            "is unknown (DR, NAT, TUN or FNAT)",
        );
        refused(
            "virtual_server 10.0.0.100 80 {\n lb_kind DR\n lb_algo fastest\n}\n",
            3,
            "Scheduler not found",
        );
        refused("virtual_server fwmark 1 {\n}\n", 1, "not supported");
        refused(
            "virtual_server 10.0.0.100 80 {\n lb_kind DR\n real_server 10.0.0.11 80 {\n weight 70000\n }\n}\n",
            4,
            "out of range",
        );
        refused(
            "virtual_server 10.0.0.100 80 {\n lb_kind DR\n real_server 10.0.0.11 80 {\n HTTP_GET {\n url {\n regex (unclosed\n }\n }\n }\n}\n",
            6,
            "regex",
        );
    }

    #[test]
    fn unknown_keywords_warn_with_the_line_and_misc_defaults() {
        let r = p("virtual_server 10.0.0.100 80 {\n lb_kind DR\n frobnicate 3\n real_server 10.0.0.11 80 {\n MISC_CHECK {\n misc_path \"/bin/check 10.0.0.11\"\n misc_dynamic\n }\n }\n}\nbogus_top x\n").unwrap();
        assert!(
            r.warnings
                .iter()
                .any(|w| w.starts_with("keepalived.conf:3: unknown keyword \"frobnicate\"")),
            "{:?}",
            r.warnings
        );
        assert!(
            r.warnings
                .iter()
                .any(|w| w.starts_with("keepalived.conf:11:"))
        );
        let c = &r.health.services[0].reals[0].check;
        assert_eq!(
            c.kind,
            CheckKind::Misc {
                command: "/bin/check 10.0.0.11".into(),
                dynamic: true
            }
        );
        assert_eq!(c.timing.retry, 0);
        assert_eq!(c.timing.interval, Duration::from_secs(60));
        assert_eq!(c.timing.timeout, Duration::from_secs(60));
    }

    #[test]
    fn includes_are_followed() {
        let dir = std::env::temp_dir().join(format!("uvs-ka-inc-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(
            dir.join("conf.d/web.conf"),
            "virtual_server 10.0.0.100 80 {\n lb_kind DR\n real_server 10.0.0.11 80 {\n }\n}\n",
        )
        .unwrap();
        let main = dir.join("keepalived.conf");
        std::fs::write(&main, "# main\ninclude conf.d/*.conf\n").unwrap();
        let (t, _) = load(&main).unwrap();
        assert_eq!(t.services().len(), 1);
        std::fs::write(
            dir.join("conf.d/web.conf"),
            "virtual_server 10.0.0.100 80 {\n lb_kind XYZ\n}\n",
        )
        .unwrap();
        match load(&main) {
            Err(ConfigError::At { path, line, .. }) => {
                assert!(path.ends_with("conf.d/web.conf"));
                assert_eq!(line, 2);
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn vrrp_instances_and_lvs_sync_daemon() {
        use crate::sync::SyncRole;
        use crate::vrrp::Version;
        let r = p(r#"global_defs {
   router_id LVS_DEVEL
   notification_email {
     root@localhost
   }
   vrrp_version 3
   lvs_sync_daemon eth1 VI_1 id 7
   vrrp_garp_master_repeat 3
   vrrp_garp_master_delay 0
}
vrrp_instance VI_1 {
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority 120
    advert_int 0.1
    nopreempt
    virtual_ipaddress {
        10.0.0.100/24 dev eth0 label eth0:1
        10.0.0.101
    }
    unicast_src_ip 10.0.0.2
    unicast_peer {
        10.0.0.3
    }
    track_interface {
        eth1
    }
    notify_master "/usr/local/bin/notify.sh master VI_1"
    notify_backup /bin/true backup
    notify_fault "/bin/fault"
}
vrrp_instance VI_2 {
    interface eth0
    virtual_router_id 52
    version 2
    preempt_delay 30
    authentication {
        auth_type PASS
        auth_pass secretpassword
    }
    virtual_ipaddress {
        10.0.0.102
    }
    track_script {
        chk_nginx
    }
}
"#)
        .unwrap();
        let a = &r.vrrp[0];
        assert_eq!(a.version, Version::V3, "vrrp_version from global_defs");
        assert_eq!((a.vrid, a.priority, a.advert_int_cs), (51, 120, 10));
        assert!(!a.start_master && !a.preempt);
        assert_eq!(
            a.vips,
            vec![Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 101)]
        );
        assert_eq!(a.unicast_peers, vec![Ipv4Addr::new(10, 0, 0, 3)]);
        assert_eq!(a.source, Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(a.track_interfaces, vec!["eth1".to_string()]);
        assert_eq!(
            a.notify_master.as_deref(),
            Some("/usr/local/bin/notify.sh master VI_1")
        );
        assert_eq!(a.notify_backup.as_deref(), Some("/bin/true backup"));
        assert_eq!(a.notify_fault.as_deref(), Some("/bin/fault"));
        let b = &r.vrrp[1];
        assert_eq!(b.version, Version::V2, "per-instance version wins");
        assert_eq!(
            (b.priority, b.advert_int_cs, b.preempt_delay_secs),
            (100, 100, 30)
        );
        assert_eq!(b.auth_pass.as_deref(), Some("secretpassword"));
        let s = r.sync.as_ref().unwrap();
        assert_eq!((s.interface.as_str(), s.syncid), ("eth1", 7));
        assert_eq!(s.role, SyncRole::FollowVrrp("VI_1".into()));
        assert_eq!((r.garp_repeat, r.garp_delay_secs), (Some(3), Some(0)));
        assert!(
            r.warnings
                .iter()
                .any(|w| w.starts_with("keepalived.conf:45: track_script")),
            "{:?}",
            r.warnings
        );
        // The syncid defaults to the instance's VRID (keepalived).
        let r = p("global_defs {\n lvs_sync_daemon eth0 VI_9\n}\nvrrp_instance VI_9 {\n interface eth0\n virtual_router_id 9\n virtual_ipaddress {\n 10.0.0.100\n }\n}\n").unwrap();
        assert_eq!(r.sync.unwrap().syncid, 9);
    }

    #[test]
    fn vrrp_refusals_and_keepalived_leniency() {
        let inst = |body: &str| {
            format!(
                "vrrp_instance VI_1 {{\n interface eth0\n virtual_router_id 51\n virtual_ipaddress {{\n 10.0.0.100\n }}\n{body}\n}}\n"
            )
        };
        refused(&inst(" advert_int 0.5"), 1, "whole seconds");
        refused(&inst(" virtual_router_id 256"), 7, "1..=255");
        refused(&inst(" priority 0"), 7, "1..=255");
        refused(
            &inst(" authentication {\n auth_type AH\n auth_pass x\n }"),
            8,
            "only PASS",
        );
        refused(
            "vrrp_instance VI_1 {\n virtual_router_id 1\n virtual_ipaddress {\n 10.0.0.1\n }\n}\n",
            1,
            "interface is missing",
        );
        refused(
            "vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 1\n}\n",
            1,
            "virtual_ipaddress is empty",
        );
        refused(
            &format!(
                "global_defs {{\n lvs_sync_daemon eth0 VI_X\n}}\n{}",
                inst("")
            ),
            2,
            "no vrrp_instance named",
        );
        refused(
            &format!("{}{}", inst(""), inst("").replace("VI_1", "VI_2")),
            9,
            "already used",
        );
        refused(&inst(" virtual_ipaddress {\n fe80::1\n }"), 8, "IPv6");
        // keepalived clears these with a warning; so does uvs.
        let r = p(&inst(" state MASTER\n nopreempt\n version 3\n authentication {\n auth_type PASS\n auth_pass 1\n }")).unwrap();
        assert!(r.vrrp[0].preempt && r.vrrp[0].auth_pass.is_none());
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("nopreempt will not work"))
        );
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("not supported with VRRPv3"))
        );
    }

    /// configs/keepalived/keepalived-fullnat.conf, the DPVS-style file of the FullNAT lab.
    #[test]
    fn the_fullnat_example_loads_into_the_lab_s_table() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("configs/keepalived/keepalived-fullnat.conf");
        let r = load_all(&path).unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let vip = Ipv4Addr::new(192, 168, 70, 100);
        let mut want = ServiceTable::new();
        let key = ServiceKey::addr(Protocol::Tcp, vip, 80);
        let mut spec = ServiceSpec::new(key, SchedulerKind::Rr);
        spec.proxy_protocol = ProxyVersion::V2;
        want.add_service(spec).unwrap();
        for last in [11, 12] {
            let mut real = RealSpec::route(Ipv4Addr::new(10, 10, 0, last), 8080);
            real.forward = ForwardMethod::FullNat;
            real.weight = 100;
            want.add_real(&key, real).unwrap();
        }
        for last in [200, 201] {
            let la = LocalAddr {
                addr: Ipv4Addr::new(192, 168, 70, last),
                interface: Some("eth0".into()),
            };
            want.add_local_addr(&key, la).unwrap();
        }
        assert_eq!(r.table, want);
        let h = &r.health.services[0];
        assert_eq!(h.reals[0].quiescent, Some(true), "inhibit_on_failure");
        assert_eq!(h.sorry_forward, ForwardMethod::FullNat);
        assert_eq!(h.reals[0].check.kind, CheckKind::Tcp);
        assert_eq!(h.reals[0].check.connect_port, Some(8080));
        assert_eq!(r.vrrp[0].vips, vec![vip]);
    }

    /// DPVS's keepalived syntax as its users write it: one-line groups, Alibaba's groups
    /// without interfaces, ranges, a group used before it is defined and by two services,
    /// FNAT per real, and the sorry server reached as lb_kind says.
    #[test]
    fn dpvs_keepalived_dialect() {
        let r = p("virtual_server 10.0.0.100 80 {
    lb_kind FNAT
    laddr_group_name laddr_g1
    syn_proxy
    proxy_protocol V1
    sorry_server 10.0.0.50 8080
    real_server 10.1.0.11 8080 {
    }
}
virtual_server 10.0.0.100 53 {
    protocol UDP
    laddr_group_name laddr_g2
    proxy_protocol v2
    real_server 10.1.0.11 53 {
        lvs_method FNAT
    }
    real_server 10.1.0.12 53 {
    }
}
virtual_server 10.0.0.100 443 {
    lb_kind DR
    laddr_group_name laddr_g1
    proxy_protocol disable
    sorry_server_lvs_method FNAT
    sorry_server 10.0.0.50 8443
    real_server 10.0.0.11 443 {
    }
}
local_address_group laddr_g1 { 192.168.100.200 dpdk0  192.168.100.201 dpdk0 }
local_address_group laddr_g2 {
    192.168.100.202
    192.168.100.210-212 dpdk1
}
")
        .unwrap();
        let svcs = r.table.services();
        let la = |last, ifname: Option<&str>| LocalAddr {
            addr: Ipv4Addr::new(192, 168, 100, last),
            interface: ifname.map(str::to_string),
        };
        assert_eq!(svcs[0].proxy_protocol, ProxyVersion::V1);
        assert_eq!(
            svcs[0].local_addrs,
            vec![la(200, Some("dpdk0")), la(201, Some("dpdk0"))]
        );
        assert_eq!(
            (svcs[0].reals[0].forward, svcs[0].reals[0].port),
            (ForwardMethod::FullNat, 8080)
        );
        assert_eq!(r.health.services[0].sorry_forward, ForwardMethod::FullNat);
        assert_eq!(svcs[1].proxy_protocol, ProxyVersion::V2);
        assert_eq!(
            svcs[1].local_addrs,
            vec![
                la(202, None),
                la(210, Some("dpdk1")),
                la(211, Some("dpdk1")),
                la(212, Some("dpdk1"))
            ]
        );
        // keepalived's default method is NAT; a real's own lvs_method FNAT.
        let methods: Vec<_> = svcs[1].reals.iter().map(|r| r.forward).collect();
        assert_eq!(methods, vec![ForwardMethod::FullNat, ForwardMethod::Masq]);
        assert_eq!(svcs[2].proxy_protocol, ProxyVersion::Off);
        assert_eq!(svcs[2].local_addrs, svcs[0].local_addrs, "a shared group");
        assert_eq!(r.health.services[2].sorry_forward, ForwardMethod::FullNat);
        assert!(
            r.warnings
                .iter()
                .any(|w| w.starts_with("keepalived.conf:4: syn_proxy: uvs has no SYN proxy")),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn dpvs_dialect_refusals_name_the_line() {
        let vs = |body: &str| {
            format!(
                "virtual_server 10.0.0.100 80 {{\n lb_kind FNAT\n{body}\n real_server 10.1.0.11 8080 {{\n }}\n}}\n"
            )
        };
        refused(
            &vs(" laddr_group_name laddr_g9"),
            3,
            "laddr_group_name laddr_g9: no local_address_group named \"laddr_g9\"",
        );
        refused(
            &vs(" proxy_protocol v2-insecure"),
            3,
            "insecure modes (passing on a PROXY header the client sent) are not supported",
        );
        refused(
            &vs(" proxy_protocol v3"),
            3,
            "proxy_protocol \"v3\": expected disable, v1 or v2",
        );
        refused(
            &vs(" protocol UDP\n proxy_protocol v1"),
            4,
            "virtual_server 10.0.0.100 80: the PROXY protocol v1 has no UDP",
        );
        refused(
            &vs(" lvs_method SNAT"),
            3,
            "SNAT (DPVS's source NAT of outgoing traffic) is not supported",
        );
        let group = |entries: &str| {
            format!(
                "{}local_address_group g {{\n{entries}\n}}\n",
                vs(" laddr_group_name g")
            )
        };
        refused(
            &group(" dpdk0 192.168.100.200"),
            8,
            "local_address_group g: \"dpdk0\" is not an IPv4 address (expected LIP [IFNAME]",
        );
        refused(
            &group(" 192.168.100.200\n dpdk0"),
            9,
            "\"dpdk0\" is not an IPv4 address",
        );
        refused(
            &group(" 192.168.100.200-100"),
            8,
            "range \"192.168.100.200-100\": the end is a last byte 200..=255",
        );
        refused(
            &group(" 192.168.100.200 an-interface-name-too-long"),
            8,
            "illegal interface name \"an-interface-name-too-long\"",
        );
        refused(&group(" 0.0.0.0"), 8, "illegal local address 0.0.0.0");
        refused(
            &group(" 192.168.100.200\n 192.168.100.200"),
            9,
            "local_address_group g (laddr_group_name of virtual_server 10.0.0.100 80 at line 3): local address 192.168.100.200: Local address already exists",
        );
        refused(
            &group(" 10.0.0.100"),
            8,
            "local address 10.0.0.100 is a VIP",
        );
        refused(
            &format!(
                "{}local_address_group g {{\n}}\n",
                group(" 192.168.100.200")
            ),
            10,
            "local_address_group g is already defined at line 7",
        );
    }

    #[test]
    fn the_ha_configs_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/ha");
        for (f, master, prio) in [
            ("keepalived-master.conf", true, 150),
            ("keepalived-backup.conf", false, 100),
        ] {
            let r = load_all(&root.join(f)).unwrap();
            let v = &r.vrrp[0];
            assert_eq!(
                (v.start_master, v.priority, v.vrid),
                (master, prio, 51),
                "{f}"
            );
            assert_eq!(v.vips, vec![Ipv4Addr::new(10, 0, 0, 100)]);
            let s = r.sync.unwrap();
            assert_eq!(s.syncid, 51);
            assert_eq!(s.role, crate::sync::SyncRole::FollowVrrp("VI_1".into()));
            assert_eq!(r.table.services().len(), 1);
            assert!(r.warnings.is_empty(), "{f}: {:?}", r.warnings);
        }
    }
}
