//! Name lookups without the network: port names from `/etc/services` (ipvsadm's
//! `getservbyname`/`getservbyport`) and host names from `/etc/hosts` only (ipvsadm's
//! `gethostbyaddr` may also ask DNS; uvsadm never does, so without `-n` an address that is not
//! in `/etc/hosts` prints numerically, which is also what ipvsadm prints when DNS has no name).

use std::net::Ipv4Addr;

use crate::model::Protocol;

#[derive(Clone, Debug, Default)]
pub struct Names {
    /// (port, protocol, official name, aliases), in file order.
    services: Vec<(u16, Protocol, String, Vec<String>)>,
    /// (address, first host name), in file order.
    hosts: Vec<(Ipv4Addr, String)>,
}

impl Names {
    /// No names at all: everything prints numerically and only numeric ports parse.
    pub fn none() -> Names {
        Names::default()
    }

    /// The system's `/etc/services` and `/etc/hosts` (missing files mean no names).
    pub fn system() -> Names {
        let services = std::fs::read_to_string("/etc/services").unwrap_or_default();
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        Names::from_text(&services, &hosts)
    }

    /// Parses `services(5)` and `hosts(5)` text.
    pub fn from_text(services: &str, hosts: &str) -> Names {
        let strip = |l: &str| l.split('#').next().unwrap_or("").to_string();
        let mut out = Names::default();
        for line in services.lines().map(strip) {
            let mut it = line.split_whitespace();
            let (Some(name), Some(pp)) = (it.next(), it.next()) else {
                continue;
            };
            let Some((port, proto)) = pp.split_once('/') else {
                continue;
            };
            let proto = match proto {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => continue,
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            out.services.push((
                port,
                proto,
                name.to_string(),
                it.map(str::to_string).collect(),
            ));
        }
        for line in hosts.lines().map(strip) {
            let mut it = line.split_whitespace();
            let (Some(addr), Some(name)) = (it.next(), it.next()) else {
                continue;
            };
            if let Ok(addr) = addr.parse::<Ipv4Addr>() {
                out.hosts.push((addr, name.to_string()));
            }
        }
        out
    }

    pub fn port_by_name(&self, name: &str, proto: Protocol) -> Option<u16> {
        self.services
            .iter()
            .find(|(_, p, n, aliases)| {
                *p == proto && (n == name || aliases.iter().any(|a| a == name))
            })
            .map(|s| s.0)
    }

    pub fn port_name(&self, port: u16, proto: Protocol) -> Option<&str> {
        self.services
            .iter()
            .find(|(p, pr, _, _)| *p == port && *pr == proto)
            .map(|s| s.2.as_str())
    }

    pub fn host_name(&self, addr: Ipv4Addr) -> Option<&str> {
        self.hosts
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|h| h.1.as_str())
    }

    /// ipvsadm's `addrport_to_anyname`.
    pub fn addrport(&self, addr: Ipv4Addr, port: u16, proto: Protocol, numeric: bool) -> String {
        if numeric {
            return format!("{addr}:{port}");
        }
        let host = self
            .host_name(addr)
            .map_or_else(|| addr.to_string(), str::to_string);
        let port = self
            .port_name(port, proto)
            .map_or_else(|| port.to_string(), str::to_string);
        format!("{host}:{port}")
    }
}
