//! Lab files: a namespace topology in a small TOML file (see docs/testing-with-labs.md for the
//! format, configs/labs/ for examples).
//!
//! ```toml
//! name = "dr-router"
//! prefix = "uvl-drr-"                  # namespace prefix: <prefix><host>
//!
//! [[bridge]]                           # a switch; all bridges live in namespace <prefix>sw
//! name = "br0"
//!
//! [[host]]
//! name = "client"
//! gateway = "172.30.0.1"
//! interfaces = [{ name = "eth0", peer = "router:eth0", addr = "172.30.0.10/24" }]
//!
//! [[host]]
//! name = "rs1"
//! vips = ["10.0.0.100"]                # a DR real server: arp_ignore/announce, VIP on lo
//! http = "nginx"                       # or "builtin"; answers "<host>\n"
//! # tunnel = true                      # an LVS-TUN real: tunl0 (or its stand-in), rp_filter 0
//! # tunnel_gue_port = 6080             # GUE too (ip fou add port 6080 gue)
//! gateway = "10.0.0.1"
//! interfaces = [{ name = "eth0", bridge = "br0", addr = "10.0.0.11/24" }]
//!
//! [director]                           # or [[director]] tables, one per director
//! host = "dir"
//! args = ["--interface", "eth0", "--metrics", "off"]
//! rules = """
//! -A -t 10.0.0.100:80 -s rr
//! -a -t 10.0.0.100:80 -r 10.0.0.11:80 -g -w 1
//! """
//! # config = "..."  (uvs TOML, --config)   ldirectord = "..." / keepalived = "..." (inline files)
//!
//! [smoke]
//! from = "client"
//! url = "http://10.0.0.100/"
//! expect = ["rs1", "rs2"]
//! ```

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabSpec {
    pub name: String,
    /// Namespace prefix; every namespace is `<prefix><host>`, the switch `<prefix>sw`.
    pub prefix: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, rename = "bridge")]
    pub bridges: Vec<BridgeSpec>,
    #[serde(rename = "host")]
    pub hosts: Vec<HostSpec>,
    /// `[director]` (one) or `[[director]]` (several, e.g. a VRRP pair), started in order.
    #[serde(default, rename = "director", deserialize_with = "one_or_many")]
    pub directors: Vec<DirectorSpec>,
    pub smoke: Option<SmokeSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSpec {
    /// Device name of the bridge in the switch namespace.
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpKind {
    /// nginx if installed, else the built-in responder.
    Nginx,
    /// `uvs lab-http`.
    Builtin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub name: String,
    /// Host number used in MACs `02:00:00:00:<id>:<ifno>` (default: the DR lab's numbers for
    /// its host names, else 0x20 + position).
    pub id: Option<u8>,
    pub gateway: Option<Ipv4Addr>,
    /// `ip_forward=1` (a router).
    #[serde(default)]
    pub forward: bool,
    /// VIPs this host serves as a DR real server: arp_ignore=1, arp_announce=2 (before any
    /// address exists), then each VIP/32 on lo.
    #[serde(default)]
    pub vips: Vec<Ipv4Addr>,
    /// Start an HTTP server on port `http_port` (80) answering the body `http_body` (default:
    /// host name).
    pub http: Option<HttpKind>,
    pub http_body: Option<String>,
    pub http_port: Option<u16>,
    /// The HTTP server reads the PROXY protocol header a FullNAT director sends (nginx:
    /// `listen … proxy_protocol`, which then requires it; see `Lab::start_http_proxied`).
    #[serde(default)]
    pub http_proxy_protocol: bool,
    /// An LVS-TUN real server: decapsulates IPIP and GRE (and GUE on `tunnel_gue_port`) into
    /// `tunl0`, `rp_filter` 0. The kernel's `tunl0` where it has `ipip`, else
    /// `uvs tun-endpoint` on the host's first interface (see `lab::tunl0`).
    #[serde(default)]
    pub tunnel: bool,
    pub tunnel_gue_port: Option<u16>,
    #[serde(default)]
    pub interfaces: Vec<IfaceSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IfaceSpec {
    pub name: String,
    /// `a.b.c.d/len`.
    pub addr: Option<String>,
    /// Port of this bridge (a veth whose other end, named after the host, is in the switch).
    pub bridge: Option<String>,
    /// Other end of a veth pair, `host:ifname` (declare it on either side, or both).
    pub peer: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorSpec {
    pub host: String,
    /// Arguments after `uvs run` (the lab adds `--ready-file`, and the options of the inline
    /// files below).
    #[serde(default)]
    pub args: Vec<String>,
    /// ipvsadm-save rules, written to the lab directory and passed as `--rules`.
    pub rules: Option<String>,
    /// A uvs TOML configuration (health checks, `[[vrrp]]`, `[sync]`, ...), written to the
    /// lab directory and passed as `--config`.
    pub config: Option<String>,
    /// An ldirectord.cf, written to the lab directory and passed as `--ldirectord`.
    pub ldirectord: Option<String>,
    /// A keepalived.conf, written to the lab directory and passed as `--keepalived`.
    pub keepalived: Option<String>,
}

impl DirectorSpec {
    /// The inline files: (option, file name, contents).
    pub fn files(&self) -> Vec<(&'static str, &'static str, &str)> {
        [
            ("--config", "uvs.toml", &self.config),
            ("--ldirectord", "ldirectord.cf", &self.ldirectord),
            ("--keepalived", "keepalived.conf", &self.keepalived),
            ("--rules", "rules", &self.rules),
        ]
        .into_iter()
        .filter_map(|(o, f, t)| t.as_deref().map(|t| (o, f, t)))
        .collect()
    }
}

/// `[director]` or `[[director]]` (through `toml::Value`, so a typo in either form is
/// reported with its field name rather than as "no variant matched").
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<DirectorSpec>, D::Error> {
    use serde::de::Error;
    let v = toml::Value::deserialize(d)?;
    match v {
        toml::Value::Array(_) => v.try_into().map_err(D::Error::custom),
        _ => v.try_into().map(|x| vec![x]).map_err(D::Error::custom),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeSpec {
    /// Host the requests are sent from.
    pub from: String,
    pub url: String,
    /// Every body that must be seen (trimmed), and the only ones accepted.
    pub expect: Vec<String>,
    #[serde(default = "default_requests")]
    pub requests: usize,
}

fn default_requests() -> usize {
    6
}

/// Private (RFC 1918), benchmarking (RFC 2544: 198.18/15) or documentation (RFC 5737:
/// 198.51.100/24, 203.0.113/24) ranges only: labs must never use addresses that could be
/// someone's. The tutorials' "internet" addresses become documentation ones.
pub fn is_private(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_private()
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        || (o[0], o[1], o[2]) == (198, 51, 100)
        || (o[0], o[1], o[2]) == (203, 0, 113)
}

pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (a, l) = s
        .split_once('/')
        .with_context(|| format!("address {s:?} must be a.b.c.d/len"))?;
    let a: Ipv4Addr = a.parse().with_context(|| format!("address {s:?}"))?;
    let l: u8 = l
        .parse()
        .with_context(|| format!("prefix length in {s:?}"))?;
    if l > 32 {
        bail!("prefix length in {s:?} exceeds 32");
    }
    Ok((a, l))
}

impl LabSpec {
    pub fn parse(text: &str) -> Result<LabSpec> {
        let spec: LabSpec = toml::from_str(text).context("lab file")?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn load(path: &Path) -> Result<LabSpec> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        LabSpec::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn host(&self, name: &str) -> Option<&HostSpec> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Host number for MACs.
    pub fn host_id(&self, name: &str) -> u8 {
        let (i, h) = self
            .hosts
            .iter()
            .enumerate()
            .find(|(_, h)| h.name == name)
            .expect("validated host");
        h.id.or_else(|| super::addr::host_no(name))
            .unwrap_or(0x20 + i as u8)
    }

    fn validate(&self) -> Result<()> {
        super::validate_prefix(&self.prefix)?;
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("lab name {:?} must be [A-Za-z0-9_-]+", self.name);
        }
        let mut names = HashSet::new();
        for h in &self.hosts {
            if h.name == "sw" && !self.bridges.is_empty() {
                bail!("host name \"sw\" is taken by the switch namespace");
            }
            if h.name.is_empty()
                || h.name.len() > 15
                || !h.name.chars().all(|c| c.is_ascii_alphanumeric())
            {
                bail!("host name {:?} must be 1-15 chars of [A-Za-z0-9]", h.name);
            }
            if !names.insert(h.name.as_str()) {
                bail!("host {} declared twice", h.name);
            }
        }
        let bridges: HashSet<&str> = self.bridges.iter().map(|b| b.name.as_str()).collect();
        let mut ifaces: HashMap<(String, String), Option<String>> = HashMap::new();
        for h in &self.hosts {
            for i in &h.interfaces {
                if i.name.is_empty() || i.name.len() > 15 || i.name == "lo" {
                    bail!("{}: bad interface name {:?}", h.name, i.name);
                }
                if ifaces
                    .insert((h.name.clone(), i.name.clone()), i.peer.clone())
                    .is_some()
                {
                    bail!("{}: interface {} declared twice", h.name, i.name);
                }
                if let Some(a) = &i.addr {
                    let (ip, _) =
                        parse_cidr(a).with_context(|| format!("{}:{}", h.name, i.name))?;
                    if !is_private(ip) {
                        bail!(
                            "{}:{}: {ip} is not a private address (labs use 10/8, 172.16/12, 192.168/16, 198.18/15, 198.51.100/24 and 203.0.113/24 only)",
                            h.name,
                            i.name
                        );
                    }
                }
                match (&i.bridge, &i.peer) {
                    (Some(_), Some(_)) => {
                        bail!("{}:{}: both bridge and peer", h.name, i.name)
                    }
                    (Some(b), None) if !bridges.contains(b.as_str()) => {
                        bail!("{}:{}: no bridge {b}", h.name, i.name)
                    }
                    _ => {}
                }
            }
            for v in h.vips.iter().chain(h.gateway.iter()) {
                if !is_private(*v) {
                    bail!("{}: {v} is not a private address", h.name);
                }
            }
        }
        // Every interface is linked exactly once: a bridge port, or one end of a pair.
        for h in &self.hosts {
            for i in &h.interfaces {
                if i.bridge.is_some() {
                    continue;
                }
                let back = self.hosts.iter().flat_map(|o| {
                    o.interfaces
                        .iter()
                        .filter(|oi| oi.peer.as_deref() == Some(&format!("{}:{}", h.name, i.name)))
                        .map(move |oi| (o.name.clone(), oi.name.clone()))
                });
                let back: Vec<(String, String)> = back.collect();
                match &i.peer {
                    Some(p) => {
                        let (ph, pi) = p.split_once(':').with_context(|| {
                            format!("{}:{}: peer must be host:if", h.name, i.name)
                        })?;
                        match ifaces.get(&(ph.to_string(), pi.to_string())) {
                            None => bail!("{}:{}: peer {p} is not declared", h.name, i.name),
                            Some(Some(pp)) if *pp != format!("{}:{}", h.name, i.name) => {
                                bail!("{}:{}: peer {p} points elsewhere ({pp})", h.name, i.name)
                            }
                            _ => {}
                        }
                    }
                    None if back.len() == 1 => {}
                    None => bail!(
                        "{}:{}: not linked (give it a bridge or a peer)",
                        h.name,
                        i.name
                    ),
                }
            }
            if h.http.is_none() && (h.http_body.is_some() || h.http_port.is_some()) {
                bail!("{}: http_body or http_port without http", h.name);
            }
            if h.tunnel_gue_port.is_some() && !h.tunnel {
                bail!("{}: tunnel_gue_port without tunnel = true", h.name);
            }
            if h.tunnel && h.interfaces.is_empty() {
                bail!("{}: a tunnel end needs an interface", h.name);
            }
        }
        let mut dir_hosts = HashSet::new();
        for d in &self.directors {
            if self.host(&d.host).is_none() {
                bail!("director host {} is not declared", d.host);
            }
            if !dir_hosts.insert(d.host.as_str()) {
                bail!("two directors on host {} (one uvs per namespace)", d.host);
            }
            if d.ldirectord.is_some() && d.keepalived.is_some() {
                bail!(
                    "director {}: ldirectord and keepalived are exclusive",
                    d.host
                );
            }
            let added: Vec<&str> = d.files().iter().map(|f| f.0).collect();
            if let Some(a) = d
                .args
                .iter()
                .find(|a| *a == "--ready-file" || added.contains(&a.as_str()))
            {
                bail!("director {} args: {a} is added by the lab", d.host);
            }
        }
        if let Some(s) = &self.smoke {
            if self.host(&s.from).is_none() {
                bail!("smoke.from host {} is not declared", s.from);
            }
            if s.expect.is_empty() || s.requests == 0 {
                bail!("smoke needs expect bodies and requests > 0");
            }
        }
        Ok(())
    }
}

/// The DR lab (client → router → bridge with director, rs1, rs2), which `uvs demo` and the
/// tests build: configs/labs/dr-router.toml, compiled in.
pub const DR_ROUTER: &str = include_str!("../../configs/labs/dr-router.toml");

/// The seeds' LVS-TUN lab (configs/labs/tun.toml), compiled in for the tests.
pub const TUN: &str = include_str!("../../configs/labs/tun.toml");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::addr;

    #[test]
    fn every_shipped_lab_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/labs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let s = LabSpec::load(&p).unwrap_or_else(|e| panic!("{e:#}"));
                assert!(s.smoke.is_some(), "{} has no smoke check", p.display());
                n += 1;
            }
        }
        assert!(n >= 4);
    }

    #[test]
    fn one_director_or_a_list() {
        let base = "name='x'\nprefix='x-'\n[[host]]\nname='a'\n[[host]]\nname='b'\n";
        let one = LabSpec::parse(&format!("{base}[director]\nhost='a'\nrules='-C'\n")).unwrap();
        assert_eq!(one.directors.len(), 1);
        assert_eq!(one.directors[0].files()[0].0, "--rules");
        let two = LabSpec::parse(&format!(
            "{base}[[director]]\nhost='a'\nconfig='x=1'\n[[director]]\nhost='b'\n"
        ))
        .unwrap();
        assert_eq!(two.directors.len(), 2);
        assert_eq!(two.directors[0].files()[0].1, "uvs.toml");
        let e = LabSpec::parse(&format!(
            "{base}[[director]]\nhost='a'\n[[director]]\nhost='a'\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("two directors"), "{e:#}");
        let e = LabSpec::parse(&format!(
            "{base}[director]\nhost='a'\nconfig='x=1'\nargs=['--config','f']\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("added by the lab"), "{e:#}");
    }

    #[test]
    fn embedded_dr_lab_matches_the_addr_constants() {
        let s = LabSpec::parse(DR_ROUTER).unwrap();
        let a = |h: &str| {
            s.host(h).unwrap().interfaces[0]
                .addr
                .as_deref()
                .map(|x| parse_cidr(x).unwrap().0)
                .unwrap()
        };
        assert_eq!(a("client"), addr::CLIENT);
        assert_eq!(a("router"), addr::ROUTER_CLIENT);
        assert_eq!(a("dir"), addr::DIRECTOR);
        assert_eq!(a("rs1"), addr::RS1);
        assert_eq!(a("rs2"), addr::RS2);
        assert_eq!(s.host("rs1").unwrap().vips, [addr::VIP]);
        assert_eq!(s.host_id("rs2"), addr::HOST_RS2);
    }

    #[test]
    fn refuses_public_addresses_and_dangling_links() {
        let base = "name='x'\nprefix='x-'\n";
        let e = LabSpec::parse(&format!(
            "{base}[[host]]\nname='a'\ninterfaces=[{{name='eth0',peer='b:eth0',addr='8.8.8.8/24'}}]\n\
             [[host]]\nname='b'\ninterfaces=[{{name='eth0'}}]\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("not a private address"), "{e:#}");
        let e = LabSpec::parse(&format!(
            "{base}[[host]]\nname='a'\ninterfaces=[{{name='eth0'}}]\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("not linked"), "{e:#}");
    }
}
