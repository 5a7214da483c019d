//! Events that are not packet decisions, as trace lines: VRRP transitions and what the ARP
//! engine did, formatted on the control thread for the sessions that want them.

use std::net::Ipv4Addr;

use super::session::{Msg, Session, StreamMode};
use super::text::clock;
use crate::io::clock::realtime_ns;
use crate::neigh::arp::ArpEngine;
use crate::wire::{MacAddr, arp};

/// The ARP engine's figures before it handles a frame, to tell afterwards what the frame did.
pub struct ArpSnapshot {
    answered: u64,
    learned: u64,
    /// The MAC known for the frame's sender before, if the sender is a real server.
    known: Option<MacAddr>,
}

impl ArpSnapshot {
    pub fn of(engine: &ArpEngine, frame: &[u8]) -> ArpSnapshot {
        let sender = arp::fields(frame).map(|f| f.sender_ip);
        let known = sender.and_then(|ip| {
            engine
                .neighbors
                .iter()
                .find(|n| n.addr == ip)
                .and_then(|n| n.mac)
        });
        ArpSnapshot {
            answered: engine.counters.requests_answered,
            learned: engine.counters.replies_learned,
            known,
        }
    }
}

/// A trace line per change an ARP frame caused on interface `ifname` (whose MAC is `ours`),
/// with the addresses each concerns: a VIP answered, a real server's MAC learned or changed,
/// another host claiming a VIP.
pub fn arp_events(
    engine: &ArpEngine,
    frame: &[u8],
    ifname: &str,
    ours: MacAddr,
    before: &ArpSnapshot,
) -> Vec<(Vec<Ipv4Addr>, String)> {
    let Some(f) = arp::fields(frame) else {
        return Vec::new();
    };
    let (sip, smac, tip) = (f.sender_ip, f.sender_mac, f.target_ip);
    let t = clock(realtime_ns());
    let mut out = Vec::new();
    if engine.counters.requests_answered > before.answered {
        let why = if engine.is_local_addr(tip) {
            "a FullNAT local address of uvs's"
        } else {
            "the VIP is uvs's"
        };
        out.push((
            vec![tip],
            format!(
                "{t} ARP who-has {tip} tell {sip} ({smac}) in {ifname}: answered {tip} is-at {ours} ({why})"
            ),
        ));
    }
    if engine.counters.replies_learned > before.learned {
        let what = match before.known {
            None => "learned".to_string(),
            Some(m) if m == smac => "refreshed".to_string(),
            Some(m) => format!("changed (was {m})"),
        };
        out.push((
            vec![sip],
            format!("{t} ARP {sip} is-at {smac} in {ifname}: real server MAC {what}"),
        ));
    }
    if f.op == arp::REQUEST || f.op == arp::REPLY {
        if let Some((vip, mac)) = engine.last_conflict {
            if vip == sip && mac == smac {
                out.push((
                    vec![vip],
                    format!(
                        "{t} ARP CONFLICT: {smac} claims VIP {vip} in {ifname} (a real server without arp_ignore=1/arp_announce=2?)"
                    ),
                ));
            }
        }
    }
    out
}

/// Control thread (HA): a trace line per VRRP state change between two listings, with the
/// VIPs it concerns: what the change means for ARP and forwarding.
pub fn vrrp_events(
    before: &[crate::vrrp::runtime::InstanceStatus],
    after: &[crate::vrrp::runtime::InstanceStatus],
) -> Vec<(Vec<Ipv4Addr>, String)> {
    use crate::vrrp::machine::State;
    let t = clock(realtime_ns());
    let mut out = Vec::new();
    for a in after {
        let Some(b) = before.iter().find(|b| b.name == a.name) else {
            continue;
        };
        if a.state == b.state {
            continue;
        }
        let vips = a
            .vips
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let what = match a.state {
            State::Master => format!(
                "uvs now answers ARP for {vips} and forwards to it; gratuitous ARP announces it"
            ),
            State::Backup => format!(
                "master is {}: uvs stops answering ARP for {vips}; frames to it are dropped (standby)",
                a.master.map_or("unknown".to_string(), |m| m.to_string())
            ),
            State::Fault => format!("tracked interface down: {vips} not answered"),
            State::Init => String::new(),
        };
        out.push((
            a.vips.clone(),
            format!(
                "{t} VRRP {} (vrid {} on {}, priority {}): {} -> {}: {what}",
                a.name,
                a.vrid,
                a.interface,
                a.priority,
                b.state.name(),
                a.state.name()
            ),
        ));
    }
    out
}

/// Control thread: an ARP event line for the trace sessions whose filter concerns `ips`.
pub fn arp_event(sessions: &[Session], ips: &[Ipv4Addr], line: &str) {
    for s in sessions.iter().filter(|s| s.mode == StreamMode::Trace) {
        if s.filter.client.is_some() {
            continue;
        }
        if let Some(v) = s.filter.vip {
            if !ips.contains(&v) {
                continue;
            }
        }
        let _ = s.tx.try_send(Msg::Line(line.to_string()));
    }
}
