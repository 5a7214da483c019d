//! Added latency at low load: UDP round trips from the lab's client to the VIP (through uvs)
//! and to the real server's own address (through the router only), interleaved, in one run,
//! for each receive-ring layout. "Added" = RTT via the VIP − RTT via the real address, so the
//! client, router and real server costs cancel out.
//!
//! Run as root: `cargo bench --bench latency` (about 40 s). Prints p50/p99 per ring version.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use uvs::lab::{LabOptions, build_dr_lab};

const PROBES: usize = 1000;

// One socket per probe: a late reply can never be taken for the answer to a later probe.
const CLIENT_SCRIPT: &str = r#"
import socket, sys, time
vip, rip, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def once(ip):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2.0)
    s.connect((ip, 53))
    t = time.perf_counter_ns()
    s.send(b"x")
    s.recv(64)
    d = (time.perf_counter_ns() - t) / 1000.0
    s.close()
    return d
va, vb = [], []
for i in range(n + 20):
    a, b = once(vip), once(rip)
    if i >= 20:
        va.append(a); vb.append(b)
    time.sleep(0.002)
va.sort(); vb.sort()
q = lambda v, p: v[min(len(v) - 1, int(len(v) * p))]
print(f"{q(va,0.5):.1f} {q(va,0.99):.1f} {q(vb,0.5):.1f} {q(vb,0.99):.1f}")
"#;

fn uvs_exe() -> PathBuf {
    // cargo bench builds the bin next to the bench executable's parent directory.
    let me = std::env::current_exe().unwrap_or_default();
    let dir = me
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    dir.join("uvs")
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let exe = uvs_exe();
    anyhow::ensure!(
        exe.exists(),
        "build the binary first: cargo build --release ({})",
        exe.display()
    );
    let prefix = format!("ubl{}-", std::process::id() % 10000);
    let mut lab = build_dr_lab(&prefix, &LabOptions::default())?;
    lab.start_udp_echo("rs1", "rs1", 53, &exe)?;
    let rules = lab.dir().join("rules");
    std::fs::write(
        &rules,
        "-A -u 10.0.0.100:53 -s rr\n-a -u 10.0.0.100:53 -r 10.0.0.11:53 -g -w 1\n",
    )?;
    let script = lab.dir().join("probe.py");
    std::fs::write(&script, CLIENT_SCRIPT)?;
    println!(
        "added round-trip latency at low load (UDP, {PROBES} probes 2 ms apart, each a new flow; µs)"
    );
    println!(
        "{:<28} {:>9} {:>9} {:>12} {:>12}",
        "ring", "p50", "p99", "direct p50", "direct p99"
    );
    for (name, toml) in [
        (
            "TPACKET_V3, 1 ms block timer",
            "[ring]\nversion = \"v3\"\nblock_timeout_ms = 1\n",
        ),
        (
            "TPACKET_V2",
            "[ring]\nversion = \"v2\"\nframe_size = 2048\n",
        ),
    ] {
        let cfg = lab.dir().join("ring.toml");
        std::fs::write(&cfg, toml)?;
        let log = lab.dir().join("director.log");
        let pid = lab.start_director(
            &exe,
            &[
                "--interface",
                "eth0",
                "--metrics",
                "off",
                "--config",
                path(&cfg)?,
                "--rules",
                path(&rules)?,
            ],
            &log,
        )?;
        let out = lab.exec_ok(
            "client",
            &[
                "python3",
                path(&script)?,
                "10.0.0.100",
                "10.0.0.11",
                &PROBES.to_string(),
            ],
        )?;
        lab.kill(pid);
        let v: Vec<f64> = out
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        anyhow::ensure!(v.len() == 4, "unexpected probe output: {out}");
        println!(
            "{:<28} {:>9.1} {:>9.1} {:>12.1} {:>12.1}",
            name,
            v[0] - v[2],
            v[1] - v[3],
            v[2],
            v[3]
        );
    }
    Ok(())
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}
