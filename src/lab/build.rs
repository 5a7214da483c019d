//! Builds a lab from a [`LabSpec`], and `uvs lab up | down | status | check`.
//!
//! `lab up` builds the topology, starts the HTTP servers and the director, and returns,
//! leaving everything running. What it made is recorded as it is made in
//! `/run/uvs-lab/<prefix>/state.json` (namespaces; processes with PID and kernel start time),
//! so `lab down` removes exactly that, also after `lab up` crashed half-way. `lab down` signals
//! only recorded PIDs whose start time still matches (a recycled PID is left alone) and deletes
//! only recorded namespaces.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::addr::mac;
use super::spec::{HttpKind, LabSpec};
use super::{Iface, Lab, LabOptions, Topology, fmt_mac};

/// Where `uvs lab up` keeps its state and scratch files.
pub const STATE_ROOT: &str = "/run/uvs-lab";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcState {
    pub pid: u32,
    /// `/proc/PID/stat` field 22 at spawn (clock ticks since boot): guards against PID reuse.
    pub start_time: u64,
    pub what: String,
    /// Host (namespace without the prefix), command line (after `ip netns exec NS setsid`) and
    /// log, so `uvs lab start` can run it again after `uvs lab stop`.
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default)]
    pub log: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub prefix: String,
    pub dir: PathBuf,
    pub namespaces: Vec<String>,
    pub processes: Vec<ProcState>,
    /// Stopped by `uvs lab stop`, to be started again by `uvs lab start`.
    #[serde(default)]
    pub stopped: Vec<ProcState>,
}

impl LabState {
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        fs::rename(&tmp, path)?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<LabState> {
        let b = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Start time of a process (field 22 of /proc/PID/stat), `None` if it does not exist.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn alive(p: &ProcState) -> bool {
    proc_start_time(p.pid).is_some_and(|t| t == p.start_time)
}

/// [`alive`] and not a zombie (a process of a finished `lab up` is reaped by PID 1, which in
/// some containers never happens): what the grace-period waits poll.
fn running(p: &ProcState) -> bool {
    alive(p)
        && fs::read_to_string(format!("/proc/{}/stat", p.pid))
            .ok()
            .and_then(|s| {
                let rest = s[s.rfind(')')? + 1..].to_string();
                rest.split_whitespace().next().map(|st| st != "Z")
            })
            .unwrap_or(false)
}

/// Builds the namespaces, links, addresses, routes and DR real-server settings of `spec`
/// (no processes). `prefix` overrides the file's.
pub fn build_topology(spec: &LabSpec, prefix: Option<&str>, opts: &LabOptions) -> Result<Lab> {
    let prefix = prefix.unwrap_or(&spec.prefix);
    let lab = Lab::new(prefix, Topology::File)?;
    populate(lab, spec, opts)
}

pub(crate) fn populate(mut lab: Lab, spec: &LabSpec, opts: &LabOptions) -> Result<Lab> {
    lab.set_name(&spec.name);
    let has_switch = !spec.bridges.is_empty();
    for h in &spec.hosts {
        lab.add_ns(&h.name)?;
    }
    if has_switch {
        lab.add_ns("sw")?;
        // Bridge netfilter off, so malformed frames reach the director instead of being
        // dropped at the bridge.
        lab.sysctl(
            "sw",
            &[
                ("net.bridge.bridge-nf-call-iptables", "0"),
                ("net.bridge.bridge-nf-call-ip6tables", "0"),
                ("net.bridge.bridge-nf-call-arptables", "0"),
            ],
            true,
        )?;
    }
    for (bi, b) in spec.bridges.iter().enumerate() {
        let m = mac(super::addr::HOST_SW + bi as u8, 0);
        lab.ip(
            "sw",
            &[
                "link",
                "add",
                &b.name,
                "address",
                &fmt_mac(m),
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
        lab.ifaces.push(Iface {
            host: "sw".into(),
            name: b.name.clone(),
            mac: m,
        });
        lab.ip("sw", &["link", "set", &b.name, "up"])?;
    }

    // Links: bridge ports in declaration order (port MAC 02:..:f0:<n>), veth pairs once.
    let mut port_no = 0u8;
    let mut made: Vec<(String, String)> = Vec::new();
    for h in &spec.hosts {
        let hid = spec.host_id(&h.name);
        let bridge_ports = h.interfaces.iter().filter(|i| i.bridge.is_some()).count();
        for (ifno, i) in h.interfaces.iter().enumerate() {
            let m = mac(hid, ifno as u8);
            if let Some(b) = &i.bridge {
                port_no += 1;
                let bi = spec.bridges.iter().position(|x| &x.name == b).unwrap_or(0);
                let port = if bridge_ports == 1 {
                    h.name.clone()
                } else {
                    format!("{}-{}", h.name, i.name)
                };
                let port: String = port.chars().take(15).collect();
                let pm = mac(super::addr::HOST_SW + bi as u8, port_no);
                lab.veth(&h.name, &i.name, m, "sw", &port, pm)?;
                lab.ip("sw", &["link", "set", &port, "master", b, "up"])?;
                continue;
            }
            if made.contains(&(h.name.clone(), i.name.clone())) {
                continue;
            }
            // The other end: named by `peer`, or the interface whose `peer` names this one.
            let (ph, pi) = match &i.peer {
                Some(p) => {
                    let (a, b) = p.split_once(':').context("peer")?;
                    (a.to_string(), b.to_string())
                }
                None => spec
                    .hosts
                    .iter()
                    .find_map(|o| {
                        o.interfaces
                            .iter()
                            .find(|oi| {
                                oi.peer.as_deref() == Some(&format!("{}:{}", h.name, i.name))
                            })
                            .map(|oi| (o.name.clone(), oi.name.clone()))
                    })
                    .context("unlinked interface")?,
            };
            let po = spec
                .host(&ph)
                .and_then(|o| o.interfaces.iter().position(|x| x.name == pi))
                .context("peer interface")?;
            let pm = mac(spec.host_id(&ph), po as u8);
            lab.veth(&h.name, &i.name, m, &ph, &pi, pm)?;
            made.push((ph, pi));
        }
    }

    // Real servers: ARP sysctls before any address exists, or the RS answers ARP for the VIP
    // in between.
    for h in spec.hosts.iter().filter(|h| !h.vips.is_empty()) {
        let mut kv: Vec<(String, String)> = vec![
            ("net.ipv4.conf.all.arp_ignore".into(), "1".into()),
            ("net.ipv4.conf.all.arp_announce".into(), "2".into()),
        ];
        for i in &h.interfaces {
            kv.push((format!("net.ipv4.conf.{}.arp_ignore", i.name), "1".into()));
            kv.push((format!("net.ipv4.conf.{}.arp_announce", i.name), "2".into()));
        }
        let kv: Vec<(&str, &str)> = kv.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        lab.sysctl(&h.name, &kv, false)?;
    }
    for h in &spec.hosts {
        for i in &h.interfaces {
            match &i.addr {
                Some(a) => lab.addr_up(&h.name, &i.name, a)?,
                None => lab.ip(&h.name, &["link", "set", &i.name, "up"])?,
            }
        }
    }
    for h in &spec.hosts {
        if h.forward {
            lab.sysctl(&h.name, &[("net.ipv4.ip_forward", "1")], false)?;
        } else if spec.directors.iter().any(|d| d.host == h.name) {
            // Explicit, so a distro default cannot turn the director into a kernel router.
            lab.sysctl(&h.name, &[("net.ipv4.ip_forward", "0")], false)?;
        }
    }
    for h in &spec.hosts {
        if let Some(gw) = h.gateway {
            lab.ip(
                &h.name,
                &["route", "add", "default", "via", &gw.to_string()],
            )?;
        }
    }
    for h in &spec.hosts {
        for v in &h.vips {
            lab.ip(&h.name, &["addr", "add", &format!("{v}/32"), "dev", "lo"])?;
        }
    }
    if !opts.offloads {
        lab.disable_offloads()?;
    }
    Ok(lab)
}

/// Starts the HTTP servers of `spec` (each answering its body, by default the host name).
pub fn start_http_servers(lab: &mut Lab, spec: &LabSpec, uvs_exe: &Path) -> Result<()> {
    for h in &spec.hosts {
        let Some(kind) = h.http else { continue };
        let body = h.http_body.clone().unwrap_or_else(|| h.name.clone());
        let port = h.http_port.unwrap_or(80);
        let nginx = kind == HttpKind::Nginx;
        if h.http_proxy_protocol {
            lab.start_http_proxied(&h.name, &body, port, nginx, uvs_exe)
        } else {
            lab.start_http_on(&h.name, &body, port, nginx, uvs_exe)
        }
        .with_context(|| format!("HTTP server on {}", h.name))?;
    }
    Ok(())
}

/// Sets up the tunnel ends of the lab's LVS-TUN real servers (`tunnel = true`): with the
/// kernel's `ipip` (its `tunl0` exists in every namespace) `tunl0` up, as the seeds do, and
/// `ip fou add port N gue` for GUE; without it, `uvs tun-endpoint` on the host's first
/// interface, which creates the `tunl0` stand-in. `rp_filter` 0 everywhere either way: the
/// client is not routed via tunl0.
pub fn start_tunnel_ends(lab: &mut Lab, spec: &LabSpec, uvs_exe: &Path) -> Result<()> {
    for h in spec.hosts.iter().filter(|h| h.tunnel) {
        let mut kv: Vec<String> = vec![
            "net.ipv4.conf.all.rp_filter".into(),
            "net.ipv4.conf.default.rp_filter".into(),
        ];
        kv.extend(
            h.interfaces
                .iter()
                .map(|i| format!("net.ipv4.conf.{}.rp_filter", i.name)),
        );
        let kv: Vec<(&str, &str)> = kv.iter().map(|k| (k.as_str(), "0")).collect();
        lab.sysctl(&h.name, &kv, false)?;
        let kernel_tunl0 = lab
            .exec(&h.name, &["ip", "link", "show", "tunl0"])?
            .status
            .success();
        if kernel_tunl0 {
            lab.ip(&h.name, &["link", "set", "tunl0", "up"])?;
            if let Some(port) = h.tunnel_gue_port {
                lab.ip(&h.name, &["fou", "add", "port", &port.to_string(), "gue"])
                    .context("GUE needs the fou module")?;
            }
            if lab
                .exec(&h.name, &["ip", "link", "show", "gre0"])?
                .status
                .success()
            {
                lab.ip(&h.name, &["link", "set", "gre0", "up"])?;
                lab.sysctl(&h.name, &[("net.ipv4.conf.gre0.rp_filter", "0")], false)?;
            }
        } else {
            let ifname = h
                .interfaces
                .first()
                .map(|i| i.name.as_str())
                .unwrap_or("eth0");
            let exe = super::path_str(uvs_exe)?.to_string();
            let log = lab.dir().join(format!("{}-tun-endpoint.log", h.name));
            let mut args = vec![
                exe,
                "tun-endpoint".into(),
                "--interface".into(),
                ifname.into(),
            ];
            if let Some(port) = h.tunnel_gue_port {
                args.extend(["--gue-port".into(), port.to_string()]);
            }
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let pid = lab.spawn(&h.name, &a, &log)?;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if lab
                    .exec(&h.name, &["ip", "link", "show", "tunl0"])?
                    .status
                    .success()
                {
                    break;
                }
                if !lab.is_running(pid) || Instant::now() > deadline {
                    bail!(
                        "uvs tun-endpoint on {} did not create tunl0:\n{}",
                        h.name,
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        lab.sysctl(&h.name, &[("net.ipv4.conf.tunl0.rp_filter", "0")], false)?;
    }
    Ok(())
}

/// Writes each director's inline files (rules, TOML, ldirectord.cf, keepalived.conf) into the
/// lab directory and starts the directors in order, each waiting until ready; returns their
/// PIDs and command lines (for display). With one director the files are `rules`,
/// `uvs.toml`, ... and the log `director.log`; with several, `<host>-rules`, ... and
/// `<host>-director.log`.
pub fn start_directors(
    lab: &mut Lab,
    spec: &LabSpec,
    uvs_exe: &Path,
) -> Result<Vec<(u32, String)>> {
    if spec.directors.is_empty() {
        bail!("the lab file has no [director]");
    }
    let several = spec.directors.len() > 1;
    let mut started = Vec::new();
    for d in &spec.directors {
        let name = |f: &str| {
            if several {
                format!("{}-{f}", d.host)
            } else {
                f.to_string()
            }
        };
        let mut args: Vec<String> = Vec::new();
        for (opt, file, text) in d.files() {
            let path = lab.dir().join(name(file));
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            args.push(opt.to_string());
            args.push(super::path_str(&path)?.to_string());
        }
        args.extend(d.args.iter().cloned());
        let shown = format!("uvs run {}", args.join(" "));
        let log = lab.dir().join(name("director.log"));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = lab
            .start_director_in(&d.host, uvs_exe, &a, &log)
            .with_context(|| format!("director on {}", d.host))?;
        started.push((pid, format!("{}: {shown}", d.host)));
    }
    Ok(started)
}

/// Runs the lab file's smoke check: `requests` sequential GETs, every body among `expect`,
/// every `expect` seen. Returns the bodies.
pub fn smoke(lab: &Lab, spec: &LabSpec) -> Result<Vec<String>> {
    let s = spec.smoke.as_ref().context("the lab file has no [smoke]")?;
    let mut got = Vec::new();
    for _ in 0..s.requests {
        let body = lab.curl(&s.from, &s.url, &[])?;
        got.push(body.trim().to_string());
    }
    check_bodies(&got, &s.expect)?;
    Ok(got)
}

fn check_bodies(got: &[String], expect: &[String]) -> Result<()> {
    if let Some(b) = got.iter().find(|b| !expect.contains(b)) {
        bail!("unexpected answer {b:?} (expected one of {expect:?}); all: {got:?}");
    }
    if let Some(e) = expect.iter().find(|e| !got.contains(e)) {
        bail!("{e} never answered; answers: {got:?}");
    }
    Ok(())
}

fn state_dir(prefix: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(prefix.trim_end_matches(['-', '_']))
}

/// `uvs lab up FILE`: build, start servers and director, record, return.
pub fn up(file: &Path, prefix: Option<&str>, uvs_exe: &Path) -> Result<()> {
    let spec = LabSpec::load(file)?;
    let prefix = prefix.unwrap_or(&spec.prefix).to_string();
    let dir = state_dir(&prefix);
    let state = dir.join("state.json");
    if state.exists() {
        bail!(
            "lab {} (prefix {prefix}) is already up ({}): `uvs lab down {}` first",
            spec.name,
            state.display(),
            file.display()
        );
    }
    fs::create_dir_all(STATE_ROOT).with_context(|| format!("creating {STATE_ROOT}"))?;
    let mut lab = Lab::new_in(&prefix, Topology::File, dir.clone(), Some(state.clone()))?;
    lab.keep_dir(false);
    lab.save_state();
    let result = (|| -> Result<Lab> {
        let mut lab = populate(lab, &spec, &LabOptions::default())?;
        start_tunnel_ends(&mut lab, &spec, uvs_exe)?;
        start_http_servers(&mut lab, &spec, uvs_exe)?;
        if !spec.directors.is_empty() {
            for (pid, shown) in start_directors(&mut lab, &spec, uvs_exe)? {
                println!("director {shown} (pid {pid})");
            }
        }
        Ok(lab)
    })();
    // `populate` consumed the lab: on error it was dropped (torn down) already.
    let lab = result?;
    println!(
        "lab {} is up: namespaces {}",
        spec.name,
        lab.namespaces().join(" ")
    );
    let d = spec.directors.first().map_or("dir", |d| d.host.as_str());
    println!(
        "  state {}; logs in {}\n  try: ip netns exec {prefix}{d} uvsadm -Ln\n       ip netns exec {prefix}{d} uvs trace\n  remove: uvs lab down {}",
        state.display(),
        dir.display(),
        file.display()
    );
    lab.detach();
    Ok(())
}

/// `uvs lab down FILE`: remove what `lab up` recorded.
pub fn down(file: &Path, prefix: Option<&str>) -> Result<()> {
    let spec = LabSpec::load(file)?;
    let prefix = prefix.unwrap_or(&spec.prefix).to_string();
    let dir = state_dir(&prefix);
    let state_path = dir.join("state.json");
    if !state_path.exists() {
        println!("lab {} (prefix {prefix}) is not up", spec.name);
        return Ok(());
    }
    let st = LabState::load(&state_path)?;
    teardown_recorded(&st);
    if st.dir == dir {
        let _ = fs::remove_dir_all(&dir);
    } else {
        let _ = fs::remove_file(&state_path);
    }
    println!("lab {} is down", spec.name);
    Ok(())
}

/// Kills recorded processes (SIGTERM to their group, SIGKILL after 2 s) whose start time
/// matches, then deletes the recorded namespaces.
pub fn teardown_recorded(st: &LabState) {
    let live: Vec<&ProcState> = st.processes.iter().filter(|p| alive(p)).collect();
    for p in &live {
        signal(p.pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && live.iter().any(|p| running(p)) {
        thread::sleep(Duration::from_millis(20));
    }
    for p in &live {
        // The group id is the recorded PID (setsid); only while that process is still the
        // one we started, or its group may be someone else's.
        if alive(p) {
            signal(p.pid, libc::SIGKILL);
        }
    }
    for ns in st.namespaces.iter().rev() {
        if !ns.starts_with(&st.prefix) {
            continue;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
}

/// Signals a recorded PID whose start time was just checked, and its group (it is a group
/// leader: setsid).
fn signal(pid: u32, sig: libc::c_int) {
    crate::io::process::signal_group(pid, sig);
    crate::io::process::signal(pid, sig);
}

fn load_up(file: &Path, prefix: Option<&str>) -> Result<(LabSpec, PathBuf, LabState)> {
    let spec = LabSpec::load(file)?;
    let prefix = prefix.unwrap_or(&spec.prefix).to_string();
    let state_path = state_dir(&prefix).join("state.json");
    if !state_path.exists() {
        bail!("lab {} (prefix {prefix}) is not up", spec.name);
    }
    let st = LabState::load(&state_path)?;
    Ok((spec, state_path, st))
}

/// `uvs lab stop FILE HOST [--kill]`: stops the recorded processes of `host` (its HTTP server,
/// its director) — SIGTERM to the group with 2 s grace, or SIGKILL at once with `kill` (a
/// crash) — and remembers them for `uvs lab start`.
pub fn stop(file: &Path, prefix: Option<&str>, host: &str, kill: bool) -> Result<()> {
    let (spec, state_path, mut st) = load_up(file, prefix)?;
    if spec.host(host).is_none() {
        bail!("lab {} has no host {host}", spec.name);
    }
    let (mine, rest): (Vec<ProcState>, Vec<ProcState>) = st
        .processes
        .drain(..)
        .partition(|p| p.host == host || p.what.starts_with(&format!("{host}: ")));
    st.processes = rest;
    if mine.is_empty() {
        println!("nothing of {host} is running");
    }
    let live: Vec<&ProcState> = mine.iter().filter(|p| alive(p)).collect();
    for p in &live {
        signal(p.pid, if kill { libc::SIGKILL } else { libc::SIGTERM });
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && live.iter().any(|p| running(p)) {
        thread::sleep(Duration::from_millis(20));
    }
    for p in &live {
        if alive(p) {
            signal(p.pid, libc::SIGKILL);
        }
    }
    for p in &mine {
        println!(
            "stopped {} (pid {}{})",
            p.what,
            p.pid,
            if kill { ", SIGKILL" } else { "" }
        );
    }
    st.stopped
        .extend(mine.into_iter().filter(|p| !p.argv.is_empty()));
    st.save(&state_path)
}

/// `uvs lab start FILE HOST`: starts again what `uvs lab stop` stopped on `host`, recorded as
/// before. A director is waited for (its ready file), up to 10 s.
pub fn start(file: &Path, prefix: Option<&str>, host: &str) -> Result<()> {
    let (spec, state_path, mut st) = load_up(file, prefix)?;
    let (mine, rest): (Vec<ProcState>, Vec<ProcState>) =
        st.stopped.drain(..).partition(|p| p.host == host);
    st.stopped = rest;
    if mine.is_empty() {
        bail!("nothing of {host} was stopped with `uvs lab stop`");
    }
    let ns = format!("{}{host}", st.prefix);
    if spec.host(host).is_none() || !Path::new("/run/netns").join(&ns).exists() {
        bail!("no namespace {ns}");
    }
    for p in mine {
        let ready = p
            .argv
            .iter()
            .position(|a| a == "--ready-file")
            .and_then(|i| p.argv.get(i + 1))
            .map(PathBuf::from);
        if let Some(r) = &ready {
            let _ = fs::remove_file(r);
        }
        let log = p
            .log
            .clone()
            .unwrap_or_else(|| st.dir.join(format!("{host}.log")));
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "setsid"])
            .args(&p.argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {:?}", p.argv))?;
        let pid = child.id();
        // Recorded at once, so `lab down` removes it even if we fail below. Dropping the
        // `Child` neither waits for nor kills it.
        st.processes.push(ProcState {
            pid,
            start_time: proc_start_time(pid).unwrap_or(0),
            ..p.clone()
        });
        st.save(&state_path)?;
        drop(child);
        if let Some(r) = ready {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !r.exists() {
                if Instant::now() > deadline {
                    bail!(
                        "{} not ready after 10 s; log tail:\n{}",
                        p.what,
                        super::tail(&log, 20)
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        println!("started {} (pid {pid})", p.what);
    }
    Ok(())
}

/// `uvs lab status FILE`.
pub fn status(file: &Path, prefix: Option<&str>) -> Result<bool> {
    let spec = LabSpec::load(file)?;
    let prefix = prefix.unwrap_or(&spec.prefix).to_string();
    let state_path = state_dir(&prefix).join("state.json");
    if !state_path.exists() {
        println!("lab {} (prefix {prefix}): down", spec.name);
        return Ok(false);
    }
    let st = LabState::load(&state_path)?;
    let mut all = true;
    println!(
        "lab {} (prefix {prefix}): up, state {}",
        st.name,
        state_path.display()
    );
    for ns in &st.namespaces {
        let ok = Path::new("/run/netns").join(ns).exists();
        all &= ok;
        println!(
            "  netns   {ns:<24} {}",
            if ok { "present" } else { "MISSING" }
        );
    }
    for p in &st.processes {
        let ok = running(p);
        all &= ok;
        println!(
            "  process {:<24} pid {:<8} {}",
            p.what,
            p.pid,
            if ok { "running" } else { "EXITED" }
        );
    }
    for p in &st.stopped {
        println!(
            "  process {:<24} stopped (`uvs lab start {} {}`)",
            p.what,
            file.display(),
            p.host
        );
    }
    Ok(all)
}

/// `uvs lab check FILE`: the smoke check against a lab that is up.
pub fn check(file: &Path, prefix: Option<&str>) -> Result<()> {
    let spec = LabSpec::load(file)?;
    let prefix = prefix.unwrap_or(&spec.prefix).to_string();
    let s = spec.smoke.as_ref().context("the lab file has no [smoke]")?;
    let ns = format!("{prefix}{}", s.from);
    let mut got = Vec::new();
    for i in 1..=s.requests {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "curl", "-sS", "--noproxy", "*"])
            .args(["--max-time", "5", &s.url])
            .stdin(Stdio::null())
            .output()
            .context("running curl")?;
        if !out.status.success() {
            bail!(
                "request {i} to {} failed: {}",
                s.url,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("request {i} -> {body}");
        got.push(body);
    }
    check_bodies(&got, &s.expect)?;
    println!("smoke check passed: every expected server answered");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_and_of_nobody() {
        assert!(proc_start_time(std::process::id()).is_some());
        assert!(proc_start_time(u32::MAX - 1).is_none());
    }

    #[test]
    fn bodies_must_cover_expect() {
        let e = vec!["rs1".to_string(), "rs2".to_string()];
        assert!(check_bodies(&["rs1".into(), "rs2".into()], &e).is_ok());
        assert!(check_bodies(&["rs1".into(), "rs1".into()], &e).is_err());
        assert!(check_bodies(&["rs1".into(), "x".into(), "rs2".into()], &e).is_err());
    }
}
