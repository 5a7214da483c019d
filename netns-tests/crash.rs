//! A killed director leaves nothing in its namespace's kernel: its nftables tables belong to
//! its netlink socket and the VIP MAC's unicast-filter entry to its ARP socket, and the kernel
//! closes both when the process dies, however it dies. So a keepalived started on the same
//! host right after a SIGKILL owns the VIP at once: its kernel answers ARP and serves the VIP.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use uvs::lab::{Lab, LabOptions, addr, build_dr_lab};

use crate::common::{self, Director, path_str, poll};

/// The `uvs` tables in the director's namespace, as `nft list tables` prints them.
fn uvs_tables(lab: &Lab) -> Vec<String> {
    lab.exec_ok("dir", &["nft", "list", "tables"])
        .unwrap_or_else(|e| panic!("nft list tables: {e:#}"))
        .lines()
        .filter(|l| l.trim_end().ends_with(" uvs"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// The director's eth0 promiscuity count (`ip -d link`): a VIP MAC in the unicast list of a
/// device without a unicast filter raises it.
fn promiscuity(lab: &Lab) -> u32 {
    let out = lab
        .exec_ok("dir", &["ip", "-d", "link", "show", "dev", "eth0"])
        .unwrap_or_else(|e| panic!("ip link: {e:#}"));
    let w: Vec<&str> = out.split_whitespace().collect();
    w.iter()
        .position(|x| *x == "promiscuity")
        .and_then(|i| w.get(i + 1)?.parse().ok())
        .unwrap_or_else(|| panic!("no promiscuity in {out}"))
}

fn vip_on_eth0(lab: &Lab) -> bool {
    lab.exec_ok("dir", &["ip", "-4", "addr", "show", "dev", "eth0"])
        .unwrap_or_default()
        .contains(&format!("{}/", addr::VIP))
}

/// keepalived (VRRP only) in the director's namespace, MASTER for the VIP at once.
fn start_keepalived(lab: &mut Lab, ka: &Path, tag: &str) -> u32 {
    let dir = lab.dir().to_path_buf();
    let conf = format!(
        "global_defs {{\n router_id crash_{tag}\n vrrp_garp_master_delay 0\n}}\n\
         vrrp_instance VI_1 {{\n state MASTER\n interface eth0\n virtual_router_id 51\n \
         version 3\n priority 150\n advert_int 0.1\n \
         virtual_ipaddress {{\n {}/32\n }}\n}}\n",
        addr::VIP
    );
    let cfg = dir.join(format!("keepalived-{tag}.conf"));
    std::fs::write(&cfg, conf).expect("keepalived.conf");
    lab.spawn(
        "dir",
        &[
            path_str(ka),
            "-n",
            "-l",
            "-D",
            "-P",
            "-f",
            path_str(&cfg),
            "-p",
            path_str(&dir.join(format!("keepalived-{tag}.pid"))),
            "-r",
            path_str(&dir.join(format!("keepalived-vrrp-{tag}.pid"))),
        ],
        &dir.join(format!("keepalived-{tag}.log")),
    )
    .expect("starting keepalived")
}

#[test]
fn a_killed_director_leaves_nothing_behind_and_keepalived_then_serves_its_vip() {
    let Some(ctx) = common::setup(96) else { return };
    let Some(ka) = crate::ha::keepalived_or_skip() else {
        return;
    };
    let mut lab = build_dr_lab(&ctx.prefix, &LabOptions::default())
        .unwrap_or_else(|e| panic!("building the DR lab: {e:#}"));
    common::start_web(&mut lab);
    // What the director's host serves itself once keepalived holds the VIP there.
    lab.start_builtin_http("dir", "director", 80, &common::uvs_exe())
        .expect("web server on the director");
    let dir_mac = lab.mac_str("dir", "eth0").unwrap();
    let promiscuity_before = promiscuity(&lab);

    for vip_mac in [None, Some("02:00:5e:00:01:0a")] {
        let tag = if vip_mac.is_some() {
            "vip-mac"
        } else {
            "plain"
        };
        let director = match vip_mac {
            None => Director::rr_http().start(&mut lab),
            Some(m) => Director::rr_http()
                .config(&format!("[arp]\nvip_mac = \"{m}\"\n"))
                .start(&mut lab),
        };
        let answers = common::curl_vip(&lab, 2);
        assert!(answers.iter().all(|a| a.starts_with("rs")), "{answers:?}");
        let service_table = if vip_mac.is_some() {
            "table ip uvs"
        } else {
            "table netdev uvs"
        };
        assert_eq!(uvs_tables(&lab), [service_table, "table arp uvs"], "{tag}");
        let promiscuity_running = promiscuity(&lab);
        if vip_mac.is_some() {
            // veth has no unicast filter: the VIP MAC makes it promiscuous.
            assert_eq!(promiscuity_running, promiscuity_before + 1, "{tag}");
        }

        director.signal(&lab, libc::SIGKILL);
        let killed = Instant::now();
        let mut left = uvs_tables(&lab);
        while !left.is_empty() && killed.elapsed() < Duration::from_secs(1) {
            thread::sleep(Duration::from_millis(20));
            left = uvs_tables(&lab);
        }
        let took = killed.elapsed();
        eprintln!(
            "{tag}: {} uvs table(s) left {took:?} after SIGKILL",
            left.len()
        );
        assert!(
            left.is_empty(),
            "{tag}: a second after SIGKILL the director's namespace still has {left:?}"
        );
        assert_eq!(
            promiscuity(&lab),
            promiscuity_before,
            "{tag}: the VIP MAC outlived the director"
        );
        director.stop(&mut lab);

        // keepalived on the same host takes the VIP.
        let k = start_keepalived(&mut lab, &ka, tag);
        let master = poll(Duration::from_secs(5), || vip_on_eth0(&lab).then_some(()));
        assert!(
            master.is_some(),
            "keepalived did not take the VIP\n{}",
            uvs::lab::tail(&lab.dir().join(format!("keepalived-{tag}.log")), 30)
        );
        // The router forgets the VIP's MAC (a VIP MAC, or the director's learned from uvs):
        // reaching the VIP again takes an ARP reply from the director's kernel.
        lab.exec_ok(
            "router",
            &["ip", "neigh", "flush", "to", &addr::VIP.to_string()],
        )
        .expect("ip neigh flush");
        let url = format!("http://{}/", addr::VIP);
        let body = lab
            .curl("client", &url, &["--max-time", "5"])
            .unwrap_or_else(|e| panic!("{tag}: the VIP held by keepalived: {e:#}"));
        assert_eq!(body.trim(), "director", "{tag}");
        let neigh = lab
            .exec_ok("router", &["ip", "neigh", "show", &addr::VIP.to_string()])
            .unwrap_or_default();
        assert!(
            neigh.contains(&format!("lladdr {dir_mac} ")),
            "{tag}: the router learned the VIP from the director's kernel: {neigh}"
        );
        lab.kill(k);
        let released = poll(Duration::from_secs(5), || {
            (!vip_on_eth0(&lab)).then_some(())
        });
        assert!(released.is_some(), "keepalived kept the VIP after SIGTERM");
    }
}
