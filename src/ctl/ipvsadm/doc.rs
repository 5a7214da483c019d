//! uvsadm's command line described as a clap `Command`, for its manual page and shell
//! completions only. The parser is [`super::args`]: ipvsadm's popt rules (the first option
//! is the command, `-p` takes the next word only when it does not start with `-`, ipvsadm's
//! messages and exit codes) are not what clap parses, so clap never parses uvsadm's argv. A
//! test keeps this description and the parser's option table in step.

use clap::{Arg, ArgAction, Command};

use crate::model::SchedulerKind;

const COMMANDS: &str = "Commands";
const SERVICE: &str = "Virtual service";
const OPTIONS: &str = "Options";
const DAEMON: &str = "Sync daemon options";
const FULLNAT: &str = "FullNAT (DPVS's commands and options)";
const UVS: &str = "uvs only";

/// (long, short, value name, help, heading).
type ArgDoc = (
    &'static str,
    Option<char>,
    Option<&'static str>,
    &'static str,
    &'static str,
);

/// Help texts are ipvsadm's, plus what uvs refuses.
const ARGS: &[ArgDoc] = &[
    (
        "add-service",
        Some('A'),
        None,
        "add virtual service with options",
        COMMANDS,
    ),
    (
        "edit-service",
        Some('E'),
        None,
        "edit virtual service with options",
        COMMANDS,
    ),
    (
        "delete-service",
        Some('D'),
        None,
        "delete virtual service",
        COMMANDS,
    ),
    ("clear", Some('C'), None, "clear the whole table", COMMANDS),
    (
        "restore",
        Some('R'),
        None,
        "restore rules from stdin (all lines or none)",
        COMMANDS,
    ),
    ("save", Some('S'), None, "save rules to stdout", COMMANDS),
    (
        "add-server",
        Some('a'),
        None,
        "add real server with options",
        COMMANDS,
    ),
    (
        "edit-server",
        Some('e'),
        None,
        "edit real server with options",
        COMMANDS,
    ),
    (
        "delete-server",
        Some('d'),
        None,
        "delete real server",
        COMMANDS,
    ),
    (
        "list",
        Some('L'),
        None,
        "list the table (also -l)",
        COMMANDS,
    ),
    (
        "zero",
        Some('Z'),
        None,
        "zero counters in a service or all services",
        COMMANDS,
    ),
    (
        "set",
        None,
        None,
        "set connection timeout values: --set tcp tcpfin udp",
        COMMANDS,
    ),
    (
        "start-daemon",
        None,
        Some("master|backup"),
        "start connection sync daemon",
        COMMANDS,
    ),
    (
        "stop-daemon",
        None,
        Some("master|backup"),
        "stop connection sync daemon",
        COMMANDS,
    ),
    (
        "help",
        Some('h'),
        None,
        "display the help message",
        COMMANDS,
    ),
    (
        "version",
        Some('v'),
        None,
        "display ipvsadm's version line",
        COMMANDS,
    ),
    (
        "tcp-service",
        Some('t'),
        Some("host[:port]"),
        "TCP virtual service",
        SERVICE,
    ),
    (
        "udp-service",
        Some('u'),
        Some("host[:port]"),
        "UDP virtual service",
        SERVICE,
    ),
    (
        "sctp-service",
        None,
        Some("host[:port]"),
        "SCTP virtual service (refused: not supported yet)",
        SERVICE,
    ),
    (
        "fwmark-service",
        Some('f'),
        Some("fwmark"),
        "firewall-mark virtual service; uvs's mark rules (--add-mark) say which packets carry the mark",
        SERVICE,
    ),
    (
        "ipv6",
        Some('6'),
        None,
        "fwmark entry uses IPv6 (refused: not supported yet)",
        OPTIONS,
    ),
    (
        "scheduler",
        Some('s'),
        Some("scheduler"),
        "scheduling method, default wlc",
        OPTIONS,
    ),
    (
        "pe",
        None,
        Some("engine"),
        "alternate persistence engine (refused: not supported yet)",
        OPTIONS,
    ),
    (
        "persistent",
        Some('p'),
        Some("timeout"),
        "persistent service; the timeout defaults to 360 seconds",
        OPTIONS,
    ),
    (
        "netmask",
        Some('M'),
        Some("netmask"),
        "persistent granularity mask",
        OPTIONS,
    ),
    (
        "real-server",
        Some('r'),
        Some("host[:port]"),
        "real server address (and port)",
        OPTIONS,
    ),
    (
        "gatewaying",
        Some('g'),
        None,
        "gatewaying (direct routing), the default",
        OPTIONS,
    ),
    (
        "ipip",
        Some('i'),
        None,
        "ipip encapsulation (tunneling)",
        OPTIONS,
    ),
    (
        "masquerading",
        Some('m'),
        None,
        "masquerading (NAT)",
        OPTIONS,
    ),
    (
        "tun-type",
        None,
        Some("type"),
        "tunnel type ipip|gue|gre, default ipip",
        OPTIONS,
    ),
    (
        "tun-port",
        None,
        Some("port"),
        "tunnel destination port (GUE)",
        OPTIONS,
    ),
    (
        "tun-nocsum",
        None,
        None,
        "tunnel encapsulation without checksum",
        OPTIONS,
    ),
    (
        "tun-csum",
        None,
        None,
        "tunnel encapsulation with checksum",
        OPTIONS,
    ),
    (
        "tun-remcsum",
        None,
        None,
        "tunnel encapsulation with remote checksum (GUE)",
        OPTIONS,
    ),
    (
        "weight",
        Some('w'),
        Some("weight"),
        "capacity of real server, 0-65535, default 1",
        OPTIONS,
    ),
    (
        "u-threshold",
        Some('x'),
        Some("uthreshold"),
        "upper threshold of connections",
        OPTIONS,
    ),
    (
        "l-threshold",
        Some('y'),
        Some("lthreshold"),
        "lower threshold of connections",
        OPTIONS,
    ),
    (
        "connection",
        Some('c'),
        None,
        "output of current connections",
        OPTIONS,
    ),
    (
        "timeout",
        None,
        None,
        "output of timeout (tcp tcpfin udp)",
        OPTIONS,
    ),
    (
        "daemon",
        None,
        None,
        "output of daemon information",
        OPTIONS,
    ),
    (
        "stats",
        None,
        None,
        "output of statistics information",
        OPTIONS,
    ),
    ("rate", None, None, "output of rate information", OPTIONS),
    (
        "exact",
        Some('X'),
        None,
        "expand numbers (display exact values)",
        OPTIONS,
    ),
    (
        "thresholds",
        None,
        None,
        "output of thresholds information",
        OPTIONS,
    ),
    (
        "persistent-conn",
        None,
        None,
        "output of persistent connection info",
        OPTIONS,
    ),
    (
        "tun-info",
        None,
        None,
        "output of tunnel information",
        OPTIONS,
    ),
    (
        "nosort",
        None,
        None,
        "disable sorting output of service/server entries",
        OPTIONS,
    ),
    (
        "sort",
        None,
        None,
        "does nothing, for backwards compatibility",
        OPTIONS,
    ),
    (
        "ops",
        Some('o'),
        None,
        "one-packet scheduling (UDP)",
        OPTIONS,
    ),
    (
        "numeric",
        Some('n'),
        None,
        "numeric output of addresses and ports",
        OPTIONS,
    ),
    (
        "sched-flags",
        Some('b'),
        Some("flags"),
        "scheduler flags (comma-separated)",
        OPTIONS,
    ),
    (
        "syncid",
        None,
        Some("sid"),
        "syncid for connection sync",
        DAEMON,
    ),
    (
        "sync-maxlen",
        None,
        Some("length"),
        "max sync message length (refused: uvs sends 1472)",
        DAEMON,
    ),
    (
        "mcast-interface",
        None,
        Some("interface"),
        "multicast interface for connection sync",
        DAEMON,
    ),
    (
        "mcast-group",
        None,
        Some("address"),
        "multicast group (refused: uvs uses 224.0.0.81)",
        DAEMON,
    ),
    (
        "mcast-port",
        None,
        Some("port"),
        "UDP port (refused: uvs uses 8848)",
        DAEMON,
    ),
    (
        "mcast-ttl",
        None,
        Some("ttl"),
        "multicast TTL (refused: uvs uses 1)",
        DAEMON,
    ),
    (
        "add-laddr",
        Some('P'),
        None,
        "add a local address to a service: -P virtual-service -z local-address [-F ifname]",
        FULLNAT,
    ),
    (
        "del-laddr",
        Some('Q'),
        None,
        "delete a local address of a service: -Q virtual-service -z local-address",
        FULLNAT,
    ),
    (
        "get-laddr",
        Some('G'),
        None,
        "list the local addresses with their connections and conflicts, of one service or all",
        FULLNAT,
    ),
    (
        "fullnat",
        None,
        None,
        "FullNAT forwarding (-a, -e): source and destination rewritten, the real server needs no change; DPVS's -b is accepted with -a and -e",
        FULLNAT,
    ),
    (
        "laddr",
        Some('z'),
        Some("local-address"),
        "local address (-P, -Q): the source the real servers see; without any, the director's own address towards each real",
        FULLNAT,
    ),
    (
        "ifname",
        Some('F'),
        Some("ifname"),
        "interface of the local address (-P; optional, recorded and saved)",
        FULLNAT,
    ),
    (
        "proxy-protocol",
        None,
        Some("disable|v1|v2"),
        "PROXY protocol header sent to the FullNAT reals of the service (-A, -E; default disable; v1 TCP only)",
        FULLNAT,
    ),
    (
        "add-mark",
        None,
        Some("mark"),
        "add a mark rule: --add-mark MARK -t|-u VIP:PORT[,PORT...], the stand-in for an iptables MARK rule",
        UVS,
    ),
    (
        "del-mark",
        None,
        Some("mark"),
        "delete a mark rule: --del-mark MARK -t|-u VIP:PORT[,PORT...]",
        UVS,
    ),
    ("list-marks", None, None, "list the mark rules", UVS),
    (
        "save-marks",
        None,
        None,
        "print the mark rules as --add-mark lines (for -R)",
        UVS,
    ),
    (
        "admin-socket",
        None,
        Some("path"),
        "talk to the director listening on this filesystem socket instead of the abstract @uvs/admin of the current network namespace",
        UVS,
    ),
];

const ABOUT: &str = "ipvsadm's command line for the uvs userspace LVS director";

const LONG_ABOUT: &str = "\
uvsadm takes ipvsadm 1.31's commands and options and prints exactly what ipvsadm prints \
(headers, column widths, sort order, messages and exit codes). Changes are applied live to \
the uvs director of the current network namespace (ip netns exec NS uvsadm -Ln reaches the \
director of NS): root or CAP_NET_ADMIN is needed to change anything, listings are open to \
everyone.

Invoked through a link named ipvsadm it behaves identically; through links named \
ipvsadm-save and ipvsadm-restore it runs -S and -R with its arguments, as ipvsadm's scripts \
of those names do. -R parses every line first and applies all of them or none. Host names \
are resolved on input; without -n, listings print names from /etc/hosts and /etc/services.

FullNAT takes DPVS's commands and options (--fullnat, -P/-Q/-G with -z and -F, \
--proxy-protocol), listed and worded as DPVS's ipvsadm does; -S saves them and -R reads them \
back. DPVS's -b means --fullnat with -a and -e, where ipvsadm never accepts --sched-flags.

Exit status: 0 on success; 2 for a command line ipvsadm's own checks refuse, a feature uvs \
does not support, or no director in the namespace; 255 for a usage error or a change the \
director refuses (where ipvsadm's kernel call would fail); 1 when the director cannot be \
talked to.";

/// The description of `name` (`uvsadm`, or a link name) for man pages and completions.
pub fn command(name: &'static str) -> Command {
    let mut cmd = Command::new(name)
        .about(ABOUT)
        .long_about(LONG_ABOUT)
        .version(super::VERSION_LINE)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .override_usage(
            "uvsadm -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [-b sched-flags] [--proxy-protocol disable|v1|v2]\n       \
             uvsadm -D virtual-service\n       \
             uvsadm -C\n       \
             uvsadm -R\n       \
             uvsadm -S [-n]\n       \
             uvsadm -a|e virtual-service -r server-address [options]\n       \
             uvsadm -d virtual-service -r server-address\n       \
             uvsadm -L|l [virtual-service] [options]\n       \
             uvsadm -Z [virtual-service]\n       \
             uvsadm --set tcp tcpfin udp\n       \
             uvsadm --start-daemon {master|backup} [daemon-options]\n       \
             uvsadm --stop-daemon {master|backup}\n       \
             uvsadm -P|Q virtual-service -z local-address [-F ifname]\n       \
             uvsadm -G [virtual-service]\n       \
             uvsadm --add-mark|--del-mark mark -t|-u vip:port[,port...]\n       \
             uvsadm -h",
        );
    for &(long, short, value, help, heading) in ARGS {
        let mut arg = Arg::new(long).long(long).help(help).help_heading(heading);
        if let Some(c) = short {
            arg = arg.short(c);
        }
        arg = match value {
            Some(v) => arg.value_name(v).action(ArgAction::Set),
            None => arg.action(ArgAction::SetTrue),
        };
        match long {
            "list" => arg = arg.short_alias('l'),
            "persistent" => arg = arg.num_args(0..=1),
            "scheduler" => {
                arg = arg.value_parser(SchedulerKind::ALL.map(|k| k.name()));
            }
            "start-daemon" | "stop-daemon" => arg = arg.value_parser(["master", "backup"]),
            "proxy-protocol" => arg = arg.value_parser(["disable", "v1", "v2"]),
            "tcp-service" | "udp-service" | "real-server" | "admin-socket" => {
                arg = arg.value_hint(if long == "admin-socket" {
                    clap::ValueHint::FilePath
                } else {
                    clap::ValueHint::Hostname
                })
            }
            _ => {}
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every option the parser knows is documented, with the same short letter and the same
    /// need for a value, and nothing else is.
    #[test]
    fn the_description_matches_the_parser() {
        let documented: BTreeSet<(String, Option<char>, bool)> = command("uvsadm")
            .get_arguments()
            .map(|a| {
                (
                    a.get_id().to_string(),
                    a.get_short(),
                    a.get_action().takes_values(),
                )
            })
            .collect();
        let mut parsed: BTreeSet<(String, Option<char>, bool)> = super::super::args::option_table()
            .filter(|(_, short, _)| *short != Some('l'))
            .map(|(long, short, value)| (long.to_string(), short, value))
            .collect();
        for (long, value) in [
            ("add-mark", true),
            ("del-mark", true),
            ("list-marks", false),
            ("save-marks", false),
            ("admin-socket", true),
        ] {
            parsed.insert((long.to_string(), None, value));
        }
        assert_eq!(documented, parsed);
    }

    #[test]
    fn every_scheduler_is_offered() {
        let cmd = command("uvsadm");
        let s = cmd
            .get_arguments()
            .find(|a| a.get_id() == "scheduler")
            .unwrap();
        let offered: Vec<String> = s
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_string())
            .collect();
        assert!(offered.contains(&"wlc".to_string()) && offered.contains(&"mh".to_string()));
        assert_eq!(offered.len(), SchedulerKind::ALL.len());
        command("uvsadm").debug_assert();
    }
}
