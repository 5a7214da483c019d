//! The two lab shapes.
//!
//! DR lab ("the seeds' DR lab"), namespaces `<p>client <p>router <p>sw <p>dir <p>rs1 <p>rs2`:
//!
//! ```text
//!  client 172.30.0.10/24 ──(veth)── router 172.30.0.1/24 | 10.0.0.1/24 ──┐
//!   eth0 02:..:10:00          eth0 02:..:01:00     eth1 02:..:01:01      │ port "router"
//!                                                                        │
//!                                               bridge br0 in <p>sw ─────┤ (stp off, no br-nf)
//!                                                                        │
//!   director 10.0.0.2/24 (eth0 02:..:02:00), ip_forward=0 ───────────────┤ port "dir"
//!   rs1 10.0.0.11/24 (eth0 02:..:11:00), VIP 10.0.0.100/32 on lo ────────┤ port "rs1"
//!   rs2 10.0.0.12/24 (eth0 02:..:12:00), VIP 10.0.0.100/32 on lo ────────┘ port "rs2"
//! ```
//! Default routes: client → 172.30.0.1; director, rs1, rs2 → 10.0.0.1 (the router, so replies
//! bypass the director). The VIP is on no interface of the director: answering ARP for it is
//! uvs's job.
//!
//! Two-arm lab (the shape of the kernel's IPVS DR selftest), namespaces `<p>client <p>dir <p>rs1`:
//!
//! ```text
//!  client 10.0.1.1/24 ── eth0 10.0.1.2/24  director  eth1 10.0.2.1/24 ── rs1 10.0.2.2/24
//!   eth0 02:..:10:00     02:..:02:00     VIP 10.0.1.100 on lo   02:..:02:01   eth0 02:..:11:00
//!                                        ip_forward=1                        VIP 10.0.1.100 on lo
//! ```
//! Default routes: client → 10.0.1.2; rs1 → 10.0.2.1 (the director routes the replies back).
//!
//! MACs are `02:00:00:00:<host>:<if>` (see [`super::addr`]).

use anyhow::Result;

use super::addr::{self, mac};
use super::{Lab, LabOptions, Topology};

/// arp_ignore/arp_announce for a DR real server; must precede the VIP on `lo`, or the RS
/// answers ARP for the VIP in between.
fn rs_arp_sysctls(lab: &Lab, host: &str, ifname: &str) -> Result<()> {
    let ig = format!("net.ipv4.conf.{ifname}.arp_ignore");
    let an = format!("net.ipv4.conf.{ifname}.arp_announce");
    lab.sysctl(
        host,
        &[
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            (&ig, "1"),
            (&an, "2"),
        ],
        false,
    )
}

fn vip_on_lo(lab: &Lab, host: &str, vip: std::net::Ipv4Addr) -> Result<()> {
    lab.ip(host, &["addr", "add", &format!("{vip}/32"), "dev", "lo"])
}

/// Builds the DR lab (client → router → bridge with director, rs1, rs2). `prefix` must be
/// unique to the caller (embed the PID). On error everything created so far is removed.
pub fn build_dr_lab(prefix: &str, opts: &LabOptions) -> Result<Lab> {
    let mut lab = Lab::new(prefix, Topology::Dr)?;
    for h in ["client", "router", "sw", "dir", "rs1", "rs2"] {
        lab.add_ns(h)?;
    }

    // The switch: bridge netfilter off both per-bridge and per-namespace, so malformed frames
    // reach the director instead of being dropped at the bridge.
    lab.sysctl(
        "sw",
        &[
            ("net.bridge.bridge-nf-call-iptables", "0"),
            ("net.bridge.bridge-nf-call-ip6tables", "0"),
            ("net.bridge.bridge-nf-call-arptables", "0"),
        ],
        true,
    )?;
    let br_mac = super::fmt_mac(mac(addr::HOST_SW, 0));
    lab.ip(
        "sw",
        &[
            "link",
            "add",
            "br0",
            "address",
            &br_mac,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "nf_call_iptables",
            "0",
            "nf_call_ip6tables",
            "0",
            "nf_call_arptables",
            "0",
        ],
    )?;
    lab.ifaces.push(super::Iface {
        host: "sw".into(),
        name: "br0".into(),
        mac: mac(addr::HOST_SW, 0),
    });
    lab.ip("sw", &["link", "set", "br0", "up"])?;

    lab.veth(
        "client",
        "eth0",
        mac(addr::HOST_CLIENT, 0),
        "router",
        "eth0",
        mac(addr::HOST_ROUTER, 0),
    )?;
    let lan = [
        ("router", "eth1", addr::HOST_ROUTER, 1u8, 1u8),
        ("dir", "eth0", addr::HOST_DIR, 0, 2),
        ("rs1", "eth0", addr::HOST_RS1, 0, 3),
        ("rs2", "eth0", addr::HOST_RS2, 0, 4),
    ];
    for (host, ifname, hno, ifno, port) in lan {
        lab.veth(
            host,
            ifname,
            mac(hno, ifno),
            "sw",
            host,
            mac(addr::HOST_SW, port),
        )?;
        lab.ip("sw", &["link", "set", host, "master", "br0", "up"])?;
    }

    // Real servers: ARP sysctls before any address exists.
    for h in ["rs1", "rs2"] {
        rs_arp_sysctls(&lab, h, "eth0")?;
    }

    let p = addr::CLIENT_PREFIX_LEN;
    let l = addr::LAN_PREFIX_LEN;
    lab.addr_up("client", "eth0", &format!("{}/{p}", addr::CLIENT))?;
    lab.addr_up("router", "eth0", &format!("{}/{p}", addr::ROUTER_CLIENT))?;
    lab.addr_up("router", "eth1", &format!("{}/{l}", addr::ROUTER_LAN))?;
    lab.addr_up("dir", "eth0", &format!("{}/{l}", addr::DIRECTOR))?;
    lab.addr_up("rs1", "eth0", &format!("{}/{l}", addr::RS1))?;
    lab.addr_up("rs2", "eth0", &format!("{}/{l}", addr::RS2))?;

    lab.sysctl("router", &[("net.ipv4.ip_forward", "1")], false)?;
    // Explicit, so a distro default cannot turn the director into a kernel router.
    lab.sysctl("dir", &[("net.ipv4.ip_forward", "0")], false)?;

    let gw_client = addr::ROUTER_CLIENT.to_string();
    let gw_lan = addr::ROUTER_LAN.to_string();
    lab.ip("client", &["route", "add", "default", "via", &gw_client])?;
    for h in ["dir", "rs1", "rs2"] {
        lab.ip(h, &["route", "add", "default", "via", &gw_lan])?;
    }

    for h in ["rs1", "rs2"] {
        vip_on_lo(&lab, h, addr::VIP)?;
    }

    if !opts.offloads {
        lab.disable_offloads()?;
    }
    Ok(lab)
}

/// Builds the two-arm lab (client → director → rs1), the kernel IPVS DR selftest's shape.
pub fn build_two_arm_lab(prefix: &str, opts: &LabOptions) -> Result<Lab> {
    use addr::two_arm as a;
    let mut lab = Lab::new(prefix, Topology::TwoArm)?;
    for h in ["client", "dir", "rs1"] {
        lab.add_ns(h)?;
    }
    lab.veth(
        "client",
        "eth0",
        mac(addr::HOST_CLIENT, 0),
        "dir",
        "eth0",
        mac(addr::HOST_DIR, 0),
    )?;
    lab.veth(
        "dir",
        "eth1",
        mac(addr::HOST_DIR, 1),
        "rs1",
        "eth0",
        mac(addr::HOST_RS1, 0),
    )?;
    rs_arp_sysctls(&lab, "rs1", "eth0")?;

    lab.addr_up("client", "eth0", &format!("{}/24", a::CLIENT))?;
    lab.addr_up("dir", "eth0", &format!("{}/24", a::DIRECTOR_CLIENT))?;
    lab.addr_up("dir", "eth1", &format!("{}/24", a::DIRECTOR_RS))?;
    lab.addr_up("rs1", "eth0", &format!("{}/24", a::RS1))?;

    // The RS's replies (from the VIP, to the client) are routed back by the director's kernel.
    lab.sysctl("dir", &[("net.ipv4.ip_forward", "1")], false)?;
    lab.ip(
        "client",
        &[
            "route",
            "add",
            "default",
            "via",
            &a::DIRECTOR_CLIENT.to_string(),
        ],
    )?;
    lab.ip(
        "rs1",
        &[
            "route",
            "add",
            "default",
            "via",
            &a::DIRECTOR_RS.to_string(),
        ],
    )?;

    vip_on_lo(&lab, "dir", a::VIP)?;
    vip_on_lo(&lab, "rs1", a::VIP)?;

    if !opts.offloads {
        lab.disable_offloads()?;
    }
    Ok(lab)
}
