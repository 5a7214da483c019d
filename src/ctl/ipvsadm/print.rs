//! ipvsadm 1.31's listings, byte for byte: the `printf` formats of `list_all`,
//! `print_title`, `print_service_entry`, `print_largenum`, `list_conn`/`print_conn` and
//! `list_timeout`, including the trailing spaces the `%-Nu` columns leave. FullNAT adds DPVS's:
//! `FullNat` as the method, ` ppv2` after a service's flags, and `--get-laddr`'s table
//! ([`list_laddrs`]).
//!
//! `-S` of FullNAT: a service's `--proxy-protocol vN` (when not `disable`) at the end of its
//! `-A` line, a real's `--fullnat` in the place of `-g`, then after the service's `-a` lines
//! one `--add-laddr -t VIP:PORT -z LIP [-F IFNAME]` line per local address, in the order they
//! were added (the order the director uses them in). DPVS's own `-S` saves neither PROXY
//! protocol nor local addresses; uvs's lines are ones DPVS's ipvsadm reads too, except that
//! DPVS insists on `-F`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::args::Format;
use super::names::Names;
use crate::ctl::proto::{ConnEntry, RealStatus, ServiceStatus, Status, TimeoutsSecs};
use crate::model::{ForwardMethod, ProxyVersion, TunnelKind};

/// The kernel IPVS version ipvsadm prints (`IP_VS_VERSION_CODE` 1.2.1).
pub const IPVS_VERSION: &str = "1.2.1";

/// ipvsadm's `print_largenum`: decimal K/M/G/T scaling, or the exact value with `--exact`.
pub fn largenum(i: u64, exact: bool) -> String {
    if exact {
        let len = i.to_string().len();
        let width = if len <= 8 { 9 } else { len + 1 };
        return format!("{i:>width$}");
    }
    if i < 100_000_000 {
        format!("{i:>9}")
    } else if i < 1_000_000_000 {
        format!("{:>8}K", i / 1000)
    } else if i < 100_000_000_000 {
        format!("{:>8}M", i / 1_000_000)
    } else if i < 100_000_000_000_000 {
        format!("{:>8}G", i / 1_000_000_000)
    } else {
        format!("{:>8}T", i / 1_000_000_000_000)
    }
}

/// ipvsadm's comparators (`ipvs_cmp_services`, `ipvs_cmp_dests` in libipvs). They subtract
/// host-order addresses into a C `int`, so two IPv4 addresses more than 2^31 apart compare
/// the wrong way round (192.168.79.110 sorts *before* 10.0.0.200). uvsadm reproduces this on
/// purpose: output must be byte-identical to ipvsadm's, and scripts and tutorials diff it.
fn cmp_addr(a: Ipv4Addr, b: Ipv4Addr) -> i32 {
    u32::from(a).wrapping_sub(u32::from(b)) as i32
}

fn cmp_services(a: &ServiceStatus, b: &ServiceStatus) -> i32 {
    // The address family is AF_INET for every service uvs has. The mark difference is a C
    // `int` subtraction of two `u32`s, as in libipvs.
    let r = a.key.fwmark.wrapping_sub(b.key.fwmark) as i32;
    if r != 0 {
        return r;
    }
    let r = i32::from(a.key.proto.number()) - i32::from(b.key.proto.number());
    if r != 0 {
        return r;
    }
    let r = cmp_addr(a.key.vip, b.key.vip);
    if r != 0 {
        return r;
    }
    i32::from(a.key.port) - i32::from(b.key.port)
}

fn cmp_dests(a: &RealStatus, b: &RealStatus) -> i32 {
    let r = cmp_addr(a.addr, b.addr);
    if r != 0 {
        return r;
    }
    i32::from(a.port) - i32::from(b.port)
}

/// glibc's `qsort` (its top-down merge sort, `msort_with_tmp`): with a comparator that is not
/// a total order the result depends on the algorithm, so this is the one ipvsadm runs with.
/// (glibc 2.37 and 2.38 used introsort instead; every other release uses this merge sort.)
/// Rust's `sort_by` may panic on such a comparator, so it must not be used here.
pub fn glibc_msort<T: Clone>(v: &mut [T], cmp: &dyn Fn(&T, &T) -> i32) {
    let n = v.len();
    if n <= 1 {
        return;
    }
    let n1 = n / 2;
    {
        let (b1, b2) = v.split_at_mut(n1);
        glibc_msort(b1, cmp);
        glibc_msort(b2, cmp);
    }
    let mut tmp: Vec<T> = Vec::with_capacity(n);
    let (mut i, mut j) = (0, n1);
    while i < n1 && j < n {
        if cmp(&v[i], &v[j]) <= 0 {
            tmp.push(v[i].clone());
            i += 1;
        } else {
            tmp.push(v[j].clone());
            j += 1;
        }
    }
    tmp.extend_from_slice(&v[i..n1]);
    let done = tmp.len();
    v[..done].clone_from_slice(&tmp);
}

fn fwd_name(f: ForwardMethod) -> &'static str {
    match f {
        ForwardMethod::Route => "Route",
        ForwardMethod::Masq => "Masq",
        ForwardMethod::Tunnel(_) => "Tunnel",
        ForwardMethod::FullNat => "FullNat",
    }
}

fn fwd_switch(f: ForwardMethod) -> &'static str {
    match f {
        ForwardMethod::Route => "-g",
        ForwardMethod::Masq => "-m",
        ForwardMethod::Tunnel(_) => "-i",
        ForwardMethod::FullNat => "--fullnat",
    }
}

/// ipvsadm's `fwd_tun_info`: `ipip`, `gue:PORT:FLAGS`, `gre:FLAGS`; `n/a` for other methods.
fn fwd_tun_info(f: ForwardMethod) -> String {
    match f {
        ForwardMethod::Tunnel(t) => match t.kind {
            TunnelKind::Ipip => t.kind.name().to_string(),
            TunnelKind::Gue => format!("{}:{}:{}", t.kind.name(), t.port, t.csum.short()),
            TunnelKind::Gre => format!("{}:{}", t.kind.name(), t.csum.short()),
        },
        _ => "n/a".to_string(),
    }
}

/// ipvsadm's `print_tunnel_rule` (`-S` of a tunnelling real): the tunnel type, and GUE's port
/// and GUE's and GRE's checksum option, after the weight.
fn tunnel_rule_options(f: ForwardMethod) -> String {
    match f {
        ForwardMethod::Tunnel(t) => match t.kind {
            TunnelKind::Ipip => format!(" --tun-type {}", t.kind.name()),
            TunnelKind::Gue => format!(
                " --tun-type {} --tun-port {} --{}",
                t.kind.name(),
                t.port,
                t.csum.option()
            ),
            TunnelKind::Gre => format!(" --tun-type {} --{}", t.kind.name(), t.csum.option()),
        },
        _ => String::new(),
    }
}

fn truncate(s: &mut String, n: usize) {
    if s.len() > n {
        let mut cut = n;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

fn title(out: &mut String, f: &Format) {
    let p = "Prot LocalAddress:Port";
    if f.stats {
        let _ = writeln!(
            out,
            "{p:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port",
            "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"
        );
    } else if f.rate {
        let _ = writeln!(
            out,
            "{p:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port",
            "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"
        );
    } else if f.thresholds {
        let _ = writeln!(
            out,
            "{p:<33} {:<10} {:<10} {:<10} {:<10}\n  -> RemoteAddress:Port",
            "Uthreshold", "Lthreshold", "ActiveConn", "InActConn"
        );
    } else if f.persistent_conn {
        let _ = writeln!(
            out,
            "{p:<33} {:<9} {:<11} {:<10} {:<10}\n  -> RemoteAddress:Port",
            "Weight", "PersistConn", "ActiveConn", "InActConn"
        );
    } else if f.tun_info {
        out.push_str(
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n",
        );
    } else if !f.rule {
        out.push_str(
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n",
        );
    }
}

fn service_entry(out: &mut String, se: &ServiceStatus, f: &Format, names: &Names) {
    let proto = se.key.proto;
    let vname = names.addrport(se.key.vip, se.key.port, proto, f.numeric);
    let svc_name = if se.key.is_fwmark() {
        if f.rule {
            format!("-f {}", se.key.fwmark)
        } else {
            format!("FWM  {}", se.key.fwmark)
        }
    } else if f.rule {
        let opt = match proto {
            crate::model::Protocol::Tcp => "-t",
            crate::model::Protocol::Udp => "-u",
        };
        format!("{opt} {vname}")
    } else {
        let mut s = format!("{:<4} {vname}", proto.ipvsadm_name());
        truncate(&mut s, 33);
        s
    };
    let ex = f.exact;
    if f.rule {
        let _ = write!(out, "-A {svc_name} -s {}", se.scheduler.name());
        if let Some(t) = se.persistence_timeout {
            let _ = write!(out, " -p {t}");
            if se.persistence_netmask != Ipv4Addr::BROADCAST {
                let _ = write!(out, " -M {}", se.persistence_netmask);
            }
        }
        if se.ops {
            out.push_str(" -o");
        }
        if !se.sched_flags.is_empty() {
            let _ = write!(out, " -b {}", se.sched_flags);
        }
        if se.proxy_protocol != ProxyVersion::Off {
            let _ = write!(out, " --proxy-protocol {}", se.proxy_protocol.name());
        }
    } else if f.stats || f.rate {
        let s = if f.stats { &se.stats } else { &se.rates };
        let _ = write!(out, "{svc_name:<33}");
        for v in [s.conns, s.in_pkts, s.out_pkts, s.in_bytes, s.out_bytes] {
            out.push_str(&largenum(v, ex));
        }
    } else {
        let _ = write!(out, "{svc_name} {}", se.scheduler.name());
        if !se.sched_flags.is_empty() {
            let _ = write!(out, " ({})", se.sched_flags);
        }
        if let Some(t) = se.persistence_timeout {
            let _ = write!(out, " persistent {t}");
            if se.persistence_netmask != Ipv4Addr::BROADCAST {
                let _ = write!(out, " mask {}", se.persistence_netmask);
            }
        }
        if se.ops {
            out.push_str(" ops");
        }
        // DPVS's `printf(" pp%s", proxy_protocol_str(...))`.
        if se.proxy_protocol != ProxyVersion::Off {
            let _ = write!(out, " pp{}", se.proxy_protocol.name());
        }
    }
    out.push('\n');

    let mut dests = se.reals.clone();
    if !f.nosort {
        glibc_msort(&mut dests, &cmp_dests);
    }
    for e in &dests {
        let mut dname = names.addrport(e.addr, e.port, proto, f.numeric);
        if !f.rule {
            truncate(&mut dname, 28);
        }
        if f.rule {
            let _ = writeln!(
                out,
                "-a {svc_name} -r {dname} {} -w {}{}",
                fwd_switch(e.forward),
                e.weight,
                tunnel_rule_options(e.forward)
            );
        } else if f.stats {
            let s = &e.stats;
            let _ = write!(out, "  -> {dname:<28}");
            for v in [s.conns, s.in_pkts, s.out_pkts, s.in_bytes, s.out_bytes] {
                out.push_str(&largenum(v, ex));
            }
            out.push('\n');
        } else if f.rate {
            let s = &e.rates;
            let _ = write!(
                out,
                "  -> {dname:<28} {:>8} {:>8} {:>8}",
                s.conns, s.in_pkts, s.out_pkts
            );
            out.push_str(&largenum(s.in_bytes, ex));
            out.push_str(&largenum(s.out_bytes, ex));
            out.push('\n');
        } else if f.thresholds {
            let _ = writeln!(
                out,
                "  -> {dname:<28} {:<10} {:<10} {:<10} {:<10}",
                e.upper_threshold, e.lower_threshold, e.active, e.inactive
            );
        } else if f.persistent_conn {
            let _ = writeln!(
                out,
                "  -> {dname:<28} {:<9} {:<11} {:<10} {:<10}",
                e.weight, e.persistent, e.active, e.inactive
            );
        } else if f.tun_info {
            let _ = writeln!(
                out,
                "  -> {dname:<28} {:<7} {:<13} {:<6} {:<10} {:<10}",
                fwd_name(e.forward),
                fwd_tun_info(e.forward),
                e.weight,
                e.active,
                e.inactive
            );
        } else {
            let _ = writeln!(
                out,
                "  -> {dname:<28} {:<7} {:<6} {:<10} {:<10}",
                fwd_name(e.forward),
                e.weight,
                e.active,
                e.inactive
            );
        }
    }
    if f.rule {
        for l in &se.local_addrs {
            let _ = write!(out, "--add-laddr {svc_name} -z {}", l.addr);
            if let Some(i) = &l.interface {
                let _ = write!(out, " -F {i}");
            }
            out.push('\n');
        }
    }
}

/// `-L`/`-S` of everything (`list_all`).
pub fn list_all(status: &Status, f: &Format, names: &Names) -> String {
    let mut out = String::new();
    if !f.rule {
        let _ = writeln!(
            out,
            "IP Virtual Server version {IPVS_VERSION} (size={})",
            status.conn_tab_size
        );
    }
    let mut services = status.services.clone();
    if !f.nosort {
        glibc_msort(&mut services, &cmp_services);
    }
    title(&mut out, f);
    for s in &services {
        service_entry(&mut out, s, f, names);
    }
    out
}

/// `-L -t|-u SERVICE` (`list_service`: no version header).
pub fn list_service(service: &ServiceStatus, f: &Format, names: &Names) -> String {
    let mut out = String::new();
    title(&mut out, f);
    service_entry(&mut out, service, f, names);
    out
}

/// DPVS's `--get-laddr` (`list_laddrs`/`list_all_laddrs`): its title once, then per service
/// a line with the number of local addresses (DPVS's `"%-20s %-8u \n"`, a blank before the
/// newline) and one line per address (`"%-20s %-8s %-20s %-10lu %-10u\n"`). Always numeric, as
/// DPVS prints it. `only` = the one service of `-G -t|-u|-f`; otherwise every service, in
/// `-L`'s order (DPVS lists them unsorted), and nothing at all without a service.
pub fn list_laddrs(status: &Status, only: Option<&ServiceStatus>) -> String {
    let mut out = String::new();
    let mut services: Vec<ServiceStatus> = match only {
        Some(s) => vec![s.clone()],
        None => status.services.clone(),
    };
    glibc_msort(&mut services, &cmp_services);
    for (i, s) in services.iter().enumerate() {
        if i == 0 {
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:<20} {:<10} {:<10}",
                "VIP:VPORT", "TOTAL", "SNAT_IP", "CONFLICTS", "CONNS"
            );
        }
        let name = if s.key.is_fwmark() {
            format!("FWM  {}", s.key.fwmark)
        } else {
            format!("{}:{}", s.key.vip, s.key.port)
        };
        let _ = writeln!(out, "{name:<20} {:<8} ", s.local_addrs.len());
        for l in &s.local_addrs {
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:<20} {:<10} {:<10}",
                "",
                "",
                l.addr.to_string(),
                l.conflicts,
                l.conns
            );
        }
    }
    out
}

/// `uvsadm --list-marks` (uvs only: mark rules stand in for iptables MARK rules).
pub fn list_marks(rules: &[crate::model::MarkRule]) -> String {
    let mut out = format!(
        "{:<5} {:<4} {:<15} Ports\n",
        "Mark", "Prot", "VirtualAddress"
    );
    for r in rules {
        let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
        let _ = writeln!(
            out,
            "{:<5} {:<4} {:<15} {}",
            r.mark,
            r.proto.ipvsadm_name(),
            r.vip.to_string(),
            ports.join(",")
        );
    }
    out
}

/// `uvsadm --save-marks`: one `--add-mark` line per rule, readable by `uvsadm -R`.
pub fn save_marks(rules: &[crate::model::MarkRule]) -> String {
    rules.iter().map(|r| format!("{r}\n")).collect()
}

/// `-L --timeout`.
pub fn list_timeout(t: &TimeoutsSecs) -> String {
    format!(
        "Timeout (tcp tcpfin udp): {} {} {}\n",
        t.tcp, t.tcpfin, t.udp
    )
}

/// `-Lc` (`list_conn`): entries in the order the director reports them, as ipvsadm prints
/// `/proc/net/ip_vs_conn` unsorted.
pub fn list_conns(conns: &[ConnEntry], f: &Format, names: &Names) -> String {
    let mut out = String::from("IPVS connection entries\n");
    if f.persistent_conn {
        let _ = writeln!(
            out,
            "pro expire {:<11} {:<18} {:<18} {:<18} {:<16} pe_data",
            "state", "source", "virtual", "destination", "pe name"
        );
    } else {
        let _ = writeln!(
            out,
            "pro expire {:<11} {:<18} {:<18} destination",
            "state", "source", "virtual"
        );
    }
    for c in conns {
        let name = |(a, p): (Ipv4Addr, u16)| names.addrport(a, p, c.proto, f.numeric);
        let expire = format!("{:02}:{:02}", c.expires / 60, c.expires % 60);
        let proto = if c.fwmark_template {
            "IP"
        } else {
            c.proto.ipvsadm_name()
        };
        let _ = writeln!(
            out,
            "{:<3} {:<6} {:<11} {:<18} {:<18} {}",
            proto,
            expire,
            c.state,
            name(c.client),
            name(c.virt),
            name(c.dest)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largenum_scales_like_ipvsadm() {
        assert_eq!(largenum(0, false), "        0");
        assert_eq!(largenum(99_999_999, false), " 99999999");
        assert_eq!(largenum(100_000_000, false), "  100000K");
        assert_eq!(largenum(1_000_000_000, false), "    1000M");
        assert_eq!(largenum(123_000_000_000, false), "     123G");
        assert_eq!(largenum(100_000_000_000_000, false), "     100T");
        assert_eq!(largenum(5, true), "        5");
        assert_eq!(largenum(1_234_567_890, true), " 1234567890");
    }

    #[test]
    fn sort_quirk_puts_192_168_before_10() {
        let a = Ipv4Addr::new(192, 168, 79, 110);
        let b = Ipv4Addr::new(10, 0, 0, 200);
        assert!(cmp_addr(a, b) < 0);
        let mut v = vec![b, a];
        glibc_msort(&mut v, &|x: &Ipv4Addr, y: &Ipv4Addr| cmp_addr(*x, *y));
        assert_eq!(v, vec![a, b]);
    }

    #[test]
    fn msort_sorts_and_is_stable() {
        let mut v: Vec<(u8, u8)> = vec![(3, 0), (1, 0), (2, 0), (1, 1), (0, 0), (3, 1)];
        glibc_msort(&mut v, &|a: &(u8, u8), b: &(u8, u8)| {
            i32::from(a.0) - i32::from(b.0)
        });
        assert_eq!(v, vec![(0, 0), (1, 0), (1, 1), (2, 0), (3, 0), (3, 1)]);
    }
}

#[cfg(test)]
mod fwmark_tests {
    use super::*;

    #[test]
    fn a_fwmark_template_is_listed_with_protocol_ip() {
        let c = ConnEntry {
            proto: crate::model::Protocol::Tcp,
            expires: 252,
            state: "NONE".into(),
            client: (Ipv4Addr::new(10, 0, 0, 5), 0),
            virt: (Ipv4Addr::new(0, 0, 0, 1), 0),
            dest: (Ipv4Addr::new(192, 168, 10, 11), 0),
            fwmark_template: true,
        };
        let f = Format {
            numeric: true,
            ..Format::default()
        };
        assert_eq!(
            list_conns(&[c], &f, &Names::none()),
            "IPVS connection entries\npro expire state       source             virtual            destination\nIP  04:12  NONE        10.0.0.5:0         0.0.0.1:0          192.168.10.11:0\n"
        );
    }
}
