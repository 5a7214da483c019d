//! `uvs run --takeover`: a restart under load breaks no connection, for each forwarding method
//! whose connections can be handed over (DR, NAT, TUN), with a scheduler that would send a
//! rescheduled connection elsewhere (rr over two reals). Long uploads run through the VIP while
//! a second uvs with the same arguments takes over; the old one exits, every upload arrives
//! intact, and the new one says how long forwarding paused.

use std::path::Path;
use std::time::Duration;

use uvs::lab::build::{build_topology, start_http_servers};
use uvs::lab::spec::LabSpec;
use uvs::lab::{Lab, LabOptions, addr, build_tun_lab};

use crate::common::{self, Director, Launch};

const UPLOADS: usize = 6;

fn launch(rules: &str) -> Launch {
    Director::launch()
        .rules(rules)
        .interface("eth0")
        .args(&["--workers", "2"])
        .metrics_off()
}

/// Starts uploads to `url`, takes the director over mid-way, and checks them all.
fn takeover_under_load(lab: &mut Lab, rules: &str, url: &str, tag: &str) {
    let old = launch(rules).start(lab);
    let uploads: Vec<_> = (0..UPLOADS)
        .map(|i| common::start_slow_upload(lab, url, &format!("{tag}{i}"), 300_000, "60K"))
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let listed = old.uvsadm(&["-Lnc"]).checked();
    let established = listed.lines().filter(|l| l.contains("ESTABLISHED")).count();
    assert_eq!(established, UPLOADS, "before the takeover:\n{listed}");

    let new = launch(rules).args(&["--takeover"]).start(lab);
    assert!(
        common::wait_exit(lab, old.pid(), Duration::from_secs(10)),
        "the old uvs did not exit after the handover:\n{}",
        old.tail()
    );
    // The new one takes the old one's admin socket and nftables table once it is gone.
    let log = common::poll(Duration::from_secs(5), || {
        let log = new.log();
        log.contains("takeover complete").then_some(log)
    })
    .unwrap_or_else(|| panic!("{tag}: the takeover did not complete:\n{}", new.log()));
    for line in log.lines().filter(|l| l.contains("takeover")) {
        eprintln!("{tag}: {}", line.split("] ").last().unwrap_or(line));
    }
    assert!(
        log.contains(&format!("takeover: {UPLOADS} connection(s) adopted")),
        "{log}"
    );
    let tables = lab
        .exec_ok("dir", &["nft", "list", "tables"])
        .unwrap_or_default();
    assert!(
        tables.contains("uvs"),
        "no uvs table after the takeover: {tables}"
    );
    // Each connection is adopted on its next packet (a rate-limited upload pauses between
    // bursts).
    let established = || {
        let listed = new.uvsadm(&["-Lnc"]).checked();
        let n = listed.lines().filter(|l| l.contains("ESTABLISHED")).count();
        (n, listed)
    };
    if common::poll(Duration::from_secs(3), || {
        (established().0 == UPLOADS).then_some(())
    })
    .is_none()
    {
        panic!("{tag}: after the takeover:\n{}", established().1);
    }

    let broken = common::broken_uploads(lab, &uploads);
    assert_eq!(
        broken,
        0,
        "{tag}: uploads broken by the takeover\n{}",
        new.tail()
    );
    // The new one serves new connections as well.
    let answer = lab
        .curl("client", url, &[])
        .unwrap_or_else(|e| panic!("{tag}: a new request after the takeover: {e:#}"));
    assert!(answer.trim().starts_with("rs"), "{answer}");
    new.stop(lab);
}

#[test]
fn takeover_keeps_dr_connections() {
    let Some(ctx) = common::setup(190) else {
        return;
    };
    let mut lab = ctx.dr_lab();
    for rs in ["rs1", "rs2"] {
        lab.start_builtin_http(rs, rs, 80, &common::uvs_exe())
            .unwrap_or_else(|e| panic!("web server on {rs}: {e:#}"));
    }
    // With no director to take over from: refused, nothing started.
    let exe = common::uvs_exe();
    let out = lab
        .exec(
            "dir",
            &[
                common::path_str(&exe),
                "run",
                "--takeover",
                "--interface",
                "eth0",
                "--metrics",
                "off",
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no running uvs to take over from"),
        "{err}"
    );
    let url = format!("http://{}/", addr::VIP);
    takeover_under_load(&mut lab, &common::dr_rules('t', 80), &url, "dr");
}

#[test]
fn takeover_keeps_nat_connections() {
    let Some(ctx) = common::setup(191) else {
        return;
    };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/labs/nat-one-arm.toml");
    let spec = LabSpec::load(&file).unwrap_or_else(|e| panic!("nat-one-arm: {e:#}"));
    let mut lab = build_topology(&spec, Some(&ctx.prefix), &LabOptions { offloads: true })
        .unwrap_or_else(|e| panic!("building nat-one-arm: {e:#}"));
    start_http_servers(&mut lab, &spec, &common::uvs_exe())
        .unwrap_or_else(|e| panic!("nat-one-arm: web servers: {e:#}"));
    let rules = "-A -t 192.168.80.10:80 -s rr\n\
                 -a -t 192.168.80.10:80 -r 192.168.80.11:8080 -m\n\
                 -a -t 192.168.80.10:80 -r 192.168.80.12:8080 -m\n";
    takeover_under_load(&mut lab, rules, "http://192.168.80.10/", "nat");
}

#[test]
fn takeover_keeps_tun_connections() {
    let Some(ctx) = common::setup(192) else {
        return;
    };
    let mut lab = build_tun_lab(
        &ctx.prefix,
        &LabOptions { offloads: true },
        &common::uvs_exe(),
    )
    .unwrap_or_else(|e| panic!("building the TUN lab: {e:#}"));
    for rs in ["rs1", "rs2"] {
        lab.start_builtin_http(rs, rs, 80, &common::uvs_exe())
            .unwrap_or_else(|e| panic!("web server on {rs}: {e:#}"));
    }
    let rules = "-A -t 203.0.113.2:80 -s rr\n\
                 -a -t 203.0.113.2:80 -r 10.0.0.2 -i\n\
                 -a -t 203.0.113.2:80 -r 10.0.0.6 -i\n";
    takeover_under_load(&mut lab, rules, "http://203.0.113.2/", "tun");
}
