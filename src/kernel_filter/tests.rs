use super::*;
use crate::io::nftables::TableInfo;
use crate::model::Protocol;
use std::process::Command;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const VIP2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);

fn svc(proto: Protocol, vip: Ipv4Addr, port: u16) -> ServiceKey {
    ServiceKey::addr(proto, vip, port)
}

fn two_services() -> Vec<ServiceKey> {
    vec![svc(Protocol::Tcp, VIP, 80), svc(Protocol::Udp, VIP, 53)]
}

/// Services only: no masquerading reals, no local addresses.
fn only(services: &[ServiceKey]) -> Filtered<'_> {
    Filtered {
        services,
        nat_replies: &[],
        locals: &[],
        laddrs: &[],
        fullnat_ports: crate::datapath::fullnat::DEFAULT_PORTS,
    }
}

fn sets(services: &[ServiceKey]) -> Wanted {
    wanted(&only(services))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The messages of an encoded batch, each with its sequence number zeroed and without the
/// acknowledgement request: nft 1.0.6 asks for none, uvs for one per message (so that a
/// success is confirmed rather than inferred from silence).
fn normalized(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let mut m = bytes[at..at + len].to_vec();
        let flags = u16::from_ne_bytes([m[6], m[7]]) & !0x4;
        m[6..8].copy_from_slice(&flags.to_ne_bytes());
        m[8..12].fill(0);
        out.push(m);
        at += len.next_multiple_of(4);
    }
    out
}

/// `msg` without its top-level attribute `ty`.
fn without_attr(msg: &[u8], ty: u16) -> Vec<u8> {
    let mut out = msg[..20].to_vec();
    let mut at = 20;
    while at < msg.len() {
        let len = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
        let t = u16::from_ne_bytes([msg[at + 2], msg[at + 3]]) & 0x3fff;
        let end = (at + len.next_multiple_of(4)).min(msg.len());
        if t != ty {
            out.extend_from_slice(&msg[at..end]);
        }
        at = end;
    }
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_ne_bytes());
    out
}

/// nft's user data for a set also describes the key's expression; uvs sends the key's byte
/// order only, which is what nft needs to print the elements.
const NFTA_SET_USERDATA: u16 = 13;

// What nft 1.0.6 sends for the same tables (`strace -e write=all nft -f …`, kernel 6.18):
// `table netdev uvs` with `set services { type ipv4_addr . inet_proto . inet_service; counter;
// elements = { 10.0.0.100 . tcp . 80, 10.0.0.100 . udp . 53 } }`, `set vips { type ipv4_addr;
// elements = { 10.0.0.100 } }` and chain ingress_0 on eth0 with uvs's two rules.
const NETDEV_CHAIN: &str = concat!(
    "60000000030a010402000000000000000500000008000100757673000e000300696e67726573735f300000000b000700",
    "66696c7465720000080005000000000120000480080001000000000008000200fffffe0c090003006574683000000000",
);

const NETDEV_SERVICES_SET: &str = concat!(
    "74000000090a010403000000000000000500000008000100757673000d00020073657276696365730000000008000300",
    "00000000080004000000730d080005000000000c08000a000000000114000d00000400000000030800040d0000000100",
    "140011800c000100636f756e7465720004000280",
);

const NETDEV_SERVICES_ELEMENTS: &str = concat!(
    "680000000c0a010404000000000000000500000008000100757673000d00020073657276696365730000000008000400",
    "00000001340003801800018014000180100001000a00006406000000005000001800028014000180100001000a000064",
    "1100000000350000",
);

const NETDEV_VIPS_SET: &str = concat!(
    "54000000090a010405000000000000000500000008000100757673000900020076697073000000000800030000000000",
    "0800040000000007080005000000000408000a00000000020a000d000004020000000000",
);

const NETDEV_VIPS_ELEMENTS: &str = concat!(
    "440000000c0a010406000000000000000500000008000100757673000900020076697073000000000800040000000002",
    "14000380100001800c000180080001000a000064",
);

const NETDEV_SERVICE_RULE: &str = concat!(
    "88010000060a010c07000000000000000500000008000100757673000e000200696e67726573735f3000000044010480",
    "24000180090001006d6574610000000014000280080002000000000108000100000000012c00018008000100636d7000",
    "20000280080001000000000108000200000000000c0003800600010008000000340001800c0001007061796c6f616400",
    "24000280080001000000000108000200000000010800030000000010080004000000000424000180090001006d657461",
    "000000001400028008000200000000100800010000000009340001800c0001007061796c6f6164002400028008000100",
    "0000000a080002000000000208000300000000020800040000000002340001800b0001006c6f6f6b7570000024000280",
    "08000200000000010d0001007365727669636573000000000800040000000001300001800e000100696d6d6564696174",
    "650000001c0002800800010000000000100002800c0002800800010000000000170007000011666f7277617264656420",
    "6279207576730000",
);

const NETDEV_FRAGMENT_RULE: &str = concat!(
    "ec010000060a010c08000000000000000500000008000100757673000e000200696e67726573735f30000000a8010480",
    "24000180090001006d6574610000000014000280080002000000000108000100000000012c00018008000100636d7000",
    "20000280080001000000000108000200000000000c0003800600010008000000340001800c0001007061796c6f616400",
    "240002800800010000000001080002000000000108000300000000100800040000000004300001800b0001006c6f6f6b",
    "757000002000028008000200000000010900010076697073000000000800040000000002340001800c0001007061796c",
    "6f6164002400028008000100000000010800020000000001080003000000000608000400000000024c0001800c000100",
    "62697477697365003c00028008000100000000010800020000000001080006000000000008000300000000020c000480",
    "060001003fff00000c00058006000100000000002c00018008000100636d700020000280080001000000000108000200",
    "000000010c0003800600010000000000140001800c000100636f756e7465720004000280300001800e000100696d6d65",
    "64696174650000001c0002800800010000000000100002800c0002800800010000000000180007000012667261676d65",
    "6e7420746f20612056495000",
);

const IP_CHAIN: &str = concat!(
    "54000000030a010402000000000000000200000008000100757673000f000300707265726f7574696e6700000b000700",
    "66696c7465720000080005000000000114000480080001000000000008000200fffffe0c",
);

const IP_IFNAME_SET: &str = concat!(
    "70000000090a010405000000000000000200000008000100757673000c0002005f5f7365742564000800030000000003",
    "0800040000000029080005000000001008000a00000000040c00098008000100000000021a000d00000401000000030e",
    "00040900000001060004060000000000",
);

const IP_IFNAME_ELEMENTS: &str = concat!(
    "6c0000000c0a010406000000000000000200000008000100757673000c0002005f5f7365742564000800040000000004",
    "3c0003801c0001801800018014000100657468300000000000000000000000001c000280180001801400010065746831",
    "000000000000000000000000",
);

const IP_SERVICE_RULE: &str = concat!(
    "8c010000060a010c07000000000000000200000008000100757673000f000200707265726f7574696e67000048010480",
    "24000180090001006d657461000000001400028008000200000000060800010000000001300001800b0001006c6f6f6b",
    "757000002000028008000200000000010c0001005f5f7365742564000800040000000004340001800c0001007061796c",
    "6f6164002400028008000100000000010800020000000001080003000000001008000400000000042400018009000100",
    "6d657461000000001400028008000200000000100800010000000009340001800c0001007061796c6f61640024000280",
    "080001000000000a080002000000000208000300000000020800040000000002340001800b0001006c6f6f6b75700000",
    "2400028008000200000000010d0001007365727669636573000000000800040000000001300001800e000100696d6d65",
    "64696174650000001c0002800800010000000000100002800c0002800800010000000000170007000011666f72776172",
    "646564206279207576730000",
);

const IP_FRAGMENT_RULE: &str = concat!(
    "f0010000060a010c0a000000000000000200000008000100757673000f000200707265726f7574696e670000ac010480",
    "24000180090001006d657461000000001400028008000200000000060800010000000001300001800b0001006c6f6f6b",
    "757000002000028008000200000000010c0001005f5f7365742564000800040000000005340001800c0001007061796c",
    "6f616400240002800800010000000001080002000000000108000300000000100800040000000004300001800b000100",
    "6c6f6f6b757000002000028008000200000000010900010076697073000000000800040000000002340001800c000100",
    "7061796c6f6164002400028008000100000000010800020000000001080003000000000608000400000000024c000180",
    "0c00010062697477697365003c0002800800010000000001080002000000000108000600000000000800030000000002",
    "0c000480060001003fff00000c00058006000100000000002c00018008000100636d7000200002800800010000000001",
    "08000200000000010c0003800600010000000000140001800c000100636f756e7465720004000280300001800e000100",
    "696d6d6564696174650000001c0002800800010000000000100002800c00028008000100000000001800070000126672",
    "61676d656e7420746f20612056495000",
);

const ARP_CHAIN: &str = concat!(
    "50000000030a01040c000000000000000300000008000100757673000a000300696e7075740000000b00070066696c74",
    "65720000080005000000000114000480080001000000000008000200fffffe0c",
);

const ARP_RULE: &str = concat!(
    "a0010000060a010c10000000000000000300000008000100757673000a000200696e7075740000006001048024000180",
    "090001006d657461000000001400028008000200000000060800010000000001300001800b0001006c6f6f6b75700000",
    "2000028008000200000000010c0001005f5f7365742564000800040000000006340001800c0001007061796c6f616400",
    "2400028008000100000000010800020000000001080003000000000608000400000000022c00018008000100636d7000",
    "20000280080001000000000108000200000000000c0003800600010000010000340001800c0001007061796c6f616400",
    "240002800800010000000001080002000000000108000300000000180800040000000004300001800b0001006c6f6f6b",
    "757000002000028008000200000000010900010076697073000000000800040000000003140001800c000100636f756e",
    "7465720004000280300001800e000100696d6d6564696174650000001c0002800800010000000000100002800c000280",
    "0800010000000000160007000010616e73776572656420627920757673000000",
);

#[test]
fn the_netdev_table_is_built_as_nft_builds_it() {
    let w = sets(&two_services());
    let got = normalized(&install_batch(&["eth0".into()], ServiceHook::Ingress, &w).encode(0));
    let want = |h: &str| normalized(&hex(h)).remove(0);
    // The batch-begin message, six that remove earlier tables, the owned netdev table; then
    // what nft sends for the same table. The arp table comes between the sets and the chain.
    assert_eq!(
        without_attr(&got[8], NFTA_SET_USERDATA),
        without_attr(&want(NETDEV_SERVICES_SET), NFTA_SET_USERDATA)
    );
    assert_eq!(got[9], want(NETDEV_SERVICES_ELEMENTS));
    assert_eq!(got[10], want(NETDEV_VIPS_SET));
    assert_eq!(got[11], want(NETDEV_VIPS_ELEMENTS));
    assert_eq!(got[15], want(NETDEV_CHAIN));
    assert_eq!(got[16], want(NETDEV_SERVICE_RULE));
    assert_eq!(got[17], want(NETDEV_FRAGMENT_RULE));
}

#[test]
fn the_prerouting_and_arp_tables_are_built_as_nft_builds_them() {
    let got = normalized(
        &install_batch(
            &["eth0".into(), "eth1".into()],
            ServiceHook::Prerouting,
            &Wanted::default(),
        )
        .encode(0),
    );
    let want = |h: &str| normalized(&hex(h)).remove(0);
    // Begin, six removals, the ip table and its two sets, the arp table and its set (empty
    // sets get no element message); then the chains, each rule after its interface set.
    assert_eq!(got[12], want(IP_CHAIN));
    assert_eq!(
        without_attr(&got[13], NFTA_SET_USERDATA),
        without_attr(&want(IP_IFNAME_SET), NFTA_SET_USERDATA)
    );
    assert_eq!(got[14], want(IP_IFNAME_ELEMENTS));
    assert_eq!(got[15], want(IP_SERVICE_RULE));
    assert_eq!(got[18], want(IP_FRAGMENT_RULE));
    assert_eq!(got[19], want(ARP_CHAIN));
    assert_eq!(got[22], want(ARP_RULE));
}

#[test]
fn an_update_sends_only_the_elements_that_change() {
    let w0 = sets(&two_services());
    assert!(update_batch(ServiceHook::Ingress, &w0, &w0).is_empty());
    // A new port on a known VIP: one element, no VIP change.
    let mut more = two_services();
    more.push(svc(Protocol::Tcp, VIP, 443));
    let w1 = sets(&more);
    assert_eq!(update_batch(ServiceHook::Ingress, &w0, &w1).len(), 1);
    // A new VIP: its service, and the VIP in both tables' sets.
    more.push(svc(Protocol::Udp, VIP2, 53));
    let w2 = sets(&more);
    assert_eq!(update_batch(ServiceHook::Prerouting, &w1, &w2).len(), 3);
    // Everything gone: the four services in one message, the two VIPs in each table.
    let w3 = sets(&[]);
    assert_eq!(update_batch(ServiceHook::Ingress, &w2, &w3).len(), 3);
    // A masquerading real and the director's address: one message for each set.
    let nat = [svc(Protocol::Tcp, Ipv4Addr::new(10, 0, 0, 11), 8080)];
    let w4 = wanted(&Filtered {
        services: &more,
        nat_replies: &nat,
        locals: &[0x0a00_0002],
        laddrs: &[],
        fullnat_ports: crate::datapath::fullnat::DEFAULT_PORTS,
    });
    assert_eq!(update_batch(ServiceHook::Ingress, &w2, &w4).len(), 2);
}

#[test]
fn a_service_key_is_the_vip_the_protocol_and_the_port_each_in_a_register_of_its_own() {
    assert_eq!(
        service_bytes(&key_of(&svc(Protocol::Udp, VIP, 0x1234))),
        [10, 0, 0, 100, 17, 0, 0, 0, 0x12, 0x34, 0, 0]
    );
    assert_eq!(ifname_bytes("eth0")[..5], *b"eth0\0");
    assert_eq!(ifname_bytes("eth0").len(), 16);
}

/// Runs `f` in a thread inside a network namespace of its own (skipped when not root).
fn in_private_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        if !crate::io::enter_private_netns() {
            eprintln!("skipping: needs root");
            return;
        }
        f()
    })
    .join()
    .unwrap();
}

fn uvs_tables_now() -> Vec<TableInfo> {
    let mut s = NfSocket::open().unwrap();
    uvs_tables(&mut s).unwrap()
}

fn families(tables: &[TableInfo]) -> Vec<Family> {
    let mut f: Vec<_> = tables.iter().filter_map(TableInfo::family).collect();
    f.sort();
    f
}

/// `nft list ruleset` in the calling thread's namespace; `None` without nft.
fn nft_ruleset() -> Option<String> {
    let out = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn installed_tables_are_owned_readable_by_nft_and_removed_on_drop() {
    in_private_netns(|| {
        let kf =
            KernelFilter::install(&["lo".into()], &only(&two_services()), ServiceHook::Ingress)
                .unwrap();
        let port = kf.sock.port_id().unwrap();
        let tables = uvs_tables_now();
        assert_eq!(
            families(&tables),
            [Family::Arp, Family::Netdev],
            "{tables:?}"
        );
        assert!(tables.iter().all(|t| t.is_owned() && t.owner == Some(port)));
        if let Some(r) = nft_ruleset() {
            for line in [
                "table netdev uvs { # progname uvs",
                "table arp uvs { # progname uvs",
                "\tflags owner\n",
                "type filter hook ingress device \"lo\" priority -500; policy accept;",
                "ip daddr . meta l4proto . th dport @services drop comment \"forwarded by uvs\"",
                "10.0.0.100 . tcp . 80 counter packets 0 bytes 0",
                "10.0.0.100 . udp . 53 counter packets 0 bytes 0",
                "ip daddr @vips ip frag-off & 16383 != 0 counter packets 0 bytes 0 drop comment \"fragment to a VIP\"",
                "elements = { 10.0.0.100 }",
                "type filter hook input priority -500; policy accept;",
                "arp operation request arp daddr ip @vips counter packets 0 bytes 0 drop comment \"answered by uvs\"",
                "ip saddr . meta l4proto . th sport @nat_replies ip daddr != @locals counter packets 0 bytes 0 drop comment \"a reply uvs rewrites\"",
            ] {
                assert!(r.contains(line), "missing {line:?} in\n{r}");
            }
        }
        drop(kf);
        assert_eq!(uvs_tables_now(), []);
    });
}

#[test]
fn with_a_vip_mac_the_service_rules_are_in_ip_prerouting_on_the_served_interfaces() {
    in_private_netns(|| {
        let kf = KernelFilter::install(
            &["eth0".into(), "eth1".into()],
            &only(&two_services()),
            ServiceHook::Prerouting,
        )
        .unwrap();
        assert_eq!(families(&uvs_tables_now()), [Family::Ip, Family::Arp]);
        if let Some(r) = nft_ruleset() {
            assert!(!r.contains("hook ingress"), "{r}");
            let on = "iifname { \"eth0\", \"eth1\" } ";
            for line in [
                "type filter hook prerouting priority -500; policy accept;".to_string(),
                format!("{on}ip daddr . meta l4proto . th dport @services drop"),
                format!("{on}ip daddr @vips ip frag-off & 16383 != 0 counter"),
                format!("{on}arp operation request arp daddr ip @vips counter"),
            ] {
                assert!(r.contains(&line), "missing {line:?} in\n{r}");
            }
        }
        drop(kf);
    });
}

#[test]
fn updates_change_the_elements_and_a_refused_one_changes_nothing() {
    in_private_netns(|| {
        let mut kf = KernelFilter::install(
            &["lo".into()],
            &only(&two_services()[..1]),
            ServiceHook::Ingress,
        )
        .unwrap();
        let mut more = two_services();
        more.push(svc(Protocol::Tcp, VIP2, 443));
        kf.update(&only(&more)).unwrap();
        let r = nft_ruleset();
        if let Some(r) = &r {
            assert!(r.contains("10.0.0.100 . udp . 53 counter"), "{r}");
            assert!(r.contains("10.0.0.101 . tcp . 443 counter"), "{r}");
            assert_eq!(
                r.matches("elements = { 10.0.0.100, 10.0.0.101 }").count(),
                2,
                "{r}"
            );
        }
        // A key uvs believes installed but the kernel lacks: removing it fails, and with it
        // the whole transaction (the other removals and the VIP's).
        let phantom = (Ipv4Addr::new(10, 0, 0, 99), 6, 8080);
        kf.sets.services.insert(phantom);
        let before = (kf.sets.services.clone(), kf.sets.vips.clone());
        let e = kf.update(&only(&two_services()[..1])).unwrap_err();
        assert!(
            e.to_string()
                .contains("delete 3 element(s) from set netdev uvs services"),
            "{e}"
        );
        assert_eq!((kf.sets.services.clone(), kf.sets.vips.clone()), before);
        assert_eq!(
            nft_ruleset(),
            r,
            "the refused transaction changed the kernel"
        );
        kf.sets.services.remove(&phantom);
        kf.update(&only(&two_services()[..1])).unwrap();
        if let Some(r) = nft_ruleset() {
            assert!(!r.contains("10.0.0.101"), "{r}");
            assert!(!r.contains(". udp . 53"), "{r}");
        }
    });
}

#[test]
fn a_start_replaces_unowned_tables_and_refuses_tables_another_socket_owns() {
    in_private_netns(|| {
        // What a uvs from before owner tables leaves: plain tables, of both hooks.
        let mut old = NfSocket::open().unwrap();
        let mut b = Batch::new();
        b.declare_table(Family::Ip, TABLE);
        b.declare_table(Family::Arp, TABLE);
        old.commit(&b).unwrap();
        drop(old);
        assert_eq!(
            uvs_tables_now().len(),
            2,
            "unowned tables outlive their socket"
        );
        let kf =
            KernelFilter::install(&["lo".into()], &only(&two_services()), ServiceHook::Ingress)
                .unwrap();
        let tables = uvs_tables_now();
        assert_eq!(
            families(&tables),
            [Family::Arp, Family::Netdev],
            "{tables:?}"
        );
        assert!(tables.iter().all(TableInfo::is_owned));

        let e = KernelFilter::install(&["lo".into()], &only(&two_services()), ServiceHook::Ingress)
            .unwrap_err();
        assert!(matches!(e, KernelFilterError::OwnedElsewhere(_)), "{e}");
        assert!(
            e.to_string().contains("belongs to another running process"),
            "{e}"
        );
        assert_eq!(
            uvs_tables_now(),
            tables,
            "the refused start changed nothing"
        );
        drop(kf);
    });
}

#[test]
fn raw_replies_of_masquerading_reals_are_dropped_unless_they_go_to_the_director() {
    in_private_netns(|| {
        let nat = [svc(Protocol::Tcp, Ipv4Addr::new(10, 0, 0, 11), 8080)];
        let filtered = Filtered {
            services: &two_services(),
            nat_replies: &nat,
            locals: &[0x0a00_0002],
            laddrs: &[],
            fullnat_ports: crate::datapath::fullnat::DEFAULT_PORTS,
        };
        let kf = KernelFilter::install(&["lo".into()], &filtered, ServiceHook::Ingress).unwrap();
        if let Some(r) = nft_ruleset() {
            for line in [
                "10.0.0.11 . tcp . 8080 counter packets 0 bytes 0",
                "ip saddr . meta l4proto . th sport @nat_replies ip daddr != @locals counter",
                "@th,240,16 @nat_replies ip daddr != @locals counter",
                "elements = { 10.0.0.2 }",
            ] {
                assert!(r.contains(line), "missing {line:?} in\n{r}");
            }
        }
        drop(kf);
    });
}

#[test]
fn fullnat_replies_to_uvs_ports_on_a_local_address_are_dropped() {
    in_private_netns(|| {
        let fnat = [svc(Protocol::Tcp, Ipv4Addr::new(10, 10, 0, 11), 8080)];
        let mut filtered = Filtered {
            services: &two_services(),
            nat_replies: &fnat,
            locals: &[0x0a00_0002],
            laddrs: &[0x0a00_0002],
            fullnat_ports: (1024, 32767),
        };
        let mut kf =
            KernelFilter::install(&["lo".into()], &filtered, ServiceHook::Ingress).unwrap();
        if let Some(r) = nft_ruleset() {
            let rule = "ip saddr . meta l4proto . th sport @nat_replies ip daddr @laddrs th dport 1024-32767 counter";
            assert!(r.contains(rule), "missing {rule:?} in\n{r}");
        }
        // A second local address is one element more.
        let two = [0x0a00_0002, 0x0a00_0003];
        filtered.laddrs = &two;
        kf.update(&filtered).unwrap();
        if let Some(r) = nft_ruleset() {
            assert!(r.contains("elements = { 10.0.0.2, 10.0.0.3 }"), "{r}");
        }
        drop(kf);
    });
}
