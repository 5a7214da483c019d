//! The interfaces uvs serves: name, index, MAC and IPv4 networks, read once at start
//! (pnet_datalink's getifaddrs wrapper; its packet channel is never used).

use std::net::Ipv4Addr;

use crate::wire::MacAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: MacAddr,
    /// (address, prefix length) of each IPv4 address.
    pub ipv4: Vec<(Ipv4Addr, u8)>,
}

impl Interface {
    /// The interface address on the network that contains `addr`, if any.
    pub fn source_for(&self, addr: Ipv4Addr) -> Option<Ipv4Addr> {
        self.ipv4
            .iter()
            .find(|(a, p)| same_network(*a, addr, *p))
            .map(|(a, _)| *a)
    }
}

pub fn same_network(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("interface {0} does not exist in this network namespace")]
    Missing(String),
    #[error("interface {0} is down")]
    Down(String),
    #[error("interface {0} has no Ethernet address (uvs needs an Ethernet interface)")]
    NoMac(String),
    #[error("no up, non-loopback interface with an IPv4 address found; name one with --interface")]
    NoneFound,
}

/// Resolves the named interfaces, or every up non-loopback interface with IPv4 if none is named.
pub fn resolve(names: &[String]) -> Result<Vec<Interface>, InterfaceError> {
    let all = pnet_datalink::interfaces();
    let convert = |i: &pnet_datalink::NetworkInterface| -> Result<Interface, InterfaceError> {
        let mac = i.mac.ok_or_else(|| InterfaceError::NoMac(i.name.clone()))?;
        Ok(Interface {
            name: i.name.clone(),
            index: i.index,
            mac: MacAddr(mac.octets()),
            ipv4: i
                .ips
                .iter()
                .filter_map(|n| match n.ip() {
                    std::net::IpAddr::V4(a) => Some((a, n.prefix())),
                    std::net::IpAddr::V6(_) => None,
                })
                .collect(),
        })
    };
    if names.is_empty() {
        let found: Vec<Interface> = all
            .iter()
            .filter(|i| i.is_up() && !i.is_loopback() && i.ips.iter().any(|n| n.is_ipv4()))
            .filter_map(|i| convert(i).ok())
            .collect();
        if found.is_empty() {
            return Err(InterfaceError::NoneFound);
        }
        return Ok(found);
    }
    names
        .iter()
        .map(|n| {
            let i = all
                .iter()
                .find(|i| &i.name == n)
                .ok_or_else(|| InterfaceError::Missing(n.clone()))?;
            if !i.is_up() {
                return Err(InterfaceError::Down(n.clone()));
            }
            convert(i)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let a = Ipv4Addr::new(10, 0, 0, 2);
        assert!(same_network(a, Ipv4Addr::new(10, 0, 0, 200), 24));
        assert!(!same_network(a, Ipv4Addr::new(10, 0, 1, 2), 24));
        assert!(same_network(a, Ipv4Addr::new(10, 0, 1, 2), 16));
        assert!(same_network(a, Ipv4Addr::new(192, 0, 1, 2), 0));
        assert!(!same_network(a, Ipv4Addr::new(10, 0, 0, 3), 32));
    }

    #[test]
    fn missing_interfaces_are_named() {
        let e = resolve(&["uvs-no-such0".to_string()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "interface uvs-no-such0 does not exist in this network namespace"
        );
    }
}
