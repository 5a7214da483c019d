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
//! Two-arm lab (the shape of the kernel's IPVS DR selftest, `ipvs.sh` `test_dr`), namespaces
//! `<p>client <p>dir <p>rs1`:
//!
//! ```text
//!            client: br0 10.0.0.2/24 (02:..:10:00), route VIP/32 via 10.0.0.1 dev br0
//!              veth01 (02:..:10:01)                  veth02 (02:..:10:02)
//!                 │                                     │
//!  dir veth10 10.0.0.1/24 (02:..:02:00)      rs1 veth20 10.0.0.3/24 (02:..:11:00)
//!      VIP 10.10.0.110/32 on lo                  VIP 10.10.0.110/32 on lo
//!      ip_forward=1                              arp_ignore=1 arp_announce=2 rp_filter=0
//!  dir veth12 172.16.0.1/24 (02:..:02:01) ── rs1 veth21 172.16.0.2/24 (02:..:11:01)
//! ```
//! The director gets client traffic on veth10 and hands it to rs1 over veth12; rs1 answers
//! from the VIP straight over veth20 to the client's bridge, never through the director. No
//! default routes: every peer is on a connected subnet.
//!
//! MACs are `02:00:00:00:<host>:<if>` (see [`super::addr`]).

use anyhow::Result;

use super::addr::{self, mac};
use super::{Lab, LabOptions, Topology};

fn vip_on_lo(lab: &Lab, host: &str, vip: std::net::Ipv4Addr) -> Result<()> {
    lab.ip(host, &["addr", "add", &format!("{vip}/32"), "dev", "lo"])
}

/// Builds the DR lab (client → router → bridge with director, rs1, rs2) from the lab file
/// compiled in (configs/labs/dr-router.toml), without its servers and director. `prefix` must
/// be unique to the caller (embed the PID). On error everything created so far is removed.
pub fn build_dr_lab(prefix: &str, opts: &LabOptions) -> Result<Lab> {
    let spec = super::spec::LabSpec::parse(super::spec::DR_ROUTER)?;
    let lab = Lab::new(prefix, Topology::Dr)?;
    super::build::populate(lab, &spec, opts)
}

/// Builds the seeds' LVS-TUN lab (configs/labs/tun.toml, compiled in: client → router →
/// director, and rs1 and rs2 each on a network of their own behind the router) with its
/// reals' tunnel ends, without servers or director. `prefix` as in [`build_dr_lab`].
pub fn build_tun_lab(prefix: &str, opts: &LabOptions, uvs_exe: &std::path::Path) -> Result<Lab> {
    let spec = super::spec::LabSpec::parse(super::spec::TUN)?;
    let mut lab = super::build::build_topology(&spec, Some(prefix), opts)?;
    super::build::start_tunnel_ends(&mut lab, &spec, uvs_exe)?;
    Ok(lab)
}

/// Builds the two-arm lab, the shape of the kernel's IPVS DR selftest
/// (`tools/testing/selftests/net/netfilter/ipvs.sh`, `test_dr`): client → director → rs1, with
/// rs1 also attached to the client's bridge so its replies go straight back, never through the
/// director. Only the VIP differs from the selftest: a private address instead of its public one.
pub fn build_two_arm_lab(prefix: &str, opts: &LabOptions) -> Result<Lab> {
    use addr::two_arm as a;
    let mut lab = Lab::new(prefix, Topology::TwoArm)?;
    for h in ["client", "dir", "rs1"] {
        lab.add_ns(h)?;
    }
    // The selftest's three pairs: veth01-veth10 (client-dir), veth02-veth20 (client-rs1),
    // veth12-veth21 (dir-rs1).
    lab.veth(
        "client",
        "veth01",
        mac(addr::HOST_CLIENT, 1),
        "dir",
        "veth10",
        mac(addr::HOST_DIR, 0),
    )?;
    lab.veth(
        "client",
        "veth02",
        mac(addr::HOST_CLIENT, 2),
        "rs1",
        "veth20",
        mac(addr::HOST_RS1, 0),
    )?;
    lab.veth(
        "dir",
        "veth12",
        mac(addr::HOST_DIR, 1),
        "rs1",
        "veth21",
        mac(addr::HOST_RS1, 1),
    )?;

    // The client's bridge joins its two veths: one segment with the director's and rs1's
    // client-side ends.
    let br_mac = mac(addr::HOST_CLIENT, 0);
    lab.ip(
        "client",
        &[
            "link",
            "add",
            "br0",
            "address",
            &super::fmt_mac(br_mac),
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ],
    )?;
    lab.ifaces.push(super::Iface {
        host: "client".into(),
        name: "br0".into(),
        mac: br_mac,
    });
    for port in ["veth01", "veth02"] {
        lab.ip("client", &["link", "set", port, "master", "br0", "up"])?;
    }

    // rs1: ARP sysctls before any address exists, and no reverse-path check (packets for the
    // VIP arrive on veth21 from a client that is reachable via veth20).
    lab.sysctl(
        "rs1",
        &[
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ],
        false,
    )?;

    lab.addr_up("client", "br0", &format!("{}/24", a::CLIENT))?;
    lab.addr_up("dir", "veth10", &format!("{}/24", a::DIRECTOR_CLIENT))?;
    lab.addr_up("dir", "veth12", &format!("{}/24", a::DIRECTOR_RS))?;
    lab.addr_up("rs1", "veth21", &format!("{}/24", a::RS1))?;
    lab.addr_up("rs1", "veth20", &format!("{}/24", a::RS1_CLIENT_SIDE))?;
    lab.sysctl("rs1", &[("net.ipv4.conf.veth21.rp_filter", "0")], false)?;

    // As in the selftest: the client reaches the VIP via the director's client-side address,
    // and the director forwards (uvs's nftables table keeps its kernel off the service).
    lab.ip(
        "client",
        &[
            "route",
            "add",
            &format!("{}/32", a::VIP),
            "via",
            &a::DIRECTOR_CLIENT.to_string(),
            "dev",
            "br0",
        ],
    )?;
    lab.sysctl("dir", &[("net.ipv4.ip_forward", "1")], false)?;
    vip_on_lo(&lab, "dir", a::VIP)?;
    vip_on_lo(&lab, "rs1", a::VIP)?;

    if !opts.offloads {
        lab.disable_offloads()?;
    }
    Ok(lab)
}
