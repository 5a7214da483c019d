//! `uvsadm`: ipvsadm's command line and output, talking to a uvs director.
//!
//! - [`args`]: ipvsadm's argument syntax (popt semantics), its checks, messages and exit codes.
//! - [`print`]: ipvsadm 1.31's listing formats, byte for byte.
//! - [`names`]: port and host names.
//! - [`doc`]: the same command line described for the manual page and shell completions.
//! - [`run`]: the whole program, in-process (the `uvsadm` binary is a thin wrapper), so tests
//!   drive exactly what users run.
//!
//! `-R` is transactional in uvs: all lines are parsed first (a bad line names its number and
//! nothing is sent), then one request applies all of them or none.

pub mod args;
pub mod doc;
pub mod marks;
pub mod names;
pub mod print;

use std::io::{self, Read, Write};

use args::{ArgError, Command, Format, ListWhat};
use names::Names;

use super::backend::{Backend, BackendError};
use super::proto::{Change, Reply, Request, Status};

/// What `--version` prints: ipvsadm's own line, so scripts that parse it keep working.
pub const VERSION_LINE: &str = "ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)";

/// Runs one `uvsadm`/`ipvsadm` invocation: `argv[0]` is the program name as invoked (used in
/// messages, as ipvsadm does). Returns the exit status.
pub fn run(
    argv: &[String],
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    backend: &mut dyn Backend,
) -> i32 {
    run_with_names(argv, stdin, stdout, stderr, backend, &Names::system())
}

/// [`run`] with explicit name tables (tests use [`Names::none`] or their own).
pub fn run_with_names(
    argv: &[String],
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    backend: &mut dyn Backend,
    names: &Names,
) -> i32 {
    let argv = &as_invoked(argv);
    let program = argv.first().map(String::as_str).unwrap_or("ipvsadm");
    let mut out = String::new();
    let mut err = String::new();
    let code = execute(argv, stdin, &mut out, &mut err, backend, names, program);
    // `uvsadm -Ln | head`: a closed pipe is not an error.
    let ok = |r: io::Result<()>| match r {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::BrokenPipe,
    };
    let wrote_out = ok(stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush()));
    let _ = stderr.write_all(err.as_bytes());
    let _ = stderr.flush();
    if !wrote_out {
        return 1;
    }
    code
}

/// ipvsadm's own wrapper scripts: `ipvsadm-save` runs `ipvsadm -S` and `ipvsadm-restore`
/// `ipvsadm -R`, passing their arguments on (`ipvsadm-save -n`). uvsadm invoked under either
/// name does the same, so the links a package installs behave as the scripts.
pub fn as_invoked(argv: &[String]) -> Vec<String> {
    let name = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a.as_str()));
    let command = match name {
        Some("ipvsadm-save") => "-S",
        Some("ipvsadm-restore") => "-R",
        _ => return argv.to_vec(),
    };
    let mut out = vec!["ipvsadm".to_string(), command.to_string()];
    out.extend(argv.iter().skip(1).cloned());
    out
}

fn execute(
    argv: &[String],
    stdin: &mut dyn Read,
    out: &mut String,
    err: &mut String,
    backend: &mut dyn Backend,
    names: &Names,
    program: &str,
) -> i32 {
    // uvs's mark-rule commands (not in ipvsadm).
    if let Some(m) = marks::parse(argv.get(1..).unwrap_or_default(), names) {
        return execute_marks(m, out, err, backend, program);
    }
    // ipvsadm without arguments lists the table.
    let command = if argv.len() <= 1 {
        Command::List(ListWhat::All, Format::default())
    } else {
        match args::parse(argv, names) {
            Ok(c) => c,
            Err(e) => {
                err.push_str(&e.message);
                err.push('\n');
                return e.exit;
            }
        }
    };
    let mut call = |req: &Request, err: &mut String| -> Result<Reply, i32> {
        backend.call(req).map_err(|e| {
            err.push_str(&format!("{program}: {e}\n"));
            match e {
                BackendError::NoDaemon(_) => 2,
                _ => 1,
            }
        })
    };
    let status = |call: &mut dyn FnMut(&Request, &mut String) -> Result<Reply, i32>,
                  err: &mut String|
     -> Result<Status, i32> {
        match call(&Request::Status, err)? {
            Reply::Status(s) => Ok(s),
            other => Err(unexpected(other, err)),
        }
    };

    match command {
        Command::Help => {
            out.push_str(&usage(program));
            0
        }
        Command::Version => {
            out.push_str(VERSION_LINE);
            out.push('\n');
            0
        }
        // the sync daemon lines, as ipvsadm prints them.
        Command::List(ListWhat::Daemon, _) => match call(&Request::Ha, err) {
            Ok(Reply::Ha(h)) => {
                out.push_str(&h.daemon_listing);
                0
            }
            Ok(other) => unexpected(other, err),
            Err(code) => code,
        },
        // ipvsadm prints the kernel's refusal ("Daemon has already run", "No
        // daemon is running", "No such device") and exits 255.
        Command::Daemon(d) => match call(&Request::SyncDaemon(d), err) {
            Ok(Reply::Done) => 0,
            Ok(Reply::Refused(r)) => {
                err.push_str(&r.message);
                err.push('\n');
                r.exit_code
            }
            Ok(other) => unexpected(other, err),
            Err(code) => code,
        },
        Command::List(ListWhat::Connections, f) => match call(&Request::Connections, err) {
            Ok(Reply::Connections(c)) => {
                out.push_str(&print::list_conns(&c, &f, names));
                0
            }
            Ok(other) => unexpected(other, err),
            Err(code) => code,
        },
        Command::List(what, f) => {
            let s = match status(&mut call, err) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match what {
                ListWhat::Timeout => out.push_str(&print::list_timeout(&s.timeouts)),
                ListWhat::Service(key) => match s.services.iter().find(|x| x.key == key) {
                    Some(svc) => out.push_str(&print::list_service(svc, &f, names)),
                    None => {
                        err.push_str("No such service\n");
                        return 1;
                    }
                },
                _ => out.push_str(&print::list_all(&s, &f, names)),
            }
            0
        }
        // DPVS's `--get-laddr`: "Service not defined" and exit 1 for a service that is not
        // there, as DPVS's libipvs words its refusal and `list_laddrs` exits.
        Command::GetLaddr(key) => {
            let s = match status(&mut call, err) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let only = match key {
                None => None,
                Some(k) => match s.services.iter().find(|x| x.key == k) {
                    Some(svc) => Some(svc),
                    None => {
                        err.push_str("Service not defined\n");
                        return 1;
                    }
                },
            };
            out.push_str(&print::list_laddrs(&s, only));
            0
        }
        Command::Save(f) => match status(&mut call, err) {
            Ok(s) => {
                out.push_str(&print::list_all(&s, &f, names));
                0
            }
            Err(code) => code,
        },
        Command::Zero(key) => match call(&Request::Zero(key), err) {
            Ok(Reply::Done) => 0,
            Ok(Reply::Refused(r)) => {
                let msg = if r.message == "Service not defined" {
                    "No such service".to_string()
                } else {
                    r.message
                };
                err.push_str(&msg);
                err.push('\n');
                r.exit_code
            }
            Ok(other) => unexpected(other, err),
            Err(code) => code,
        },
        Command::Restore => {
            let mut text = String::new();
            if let Err(e) = stdin.read_to_string(&mut text) {
                err.push_str(&format!("{program}: reading the rules from stdin: {e}\n"));
                return 1;
            }
            let changes = match changes_from_text(&text, names, program) {
                Ok(c) => c,
                Err(e) => {
                    err.push_str(&format!("line {}: {}\n", e.line, e.render()));
                    return e.exit();
                }
            };
            let list: Vec<Change> = changes.iter().map(|c| c.change.clone()).collect();
            if list.is_empty() {
                return 0;
            }
            match call(&Request::Apply(list), err) {
                Ok(Reply::Done) => 0,
                Ok(Reply::Refused(r)) => {
                    match r.change.and_then(|i| changes.get(i)) {
                        Some(c) => err.push_str(&format!(
                            "line {}: {}\n",
                            c.line,
                            refusal_text(&c.change, &r.message)
                        )),
                        None => err.push_str(&format!("{}\n", r.message)),
                    }
                    r.exit_code
                }
                Ok(other) => unexpected(other, err),
                Err(code) => code,
            }
        }
        command => {
            // One change command.
            let change = match command.to_change() {
                Ok(Some(c)) => c,
                Ok(None) => return 0,
                Err(e) => {
                    err.push_str(&e.message);
                    err.push('\n');
                    return e.exit;
                }
            };
            match call(&Request::Apply(vec![change.clone()]), err) {
                Ok(Reply::Done) => 0,
                Ok(Reply::Refused(r)) => {
                    err.push_str(&refusal_text(&change, &r.message));
                    err.push('\n');
                    r.exit_code
                }
                Ok(other) => unexpected(other, err),
                Err(code) => code,
            }
        }
    }
}

fn execute_marks(
    m: Result<marks::MarkCommand, ArgError>,
    out: &mut String,
    err: &mut String,
    backend: &mut dyn Backend,
    program: &str,
) -> i32 {
    let m = match m {
        Ok(m) => m,
        Err(e) => {
            err.push_str(&e.message);
            err.push('\n');
            return e.exit;
        }
    };
    let request = match &m {
        marks::MarkCommand::Change(c) => Request::Apply(vec![c.clone()]),
        _ => Request::Status,
    };
    match backend.call(&request) {
        Err(e) => {
            err.push_str(&format!("{program}: {e}\n"));
            match e {
                BackendError::NoDaemon(_) => 2,
                _ => 1,
            }
        }
        Ok(Reply::Done) => 0,
        Ok(Reply::Refused(r)) => {
            err.push_str(&r.message);
            err.push('\n');
            r.exit_code
        }
        Ok(Reply::Status(s)) => {
            out.push_str(&match m {
                marks::MarkCommand::Save => print::save_marks(&s.mark_rules),
                _ => print::list_marks(&s.mark_rules),
            });
            0
        }
        Ok(other) => unexpected(other, err),
    }
}

fn unexpected(reply: Reply, err: &mut String) -> i32 {
    err.push_str(&format!(
        "unexpected reply from the uvs director: {reply:?}\n"
    ));
    1
}

/// A refusal as ipvsadm words it (its `ipvs_strerror` table says "No such service" for
/// `-E`/`-D` and "Service not defined" for the real-server commands).
pub fn refusal_text(change: &Change, message: &str) -> String {
    match (change, message) {
        (Change::EditService(_) | Change::DeleteService(_), "Service not defined") => {
            "No such service".to_string()
        }
        _ => message.to_string(),
    }
}

/// One change of a `-R` input or rules file, with its line number (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineChange {
    pub line: usize,
    pub change: Change,
}

/// Why a line of a `-R` input or rules file was refused before anything was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub error: LineErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineErrorKind {
    Parse(ArgError),
    /// A listing or other non-change command (its first word).
    NotAChange(String),
}

impl LineError {
    /// The message without the line number, in ipvsadm's words where it has them.
    pub fn render(&self) -> String {
        match &self.error {
            LineErrorKind::Parse(e) => e.message.trim_end().to_string(),
            LineErrorKind::NotAChange(word) => format!(
                "'{word}' cannot be used here: -R input and rules files take only -A, -E, -D, -a, -e, -d, -C, --set, --add-laddr, --del-laddr, --add-mark and --del-mark"
            ),
        }
    }

    pub fn exit(&self) -> i32 {
        match &self.error {
            LineErrorKind::Parse(e) => e.exit,
            LineErrorKind::NotAChange(_) => args::EXIT_FAIL,
        }
    }
}

/// Splits one line as ipvsadm's `config_stream_read` does: whitespace-separated words, the
/// word `ipvsadm` dropped, everything from a word starting with `#` ignored.
pub fn line_words(line: &str) -> Vec<&str> {
    let mut words: Vec<&str> = line
        .split_whitespace()
        .take_while(|t| !t.starts_with('#'))
        .collect();
    if words
        .first()
        .is_some_and(|t| *t == "ipvsadm" || t.ends_with("/ipvsadm"))
    {
        words.remove(0);
    }
    words
}

/// Parses every line of `text` into changes, before any is applied.
pub fn changes_from_text(
    text: &str,
    names: &Names,
    program: &str,
) -> Result<Vec<LineChange>, LineError> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index.saturating_add(1);
        let words = line_words(line);
        if words.is_empty() {
            continue;
        }
        let mut argv = vec![program.to_string()];
        argv.extend(words.iter().map(|s| s.to_string()));
        let fail = |error| LineError {
            line: number,
            error,
        };
        // `--add-mark`/`--del-mark` lines (what `--save-marks` prints) are changes too.
        if let Some(m) = marks::parse(&argv[1..], names) {
            match m.map_err(|e| fail(LineErrorKind::Parse(e)))? {
                marks::MarkCommand::Change(change) => {
                    out.push(LineChange {
                        line: number,
                        change,
                    });
                    continue;
                }
                _ => return Err(fail(LineErrorKind::NotAChange(words[0].to_string()))),
            }
        }
        let command = args::parse(&argv, names).map_err(|e| fail(LineErrorKind::Parse(e)))?;
        if !command.is_change() {
            return Err(fail(LineErrorKind::NotAChange(words[0].to_string())));
        }
        let change = match command.to_change() {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => return Err(fail(LineErrorKind::Parse(e))),
        };
        out.push(LineChange {
            line: number,
            change,
        });
    }
    Ok(out)
}

/// ipvsadm's `-h` text (`usage_exit`), with `program` as invoked.
pub fn usage(program: &str) -> String {
    let p = program;
    let mut s = format!("{VERSION_LINE}\nUsage:\n");
    for tail in [
        "-A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [--pe persistence_engine] [-b sched-flags]",
        "-D virtual-service",
        "-C",
        "-R",
        "-S [-n]",
        "-a|e virtual-service -r server-address [options]",
        "-d virtual-service -r server-address",
        "-L|l [virtual-service] [options]",
        "-Z [virtual-service]",
        "--set tcp tcpfin udp",
        "--start-daemon {master|backup} [daemon-options]",
        "--stop-daemon {master|backup}",
        "-h",
    ] {
        s.push_str(&format!("  {p} {tail}\n"));
    }
    s.push('\n');
    s.push_str(USAGE_BODY);
    s
}

const USAGE_BODY: &str = "Commands:
Either long or short options are allowed.
  --add-service     -A        add virtual service with options
  --edit-service    -E        edit virtual service with options
  --delete-service  -D        delete virtual service
  --clear           -C        clear the whole table
  --restore         -R        restore rules from stdin
  --save            -S        save rules to stdout
  --add-server      -a        add real server with options
  --edit-server     -e        edit real server with options
  --delete-server   -d        delete real server
  --list            -L|-l     list the table
  --zero            -Z        zero counters in a service or all services
  --set tcp tcpfin udp        set connection timeout values
  --start-daemon              start connection sync daemon
  --stop-daemon               stop connection sync daemon
  --help            -h        display this help message

virtual-service:
  --tcp-service|-t  service-address   service-address is host[:port]
  --udp-service|-u  service-address   service-address is host[:port]
  --sctp-service    service-address   service-address is host[:port]
  --fwmark-service|-f fwmark          fwmark is an integer greater than zero

Options:
  --ipv6         -6                   fwmark entry uses IPv6
  --scheduler    -s scheduler         one of rr|wrr|lc|wlc|lblc|lblcr|dh|sh|sed|nq|fo|ovf|mh,
                                      the default scheduler is wlc.
  --pe            engine              alternate persistence engine may be sip,
                                      not set by default.
  --persistent   -p [timeout]         persistent service
  --netmask      -M netmask           persistent granularity mask
  --real-server  -r server-address    server-address is host (and port)
  --gatewaying   -g                   gatewaying (direct routing) (default)
  --ipip         -i                   ipip encapsulation (tunneling)
  --masquerading -m                   masquerading (NAT)
  --tun-type      type                one of ipip|gue,
                                      the default tunnel type is ipip.
  --tun-port      port                tunnel destination port
  --tun-nocsum                        tunnel encapsulation without checksum
  --tun-csum                          tunnel encapsulation with checksum
  --tun-remcsum                       tunnel encapsulation with remote checksum
  --weight       -w weight            capacity of real server
  --u-threshold  -x uthreshold        upper threshold of connections
  --l-threshold  -y lthreshold        lower threshold of connections
  --connection   -c                   output of current IPVS connections
  --timeout                           output of timeout (tcp tcpfin udp)
  --daemon                            output of daemon information
  --stats                             output of statistics information
  --rate                              output of rate information
  --exact                             expand numbers (display exact values)
  --thresholds                        output of thresholds information
  --persistent-conn                   output of persistent connection info
  --tun-info                          output of tunnel information
  --nosort                            disable sorting output of service/server entries
  --sort                              does nothing, for backwards compatibility
  --ops          -o                   one-packet scheduling
  --numeric      -n                   numeric output of addresses and ports
  --sched-flags  -b flags             scheduler flags (comma-separated)
Daemon Options:
  --syncid sid                        syncid for connection sync (default=255)
  --sync-maxlen length                Max sync message length (default=1472)
  --mcast-interface interface         multicast interface for connection sync
  --mcast-group address               IPv4/IPv6 group (default=224.0.0.81)
  --mcast-port port                   UDP port (default=8848)
  --mcast-ttl ttl                     Multicast TTL (default=1)

FullNAT (DPVS's commands and options):
  --add-laddr  -P virtual-service -z local-address [-F ifname]   add a local address
  --del-laddr  -Q virtual-service -z local-address               delete a local address
  --get-laddr  -G [virtual-service]                              list local addresses
  --fullnat                           FullNAT forwarding (-a|-e; DPVS's -b there too)
  --laddr        -z local-address     local address the reals see the requests come from
  --ifname       -F ifname            interface of the local address
  --proxy-protocol disable|v1|v2      PROXY protocol header for FullNAT reals (-A|-E)

uvs mark rules (stand-ins for iptables MARK rules, for -f services):
  --add-mark mark -t|-u vip:port[,port...]   add a mark rule
  --del-mark mark -t|-u vip:port[,port...]   delete a mark rule
  --list-marks                               list the mark rules
  --save-marks                               print them as --add-mark lines (for -R)
";
