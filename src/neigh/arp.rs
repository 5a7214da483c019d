//! ARP on the control thread: answer requests for the VIPs (broadcast and unicast — routers
//! refresh their entry with unicast probes), announce the VIPs with gratuitous ARP the way
//! keepalived does, and resolve real-server MACs with our own requests.
//!
//! Safety rules (RFC 826 leaves these to the implementation):
//! - A real server's MAC is learned only from a reply to a request we sent, from the address we
//!   asked, within the outstanding window. Unsolicited replies and gratuitous ARP claiming a
//!   real server's address are ignored and counted, so nobody on the LAN can redirect traffic.
//! - Requests for a real server are sent at most once per `retry_ms` while it is unresolved,
//!   and a learned MAC is re-confirmed before `reachable_secs` runs out; it stays in use until
//!   three probes in a row go unanswered.
//!
//! The engine is pure: frames in, frames out, time as a parameter.

use std::net::Ipv4Addr;

use etherparse::{
    ArpEthIpv4Packet, ArpOperation, ArpPacketSlice, EtherType, Ethernet2Header, PacketBuilder,
};

use crate::neigh::cache::NeighTable;
use crate::wire::MacAddr;

/// Unanswered probes after which a learned MAC is withdrawn.
const MAX_UNANSWERED_PROBES: u32 = 3;
/// How long a reply to one of our requests is accepted.
const OUTSTANDING_MS: u32 = 3000;
/// With a VIP MAC, one gratuitous ARP per VIP this often: uvs never sends anything else from
/// that MAC (forwarded frames leave from the interface's own), and a switch forgets a MAC it
/// has not seen for 300 s by default, then floods the VIP's traffic to every port.
const VIP_MAC_REFRESH_MS: u32 = 60_000;

/// The `[arp]` section: timers, gratuitous bursts, and the VIP MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpOptions {
    /// Seconds a learned real-server MAC is trusted before it is refreshed.
    pub reachable_secs: u32,
    /// Milliseconds between ARP requests for a real server that has not answered.
    pub retry_ms: u32,
    /// Gratuitous ARPs per VIP at start (keepalived `vrrp_garp_master_repeat`).
    pub garp_repeat: u32,
    /// Seconds before the second gratuitous burst; 0 disables it (keepalived `vrrp_garp_master_delay`).
    pub garp_delay_secs: u32,
    /// The MAC address uvs answers ARP with for the VIPs (keepalived's `use_vmac` idea),
    /// instead of the interface's own. Service traffic then arrives addressed to a MAC the
    /// director's kernel does not own, so the kernel drops it at once (`PACKET_OTHERHOST`)
    /// while uvs forwards it, and no per-frame ingress rule is needed. `None`: the interface
    /// MAC, as the kernel's IPVS director answers. Fixed at start.
    pub vip_mac: Option<MacAddr>,
}

impl Default for ArpOptions {
    fn default() -> Self {
        ArpOptions {
            reachable_secs: 30,
            retry_ms: 1000,
            garp_repeat: 5,
            garp_delay_secs: 5,
            vip_mac: None,
        }
    }
}

/// What the engine knows about one interface.
#[derive(Clone, Debug)]
pub struct ArpInterface {
    pub name: String,
    pub mac: MacAddr,
    /// Address our requests come from (the interface's own IPv4 address on that LAN).
    pub source: Option<Ipv4Addr>,
}

/// One real-server address to resolve on one interface.
#[derive(Clone, Debug)]
pub struct Neighbor {
    pub slot: u32,
    pub egress: usize,
    pub addr: Ipv4Addr,
    pub mac: Option<MacAddr>,
    /// When the MAC was last confirmed.
    confirmed_at: u32,
    /// Next time a request may be sent.
    next_request_at: u32,
    /// Deadline for a reply to the last request; 0 = none outstanding.
    outstanding_until: u32,
    unanswered: u32,
}

impl Neighbor {
    pub fn new(slot: u32, egress: usize, addr: Ipv4Addr) -> Neighbor {
        Neighbor {
            slot,
            egress,
            addr,
            mac: None,
            confirmed_at: 0,
            next_request_at: 0,
            outstanding_until: 0,
            unanswered: 0,
        }
    }
}

/// Why an ARP frame was not acted on (labels of `uvs_arp_ignored_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpIgnore {
    Malformed,
    BadOpcode,
    NotForUs,
    UnsolicitedReply,
    /// A request or gratuitous announcement for a VIP from another host: something else on
    /// the LAN claims the VIP (typically a real server without `arp_ignore=1`).
    VipConflict,
}

impl ArpIgnore {
    pub const ALL: [ArpIgnore; 5] = [
        ArpIgnore::Malformed,
        ArpIgnore::BadOpcode,
        ArpIgnore::NotForUs,
        ArpIgnore::UnsolicitedReply,
        ArpIgnore::VipConflict,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            ArpIgnore::Malformed => "malformed",
            ArpIgnore::BadOpcode => "bad_opcode",
            ArpIgnore::NotForUs => "not_for_us",
            ArpIgnore::UnsolicitedReply => "unsolicited_reply",
            ArpIgnore::VipConflict => "vip_conflict",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ArpCounters {
    pub requests_answered: u64,
    pub requests_sent: u64,
    pub gratuitous_sent: u64,
    pub replies_learned: u64,
    pub ignored: [u64; 5],
}

/// A frame to send on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub interface: usize,
    pub frame: Vec<u8>,
}

pub struct ArpEngine {
    pub interfaces: Vec<ArpInterface>,
    /// VIPs and, per VIP, whether each interface answers for it.
    vips: Vec<Ipv4Addr>,
    /// FullNAT local addresses the director's kernel does not own: answered with the
    /// interface's own MAC (never the VIP MAC: replies to them are ordinary frames).
    local_addrs: Vec<Ipv4Addr>,
    pub neighbors: Vec<Neighbor>,
    opts: ArpOptions,
    /// Pending gratuitous bursts: (time, vip).
    garp_due: Vec<(u32, Ipv4Addr)>,
    /// Next keep-alive announcement of the VIP MAC (see `VIP_MAC_REFRESH_MS`).
    vip_mac_refresh_at: Option<u32>,
    pub counters: ArpCounters,
    /// Last MAC seen claiming a VIP (for logs and `uvs doctor`).
    pub last_conflict: Option<(Ipv4Addr, MacAddr)>,
}

fn reached(t: u32, deadline: u32) -> bool {
    (t.wrapping_sub(deadline) as i32) >= 0
}

/// An Ethernet/IPv4 ARP packet, or `None` for any other hardware/protocol type or length.
fn parse_eth_ipv4(bytes: &[u8]) -> Option<ArpEthIpv4Packet> {
    let slice = ArpPacketSlice::from_slice(bytes).ok()?;
    ArpEthIpv4Packet::try_from(slice.to_packet()).ok()
}

fn build(src: MacAddr, dst: MacAddr, arp: ArpEthIpv4Packet) -> Vec<u8> {
    let mut out = Vec::with_capacity(42);
    // Writing into a Vec cannot fail; an empty frame is skipped by the sender.
    let _ = PacketBuilder::ethernet2(src.0, dst.0)
        .arp(arp.into())
        .write(&mut out);
    out
}

impl ArpEngine {
    pub fn new(interfaces: Vec<ArpInterface>, opts: ArpOptions) -> ArpEngine {
        ArpEngine {
            interfaces,
            vips: Vec::new(),
            local_addrs: Vec::new(),
            neighbors: Vec::new(),
            opts,
            garp_due: Vec::new(),
            vip_mac_refresh_at: None,
            counters: ArpCounters::default(),
            last_conflict: None,
        }
    }

    /// Replaces the VIP set; newly added VIPs are announced (now, and again after
    /// `garp_delay_secs`, like keepalived's `vrrp_garp_master_repeat`/`_delay`).
    pub fn set_vips(&mut self, vips: Vec<Ipv4Addr>, now: u32) {
        for v in &vips {
            if !self.vips.contains(v) {
                self.garp_due.push((now, *v));
                if self.opts.garp_delay_secs > 0 {
                    self.garp_due
                        .push((now.wrapping_add(self.opts.garp_delay_secs * 1000), *v));
                }
            }
        }
        self.vips = vips;
    }

    /// Replaces the FullNAT local addresses uvs answers for; new ones are announced once.
    pub fn set_local_addrs(&mut self, addrs: Vec<Ipv4Addr>, now: u32) {
        for a in &addrs {
            if !self.local_addrs.contains(a) {
                self.garp_due.push((now, *a));
            }
        }
        self.local_addrs = addrs;
    }

    /// The MAC `addr` is answered and announced with on `ifc`: a FullNAT local address with
    /// the interface's own, a VIP with the VIP MAC if there is one.
    fn answer_mac(&self, ifc: &ArpInterface, addr: Ipv4Addr) -> MacAddr {
        if self.local_addrs.contains(&addr) && !self.vips.contains(&addr) {
            ifc.mac
        } else {
            self.vip_mac_on(ifc)
        }
    }

    /// announces `vips` again (a burst now, and again after `garp_delay_secs`)
    /// although they are already answered — a VRRP MASTER that heard a lower-priority advert.
    pub fn announce(&mut self, vips: &[Ipv4Addr], now: u32) {
        for v in vips.iter().filter(|v| self.vips.contains(v)) {
            self.garp_due.push((now, *v));
            if self.opts.garp_delay_secs > 0 {
                self.garp_due
                    .push((now.wrapping_add(self.opts.garp_delay_secs * 1000), *v));
            }
        }
    }

    /// Replaces the set of addresses to resolve, keeping what is known about the ones that stay.
    pub fn set_neighbors(&mut self, mut wanted: Vec<Neighbor>, table: &NeighTable) {
        for w in wanted.iter_mut() {
            if let Some(old) = self
                .neighbors
                .iter()
                .find(|o| o.slot == w.slot && o.addr == w.addr && o.egress == w.egress)
            {
                *w = old.clone();
            }
            table.set(w.slot, w.mac);
        }
        self.neighbors = wanted;
    }

    /// The MAC the VIPs are announced and answered with on an interface.
    fn vip_mac_on(&self, ifc: &ArpInterface) -> MacAddr {
        self.opts.vip_mac.unwrap_or(ifc.mac)
    }

    /// The configured VIP MAC (`[arp] vip_mac`), if any.
    pub fn vip_mac(&self) -> Option<MacAddr> {
        self.opts.vip_mac
    }

    fn ignore(&mut self, why: ArpIgnore) {
        self.counters.ignored[why as usize] += 1;
    }

    /// Handles one received ARP frame; returns a reply to send, if any.
    pub fn on_frame(
        &mut self,
        interface: usize,
        frame: &[u8],
        now: u32,
        table: &NeighTable,
    ) -> Option<Outgoing> {
        let Some(ifc) = self.interfaces.get(interface).cloned() else {
            self.ignore(ArpIgnore::NotForUs);
            return None;
        };
        let parsed = Ethernet2Header::from_slice(frame)
            .ok()
            .and_then(|(eth, rest)| {
                (eth.ether_type == EtherType::ARP)
                    .then(|| parse_eth_ipv4(rest))
                    .flatten()
                    .map(|arp| (eth, arp))
            });
        let Some((eth, arp)) = parsed else {
            self.ignore(ArpIgnore::Malformed);
            return None;
        };
        let sender_ip = Ipv4Addr::from(arp.sender_ipv4);
        let target_ip = Ipv4Addr::from(arp.target_ipv4);
        let sender_mac = MacAddr(arp.sender_mac);
        if sender_mac.is_group() || MacAddr(eth.source).is_group() {
            self.ignore(ArpIgnore::Malformed);
            return None;
        }
        let vip_mac = self.vip_mac_on(&ifc);
        let ours = |mac: MacAddr| mac == ifc.mac || mac == vip_mac;
        match arp.operation {
            ArpOperation::REQUEST => {
                if self.vips.contains(&sender_ip) && !ours(sender_mac) {
                    // Someone announces or asks *from* a VIP: a conflict, never learned.
                    self.last_conflict = Some((sender_ip, sender_mac));
                    self.ignore(ArpIgnore::VipConflict);
                    return None;
                }
                let answered =
                    self.vips.contains(&target_ip) || self.local_addrs.contains(&target_ip);
                if !answered || sender_ip == target_ip {
                    self.ignore(ArpIgnore::NotForUs);
                    return None;
                }
                let vip_mac = self.answer_mac(&ifc, target_ip);
                // Broadcast or unicast to us: both are answered.
                let dst = MacAddr(eth.destination);
                if dst != MacAddr::BROADCAST && !ours(dst) {
                    self.ignore(ArpIgnore::NotForUs);
                    return None;
                }
                self.counters.requests_answered += 1;
                let reply = ArpEthIpv4Packet {
                    operation: ArpOperation::REPLY,
                    sender_mac: vip_mac.0,
                    sender_ipv4: target_ip.octets(),
                    target_mac: sender_mac.0,
                    target_ipv4: sender_ip.octets(),
                };
                // Sent from the VIP MAC too, so switches learn where it lives.
                Some(Outgoing {
                    interface,
                    frame: build(vip_mac, sender_mac, reply),
                })
            }
            ArpOperation::REPLY => {
                if self.vips.contains(&sender_ip) && !ours(sender_mac) {
                    self.last_conflict = Some((sender_ip, sender_mac));
                    self.ignore(ArpIgnore::VipConflict);
                    return None;
                }
                let ours = ifc.source;
                let Some(n) = self.neighbors.iter_mut().find(|n| {
                    n.egress == interface
                        && n.addr == sender_ip
                        && n.outstanding_until != 0
                        && !reached(now, n.outstanding_until)
                        && Some(target_ip) == ours
                }) else {
                    self.ignore(ArpIgnore::UnsolicitedReply);
                    return None;
                };
                if n.mac != Some(sender_mac) {
                    log::info!(
                        "real server {} is at {} on {}",
                        n.addr,
                        sender_mac,
                        ifc.name
                    );
                }
                n.mac = Some(sender_mac);
                n.confirmed_at = now;
                n.outstanding_until = 0;
                n.unanswered = 0;
                n.next_request_at = now.wrapping_add(self.opts.reachable_secs * 1000);
                table.set(n.slot, n.mac);
                self.counters.replies_learned += 1;
                None
            }
            _ => {
                self.ignore(ArpIgnore::BadOpcode);
                None
            }
        }
    }

    /// Timers: requests for unresolved or ageing neighbours, gratuitous bursts.
    pub fn on_tick(&mut self, now: u32, table: &NeighTable, out: &mut Vec<Outgoing>) {
        let retry = self.opts.retry_ms;
        for n in self.neighbors.iter_mut() {
            if n.outstanding_until != 0 && reached(now, n.outstanding_until) {
                n.outstanding_until = 0;
                n.unanswered += 1;
                if n.mac.is_some() && n.unanswered >= MAX_UNANSWERED_PROBES {
                    log::warn!(
                        "real server {} stopped answering ARP; its MAC is withdrawn",
                        n.addr
                    );
                    n.mac = None;
                    table.set(n.slot, None);
                }
            }
            if !reached(now, n.next_request_at) || n.outstanding_until != 0 {
                continue;
            }
            let Some(ifc) = self.interfaces.get(n.egress) else {
                continue;
            };
            let Some(src_ip) = ifc.source else {
                continue;
            };
            // Confirm a known MAC with a unicast probe (as the kernel's NUD does); ask by
            // broadcast otherwise.
            let dst = n.mac.unwrap_or(MacAddr::BROADCAST);
            let req = ArpEthIpv4Packet {
                operation: ArpOperation::REQUEST,
                sender_mac: ifc.mac.0,
                sender_ipv4: src_ip.octets(),
                target_mac: [0; 6],
                target_ipv4: n.addr.octets(),
            };
            out.push(Outgoing {
                interface: n.egress,
                frame: build(ifc.mac, dst, req),
            });
            self.counters.requests_sent += 1;
            n.outstanding_until = now.wrapping_add(OUTSTANDING_MS.max(retry)).max(1);
            n.next_request_at = now.wrapping_add(retry);
        }
        let mut due = Vec::new();
        self.garp_due.retain(|&(t, vip)| {
            if reached(now, t) {
                due.push(vip);
                false
            } else {
                true
            }
        });
        for vip in due {
            if self.vips.contains(&vip) {
                self.announce_now(vip, self.opts.garp_repeat, out);
            } else if self.local_addrs.contains(&vip) {
                self.announce_now(vip, 1, out);
            }
        }
        if self.opts.vip_mac.is_some() {
            match self.vip_mac_refresh_at {
                // The start-up bursts above announce it first.
                None => self.vip_mac_refresh_at = Some(now.wrapping_add(VIP_MAC_REFRESH_MS)),
                Some(t) if reached(now, t) => {
                    for vip in self.vips.clone() {
                        self.announce_now(vip, 1, out);
                    }
                    self.vip_mac_refresh_at = Some(now.wrapping_add(VIP_MAC_REFRESH_MS));
                }
                Some(_) => {}
            }
        }
    }

    /// `count` gratuitous ARPs for `vip` on every interface.
    fn announce_now(&mut self, vip: Ipv4Addr, count: u32, out: &mut Vec<Outgoing>) {
        for (i, ifc) in self.interfaces.iter().enumerate() {
            let mac = self.answer_mac(ifc, vip);
            // keepalived's gratuitous ARP: a REQUEST, broadcast, sender = target = VIP,
            // target hardware address = broadcast.
            let garp = ArpEthIpv4Packet {
                operation: ArpOperation::REQUEST,
                sender_mac: mac.0,
                sender_ipv4: vip.octets(),
                target_mac: [0xff; 6],
                target_ipv4: vip.octets(),
            };
            for _ in 0..count {
                out.push(Outgoing {
                    interface: i,
                    frame: build(mac, MacAddr::BROADCAST, garp.clone()),
                });
                self.counters.gratuitous_sent += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: MacAddr = MacAddr([2, 0, 0, 0, 2, 1]);
    const ROUTER: MacAddr = MacAddr([2, 0, 0, 0, 1, 2]);
    const RS1: MacAddr = MacAddr([2, 0, 0, 0, 11, 1]);
    const EVIL: MacAddr = MacAddr([2, 0, 0, 0, 66, 6]);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
    const DIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const RIP1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);

    fn engine() -> (ArpEngine, NeighTable) {
        let mut e = ArpEngine::new(
            vec![ArpInterface {
                name: "eth0".into(),
                mac: DIR,
                source: Some(DIP),
            }],
            ArpOptions::default(),
        );
        e.set_vips(vec![VIP], 0);
        let t = NeighTable::new(16);
        e.set_neighbors(vec![Neighbor::new(1, 0, RIP1)], &t);
        (e, t)
    }

    fn arp(
        op: ArpOperation,
        eth_dst: MacAddr,
        smac: MacAddr,
        sip: Ipv4Addr,
        tip: Ipv4Addr,
    ) -> Vec<u8> {
        build(
            smac,
            eth_dst,
            ArpEthIpv4Packet {
                operation: op,
                sender_mac: smac.0,
                sender_ipv4: sip.octets(),
                target_mac: [0; 6],
                target_ipv4: tip.octets(),
            },
        )
    }

    #[test]
    fn answers_broadcast_and_unicast_requests_for_the_vip() {
        let (mut e, t) = engine();
        let r = Ipv4Addr::new(10, 0, 0, 1);
        for dst in [MacAddr::BROADCAST, DIR] {
            let out = e
                .on_frame(0, &arp(ArpOperation::REQUEST, dst, ROUTER, r, VIP), 5, &t)
                .expect("answered");
            let (eth, rest) = Ethernet2Header::from_slice(&out.frame).unwrap();
            assert_eq!(MacAddr(eth.destination), ROUTER);
            assert_eq!(MacAddr(eth.source), DIR);
            let a = parse_eth_ipv4(rest).unwrap();
            assert_eq!(a.operation, ArpOperation::REPLY);
            assert_eq!(Ipv4Addr::from(a.sender_ipv4), VIP);
            assert_eq!(MacAddr(a.sender_mac), DIR);
            assert_eq!(Ipv4Addr::from(a.target_ipv4), r);
        }
        assert!(
            e.on_frame(
                0,
                &arp(ArpOperation::REQUEST, MacAddr::BROADCAST, ROUTER, r, DIP),
                5,
                &t
            )
            .is_none(),
            "the director's own address is the kernel's business"
        );
        assert_eq!(e.counters.requests_answered, 2);
    }

    #[test]
    fn learns_a_real_mac_only_from_a_reply_to_its_own_request() {
        let (mut e, t) = engine();
        // Unsolicited reply and gratuitous claim before any request: ignored.
        e.on_frame(0, &arp(ArpOperation::REPLY, DIR, EVIL, RIP1, DIP), 0, &t);
        e.on_frame(
            0,
            &arp(ArpOperation::REQUEST, MacAddr::BROADCAST, EVIL, RIP1, RIP1),
            0,
            &t,
        );
        assert_eq!(t.get(1), None);
        assert_eq!(e.counters.ignored[ArpIgnore::UnsolicitedReply as usize], 1);
        let mut out = Vec::new();
        e.on_tick(10, &t, &mut out);
        assert_eq!(
            out.len(),
            1 + 5,
            "one request for the real server and the first GARP burst"
        );
        let req = out
            .iter()
            .find(|o| {
                let (_, rest) = Ethernet2Header::from_slice(&o.frame).unwrap();
                let a = parse_eth_ipv4(rest).unwrap();
                Ipv4Addr::from(a.target_ipv4) == RIP1
            })
            .expect("request for the real server");
        let (eth, _) = Ethernet2Header::from_slice(&req.frame).unwrap();
        assert_eq!(MacAddr(eth.destination), MacAddr::BROADCAST);
        e.on_frame(0, &arp(ArpOperation::REPLY, DIR, RS1, RIP1, DIP), 20, &t);
        assert_eq!(t.get(1), Some(RS1));
        // A later unsolicited reply cannot move it.
        e.on_frame(0, &arp(ArpOperation::REPLY, DIR, EVIL, RIP1, DIP), 30, &t);
        assert_eq!(t.get(1), Some(RS1));
    }

    #[test]
    fn with_a_vip_mac_the_vip_is_answered_and_announced_with_it_and_reals_resolved_as_before() {
        const VMAC: MacAddr = MacAddr([0x02, 0, 0x5e, 0, 1, 7]);
        let mut e = ArpEngine::new(
            vec![ArpInterface {
                name: "eth0".into(),
                mac: DIR,
                source: Some(DIP),
            }],
            ArpOptions {
                vip_mac: Some(VMAC),
                ..ArpOptions::default()
            },
        );
        e.set_vips(vec![VIP], 0);
        let t = NeighTable::new(16);
        e.set_neighbors(vec![Neighbor::new(1, 0, RIP1)], &t);
        let r = Ipv4Addr::new(10, 0, 0, 1);
        // Broadcast, and the unicast re-confirmation a router sends to the MAC it learned.
        for dst in [MacAddr::BROADCAST, VMAC] {
            let out = e
                .on_frame(0, &arp(ArpOperation::REQUEST, dst, ROUTER, r, VIP), 5, &t)
                .expect("answered");
            let (eth, rest) = Ethernet2Header::from_slice(&out.frame).unwrap();
            assert_eq!(MacAddr(eth.source), VMAC);
            assert_eq!(MacAddr(parse_eth_ipv4(rest).unwrap().sender_mac), VMAC);
        }
        let mut out = Vec::new();
        e.on_tick(0, &t, &mut out);
        let mut garps = 0;
        for o in &out {
            let (eth, rest) = Ethernet2Header::from_slice(&o.frame).unwrap();
            let a = parse_eth_ipv4(rest).unwrap();
            if a.sender_ipv4 == VIP.octets() {
                garps += 1;
                assert_eq!((MacAddr(eth.source), MacAddr(a.sender_mac)), (VMAC, VMAC));
            } else {
                // Our own request for a real server: from the interface, as the kernel would.
                assert_eq!(a.target_ipv4, RIP1.octets());
                assert_eq!((MacAddr(eth.source), MacAddr(a.sender_mac)), (DIR, DIR));
            }
        }
        assert_eq!(garps, 5);
        // Kept alive for switches' MAC tables: one announcement a minute, none in between.
        let vip_garps = |e: &mut ArpEngine, now| {
            let mut out = Vec::new();
            e.on_tick(now, &t, &mut out);
            out.iter()
                .filter(|o| parse_eth_ipv4(&o.frame[14..]).unwrap().sender_ipv4 == VIP.octets())
                .count()
        };
        assert_eq!(vip_garps(&mut e, 5_000), 5, "the second start-up burst");
        assert_eq!(vip_garps(&mut e, 30_000), 0);
        assert_eq!(vip_garps(&mut e, 60_000), 1);
        assert_eq!(vip_garps(&mut e, 61_000), 0);
        assert_eq!(vip_garps(&mut e, 120_000), 1);
        // Someone else claiming the VIP is still a conflict; our own VIP MAC is not.
        let claim = |mac| arp(ArpOperation::REQUEST, MacAddr::BROADCAST, mac, VIP, VIP);
        e.on_frame(0, &claim(EVIL), 6, &t);
        e.on_frame(0, &claim(VMAC), 6, &t);
        assert_eq!(e.counters.ignored[ArpIgnore::VipConflict as usize], 1);
    }

    #[test]
    fn a_fullnat_local_address_is_answered_with_the_interface_mac_even_with_a_vip_mac() {
        const VMAC: MacAddr = MacAddr([0x02, 0, 0x5e, 0, 1, 7]);
        let lip = Ipv4Addr::new(10, 0, 0, 200);
        let mut e = ArpEngine::new(
            vec![ArpInterface {
                name: "eth0".into(),
                mac: DIR,
                source: Some(DIP),
            }],
            ArpOptions {
                vip_mac: Some(VMAC),
                ..ArpOptions::default()
            },
        );
        e.set_vips(vec![VIP], 0);
        e.set_local_addrs(vec![lip], 0);
        let t = NeighTable::new(16);
        let out = e
            .on_frame(
                0,
                &arp(ArpOperation::REQUEST, MacAddr::BROADCAST, ROUTER, RIP1, lip),
                1,
                &t,
            )
            .expect("answered");
        let (eth, rest) = Ethernet2Header::from_slice(&out.frame).unwrap();
        assert_eq!(MacAddr(eth.source), DIR);
        assert_eq!(MacAddr(parse_eth_ipv4(rest).unwrap().sender_mac), DIR);
        let mut garps = Vec::new();
        e.on_tick(1, &t, &mut garps);
        assert!(garps.iter().any(|o| {
            let a = parse_eth_ipv4(&o.frame[14..]).unwrap();
            a.sender_ipv4 == lip.octets() && MacAddr(a.sender_mac) == DIR
        }));
        // Gone from the configuration: no longer answered.
        e.set_local_addrs(Vec::new(), 2);
        let req = arp(ArpOperation::REQUEST, MacAddr::BROADCAST, ROUTER, RIP1, lip);
        assert!(e.on_frame(0, &req, 3, &t).is_none());
    }

    #[test]
    fn sends_keepalived_style_gratuitous_arp_twice() {
        let (mut e, t) = engine();
        let count = |out: &[Outgoing]| {
            out.iter()
                .filter(|o| {
                    let (_, rest) = Ethernet2Header::from_slice(&o.frame).unwrap();
                    let a = parse_eth_ipv4(rest).unwrap();
                    a.sender_ipv4 == VIP.octets()
                        && a.target_ipv4 == VIP.octets()
                        && a.target_mac == [0xff; 6]
                })
                .count()
        };
        let mut out = Vec::new();
        e.on_tick(0, &t, &mut out);
        assert_eq!(count(&out), 5);
        out.clear();
        e.on_tick(4000, &t, &mut out);
        assert_eq!(count(&out), 0);
        e.on_tick(5000, &t, &mut out);
        assert_eq!(count(&out), 5);
    }

    #[test]
    fn retries_at_a_bounded_rate_and_withdraws_a_silent_mac() {
        let (mut e, t) = engine();
        let mut out = Vec::new();
        let mut requests = 0;
        for ms in (0..10_000).step_by(100) {
            out.clear();
            e.on_tick(ms, &t, &mut out);
            requests += out
                .iter()
                .filter(|o| o.frame.len() >= 42 && o.frame[41] == 11)
                .count();
        }
        assert!(requests <= 10, "at most one per second, got {requests}");
        // Learn, then stay silent: withdrawn after three unanswered probes.
        e.on_tick(10_000, &t, &mut out);
        e.on_frame(
            0,
            &arp(ArpOperation::REPLY, DIR, RS1, RIP1, DIP),
            10_050,
            &t,
        );
        assert_eq!(t.get(1), Some(RS1));
        for ms in (10_100..200_000).step_by(500) {
            out.clear();
            e.on_tick(ms, &t, &mut out);
        }
        assert_eq!(t.get(1), None);
    }

    #[test]
    fn a_vip_claimed_by_another_host_is_reported_not_learned() {
        let (mut e, t) = engine();
        e.on_frame(
            0,
            &arp(ArpOperation::REPLY, MacAddr::BROADCAST, EVIL, VIP, VIP),
            0,
            &t,
        );
        assert_eq!(e.last_conflict, Some((VIP, EVIL)));
        assert_eq!(e.counters.ignored[ArpIgnore::VipConflict as usize], 1);
    }

    #[test]
    fn garbage_is_counted() {
        let (mut e, t) = engine();
        assert!(e.on_frame(0, &[0u8; 20], 0, &t).is_none());
        let mut f = arp(ArpOperation::REQUEST, MacAddr::BROADCAST, ROUTER, DIP, VIP);
        f[21] = 9; // opcode 9
        e.on_frame(0, &f, 0, &t);
        assert_eq!(e.counters.ignored[ArpIgnore::Malformed as usize], 1);
        assert_eq!(e.counters.ignored[ArpIgnore::BadOpcode as usize], 1);
    }
}
