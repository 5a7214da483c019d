//! `uvs doctor` on a broken lab: rs2 answers ARP for the VIP (arp_ignore back to 0), rs1 lacks
//! the VIP on its loopback. The doctor names both, from the files before uvs starts and from
//! the running daemon afterwards; the daemon itself counts and logs the VIP conflict.

use std::time::Duration;

use uvs::lab::{Lab, addr};

use crate::common::{self, As, Director};

/// `uvs doctor ARGS` in the director's namespace: (success, stdout then stderr).
fn doctor(lab: &Lab, args: &[&str]) -> (bool, String) {
    let mut argv = vec!["doctor"];
    argv.extend_from_slice(args);
    let out = common::uvs_in(&lab.ns("dir"), As::Root, &argv);
    (out.ok(), out.stdout + &out.stderr)
}

#[test]
fn doctor_names_the_rs_answering_arp_for_the_vip_and_the_rs_without_the_vip() {
    let Some(ctx) = common::setup(74) else { return };
    let mut lab = ctx.web_lab();
    let vip = addr::VIP.to_string();

    // A healthy lab first: no problem found (services from the rules file, no uvs running).
    let rules = lab.dir().join("rules");
    std::fs::write(&rules, common::dr_rules('t', 80)).unwrap();
    let rules_s = common::path_str(&rules).to_string();
    let (ok, text) = doctor(&lab, &["--interface", "eth0", "--rules", &rules_s]);
    eprintln!("healthy lab:\n{text}");
    assert!(ok, "a healthy lab has no problem:\n{text}");
    assert!(text.contains("real server 10.0.0.11 answers on VIP 10.0.0.100:80 (SYN-ACK)"));

    // Break it: rs2 answers ARP for the VIP, rs1 has no VIP on lo.
    lab.set_sysctls(
        "rs2",
        &[
            ("net.ipv4.conf.all.arp_ignore", "0"),
            ("net.ipv4.conf.eth0.arp_ignore", "0"),
        ],
    )
    .unwrap();
    lab.exec_ok(
        "rs1",
        &["ip", "addr", "del", &format!("{vip}/32"), "dev", "lo"],
    )
    .unwrap();
    let rs2_mac = common::mac_str(addr::HOST_RS2, 0);
    let check = |text: &str| {
        assert!(
            text.contains(&format!(
                "real server 10.0.0.12 ({rs2_mac}) answers ARP for VIP {vip}: set arp_ignore=1"
            )),
            "rs2 named as answering ARP for the VIP:\n{text}"
        );
        assert!(
            text.contains(&format!(
                "real server 10.0.0.11 does not answer on VIP {vip}:80"
            )),
            "rs1 reported as not answering on the VIP:\n{text}"
        );
        assert!(
            text.contains(&format!(
                "real server 10.0.0.12 answers on VIP {vip}:80 (SYN-ACK)"
            )),
            "{text}"
        );
    };
    let (ok, text) = doctor(&lab, &["--interface", "eth0", "--rules", &rules_s]);
    eprintln!("broken lab, from the rules:\n{text}");
    assert!(!ok, "problems make doctor fail");
    check(&text);
    assert!(
        text.contains("no uvs runs: no nftables table expected"),
        "{text}"
    );

    // With uvs running: services from its admin socket; its table is checked too.
    let d = Director::rr_http().start(&mut lab);
    let (ok, text) = doctor(&lab, &[]);
    eprintln!("broken lab, from the daemon:\n{text}");
    assert!(!ok);
    assert!(text.contains("services: from the running uvs"), "{text}");
    assert!(
        text.contains("kernel-copy suppression: nftables table netdev uvs present"),
        "{text}"
    );
    check(&text);
    // The daemon saw rs2's answer to the doctor's request too: counted and logged.
    let counted = common::poll(Duration::from_secs(3), || {
        (d.metric("uvs_arp_ignored_total", &[("reason", "vip_conflict")]) >= 1.0).then_some(())
    });
    assert!(counted.is_some(), "vip_conflict counted");
    assert!(
        d.tail()
            .contains(&format!("another host ({rs2_mac}) claims VIP {vip}")),
        "{}",
        d.tail()
    );
    assert!(d.is_running(&mut lab));
}
