//! uvsadm against a running director: an unmodified ipvsadm script through an `ipvsadm` link,
//! authorisation from the peer's credentials, the no-daemon message, live listings.

use std::path::Path;
use std::process::Command;

use uvs::lab::{Lab, addr, addr::two_arm as a};

use crate::common::{self, As, Director, path_str, uvsadm_exe};

/// A director with no service yet, configured by uvsadm afterwards.
fn start_empty_director(lab: &mut Lab, interfaces: &[&str]) -> Director {
    interfaces
        .iter()
        .fold(Director::launch().metrics_off(), |l, i| l.interface(i))
        .start(lab)
}

#[test]
fn an_unmodified_ipvsadm_script_runs_with_ipvsadm_linked_to_uvsadm() {
    let Some(ctx) = common::setup(40) else { return };
    let mut lab = ctx.two_arm_lab();
    let d = start_empty_director(&mut lab, &["veth10", "veth12"]);
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
        d.tail()
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
    let mut lab = ctx.web_lab();

    // No director yet: a clear message naming the namespace, non-zero exit.
    let out = common::uvsadm_in(&lab.ns("dir"), As::Root, &["-Ln"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains(&lab.ns("dir")),
        "the message names the namespace: {}",
        out.stderr
    );

    let d = start_empty_director(&mut lab, &["eth0"]);
    let vip = format!("{}:80", addr::VIP);
    for args in [
        vec!["-A", "-t", vip.as_str(), "-s", "rr"],
        vec!["-a", "-t", vip.as_str(), "-r", "10.0.0.11", "-g", "-w", "1"],
        vec!["-a", "-t", vip.as_str(), "-r", "10.0.0.12", "-g", "-w", "1"],
    ] {
        let out = d.uvsadm(&args);
        assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{args:?}");
    }
    let answers = common::curl_vip(&lab, 6);
    assert_eq!(common::count(&answers).len(), 2, "{answers:?}");

    // An unprivileged user cannot change anything...
    let denied = d.uvsadm_as(As::Nobody, &["-D", "-t", vip.as_str()]);
    assert_ne!(denied.code, 0);
    assert!(
        denied.stderr.contains("Permission denied"),
        "{}",
        denied.stderr
    );
    // ...but may list, and the service is still there with the traffic counted.
    let listed = d.uvsadm_as(As::Nobody, &["-L", "-n", "--stats"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let out = listed.stdout;
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
    let conns = d.uvsadm(&["-lnc"]);
    assert_eq!(conns.code, 0);
    let out = conns.stdout;
    assert!(out.starts_with("IPVS connection entries\npro expire state       source             virtual            destination\n"), "{out}");
    assert!(out.lines().skip(2).count() >= 6, "{out}");
    // Save and restore through the running director is the identity.
    let saved = d.uvsadm(&["-S", "-n"]).stdout;
    let cleared = d.uvsadm(&["-C"]);
    assert_eq!((cleared.code, cleared.stderr.as_str()), (0, ""));
    let exe = uvsadm_exe();
    let restore = [path_str(&exe), "-R"];
    let restored = common::run_fed_in(d.ns(), As::Root, &restore, Some(saved.as_bytes()));
    assert!(restored.ok());
    let again = d.uvsadm(&["-S", "-n"]).stdout;
    assert_eq!(again, saved);
    assert_eq!(common::count(&common::curl_vip(&lab, 4)).len(), 2);
}
