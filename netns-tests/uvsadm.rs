//! uvsadm against a running director: an unmodified ipvsadm script through an `ipvsadm` link,
//! authorisation from the peer's credentials, the no-daemon message, live listings.

use std::path::{Path, PathBuf};
use std::process::Command;

use uvs::lab::{Lab, LabOptions, addr, addr::two_arm as a, build_dr_lab, build_two_arm_lab};

use crate::common;
use crate::common::start_web;

fn uvsadm_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_uvsadm"))
}

/// Runs uvsadm in a namespace (optionally as `nobody`): (exit code, stdout, stderr).
fn uvsadm(lab: &Lab, host: &str, as_nobody: bool, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.ns(host)]);
    if as_nobody {
        cmd.args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ]);
    }
    let out = cmd
        .arg(uvsadm_exe())
        .args(args)
        .output()
        .expect("running uvsadm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn start_empty_director(lab: &mut Lab, interfaces: &[&str]) -> u32 {
    let log = common::director_log(lab);
    let mut args = vec!["--metrics", "off"];
    for i in interfaces {
        args.extend(["--interface", i]);
    }
    lab.start_director(&common::uvs_exe(), &args, &log)
        .unwrap_or_else(|e| panic!("starting the director: {e:#}"))
}

#[test]
fn an_unmodified_ipvsadm_script_runs_with_ipvsadm_linked_to_uvsadm() {
    let Some(ctx) = common::setup(40) else { return };
    let mut lab = build_two_arm_lab(&ctx.prefix, &LabOptions::default())
        .unwrap_or_else(|e| panic!("building the two-arm lab: {e:#}"));
    start_empty_director(&mut lab, &["veth10", "veth12"]);
    let bin = lab.dir().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::os::unix::fs::symlink(uvsadm_exe(), bin.join("ipvsadm")).expect("ipvsadm link");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("netns-tests/scripts/ipvsadm-dr.sh");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(&script)
        .args([lab.ns("client"), lab.ns("dir"), lab.ns("rs1")])
        .args([a::VIP.to_string(), a::RS1.to_string(), "8080".to_string()])
        .env("PATH", path)
        .output()
        .expect("running the script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("DR data transfer: PASS"),
        "script failed:\n{stdout}\n{stderr}\ndirector:\n{}",
        common::director_tail(&lab)
    );
    // `ipvsadm -Ln` inside the script printed ipvsadm's listing.
    assert!(
        stdout.contains("IP Virtual Server version 1.2.1 (size=4096)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("TCP  {}:8080 rr", a::VIP)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "  -> {:<28} Route   1",
            format!("{}:8080", a::RS1)
        )),
        "{stdout}"
    );
}

#[test]
fn changes_need_root_and_listings_show_the_traffic() {
    let Some(ctx) = common::setup(41) else { return };
    let mut lab = build_dr_lab(&ctx.prefix, &LabOptions::default())
        .unwrap_or_else(|e| panic!("building the DR lab: {e:#}"));
    start_web(&mut lab);

    // No director yet: a clear message naming the namespace, non-zero exit.
    let (code, _, err) = uvsadm(&lab, "dir", false, &["-Ln"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&lab.ns("dir")),
        "the message names the namespace: {err}"
    );

    start_empty_director(&mut lab, &["eth0"]);
    let vip = format!("{}:80", addr::VIP);
    for args in [
        vec!["-A", "-t", vip.as_str(), "-s", "rr"],
        vec!["-a", "-t", vip.as_str(), "-r", "10.0.0.11", "-g", "-w", "1"],
        vec!["-a", "-t", vip.as_str(), "-r", "10.0.0.12", "-g", "-w", "1"],
    ] {
        let (code, _, err) = uvsadm(&lab, "dir", false, &args);
        assert_eq!((code, err.as_str()), (0, ""), "{args:?}");
    }
    let answers = common::curl_vip(&lab, 6);
    assert_eq!(common::count(&answers).len(), 2, "{answers:?}");

    // An unprivileged user cannot change anything...
    let (code, _, err) = uvsadm(&lab, "dir", true, &["-D", "-t", vip.as_str()]);
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");
    // ...but may list, and the service is still there with the traffic counted.
    let (code, out, err) = uvsadm(&lab, "dir", true, &["-L", "-n", "--stats"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("TCP  {vip}")))
        .unwrap_or_else(|| panic!("service line in:\n{out}"));
    let conns: u64 = line
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(conns, 6, "{line}");
    let (code, out, _) = uvsadm(&lab, "dir", false, &["-lnc"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("IPVS connection entries\npro expire state       source             virtual            destination\n"), "{out}");
    assert!(out.lines().skip(2).count() >= 6, "{out}");
    // Save and restore through the running director is the identity.
    let (_, saved, _) = uvsadm(&lab, "dir", false, &["-S", "-n"]);
    let (code, _, err) = uvsadm(&lab, "dir", false, &["-C"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let mut restore = Command::new("ip");
    restore
        .args(["netns", "exec", &lab.ns("dir")])
        .arg(uvsadm_exe())
        .arg("-R")
        .stdin(std::process::Stdio::piped());
    let mut child = restore.spawn().expect("uvsadm -R");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(saved.as_bytes())
        .expect("write");
    assert!(child.wait().expect("wait").success());
    let (_, again, _) = uvsadm(&lab, "dir", false, &["-S", "-n"]);
    assert_eq!(again, saved);
    assert_eq!(common::count(&common::curl_vip(&lab, 4)).len(), 2);
}
