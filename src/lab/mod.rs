//! Network-namespace labs for trying and testing uvs: the topologies (see `topology.rs` for
//! the diagrams), built-in test responders, and the `uvs demo` walk-through.
//!
//! Everything a [`Lab`] creates (namespaces, veths, bridges, processes, a scratch directory) is
//! owned by it and removed by [`Lab::teardown`], which `Drop` also runs, so an error or a panic
//! (with unwinding) leaves nothing behind. Veth pairs are created directly inside the lab's
//! namespaces (`ip -n A link add ... peer ... netns B`), so the host's namespace never sees
//! them. Processes are started in their own session (`setsid`) and killed only by the PID (and
//! process group) recorded at spawn time.

pub mod build;
pub mod demo;
pub mod inject;
pub mod responder;
pub mod spec;
mod topology;
pub mod tunl0;

pub use topology::{build_dr_lab, build_tun_lab, build_two_arm_lab};

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Addresses and MACs of the lab topologies. All from private ranges.
pub mod addr {
    use std::net::Ipv4Addr;

    /// The virtual IP of the DR lab.
    pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

    /// DR lab ("the seeds' lab"): client side.
    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 10);
    pub const ROUTER_CLIENT: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
    /// DR lab: LAN side.
    pub const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    pub const DIRECTOR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    pub const RS1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
    pub const RS2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
    pub const CLIENT_PREFIX_LEN: u8 = 24;
    pub const LAN_PREFIX_LEN: u8 = 24;

    /// Two-arm lab (the kernel's IPVS DR selftest shape and addresses, except the VIP: the
    /// selftest's is a public address, this one is private).
    pub mod two_arm {
        use std::net::Ipv4Addr;
        /// On the client's bridge `br0`.
        pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
        /// Director `veth10` (the selftest's gateway address, `gip`).
        pub const DIRECTOR_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
        /// Director `veth12` (`dip`).
        pub const DIRECTOR_RS: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
        /// rs1 `veth21`, the real server address (`rip`).
        pub const RS1: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
        /// rs1 `veth20` on the client's segment (`sip`): the way its replies go back.
        pub const RS1_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
        pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 110);
    }

    /// Host numbers used in MACs: equal to the host's last address octet where it has one on
    /// the LAN, so `02:00:00:00:11:00` reads as "rs1 (10.0.0.11), eth0" in tcpdump.
    pub const HOST_CLIENT: u8 = 0x10;
    pub const HOST_ROUTER: u8 = 0x01;
    pub const HOST_DIR: u8 = 0x02;
    pub const HOST_RS1: u8 = 0x11;
    pub const HOST_RS2: u8 = 0x12;
    /// The switch namespace: bridge ports and the bridge itself.
    pub const HOST_SW: u8 = 0xf0;

    /// Locally administered, unicast MAC `02:00:00:00:<host>:<if>`.
    pub const fn mac(host: u8, ifno: u8) -> [u8; 6] {
        [0x02, 0, 0, 0, host, ifno]
    }

    /// Host number for a host name of either topology.
    pub fn host_no(host: &str) -> Option<u8> {
        Some(match host {
            "client" => HOST_CLIENT,
            "router" => HOST_ROUTER,
            "dir" => HOST_DIR,
            "rs1" => HOST_RS1,
            "rs2" => HOST_RS2,
            "sw" => HOST_SW,
            _ => return None,
        })
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Knobs for building a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// `true` keeps the kernel's veth offload defaults (checksum offload, GSO/GRO/TSO), which
    /// is what users get; `false` turns them off on every veth end with ethtool.
    pub offloads: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self { offloads: true }
    }
}

/// Which shape a lab has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// client → router → bridge with director, rs1, rs2 (director one-armed).
    Dr,
    /// client → director → rs1, rs1 answering straight back (the kernel IPVS DR selftest).
    TwoArm,
    /// Built from a lab file (see [`spec`]).
    File,
}

/// One interface of a lab host, as built.
#[derive(Debug, Clone)]
pub struct Iface {
    pub host: String,
    pub name: String,
    pub mac: [u8; 6],
}

/// A running lab. Dropping it tears it down.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    topology: Topology,
    /// Full namespace names we created, in creation order.
    namespaces: Vec<String>,
    /// Background processes we started, by PID. Keeping the `Child` means the PID cannot be
    /// recycled before we reap it, so signalling it (and its process group) stays safe.
    children: HashMap<u32, Child>,
    /// What each child runs ("rs1: nginx", for `uvs lab status`), its host, command line and
    /// log (for `uvs lab start` after `uvs lab stop`).
    what: HashMap<u32, (String, String, Vec<String>, PathBuf)>,
    ifaces: Vec<Iface>,
    dir: PathBuf,
    keep_dir: bool,
    torn_down: bool,
    /// `uvs lab up`: namespaces and processes are recorded here as they are made, so
    /// `uvs lab down` can remove them even after a crash.
    state_file: Option<PathBuf>,
    name: String,
}

impl Lab {
    /// An empty lab; the builders fill it in. Creating the scratch directory first means a
    /// failure later still has a `Lab` whose `Drop` cleans up whatever was made.
    fn new(prefix: &str, topology: Topology) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{prefix}lab"));
        Self::new_in(prefix, topology, dir, None)
    }

    /// An empty lab with its scratch directory at `dir` (replaced if it exists). With
    /// `state_file`, every namespace and process is recorded there as soon as it exists.
    pub(crate) fn new_in(
        prefix: &str,
        topology: Topology,
        dir: PathBuf,
        state_file: Option<PathBuf>,
    ) -> Result<Self> {
        validate_prefix(prefix)?;
        if dir.exists() {
            // Same prefix ⇒ same (dead) owner: the prefix embeds the creator's PID.
            fs::remove_dir_all(&dir)
                .with_context(|| format!("removing stale lab dir {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            prefix: prefix.to_string(),
            topology,
            namespaces: Vec::new(),
            children: HashMap::new(),
            what: HashMap::new(),
            ifaces: Vec::new(),
            dir,
            keep_dir: std::env::var_os("UVS_LAB_KEEP").is_some(),
            torn_down: false,
            state_file,
            name: prefix.trim_end_matches(['-', '_']).to_string(),
        })
    }

    pub(crate) fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }

    /// Writes the state file (if any): what `uvs lab down` will remove.
    fn save_state(&self) {
        let Some(p) = &self.state_file else { return };
        let st = build::LabState {
            name: self.name.clone(),
            prefix: self.prefix.clone(),
            dir: self.dir.clone(),
            namespaces: self.namespaces.clone(),
            processes: self
                .children
                .keys()
                .map(|pid| {
                    let (what, host, argv, log) = self.what.get(pid).cloned().unwrap_or_default();
                    build::ProcState {
                        pid: *pid,
                        start_time: build::proc_start_time(*pid).unwrap_or(0),
                        what,
                        host,
                        argv,
                        log: Some(log),
                    }
                })
                .collect(),
            stopped: Vec::new(),
        };
        if let Err(e) = st.save(p) {
            log::warn!("lab: writing {}: {e:#}", p.display());
        }
    }

    /// Leaves everything running (for `uvs lab up`): the state file keeps the record, and
    /// dropping the lab no longer tears it down.
    pub fn detach(mut self) {
        self.save_state();
        self.torn_down = true;
        // Dropping a `Child` neither waits for nor kills it.
        self.children.clear();
        self.namespaces.clear();
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// Scratch directory owned by the lab (configs, logs, pcaps). Removed on teardown unless
    /// `UVS_LAB_KEEP` is set in the environment.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keep (or not) the scratch directory after teardown, e.g. to look at logs of a failure.
    pub fn keep_dir(&mut self, keep: bool) {
        self.keep_dir = keep;
    }

    /// Full namespace name of a host (`"rs1"` → `"<prefix>rs1"`).
    pub fn ns(&self, host: &str) -> String {
        format!("{}{}", self.prefix, host)
    }

    /// Namespaces created so far.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Every veth end / bridge of the lab with its MAC.
    pub fn ifaces(&self) -> &[Iface] {
        &self.ifaces
    }

    /// MAC of `ifname` in `host`'s namespace.
    pub fn mac(&self, host: &str, ifname: &str) -> Result<[u8; 6]> {
        self.ifaces
            .iter()
            .find(|i| i.host == host && i.name == ifname)
            .map(|i| i.mac)
            .ok_or_else(|| anyhow!("lab has no interface {ifname} on {host}"))
    }

    /// MAC as `aa:bb:..`.
    pub fn mac_str(&self, host: &str, ifname: &str) -> Result<String> {
        self.mac(host, ifname).map(fmt_mac)
    }

    /// PIDs of the background processes still owned by the lab.
    pub fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.children.keys().copied().collect();
        v.sort_unstable();
        v
    }

    fn command(&self, host: &str, args: &[&str]) -> Result<Command> {
        let (prog, rest) = args
            .split_first()
            .ok_or_else(|| anyhow!("empty command for {host}"))?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host), prog]).args(rest);
        Ok(c)
    }

    /// Runs `args` in `host`'s namespace and returns its output, whatever the exit status.
    pub fn exec(&self, host: &str, args: &[&str]) -> Result<Output> {
        self.command(host, args)?
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {args:?} in {}", self.ns(host)))
    }

    /// Like [`Lab::exec`] but fails (with stderr) unless the command exits 0; returns stdout.
    pub fn exec_ok(&self, host: &str, args: &[&str]) -> Result<String> {
        let out = self.exec(host, args)?;
        check_output(&out, &format!("{args:?} in {}", self.ns(host)))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ip -n NS args...`, must succeed.
    fn ip(&self, host: &str, args: &[&str]) -> Result<()> {
        run_ok(Command::new("ip").arg("-n").arg(self.ns(host)).args(args))
    }

    /// Sets sysctls in `host`'s namespace. `optional` keys may be absent (module not loaded).
    fn sysctl(&self, host: &str, kv: &[(&str, &str)], optional: bool) -> Result<()> {
        let pairs: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["sysctl", "-q"];
        if optional {
            args.push("-e");
        }
        args.push("-w");
        args.extend(pairs.iter().map(String::as_str));
        self.exec_ok(host, &args).map(drop)
    }

    /// Starts `args` in the background in `host`'s namespace, in a new session, with stdout and
    /// stderr appended to `log`. Returns the recorded PID.
    pub fn spawn(&mut self, host: &str, args: &[&str], log: &Path) -> Result<u32> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let err = out.try_clone().context("duplicating log fd")?;
        // `ip netns exec` and `setsid` both exec in place (our child is not a process-group
        // leader, so setsid does not fork): the child's PID is the command's PID and, after
        // setsid, also its process-group id, which lets us kill helpers it forks (nginx workers).
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host), "setsid"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = c
            .spawn()
            .with_context(|| format!("spawning {args:?} in {}", self.ns(host)))?;
        let pid = child.id();
        log::debug!("lab: spawned pid {pid} in {}: {args:?}", self.ns(host));
        self.children.insert(pid, child);
        let prog = args[0].rsplit('/').next().unwrap_or(args[0]);
        let what = match args.get(1) {
            Some(a) if !a.starts_with('-') && prog == "uvs" => format!("{host}: uvs {a}"),
            _ => format!("{host}: {prog}"),
        };
        let argv = args.iter().map(|a| a.to_string()).collect();
        self.what
            .insert(pid, (what, host.to_string(), argv, log.to_path_buf()));
        self.save_state();
        Ok(pid)
    }

    /// Whether a recorded child is still running (not reaped: a zombie counts as exited).
    pub fn is_running(&mut self, pid: u32) -> bool {
        match self.children.get_mut(&pid) {
            Some(c) => !exited_nowait(c),
            None => false,
        }
    }

    /// Stops a process we started: SIGTERM to its process group, up to 2 s grace, then SIGKILL.
    /// Unknown PIDs are ignored: we never signal what we did not start.
    pub fn kill(&mut self, pid: u32) {
        if let Some(child) = self.children.remove(&pid) {
            stop_child(child);
            self.what.remove(&pid);
            self.save_state();
        }
    }

    /// Kills every recorded process, deletes the namespaces and the scratch directory.
    /// Idempotent; errors are logged and ignored so teardown always runs to the end.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        // Signal everyone first so the 2 s grace periods overlap instead of adding up.
        let children: Vec<Child> = self.children.drain().map(|(_, c)| c).collect();
        for c in &children {
            signal_group(c.id(), libc::SIGTERM);
        }
        for c in children {
            stop_child(c);
        }
        for ns in self.namespaces.drain(..).rev() {
            match Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status()
            {
                Ok(s) if s.success() => {}
                Ok(s) => log::warn!("lab: ip netns del {ns}: {s}"),
                Err(e) => log::warn!("lab: ip netns del {ns}: {e}"),
            }
        }
        if let Some(p) = &self.state_file {
            let _ = fs::remove_file(p);
        }
        if self.keep_dir {
            eprintln!("lab: kept {}", self.dir.display());
        } else if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("lab: removing {}: {e}", self.dir.display());
        }
    }

    /// Starts an HTTP responder answering `200 <name>\n` on port 80 of `host`: nginx if
    /// `prefer_nginx` and it is installed, else `uvs lab-http` from `uvs_exe`. Returns once the
    /// port answers.
    pub fn start_http(
        &mut self,
        host: &str,
        name: &str,
        prefer_nginx: bool,
        uvs_exe: &Path,
    ) -> Result<u32> {
        self.start_http_on(host, name, 80, prefer_nginx, uvs_exe)
    }

    /// [`Lab::start_http`] on another port (a NAT real server listening on 8080, say).
    pub fn start_http_on(
        &mut self,
        host: &str,
        name: &str,
        port: u16,
        prefer_nginx: bool,
        uvs_exe: &Path,
    ) -> Result<u32> {
        match nginx_path() {
            Some(nginx) if prefer_nginx => {
                let pid = self.start_nginx(host, name, port, &nginx, false)?;
                self.wait_http(host, name, port, pid, false)?;
                Ok(pid)
            }
            _ => self.start_builtin_http(host, name, port, uvs_exe),
        }
    }

    /// [`Lab::start_http_on`] behind a FullNAT director that sends the PROXY protocol: nginx
    /// listens with `proxy_protocol` (it then requires the header), logs the client it names
    /// (`$proxy_protocol_addr:$proxy_protocol_port` first on each access-log line) and answers
    /// `GET /peer` with `<name> client=<IP:PORT> via=proxy`; the built-in responder reads the
    /// header when there is one (see [`responder`]).
    pub fn start_http_proxied(
        &mut self,
        host: &str,
        name: &str,
        port: u16,
        prefer_nginx: bool,
        uvs_exe: &Path,
    ) -> Result<u32> {
        match nginx_path() {
            Some(nginx) if prefer_nginx => {
                let pid = self.start_nginx(host, name, port, &nginx, true)?;
                self.wait_http(host, name, port, pid, true)?;
                Ok(pid)
            }
            _ => self.start_builtin_http(host, name, port, uvs_exe),
        }
    }

    /// Whether [`Lab::start_http`] with `prefer_nginx` would run nginx.
    pub fn nginx_installed() -> bool {
        nginx_path().is_some()
    }

    /// Starts the built-in `uvs lab-http --name NAME --port PORT` in `host` (GET answers
    /// `<name>\n`, POST `<name> bytes=<N> fnv=<H>\n`, see [`responder`]); returns once it
    /// answers.
    pub fn start_builtin_http(
        &mut self,
        host: &str,
        name: &str,
        port: u16,
        uvs_exe: &Path,
    ) -> Result<u32> {
        let log = self.dir.join(if port == 80 {
            format!("{host}-http.log")
        } else {
            format!("{host}-http{port}.log")
        });
        let exe = path_str(uvs_exe)?;
        let port_s = port.to_string();
        let pid = self.spawn(
            host,
            &[exe, "lab-http", "--name", name, "--port", &port_s],
            &log,
        )?;
        self.wait_http(host, name, port, pid, false)?;
        Ok(pid)
    }

    fn wait_http(
        &mut self,
        host: &str,
        name: &str,
        port: u16,
        pid: u32,
        proxied: bool,
    ) -> Result<()> {
        let url = format!("http://127.0.0.1:{port}/");
        let want = format!("{name}\n");
        let mut curl = vec!["curl", "-s", "--max-time", "1", "--noproxy", "*"];
        if proxied {
            curl.push("--haproxy-protocol");
        }
        curl.push(&url);
        for _ in 0..100 {
            if !self.is_running(pid) {
                bail!(
                    "HTTP responder in {host} exited early:\n{}",
                    self.logs_tail(host)
                );
            }
            let out = self.exec(host, &curl)?;
            if out.status.success() && out.stdout == want.as_bytes() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "HTTP responder in {host} did not answer on port {port} within 5 s:\n{}",
            self.logs_tail(host)
        )
    }

    fn logs_tail(&self, host: &str) -> String {
        let mut s = String::new();
        for f in [
            format!("{host}-http.log"),
            format!("{host}-nginx/error.log"),
            format!("{host}-nginx.log"),
        ] {
            let p = self.dir.join(&f);
            if p.exists() {
                s.push_str(&format!("--- {f}\n{}", tail(&p, 20)));
            }
        }
        s
    }

    fn start_nginx(
        &mut self,
        host: &str,
        name: &str,
        port: u16,
        nginx: &Path,
        proxy_protocol: bool,
    ) -> Result<u32> {
        let d = self.dir.join(if port == 80 {
            format!("{host}-nginx")
        } else {
            format!("{host}-nginx{port}")
        });
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        let ds = path_str(&d)?;
        let (log_format, access_log, listen, peer) = if proxy_protocol {
            (
                r#"log_format proxied '$proxy_protocol_addr:$proxy_protocol_port $remote_addr:$remote_port "$request" $status';"#,
                format!("{ds}/access.log proxied"),
                "reuseport proxy_protocol",
                format!(
                    r#"location = /peer {{
            default_type text/plain;
            return 200 "{name} client=$proxy_protocol_addr:$proxy_protocol_port via=proxy\n";
        }}"#
                ),
            )
        } else {
            ("", format!("{ds}/access.log"), "reuseport", String::new())
        };
        // Every path nginx would otherwise take from its compiled-in defaults (/var/log/nginx,
        // /var/lib/nginx, /run/nginx.pid) is pointed into our directory so parallel labs and
        // the host's own nginx never collide.
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes 1;
user root;
pid {ds}/nginx.pid;
error_log {ds}/error.log info;
events {{ worker_connections 1024; }}
http {{
    {log_format}
    access_log {access_log};
    client_body_temp_path {ds}/body;
    proxy_temp_path {ds}/proxy;
    fastcgi_temp_path {ds}/fastcgi;
    uwsgi_temp_path {ds}/uwsgi;
    scgi_temp_path {ds}/scgi;
    keepalive_timeout 65;
    keepalive_requests 100000;
    server {{
        listen 0.0.0.0:{port} {listen};
        location / {{
            default_type text/plain;
            return 200 "{name}\n";
        }}
        {peer}
    }}
}}
"#
        );
        let conf_path = d.join("nginx.conf");
        fs::write(&conf_path, conf).with_context(|| format!("writing {}", conf_path.display()))?;
        let log = self.dir.join(if port == 80 {
            format!("{host}-nginx.log")
        } else {
            format!("{host}-nginx{port}.log")
        });
        let nginx = path_str(nginx)?;
        let err_log = format!("{ds}/error.log");
        let conf_s = path_str(&conf_path)?;
        self.spawn(host, &[nginx, "-p", ds, "-e", &err_log, "-c", conf_s], &log)
    }

    /// Starts `uvs lab-udp-echo --name NAME --port PORT` in `host`; returns once it listens.
    pub fn start_udp_echo(
        &mut self,
        host: &str,
        name: &str,
        port: u16,
        uvs_exe: &Path,
    ) -> Result<u32> {
        let log = self.dir.join(format!("{host}-udp.log"));
        let exe = path_str(uvs_exe)?;
        let port_s = port.to_string();
        let pid = self.spawn(
            host,
            &[exe, "lab-udp-echo", "--name", name, "--port", &port_s],
            &log,
        )?;
        let filter = format!("sport = :{port}");
        for _ in 0..100 {
            if !self.is_running(pid) {
                bail!("UDP echo in {host} exited early:\n{}", tail(&log, 20));
            }
            let out = self.exec_ok(host, &["ss", "-Hlun", &filter])?;
            if !out.trim().is_empty() {
                return Ok(pid);
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("UDP echo in {host} not listening after 5 s")
    }

    /// Starts `uvs run --ready-file <dir>/ready <args...>` in the director's namespace and
    /// waits (up to 10 s) for the ready file. Fails with the log's tail if it exits first.
    pub fn start_director(&mut self, uvs_exe: &Path, args: &[&str], log: &Path) -> Result<u32> {
        self.start_director_in("dir", uvs_exe, args, log)
    }

    /// [`Lab::start_director`] in namespace `host`.
    pub fn start_director_in(
        &mut self,
        host: &str,
        uvs_exe: &Path,
        args: &[&str],
        log: &Path,
    ) -> Result<u32> {
        let ready = self.dir.join("ready");
        let _ = fs::remove_file(&ready);
        let exe = path_str(uvs_exe)?;
        let ready_s = path_str(&ready)?;
        let mut full = vec![exe, "run", "--ready-file", ready_s];
        full.extend_from_slice(args);
        let pid = self.spawn(host, &full, log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ready.exists() {
                return Ok(pid);
            }
            if !self.is_running(pid) {
                let status = self
                    .children
                    .remove(&pid)
                    .and_then(|mut c| c.wait().ok())
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                bail!(
                    "director exited before becoming ready ({status}); log tail:\n{}",
                    tail(log, 30)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "director not ready after 10 s (no {}); log tail:\n{}",
            ready.display(),
            tail(log, 30)
        )
    }

    /// Sets sysctls in `host`'s namespace (`key=value` pairs, must all exist).
    pub fn set_sysctls(&self, host: &str, kv: &[(&str, &str)]) -> Result<()> {
        self.sysctl(host, kv, false)
    }

    /// `curl -sS --max-time 5 [extra] URL` from `host`; returns the body.
    pub fn curl(&self, host: &str, url: &str, extra_args: &[&str]) -> Result<String> {
        let mut args = vec!["curl", "-sS", "--noproxy", "*", "--max-time", "5"];
        args.extend_from_slice(extra_args);
        args.push(url);
        self.exec_ok(host, &args)
    }

    /// Sends one UDP datagram `payload` from `host` to `ip:port` and returns the first reply
    /// line (2 s timeout). Uses bash's `/dev/udp`, a *connected* socket, so a reply from any
    /// other source address than `ip` (a DR real server answering from its own IP instead of
    /// the VIP) is not accepted.
    pub fn udp_request(
        &self,
        host: &str,
        ip: std::net::Ipv4Addr,
        port: u16,
        payload: &str,
    ) -> Result<String> {
        if payload.contains('\'') || payload.contains('\n') {
            bail!("udp_request payload must be one line without quotes");
        }
        // One `dd` read takes exactly one datagram; bash's own `read` reads a byte at a time,
        // and on a datagram socket that truncates the reply to its first byte.
        let script = format!(
            "exec 3<>/dev/udp/{ip}/{port} && printf '%s\\n' '{payload}' >&3 && \
             timeout 2 dd bs=65536 count=1 status=none <&3"
        );
        self.exec_ok(host, &["bash", "-c", &script])
            .with_context(|| format!("no UDP reply from {ip}:{port}"))
    }

    /// Starts `tcpdump --immediate-mode -U -n -e -i IF -w PCAP FILTER` in `host` and waits until it is
    /// capturing. Its stderr goes to `PCAP.log`.
    pub fn tcpdump_start(
        &mut self,
        host: &str,
        ifname: &str,
        filter: &str,
        out_pcap: &Path,
    ) -> Result<u32> {
        let log = out_pcap.with_extension("log");
        let _ = fs::remove_file(&log);
        let pcap = path_str(out_pcap)?;
        // --immediate-mode: without it libpcap holds packets in its ring for up to 1 s, and a
        // SIGTERM in that window loses them ("N received by filter, 0 captured").
        let mut args = vec![
            "tcpdump",
            "--immediate-mode",
            "-U",
            "-n",
            "-e",
            "-i",
            ifname,
            "-w",
            pcap,
        ];
        // tcpdump joins its trailing words into one filter expression.
        args.extend(filter.split_whitespace());
        let pid = self.spawn(host, &args, &log)?;
        for _ in 0..250 {
            if fs::read_to_string(&log).is_ok_and(|s| s.contains("listening on")) {
                return Ok(pid);
            }
            if !self.is_running(pid) {
                bail!("tcpdump in {host} exited:\n{}", tail(&log, 10));
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("tcpdump in {host} not listening after 5 s")
    }

    /// `tcpdump -n -e -r PCAP`, one string per packet.
    pub fn tcpdump_read(&self, pcap: &Path) -> Result<Vec<String>> {
        let out = Command::new("tcpdump")
            .args(["-n", "-e", "-r"])
            .arg(pcap)
            .stdin(Stdio::null())
            .output()
            .context("running tcpdump -r")?;
        check_output(&out, &format!("tcpdump -r {}", pcap.display()))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    // ---- used by the builders ----

    fn add_ns(&mut self, host: &str) -> Result<()> {
        let ns = self.ns(host);
        if Path::new("/run/netns").join(&ns).exists() {
            bail!("namespace {ns} already exists (left over from a crash?): `ip netns del {ns}`");
        }
        run_ok(Command::new("ip").args(["netns", "add", &ns]))?;
        self.namespaces.push(ns);
        self.save_state();
        self.ip(host, &["link", "set", "lo", "up"])?;
        // Before any veth arrives, so `default` covers the new interfaces too.
        self.sysctl(
            host,
            &[
                ("net.ipv6.conf.all.disable_ipv6", "1"),
                ("net.ipv6.conf.default.disable_ipv6", "1"),
            ],
            false,
        )
    }

    /// A veth pair with `a_if` in host `a` and `b_if` in host `b`, created inside `a`'s
    /// namespace with the peer placed straight into `b`'s.
    fn veth(
        &mut self,
        a: &str,
        a_if: &str,
        a_mac: [u8; 6],
        b: &str,
        b_if: &str,
        b_mac: [u8; 6],
    ) -> Result<()> {
        let b_ns = self.ns(b);
        let (am, bm) = (fmt_mac(a_mac), fmt_mac(b_mac));
        self.ip(
            a,
            &[
                "link", "add", a_if, "address", &am, "type", "veth", "peer", "name", b_if,
                "address", &bm, "netns", &b_ns,
            ],
        )?;
        for (h, i, m) in [(a, a_if, a_mac), (b, b_if, b_mac)] {
            self.ifaces.push(Iface {
                host: h.to_string(),
                name: i.to_string(),
                mac: m,
            });
        }
        Ok(())
    }

    fn addr_up(&self, host: &str, ifname: &str, cidr: &str) -> Result<()> {
        self.ip(host, &["addr", "add", cidr, "dev", ifname])?;
        self.ip(host, &["link", "set", ifname, "up"])
    }

    /// Turns veth offloads off everywhere. ethtool must exist; single features a kernel does
    /// not support are skipped.
    fn disable_offloads(&self) -> Result<()> {
        let ok = Command::new("ethtool")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!("offloads=false needs ethtool, which is not installed");
        }
        const FEATURES: [&str; 5] = ["rx", "tx", "tso", "gso", "gro"];
        for i in self.ifaces.iter().filter(|i| i.name != "br0") {
            let mut all = vec!["ethtool", "-K", i.name.as_str()];
            for f in FEATURES {
                all.extend([f, "off"]);
            }
            if self.exec(&i.host, &all)?.status.success() {
                continue;
            }
            for f in FEATURES {
                let _ = self.exec(&i.host, &["ethtool", "-K", &i.name, f, "off"]);
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty()
        || prefix.len() > 20
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("lab prefix {prefix:?} must be 1-20 chars of [A-Za-z0-9_-]");
    }
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
}

fn check_output(out: &Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn run_ok(c: &mut Command) -> Result<()> {
    let what = format!("{c:?}");
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    check_output(&out, &what)
}

fn nginx_path() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Last `n` lines of a file (reads at most the last 64 KiB).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return format!("(no {})\n", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let s = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = s.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    out.push('\n');
    out
}

/// Signals the group of a child spawned with setsid and not reaped yet (so its group id
/// cannot have been recycled).
fn signal_group(pid: u32, sig: libc::c_int) {
    crate::io::process::signal_group(pid, sig);
}

/// Has the child exited? Checked without reaping, so its PID (and group id) stay reserved.
fn exited_nowait(child: &Child) -> bool {
    crate::io::process::exited_without_reaping(child.id())
}

/// SIGTERM the child's group, wait up to 2 s, SIGKILL the group, reap.
fn stop_child(mut child: Child) {
    let pid = child.id();
    if !exited_nowait(&child) {
        signal_group(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !exited_nowait(&child) {
            thread::sleep(Duration::from_millis(10));
        }
    }
    // Also after a clean exit: group members the leader forked (nginx workers) may linger.
    // The leader is not reaped yet, so the group id is still ours.
    signal_group(pid, libc::SIGKILL);
    let _ = child.wait();
}
