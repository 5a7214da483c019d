//! uvsadm's mark-rule commands: not in ipvsadm, so uvs-specific long options.
//!
//! A packet socket never sees the kernel's firewall mark, so the tutorials'
//! `iptables -t mangle -A PREROUTING -d VIP -p tcp -m multiport --dports 80,443 -j MARK
//! --set-mark 1` becomes `uvsadm --add-mark 1 -t VIP:80,443`; `-A -f 1` then works as in IPVS.
//!
//! - `--add-mark MARK -t|-u VIP:PORT[,PORT…]`: add a rule (an identical rule is a no-op).
//! - `--del-mark MARK -t|-u VIP:PORT[,PORT…]`: delete the rule with that mark, VIP and ports.
//! - `--list-marks`: a table of the rules. `--save-marks`: one `--add-mark` line per rule,
//!   which `uvsadm -R` (and a rules file) accepts. `-S` never prints mark rules: its output
//!   must stay loadable by real ipvsadm.

use std::net::Ipv4Addr;

use super::args::{ArgError, EXIT_FAIL, ErrorKind};
use super::names::Names;
use crate::ctl::proto::Change;
use crate::model::{MarkRule, Protocol};

/// What a mark command asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MarkCommand {
    Change(Change),
    List,
    Save,
}

fn fail(message: impl Into<String>) -> ArgError {
    ArgError {
        message: message.into(),
        exit: EXIT_FAIL,
        kind: ErrorKind::Ipvsadm,
    }
}

/// Whether `word` (the first argument) starts a mark command.
pub fn is_mark_command(word: &str) -> bool {
    let name = word.split('=').next().unwrap_or(word);
    matches!(
        name,
        "--add-mark" | "--del-mark" | "--list-marks" | "--save-marks"
    )
}

/// Parses `args` (without the program name); `None` if the first word is not a mark command.
pub fn parse(args: &[String], names: &Names) -> Option<Result<MarkCommand, ArgError>> {
    let first = args.first()?;
    if !is_mark_command(first) {
        return None;
    }
    Some(parse_inner(args, names))
}

fn parse_inner(args: &[String], names: &Names) -> Result<MarkCommand, ArgError> {
    let mut it = args.iter().map(String::as_str);
    let first = it.next().unwrap_or("");
    let (cmd, attached) = match first.split_once('=') {
        Some((c, v)) => (c, Some(v)),
        None => (first, None),
    };
    if matches!(cmd, "--list-marks" | "--save-marks") {
        if attached.is_some() {
            return Err(fail(format!("{cmd} takes no value")));
        }
        if let Some(extra) = it.next() {
            // `-n` is accepted (addresses are always numeric here).
            if extra != "-n" && extra != "--numeric" || it.next().is_some() {
                return Err(fail(format!("unexpected argument {extra}")));
            }
        }
        return Ok(if cmd == "--list-marks" {
            MarkCommand::List
        } else {
            MarkCommand::Save
        });
    }
    let mark_text = match attached {
        Some(v) => v,
        None => it
            .next()
            .ok_or_else(|| fail(format!("{cmd} needs a mark")))?,
    };
    let mark = match mark_text.parse::<u32>() {
        Ok(n) if n > 0 => n,
        _ => {
            return Err(fail(format!(
                "invalid fwmark value `{mark_text}' specified"
            )));
        }
    };
    let mut target: Option<(Protocol, &str)> = None;
    while let Some(word) = it.next() {
        let (opt, value) = match word.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o, Some(v)),
            _ => (word, None),
        };
        let proto = match opt {
            "-t" | "--tcp-service" => Protocol::Tcp,
            "-u" | "--udp-service" => Protocol::Udp,
            _ if opt.starts_with("-t") && opt.len() > 2 => {
                set(&mut target, Protocol::Tcp, &word[2..])?;
                continue;
            }
            _ if opt.starts_with("-u") && opt.len() > 2 => {
                set(&mut target, Protocol::Udp, &word[2..])?;
                continue;
            }
            _ => return Err(fail(format!("invalid option `{word}' for {cmd}"))),
        };
        let value = match value {
            Some(v) => v,
            None => it
                .next()
                .ok_or_else(|| fail(format!("{opt} needs VIP:PORT[,PORT...]")))?,
        };
        set(&mut target, proto, value)?;
    }
    let (proto, text) =
        target.ok_or_else(|| fail(format!("{cmd} needs -t or -u VIP:PORT[,PORT...]")))?;
    let rule = parse_rule(mark, proto, text, names)?;
    Ok(MarkCommand::Change(if cmd == "--add-mark" {
        Change::AddMarkRule(rule)
    } else {
        Change::DeleteMarkRule(rule)
    }))
}

fn set<'a>(
    target: &mut Option<(Protocol, &'a str)>,
    proto: Protocol,
    value: &'a str,
) -> Result<(), ArgError> {
    if target.is_some() {
        return Err(fail("multiple '-t'/'-u' options specified"));
    }
    *target = Some((proto, value));
    Ok(())
}

fn parse_rule(mark: u32, proto: Protocol, text: &str, names: &Names) -> Result<MarkRule, ArgError> {
    let bad = || {
        fail(format!(
            "illegal mark rule address `{text}' (expected VIP:PORT[,PORT...])"
        ))
    };
    let (addr, ports) = text.rsplit_once(':').ok_or_else(bad)?;
    let vip = match addr.parse::<Ipv4Addr>() {
        Ok(a) => a,
        Err(_) => names.host_addr(addr).ok_or_else(bad)?,
    };
    let mut list = Vec::new();
    for p in ports.split(',') {
        let port = match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            Ok(_) => return Err(bad()),
            Err(_) => names.port_by_name(p, proto).ok_or_else(bad)?,
        };
        if !list.contains(&port) {
            list.push(port);
        }
    }
    Ok(MarkRule {
        proto,
        vip,
        ports: list,
        mark,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<Result<MarkCommand, ArgError>> {
        let v: Vec<String> = s.split_whitespace().map(str::to_string).collect();
        parse(&v, &Names::none())
    }

    #[test]
    fn mark_commands_parse_and_display_round_trips() {
        let rule = MarkRule {
            proto: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 0, 0, 100),
            ports: vec![80, 443],
            mark: 1,
        };
        let add = MarkCommand::Change(Change::AddMarkRule(rule.clone()));
        assert_eq!(
            p("--add-mark 1 -t 10.0.0.100:80,443"),
            Some(Ok(add.clone()))
        );
        assert_eq!(
            p("--add-mark=1 --tcp-service=10.0.0.100:80,443,80"),
            Some(Ok(add.clone()))
        );
        assert_eq!(p(&rule.to_string()), Some(Ok(add)));
        assert_eq!(
            p("--del-mark 1 -t10.0.0.100:80,443"),
            Some(Ok(MarkCommand::Change(Change::DeleteMarkRule(rule))))
        );
        assert_eq!(p("--list-marks -n"), Some(Ok(MarkCommand::List)));
        assert_eq!(p("--save-marks"), Some(Ok(MarkCommand::Save)));
        assert_eq!(p("-A -f 1"), None);
        for bad in [
            "--add-mark 0 -t 10.0.0.100:80",
            "--add-mark 1 -t 10.0.0.100",
            "--add-mark 1 -t 10.0.0.100:0",
            "--add-mark 1",
            "--add-mark 1 -t 10.0.0.100:80 -u 10.0.0.100:53",
            "--add-mark 1 -r 10.0.0.1:80",
        ] {
            assert!(matches!(p(bad), Some(Err(_))), "{bad}");
        }
    }
}
