//! `uvs doctor`: checks a DR setup from the director, the way an operator would by hand with
//! arping, ethtool, sysctl, nft and hping — and names what is wrong.
//!
//! - The director itself: interface up, offloads (information), `ip_forward`, a VIP configured
//!   on the director's kernel (explained), and, when uvs runs, its nftables table.
//! - The LAN: an ARP request for each real server (reachable? at which MAC?), and for each VIP:
//!   any answer from a MAC other than the director's is a host that claims the VIP — named as
//!   the real server whose MAC it is, when it is one (a real server without `arp_ignore=1`).
//! - Each real server of each TCP service: a SYN to VIP:port sent straight to the real
//!   server's MAC must come back as a SYN-ACK (the VIP is on its loopback and something
//!   listens); the half-open connection is reset afterwards.
//! - Each tunnelling (LVS-TUN) real: reachable (the director's route to it leaves by a probed
//!   interface, and its next hop answers ARP), decapsulating and answering for the VIP (a SYN
//!   to VIP:port inside the real's tunnel, as uvs sends it, comes back as a SYN-ACK).
//!
//! Services come from the running daemon (admin Status) when there is one, else from
//! `--config`/`--rules`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etherparse::{ArpEthIpv4Packet, ArpOperation, PacketBuilder};

use crate::ctl::backend::{Backend, BackendError, SocketBackend, SocketLocation};
use crate::ctl::proto::{Reply, Request};
use crate::health::vip::{ProbeSource, SynReply, syn_through_vip};
use crate::interfaces::Interface;
use crate::io::socket::{open_probe, recv_frame, send_frame, wait_readable};
use crate::model::{ForwardMethod, Protocol, Tunnel};
use crate::wire::{ETH_HDR_LEN, ETHERTYPE_ARP, MacAddr, ethernet};

/// How long to wait for answers to one round of probes.
const PROBE_WAIT: Duration = Duration::from_millis(700);
/// Rounds of ARP requests (answers may be lost).
const ARP_ROUNDS: usize = 2;

pub struct DoctorArgs {
    pub interfaces: Vec<String>,
    pub config: Option<PathBuf>,
    pub rules: Option<PathBuf>,
    pub admin_socket: Option<PathBuf>,
}

/// One real server of one service, as the doctor checks it.
#[derive(Clone, Debug)]
struct Target {
    proto: Protocol,
    vip: Ipv4Addr,
    port: u16,
    real: Ipv4Addr,
    forward: ForwardMethod,
}

impl Target {
    fn tunnel(&self) -> Option<Tunnel> {
        match self.forward {
            ForwardMethod::Tunnel(t) => Some(t),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Report {
    problems: usize,
    warnings: usize,
}

impl Report {
    fn ok(&self, msg: impl AsRef<str>) {
        println!("  ok    {}", msg.as_ref());
    }
    fn info(&self, msg: impl AsRef<str>) {
        println!("  info  {}", msg.as_ref());
    }
    fn warn(&mut self, msg: impl AsRef<str>) {
        self.warnings += 1;
        println!("  WARN  {}", msg.as_ref());
    }
    fn fail(&mut self, msg: impl AsRef<str>) {
        self.problems += 1;
        println!("  FAIL  {}", msg.as_ref());
    }
}

/// The tunnelling reals: their next hop by the director's routes (as uvs places them), its
/// MAC by ARP, then a SYN to VIP:port inside the real's tunnel, as uvs encapsulates it.
fn check_tunnels(r: &mut Report, ifaces: &[Interface], targets: &[&Target]) -> Result<()> {
    use crate::control::placement::Placer;
    use crate::snapshot::Placement;
    println!("Tunnels (LVS-TUN reals):");
    let mut placer = Placer::new(ifaces.to_vec(), crate::model::MAX_REALS);
    placer.routes =
        crate::io::rtnetlink::dump_ipv4_routes().context("reading the routing table")?;
    for t in targets {
        let Some(encap) = t.tunnel() else { continue };
        let hop = match placer.next_hop(t.real, t.forward) {
            Ok(h) => h,
            Err(e) => {
                r.fail(format!("tunnel to {}: {e}", t.real));
                continue;
            }
        };
        let Some(ifc) = ifaces.get(usize::from(hop.egress)) else {
            continue;
        };
        let end = match placer.tunnel_end(t.real, hop) {
            Ok(e) => e,
            Err(e) => {
                r.fail(format!("tunnel to {}: {e}", t.real));
                continue;
            }
        };
        let source = Ipv4Addr::from(end.source);
        let via = placer
            .routes
            .iter()
            .filter(|x| crate::interfaces::same_network(x.dst, t.real, x.prefix_len))
            .max_by_key(|x| x.prefix_len)
            .and_then(|x| x.gateway)
            .unwrap_or(t.real);
        let fd = open_probe(&ifc.name, ifc.index)?;
        let src_for_arp = ifc.source_for(via).unwrap_or(source);
        let macs = resolve(&fd, ifc, src_for_arp, &[via])?;
        let Some(mac) = macs.get(&via).and_then(|m| m.first()).copied() else {
            r.fail(format!(
                "real server {} is not reachable: its next hop {via} does not answer ARP on {}",
                t.real, ifc.name
            ));
            continue;
        };
        let what = if via == t.real {
            format!("on-link at {mac}")
        } else {
            format!("via {via} ({mac})")
        };
        r.ok(format!(
            "real server {} reachable {what} on {}, tunnel source {source}, MTU {}",
            t.real, ifc.name, end.mtu
        ));
        if t.proto != Protocol::Tcp {
            r.info(format!(
                "real server {} on UDP {}:{}: not probed (no handshake to test)",
                t.real, t.vip, t.port
            ));
            continue;
        }
        let from = ProbeSource {
            interface: &ifc.name,
            ifindex: ifc.index,
            mac: ifc.mac,
            ip: source,
        };
        let to = crate::health::vip::TunnelTo {
            real: t.real,
            encap,
            end,
        };
        let kind = encap.kind.name();
        let reply =
            crate::health::vip::syn_through(&from, mac, Some(&to), t.vip, t.port, PROBE_WAIT)
                .with_context(|| format!("probing {} through its tunnel", t.real))?;
        match reply {
            SynReply::SynAck => r.ok(format!(
                "real server {} decapsulates {kind} and answers on VIP {}:{} (SYN-ACK)",
                t.real, t.vip, t.port
            )),
            SynReply::Rst => r.fail(format!(
                "real server {} decapsulates {kind} and has the VIP, but nothing listens on port {} (RST)",
                t.real, t.port
            )),
            SynReply::Nothing => r.fail(format!(
                "real server {} does not answer a SYN to {}:{} inside {kind}: is its tunnel end up                  (tunl0, or uvs tun-endpoint where the kernel has no ipip), rp_filter=0, the VIP on                  its loopback, and the service listening?",
                t.real, t.vip, t.port
            )),
        }
    }
    Ok(())
}

/// Services from the running daemon, if one answers.
fn from_daemon(location: SocketLocation) -> Result<Option<Vec<Target>>> {
    let mut b = SocketBackend { location };
    match b.call(&Request::Status) {
        Ok(Reply::Status(st)) => Ok(Some(
            st.services
                .iter()
                .flat_map(|s| {
                    s.reals.iter().map(|r| Target {
                        proto: s.key.proto,
                        vip: s.key.vip,
                        port: s.key.port,
                        real: r.addr,
                        forward: r.forward,
                    })
                })
                .collect(),
        )),
        Ok(other) => bail!("the running uvs answered Status with {other:?}"),
        Err(BackendError::NoDaemon(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn from_files(args: &DoctorArgs) -> Result<(Vec<Target>, Vec<String>)> {
    let run = crate::daemon::RunArgs {
        config: args.config.clone(),
        rules: args.rules.clone(),
        interfaces: args.interfaces.clone(),
        ..Default::default()
    };
    let cfg = crate::daemon::load_config(&run)?;
    let targets = cfg
        .services
        .services()
        .iter()
        .flat_map(|s| {
            s.reals.iter().map(|r| Target {
                proto: s.key.proto,
                vip: s.key.vip,
                port: s.key.port,
                real: r.addr,
                forward: r.forward,
            })
        })
        .collect();
    Ok((targets, cfg.interfaces))
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The offload features worth knowing about, from `ethtool -k`.
fn offloads(ifname: &str) -> String {
    let out = std::process::Command::new("ethtool")
        .args(["-k", ifname])
        .output();
    let Ok(out) = out else {
        return "ethtool not installed: offload state unknown".into();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let wanted = [
        "rx-checksumming",
        "tx-checksumming",
        "generic-segmentation-offload",
        "generic-receive-offload",
        "rx-vlan-offload",
    ];
    let found: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            wanted
                .contains(&k)
                .then(|| format!("{k} {}", v.split_whitespace().next().unwrap_or("?")))
        })
        .collect();
    if found.is_empty() {
        "offload state not reported by ethtool".into()
    } else {
        found.join(", ")
    }
}

/// Every IPv4 address configured on this namespace's interfaces, loopback included.
fn local_addresses() -> Vec<(String, Ipv4Addr)> {
    pnet_datalink::interfaces()
        .into_iter()
        .flat_map(|i| {
            let name = i.name.clone();
            i.ips.into_iter().filter_map(move |ip| match ip.ip() {
                std::net::IpAddr::V4(a) => Some((name.clone(), a)),
                _ => None,
            })
        })
        .collect()
}

fn arp_request(ifc: &Interface, src_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: ifc.mac.0,
        sender_ipv4: src_ip.octets(),
        target_mac: [0; 6],
        target_ipv4: target.octets(),
    };
    let mut out = Vec::with_capacity(42);
    // Writing into a Vec cannot fail.
    let _ = PacketBuilder::ethernet2(ifc.mac.0, MacAddr::BROADCAST.0)
        .arp(arp.into())
        .write(&mut out);
    out
}

/// An ARP reply's sender (IP, MAC), if `frame` is one.
fn arp_reply(frame: &[u8]) -> Option<(Ipv4Addr, MacAddr)> {
    if frame.len() < ETH_HDR_LEN || ethernet::ethertype(frame) != ETHERTYPE_ARP {
        return None;
    }
    let slice = etherparse::ArpPacketSlice::from_slice(&frame[ETH_HDR_LEN..]).ok()?;
    let arp = ArpEthIpv4Packet::try_from(slice.to_packet()).ok()?;
    (arp.operation == ArpOperation::REPLY)
        .then(|| (Ipv4Addr::from(arp.sender_ipv4), MacAddr(arp.sender_mac)))
}

/// Receives frames for `wait`, handing each to `f`.
fn collect(fd: &OwnedFd, wait: Duration, mut f: impl FnMut(&[u8])) {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 2048];
    let mut pfd = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        wait_readable(&mut pfd, left.as_millis().max(1) as i32);
        while let Ok(Some(n)) = recv_frame(fd.as_raw_fd(), &mut buf) {
            f(&buf[..n.min(buf.len())]);
        }
    }
}

/// ARP-resolves `addrs`; returns address → every MAC that answered.
fn resolve(
    fd: &OwnedFd,
    ifc: &Interface,
    src_ip: Ipv4Addr,
    addrs: &[Ipv4Addr],
) -> Result<BTreeMap<Ipv4Addr, Vec<MacAddr>>> {
    let mut seen: BTreeMap<Ipv4Addr, Vec<MacAddr>> = BTreeMap::new();
    for _ in 0..ARP_ROUNDS {
        for a in addrs {
            send_frame(fd.as_raw_fd(), &arp_request(ifc, src_ip, *a))
                .with_context(|| format!("sending an ARP request on {}", ifc.name))?;
        }
        collect(fd, PROBE_WAIT, |f| {
            if let Some((ip, mac)) = arp_reply(f) {
                if addrs.contains(&ip) {
                    let e = seen.entry(ip).or_default();
                    if !e.contains(&mac) {
                        e.push(mac);
                    }
                }
            }
        });
    }
    Ok(seen)
}

/// Runs every check and prints the findings; fails if any problem was found.
pub fn run(args: &DoctorArgs) -> Result<()> {
    let location = match &args.admin_socket {
        Some(p) => SocketLocation::Path(p.clone()),
        None => SocketLocation::Abstract,
    };
    let (targets, daemon_running, cfg_ifaces) = match from_daemon(location)? {
        Some(t) if args.config.is_none() && args.rules.is_none() => {
            println!("services: from the running uvs (admin socket)");
            (t, true, Vec::new())
        }
        running => {
            if args.config.is_none() && args.rules.is_none() {
                bail!("no uvs is running here and no --config/--rules was given: nothing to check");
            }
            let (t, ifs) = from_files(args)?;
            println!("services: from the files given");
            (t, running.is_some(), ifs)
        }
    };
    if targets.is_empty() {
        bail!("no real server is configured: nothing to probe");
    }
    let names = if args.interfaces.is_empty() {
        cfg_ifaces
    } else {
        args.interfaces.clone()
    };
    let mut r = Report::default();

    // The director's own setup.
    println!("director:");
    for n in &names {
        match read_trim(&format!("/sys/class/net/{n}/flags"))
            .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        {
            Some(flags) if flags & 1 != 0 => r.ok(format!("{n} is up")),
            Some(_) => r.fail(format!("{n} is down: ip link set {n} up")),
            None => r.fail(format!("{n} does not exist in this network namespace")),
        }
    }
    let ifaces = crate::interfaces::resolve(&names).context("the interfaces to probe")?;
    if names.is_empty() {
        for ifc in &ifaces {
            r.ok(format!("{} is up", ifc.name));
        }
    }
    for ifc in &ifaces {
        r.info(format!("offloads on {}: {}", ifc.name, offloads(&ifc.name)));
    }
    match read_trim("/proc/sys/net/ipv4/ip_forward").as_deref() {
        Some("0") => r.ok("ip_forward = 0"),
        Some(v) => r.warn(format!(
            "ip_forward = {v}: the director's kernel would also route service traffic to the \
             VIP (a duplicate of what uvs forwards); uvs's nftables table drops it while uvs \
             runs — set net.ipv4.ip_forward=0 unless the director is also a router"
        )),
        None => r.info("ip_forward unknown (no /proc/sys/net/ipv4/ip_forward)"),
    }
    let mut vips: Vec<Ipv4Addr> = targets.iter().map(|t| t.vip).collect();
    vips.sort();
    vips.dedup();
    let local = local_addresses();
    for vip in &vips {
        match local.iter().find(|(_, a)| a == vip) {
            Some((ifname, _)) => r.warn(format!(
                "VIP {vip} is configured on the director's kernel ({ifname}): it would answer \
                 clients itself (RST to a SYN, or its own ARP replies); uvs does not need it — \
                 remove it, or keep uvs's nftables table (kernel_filter = true) in place"
            )),
            None => r.ok(format!(
                "VIP {vip} is not configured on the director's kernel"
            )),
        }
    }
    let table = crate::kernel_filter::TABLE;
    match (daemon_running, crate::kernel_filter::installed()) {
        (true, Ok(Some(t))) => r.ok(format!(
            "kernel-copy suppression: nftables table {} {table} present",
            t.family
        )),
        (true, Ok(None)) => r.fail(format!(
            "uvs runs but its nftables table netdev (or, with a VIP MAC, ip) {table} is missing: \
             the director's kernel sees service traffic (kernel_filter = false)"
        )),
        (false, Ok(Some(t))) if t.owned => r.warn(format!(
            "no uvs answers here but an nftables table {} {table} is held by a running \
             process (a uvs with another --admin-socket?); it goes when that process ends",
            t.family
        )),
        (false, Ok(Some(t))) => r.warn(format!(
            "no uvs runs but an nftables table {0} {table} exists (left by a killed uvs from \
             before owner tables; the next start replaces it, or: nft delete table {0} {table})",
            t.family
        )),
        (false, Ok(None)) => r.info("no uvs runs: no nftables table expected"),
        (_, Err(e)) => r.warn(format!("cannot check the kernel-copy suppression: {e}")),
    }

    // The LAN, interface by interface (tunnelling reals are checked through their tunnels).
    for ifc in &ifaces {
        let here: Vec<&Target> = targets
            .iter()
            .filter(|t| ifc.source_for(t.real).is_some() && t.tunnel().is_none())
            .collect();
        let Some(src_ip) = here.first().and_then(|t| ifc.source_for(t.real)) else {
            continue;
        };
        println!("LAN on {} ({}, {src_ip}):", ifc.name, ifc.mac);
        let fd = open_probe(&ifc.name, ifc.index)?;
        let mut reals: Vec<Ipv4Addr> = here.iter().map(|t| t.real).collect();
        reals.sort();
        reals.dedup();
        let macs = resolve(&fd, ifc, src_ip, &reals)?;
        let mut rs_mac: BTreeMap<Ipv4Addr, MacAddr> = BTreeMap::new();
        for rs in &reals {
            match macs.get(rs).map(Vec::as_slice) {
                Some([m]) => {
                    r.ok(format!("real server {rs} answers ARP at {m}"));
                    rs_mac.insert(*rs, *m);
                }
                Some(ms) if !ms.is_empty() => {
                    r.fail(format!(
                        "real server {rs} is claimed by several MACs: {}",
                        ms.iter()
                            .map(|m| m.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    rs_mac.insert(*rs, ms[0]);
                }
                _ => r.fail(format!(
                    "real server {rs} does not answer ARP on {}: down, or not on this LAN",
                    ifc.name
                )),
            }
        }
        let mut here_vips: Vec<Ipv4Addr> = here.iter().map(|t| t.vip).collect();
        here_vips.sort();
        here_vips.dedup();
        let claims = resolve(&fd, ifc, src_ip, &here_vips)?;
        for vip in &here_vips {
            let others: Vec<MacAddr> = claims
                .get(vip)
                .map(|v| v.iter().copied().filter(|m| *m != ifc.mac).collect())
                .unwrap_or_default();
            if others.is_empty() {
                r.ok(format!("no other host answers ARP for VIP {vip}"));
            }
            for m in others {
                match rs_mac.iter().find(|(_, rm)| **rm == m) {
                    Some((rs, _)) => r.fail(format!(
                        "real server {rs} ({m}) answers ARP for VIP {vip}: set arp_ignore=1 \
                         and arp_announce=2 on it (sysctl net.ipv4.conf.all.arp_ignore=1 \
                         net.ipv4.conf.all.arp_announce=2, and on its LAN interface)"
                    )),
                    None => r.fail(format!(
                        "host {m} (not a configured real server) answers ARP for VIP {vip}: \
                         it would steal the VIP's traffic from the director"
                    )),
                }
            }
        }
        for t in &here {
            let Some(mac) = rs_mac.get(&t.real) else {
                continue;
            };
            if t.proto != Protocol::Tcp {
                r.info(format!(
                    "real server {} on UDP {}:{}: not probed (no handshake to test)",
                    t.real, t.vip, t.port
                ));
                continue;
            }
            let from = ProbeSource {
                interface: &ifc.name,
                ifindex: ifc.index,
                mac: ifc.mac,
                ip: src_ip,
            };
            let reply = syn_through_vip(&from, *mac, t.vip, t.port, PROBE_WAIT)
                .with_context(|| format!("probing {} on {}", t.real, ifc.name))?;
            match reply {
                SynReply::SynAck => r.ok(format!(
                    "real server {} answers on VIP {}:{} (SYN-ACK)",
                    t.real, t.vip, t.port
                )),
                SynReply::Rst => r.fail(format!(
                    "real server {} has the VIP but nothing listens on port {} (RST)",
                    t.real, t.port
                )),
                SynReply::Nothing => r.fail(format!(
                    "real server {} does not answer on VIP {}:{}: is the VIP on its loopback \
                     (ip addr add {}/32 dev lo) and is the service listening?",
                    t.real, t.vip, t.port, t.vip
                )),
            }
        }
    }
    let tunnelled: Vec<&Target> = targets.iter().filter(|t| t.tunnel().is_some()).collect();
    if !tunnelled.is_empty() {
        check_tunnels(&mut r, &ifaces, &tunnelled)?;
    }
    println!("{} problem(s), {} warning(s)", r.problems, r.warnings);
    if r.problems > 0 {
        bail!("{} problem(s) found", r.problems);
    }
    Ok(())
}
