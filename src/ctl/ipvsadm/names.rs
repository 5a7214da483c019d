//! Name lookups: port names from `/etc/services` (ipvsadm's `getservbyname`/`getservbyport`)
//! and host names from `/etc/hosts`.
//!
//! - Output: ipvsadm's `gethostbyaddr` may also ask DNS; uvsadm never does, so without `-n` an
//!   address that is not in `/etc/hosts` prints numerically, which is also what ipvsadm prints
//!   when DNS has no name.
//! - Input: a host name where an address is expected is looked up in `/etc/hosts` first and
//!   then, for the system tables only, with the system resolver (`getaddrinfo`, which follows
//!   nsswitch.conf as ipvsadm's `gethostbyname` does), so `ipvsadm -S` output without `-n`
//!   restores with `-R`.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};

use crate::model::Protocol;

#[derive(Clone, Debug, Default)]
pub struct Names {
    /// (port, protocol, official name, aliases), in file order.
    services: Vec<(u16, Protocol, String, Vec<String>)>,
    /// (address, its names: the official one first, then the aliases), in file order.
    hosts: Vec<(Ipv4Addr, Vec<String>)>,
    /// Ask the system resolver for host names `/etc/hosts` does not have.
    system_resolver: bool,
}

impl Names {
    /// No names at all: everything prints numerically and only numeric ports parse.
    pub fn none() -> Names {
        Names::default()
    }

    /// `/etc/services` and `/etc/hosts` without the system resolver: never waits on DNS.
    pub fn files() -> Names {
        let services = std::fs::read_to_string("/etc/services").unwrap_or_default();
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        Names::from_text(&services, &hosts)
    }

    /// The system's `/etc/services` and `/etc/hosts` (missing files mean no names).
    pub fn system() -> Names {
        let services = std::fs::read_to_string("/etc/services").unwrap_or_default();
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        Names {
            system_resolver: true,
            ..Names::from_text(&services, &hosts)
        }
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
            let Some(addr) = it.next() else {
                continue;
            };
            let names: Vec<String> = it.map(str::to_string).collect();
            if let (Ok(addr), false) = (addr.parse::<Ipv4Addr>(), names.is_empty()) {
                out.hosts.push((addr, names));
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
            .and_then(|h| h.1.first())
            .map(String::as_str)
    }

    /// ipvsadm's `host_to_addr`: the IPv4 address of a host name (`/etc/hosts` names and
    /// aliases, then the system resolver when these are the system tables).
    pub fn host_addr(&self, name: &str) -> Option<Ipv4Addr> {
        if name.is_empty() {
            return None;
        }
        let listed = self
            .hosts
            .iter()
            .find(|(_, names)| names.iter().any(|n| n == name))
            .map(|h| h.0);
        if listed.is_some() || !self.system_resolver {
            return listed;
        }
        (name, 0).to_socket_addrs().ok()?.find_map(|a| match a {
            SocketAddr::V4(v4) => Some(*v4.ip()),
            SocketAddr::V6(_) => None,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_names_both_ways() {
        let n = Names::from_text(
            "",
            "127.0.0.1 localhost\n10.0.0.11 web1 web1.example.org\n# 10.0.0.12 gone\n10.0.0.13\n",
        );
        let web1 = Ipv4Addr::new(10, 0, 0, 11);
        // Output takes the official name; input accepts it and every alias.
        assert_eq!(n.host_name(web1), Some("web1"));
        assert_eq!(n.host_addr("web1"), Some(web1));
        assert_eq!(n.host_addr("web1.example.org"), Some(web1));
        assert_eq!(n.host_addr("gone"), None);
        assert_eq!(n.host_name(Ipv4Addr::new(10, 0, 0, 13)), None);
        assert_eq!(Names::none().host_addr("localhost"), None);
    }
}
