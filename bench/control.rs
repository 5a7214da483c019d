//! Control plane at scale (issue 25): what a change costs with 1, 100 and 10,000 services.
//!
//! Run as root: `cargo bench --bench control` (about 3 minutes; `-- --sizes 1,100` for fewer,
//! `-- --reals 1` for one real per service, `-- --uvs PATH` to measure another build). Prints
//! one row per size and asserts nothing (bench/README.md records the figures).
//!
//! For each size it starts a director in the DR lab (`uvs::lab`) with one UDP service, the
//! traffic service (10.0.0.100:53 → rs1, rs2, each running a UDP echo bound to the VIP),
//! then measures, against that one running daemon:
//! - **load**: `uvsadm -R` of the other services (TCP 10.0.0.100:10000+i, each with the shared
//!   real rs1 and, with `--reals 2`, rs2), wall time of the command;
//! - **memory per service**: the daemon's resident set after the load minus before, divided
//!   by the services loaded;
//! - **`-e` latency**: a weight change of the traffic service's rs2 (between 1 and 3, never 0),
//!   p50/p99 of 300 changes sent over the admin socket from this process (in-process: one
//!   connection, one request, one reply each) and of 100 `uvsadm -e` commands (a process each);
//! - **`-A`/`-D` latency**: p50 of 100 service deletions and additions over the admin socket,
//!   each one request (`-D` of a service near the front of the table, then `-A` of it back with
//!   its real rs1; at 1 service, a service of its own added and deleted);
//! - **sustained changes/s**: weight changes sent back to back over the admin socket for 2 s;
//! - **packets lost under changes**: the client sends UDP datagrams at 2,000/s over 16 flows
//!   (16 sockets, each datagram numbered; the reals echo it) for 5 s while this process applies
//!   1,000 weight changes a second; lost = sent − echoed. The flows' first datagrams are
//!   scheduled while the changes run, so new and established flows are both covered.
//!
//! The lab's addresses are private and exist only inside the lab's namespaces.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use uvs::ctl::backend::{Backend, SocketBackend, SocketLocation};
use uvs::ctl::proto::{Reply, Request};
use uvs::lab::{LabOptions, build_dr_lab};
use uvs::model::change::Change;
use uvs::model::{Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec};

const VIP: &str = "10.0.0.100";
const RS1: &str = "10.0.0.11";
const RS2: &str = "10.0.0.12";
const VIP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const RS1_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const RS2_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
const TRAFFIC_PORT: u16 = 53;
const FIRST_PORT: u16 = 10000;

const ECHO_SCRIPT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(d, a)
"#;

// Numbered datagrams over `flows` sockets at `rate`/s for `secs`; prints "sent echoed".
const CLIENT_SCRIPT: &str = r#"
import socket, sys, time, select
vip, port, rate, secs, flows = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
socks = []
for _ in range(flows):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((vip, port))
    s.setblocking(False)
    socks.append(s)
got = set()
def drain(timeout):
    r, _, _ = select.select(socks, [], [], timeout)
    for s in r:
        while True:
            try:
                d = s.recv(2048)
            except BlockingIOError:
                break
            try:
                got.add(int(d.split()[0]))
            except (ValueError, IndexError):
                pass
sent = 0
t0 = time.monotonic()
nxt = t0
while time.monotonic() < t0 + secs:
    now = time.monotonic()
    while nxt <= now:
        try:
            socks[sent % flows].send(str(sent).encode())
        except OSError:
            pass
        sent += 1
        nxt += 1.0 / rate
    drain(max(0.0, nxt - time.monotonic()))
end = time.monotonic() + 1.0
while time.monotonic() < end and len(got) < sent:
    drain(0.05)
print(sent, len(got))
"#;

struct Args {
    sizes: Vec<usize>,
    reals: usize,
    uvs: PathBuf,
    uvsadm: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        sizes: vec![1, 100, 10_000],
        reals: 2,
        uvs: PathBuf::from(env!("CARGO_BIN_EXE_uvs")),
        uvsadm: PathBuf::from(env!("CARGO_BIN_EXE_uvsadm")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--sizes" => {
                a.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().context("--sizes: a number list"))
                    .collect::<Result<_>>()?;
            }
            "--reals" => a.reals = value()?.parse().context("--reals: 1 or 2")?,
            "--uvs" => {
                let dir = PathBuf::from(value()?);
                a.uvs = dir.join("uvs");
                a.uvsadm = dir.join("uvsadm");
            }
            // cargo bench passes --bench; the harness convention is to accept it.
            "--bench" => {}
            other => bail!("unknown argument {other} (--sizes N,N --reals 1|2 --uvs DIR)"),
        }
    }
    anyhow::ensure!(a.reals == 1 || a.reals == 2, "--reals is 1 or 2");
    Ok(a)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e3
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn traffic_key() -> ServiceKey {
    ServiceKey::addr(Protocol::Udp, VIP_ADDR, TRAFFIC_PORT)
}

/// The weight change the bench repeats: the traffic service's rs2, weight 1..=3.
fn weight_change(i: usize) -> Change {
    let mut spec = RealSpec::route(RS2_ADDR, TRAFFIC_PORT);
    spec.weight = 1 + (i % 3) as u32;
    Change::EditReal(traffic_key(), spec)
}

fn send(backend: &mut SocketBackend, change: Change) -> Result<()> {
    send_all(backend, vec![change])
}

fn send_all(backend: &mut SocketBackend, changes: Vec<Change>) -> Result<()> {
    match backend.call(&Request::Apply(changes))? {
        Reply::Done => Ok(()),
        other => bail!("change refused: {other:?}"),
    }
}

fn rules(services: usize, reals: usize) -> String {
    let mut r = String::new();
    for i in 0..services {
        let port = usize::from(FIRST_PORT) + i;
        r.push_str(&format!("-A -t {VIP}:{port} -s wrr\n"));
        r.push_str(&format!("-a -t {VIP}:{port} -r {RS1}:{port} -g -w 1\n"));
        if reals == 2 {
            r.push_str(&format!("-a -t {VIP}:{port} -r {RS2}:{port} -g -w 1\n"));
        }
    }
    r
}

struct Row {
    services: usize,
    load: Duration,
    kib_per_service: f64,
    rss_mib: f64,
    inproc: Vec<Duration>,
    command: Vec<Duration>,
    adds: Vec<Duration>,
    dels: Vec<Duration>,
    sustained: f64,
    paced_rate: f64,
    sent: u64,
    echoed: u64,
}

fn measure(args: &Args, lab: &mut uvs::lab::Lab, services: usize) -> Result<Row> {
    let dir = lab.dir().to_path_buf();
    let socket = dir.join("admin.sock");
    let _ = std::fs::remove_file(&socket);
    let first = dir.join("first.rules");
    std::fs::write(
        &first,
        format!(
            "-A -u {VIP}:{TRAFFIC_PORT} -s wrr\n\
             -a -u {VIP}:{TRAFFIC_PORT} -r {RS1}:{TRAFFIC_PORT} -g -w 1\n\
             -a -u {VIP}:{TRAFFIC_PORT} -r {RS2}:{TRAFFIC_PORT} -g -w 1\n"
        ),
    )?;
    let log = dir.join(format!("director-{services}.log"));
    let pid = lab.start_director(
        &args.uvs,
        &[
            "--interface",
            "eth0",
            "--metrics",
            "off",
            "--rules",
            path(&first)?,
            "--admin-socket",
            path(&socket)?,
        ],
        &log,
    )?;
    let result = measure_running(args, lab, services, pid, &socket);
    lab.kill(pid);
    result
}

fn measure_running(
    args: &Args,
    lab: &mut uvs::lab::Lab,
    services: usize,
    pid: u32,
    socket: &Path,
) -> Result<Row> {
    let dir = lab.dir().to_path_buf();
    let mut backend = SocketBackend {
        location: SocketLocation::Path(socket.to_path_buf()),
    };
    let uvsadm = |argv: &[&str]| -> Result<std::process::Output> {
        std::process::Command::new(&args.uvsadm)
            .arg("--admin-socket")
            .arg(socket)
            .args(argv)
            .output()
            .context("running uvsadm")
    };
    // The traffic service is the first; load the others.
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = rss_kib(pid)?;
    let loaded = services.saturating_sub(1);
    let rules_file = dir.join("load.rules");
    std::fs::write(&rules_file, rules(loaded, args.reals))?;
    let t = Instant::now();
    let out = std::process::Command::new(&args.uvsadm)
        .arg("--admin-socket")
        .arg(socket)
        .arg("-R")
        .stdin(std::fs::File::open(&rules_file)?)
        .output()
        .context("uvsadm -R")?;
    let load = t.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "uvsadm -R refused the {loaded} services: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_kib(pid)?;
    let kib_per_service = if loaded == 0 {
        f64::NAN
    } else {
        (rss_after as f64 - rss_before as f64) / loaded as f64
    };

    let mut inproc = Vec::with_capacity(300);
    for i in 0..300 {
        let t = Instant::now();
        send(&mut backend, weight_change(i))?;
        inproc.push(t.elapsed());
    }
    inproc.sort();
    let mut command = Vec::with_capacity(100);
    for i in 0..100 {
        let w = (1 + i % 3).to_string();
        let svc = format!("{VIP}:{TRAFFIC_PORT}");
        let t = Instant::now();
        let out = uvsadm(&["-e", "-u", &svc, "-r", RS2, "-g", "-w", &w])?;
        command.push(t.elapsed());
        anyhow::ensure!(
            out.status.success(),
            "uvsadm -e: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    command.sort();

    let (mut adds, mut dels) = (Vec::with_capacity(100), Vec::with_capacity(100));
    for i in 0..100 {
        let port = if loaded > 0 {
            FIRST_PORT + (i % loaded.min(100)) as u16
        } else {
            FIRST_PORT
        };
        let k = ServiceKey::addr(Protocol::Tcp, VIP_ADDR, port);
        let add = vec![
            Change::AddService(ServiceSpec::new(k, SchedulerKind::Wrr)),
            Change::AddReal(k, RealSpec::route(RS1_ADDR, port)),
        ];
        if loaded > 0 {
            let t = Instant::now();
            send(&mut backend, Change::DeleteService(k))?;
            dels.push(t.elapsed());
            let t = Instant::now();
            send_all(&mut backend, add)?;
            adds.push(t.elapsed());
        } else {
            let t = Instant::now();
            send_all(&mut backend, add)?;
            adds.push(t.elapsed());
            let t = Instant::now();
            send(&mut backend, Change::DeleteService(k))?;
            dels.push(t.elapsed());
        }
    }
    adds.sort();
    dels.sort();

    let t = Instant::now();
    let mut n = 0usize;
    while t.elapsed() < Duration::from_secs(2) {
        send(&mut backend, weight_change(n))?;
        n += 1;
    }
    let sustained = n as f64 / t.elapsed().as_secs_f64();

    // Traffic while 1,000 changes a second are applied.
    let script = dir.join("client.py");
    std::fs::write(&script, CLIENT_SCRIPT)?;
    let ns = lab.ns("client");
    let client = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "python3"])
        .arg(&script)
        .args([VIP, &TRAFFIC_PORT.to_string(), "2000", "5", "16"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting the traffic client")?;
    let t = Instant::now();
    let mut applied = 0usize;
    while t.elapsed() < Duration::from_secs(5) {
        let due = t + Duration::from_micros(1000 * applied as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        send(&mut backend, weight_change(applied))?;
        applied += 1;
    }
    let paced_rate = applied as f64 / t.elapsed().as_secs_f64();
    let out = client.wait_with_output().context("traffic client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = text
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let [sent, echoed] = v[..] else {
        bail!(
            "traffic client printed {text:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Ok(Row {
        services,
        load,
        kib_per_service,
        rss_mib: rss_after as f64 / 1024.0,
        inproc,
        command,
        adds,
        dels,
        sustained,
        paced_rate,
        sent,
        echoed,
    })
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let args = parse_args()?;
    for exe in [&args.uvs, &args.uvsadm] {
        anyhow::ensure!(exe.exists(), "{} is missing", exe.display());
    }
    let prefix = format!("ubc{}-", std::process::id() % 10000);
    let mut lab = build_dr_lab(&prefix, &LabOptions::default())?;
    let echo = lab.dir().join("echo.py");
    std::fs::write(&echo, ECHO_SCRIPT)?;
    let port = TRAFFIC_PORT.to_string();
    for rs in ["rs1", "rs2"] {
        let log = lab.dir().join(format!("{rs}-echo.log"));
        lab.spawn(rs, &["python3", path(&echo)?, VIP, &port], &log)?;
    }
    println!(
        "control plane at scale: {} real(s) per service ({}); times in ms",
        args.reals,
        args.uvs.display()
    );
    println!(
        "{:>8} {:>8} {:>9} {:>8} {:>15} {:>15} {:>13} {:>10} {:>16}",
        "services",
        "load s",
        "KiB/svc",
        "RSS MiB",
        "-e in-proc p50/p99",
        "-e cmd p50/p99",
        "-A/-D p50",
        "changes/s",
        "lost @ changes/s"
    );
    for &n in &args.sizes {
        match measure(&args, &mut lab, n.max(1)) {
            Ok(r) => println!(
                "{:>8} {:>8.2} {:>9.2} {:>8.1} {:>8.2}/{:<8.2} {:>7.2}/{:<7.2} {:>6.2}/{:<6.2} {:>10.0} {:>6}/{:<6} @ {:.0}",
                r.services,
                r.load.as_secs_f64(),
                r.kib_per_service,
                r.rss_mib,
                percentile(&r.inproc, 0.5),
                percentile(&r.inproc, 0.99),
                percentile(&r.command, 0.5),
                percentile(&r.command, 0.99),
                percentile(&r.adds, 0.5),
                percentile(&r.dels, 0.5),
                r.sustained,
                r.sent - r.echoed.min(r.sent),
                r.sent,
                r.paced_rate
            ),
            Err(e) => println!("{n:>8} failed: {e:#}"),
        }
    }
    Ok(())
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}
