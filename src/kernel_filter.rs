//! Keeps the director's own kernel off service traffic.
//!
//! AF_PACKET taps see a frame before the kernel's IP stack does, and the kernel processes it
//! too: with the VIP configured on the director (tutorials put it on `ens33:0` or `lo`, the
//! kernel's IPVS selftest on `lo`) it answers the client's SYN with RST; with `ip_forward=1` it
//! forwards a duplicate. uvs therefore installs nftables tables of its own:
//! - `netdev uvs`, an ingress chain per served interface that drops, before the IP stack,
//!   TCP/UDP to a configured VIP:port (uvs forwards those) and IP fragments to a VIP (uvs does
//!   not reassemble; see `DropReason::Fragment`);
//! - `arp uvs`, an ARP input chain that drops ARP requests for a VIP arriving on a served
//!   interface (uvs answers them; the kernel must not answer a second time).
//!
//! The netdev ingress hook runs after the packet taps, so uvs and tcpdump still see every
//! frame. Everything else (the director's own traffic, other ports on the VIP) is untouched.
//!
//! The ingress chain runs for every frame on the generator's (the sender's) CPU, so it is kept
//! short: the service rules come first (the common case stops at its first match), and ARP is
//! judged in the ARP family's hook instead, which only ARP frames reach. That is also why uvs's
//! ARP socket can be bound to `ETH_P_ARP`: ARP protocol handlers run after the ingress hook
//! but before `arp_rcv`'s own input hook, so the socket sees the requests the kernel then drops.
//!
//! With a VIP MAC (`[arp] vip_mac`) clients address service traffic to a MAC the director's
//! kernel does not own: `ip_rcv` drops such a frame (`PACKET_OTHERHOST`) before any hook, so
//! no per-frame rule is needed at all. The service rules then move to `ip uvs`, a prerouting
//! chain that only frames addressed to the interface itself reach (a client with a stale
//! neighbour entry, a static one): uvs forwards those too, and the kernel must still not.
//! With the ingress chain gone, the sending CPU no longer evaluates a rule per frame — what
//! bench/ measured as the largest per-frame cost uvs added outside its own thread.
//!
//! The tables are replaced atomically (one `nft -f` transaction) and removed on every exit path
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

/// Where the service rules hook in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceHook {
    /// `netdev` ingress, per interface: every frame, before the IP stack (the VIPs are
    /// answered with the interface MAC, so service frames are addressed to the kernel).
    Ingress,
    /// `ip` prerouting: only frames the IP stack accepts as addressed to this host (the VIPs
    /// are answered with a VIP MAC the kernel does not own).
    Prerouting,
}

/// The service and fragment rules, one line each, `prefix` before every match.
fn service_rules(prefix: &str, services: &[ServiceKey], vips: &[std::net::Ipv4Addr]) -> String {
    let mut s = String::new();
    // Services first: a forwarded frame is the common case. A non-first fragment carries
    // no ports, so it never matches these and reaches the fragment rule.
    for svc in services {
        let proto = match svc.proto {
            crate::model::Protocol::Tcp => "tcp",
            crate::model::Protocol::Udp => "udp",
        };
        s.push_str(&format!(
            "    {prefix}ip daddr {} {proto} dport {} counter drop comment \"forwarded by uvs\"\n",
            svc.vip, svc.port
        ));
    }
    for vip in vips {
        s.push_str(&format!(
            "    {prefix}ip daddr {vip} ip frag-off & 0x3fff != 0 counter drop comment \"fragment to a VIP\"\n"
        ));
    }
    s
}

/// The ruleset text for the given interfaces and services.
pub fn ruleset(interfaces: &[String], services: &[ServiceKey], hook: ServiceHook) -> String {
    let mut vips: Vec<_> = services.iter().map(|s| s.vip).collect();
    vips.sort();
    vips.dedup();
    let mut s = String::new();
    // Create-then-delete makes the replacement idempotent within one transaction.
    s.push_str(&remove_script(true));
    let ifnames: Vec<String> = interfaces.iter().map(|i| format!("\"{i}\"")).collect();
    match hook {
        ServiceHook::Ingress => {
            s.push_str(&format!("table netdev {TABLE} {{\n"));
            for (i, ifname) in interfaces.iter().enumerate() {
                s.push_str(&format!(
                    "  chain ingress_{i} {{\n    type filter hook ingress device \"{ifname}\" priority -500; policy accept;\n"
                ));
                s.push_str(&service_rules("", services, &vips));
                s.push_str("  }\n");
            }
            s.push_str("}\n");
        }
        ServiceHook::Prerouting => {
            // Before conntrack's defragmentation (-400), so fragments are seen as they came.
            s.push_str(&format!(
                "table ip {TABLE} {{\n  chain prerouting {{\n    type filter hook prerouting priority -500; policy accept;\n"
            ));
            if !ifnames.is_empty() {
                let prefix = format!("iifname {{ {} }} ", ifnames.join(", "));
                s.push_str(&service_rules(&prefix, services, &vips));
            }
            s.push_str("  }\n}\n");
        }
    }
    s.push_str(&format!(
        "table arp {TABLE} {{\n  chain input {{\n    type filter hook input priority -500; policy accept;\n"
    ));
    if !interfaces.is_empty() && !vips.is_empty() {
        let vips: Vec<String> = vips.iter().map(|v| v.to_string()).collect();
        s.push_str(&format!(
            "    iifname {{ {} }} arp operation request arp daddr ip {{ {} }} counter drop comment \"answered by uvs\"\n",
            ifnames.join(", "),
            vips.join(", ")
        ));
    }
    s.push_str("  }\n}\n");
    s
}

/// Deletes uvs's tables. `tolerate_missing`: declare each table first, so the deletion also
/// succeeds when it does not exist (a fresh start, or a table already removed).
fn remove_script(tolerate_missing: bool) -> String {
    let mut s = String::new();
    for family in ["netdev", "ip", "arp"] {
        if tolerate_missing {
            s.push_str(&format!("table {family} {TABLE}\n"));
        }
        s.push_str(&format!("delete table {family} {TABLE}\n"));
    }
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
    hook: ServiceHook,
}

impl KernelFilter {
    /// Removes a table left by an earlier instance (if any) and installs ours.
    pub fn install(
        interfaces: &[String],
        services: &[ServiceKey],
        hook: ServiceHook,
    ) -> Result<KernelFilter, KernelFilterError> {
        nft(&ruleset(interfaces, services, hook))?;
        Ok(KernelFilter {
            interfaces: interfaces.to_vec(),
            hook,
        })
    }

    /// Replaces the rules after a configuration change (atomically).
    pub fn update(&self, services: &[ServiceKey]) -> Result<(), KernelFilterError> {
        nft(&ruleset(&self.interfaces, services, self.hook))
    }

    /// Removes a table left behind by a killed instance. Not having one is fine.
    pub fn remove_stale() {
        let _ = nft(&remove_script(true));
    }
}

impl Drop for KernelFilter {
    fn drop(&mut self) {
        // Tolerant: if one table was deleted by hand, the other must still go.
        if let Err(e) = nft(&remove_script(true)) {
            log::warn!("could not remove nftables tables netdev/ip/arp {TABLE}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use std::net::Ipv4Addr;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    fn two_services() -> [ServiceKey; 2] {
        [
            ServiceKey {
                proto: Protocol::Tcp,
                vip: VIP,
                port: 80,
                fwmark: 0,
            },
            ServiceKey {
                proto: Protocol::Udp,
                vip: VIP,
                port: 53,
                fwmark: 0,
            },
        ]
    }

    #[test]
    fn with_a_vip_mac_the_service_rules_leave_the_per_frame_ingress_hook() {
        let r = ruleset(
            &["eth0".into(), "eth1".into()],
            &two_services(),
            ServiceHook::Prerouting,
        );
        assert!(!r.contains("table netdev uvs {"), "{r}");
        assert!(!r.contains("hook ingress"), "{r}");
        let ip = &r[r.find("table ip uvs {").expect("ip table")..];
        assert!(ip.starts_with(
            "table ip uvs {\n  chain prerouting {\n    type filter hook prerouting priority -500;"
        ));
        let on = "iifname { \"eth0\", \"eth1\" } ip daddr 10.0.0.100";
        assert_eq!(
            r.matches(&format!("{on} tcp dport 80 counter drop"))
                .count(),
            1
        );
        assert_eq!(
            r.matches(&format!("{on} udp dport 53 counter drop"))
                .count(),
            1
        );
        assert_eq!(r.matches(&format!("{on} ip frag-off")).count(), 1);
        // The kernel must still not answer ARP for the VIPs.
        assert!(r.contains("arp operation request arp daddr ip { 10.0.0.100 } counter drop"));
        // Every table of either mode is removed first, so switching modes leaves nothing.
        for family in ["netdev", "ip", "arp"] {
            assert!(r.contains(&format!("delete table {family} uvs\n")));
        }
    }

    #[test]
    fn ruleset_covers_services_fragments_and_arp_of_every_interface() {
        let r = ruleset(
            &["eth0".into(), "eth1".into()],
            &two_services(),
            ServiceHook::Ingress,
        );
        assert!(r.contains("device \"eth0\""));
        assert!(r.contains("device \"eth1\""));
        assert!(!r.contains("table ip uvs {"));
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
        // The service rules precede the fragment rule in each chain.
        let chain0 = &r[r.find("ingress_0").unwrap()..r.find("ingress_1").unwrap()];
        assert!(chain0.find("dport 80").unwrap() < chain0.find("frag-off").unwrap());
        // ARP requests for a VIP are judged once, in the ARP family, for both interfaces.
        assert!(r.contains(
            "table arp uvs {\n  chain input {\n    type filter hook input priority -500;"
        ));
        assert_eq!(
            r.matches(
                "iifname { \"eth0\", \"eth1\" } arp operation request arp daddr ip { 10.0.0.100 } counter drop"
            )
            .count(),
            1
        );
    }
}
