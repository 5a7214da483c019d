//! ipvsadm-save style rules (`--rules`): what `ipvsadm -S -n` prints and `ipvsadm -R` reads.
//!
//! One ipvsadm invocation per line, optionally starting with the word `ipvsadm`; blank lines and
//! `#` comments are ignored (a word starting with `#` ends the line). Each line goes through
//! `uvsadm`'s parser ([`crate::ctl::ipvsadm::args`]: popt syntax, ipvsadm's checks and messages)
//! and must be a change: `-A -E -D` (services), `-a -e -d` (real servers), `-C`, DPVS's
//! `--add-laddr`/`--del-laddr` (FullNAT local addresses, as `uvsadm -S` writes them) or uvs's
//! `--add-mark`/`--del-mark`. Listing commands, `-R`, `-Z` and `--set` are refused with the
//! line named.
//!
//! Semantics follow ipvsadm: `-E` and `-e` replace the service's (server's) settings, so an
//! option left out gets its default (`-e` without `-w` sets weight 1, `-E` without `-p` makes the
//! service non-persistent, `-E` without `-s` sets ipvsadm's default scheduler, `wlc`).
//!
//! [`parse`] is transactional, unlike `ipvsadm -R`: all lines are parsed first, then applied with
//! [`crate::model::change::apply`] to a copy of the base table, which is returned only if every line
//! was accepted.

use std::path::Path;

use super::ConfigError;
use crate::ctl::ipvsadm::args::ErrorKind;
use crate::ctl::ipvsadm::names::Names;
use crate::ctl::ipvsadm::{LineChange, LineError, LineErrorKind, changes_from_text, refusal_text};
use crate::model::change::Change;
use crate::model::change::{AdminState, apply};
use crate::model::{ModelError, ServiceTable};

/// What a rules file may say, for refusals.
const EXPECTED: &str =
    "expected -A, -E, -D, -a, -e, -d, -C, --add-laddr, --del-laddr, --add-mark or --del-mark";

/// `-p` without a timeout, as ipvsadm (`IPVS_SVC_PERSISTENT_TIMEOUT`).
pub use crate::ctl::ipvsadm::args::DEFAULT_PERSISTENCE_TIMEOUT;

/// Reads the rules file at `path` and applies it to a copy of `base`.
pub fn load(path: &Path, base: &ServiceTable) -> Result<ServiceTable, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, base)
}

/// Applies every line of `text` to a clone of `base`. Returns the new table only if every line
/// was accepted; otherwise the error names the first bad line (`path` is only used in errors).
///
/// Host names come from `/etc/hosts` only, never from DNS: the daemon reads its rules on the
/// control thread when it reloads (SIGHUP), and a resolver waiting on an unreachable name
/// server (5 s a try) would stall ARP and VRRP there. `uvsadm -R` asks the system resolver, as
/// ipvsadm does, in its own process.
pub fn parse(text: &str, path: &Path, base: &ServiceTable) -> Result<ServiceTable, ConfigError> {
    let at = |line: usize, message: String| ConfigError::At {
        path: path.to_path_buf(),
        line,
        message,
    };
    let changes = changes_from_text(text, &Names::files(), "ipvsadm")
        .map_err(|e| at(e.line, parse_message(&e)))?;
    if let Some(c) = changes
        .iter()
        .find(|c| matches!(c.change, Change::SetTimeouts { .. }))
    {
        return Err(at(
            c.line,
            format!("'--set' cannot be used in a rules file ({EXPECTED})"),
        ));
    }
    let state = AdminState {
        table: base.clone(),
        ..AdminState::default()
    };
    let list: Vec<Change> = changes.iter().map(|c| c.change.clone()).collect();
    match apply(&state, &list) {
        Ok(next) => Ok(next.table),
        Err(refusal) => {
            let failed = refusal.change.and_then(|i| changes.get(i));
            match failed {
                Some(c) => Err(at(c.line, refused_message(c, &refusal.message))),
                None => Err(at(1, refusal.message)),
            }
        }
    }
}

fn parse_message(e: &LineError) -> String {
    match &e.error {
        LineErrorKind::Parse(a) => match &a.kind {
            ErrorKind::NoCommand => format!("no command: {EXPECTED}"),
            ErrorKind::UnknownScheduler(name) => {
                ModelError::UnknownScheduler(name.clone()).to_string()
            }
            _ => a.message.trim_end().to_string(),
        },
        LineErrorKind::NotAChange(word) => {
            format!("'{word}' cannot be used in a rules file ({EXPECTED})")
        }
    }
}

/// A model refusal with the service (and real server) it concerns.
fn refused_message(c: &LineChange, message: &str) -> String {
    let text = refusal_text(&c.change, message);
    match &c.change {
        Change::AddService(s) | Change::EditService(s) => format!("service {}: {text}", s.key),
        Change::DeleteService(k) => format!("service {k}: {text}"),
        Change::AddReal(k, r) | Change::EditReal(k, r) => {
            format!("service {k}: real {}:{}: {text}", r.addr, r.port)
        }
        Change::DeleteReal(k, addr, port) => {
            let port = if *port == 0 { k.port } else { *port };
            format!("service {k}: real {addr}:{port}: {text}")
        }
        Change::AddMarkRule(r) | Change::DeleteMarkRule(r) => {
            let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
            let (proto, vip) = (r.proto.ipvsadm_name(), r.vip);
            format!(
                "mark rule {} {proto} {vip}:{}: {text}",
                r.mark,
                ports.join(",")
            )
        }
        Change::AddLocalAddr(k, l) => format!("service {k}: local address {}: {text}", l.addr),
        Change::DeleteLocalAddr(k, addr) => format!("service {k}: local address {addr}: {text}"),
        Change::Clear | Change::SetTimeouts { .. } => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    const DEMO: &str = include_str!("../../configs/demo.rules");

    fn p(text: &str) -> Result<ServiceTable, ConfigError> {
        parse(text, Path::new("r.rules"), &ServiceTable::new())
    }

    #[track_caller]
    fn refused_on(base: &ServiceTable, text: &str, line: usize, needles: &[&str]) {
        match parse(text, Path::new("r.rules"), base) {
            Err(e @ ConfigError::At { .. }) => {
                let shown = e.to_string();
                let ConfigError::At {
                    line: l, message, ..
                } = e
                else {
                    unreachable!()
                };
                assert_eq!(l, line, "wrong line for {shown:?}");
                assert!(shown.starts_with(&format!("r.rules:{line}: ")), "{shown}");
                for n in needles {
                    assert!(message.contains(n), "{message:?} lacks {n:?}");
                }
            }
            other => panic!("expected At error, got {other:?}"),
        }
    }

    #[track_caller]
    fn refused(text: &str, line: usize, needles: &[&str]) {
        refused_on(&ServiceTable::new(), text, line, needles);
    }

    fn key(proto: Protocol, port: u16) -> ServiceKey {
        ServiceKey {
            proto,
            vip: Ipv4Addr::new(10, 0, 0, 100),
            port,
            fwmark: 0,
        }
    }

    const RR80: &str = "-A -t 10.0.0.100:80 -s rr\n";

    #[test]
    fn demo_rules_parse_to_the_expected_model() {
        let t = p(DEMO).unwrap();
        let mut want = ServiceTable::new();
        for k in [key(Protocol::Tcp, 80), key(Protocol::Udp, 53)] {
            want.add_service(ServiceSpec::new(k, SchedulerKind::Rr))
                .unwrap();
            for last in [11, 12] {
                want.add_real(&k, RealSpec::route(Ipv4Addr::new(10, 0, 0, last), k.port))
                    .unwrap();
            }
        }
        assert_eq!(t, want);
    }

    /// `uvs run --rules` reads what `uvsadm -S -n` prints for FullNAT (the golden file of
    /// tests/uvsadm_golden.rs): methods, PROXY protocol and local addresses.
    #[test]
    fn fullnat_rules_load() {
        let text = include_str!("../../tests/golden/fullnat_S_n.txt");
        let t = p(text).unwrap();
        let web = ServiceKey::addr(Protocol::Tcp, Ipv4Addr::new(192, 168, 70, 100), 80);
        let svc = t.service(&web).unwrap();
        assert_eq!(svc.proxy_protocol, crate::model::ProxyVersion::V2);
        let reals: Vec<_> = svc
            .reals
            .iter()
            .map(|r| (r.forward, r.port, r.weight))
            .collect();
        assert_eq!(
            reals,
            vec![
                (crate::model::ForwardMethod::FullNat, 8080, 1),
                (crate::model::ForwardMethod::FullNat, 8080, 2)
            ]
        );
        let eth0 = |last| crate::model::LocalAddr {
            addr: Ipv4Addr::new(192, 168, 70, last),
            interface: Some("eth0".into()),
        };
        assert_eq!(svc.local_addrs, vec![eth0(200), eth0(201)]);
        let dns = ServiceKey::addr(Protocol::Udp, Ipv4Addr::new(192, 168, 70, 100), 53);
        assert_eq!(
            t.service(&dns).unwrap().local_addrs,
            vec![crate::model::LocalAddr {
                addr: Ipv4Addr::new(192, 168, 70, 202),
                interface: None
            }]
        );
        // A refused local address names its line and service.
        refused(
            &format!("{text}--add-laddr -t 192.168.70.100:80 -z 192.168.70.201\n"),
            11,
            &[
                "service TCP 192.168.70.100:80: local address 192.168.70.201: Local address already exists",
            ],
        );
        refused(
            "-A -t 10.0.0.100:80 -s rr\n--get-laddr\n",
            2,
            &[
                "'--get-laddr' cannot be used in a rules file",
                "--add-laddr",
            ],
        );
    }

    #[test]
    fn fwmark_services_and_mark_rules_load() {
        let t = p("--add-mark 1 -t 10.0.0.100:80,443\n-A -f 1 -s rr -p 60\n-a -f 1 -r 10.0.0.11:0 -g -w 2\n")
            .unwrap();
        let svc = t.service(&ServiceKey::fwmark(1)).unwrap();
        assert_eq!(svc.persistence_timeout, Some(60));
        assert_eq!((svc.reals[0].port, svc.reals[0].weight), (0, 2));
        assert_eq!(t.mark_rules()[0].ports, vec![80, 443]);
        assert_eq!(t.vips(), vec![Ipv4Addr::new(10, 0, 0, 100)]);
    }

    #[test]
    fn ipvsadm_save_output_with_persistence_parses() {
        let t = p(
            "ipvsadm -A -t 10.0.0.100:443 -s wrr -p 600 -M 255.255.255.0\n\
                   -a -t 10.0.0.100:443 -r 10.0.0.11:443 -g -w 5\n",
        )
        .unwrap();
        let s = t.service(&key(Protocol::Tcp, 443)).unwrap();
        assert_eq!(s.scheduler, SchedulerKind::Wrr);
        assert_eq!(s.persistence_timeout, Some(600));
        assert_eq!(s.persistence_netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(s.reals[0].weight, 5);
    }

    #[test]
    fn long_options_and_defaults() {
        let t = p("  # comment\n\n--add-service --tcp-service 10.0.0.100:80 --scheduler=rr --persistent\n\
                   --add-server --tcp-service=10.0.0.100:80 --real-server 10.0.0.11 --gatewaying --weight=0 --u-threshold 10 --l-threshold 5 # trailing\n")
        .unwrap();
        let s = t.service(&key(Protocol::Tcp, 80)).unwrap();
        assert_eq!(s.persistence_timeout, Some(DEFAULT_PERSISTENCE_TIMEOUT));
        let r = &s.reals[0];
        assert_eq!(
            (r.port, r.weight, r.upper_threshold, r.lower_threshold),
            (80, 0, 10, 5)
        );
    }

    #[test]
    fn attached_values_and_clusters() {
        let t = p("-At10.0.0.100:80 -srr -p\n-a -t10.0.0.100:80 -r10.0.0.11 -gw2\n-a -t 10.0.0.100:80 -r 10.0.0.12:80 -w3\n")
            .unwrap();
        let s = t.service(&key(Protocol::Tcp, 80)).unwrap();
        // A bare -p is ipvsadm's IPVS_SVC_PERSISTENT_TIMEOUT.
        assert_eq!(s.persistence_timeout, Some(360));
        assert_eq!(s.reals[0].weight, 2);
        assert_eq!(s.reals[1].weight, 3);
        let t = p("-A -t 10.0.0.100:80 -s rr -p600\n").unwrap();
        let s = t.service(&key(Protocol::Tcp, 80)).unwrap();
        assert_eq!(s.persistence_timeout, Some(600));
    }

    #[test]
    fn weight_defaults_to_one_and_edit_replaces() {
        let t = p(&format!(
            "{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11:80\n-e -t 10.0.0.100:80 -r 10.0.0.11:80 -w 7 -x 9\n"
        ))
        .unwrap();
        let r = &t.service(&key(Protocol::Tcp, 80)).unwrap().reals[0];
        assert_eq!((r.weight, r.upper_threshold), (7, 9));
        let t = p(&format!(
            "{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11:80 -w 4\n-e -t 10.0.0.100:80 -r 10.0.0.11:80\n"
        ))
        .unwrap();
        assert_eq!(
            t.service(&key(Protocol::Tcp, 80)).unwrap().reals[0].weight,
            1
        );
    }

    #[test]
    fn edit_delete_and_clear() {
        let t = p(&format!(
            "{RR80}-E -t 10.0.0.100:80 -p 60\n-A -u 10.0.0.100:53 -s wrr\n-D -u 10.0.0.100:53\n"
        ))
        .unwrap();
        let s = t.service(&key(Protocol::Tcp, 80)).unwrap();
        assert_eq!(
            s.scheduler,
            SchedulerKind::Wlc,
            "-E without -s sets ipvsadm's default scheduler"
        );
        assert_eq!(s.persistence_timeout, Some(60));
        assert_eq!(t.services().len(), 1);

        let t = p(&format!(
            "{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11\n-d -t 10.0.0.100:80 -r 10.0.0.11:80\n"
        ))
        .unwrap();
        assert!(t.service(&key(Protocol::Tcp, 80)).unwrap().reals.is_empty());

        let base = p(DEMO).unwrap();
        let first_id = base.reals().next().unwrap().1.id;
        let t = parse(
            "-C\n-A -t 10.0.0.100:80 -s rr\n-a -t 10.0.0.100:80 -r 10.0.0.11:80\n",
            Path::new("r.rules"),
            &base,
        )
        .unwrap();
        assert_eq!(t.services().len(), 1);
        let new_id = t.reals().next().unwrap().1.id;
        assert!(new_id > first_id, "clear must not recycle real ids");
    }

    #[test]
    fn unsupported_features_are_refused_clearly() {
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11:80 -i --tun-type gue\n"),
            2,
            &["You need to supply the 'tun-port' option for the 'gue' tunnel type"],
        );
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11:80 -gm\n"),
            2,
            &["multiple 'forwarding-method' options specified"],
        );
        refused("-A -f 1 -6 -s rr\n", 1, &["IPv6 is not supported yet"]);
        refused(
            "--add-mark 1 -t 10.0.0.100:80\n--add-mark 2 -t 10.0.0.100:443,80\n",
            2,
            &["mark rule 2 TCP 10.0.0.100:443,80", "TCP port 80", "mark 1"],
        );
        refused("--list-marks\n", 1, &["'--list-marks' cannot be used"]);
        refused("-A -6 -t 10.0.0.1:80 -s rr\n", 1, &["-6 used before -f"]);
        refused("-A -t [::1]:80 -s rr\n", 1, &["IPv6 is not supported yet"]);
        refused("-A -t 10.0.0.1:80 -s rr -k\n", 1, &["-k: unknown option"]);
        refused(
            "-A -t 10.0.0.1:80 -s rr --zap\n",
            1,
            &["--zap: unknown option"],
        );
        refused("-L -n\n", 1, &["cannot be used in a rules file"]);
    }

    #[test]
    fn malformed_lines_are_refused_with_their_line() {
        refused(
            "-A -s rr\n",
            1,
            &["You need to supply the 'service-address' option for the 'add-service' command"],
        );
        refused(
            &format!("{RR80}-a -r 10.0.0.11\n"),
            2,
            &["You need to supply the 'service-address' option"],
        );
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -w 1\n"),
            2,
            &["You need to supply the 'real-server' option for the 'add-server' command"],
        );
        refused("-t 10.0.0.1:80 -s rr\n", 1, &["no command"]);
        refused("-A -a -t 10.0.0.1:80\n", 1, &["invalid option `-a'"]);
        refused(
            "-A -t 10.0.0.1:80 -u 10.0.0.1:80\n",
            1,
            &["multiple 'service-address' options specified"],
        );
        refused(
            "-A -t 10.0.0.1:80 -s rr -s wrr\n",
            1,
            &["multiple 'scheduler' options specified"],
        );
        refused(
            "-A -t 10.0.0.300:80 -s rr\n",
            1,
            &["illegal virtual server address[:port] specified"],
        );
        refused(
            "-A -t web:80 -s rr\n",
            1,
            &["illegal virtual server address[:port] specified"],
        );
        refused(
            "-A -t 10.0.0.1 -s rr\n",
            1,
            &["Zero port specified for non-persistent service"],
        );
        refused(
            "-A -t 10.0.0.1:0 -s rr\n",
            1,
            &["Zero port specified for non-persistent service"],
        );
        refused(
            "-A -t 10.0.0.1:65536 -s rr\n",
            1,
            &["illegal virtual server address[:port]"],
        );
        refused(
            "-A -t 10.0.0.1:0 -s rr -p\n",
            1,
            &["port 0 is not supported for a TCP/UDP service yet"],
        );
        refused(
            "-A -t 10.0.0.1:nosuchservice -s rr\n",
            1,
            &["illegal virtual server address[:port]"],
        );
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11:99999\n"),
            2,
            &["illegal real server address[:port] specified"],
        );
        refused("-A -t 10.0.0.1:80 -s\n", 1, &["-s: missing argument"]);
        refused(
            "-A -t 10.0.0.1:80 -s rr bogus\n",
            1,
            &["unexpected argument bogus"],
        );
        refused(
            "-A -t 10.0.0.1:80 -s rr -w 2\n",
            1,
            &["Illegal 'weight' option with the 'add-service' command"],
        );
        refused(
            "-C -t 10.0.0.1:80\n",
            1,
            &["Illegal 'service-address' option with the 'flush' command"],
        );
        refused(
            "-A -t 10.0.0.1:80 -s roundrobin\n",
            1,
            &["Scheduler not found: 'roundrobin'"],
        );
        refused(
            "-A -t 10.0.0.1:80 -s rr -p 0\n",
            1,
            &["invalid timeout value `0' specified"],
        );
        refused(
            "-A -t 10.0.0.1:80 -s rr -p 1 -M 255.255.0\n",
            1,
            &["illegal virtual server persistent mask specified"],
        );
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11 -w 65536\n"),
            2,
            &["illegal weight specified"],
        );
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11 -w -1\n"),
            2,
            &["illegal weight specified"],
        );
        refused(
            &format!("{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11 -x 2147483648\n"),
            2,
            &["illegal u_threshold specified"],
        );
        refused("--weight=\n", 1, &["no command"]);
        refused("-C --clear=1\n", 1, &["option does not take an argument"]);
        refused(
            "--set 1 2 3\n",
            1,
            &["'--set' cannot be used in a rules file"],
        );
        refused("\n-Z\n", 2, &["'-Z' cannot be used in a rules file"]);
    }

    #[test]
    fn model_refusals_name_the_service() {
        refused(
            "-a -t 10.0.0.100:80 -r 10.0.0.11:80 -g -w 1\n",
            1,
            &["service TCP 10.0.0.100:80", "Service not defined"],
        );
        refused(
            &format!("{RR80}{RR80}"),
            2,
            &["service TCP 10.0.0.100:80: Service already exists"],
        );
        refused(
            &format!(
                "{RR80}-a -t 10.0.0.100:80 -r 10.0.0.11\n-a -t 10.0.0.100:80 -r 10.0.0.11:80\n"
            ),
            3,
            &["real 10.0.0.11:80: Destination already exists"],
        );
        refused(
            &format!("{RR80}-d -t 10.0.0.100:80 -r 10.0.0.11\n"),
            2,
            &["No such destination"],
        );
        refused(
            "-D -u 10.0.0.100:53\n",
            1,
            &["UDP 10.0.0.100:53: No such service"],
        );
        refused("-E -t 10.0.0.100:80\n", 1, &["No such service"]);
    }

    #[test]
    fn a_bad_line_leaves_the_base_untouched() {
        let base = p(DEMO).unwrap();
        let snapshot = base.clone();
        let text = "-D -t 10.0.0.100:80\n-A -t 10.0.0.200:80 -s rr\n-a -t 10.0.0.201:80 -r 10.0.0.11\n-A -t 10.0.0.202:80 -s rr\n";
        let e = parse(text, Path::new("r.rules"), &base).unwrap_err();
        assert!(e.to_string().contains(":3:"), "{e}");
        assert!(e.to_string().contains("Service not defined"), "{e}");
        assert_eq!(base, snapshot);
    }

    #[test]
    fn load_reports_unreadable_files() {
        assert!(matches!(
            load(Path::new("/nonexistent/uvs.rules"), &ServiceTable::new()),
            Err(ConfigError::Read { .. })
        ));
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(vec![
                "-A",
                "-E",
                "-D",
                "-a",
                "-e",
                "-d",
                "-C",
                "-t",
                "-u",
                "-s",
                "-p",
                "-M",
                "-r",
                "-g",
                "-w",
                "-x",
                "-y",
                "-i",
                "-m",
                "-f",
                "-6",
                "--weight=",
                "--persistent",
                "--tcp-service",
                "-gw2",
                "-At",
                "-",
                "--",
                "rr",
                "wrr",
                "wlc",
                "ipvsadm",
                "#",
                "10.0.0.100:80",
                "10.0.0.11",
                "10.0.0.11:80",
                "10.0.0.100:53",
                "300",
                "0",
                "65535",
                "65536",
                "4294967296",
                "255.255.255.0",
                ":",
                "[::1]:80",
                "é",
                "-é",
            ])
            .prop_map(str::to_string),
            "\\PC{0,12}",
        ]
    }

    proptest! {
        #[test]
        fn token_soup_never_panics(
            lines in proptest::collection::vec(proptest::collection::vec(token(), 0..10), 0..8)
        ) {
            let text: Vec<String> = lines.iter().map(|l| l.join(" ")).collect();
            let text = text.join("\n");
            let base = p(DEMO).unwrap();
            let snapshot = base.clone();
            match parse(&text, Path::new("r.rules"), &base) {
                Ok(_) => {}
                Err(ConfigError::At { line, .. }) => prop_assert!(line >= 1 && line <= lines.len()),
                Err(e) => prop_assert!(false, "unexpected error kind {e}"),
            }
            prop_assert_eq!(base, snapshot);
        }

        #[test]
        fn random_text_never_panics(text in "\\PC*") {
            let _ = p(&text);
        }
    }
}
