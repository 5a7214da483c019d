//! The shared fixture of the namespace tests: a lab, a director in it, the director's admin
//! socket, `uvsadm` and metrics, and the client-side helpers the tests share.
//!
//! A test reads:
//!
//! ```text
//! let Some(ctx) = common::setup(20) else { return };  // lock, root/CI gate, unique prefix
//! let mut lab = ctx.web_lab();                         // DR lab, web servers on rs1 and rs2
//! let d = Director::rr_http().admin_socket().start(&mut lab);
//! common::curl_vip(&lab, 4);                           // traffic from the client
//! d.admin(&Request::Status); d.uvsadm(&["-Ln"]); d.metric("uvs_drops_total", &[]); d.tail();
//! ```
//!
//! Ownership and tear-down: the [`Lab`] owns every namespace and every process a test starts,
//! directors included, and its `Drop` (which also runs on a panic) ends those processes by PID
//! and removes the namespaces. A [`Director`] is a handle (namespace, PID, files): reading
//! through it (log, admin socket, `uvsadm`, metrics) needs no lab, while ending or signalling
//! the process goes through the lab, which still holds it unreaped, so a signal can never
//! reach a recycled PID. Files a test or director writes live in the lab's directory, named
//! after the director's namespace (`dir.rules`, `dir.log`, `dir2.toml`, `dir.sock`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use uvs::ctl::backend::{Backend, SocketBackend, SocketLocation};
use uvs::ctl::proto::{Reply, Request};
use uvs::lab::{Lab, LabOptions, addr, build_dr_lab, build_two_arm_lab, fmt_mac, tail};

/// Serialises the tests (see the crate docs).
static SERIAL: Mutex<()> = Mutex::new(());

pub fn uvs_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_uvs"))
}

pub fn uvsadm_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_uvsadm"))
}

pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Can we create namespaces? Probes with a throw-away namespace of our own.
fn netns_usable(probe: &str) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    let out = Command::new("ip")
        .args(["netns", "add", probe])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip netns add failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", probe])
        .stderr(Stdio::null())
        .status();
    Ok(())
}

/// A test's context: holds the global lock and names the test's namespaces.
pub struct Ctx {
    _guard: MutexGuard<'static, ()>,
    pub prefix: String,
}

/// Takes the lock and checks the environment. `None`: skip (only outside CI). `testno` makes
/// the prefix unique per test; the PID part makes it unique per run.
pub fn setup(testno: u32) -> Option<Ctx> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let prefix = format!("ut{}{testno:02}-", std::process::id() % 1000);
    if let Err(why) = netns_usable(&format!("{prefix}probe")) {
        if under_ci() {
            panic!("netns tests cannot run under CI=true: {why}");
        }
        eprintln!("skipping: {why}");
        return None;
    }
    sweep_dead_runs();
    claim(&prefix);
    Some(Ctx {
        _guard: guard,
        prefix,
    })
}

impl Drop for Ctx {
    /// The test's labs (declared after its `Ctx`) are gone by now: nothing left to sweep.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(Path::new(CLAIMS).join(&self.prefix));
    }
}

/// Where each test's prefix records the PID of the test process that uses it.
const CLAIMS: &str = "/run/uvs-netns-tests";

/// Records that this process uses `prefix`, so a later run can clean up after it if it is
/// killed before its labs' teardown runs (a SIGKILL, a timeout: no unwinding, no `Drop`).
fn claim(prefix: &str) {
    let dir = Path::new(CLAIMS);
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(dir.join(prefix), std::process::id().to_string());
}

/// Deletes the namespaces of every claimed prefix whose test process is gone, and the processes
/// left in them (started by that run), then the claim.
fn sweep_dead_runs() {
    let Ok(entries) = std::fs::read_dir(CLAIMS) else {
        return;
    };
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for e in entries.flatten() {
        let prefix = e.file_name().to_string_lossy().into_owned();
        let pid = std::fs::read_to_string(e.path()).unwrap_or_default();
        if Path::new("/proc").join(pid.trim()).exists() {
            continue;
        }
        for ns in namespaces
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
        {
            let pids = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for p in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill has no memory effects; these processes were started in this
                // test prefix's namespaces by the run that is gone.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            eprintln!("removing {ns}, left by a killed test run");
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_file(e.path());
    }
}

impl Ctx {
    /// The DR lab (client → router → switch with dir, rs1, rs2), kernel offload defaults.
    pub fn dr_lab(&self) -> Lab {
        self.dr_lab_with(&LabOptions::default())
    }

    pub fn dr_lab_with(&self, opts: &LabOptions) -> Lab {
        build_dr_lab(&self.prefix, opts)
            .unwrap_or_else(|e| panic!("building the DR lab ({opts:?}): {e:#}"))
    }

    /// The kernel IPVS DR selftest's shape: client → director → rs1, rs1 answering directly.
    pub fn two_arm_lab(&self) -> Lab {
        build_two_arm_lab(&self.prefix, &LabOptions::default())
            .unwrap_or_else(|e| panic!("building the two-arm lab: {e:#}"))
    }

    /// The DR lab with [`start_web`]'s web servers on rs1 and rs2.
    pub fn web_lab(&self) -> Lab {
        let mut lab = self.dr_lab();
        start_web(&mut lab);
        lab
    }
}

/// nginx (or, only if it is not installed, the built-in responder) on rs1 and rs2, port 80.
pub fn start_web(lab: &mut Lab) {
    if !Lab::nginx_installed() {
        eprintln!("nginx not installed: using the built-in HTTP responder");
    }
    for rs in ["rs1", "rs2"] {
        lab.start_http(rs, rs, true, &uvs_exe())
            .unwrap_or_else(|e| panic!("web server on {rs}: {e:#}"));
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("lab paths are UTF-8")
}

/// How to start a director: what [`Director::launch`] and [`Director::rr_http`] begin and
/// [`Launch::start`] runs.
#[must_use]
pub struct Launch {
    host: String,
    /// (flag, file name in the lab directory, contents)
    files: Vec<(&'static str, FileName, String)>,
    interfaces: Vec<String>,
    extra: Vec<String>,
    admin_socket: bool,
    metrics: bool,
}

/// Where a director's file goes in the lab directory.
enum FileName {
    /// `<host>.<extension>`: two directors of one lab never share it.
    PerHost(&'static str),
    Given(String),
}

impl Launch {
    /// In namespace `host` instead of `dir`.
    pub fn on(mut self, host: &str) -> Self {
        self.host = host.to_string();
        self
    }

    /// `--rules FILE` with these ipvsadm-save lines.
    pub fn rules(mut self, text: &str) -> Self {
        let name = FileName::PerHost("rules");
        self.files.push(("--rules", name, text.to_string()));
        self
    }

    /// `--config FILE` with this TOML.
    pub fn config(mut self, toml: &str) -> Self {
        let name = FileName::PerHost("toml");
        self.files.push(("--config", name, toml.to_string()));
        self
    }

    /// `flag FILE`, FILE holding `text` (`--keepalived`, `--ldirectord`).
    pub fn file(mut self, flag: &'static str, name: &str, text: &str) -> Self {
        let name = FileName::Given(name.to_string());
        self.files.push((flag, name, text.to_string()));
        self
    }

    pub fn interface(mut self, ifname: &str) -> Self {
        self.interfaces.push(ifname.to_string());
        self
    }

    /// More `uvs run` arguments (`--workers 2`, say).
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.extra.extend(extra.iter().map(|a| a.to_string()));
        self
    }

    pub fn metrics_off(mut self) -> Self {
        self.metrics = false;
        self
    }

    /// A filesystem admin socket, which the test process can reach across namespaces (the
    /// default abstract one is only reachable from inside the director's namespace).
    pub fn admin_socket(mut self) -> Self {
        self.admin_socket = true;
        self
    }

    /// Writes the files, starts `uvs run` and waits until it reports ready.
    pub fn start(self, lab: &mut Lab) -> Director {
        let mut args: Vec<String> = Vec::new();
        let mut rules = None;
        for (flag, name, text) in &self.files {
            let path = lab.dir().join(match name {
                FileName::PerHost(ext) => format!("{}.{ext}", self.host),
                FileName::Given(name) => name.clone(),
            });
            std::fs::write(&path, text)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            args.extend([flag.to_string(), path_str(&path).to_string()]);
            if *flag == "--rules" {
                rules = Some(path);
            }
        }
        for i in &self.interfaces {
            args.extend(["--interface".to_string(), i.clone()]);
        }
        args.extend(self.extra.iter().cloned());
        let socket = self
            .admin_socket
            .then(|| lab.dir().join(format!("{}.sock", self.host)));
        if let Some(s) = &socket {
            // Left by a director this test stopped before.
            let _ = std::fs::remove_file(s);
            args.extend(["--admin-socket".to_string(), path_str(s).to_string()]);
        }
        if !self.metrics {
            args.extend(["--metrics".to_string(), "off".to_string()]);
        }
        let log = log_path(lab, &self.host);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = lab
            .start_director_in(&self.host, &uvs_exe(), &argv, &log)
            .unwrap_or_else(|e| panic!("starting the director in {}: {e:#}", self.host));
        Director {
            ns: lab.ns(&self.host),
            pid,
            log,
            rules,
            socket,
            metrics: self.metrics,
        }
    }
}

/// A running `uvs run`, started by [`Launch::start`]; see the module docs for who owns what.
#[derive(Debug)]
pub struct Director {
    /// Full namespace name.
    ns: String,
    pid: u32,
    log: PathBuf,
    rules: Option<PathBuf>,
    socket: Option<PathBuf>,
    metrics: bool,
}

impl Director {
    /// A director in `dir` with nothing configured yet.
    pub fn launch() -> Launch {
        Launch {
            host: "dir".to_string(),
            files: Vec::new(),
            interfaces: Vec::new(),
            extra: Vec::new(),
            admin_socket: false,
            metrics: true,
        }
    }

    /// The usual service: TCP VIP:80, rr over rs1 and rs2, served on eth0.
    pub fn rr_http() -> Launch {
        Self::launch().rules(&dr_rules('t', 80)).interface("eth0")
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its namespace's full name.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The last lines of its log, for assertion messages.
    pub fn tail(&self) -> String {
        tail(&self.log, 30)
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Replaces its rules file (read again on SIGHUP).
    pub fn rewrite_rules(&self, text: &str) {
        let path = self
            .rules
            .as_ref()
            .expect("the director was started with --rules");
        std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Sends `sig`; the lab must still hold the process (not stopped, killed or reaped).
    pub fn signal(&self, lab: &Lab, sig: libc::c_int) {
        assert!(
            lab.pids().contains(&self.pid),
            "director {} is no longer the lab's",
            self.pid
        );
        // SAFETY: kill(2) has no memory effects; the lab holds this child unreaped, so the PID
        // cannot have been recycled.
        assert_eq!(unsafe { libc::kill(self.pid as libc::pid_t, sig) }, 0);
    }

    /// Whether it still runs (an exited, unreaped director counts as gone).
    pub fn is_running(&self, lab: &mut Lab) -> bool {
        lab.is_running(self.pid)
    }

    /// Stops it as an operator would: SIGTERM, and SIGKILL only after a 2 s grace.
    pub fn stop(self, lab: &mut Lab) {
        lab.kill(self.pid);
    }

    /// Ends it with SIGKILL, as a crash would: nothing of its own clean-up runs.
    pub fn kill(self, lab: &mut Lab) {
        sigkill(lab, self.pid);
    }

    /// Its filesystem admin socket ([`Launch::admin_socket`]).
    pub fn admin_socket(&self) -> &Path {
        self.socket
            .as_deref()
            .expect("the director was started without Launch::admin_socket")
    }

    /// One request on the admin socket; a transport failure is a panic.
    pub fn admin(&self, req: &Request) -> Reply {
        self.try_admin(req)
            .unwrap_or_else(|e| panic!("admin request {req:?}: {e}"))
    }

    pub fn try_admin(&self, req: &Request) -> Result<Reply, String> {
        SocketBackend {
            location: SocketLocation::Path(self.admin_socket().to_path_buf()),
        }
        .call(req)
        .map_err(|e| e.to_string())
    }

    /// `uvsadm ARGS` in its namespace.
    pub fn uvsadm(&self, args: &[&str]) -> Out {
        self.uvsadm_as(As::Root, args)
    }

    /// `uvsadm ARGS` as `who`, on the director's own admin socket.
    pub fn uvsadm_as(&self, who: As, args: &[&str]) -> Out {
        match &self.socket {
            Some(s) => {
                let mut all = vec!["--admin-socket", path_str(s)];
                all.extend_from_slice(args);
                uvsadm_in(&self.ns, who, &all)
            }
            None => uvsadm_in(&self.ns, who, args),
        }
    }

    /// What `uvs status` prints about it.
    pub fn uvs_status(&self) -> String {
        let mut args = vec!["status"];
        if let Some(s) = &self.socket {
            args.extend(["--admin-socket", path_str(s)]);
        }
        uvs_in(&self.ns, As::Root, &args).stdout
    }

    /// The director's Prometheus page.
    pub fn scrape(&self) -> String {
        assert!(self.metrics, "the director runs with --metrics off");
        run_in(&self.ns, As::Root, &curl_metrics()).checked()
    }

    /// [`metric`] of a fresh scrape.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.scrape(), name, labels)
    }

    /// [`Director::scrape`], `None` when the page does not answer (the director is gone).
    pub fn try_scrape(&self) -> Option<String> {
        let out = run_in(&self.ns, As::Root, &curl_metrics());
        out.ok().then_some(out.stdout)
    }
}

fn curl_metrics() -> [&'static str; 7] {
    [
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        "5",
        "http://127.0.0.1:9477/metrics",
    ]
}

/// The log of the director in namespace `host`.
fn log_path(lab: &Lab, host: &str) -> PathBuf {
    lab.dir().join(format!("{host}.log"))
}

/// SIGKILL, to a process the lab started and still holds, then reaped through the lab.
pub fn sigkill(lab: &mut Lab, pid: u32) {
    assert!(lab.pids().contains(&pid), "pid {pid} is not the lab's");
    // SAFETY: kill(2) has no memory effects; the lab holds this child unreaped, so the PID
    // cannot have been recycled.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    lab.kill(pid);
}

/// Who a command runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum As {
    Root,
    /// uid/gid 65534 without capabilities: what an unprivileged user may do.
    Nobody,
}

/// A finished command: exit code (-1 for a signal), stdout, stderr.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    what: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// Its stdout, if it exited 0; else a panic naming the command with its stderr.
    pub fn checked(self) -> String {
        assert!(
            self.ok(),
            "{} exited {}: {}",
            self.what,
            self.code,
            self.stderr.trim()
        );
        self.stdout
    }
}

/// Runs `argv` in namespace `ns` (a full name, [`Lab::ns`]) as `who`, stdin empty.
pub fn run_in(ns: &str, who: As, argv: &[&str]) -> Out {
    run_fed_in(ns, who, argv, None)
}

/// [`run_in`] with `input` on stdin (`uvsadm -R`), or none.
pub fn run_fed_in(ns: &str, who: As, argv: &[&str], input: Option<&[u8]>) -> Out {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]);
    if who == As::Nobody {
        c.args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ]);
    }
    let what = format!("{argv:?} in {ns}");
    let mut child = c
        .args(argv)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    if let Some(data) = input {
        // Dropped after the write: the command sees the end of its input.
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(data)
            .unwrap_or_else(|e| panic!("feeding {what}: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        what,
    }
}

/// The `uvs` binary's `args` in namespace `ns`.
pub fn uvs_in(ns: &str, who: As, args: &[&str]) -> Out {
    let exe = uvs_exe();
    let mut argv = vec![path_str(&exe)];
    argv.extend_from_slice(args);
    run_in(ns, who, &argv)
}

/// `uvsadm ARGS` in namespace `ns`, whether a director runs there or not.
pub fn uvsadm_in(ns: &str, who: As, args: &[&str]) -> Out {
    let exe = uvsadm_exe();
    let mut argv = vec![path_str(&exe)];
    argv.extend_from_slice(args);
    run_in(ns, who, &argv)
}

/// `ip neigh show IP` in namespace `ns`: (link-layer address, state) of its entry.
pub fn neigh(ns: &str, ip: &str) -> Option<(String, String)> {
    let out = run_in(ns, As::Root, &["ip", "neigh", "show", ip]);
    if !out.ok() {
        return None;
    }
    let w: Vec<&str> = out.stdout.split_whitespace().collect();
    let i = w.iter().position(|x| *x == "lladdr")?;
    Some((w.get(i + 1)?.to_string(), w.last()?.to_string()))
}

/// The last lines of the log of the director in `dir`, for the assertion messages of helpers
/// that have the lab but no [`Director`].
pub fn director_tail(lab: &Lab) -> String {
    tail(&log_path(lab, "dir"), 30)
}

/// DR rules: `proto` `t`/`u`, the VIP at `port`, rr over rs1 and rs2.
pub fn dr_rules(proto: char, port: u16) -> String {
    let vip = addr::VIP;
    format!(
        "-A -{proto} {vip}:{port} -s rr\n\
         -a -{proto} {vip}:{port} -r {}:{port} -g -w 1\n\
         -a -{proto} {vip}:{port} -r {}:{port} -g -w 1\n",
        addr::RS1,
        addr::RS2
    )
}

pub fn mac_str(host: u8, ifno: u8) -> String {
    fmt_mac(addr::mac(host, ifno))
}

/// `n` sequential `curl http://VIP/` from the client; the trimmed bodies.
pub fn curl_vip(lab: &Lab, n: usize) -> Vec<String> {
    let url = format!("http://{}/", addr::VIP);
    (0..n)
        .map(|i| {
            lab.curl("client", &url, &[])
                .unwrap_or_else(|e| {
                    panic!(
                        "request {i} to {url}: {e:#}\ndirector log:\n{}",
                        director_tail(lab)
                    )
                })
                .trim()
                .to_string()
        })
        .collect()
}

/// Sends `n` requests to the VIP and checks that rr spread them evenly, half to rs1 and half
/// to rs2; `context` leads the failure message.
pub fn assert_even_split(lab: &Lab, n: usize, context: &str) {
    let answers = curl_vip(lab, n);
    let c = count(&answers);
    assert_eq!(
        (c.get("rs1").copied(), c.get("rs2").copied()),
        (Some(n / 2), Some(n / 2)),
        "{context}: {answers:?}"
    );
}

pub fn count<'a>(answers: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.clone()).or_insert(0) += 1;
    }
    m
}

/// Sum of the samples of `name` whose labels include every `k="v"` of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| l.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits up to `within` for a process the lab started to exit; whether it did.
pub fn wait_exit(lab: &mut Lab, pid: u32, within: Duration) -> bool {
    poll(within, || (!lab.is_running(pid)).then_some(())).is_some()
}

/// A `curl` from the client holding one keep-alive connection to VIP:80 for `n` requests at
/// 10/s; its answers are the lines of its log.
pub struct KeepAlive {
    pid: u32,
    log: PathBuf,
    n: usize,
}

impl KeepAlive {
    /// Starts it; curl gives up after `max_secs`. `tag` names its log.
    pub fn start(lab: &mut Lab, n: usize, max_secs: u64, tag: &str) -> Self {
        let urls: Vec<String> = (0..n).map(|_| format!("http://{}/", addr::VIP)).collect();
        let max = max_secs.to_string();
        let mut args = vec!["curl", "-s", "--max-time", &max, "--rate", "10/s"];
        args.extend(urls.iter().map(String::as_str));
        let log = lab.dir().join(format!("keepalive-{tag}.log"));
        let pid = lab
            .spawn("client", &args, &log)
            .unwrap_or_else(|e| panic!("starting the keep-alive client: {e:#}"));
        Self { pid, log, n }
    }

    pub fn is_running(&self, lab: &mut Lab) -> bool {
        lab.is_running(self.pid)
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `wait` for it to finish and checks that all `n` requests were answered, by
    /// one real server (the connection never moved). Returns the answers.
    pub fn check(&self, lab: &mut Lab, wait: Duration) -> Vec<String> {
        let done = wait_exit(lab, self.pid, wait);
        let text = self.output();
        let bodies: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        assert!(done, "the keep-alive client did not finish: {text}");
        assert_eq!(
            bodies.len(),
            self.n,
            "all {} keep-alive requests answered: {text}\ndirector:\n{}",
            self.n,
            director_tail(lab)
        );
        assert!(
            bodies.iter().all(|b| *b == bodies[0]),
            "the established connection stayed on one real server: {bodies:?}"
        );
        bodies
    }
}

/// One packet line of `tcpdump -n -e -r`, the fields the tests look at.
#[derive(Debug, Clone)]
pub struct Pkt {
    pub src_mac: String,
    pub dst_mac: String,
    /// Source and destination IP (without port) of an IPv4 packet.
    pub src_ip: Option<String>,
    pub dst_ip: Option<String>,
    pub line: String,
}

impl Pkt {
    pub fn is_rst(&self) -> bool {
        self.line.contains("Flags [R")
    }
    pub fn is_icmp(&self) -> bool {
        self.line.contains(": ICMP ")
    }
}

/// Strips a `.port` suffix: `10.0.0.100.80` → `10.0.0.100`.
fn ip_only(s: &str) -> String {
    let s = s.trim_end_matches(':');
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() >= 4 {
        parts[..4].join(".")
    } else {
        s.to_string()
    }
}

pub fn parse_pkt(line: &str) -> Option<Pkt> {
    // "TS SRC > DST, ethertype IPv4 (0x0800), length N: A.B.C.D.P > E.F.G.H.Q: ..."
    let mut w = line.split_whitespace();
    let _ts = w.next()?;
    let src_mac = w.next()?.to_string();
    if w.next()? != ">" {
        return None;
    }
    let dst_mac = w.next()?.trim_end_matches(',').to_string();
    let (mut src_ip, mut dst_ip) = (None, None);
    if line.contains("ethertype IPv4")
        && let Some((_, rest)) = line.split_once("length ")
        && let Some((_, l3)) = rest.split_once(": ")
    {
        let mut t = l3.split_whitespace();
        if let (Some(a), Some(">"), Some(b)) = (t.next(), t.next(), t.next()) {
            src_ip = Some(ip_only(a));
            dst_ip = Some(ip_only(b));
        }
    }
    Some(Pkt {
        src_mac,
        dst_mac,
        src_ip,
        dst_ip,
        line: line.to_string(),
    })
}

pub fn read_pcap(lab: &Lab, pcap: &Path) -> Vec<Pkt> {
    lab.tcpdump_read(pcap)
        .unwrap_or_else(|e| panic!("reading {}: {e:#}", pcap.display()))
        .iter()
        .filter_map(|l| parse_pkt(l))
        .collect()
}

/// Stops a capture after a short pause, so the last frames of an exchange are written.
pub fn stop_capture(lab: &mut Lab, pid: u32) {
    thread::sleep(Duration::from_millis(300));
    lab.kill(pid);
}

/// `n` pseudo-random bytes (xorshift64*, fixed seed): reproducible test data.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Uploads `data` with `curl --data-binary @file` from the client to `url` and checks the
/// responder's `<name> bytes=<N> fnv=<H>` answer against the data. Returns the name.
pub fn upload_and_verify(lab: &Lab, url: &str, data: &[u8], tag: &str) -> String {
    let file = lab.dir().join(format!("upload-{tag}.bin"));
    std::fs::write(&file, data).expect("writing upload file");
    let at = format!("@{}", path_str(&file));
    let body = lab
        .curl(
            "client",
            url,
            &[
                "--max-time",
                "60",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &at,
            ],
        )
        .unwrap_or_else(|e| {
            panic!(
                "upload {tag} to {url}: {e:#}\ndirector log:\n{}",
                director_tail(lab)
            )
        });
    let want_tail = format!(
        "bytes={} fnv={:016x}",
        data.len(),
        uvs::lab::responder::fnv1a64(data)
    );
    let body = body.trim();
    let (name, got_tail) = body
        .split_once(' ')
        .unwrap_or_else(|| panic!("unexpected upload answer {body:?}"));
    assert_eq!(
        got_tail, want_tail,
        "upload {tag} via {url} arrived altered at {name}"
    );
    name.to_string()
}
/// Starts a slow upload (`bytes` at `rate`) through the VIP: a long-lived connection whose
/// every segment goes through the director. Returns (pid, output file, expected tail).
pub fn start_slow_upload(
    lab: &mut Lab,
    url: &str,
    tag: &str,
    bytes: usize,
    rate: &str,
) -> (u32, PathBuf, String) {
    let data = pseudo_random(bytes, 0x5eed + bytes as u64);
    let file = lab.dir().join(format!("up-{tag}.bin"));
    std::fs::write(&file, &data).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let out = lab.dir().join(format!("up-{tag}.out"));
    let at = format!("@{}", path_str(&file));
    let pid = lab
        .spawn(
            "client",
            &[
                "curl",
                "-sS",
                "--noproxy",
                "*",
                "--max-time",
                "60",
                "--limit-rate",
                rate,
                "-o",
                path_str(&out),
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &at,
                url,
            ],
            &lab.dir().join(format!("up-{tag}.log")),
        )
        .unwrap();
    let want = format!(
        "bytes={} fnv={:016x}",
        data.len(),
        uvs::lab::responder::fnv1a64(&data)
    );
    (pid, out, want)
}

/// Waits for the uploads of [`start_slow_upload`]; how many did not arrive intact.
pub fn broken_uploads(lab: &mut Lab, uploads: &[(u32, PathBuf, String)]) -> usize {
    let mut broken = 0;
    for (pid, out, want) in uploads {
        assert!(
            wait_exit(lab, *pid, Duration::from_secs(30)),
            "upload still running"
        );
        let body = std::fs::read_to_string(out).unwrap_or_default();
        if !body.trim().ends_with(want.as_str()) {
            broken += 1;
            eprintln!("broken upload: got {body:?}, want …{want}");
        }
    }
    broken
}
