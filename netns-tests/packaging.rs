//! The Debian package's uvs.service, as far as it can be tested without systemd as PID 1:
//! uvs run in the DR lab the way the unit runs it. An unprivileged user (the unit's
//! DynamicUser), the unit's capability set as bounding, permitted and ambient set, no_new_privs,
//! every file system read-only (ProtectSystem=strict is less), readiness,
//! reload and stop told on a NOTIFY_SOCKET, and the socket families it opens traced against
//! the unit's RestrictAddressFamilies. It must forward, answer uvsadm (a root client changes
//! it), install its nftables table and reload on SIGHUP as a root uvs does.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use uvs::lab::{Lab, LabOptions, addr, build_dr_lab, tail};

use crate::common::{self, path_str, start_web};

/// The value of `key=` in a unit file, or of its last occurrence.
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

/// The notifications the director sent, waiting up to `timeout` for one containing `want`.
fn wait_notify(socket: &UnixDatagram, want: &str, timeout: Duration, lab: &Lab) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        match socket.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = m.lines().any(|l| l == want);
                seen.push(m);
                if done {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!(
        "no {want} from the director within {timeout:?} (got {seen:?}); log:\n{}",
        tail(&lab.dir().join("dir.log"), 40)
    );
}

/// A `/proc/PID/status` field.
fn status_field(pid: u32, name: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// The capability bit of `CAP_NET_RAW`-style names (capability.h).
fn cap_bit(name: &str) -> u64 {
    match name {
        "CAP_NET_ADMIN" => 1 << 12,
        "CAP_NET_RAW" => 1 << 13,
        other => panic!("the test does not know {other}: add its bit"),
    }
}

#[test]
fn uvs_runs_as_the_unit_runs_it_unprivileged_read_only_and_notifying() {
    let Some(ctx) = common::setup(120) else {
        return;
    };
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd/uvs.service");
    let unit = std::fs::read_to_string(&unit_path).expect("uvs.service");
    let caps: Vec<String> = unit_value(&unit, "CapabilityBoundingSet")
        .expect("CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        unit_value(&unit, "AmbientCapabilities").as_deref(),
        Some(caps.join(" ").as_str()),
        "the unit grants as ambient exactly its bounding set"
    );
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("Type", "notify"),
    ] {
        assert_eq!(unit_value(&unit, k).as_deref(), Some(v), "{k}=");
    }
    let families: BTreeSet<String> = unit_value(&unit, "RestrictAddressFamilies")
        .expect("RestrictAddressFamilies")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let setpriv_caps: String = caps
        .iter()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let cap_mask: u64 = caps.iter().map(|c| cap_bit(c)).sum();

    let mut lab = build_dr_lab(&ctx.prefix, &LabOptions::default())
        .unwrap_or_else(|e| panic!("building the DR lab: {e:#}"));
    start_web(&mut lab);
    let dir = lab.dir().to_path_buf();
    let rules = dir.join("rules");
    std::fs::write(&rules, common::dr_rules('t', 80)).expect("rules");
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    // The unprivileged director must be able to send to it, as to systemd's.
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o666)).expect("chmod");

    // In a mount namespace of its own: every mount but the API file systems read-only, then
    // checked; strace (root, outside the sandbox it starts) records the sockets opened. The
    // memlock limit stays the default one: the unit's LimitMEMLOCK=infinity needs
    // CAP_SYS_RESOURCE to set, and without it the rings work unlocked.
    let script = format!(
        "mount --make-rprivate / && \
         for m in $(awk '{{print $5}}' /proc/self/mountinfo | sort -u); do \
           case $m in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) ;; \
             *) mount -o remount,bind,ro \"$m\" 2>/dev/null ;; esac; \
         done; \
         if [ -w / ] || [ -w {dir} ]; then echo 'file system still writable' >&2; exit 97; fi; \
         exec strace -f --seccomp-bpf -qq -e trace=socket \
           setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs \
             --inh-caps=-all{setpriv_caps} --ambient-caps=-all{setpriv_caps} \
             --bounding-set=-all{setpriv_caps} \
           env NOTIFY_SOCKET={notify} {uvs} run --rules {rules} --interface eth0",
        dir = path_str(&dir),
        notify = path_str(&notify_path),
        uvs = path_str(&common::uvs_exe()),
        rules = path_str(&rules),
    );
    let log = lab.dir().join("dir.log");
    let outer = lab
        .spawn("dir", &["unshare", "--mount", "sh", "-c", &script], &log)
        .expect("spawning the sandbox");
    wait_notify(&notify, "READY=1", Duration::from_secs(15), &lab);

    // The director: strace's child (setpriv and env exec in place).
    let children = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
        .expect("strace's children");
    let pid: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the director's PID");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "uvs"
    );
    assert!(
        status_field(pid, "Uid").starts_with("65534"),
        "{}",
        status_field(pid, "Uid")
    );
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    for field in ["CapEff", "CapPrm", "CapAmb", "CapBnd"] {
        let v = u64::from_str_radix(&status_field(pid, field), 16).expect(field);
        assert_eq!(
            v, cap_mask,
            "{field} is {v:#x}, the unit grants {cap_mask:#x}"
        );
    }

    // It forwards, and kept its own kernel off the VIP with nft (CAP_NET_ADMIN, inherited).
    let answers = common::curl_vip(&lab, 4);
    let c = common::count(&answers);
    assert_eq!(
        (c.get("rs1"), c.get("rs2")),
        (Some(&2), Some(&2)),
        "{answers:?}"
    );
    let tables = lab.exec_ok("dir", &["nft", "list", "tables"]).unwrap();
    assert!(tables.contains("netdev uvs"), "{tables}");

    // A root uvsadm changes the unprivileged director.
    let vip = addr::VIP;
    let rs2 = addr::RS2;
    let uvsadm = common::uvs_exe().with_file_name("uvsadm");
    lab.exec_ok(
        "dir",
        &[
            path_str(&uvsadm),
            "-e",
            "-t",
            &format!("{vip}:80"),
            "-r",
            &format!("{rs2}:80"),
            "-g",
            "-w",
            "3",
        ],
    )
    .unwrap_or_else(|e| panic!("uvsadm -e: {e:#}"));
    let ln = lab.exec_ok("dir", &[path_str(&uvsadm), "-Ln"]).unwrap();
    assert!(
        ln.contains(&format!("  -> {rs2}:80")) && ln.contains("Route   3"),
        "{ln}"
    );

    // systemctl reload: SIGHUP, told as RELOADING=1 then READY=1; the file wins again.
    std::fs::write(
        &rules,
        common::dr_rules('t', 80).replace("-w 1\n", "-w 2\n"),
    )
    .unwrap();
    // SAFETY: signalling the director this test started (its PID read above).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    let seen = wait_notify(&notify, "READY=1", Duration::from_secs(10), &lab);
    assert!(
        seen.iter()
            .any(|m| m.lines().next() == Some("RELOADING=1") && m.contains("MONOTONIC_USEC=")),
        "{seen:?}"
    );
    let ln = lab.exec_ok("dir", &[path_str(&uvsadm), "-Ln"]).unwrap();
    assert_eq!(ln.matches("Route   2").count(), 2, "{ln}");

    // systemctl stop: SIGTERM, told as STOPPING=1; the nftables table goes with it.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    wait_notify(&notify, "STOPPING=1", Duration::from_secs(10), &lab);
    let gone = common::poll(Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    assert!(gone.is_some(), "the director did not exit after SIGTERM");
    let tables = lab.exec_ok("dir", &["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("netdev uvs"), "{tables}");

    // Every socket family opened (the director's, nft's) is one the unit allows.
    let text = std::fs::read_to_string(&log).unwrap();
    let opened: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.split("socket(").nth(1))
        .filter_map(|rest| rest.split(',').next())
        .map(str::to_string)
        .collect();
    for needed in ["AF_PACKET", "AF_UNIX", "AF_NETLINK"] {
        assert!(
            opened.contains(needed),
            "strace saw no {needed} socket: {opened:?}"
        );
    }
    let refused: Vec<&String> = opened.difference(&families).collect();
    assert!(
        refused.is_empty(),
        "opened {refused:?}, which RestrictAddressFamilies= would refuse"
    );
    lab.kill(outer);
}
