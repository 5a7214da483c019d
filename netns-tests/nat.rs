//! LVS-NAT as the tutorials build it: the seed labs `configs/labs/nat-one-arm.toml` (VIP = the
//! director's own address, reals on 8080 behind it as their gateway) and `nat-two-arm.toml`
//! (public VIP, reals on a private network), checked the way a user checks them: who answers,
//! which addresses each side sees in tcpdump, whether bytes arrive intact, what `uvsadm` shows.

use std::path::Path;
use std::time::Duration;

use uvs::lab::build::{build_topology, start_http_servers};
use uvs::lab::spec::LabSpec;
use uvs::lab::{Lab, LabOptions};

use crate::common::{self, Director, Pkt};

const VIP: &str = "192.168.80.10";
const CLIENT: &str = "198.51.100.10";

/// The one-armed rules of the seed lab: wrr 3:2:1, port 80 mapped to 8080.
const ONE_ARM_RULES: &str = "\
-A -t 192.168.80.10:80 -s wrr
-a -t 192.168.80.10:80 -r 192.168.80.11:8080 -m -w 3
-a -t 192.168.80.10:80 -r 192.168.80.12:8080 -m -w 2
-a -t 192.168.80.10:80 -r 192.168.80.13:8080 -m -w 1
";

/// The seed lab `name` built under the test's prefix, its HTTP servers running.
fn seed_lab(ctx: &common::Ctx, name: &str, offloads: bool) -> Lab {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("configs/labs/{name}.toml"));
    let spec = LabSpec::load(&file).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let mut lab = build_topology(&spec, Some(&ctx.prefix), &LabOptions { offloads })
        .unwrap_or_else(|e| panic!("building {name} (offloads {offloads}): {e:#}"));
    start_http_servers(&mut lab, &spec, &common::uvs_exe())
        .unwrap_or_else(|e| panic!("{name}: web servers: {e:#}"));
    lab
}

fn one_arm_director(lab: &mut Lab) -> Director {
    Director::launch()
        .rules(ONE_ARM_RULES)
        .interface("eth0")
        .args(&["--workers", "2"])
        .admin_socket()
        .start(lab)
}

/// Packets of a capture that neither come from nor go to one of `allowed`.
fn foreign<'a>(pkts: &'a [Pkt], allowed: &[&str]) -> Vec<&'a str> {
    pkts.iter()
        .filter(|p| {
            [&p.src_ip, &p.dst_ip]
                .iter()
                .any(|ip| ip.as_deref().is_some_and(|ip| !allowed.contains(&ip)))
        })
        .map(|p| p.line.as_str())
        .collect()
}

/// `GET /bytes/N` from the client to `url`, saved to a file; checks length and contents.
fn download_and_verify(lab: &Lab, url: &str, n: usize, tag: &str) {
    let file = lab.dir().join(format!("download-{tag}.bin"));
    let target = format!("{url}bytes/{n}");
    lab.curl(
        "client",
        &target,
        &["--max-time", "60", "-o", common::path_str(&file)],
    )
    .unwrap_or_else(|e| {
        panic!(
            "download {tag} from {target}: {e:#}\ndirector log:\n{}",
            common::director_tail(lab)
        )
    });
    let got = std::fs::read(&file).unwrap_or_default();
    assert_eq!(got.len(), n, "download {tag}: length");
    assert!(
        got == uvs::lab::responder::pattern(n),
        "download {tag} from {target} arrived altered"
    );
}

#[test]
fn one_arm_nat_splits_by_weight_and_each_side_sees_only_its_peer() {
    let Some(ctx) = common::setup(130) else {
        return;
    };
    let mut lab = seed_lab(&ctx, "nat-one-arm", true);
    let d = one_arm_director(&mut lab);

    let client_pcap = lab.dir().join("client.pcap");
    let client_cap = lab
        .tcpdump_start("client", "eth0", "ip", &client_pcap)
        .unwrap();
    // The router's LAN side: a raw reply the director's kernel forwarded would show here.
    let router_pcap = lab.dir().join("router-eth1.pcap");
    let router_cap = lab
        .tcpdump_start("router", "eth1", "ip", &router_pcap)
        .unwrap();
    let rs1_pcap = lab.dir().join("rs1.pcap");
    let rs1_cap = lab
        .tcpdump_start("rs1", "eth0", "tcp port 8080", &rs1_pcap)
        .unwrap();

    let url = format!("http://{VIP}/");
    let answers: Vec<String> = (0..60)
        .map(|i| {
            lab.curl("client", &url, &[])
                .unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", d.tail()))
                .trim()
                .to_string()
        })
        .collect();
    let c = common::count(&answers);
    assert_eq!(
        (c.get("rs1"), c.get("rs2"), c.get("rs3")),
        (Some(&30), Some(&20), Some(&10)),
        "wrr 3:2:1 over 60 requests: {c:?}"
    );
    common::stop_capture(&mut lab, client_cap);
    common::stop_capture(&mut lab, rs1_cap);
    common::stop_capture(&mut lab, router_cap);
    let router_mac = lab.mac_str("router", "eth1").unwrap();
    let raw: Vec<_> = common::read_pcap(&lab, &router_pcap)
        .into_iter()
        .filter(|p| {
            p.dst_mac == router_mac
                && p.src_ip.as_deref().is_some_and(|s| {
                    ["192.168.80.11", "192.168.80.12", "192.168.80.13"].contains(&s)
                })
        })
        .map(|p| p.line)
        .collect();
    assert!(raw.is_empty(), "raw replies reached the router: {raw:#?}");

    // The client talks to the VIP only: no real's address, no raw reply leaking past the
    // director, and neither RST nor ICMP from the director's own kernel (the VIP is its address).
    let client = common::read_pcap(&lab, &client_pcap);
    assert!(
        client.len() > 60 * 5,
        "client capture: {} packets",
        client.len()
    );
    let leaked = foreign(&client, &[VIP, CLIENT]);
    assert!(
        leaked.is_empty(),
        "the client saw other addresses: {leaked:#?}"
    );
    let bad: Vec<_> = client
        .iter()
        .filter(|p| p.is_rst() || p.is_icmp())
        .map(|p| &p.line)
        .collect();
    assert!(bad.is_empty(), "RST/ICMP at the client: {bad:#?}");
    // Every reply came from port 80, none from the reals' 8080.
    assert!(
        !client
            .iter()
            .any(|p| p.line.contains(&format!("{VIP}.8080"))),
        "a reply kept the real's port"
    );

    // The real sees the client's own address (NAT keeps the source), on its own port.
    let rs1 = common::read_pcap(&lab, &rs1_pcap);
    let from_client = rs1
        .iter()
        .filter(|p| p.src_ip.as_deref() == Some(CLIENT))
        .count();
    assert!(
        from_client >= 30 * 3,
        "rs1 saw {from_client} packets from the client"
    );

    // What uvsadm shows: the Masq method, the mapped port, and the replies counted.
    let listing = d.uvsadm(&["-Ln"]).checked();
    for rs in [
        "192.168.80.11:8080",
        "192.168.80.12:8080",
        "192.168.80.13:8080",
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.contains(rs) && l.contains("Masq")),
            "{rs} Masq in:\n{listing}"
        );
    }
    let conns = d.uvsadm(&["-Lnc"]).checked();
    assert!(
        conns.lines().any(|l| l.contains("TIME_WAIT")
            && l.contains(&format!("{VIP}:80"))
            && l.contains(":8080")),
        "closed connections linger in TIME_WAIT with the real's port:\n{conns}"
    );
    let stats = d.uvsadm(&["-Ln", "--stats"]).checked();
    let service = stats
        .lines()
        .find(|l| l.starts_with("TCP") && l.contains(&format!("{VIP}:80")))
        .unwrap_or_else(|| panic!("no service line:\n{stats}"));
    let fields: Vec<&str> = service.split_whitespace().collect();
    // Prot LocalAddress:Port Conns InPkts OutPkts InBytes OutBytes
    let (conns_n, out_pkts): (u64, u64) = (
        fields[2].parse().unwrap_or(0),
        fields[4].parse().unwrap_or(0),
    );
    assert_eq!(conns_n, 60, "{service}");
    assert!(
        out_pkts >= 60 * 3,
        "NAT counts the replies it forwards: {service}"
    );
}

#[test]
fn one_arm_nat_carries_large_transfers_intact_with_and_without_offloads() {
    let Some(ctx) = common::setup(131) else {
        return;
    };
    for offloads in [true, false] {
        let mut lab = seed_lab(&ctx, "nat-one-arm", offloads);
        let d = one_arm_director(&mut lab);
        let url = format!("http://{VIP}/");
        let data = common::pseudo_random(2 << 20, 0x4a7_0ff1);
        let tag = format!("one-arm-offloads-{offloads}");
        let who = common::upload_and_verify(&lab, &url, &data, &tag);
        assert!(who.starts_with("rs"), "{who}");
        download_and_verify(&lab, &url, 2 << 20, &tag);
        let drops = d.metric("uvs_drops_total", &[("reason", "malformed")]);
        assert_eq!(
            drops, 0.0,
            "offloads {offloads}: frames dropped as malformed"
        );
        drop(lab);
    }
}

#[test]
fn two_arm_nat_balances_and_transfers_with_and_without_offloads() {
    let Some(ctx) = common::setup(132) else {
        return;
    };
    for offloads in [true, false] {
        let mut lab = seed_lab(&ctx, "nat-two-arm", offloads);
        let rules = "\
-A -t 172.30.0.200:80 -s rr
-a -t 172.30.0.200:80 -r 10.0.0.7:80 -m
-a -t 172.30.0.200:80 -r 10.0.0.14:80 -m
";
        let _d = Director::launch()
            .rules(rules)
            .interface("eth0")
            .interface("eth1")
            .start(&mut lab);
        let url = "http://172.30.0.200/";
        let answers: Vec<String> = (0..10)
            .map(|i| {
                lab.curl("client", url, &[])
                    .unwrap_or_else(|e| {
                        panic!("request {i}: {e:#}\n{}", common::director_tail(&lab))
                    })
                    .trim()
                    .to_string()
            })
            .collect();
        let c = common::count(&answers);
        assert_eq!(
            (c.get("rs1"), c.get("rs2")),
            (Some(&5), Some(&5)),
            "offloads {offloads}: {answers:?}"
        );
        let tag = format!("two-arm-offloads-{offloads}");
        let data = common::pseudo_random(2 << 20, 0x2a2a_0001);
        common::upload_and_verify(&lab, url, &data, &tag);
        download_and_verify(&lab, url, 2 << 20, &tag);
    }
}

#[test]
fn nat_translates_udp_and_the_icmp_errors_of_its_reals() {
    let Some(ctx) = common::setup(133) else {
        return;
    };
    let mut lab = seed_lab(&ctx, "nat-one-arm", true);
    let echo = lab
        .start_udp_echo("rs1", "rs1", 5353, &common::uvs_exe())
        .unwrap_or_else(|e| panic!("UDP echo on rs1: {e:#}"));
    let d = Director::launch()
        .rules(
            "-A -u 192.168.80.10:53 -s rr\n\
             -a -u 192.168.80.10:53 -r 192.168.80.11:5353 -m\n",
        )
        .interface("eth0")
        .start(&mut lab);
    let vip: std::net::Ipv4Addr = VIP.parse().unwrap();
    let reply = lab
        .udp_request("client", vip, 53, "hello")
        .unwrap_or_else(|e| panic!("UDP through NAT: {e:#}\n{}", d.tail()));
    assert!(reply.starts_with("rs1"), "{reply:?}");

    // With the echo gone rs1 answers "port unreachable" to the client's address; the
    // director must hand that to the client as coming from the VIP's port 53, or the
    // client's socket never learns of it.
    lab.kill(echo);
    let pcap = lab.dir().join("client-icmp.pcap");
    let cap = lab.tcpdump_start("client", "eth0", "icmp", &pcap).unwrap();
    let refused = lab.udp_request("client", vip, 53, "anyone");
    common::stop_capture(&mut lab, cap);
    assert!(refused.is_err(), "no echo left, yet: {refused:?}");
    let icmp = common::read_pcap(&lab, &pcap);
    assert!(
        icmp.iter().any(|p| p.src_ip.as_deref() == Some(VIP)
            && p.line.contains(&format!("{VIP} udp port 53 unreachable"))),
        "the client got the translated port-unreachable: {:#?}\n{}",
        icmp.iter().map(|p| &p.line).collect::<Vec<_>>(),
        d.tail()
    );
    let leaked = foreign(&icmp, &[VIP, CLIENT]);
    assert!(leaked.is_empty(), "untranslated ICMP: {leaked:#?}");
}

#[test]
fn nat_reuses_a_client_port_in_time_wait_and_leaves_the_reals_their_gateway() {
    let Some(ctx) = common::setup(134) else {
        return;
    };
    let mut lab = seed_lab(&ctx, "nat-one-arm", true);
    lab.start_http_on("client", "outside", 80, false, &common::uvs_exe())
        .unwrap_or_else(|e| panic!("web server on the client: {e:#}"));
    let d = one_arm_director(&mut lab);
    let url = format!("http://{VIP}/");

    // A busy client whose port range wraps reuses a port while the director still holds the
    // old connection in TIME_WAIT. The client keeps no TIME_WAIT of its own here (no buckets),
    // so curl may bind the same port again at once.
    lab.set_sysctls("client", &[("net.ipv4.tcp_max_tw_buckets", "0")])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let args = ["--local-port", "41234"];
    for i in 0..3 {
        let body = lab
            .curl("client", &url, &args)
            .unwrap_or_else(|e| panic!("request {i} from port 41234: {e:#}\n{}", d.tail()));
        assert!(body.starts_with("rs"), "{body:?}");
    }
    let reused = d.metric("uvs_flow_reuse_total", &[]);
    assert!(reused >= 2.0, "flows reused: {reused}\n{}", d.scrape());

    // The director stays the reals' router for everything else (ip_forward=1), and its own
    // processes still reach the reals directly.
    let out = lab
        .curl("rs1", "http://198.51.100.10/", &[])
        .unwrap_or_else(|e| panic!("rs1 to the outside through the director: {e:#}"));
    assert_eq!(out.trim(), "outside");
    let own = lab
        .curl("dir", "http://192.168.80.12:8080/", &[])
        .unwrap_or_else(|e| panic!("the director's own request to rs2: {e:#}"));
    assert_eq!(own.trim(), "rs2");
    // The service still works after all that.
    common::poll(Duration::from_secs(2), || {
        lab.curl("client", &url, &[])
            .ok()
            .filter(|b| b.starts_with("rs"))
    })
    .unwrap_or_else(|| panic!("service after the side traffic\n{}", d.tail()));
}

/// The keepalived.conf of the LVS-NAT tutorials, checks included: `lb_kind NAT`, reals on
/// their own port, HTTP_GET on that port. A real whose server stops leaves the rotation.
const KEEPALIVED_NAT: &str = r#"
global_defs {
    router_id LVS_NAT
}

virtual_server 192.168.80.10 80 {
    delay_loop 1
    lb_algo rr
    lb_kind NAT
    protocol TCP

    real_server 192.168.80.11 8080 {
        weight 1
        HTTP_GET {
            url {
                path /
                status_code 200
            }
            connect_timeout 1
            nb_get_retry 1
            delay_before_retry 1
        }
    }
    real_server 192.168.80.12 8080 {
        weight 1
        HTTP_GET {
            url {
                path /
                status_code 200
            }
            connect_timeout 1
            nb_get_retry 1
            delay_before_retry 1
        }
    }
}
"#;

#[test]
fn keepalived_nat_checks_the_reals_on_their_own_port() {
    let Some(ctx) = common::setup(135) else {
        return;
    };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/labs/nat-one-arm.toml");
    let spec = LabSpec::load(&file).unwrap_or_else(|e| panic!("{e:#}"));
    let mut lab = build_topology(&spec, Some(&ctx.prefix), &LabOptions::default())
        .unwrap_or_else(|e| panic!("building nat-one-arm: {e:#}"));
    let exe = common::uvs_exe();
    lab.start_http_on("rs1", "rs1", 8080, false, &exe).unwrap();
    let rs2 = lab.start_http_on("rs2", "rs2", 8080, false, &exe).unwrap();
    let d = Director::launch()
        .file("--keepalived", "keepalived.conf", KEEPALIVED_NAT)
        .interface("eth0")
        .admin_socket()
        .start(&mut lab);

    let listing = d.uvsadm(&["-Ln"]).checked();
    assert_eq!(
        listing.lines().filter(|l| l.contains("Masq")).count(),
        2,
        "lb_kind NAT makes both reals Masq:\n{listing}"
    );
    let url = format!("http://{VIP}/");
    let both = common::poll(Duration::from_secs(5), || {
        let answers: Vec<String> = (0..4)
            .filter_map(|_| lab.curl("client", &url, &[]).ok())
            .map(|b| b.trim().to_string())
            .collect();
        let c = common::count(&answers);
        (c.get("rs1") == Some(&2) && c.get("rs2") == Some(&2)).then_some(())
    });
    assert!(both.is_some(), "rr over both reals\n{}", d.tail());

    // HTTP_GET probes 8080, the real's port: stopping rs2's server takes it out.
    lab.kill(rs2);
    common::poll(Duration::from_secs(10), || {
        let l = d.uvsadm(&["-Ln"]).checked();
        (!l.contains("192.168.80.12:8080")).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "rs2 still listed 10 s after its server stopped:\n{}\n{:?}\n{}",
            d.uvsadm(&["-Ln"]).checked(),
            d.admin(&uvs::ctl::proto::Request::Health),
            d.log()
        )
    });
    let answers: Vec<String> = (0..6)
        .map(|i| {
            lab.curl("client", &url, &[])
                .unwrap_or_else(|e| panic!("request {i} after rs2 left: {e:#}\n{}", d.tail()))
                .trim()
                .to_string()
        })
        .collect();
    assert!(answers.iter().all(|a| a == "rs1"), "{answers:?}");
}

#[test]
fn trace_shows_both_rewrites_of_a_nat_connection() {
    let Some(ctx) = common::setup(136) else {
        return;
    };
    let mut lab = seed_lab(&ctx, "nat-one-arm", true);
    let d = one_arm_director(&mut lab);
    let log = lab.dir().join("trace.out");
    let exe = common::uvs_exe();
    let pid = lab
        .spawn(
            "dir",
            &[
                common::path_str(&exe),
                "trace",
                "--admin-socket",
                common::path_str(d.admin_socket()),
            ],
            &log,
        )
        .unwrap();
    common::poll(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.contains("# uvs trace"))
    })
    .unwrap_or_else(|| panic!("uvs trace did not attach:\n{}", uvs::lab::tail(&log, 20)));
    lab.curl("client", &format!("http://{VIP}/"), &[])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.tail()));
    std::thread::sleep(Duration::from_millis(300));
    lab.kill(pid);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // The request: to the VIP's port 80 in, to the chosen real's 8080 out.
    let syn = text
        .lines()
        .find(|l| l.contains(" tcp [S] ") && l.contains("new flow -> 192.168.80.1"))
        .unwrap_or_else(|| panic!("no traced SYN:\n{text}"));
    let real = syn
        .split("new flow -> ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default();
    let client_port = syn
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p)
        .unwrap_or_default();
    assert!(
        syn.contains(&format!("ip {CLIENT}:{client_port} > {real}:8080")),
        "the request's rewrite: {syn}"
    );
    // The reply: from the real's 8080 in, from the VIP's port 80 out, towards the router.
    let router_mac = lab.mac_str("router", "eth1").unwrap();
    let syn_ack = text
        .lines()
        .find(|l| l.contains(" tcp [S.] ") && l.contains(&format!(" {real}:8080 > ")))
        .unwrap_or_else(|| panic!("no traced SYN-ACK:\n{text}"));
    assert!(
        syn_ack.contains("rewritten back to the VIP")
            && syn_ack.contains(&format!("ip {VIP}:80 > {CLIENT}:{client_port}"))
            && syn_ack.contains(&format!("> {router_mac} ttl")),
        "the reply's rewrite: {syn_ack}"
    );
}
