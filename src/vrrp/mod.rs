//! VRRP (v2 and v3, IPv4) so that two uvs directors — or uvs and keepalived — share the VIPs:
//! only the MASTER answers ARP for an instance's VIPs and forwards their traffic.
//!
//! - [`packet`]: the wire format and checksums (pure).
//! - [`machine`]: the state machine (pure, virtual clock).
//! - [`socket`]: the raw protocol-112 socket.
//! - [`runtime`]: drives the instances on the control thread, publishes the [`HaGate`] the
//!   workers read, runs notify scripts, renders metrics.
//!
//! See docs/ha.md for the design.

pub mod config_toml;
pub mod control;
pub mod machine;
pub mod packet;
pub mod runtime;
pub mod socket;

use std::net::Ipv4Addr;

pub use crate::sync::gate::HaGate;
pub use packet::Version;

/// One `vrrp_instance`, validated (from TOML `[[vrrp]]` or keepalived.conf).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceConfig {
    pub name: String,
    pub interface: String,
    pub version: Version,
    pub vrid: u8,
    /// 1..=255 (255 = address owner).
    pub priority: u8,
    /// Advertisement interval in centiseconds (v2: whole seconds only).
    pub advert_int_cs: u16,
    /// keepalived `state MASTER`.
    pub start_master: bool,
    /// false = keepalived `nopreempt`.
    pub preempt: bool,
    pub preempt_delay_secs: u32,
    /// v2 `auth_type PASS` password (first 8 characters used).
    pub auth_pass: Option<String>,
    pub vips: Vec<Ipv4Addr>,
    /// Empty = multicast to 224.0.0.18.
    pub unicast_peers: Vec<Ipv4Addr>,
    /// Source address (keepalived `unicast_src_ip`/`mcast_src_ip`); default: the interface's
    /// first IPv4 address.
    pub source: Option<Ipv4Addr>,
    pub notify_master: Option<String>,
    pub notify_backup: Option<String>,
    pub notify_fault: Option<String>,
    pub track_interfaces: Vec<String>,
}

impl InstanceConfig {
    /// Defaults as keepalived's: v2, priority 100, 1 s, BACKUP, preempt.
    pub fn new(name: &str, interface: &str, vrid: u8) -> InstanceConfig {
        InstanceConfig {
            name: name.to_string(),
            interface: interface.to_string(),
            version: Version::V2,
            vrid,
            priority: 100,
            advert_int_cs: 100,
            start_master: false,
            preempt: true,
            preempt_delay_secs: 0,
            auth_pass: None,
            vips: Vec::new(),
            unicast_peers: Vec::new(),
            source: None,
            notify_master: None,
            notify_backup: None,
            notify_fault: None,
            track_interfaces: Vec::new(),
        }
    }

    /// keepalived's consistency rules; the message names the problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.vrid == 0 {
            return Err("virtual_router_id must be 1..=255".into());
        }
        if self.priority == 0 {
            return Err("priority must be 1..=255 (0 is only sent on shutdown)".into());
        }
        if self.vips.is_empty() {
            return Err("virtual_ipaddress is empty".into());
        }
        if self.advert_int_cs == 0 || self.advert_int_cs > 4095 {
            return Err("advert_int must be 0.01..=40.95 s".into());
        }
        if self.version == Version::V2 && self.advert_int_cs % 100 != 0 {
            return Err("VRRPv2 advert_int is whole seconds (use version 3 for less)".into());
        }
        if self.auth_pass.is_some() && self.version == Version::V3 {
            return Err("authentication exists only in VRRPv2".into());
        }
        if !self.preempt && self.start_master {
            return Err("nopreempt requires state BACKUP".into());
        }
        if self.preempt_delay_secs > 1000 {
            return Err("preempt_delay must be 0..=1000".into());
        }
        if self.preempt_delay_secs > 0 && self.start_master {
            return Err("preempt_delay requires state BACKUP".into());
        }
        Ok(())
    }
}
