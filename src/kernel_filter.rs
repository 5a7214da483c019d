//! Keeps the director's own kernel off service traffic.
//!
//! AF_PACKET taps see a frame before the kernel's IP stack does, and the kernel processes it
//! too: with the VIP configured on the director (tutorials put it on `ens33:0` or `lo`, the
//! kernel's IPVS selftest on `lo`) it answers the client's SYN with RST; with `ip_forward=1` it
//! forwards a duplicate. uvs therefore installs an nftables table of its own, `netdev uvs`,
//! with an ingress chain per served interface that drops, before the IP stack:
//! - TCP/UDP to a configured VIP:port (uvs forwards those),
//! - IP fragments to a VIP (uvs does not reassemble; see `DropReason::Fragment`),
//! - ARP requests for a VIP (uvs answers them; the kernel must not answer a second time).
//!
//! The netdev ingress hook runs after the packet taps, so uvs and tcpdump still see every
//! frame. Everything else (the director's own traffic, other ports on the VIP) is untouched.
//!
//! The table is replaced atomically (one `nft -f` transaction) and removed on every exit path
//! uvs can catch; a new start first removes whatever a killed instance left behind.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::model::ServiceKey;

pub const TABLE: &str = "uvs";

#[derive(Debug, thiserror::Error)]
pub enum KernelFilterError {
    #[error(
        "cannot run nft ({0}); install nftables, or set kernel_filter = false and keep the director's kernel off the VIP yourself"
    )]
    Spawn(std::io::Error),
    #[error("nft refused uvs's ruleset: {0}")]
    Rejected(String),
}

/// The ruleset text for the given interfaces and services.
pub fn ruleset(interfaces: &[String], services: &[ServiceKey]) -> String {
    let mut vips: Vec<_> = services.iter().map(|s| s.vip).collect();
    vips.sort();
    vips.dedup();
    let mut s = String::new();
    // Create-then-delete makes the replacement idempotent within one transaction.
    s.push_str(&format!(
        "table netdev {TABLE}\ndelete table netdev {TABLE}\n"
    ));
    s.push_str(&format!("table netdev {TABLE} {{\n"));
    for (i, ifname) in interfaces.iter().enumerate() {
        s.push_str(&format!(
            "  chain ingress_{i} {{\n    type filter hook ingress device \"{ifname}\" priority -500; policy accept;\n"
        ));
        for vip in &vips {
            s.push_str(&format!(
                "    ip daddr {vip} ip frag-off & 0x3fff != 0 counter drop comment \"fragment to a VIP\"\n"
            ));
            s.push_str(&format!(
                "    arp operation request arp daddr ip {vip} counter drop comment \"answered by uvs\"\n"
            ));
        }
        for svc in services {
            let proto = match svc.proto {
                crate::model::Protocol::Tcp => "tcp",
                crate::model::Protocol::Udp => "udp",
            };
            s.push_str(&format!(
                "    ip daddr {} {proto} dport {} counter drop comment \"forwarded by uvs\"\n",
                svc.vip, svc.port
            ));
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

fn nft(script: &str) -> Result<(), KernelFilterError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(KernelFilterError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(KernelFilterError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(KernelFilterError::Spawn)?;
    if !out.status.success() {
        return Err(KernelFilterError::Rejected(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// The installed table; dropping it removes the table.
#[derive(Debug)]
pub struct KernelFilter {
    interfaces: Vec<String>,
}

impl KernelFilter {
    /// Removes a table left by an earlier instance (if any) and installs ours.
    pub fn install(
        interfaces: &[String],
        services: &[ServiceKey],
    ) -> Result<KernelFilter, KernelFilterError> {
        nft(&ruleset(interfaces, services))?;
        Ok(KernelFilter {
            interfaces: interfaces.to_vec(),
        })
    }

    /// Replaces the rules after a configuration change (atomically).
    pub fn update(&self, services: &[ServiceKey]) -> Result<(), KernelFilterError> {
        nft(&ruleset(&self.interfaces, services))
    }

    /// Removes a table left behind by a killed instance. Not having one is fine.
    pub fn remove_stale() {
        let _ = nft(&format!(
            "table netdev {TABLE}\ndelete table netdev {TABLE}\n"
        ));
    }
}

impl Drop for KernelFilter {
    fn drop(&mut self) {
        if let Err(e) = nft(&format!("delete table netdev {TABLE}\n")) {
            log::warn!("could not remove nftables table netdev {TABLE}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use std::net::Ipv4Addr;

    #[test]
    fn ruleset_covers_services_fragments_and_arp_per_interface() {
        let vip = Ipv4Addr::new(10, 0, 0, 100);
        let r = ruleset(
            &["eth0".into(), "eth1".into()],
            &[
                ServiceKey {
                    proto: Protocol::Tcp,
                    vip,
                    port: 80,
                    fwmark: 0,
                },
                ServiceKey {
                    proto: Protocol::Udp,
                    vip,
                    port: 53,
                    fwmark: 0,
                },
            ],
        );
        assert!(r.contains("device \"eth0\""));
        assert!(r.contains("device \"eth1\""));
        assert_eq!(
            r.matches("ip daddr 10.0.0.100 tcp dport 80 counter drop")
                .count(),
            2
        );
        assert_eq!(
            r.matches("ip daddr 10.0.0.100 udp dport 53 counter drop")
                .count(),
            2
        );
        assert_eq!(r.matches("frag-off").count(), 2);
        assert_eq!(r.matches("arp daddr ip 10.0.0.100").count(), 2);
    }
}
