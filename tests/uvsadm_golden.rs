//! `uvsadm` driven in-process (`ctl::ipvsadm::run`) against an in-memory director, with the
//! command sequences of the seed tutorials. Expected outputs in `tests/golden/` were written
//! from ipvsadm 1.31's printf formats, not from uvsadm's printer.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use uvs::ctl::backend::{Backend, BackendError, MemoryBackend};
use uvs::ctl::ipvsadm::names::Names;
use uvs::ctl::ipvsadm::run_with_names;
use uvs::ctl::proto::{
    ConnEntry, LocalAddrStatus, RealStatus, Reply, Request, ServiceStatus, Stats, Status,
    TimeoutsSecs,
};
use uvs::model::change::AdminState;
use uvs::model::{ForwardMethod, Protocol, SchedulerKind, ServiceKey};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn uvsadm_in(backend: &mut dyn Backend, args: &str, stdin: &str) -> Out {
    uvsadm_as(backend, "ipvsadm", args, stdin, &Names::none())
}

/// Runs uvsadm invoked as `argv0` (a link name), with the name tables `names`.
fn uvsadm_as(
    backend: &mut dyn Backend,
    argv0: &str,
    args: &str,
    stdin: &str,
    names: &Names,
) -> Out {
    let mut argv = vec![argv0.to_string()];
    argv.extend(args.split_whitespace().map(str::to_string));
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let code = run_with_names(&argv, &mut stdin.as_bytes(), &mut o, &mut e, backend, names);
    Out {
        code,
        stdout: String::from_utf8(o).unwrap(),
        stderr: String::from_utf8(e).unwrap(),
    }
}

#[track_caller]
fn ok(b: &mut dyn Backend, args: &str) -> String {
    let o = uvsadm_in(b, args, "");
    assert_eq!(o.code, 0, "{args}: {}", o.stderr);
    assert_eq!(o.stderr, "", "{args}");
    o.stdout
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/golden/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

const TUTORIAL: [&str; 6] = [
    "-A -t 192.168.79.110:80 -s rr",
    "-a -t 192.168.79.110:80 -r 192.168.79.102 -g -w 1",
    "-a -t 192.168.79.110:80 -r 192.168.79.103 -g -w 1",
    "-A -t 10.0.0.200:80 -s wrr",
    "-a -t 10.0.0.200:80 -r 10.0.0.7:80 -g",
    "-a -t 10.0.0.200:80 -r 10.0.0.8:80 -g -w 2",
];

fn tutorial() -> MemoryBackend {
    let mut b = MemoryBackend::default();
    for cmd in TUTORIAL {
        assert_eq!(ok(&mut b, cmd), "");
    }
    b
}

#[test]
fn seed_tutorial_sequence_is_byte_exact() {
    let mut b = tutorial();
    let ln = ok(&mut b, "-Ln");
    assert_eq!(ln, golden("tutorial_Ln.txt"));
    assert_eq!(ok(&mut b, "-L -n"), ln);
    assert_eq!(ok(&mut b, "-L -n --stats"), golden("tutorial_Ln_stats.txt"));
    assert_eq!(ok(&mut b, "-L -n --rate"), golden("tutorial_Ln_rate.txt"));
    assert_eq!(ok(&mut b, "-lnc"), golden("tutorial_lnc.txt"));
    assert_eq!(ok(&mut b, "-L --timeout"), golden("tutorial_timeout.txt"));
    assert_eq!(ok(&mut b, "-L --daemon"), "");

    // ipvsadm -S -n > f; ipvsadm -C; ipvsadm -R < f
    let saved = ok(&mut b, "-S -n");
    assert_eq!(saved, golden("tutorial_S_n.txt"));
    assert_eq!(ok(&mut b, "-C"), "");
    assert_eq!(
        ok(&mut b, "-Ln"),
        golden("tutorial_Ln.txt")
            .lines()
            .take(3)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    let o = uvsadm_in(&mut b, "-R", &saved);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    assert_eq!(ok(&mut b, "-Ln"), ln);

    assert_eq!(ok(&mut b, "-Z"), "");
    assert_eq!(ok(&mut b, "-Z -t 10.0.0.200:80"), "");

    // A tunnel without its mandatory option: refused as ipvsadm refuses it, exit 2.
    let o = uvsadm_in(
        &mut b,
        "-a -t 10.0.0.200:80 -r 10.0.0.9:80 -i --tun-type gue",
        "",
    );
    assert_eq!(o.code, 2);
    assert_eq!(
        o.stderr,
        "You need to supply the 'tun-port' option for the 'gue' tunnel type\n"
    );
    assert_eq!(ok(&mut b, "-Ln"), ln, "a refused command changes nothing");

    assert_eq!(ok(&mut b, "-E -t 10.0.0.200:80 -s rr"), "");
    assert_eq!(ok(&mut b, "-e -t 10.0.0.200:80 -r 10.0.0.8:80 -g -w 5"), "");
    assert_eq!(ok(&mut b, "-d -t 10.0.0.200:80 -r 10.0.0.7:80"), "");
    assert_eq!(ok(&mut b, "-Ln"), golden("tutorial_after_edits.txt"));
    assert_eq!(ok(&mut b, "-D -t 192.168.79.110:80"), "");
    assert_eq!(ok(&mut b, "-Ln"), golden("tutorial_after_delete.txt"));
}

/// The tutorials' `ipvsadm-save > /etc/sysconfig/ipvsadm` and `ipvsadm-restore < …`, through
/// links of those names: without `-n` the rules carry /etc/hosts and /etc/services names, and
/// restoring resolves them back to the same table.
#[test]
fn save_and_restore_links_round_trip_host_and_port_names() {
    let names = Names::from_text(
        "http 80/tcp www\n",
        "192.168.79.110 vip.lab vip\n192.168.79.102 rs1.lab rs1\n10.0.0.7 web7\n",
    );
    let mut b = tutorial();
    let ln = ok(&mut b, "-Ln");
    let saved = uvsadm_as(&mut b, "/usr/sbin/ipvsadm-save", "", "", &names);
    assert_eq!((saved.code, saved.stderr.as_str()), (0, ""));
    assert_eq!(
        saved.stdout,
        "-A -t vip.lab:http -s rr\n\
         -a -t vip.lab:http -r rs1.lab:http -g -w 1\n\
         -a -t vip.lab:http -r 192.168.79.103:http -g -w 1\n\
         -A -t 10.0.0.200:http -s wrr\n\
         -a -t 10.0.0.200:http -r web7:http -g -w 1\n\
         -a -t 10.0.0.200:http -r 10.0.0.8:http -g -w 2\n"
    );
    let numeric = uvsadm_as(&mut b, "ipvsadm-save", "-n", "", &names);
    assert_eq!(numeric.stdout, golden("tutorial_S_n.txt"));
    assert_eq!(ok(&mut b, "-C"), "");
    let restored = uvsadm_as(&mut b, "ipvsadm-restore", "", &saved.stdout, &names);
    assert_eq!((restored.code, restored.stderr.as_str()), (0, ""));
    assert_eq!(ok(&mut b, "-Ln"), ln);
    // Hand-written names: ipvsadm resolves them on input too.
    assert_eq!(
        uvsadm_as(
            &mut b,
            "ipvsadm",
            "-e -t vip:www -r rs1 -g -w 3",
            "",
            &names
        )
        .code,
        0
    );
    assert!(ok(&mut b, "-Ln").contains("  -> 192.168.79.102:80            Route   3"));
    // A name nothing resolves is ipvsadm's refusal, and the save link takes only -S options.
    let o = uvsadm_as(&mut b, "ipvsadm", "-a -t vip:80 -r nowhere -g", "", &names);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (2, "illegal real server address[:port] specified\n")
    );
    let o = uvsadm_as(&mut b, "ipvsadm-save", "-c", "", &names);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (2, "Illegal 'connection' option with the 'save' command\n")
    );
}

/// The tutorials' `ipvsadm -A -t VIP:80 -s rr -p`: a bare -p is 360 s in ipvsadm
/// (libipvs's IPVS_SVC_PERSISTENT_TIMEOUT), whatever its man page says.
#[test]
fn bare_persistence_is_360_seconds() {
    let mut b = MemoryBackend::default();
    assert_eq!(ok(&mut b, "-A -t 192.168.79.110:80 -s rr -p"), "");
    assert_eq!(
        ok(&mut b, "-S -n"),
        "-A -t 192.168.79.110:80 -s rr -p 360\n"
    );
}

#[test]
fn ipvsadm_refusals_use_its_words_and_exit_codes() {
    let mut b = tutorial();
    let o = uvsadm_in(&mut b, "-D -t 10.9.9.9:80", "");
    assert_eq!((o.code, o.stderr.as_str()), (255, "No such service\n"));
    let o = uvsadm_in(&mut b, "-a -t 10.9.9.9:80 -r 10.0.0.1", "");
    assert_eq!((o.code, o.stderr.as_str()), (255, "Service not defined\n"));
    let o = uvsadm_in(&mut b, "-a -t 10.0.0.200:80 -r 10.0.0.7", "");
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (255, "Destination already exists\n")
    );
    let o = uvsadm_in(&mut b, "-d -t 10.0.0.200:80 -r 10.0.0.99", "");
    assert_eq!((o.code, o.stderr.as_str()), (255, "No such destination\n"));
    let o = uvsadm_in(&mut b, "-L -n -t 10.9.9.9:80", "");
    assert_eq!((o.code, o.stderr.as_str()), (1, "No such service\n"));
    let o = uvsadm_in(&mut b, "-n -L", "");
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (
            255,
            "Try `ipvsadm -h' or 'ipvsadm --help' for more information.\n"
        )
    );
    // Without -s the scheduler is ipvsadm's default, wlc.
    let o = uvsadm_in(&mut b, "-A -t 10.0.0.1:80", "");
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    let o = uvsadm_in(&mut b, "-S -n", "");
    assert!(
        o.stdout.contains("-A -t 10.0.0.1:80 -s wlc\n"),
        "{}",
        o.stdout
    );
    let o = uvsadm_in(&mut b, "-A -t 10.0.0.1:80 -s bogus", "");
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (255, "Scheduler or persistence engine not found\n")
    );
    let o = uvsadm_in(&mut b, "-v", "");
    assert_eq!(
        o.stdout,
        "ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)\n"
    );
    let o = uvsadm_in(&mut b, "-h", "");
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("  ipvsadm -Z [virtual-service]\n"));
}

#[test]
fn single_service_listing_and_persistence() {
    let mut b = tutorial();
    assert_eq!(
        ok(&mut b, "-E -t 10.0.0.200:80 -s wrr -p 600 -M 255.255.255.0"),
        ""
    );
    let want = "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\nTCP  10.0.0.200:80 wrr persistent 600 mask 255.255.255.0\n  -> 10.0.0.7:80                  Route   1      0          0         \n  -> 10.0.0.8:80                  Route   2      0          0         \n";
    assert_eq!(ok(&mut b, "-Ln -t 10.0.0.200:80"), want);
    let saved = ok(&mut b, "-S -n");
    assert!(saved.contains("-A -t 10.0.0.200:80 -s wrr -p 600 -M 255.255.255.0\n"));
    let o = uvsadm_in(&mut b, "-S --nosort", "");
    assert_eq!(
        o.stderr,
        "Illegal 'nosort' option with the 'save' command\n"
    );
    // --nosort keeps configuration order (10.0.0.200 was added after 192.168.79.110 anyway).
    let first = ok(&mut b, "-Ln --nosort");
    assert!(first.contains("TCP  192.168.79.110:80 rr\n"));
}

#[test]
fn restore_is_all_or_nothing_and_names_the_line() {
    let mut b = tutorial();
    let before = ok(&mut b, "-Ln");
    // A parse error: nothing is sent.
    let input = "# saved\n-A -t 10.1.1.1:80 -s rr\n\n-a -t 10.1.1.1:80 -r 10.1.1.2 -w 70000\n";
    let o = uvsadm_in(&mut b, "-R", input);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (2, "line 4: illegal weight specified\n")
    );
    assert_eq!(ok(&mut b, "-Ln"), before);
    // A model refusal on line 3: the first two are not kept either.
    let input = "ipvsadm -A -t 10.1.1.1:80 -s rr\n-a -t 10.1.1.1:80 -r 10.1.1.2\n-a -t 10.1.1.9:80 -r 10.1.1.2\n";
    let o = uvsadm_in(&mut b, "-R", input);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (255, "line 3: Service not defined\n")
    );
    assert_eq!(ok(&mut b, "-Ln"), before);
    // Listing commands are not changes.
    let o = uvsadm_in(&mut b, "-R", "-C\n-L -n\n");
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.starts_with("line 2: '-L' cannot be used here"),
        "{}",
        o.stderr
    );
    assert_eq!(ok(&mut b, "-Ln"), before);
}

/// A director with traffic, for the rows MemoryBackend cannot produce.
struct Fixed;

impl Backend for Fixed {
    fn call(&mut self, request: &Request) -> Result<Reply, BackendError> {
        let vip = Ipv4Addr::new(192, 168, 79, 110);
        let real = |last, conns, in_pkts, in_bytes| RealStatus {
            addr: Ipv4Addr::new(192, 168, 79, last),
            port: 80,
            forward: ForwardMethod::Route,
            weight: 1,
            active: 0,
            inactive: 0,
            persistent: 0,
            upper_threshold: 0,
            lower_threshold: 0,
            stats: Stats {
                conns,
                in_pkts,
                in_bytes,
                ..Stats::default()
            },
            rates: Stats::default(),
        };
        Ok(match request {
            Request::Connections => Reply::Connections(vec![
                ConnEntry {
                    proto: Protocol::Tcp,
                    expires: 896,
                    state: "ESTABLISHED".into(),
                    client: (Ipv4Addr::new(10, 0, 0, 5), 51234),
                    virt: (vip, 80),
                    dest: (Ipv4Addr::new(192, 168, 79, 102), 80),
                    fwmark_template: false,
                },
                ConnEntry {
                    proto: Protocol::Udp,
                    expires: 299,
                    state: "UDP".into(),
                    client: (Ipv4Addr::new(10, 0, 0, 7), 5353),
                    virt: (Ipv4Addr::new(10, 0, 0, 200), 53),
                    dest: (Ipv4Addr::new(10, 0, 0, 8), 53),
                    fwmark_template: false,
                },
            ]),
            Request::Status => Reply::Status(Status {
                conn_tab_size: 4096,
                timeouts: TimeoutsSecs::default(),
                mark_rules: Vec::new(),
                services: vec![ServiceStatus {
                    key: ServiceKey {
                        proto: Protocol::Tcp,
                        vip,
                        port: 80,
                        fwmark: 0,
                    },
                    scheduler: SchedulerKind::Rr,
                    sched_flags: String::new(),
                    persistence_timeout: None,
                    persistence_netmask: Ipv4Addr::BROADCAST,
                    ops: false,
                    stats: Stats {
                        conns: 1520,
                        in_pkts: 199_999_999,
                        in_bytes: 124_234_000_000,
                        ..Stats::default()
                    },
                    rates: Stats::default(),
                    // Out of order on purpose: the listing sorts destinations.
                    reals: vec![
                        real(103, 760, 99_999_999, 123_000_000_000),
                        real(102, 760, 100_000_000, 1_234_000_000),
                    ],
                    proxy_protocol: Default::default(),
                    local_addrs: vec![
                        LocalAddrStatus {
                            addr: Ipv4Addr::new(192, 168, 79, 200),
                            interface: Some("eth0".into()),
                            conns: 1_234_567,
                            conflicts: 42,
                        },
                        LocalAddrStatus {
                            addr: Ipv4Addr::new(192, 168, 79, 201),
                            interface: None,
                            conns: 28_231,
                            conflicts: 0,
                        },
                    ],
                }],
            }),
            _ => Reply::Done,
        })
    }
}

#[test]
fn connections_and_large_numbers_are_byte_exact() {
    assert_eq!(ok(&mut Fixed, "-lnc"), golden("traffic_lnc.txt"));
    assert_eq!(
        ok(&mut Fixed, "-Ln --stats"),
        golden("traffic_Ln_stats.txt")
    );
    assert_eq!(ok(&mut Fixed, "--get-laddr"), golden("traffic_G.txt"));
}

#[test]
fn broken_pipe_is_not_an_error() {
    struct Closed;
    impl std::io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut b = tutorial();
    let argv: Vec<String> = ["uvsadm", "-Ln"].iter().map(|s| s.to_string()).collect();
    let code = run_with_names(
        &argv,
        &mut "".as_bytes(),
        &mut Closed,
        &mut Vec::new(),
        &mut b,
        &Names::none(),
    );
    assert_eq!(code, 0);
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// (UDP, VIP, port, wrr, persistence, reals (address, weight, FullNAT), PROXY protocol
/// version 0..=2, FullNAT local addresses (address, with an interface)).
type GenService = (
    bool,
    [u8; 4],
    u16,
    bool,
    Option<u32>,
    Vec<([u8; 4], u32, bool)>,
    u8,
    Vec<([u8; 4], bool)>,
);

fn table() -> impl Strategy<Value = Vec<GenService>> {
    proptest::collection::vec(
        (
            any::<bool>(),
            any::<[u8; 4]>(),
            1u16..,
            any::<bool>(),
            proptest::option::of(1u32..=86_400 * 31),
            proptest::collection::vec((any::<[u8; 4]>(), 0u32..=65535, any::<bool>()), 0..5),
            0u8..=2,
            proptest::collection::vec((any::<[u8; 4]>(), any::<bool>()), 0..3),
        ),
        0..6,
    )
}

proptest! {
    #[test]
    fn save_then_restore_is_the_identity(services in table()) {
        let mut b = MemoryBackend::default();
        let mut input = String::new();
        for (udp, vip, port, wrr, persist, reals, proxy, laddrs) in &services {
            let opt = if *udp { "-u" } else { "-t" };
            let vip = Ipv4Addr::from(*vip);
            let sched = if *wrr { "wrr" } else { "rr" };
            let p = persist.map(|t| format!(" -p {t}")).unwrap_or_default();
            let pp = [" --proxy-protocol disable", " --proxy-protocol v1", " --proxy-protocol v2"];
            let pp = pp[usize::from(*proxy)];
            input.push_str(&format!("-A {opt} {vip}:{port} -s {sched}{p}{pp}\n"));
            for (addr, w, fnat) in reals {
                let method = if *fnat { " --fullnat" } else { "" };
                input.push_str(&format!("-a {opt} {vip}:{port} -r {} -w {w}{method}\n", Ipv4Addr::from(*addr)));
            }
            for (addr, named) in laddrs {
                let f = if *named { " -F eth1" } else { "" };
                input.push_str(&format!("-P {opt} {vip}:{port} -z {}{f}\n", Ipv4Addr::from(*addr)));
            }
        }
        // Duplicates are refused as a whole; only a table that loads is saved.
        let loaded = uvsadm_in(&mut b, "-R", &input);
        prop_assume!(loaded.code == 0);
        let saved = ok(&mut b, "-S -n");
        let listed = ok(&mut b, "-Ln");
        let state = b.state.clone();
        let mut c = MemoryBackend { state: AdminState::default() };
        let o = uvsadm_in(&mut c, "-R", &saved);
        prop_assert_eq!(o.code, 0, "{}", o.stderr);
        // The same table. (The saved text itself may come out in another order: ipvsadm's
        // comparator is not transitive for addresses 2^31 apart, so the sorted order depends on
        // the configuration order, which -R changes. Real ipvsadm behaves the same.)
        prop_assert_eq!(canonical(&c.state), canonical(&state));
        let mut a: Vec<&str> = saved.lines().collect();
        let resaved = ok(&mut c, "-S -n");
        let mut z: Vec<&str> = resaved.lines().collect();
        a.sort_unstable();
        z.sort_unstable();
        prop_assert_eq!(a, z);
        let mut a: Vec<&str> = listed.lines().collect();
        let relisted = ok(&mut c, "-Ln");
        let mut z: Vec<&str> = relisted.lines().collect();
        a.sort_unstable();
        z.sort_unstable();
        prop_assert_eq!(a, z);
    }

    #[test]
    fn random_arguments_never_panic(words in proptest::collection::vec(word(), 0..10)) {
        let mut b = tutorial();
        let before = b.state.clone();
        let o = uvsadm_in(&mut b, &words.join(" "), &words.join("\n"));
        if o.code != 0 {
            prop_assert_eq!(b.state, before, "a failed command changed the state");
        }
    }

    #[test]
    fn random_restore_input_never_panics(lines in proptest::collection::vec(proptest::collection::vec(word(), 0..8), 0..6)) {
        let mut b = tutorial();
        let before = b.state.clone();
        let text: Vec<String> = lines.iter().map(|l| l.join(" ")).collect();
        let o = uvsadm_in(&mut b, "-R", &text.join("\n"));
        if o.code != 0 {
            prop_assert_eq!(b.state, before);
        }
    }

    #[test]
    fn random_text_never_panics(text in "\\PC*") {
        let mut b = tutorial();
        let _ = uvsadm_in(&mut b, "-R", &text);
        let _ = uvsadm_in(&mut b, &text, "");
    }
}

type Canonical = Vec<(
    ServiceKey,
    String,
    Option<u32>,
    Ipv4Addr,
    Vec<(Ipv4Addr, u16, u32, String)>,
    String,
    // Local addresses keep their order: the director uses them in it.
    Vec<(Ipv4Addr, Option<String>)>,
)>;

fn canonical(s: &AdminState) -> Canonical {
    let mut v: Canonical = s
        .table
        .services()
        .iter()
        .map(|x| {
            let mut r: Vec<(Ipv4Addr, u16, u32, String)> = x
                .reals
                .iter()
                .map(|r| (r.addr, r.port, r.weight, format!("{:?}", r.forward)))
                .collect();
            r.sort();
            (
                x.key,
                x.scheduler.name().to_string(),
                x.persistence_timeout,
                x.persistence_netmask,
                r,
                x.proxy_protocol.name().to_string(),
                x.local_addrs
                    .iter()
                    .map(|l| (l.addr, l.interface.clone()))
                    .collect(),
            )
        })
        .collect();
    v.sort();
    v
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "-A",
            "-E",
            "-D",
            "-a",
            "-e",
            "-d",
            "-C",
            "-L",
            "-l",
            "-Z",
            "-S",
            "-R",
            "-h",
            "-v",
            "--set",
            "-t",
            "-u",
            "-f",
            "-s",
            "-p",
            "-M",
            "-r",
            "-g",
            "-i",
            "-m",
            "-w",
            "-x",
            "-y",
            "-n",
            "-c",
            "-6",
            "-o",
            "-b",
            "--pe",
            "--stats",
            "--rate",
            "--thresholds",
            "--persistent-conn",
            "--exact",
            "--sort",
            "--nosort",
            "--timeout",
            "--daemon",
            "--tun-info",
            "--fullnat",
            "--add-laddr",
            "-P",
            "-Q",
            "-G",
            "-z",
            "-F",
            "eth0",
            "--proxy-protocol",
            "v2",
            "v1-insecure",
            "--start-daemon",
            "--mcast-group",
            "-Ln",
            "-lnc",
            "-gw2",
            "-p600",
            "--weight=",
            "--weight=3",
            "--",
            "-",
            "rr",
            "wrr",
            "wlc",
            "sh",
            "sh-port,sh-fallback",
            "ipvsadm",
            "#",
            "192.168.79.110:80",
            "10.0.0.200:80",
            "10.0.0.7",
            "10.0.0.7:80",
            "10.0.0.200",
            ":80",
            "[::1]:80",
            "0",
            "1",
            "65535",
            "65536",
            "-1",
            "4294967296",
            "255.255.255.0",
            "master",
            "é",
            "-é",
            "--é",
        ])
        .prop_map(str::to_string),
        "\\PC{0,10}",
    ]
}

/// `-o` and `-b` are carried into the director and printed where ipvsadm prints them:
/// `-S` as `-p … -M … -o -b …`, `-L` as `sched (flags) persistent … mask … ops`.
#[test]
fn ops_and_scheduler_flags_round_trip() {
    let mut b = MemoryBackend::default();
    let o = uvsadm_in(
        &mut b,
        "-A -u 10.0.0.1:53 -s sh -b sh-port,sh-fallback -o -p 60 -M 255.255.255.0",
        "",
    );
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    let o = uvsadm_in(&mut b, "-S -n", "");
    assert_eq!(
        o.stdout,
        "-A -u 10.0.0.1:53 -s sh -p 60 -M 255.255.255.0 -o -b sh-fallback,sh-port\n"
    );
    let o = uvsadm_in(&mut b, "-L -n", "");
    assert!(
        o.stdout.contains(
            "UDP  10.0.0.1:53 sh (sh-fallback,sh-port) persistent 60 mask 255.255.255.0 ops\n"
        ),
        "{}",
        o.stdout
    );
    let o = uvsadm_in(&mut b, "-A -t 10.0.0.1:80 -s rr -o", "");
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (
            2,
            "One-Packet Scheduling is only for UDP virtual services\n"
        )
    );
    let o = uvsadm_in(&mut b, "-A -t 10.0.0.1:81 -s rr -b sh-port", "");
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("incompatible scheduler flag"),
        "{}",
        o.stderr
    );
}

/// fwmark services (`-f N`) with uvs's mark rules standing in for iptables MARK rules.
const FWMARK: [&str; 9] = [
    "--add-mark 1 -t 192.168.10.100:80,443",
    "-A -f 2 -p",
    "-a -f 2 -r 192.168.10.13:0 -g",
    "-A -t 192.168.10.100:22 -s wlc",
    "-a -t 192.168.10.100:22 -r 192.168.10.11:22 -g -w 1",
    "-A -f 1 -s rr",
    "-a -f 1 -r 192.168.10.11:0 -g",
    "-a -f 1 -r 192.168.10.12 -g -w 2",
    "--add-mark 2 -u 192.168.10.100:53",
];

fn fwmark() -> MemoryBackend {
    let mut b = MemoryBackend::default();
    for cmd in FWMARK {
        assert_eq!(ok(&mut b, cmd), "", "{cmd}");
    }
    b
}

#[test]
fn fwmark_services_list_save_and_restore_like_ipvsadm() {
    let mut b = fwmark();
    let ln = ok(&mut b, "-Ln");
    assert_eq!(ln, golden("fwmark_Ln.txt"));
    let saved = ok(&mut b, "-S -n");
    assert_eq!(saved, golden("fwmark_S_n.txt"));
    assert!(!saved.contains("mark"), "-S stays loadable by ipvsadm");
    // One service, by mark.
    let one = ok(&mut b, "-L -n -f 1");
    assert_eq!(
        one,
        "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\nFWM  1 rr\n  -> 192.168.10.11:0              Route   1      0          0         \n  -> 192.168.10.12:0              Route   2      0          0         \n"
    );
    let stats = ok(&mut b, "-Ln --stats -f 1");
    assert!(
        stats.contains(&format!("{:<33}{}\n", "FWM  1", "        0".repeat(5))),
        "{stats}"
    );
    assert_eq!(ok(&mut b, "-Z -f 1"), "");
    // Mark rules: a listing, and --add-mark lines that -R takes back.
    assert_eq!(
        ok(&mut b, "--list-marks"),
        "Mark  Prot VirtualAddress  Ports\n1     TCP  192.168.10.100  80,443\n2     UDP  192.168.10.100  53\n"
    );
    let marks = ok(&mut b, "--save-marks");
    assert_eq!(
        marks,
        "--add-mark 1 -t 192.168.10.100:80,443\n--add-mark 2 -u 192.168.10.100:53\n"
    );
    // Round trip: clear everything, restore the two listings.
    assert_eq!(ok(&mut b, "-C"), "");
    assert_eq!(ok(&mut b, "--del-mark 1 -t 192.168.10.100:443,80"), "");
    assert_eq!(ok(&mut b, "--del-mark 2 -u 192.168.10.100:53"), "");
    assert_eq!(
        ok(&mut b, "--list-marks"),
        "Mark  Prot VirtualAddress  Ports\n"
    );
    let o = uvsadm_in(&mut b, "-R", &format!("{marks}{saved}"));
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    assert_eq!(ok(&mut b, "-Ln"), ln);
    assert_eq!(ok(&mut b, "--save-marks"), marks);
    // Restoring over the running table: identical mark rules are no-ops; -C keeps them.
    let o = uvsadm_in(&mut b, "-R", &format!("-C\n{marks}{saved}"));
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    assert_eq!(ok(&mut b, "-S -n"), saved);
    // Edits and deletes by mark.
    assert_eq!(ok(&mut b, "-e -f 1 -r 192.168.10.12:0 -g -w 5"), "");
    assert_eq!(ok(&mut b, "-d -f 1 -r 192.168.10.11"), "");
    assert_eq!(ok(&mut b, "-E -f 1 -s wrr"), "");
    assert!(ok(&mut b, "-S -n").contains("-A -f 1 -s wrr\n-a -f 1 -r 192.168.10.12:0 -g -w 5\n"));
    assert_eq!(ok(&mut b, "-D -f 2"), "");
    let o = uvsadm_in(&mut b, "-D -f 2", "");
    assert_eq!((o.code, o.stderr.as_str()), (255, "No such service\n"));
}

#[test]
fn mark_rule_refusals() {
    let mut b = fwmark();
    let o = uvsadm_in(&mut b, "--add-mark 3 -t 192.168.10.100:8080,443", "");
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (
            255,
            "TCP port 443 of 192.168.10.100 is already marked by a rule with mark 1\n"
        )
    );
    let o = uvsadm_in(&mut b, "--del-mark 1 -t 192.168.10.100:80", "");
    assert_eq!((o.code, o.stderr.as_str()), (255, "No such mark rule\n"));
    let o = uvsadm_in(&mut b, "--add-mark x -t 192.168.10.100:80", "");
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (2, "invalid fwmark value `x' specified\n")
    );
    let o = uvsadm_in(&mut b, "-A -f 0 -s rr", "");
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (2, "invalid fwmark value `0' specified\n")
    );
}

/// The seeds' TUN lab (its public VIP moved to a documentation range), with a GUE and a GRE
/// real beside the IPIP one.
const TUN: [&str; 4] = [
    "-A -t 203.0.113.2:80 -s rr",
    "-a -t 203.0.113.2:80 -r 10.0.0.2 -i",
    "-a -t 203.0.113.2:80 -r 10.0.0.6 -i --tun-type gue --tun-port 6080 --tun-csum",
    "-a -t 203.0.113.2:80 -r 10.0.0.10:8080 --ipip --tun-type gre --tun-csum",
];

#[test]
fn tunnelling_reals_list_save_and_restore_like_ipvsadm() {
    let mut b = MemoryBackend::default();
    for cmd in TUN {
        assert_eq!(ok(&mut b, cmd), "", "{cmd}");
    }
    assert_eq!(ok(&mut b, "-Ln"), golden("tun_Ln.txt"));
    assert_eq!(ok(&mut b, "-Ln --tun-info"), golden("tun_Ln_tun_info.txt"));
    let saved = ok(&mut b, "-S -n");
    assert_eq!(
        saved,
        golden("tun_S_n.txt"),
        "the real's port is the service's"
    );
    let mut c = MemoryBackend::default();
    let o = uvsadm_in(&mut c, "-R", &saved);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(ok(&mut c, "-S -n"), saved);
    // -e changes the encapsulation; a DR or NAT real shows n/a as its tunnel info.
    ok(
        &mut b,
        "-e -t 203.0.113.2:80 -r 10.0.0.6 -i --tun-type gue --tun-port 7000",
    );
    ok(&mut b, "-a -t 203.0.113.2:80 -r 10.0.0.20 -g");
    let info = ok(&mut b, "-Ln --tun-info");
    assert!(
        info.contains("  -> 10.0.0.6:80                  Tunnel  gue:7000:-c   1"),
        "{info}"
    );
    assert!(
        info.contains("  -> 10.0.0.20:80                 Route   n/a           1"),
        "{info}"
    );
}

/// The FullNAT lab as a DPVS user configures it: a PROXY v2 web service on two unmodified
/// reals behind a router, two local addresses (DPVS's tutorial lines, `-b` included), a UDP
/// service with a local address given without `-F` (Alibaba's LVS syntax), a DR service.
const FULLNAT: [&str; 10] = [
    "-A -t 192.168.70.100:80 -s rr --proxy-protocol v2",
    "-a -t 192.168.70.100:80 -r 10.10.0.11:8080 --fullnat",
    "-a -t 192.168.70.100:80 -r 10.10.0.12:8080 -b -w 2",
    "--add-laddr -z 192.168.70.200 -t 192.168.70.100:80 -F eth0",
    "-P -t 192.168.70.100:80 -z 192.168.70.201 -F eth0",
    "-A -u 192.168.70.100:53 -s wrr",
    "-a -u 192.168.70.100:53 -r 10.10.0.11 --fullnat",
    "-P -u 192.168.70.100:53 -z 192.168.70.202",
    "-A -t 192.168.70.100:22 -s wlc",
    "-a -t 192.168.70.100:22 -r 192.168.70.11 -g",
];

fn fullnat() -> MemoryBackend {
    let mut b = MemoryBackend::default();
    for cmd in FULLNAT {
        assert_eq!(ok(&mut b, cmd), "", "{cmd}");
    }
    b
}

#[test]
fn fullnat_lists_saves_and_restores_as_dpvs_prints_it() {
    let mut b = fullnat();
    let ln = ok(&mut b, "-Ln");
    assert_eq!(ln, golden("fullnat_Ln.txt"));
    assert!(
        ok(&mut b, "-Ln --tun-info")
            .contains("  -> 10.10.0.11:8080              FullNat n/a           1      0")
    );
    assert_eq!(
        ok(&mut b, "-L -n -t 192.168.70.100:80").lines().nth(2),
        Some("TCP  192.168.70.100:80 rr ppv2")
    );
    let laddrs = ok(&mut b, "--get-laddr");
    assert_eq!(laddrs, golden("fullnat_G.txt"));
    assert_eq!(ok(&mut b, "-G"), laddrs);
    // One service: the title, then its block.
    let title = laddrs.lines().next().unwrap();
    assert_eq!(
        ok(&mut b, "-G -u 192.168.70.100:53"),
        format!(
            "{title}\n{:<20} {:<8} \n{:<20} {:<8} {:<20} {:<10} {:<10}\n",
            "192.168.70.100:53", 1, "", "", "192.168.70.202", 0, 0
        )
    );

    // ipvsadm -S -n > f; ipvsadm -C; ipvsadm -R < f: the same table, local addresses and
    // PROXY protocol included.
    let saved = ok(&mut b, "-S -n");
    assert_eq!(saved, golden("fullnat_S_n.txt"));
    assert_eq!(ok(&mut b, "-C"), "");
    assert_eq!(ok(&mut b, "-G"), "", "no service, no title (DPVS)");
    let o = uvsadm_in(&mut b, "-R", &saved);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    assert_eq!(ok(&mut b, "-Ln"), ln);
    assert_eq!(ok(&mut b, "-G"), laddrs);
    assert_eq!(ok(&mut b, "-S -n"), saved);

    // Without -n the service carries its names, and -R resolves them back.
    let names = Names::from_text(
        "http 80/tcp www\ndomain 53/udp\n",
        "192.168.70.100 vip.lab\n",
    );
    let named = uvsadm_as(&mut b, "ipvsadm-save", "", "", &names);
    assert!(
        named
            .stdout
            .contains("--add-laddr -t vip.lab:http -z 192.168.70.200 -F eth0\n"),
        "{}",
        named.stdout
    );
    let mut c = MemoryBackend::default();
    let o = uvsadm_as(&mut c, "ipvsadm-restore", "", &named.stdout, &names);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    assert_eq!(ok(&mut c, "-S -n"), saved);

    // DPVS's own `ipvsadm -S` output (`-b` for FullNAT) restores too.
    let mut d = MemoryBackend::default();
    let dpvs =
        "-A -t 192.168.70.100:80 -s rr\n-a -t 192.168.70.100:80 -r 10.10.0.11:8080 -b -w 1\n";
    let o = uvsadm_in(&mut d, "-R", dpvs);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    assert!(ok(&mut d, "-Ln").contains("  -> 10.10.0.11:8080              FullNat 1 "));
}

#[test]
fn fullnat_edits_and_refusals() {
    let mut b = fullnat();
    let before = ok(&mut b, "-S -n");
    // Refusals as DPVS's libipvs words them, exit 255 like a refused kernel call; nothing
    // changes.
    for (args, code, message) in [
        (
            "--add-laddr -t 192.168.70.100:80 -z 192.168.70.200 -F eth0",
            255,
            "Local address already exists",
        ),
        (
            "--del-laddr -t 192.168.70.100:80 -z 192.168.70.209",
            255,
            "No such Local address",
        ),
        (
            "--add-laddr -t 192.168.70.100:81 -z 192.168.70.209",
            255,
            "Service not defined",
        ),
        (
            "-P -t 192.168.70.100:80 -z 192.168.70.100",
            255,
            "local address 192.168.70.100 is a VIP: replies to it would be taken for requests",
        ),
        (
            "-P -t 192.168.70.100:80",
            2,
            "You need to supply the 'local-address' option for the 'add-laddr' command",
        ),
        (
            "-P -t 192.168.70.100:80 -z 224.0.0.18",
            2,
            "illegal local address 224.0.0.18: a local address is a unicast address (not 0.0.0.0, 255.255.255.255, multicast or loopback)",
        ),
        (
            "-E -u 192.168.70.100:53 -s wrr --proxy-protocol v1",
            2,
            "the PROXY protocol v1 has no UDP: use v2 for a UDP service",
        ),
        (
            "-E -t 192.168.70.100:80 -s rr --proxy-protocol v1-insecure",
            2,
            "proxy protocol `v1-insecure' is not supported: uvs never passes on a PROXY header a client sent; use v1",
        ),
        ("-G -t 192.168.70.100:81", 1, "Service not defined"),
        (
            "-G -n",
            2,
            "Illegal 'numeric' option with the 'get-laddr' command",
        ),
    ] {
        let o = uvsadm_in(&mut b, args, "");
        assert_eq!(
            (o.code, o.stderr.as_str()),
            (code, format!("{message}\n").as_str()),
            "{args}"
        );
        assert_eq!(ok(&mut b, "-S -n"), before, "{args} changed the table");
    }
    // -R names the line of a refused local address and applies nothing.
    let o = uvsadm_in(
        &mut b,
        "-R",
        "-A -t 192.168.70.100:443 -s rr\n-P -t 192.168.70.100:443 -z 192.168.70.200\n-P -t 192.168.70.100:443 -z 192.168.70.200\n",
    );
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (255, "line 3: Local address already exists\n")
    );
    assert_eq!(ok(&mut b, "-S -n"), before);

    // -E replaces the service's settings, as ipvsadm's -E does and DPVS's does for the PROXY
    // protocol: without --proxy-protocol it is disabled.
    assert_eq!(ok(&mut b, "-E -t 192.168.70.100:80 -s rr"), "");
    assert!(ok(&mut b, "-Ln").contains("TCP  192.168.70.100:80 rr\n"));
    assert_eq!(
        ok(&mut b, "-E -t 192.168.70.100:80 -s rr --proxy-protocol V1"),
        ""
    );
    assert!(ok(&mut b, "-S -n").contains("-A -t 192.168.70.100:80 -s rr --proxy-protocol v1\n"));
    // -e changes the method both ways; a deleted local address leaves the listing.
    assert_eq!(
        ok(&mut b, "-e -t 192.168.70.100:80 -r 10.10.0.12:8080 -m -w 2"),
        ""
    );
    assert!(ok(&mut b, "-Ln").contains("  -> 10.10.0.12:8080              Masq    2 "));
    assert_eq!(
        ok(
            &mut b,
            "--del-laddr -t 192.168.70.100:80 -z 192.168.70.200 -F eth0"
        ),
        ""
    );
    let g = ok(&mut b, "-G -t 192.168.70.100:80");
    assert!(g.contains("192.168.70.100:80    1        \n"), "{g}");
    assert!(!g.contains("192.168.70.200"), "{g}");
    // Deleting the service takes its local addresses with it.
    assert_eq!(ok(&mut b, "-D -t 192.168.70.100:80"), "");
    assert!(!ok(&mut b, "-S -n").contains("192.168.70.201"));
}
