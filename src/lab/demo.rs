//! `uvs demo`: builds the DR lab, puts uvs in front of two web servers, sends a few requests and
//! explains, from packet captures, how one request travelled. Everything is torn down at the
//! end, on error, and on Ctrl-C / SIGTERM.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::build::{start_directors, start_http_servers, start_tunnel_ends};
use super::spec::{DR_ROUTER, LabSpec};
use super::{Lab, LabOptions, addr, build_dr_lab};

fn install_signal_handlers() -> Result<()> {
    crate::io::signals::install_stop().context("sigaction")
}

fn check_interrupted() -> Result<()> {
    if crate::io::signals::stop_requested() {
        bail!("interrupted; tearing the lab down");
    }
    Ok(())
}

const REQUESTS: usize = 6;

/// Runs the demo with `uvs_exe` (normally `std::env::current_exe()`) as the director binary.
pub fn run(uvs_exe: &Path) -> Result<()> {
    install_signal_handlers()?;
    let prefix = format!("uvsdemo{}-", std::process::id() % 10000);
    println!("building the DR lab (namespaces {prefix}*) ...");
    let spec = LabSpec::parse(DR_ROUTER)?;
    let mut lab = build_dr_lab(&prefix, &LabOptions::default())?;
    let result = run_in(&mut lab, &spec, uvs_exe);
    if result.is_err() && !crate::io::signals::stop_requested() {
        // A failed demo is worth debugging: keep the logs and captures (path printed).
        lab.keep_dir(true);
    }
    lab.teardown();
    result
}

fn run_in(lab: &mut Lab, spec: &LabSpec, uvs_exe: &Path) -> Result<()> {
    println!("{}", diagram(lab)?);
    check_interrupted()?;

    start_tunnel_ends(lab, spec, uvs_exe)?;
    start_http_servers(lab, spec, uvs_exe)?;
    check_interrupted()?;
    println!("web servers answering on rs1 and rs2");

    let captures = [
        ("router", "eth0"),
        ("router", "eth1"),
        ("rs1", "eth0"),
        ("rs2", "eth0"),
    ];
    let mut pcaps: Vec<(String, PathBuf, u32)> = Vec::new();
    for (host, ifname) in captures {
        let pcap = lab.dir().join(format!("{host}-{ifname}.pcap"));
        let pid = lab.tcpdump_start(host, ifname, "tcp port 80", &pcap)?;
        pcaps.push((format!("{host}/{ifname}"), pcap, pid));
        check_interrupted()?;
    }

    let vip = addr::VIP;
    let rules = lab.dir().join("rules");
    println!(
        "starting the director: uvs run --interface eth0 --rules {} --metrics off",
        rules.display()
    );
    start_directors(lab, spec, uvs_exe)?;
    let log = lab.dir().join("director.log");
    check_interrupted()?;

    let url = format!("http://{vip}/");
    let mut seen = [false; 2];
    for i in 1..=REQUESTS {
        check_interrupted()?;
        match lab.curl("client", &url, &[]) {
            Ok(body) => {
                let who = body.trim();
                println!("request {i} -> {who}");
                match who {
                    "rs1" => seen[0] = true,
                    "rs2" => seen[1] = true,
                    _ => {}
                }
            }
            Err(e) => println!("request {i} -> failed: {e:#}"),
        }
    }

    // Captures are written per packet (-U); the pause lets the last ACK/FIN land first.
    thread::sleep(Duration::from_millis(300));
    for (_, _, pid) in &pcaps {
        lab.kill(*pid);
    }
    check_interrupted()?;

    match explain_flow(lab, &pcaps) {
        Ok(text) => println!("\n{text}"),
        Err(e) => println!("\n(could not annotate a packet flow: {e:#})"),
    }

    if !seen[0] || !seen[1] {
        bail!(
            "not every real server answered (rs1: {}, rs2: {}); director log tail:\n{}",
            seen[0],
            seen[1],
            super::tail(&log, 30)
        );
    }
    println!("both real servers answered; tearing down");
    Ok(())
}

fn diagram(lab: &Lab) -> Result<String> {
    let m = |h: &str, i: &str| lab.mac_str(h, i);
    Ok(format!(
        "\n  client {c} ({cm})\n     |\n  router {r0} ({rm0}) / {r1} ({rm1})\n     |\n  \
         bridge -- director {d} ({dm})\n         -- rs1 {s1} ({sm1}), VIP {vip} on lo\n         \
         -- rs2 {s2} ({sm2}), VIP {vip} on lo\n",
        c = addr::CLIENT,
        cm = m("client", "eth0")?,
        r0 = addr::ROUTER_CLIENT,
        rm0 = m("router", "eth0")?,
        r1 = addr::ROUTER_LAN,
        rm1 = m("router", "eth1")?,
        d = addr::DIRECTOR,
        dm = m("dir", "eth0")?,
        s1 = addr::RS1,
        sm1 = m("rs1", "eth0")?,
        s2 = addr::RS2,
        sm2 = m("rs2", "eth0")?,
        vip = addr::VIP,
    ))
}

/// One Ethernet/IPv4/TCP line of `tcpdump -n -e -r`.
#[derive(Debug, Clone)]
struct Pkt {
    src_mac: String,
    dst_mac: String,
    src: String,
    dst: String,
    flags: String,
    line: String,
}

fn parse_line(line: &str) -> Option<Pkt> {
    // "TS SRCMAC > DSTMAC, ethertype IPv4 (0x0800), length 74: A.p > B.q: Flags [S], ..."
    let mut t = line.split_whitespace();
    let _ts = t.next()?;
    let src_mac = t.next()?.to_string();
    let _gt = t.next()?;
    let dst_mac = t.next()?.trim_end_matches(',').to_string();
    let (_, l3) = line.split_once("length ")?;
    let (_, l3) = l3.split_once(": ")?;
    let mut u = l3.split_whitespace();
    let src = u.next()?.to_string();
    let _gt = u.next()?;
    let dst = u.next()?.trim_end_matches(':').to_string();
    let flags = l3
        .split_once("Flags [")
        .and_then(|(_, r)| r.split_once(']'))
        .map(|(f, _)| f.to_string())
        .unwrap_or_default();
    Some(Pkt {
        src_mac,
        dst_mac,
        src,
        dst,
        flags,
        line: line.to_string(),
    })
}

fn explain_flow(lab: &Lab, pcaps: &[(String, PathBuf, u32)]) -> Result<String> {
    let read = |name: &str| -> Result<Vec<Pkt>> {
        let (_, p, _) = pcaps
            .iter()
            .find(|(n, _, _)| n == name)
            .with_context(|| format!("no capture {name}"))?;
        Ok(lab
            .tcpdump_read(p)?
            .iter()
            .filter_map(|l| parse_line(l))
            .collect())
    };
    let r0 = read("router/eth0")?;
    let r1 = read("router/eth1")?;
    let rs = [("rs1", read("rs1/eth0")?), ("rs2", read("rs2/eth0")?)];

    let vip_ep = format!("{}.80", addr::VIP);
    let syn = |p: &Pkt| p.flags == "S";
    let synack = |p: &Pkt| p.flags == "S.";
    let first = r0
        .iter()
        .find(|p| syn(p) && p.dst == vip_ep)
        .context("no SYN to the VIP captured on router/eth0")?;
    let client_ep = first.src.clone();

    let client_mac = lab.mac_str("client", "eth0")?;
    let router0 = lab.mac_str("router", "eth0")?;
    let router1 = lab.mac_str("router", "eth1")?;
    let dir_mac = lab.mac_str("dir", "eth0")?;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "packet flow of one request (TCP SYN from {client_ep}, and the RS's SYN-ACK):"
    );
    let mut step = |n: u32, hop: &str, p: Option<&Pkt>, ok: bool, why: &str| {
        let _ = match p {
            Some(p) => writeln!(
                out,
                "{n}. {hop:<20} {} > {}  {} > {} [{}]\n   {} {why}",
                p.src_mac,
                p.dst_mac,
                p.src,
                p.dst,
                p.flags,
                if ok { "ok:" } else { "UNEXPECTED:" }
            ),
            None => writeln!(out, "{n}. {hop:<20} (not captured) {why}"),
        };
    };

    step(
        1,
        "client -> router",
        Some(first),
        first.src_mac == client_mac && first.dst_mac == router0,
        "the client sends to its default gateway's MAC.",
    );
    let hop2 = r1
        .iter()
        .find(|p| syn(p) && p.src == client_ep && p.src_mac == router1);
    step(
        2,
        "router -> director",
        hop2,
        hop2.is_some_and(|p| p.dst_mac == dir_mac),
        &format!(
            "the router resolved the VIP {} by ARP and uvs answered with the director's MAC {dir_mac}.",
            addr::VIP
        ),
    );
    // Match on the destination MAC as well: until a real server has sent a frame the bridge
    // has not learned its port and floods, so the other RS's capture sees a copy too.
    let mut picked = None;
    for (name, pk) in &rs {
        let m = lab.mac_str(name, "eth0")?;
        if let Some(p) = pk
            .iter()
            .find(|p| syn(p) && p.src == client_ep && p.dst_mac == m)
        {
            picked = Some((*name, p));
            break;
        }
    }
    match picked {
        Some((name, p)) => {
            let rs_mac = lab.mac_str(name, "eth0")?;
            step(
                3,
                &format!("director -> {name}"),
                Some(p),
                p.src_mac == dir_mac && p.dst_mac == rs_mac,
                &format!(
                    "DR: uvs rewrote only the MACs (dst = {name}'s {rs_mac}, src = its own); \
                     IP dst is still the VIP, which {name} owns on lo."
                ),
            );
            let reply = rs[if name == "rs1" { 0 } else { 1 }]
                .1
                .iter()
                .find(|p| synack(p) && p.dst == client_ep);
            step(
                4,
                &format!("{name} -> router"),
                reply,
                reply.is_some_and(|p| p.src_mac == rs_mac && p.dst_mac == router1),
                &format!(
                    "the reply comes from the VIP and goes straight to the default gateway \
                     ({router1}), not via the director."
                ),
            );
            let seen = r1
                .iter()
                .find(|p| synack(p) && p.dst == client_ep && p.src_mac == rs_mac);
            step(
                5,
                "router (eth1) sees",
                seen,
                seen.is_some(),
                "the router receives the reply directly from the real server.",
            );
        }
        None => step(
            3,
            "director -> RS",
            None,
            false,
            "neither rs1 nor rs2 saw the SYN: the director did not forward it.",
        ),
    }
    let _ = writeln!(
        out,
        "\nMACs: client {client_mac}, router {router0}/{router1}, director {dir_mac}, rs1 {}, rs2 {}",
        lab.mac_str("rs1", "eth0")?,
        lab.mac_str("rs2", "eth0")?
    );
    if log::log_enabled!(log::Level::Debug) {
        for p in r0.iter().chain(&r1) {
            log::debug!("{}", p.line);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcpdump_e_line() {
        let l = "12:00:00.000001 02:00:00:00:10:00 > 02:00:00:00:01:00, ethertype IPv4 (0x0800), \
                 length 74: 172.30.0.10.41234 > 10.0.0.100.80: Flags [S], seq 1, win 64240, length 0";
        let p = parse_line(l).unwrap();
        assert_eq!(p.src_mac, "02:00:00:00:10:00");
        assert_eq!(p.dst_mac, "02:00:00:00:01:00");
        assert_eq!(p.src, "172.30.0.10.41234");
        assert_eq!(p.dst, "10.0.0.100.80");
        assert_eq!(p.flags, "S");
    }
}
