//! `uvs run --takeover`: the new process's side of a restart or upgrade that breaks no
//! connection. uvs's connection table lives in the process, so the running director hands it
//! over: asked with [`Request::Handover`], it stops receiving (its nftables table stays until
//! it exits, keeping the kernel out of the service traffic), lets its workers finish their
//! rings, answers every connection and exits at once. The new process, started with the same
//! arguments, waits for the instance lock the old one held to its last moment, starts as
//! usual, and puts the connections in its synced table, from which a worker adopts each on
//! its next packet with the real (and state) it had, as a backup adopts a failed MASTER's
//! (`sync`): whatever the scheduler, persistent or not, DR, NAT or TUN.
//!
//! Not handed over: FullNAT connections (their local address and port are not in the listing,
//! as they are not in IPVS's sync), persistence templates (a persistent client's next *new*
//! connection is scheduled afresh), the VRRP state (the new process starts its instances as
//! configured), the statistics and rate estimates.

use std::net::Ipv4Addr;

use crate::ctl::backend::{Backend, SocketBackend, SocketLocation};
use crate::ctl::proto::{ConnEntry, Reply, Request};
use crate::flow::{FlowKey, TcpState};
use crate::model::{ForwardMethod, Protocol, ServiceKey, ServiceTable};
use crate::sync::SyncRecord;

/// Asks the director on `location` to hand over and stop. Its answer is the connection list
/// of `-Lnc`.
pub fn ask(location: SocketLocation) -> Result<Vec<ConnEntry>, String> {
    let mut backend = SocketBackend { location };
    match backend.call(&Request::Handover) {
        Ok(Reply::Connections(entries)) => Ok(entries),
        Ok(Reply::Refused(r)) => Err(format!(
            "the running uvs refused the handover: {}",
            r.message
        )),
        Ok(other) => Err(format!(
            "the running uvs answered the handover with {other:?} (an older version without --takeover?)"
        )),
        Err(e) => Err(format!("no running uvs to take over from: {e}")),
    }
}

/// What the new process does with the handed-over list.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inherited {
    /// Connections to adopt.
    pub records: Vec<SyncRecord>,
    /// FullNAT connections, which cannot be adopted (see the module doc).
    pub fullnat: usize,
    /// Connections whose service or real `table` does not have (the configuration changed
    /// with the restart): scheduled afresh on their next SYN, dropped otherwise.
    pub unknown: usize,
}

/// Turns the old process's connections into records of `table`'s reals (persistence
/// templates are skipped).
pub fn inherit(entries: &[ConnEntry], table: &ServiceTable) -> Inherited {
    let marked = table.marked_keys();
    let mut out = Inherited::default();
    for e in entries {
        if e.fwmark_template || e.state == "NONE" {
            continue;
        }
        let (vip, vport) = e.virt;
        let addr_key = ServiceKey::addr(e.proto, vip, vport);
        let service = table.service(&addr_key).or_else(|| {
            marked
                .iter()
                .find(|(k, _)| *k == addr_key)
                .and_then(|(_, svc)| table.service(svc))
        });
        let (dest, dport) = e.dest;
        let real = service.and_then(|s| {
            s.reals.iter().find(|r| {
                r.addr == dest
                    && (r.forward != ForwardMethod::Masq || r.port == 0 || r.port == dport)
            })
        });
        let Some(real) = real else {
            out.unknown += 1;
            continue;
        };
        if real.forward == ForwardMethod::FullNat {
            out.fullnat += 1;
            continue;
        }
        let state = match e.proto {
            Protocol::Tcp => TcpState::from_name(&e.state).unwrap_or(TcpState::Established),
            Protocol::Udp => TcpState::None,
        };
        out.records.push(SyncRecord {
            key: FlowKey {
                saddr: u32::from(e.client.0),
                daddr: u32::from(vip),
                sport: e.client.1,
                dport: vport,
                proto: e.proto.number(),
            },
            real_addr: u32::from(dest),
            real_port: dport,
            forward: real.forward,
            state,
            // A connection about to expire still gets its next packet's worth of life.
            timeout_secs: e.expires.max(1),
        });
    }
    out
}

/// For messages: `a.b.c.d:port`.
pub fn endpoint((a, p): (Ipv4Addr, u16)) -> String {
    format!("{a}:{p}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rules;

    fn table(text: &str) -> ServiceTable {
        rules::parse(
            text,
            std::path::Path::new("rules"),
            &ServiceTable::default(),
        )
        .expect("rules")
    }

    fn entry(state: &str, client: u16, virt: (&str, u16), dest: (&str, u16)) -> ConnEntry {
        ConnEntry {
            proto: Protocol::Tcp,
            expires: 0,
            state: state.to_string(),
            client: (Ipv4Addr::new(198, 51, 100, 7), client),
            virt: (virt.0.parse().unwrap(), virt.1),
            dest: (dest.0.parse().unwrap(), dest.1),
            fwmark_template: false,
        }
    }

    #[test]
    fn each_method_keeps_its_real_and_state_and_fullnat_and_templates_are_left() {
        let t = table(
            "-A -t 10.0.0.100:80 -s rr\n\
             -a -t 10.0.0.100:80 -r 10.0.0.11:80 -g\n\
             -a -t 10.0.0.100:80 -r 10.0.0.12:8080 -m\n\
             -a -t 10.0.0.100:80 -r 10.9.0.13:80 -i\n\
             -a -t 10.0.0.100:80 -r 10.9.0.14:8081 --fullnat\n",
        );
        let vip = ("10.0.0.100", 80);
        let list = vec![
            entry("ESTABLISHED", 40001, vip, ("10.0.0.11", 80)),
            entry("FIN_WAIT", 40002, vip, ("10.0.0.12", 8080)),
            entry("SYN_RECV", 40003, vip, ("10.0.0.13", 80)),
            entry("ESTABLISHED", 40004, vip, ("10.9.0.13", 80)),
            entry("ESTABLISHED", 40005, vip, ("10.9.0.14", 8081)),
            entry("NONE", 0, vip, ("10.0.0.11", 80)),
        ];
        let got = inherit(&list, &t);
        assert_eq!((got.fullnat, got.unknown), (1, 1), "{got:?}");
        let summary: Vec<(u16, ForwardMethod, TcpState, u16, u32)> = got
            .records
            .iter()
            .map(|r| (r.key.sport, r.forward, r.state, r.real_port, r.timeout_secs))
            .collect();
        assert_eq!(
            summary,
            vec![
                (40001, ForwardMethod::Route, TcpState::Established, 80, 1),
                (40002, ForwardMethod::Masq, TcpState::FinWait, 8080, 1),
                (
                    40004,
                    ForwardMethod::Tunnel(crate::model::Tunnel::IPIP),
                    TcpState::Established,
                    80,
                    1
                ),
            ]
        );
        assert_eq!(
            got.records[0].key.daddr,
            u32::from(Ipv4Addr::new(10, 0, 0, 100))
        );
        assert_eq!(
            got.records[0].key.saddr,
            u32::from(Ipv4Addr::new(198, 51, 100, 7))
        );
    }
}
