//! The classic BPF programs of the receive sockets. The filter attached to every one, so the
//! rings carry only what a worker needs: IPv4 frames to a VIP, the replies and ICMP errors of
//! masquerading reals, plus frames uvs must account for itself (too short to classify,
//! VLAN-tagged, unknown ethertypes). Ordinary host traffic (IPv4 to other addresses,
//! IPv6), ARP (the control thread has its own socket for it) and frames for other hosts seen in
//! promiscuous mode stay out of the rings entirely — except frames to the VIP MAC
//! (`[arp] vip_mac`), which are "for other hosts" to the kernel but are uvs's own.

use std::net::Ipv4Addr;

use crate::wire::MacAddr;

/// Most VIPs matched in the kernel. Beyond this the filter accepts all IPv4 and the worker
/// sorts it out (counted as `not_a_service`); the limit keeps every jump offset within a u8.
pub const MAX_FILTER_VIPS: usize = 200;

const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_ST: u16 = 0x02;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_MISC: u16 = 0x07;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_MEM: u16 = 0x60;
const BPF_LEN: u16 = 0x80;
const BPF_MSH: u16 = 0xa0;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_JSET: u16 = 0x40;
const BPF_MUL: u16 = 0x20;
const BPF_RSH: u16 = 0x70;
const BPF_XOR: u16 = 0xa0;
const BPF_K: u16 = 0x00;
const BPF_X: u16 = 0x08;
const BPF_A: u16 = 0x10;
const BPF_TAX: u16 = 0x00;

/// Frame offsets: IPv4 protocol, source and destination address (Ethernet + IPv4 header).
/// `sll_pkttype` of a frame addressed to this host.
const PACKET_HOST: u32 = 0;
const IP_PROTO: u32 = 14 + 9;
const IP_SRC: u32 = 14 + 12;
const IP_DST: u32 = 14 + 16;
const IPPROTO_ICMP: u32 = 1;

const SKF_AD_OFF: u32 = 0xFFFF_F000; // -0x1000 as u32
const SKF_AD_PKTTYPE: u32 = 4;
const SKF_AD_VLAN_TAG_PRESENT: u32 = 48;
const PACKET_OTHERHOST: u32 = 3;

const ACCEPT: u32 = 0xFFFF_FFFF;
const DROP: u32 = 0;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

/// The head of a program: frames for other hosts (seen in promiscuous mode, e.g. while
/// tcpdump runs) are dropped, except those addressed to the VIP MAC, which uvs claims
/// without the kernel owning it. Everything else falls through to what follows.
fn drop_other_hosts_except(vip_mac: Option<MacAddr>) -> Vec<Insn> {
    let pkttype = stmt(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE);
    match vip_mac {
        None => vec![
            pkttype,
            jump(BPF_JMP | BPF_JEQ | BPF_K, PACKET_OTHERHOST, 0, 1),
            stmt(BPF_RET | BPF_K, DROP),
        ],
        Some(MacAddr(m)) => vec![
            pkttype,
            jump(BPF_JMP | BPF_JEQ | BPF_K, PACKET_OTHERHOST, 0, 5),
            stmt(BPF_LD | BPF_W | BPF_ABS, 0),
            jump(
                BPF_JMP | BPF_JEQ | BPF_K,
                u32::from_be_bytes([m[0], m[1], m[2], m[3]]),
                0,
                2,
            ),
            stmt(BPF_LD | BPF_H | BPF_ABS, 4),
            jump(
                BPF_JMP | BPF_JEQ | BPF_K,
                u32::from(u16::from_be_bytes([m[4], m[5]])),
                1,
                0,
            ),
            stmt(BPF_RET | BPF_K, DROP),
        ],
    }
}

/// A program under construction with symbolic jump targets, resolved at the end: a jump
/// further than a classic BPF offset (255 instructions) makes the whole program unbuildable,
/// and the caller falls back to a simpler one.
struct Asm {
    insns: Vec<(Insn, Option<usize>, Option<usize>)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn new() -> Asm {
        Asm {
            insns: Vec::new(),
            labels: Vec::new(),
        }
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn here(&mut self, l: usize) {
        self.labels[l] = Some(self.insns.len());
    }
    fn op(&mut self, i: Insn) {
        self.insns.push((i, None, None));
    }
    /// `jeq k`: to `jt` on equal, to `jf` (or the next instruction) otherwise.
    fn jeq(&mut self, k: u32, jt: usize, jf: Option<usize>) {
        self.insns
            .push((jump(BPF_JMP | BPF_JEQ | BPF_K, k, 0, 0), Some(jt), jf));
    }
    fn ja(&mut self, to: usize) {
        self.insns.push((stmt(BPF_JMP | BPF_JA, 0), Some(to), None));
    }
    fn finish(self) -> Option<Vec<Insn>> {
        let mut out = Vec::with_capacity(self.insns.len());
        for (at, (mut i, jt, jf)) in self.insns.iter().copied().enumerate() {
            let off = |l: Option<usize>| -> Option<u32> {
                match l {
                    None => Some(0),
                    Some(l) => {
                        let target = self.labels[l]?;
                        u32::try_from(target.checked_sub(at + 1)?).ok()
                    }
                }
            };
            if i.code == BPF_JMP | BPF_JA {
                i.k = off(jt)?;
            } else if jt.is_some() || jf.is_some() {
                i.jt = u8::try_from(off(jt)?).ok()?;
                i.jf = u8::try_from(off(jf)?).ok()?;
            }
            out.push(i);
        }
        Some(out)
    }
}

/// The tail of the receive filter for an IPv4 frame: accept it if it goes to a VIP, or comes
/// from a masquerading or FullNAT real's service port (its replies), or is ICMP from such a
/// real (errors about those replies) or to a FullNAT local address (a router's, about what
/// the director sent a real from it); drop the rest.
fn ipv4_tail(vips: &[Ipv4Addr], nat_sources: &[(u32, u16)], laddrs: &[u32]) -> Option<Vec<Insn>> {
    let mut a = Asm::new();
    let (accept, drop, from_real, to_laddr) = (a.label(), a.label(), a.label(), a.label());
    a.op(stmt(BPF_LD | BPF_W | BPF_ABS, IP_DST));
    for vip in vips {
        a.jeq(u32::from(*vip), accept, None);
    }
    if !laddrs.is_empty() {
        let not_laddr = a.label();
        for l in laddrs {
            a.jeq(*l, to_laddr, None);
        }
        a.ja(not_laddr);
        a.here(to_laddr);
        a.op(stmt(BPF_LD | BPF_B | BPF_ABS, IP_PROTO));
        a.jeq(IPPROTO_ICMP, accept, None);
        a.here(not_laddr);
    }
    if !nat_sources.is_empty() {
        let mut addrs: Vec<u32> = nat_sources.iter().map(|(a, _)| *a).collect();
        addrs.dedup();
        let mut ports: Vec<u16> = nat_sources.iter().map(|(_, p)| *p).collect();
        ports.sort_unstable();
        ports.dedup();
        a.op(stmt(BPF_LD | BPF_W | BPF_ABS, IP_SRC));
        for addr in addrs {
            a.jeq(addr, from_real, None);
        }
        a.ja(drop);
        a.here(from_real);
        a.op(stmt(BPF_LD | BPF_B | BPF_ABS, IP_PROTO));
        a.jeq(IPPROTO_ICMP, accept, None);
        a.op(stmt(BPF_LDX | BPF_B | BPF_MSH, 14));
        a.op(stmt(BPF_LD | BPF_H | BPF_IND, 14));
        for port in ports {
            a.jeq(u32::from(port), accept, None);
        }
    }
    a.here(drop);
    a.op(stmt(BPF_RET | BPF_K, DROP));
    a.here(accept);
    a.op(stmt(BPF_RET | BPF_K, ACCEPT));
    a.finish()
}

/// Builds the receive filter for the given VIPs, masquerading and FullNAT reals (address,
/// port), and FullNAT local addresses.
pub fn receive_filter(
    vips: &[Ipv4Addr],
    nat_sources: &[(u32, u16)],
    laddrs: &[u32],
    vip_mac: Option<MacAddr>,
) -> Vec<Insn> {
    let mut p = drop_other_hosts_except(vip_mac);
    p.extend([
        // A VLAN tag lives in skb metadata, not in the bytes: let the worker count it.
        stmt(
            BPF_LD | BPF_W | BPF_ABS,
            SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT,
        ),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0),
        stmt(BPF_RET | BPF_K, ACCEPT),
        // Frames too short for an ethertype: the worker counts them as truncated.
        stmt(BPF_LD | BPF_W | BPF_LEN, 0),
        jump(BPF_JMP | BPF_JGE | BPF_K, 14, 1, 0),
        stmt(BPF_RET | BPF_K, ACCEPT),
        stmt(BPF_LD | BPF_H | BPF_ABS, 12),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0x0800, 4, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0x0806, 2, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0x86DD, 1, 0),
        // Unknown ethertypes addressed to us: the worker counts them.
        stmt(BPF_RET | BPF_K, ACCEPT),
        stmt(BPF_RET | BPF_K, DROP),
        // IPv4. Too short for a destination address: the worker counts it as truncated.
        stmt(BPF_LD | BPF_W | BPF_LEN, 0),
        jump(BPF_JMP | BPF_JGE | BPF_K, 34, 1, 0),
        stmt(BPF_RET | BPF_K, ACCEPT),
    ]);
    let tail = (vips.len() <= MAX_FILTER_VIPS)
        .then(|| ipv4_tail(vips, nat_sources, laddrs))
        .flatten();
    match tail {
        Some(t) => p.extend(t),
        // Too many to compare within a jump's reach: the worker sorts them out.
        None => p.push(stmt(BPF_RET | BPF_K, ACCEPT)),
    }
    p
}

/// The fanout program: which worker's socket gets a frame (`PACKET_FANOUT_CBPF`; the kernel
/// takes the result modulo the group's size). Every frame of a flow, in both directions,
/// must reach one worker, whose flow table alone knows the flow: the program hashes the
/// client's address and port, which a request carries as its source, a masquerading real's
/// reply as its destination, and an ICMP error in the packet it quotes: as its source when a
/// masquerading real sends the error (it quotes what the client sent it), else as its
/// destination (a router or the client quotes what the VIP sent). The quoted IP header is
/// taken to be 20 bytes: options there only cost that error a flow lookup on the wrong
/// worker. A frame from a masquerading real's address is a reply; anything else a request.
///
/// A frame to a FullNAT local address is a FullNAT reply, which the worker that owns its
/// local port must get: the program returns that port (`lport % workers` owns it, see
/// `datapath::fullnat`); an ICMP error to a local address quotes the packet the director sent
/// from it, so its quoted source port.
pub fn fanout_program(nat_sources: &[(u32, u16)], laddrs: &[u32]) -> Vec<Insn> {
    let build = |reals: &[u32], laddrs: &[u32]| {
        let mut a = Asm::new();
        let (request, reply, icmp, mix, zero) =
            (a.label(), a.label(), a.label(), a.label(), a.label());
        let (icmp_from_real, quoted) = (a.label(), a.label());
        let (fullnat, fullnat_icmp, not_fullnat) = (a.label(), a.label(), a.label());
        a.op(stmt(BPF_LD | BPF_H | BPF_ABS, 12));
        a.jeq(0x0800, request, Some(zero));
        a.here(request);
        a.op(stmt(BPF_LDX | BPF_B | BPF_MSH, 14));
        if !laddrs.is_empty() {
            a.op(stmt(BPF_LD | BPF_W | BPF_ABS, IP_DST));
            for l in laddrs {
                a.jeq(*l, fullnat, None);
            }
            a.ja(not_fullnat);
            a.here(fullnat);
            a.op(stmt(BPF_LD | BPF_B | BPF_ABS, IP_PROTO));
            a.jeq(IPPROTO_ICMP, fullnat_icmp, None);
            a.op(stmt(BPF_LD | BPF_H | BPF_IND, 16));
            a.op(stmt(BPF_RET | BPF_A, 0));
            a.here(fullnat_icmp);
            a.op(stmt(BPF_LD | BPF_H | BPF_IND, 14 + 8 + 20));
            a.op(stmt(BPF_RET | BPF_A, 0));
            a.here(not_fullnat);
        }
        a.op(stmt(BPF_LD | BPF_B | BPF_ABS, IP_PROTO));
        a.jeq(IPPROTO_ICMP, icmp, None);
        a.op(stmt(BPF_LD | BPF_W | BPF_ABS, IP_SRC));
        for r in reals {
            a.jeq(*r, reply, None);
        }
        // A request: the client is the source.
        a.op(stmt(BPF_LD | BPF_H | BPF_IND, 14));
        a.op(stmt(BPF_MISC | BPF_TAX, 0));
        a.op(stmt(BPF_LD | BPF_W | BPF_ABS, IP_SRC));
        a.ja(mix);
        a.here(reply);
        a.op(stmt(BPF_LD | BPF_H | BPF_IND, 16));
        a.op(stmt(BPF_MISC | BPF_TAX, 0));
        a.op(stmt(BPF_LD | BPF_W | BPF_ABS, IP_DST));
        a.ja(mix);
        a.here(icmp);
        a.op(stmt(BPF_LD | BPF_W | BPF_ABS, IP_SRC));
        for r in reals {
            a.jeq(*r, icmp_from_real, None);
        }
        // The quoted packet's destination.
        a.op(stmt(BPF_LD | BPF_W | BPF_IND, 14 + 8 + 16));
        a.op(stmt(BPF_ST, 0));
        a.op(stmt(BPF_LD | BPF_H | BPF_IND, 14 + 8 + 20 + 2));
        a.ja(quoted);
        a.here(icmp_from_real);
        // The quoted packet's source.
        a.op(stmt(BPF_LD | BPF_W | BPF_IND, 14 + 8 + 12));
        a.op(stmt(BPF_ST, 0));
        a.op(stmt(BPF_LD | BPF_H | BPF_IND, 14 + 8 + 20));
        a.here(quoted);
        a.op(stmt(BPF_MISC | BPF_TAX, 0));
        a.op(stmt(BPF_LD | BPF_MEM, 0));
        a.here(mix);
        a.op(stmt(BPF_ALU | BPF_XOR | BPF_X, 0));
        a.op(stmt(BPF_ALU | BPF_MUL | BPF_K, 0x9E37_79B1));
        a.op(stmt(BPF_ALU | BPF_RSH | BPF_K, 16));
        a.op(stmt(BPF_RET | BPF_A, 0));
        a.here(zero);
        a.op(stmt(BPF_RET | BPF_K, 0));
        a.finish()
    };
    let mut reals: Vec<u32> = nat_sources.iter().map(|(a, _)| *a).collect();
    reals.dedup();
    // Too many reals to compare within a jump's reach: their replies are hashed as requests
    // (by source), which keeps DR exact and spreads the rest.
    build(&reals, laddrs)
        .or_else(|| build(&[], laddrs))
        .or_else(|| build(&[], &[]))
        .unwrap_or_default()
}

/// A filter that accepts nothing: attached before a socket is bound so no frame slips in
/// between `bind` and the real filter.
pub fn drop_all() -> Vec<Insn> {
    vec![stmt(BPF_RET | BPF_K, DROP)]
}

/// A filter for the tunnel endpoint (the `tunl0` stand-in): IPv4 frames to this host that
/// carry IPIP (protocol 4), GRE (47), or UDP to `gue_port` (0: none). The IPv4 header's
/// length is honoured for the UDP port (`ldx 4*([14]&0xf)`); fragments are not matched.
pub fn tunnel_endpoint_filter(gue_port: u16) -> Vec<Insn> {
    vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE),
        jump(BPF_JMP | BPF_JEQ | BPF_K, PACKET_HOST, 0, 12),
        stmt(BPF_LD | BPF_H | BPF_ABS, 12),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0x0800, 0, 10),
        stmt(BPF_LD | BPF_B | BPF_ABS, IP_PROTO),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 4, 7, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 47, 6, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 17, 0, 6),
        // UDP, not a fragment: its destination port.
        stmt(BPF_LD | BPF_H | BPF_ABS, 14 + 6),
        jump(BPF_JMP | BPF_JSET | BPF_K, 0x3fff, 4, 0),
        stmt(BPF_LDX | BPF_B | BPF_MSH, 14),
        stmt(BPF_LD | BPF_H | BPF_IND, 14 + 2),
        jump(BPF_JMP | BPF_JEQ | BPF_K, u32::from(gue_port), 0, 1),
        stmt(BPF_RET | BPF_K, ACCEPT),
        stmt(BPF_RET | BPF_K, DROP),
    ]
}

/// A filter for `uvs doctor`'s probe socket: ARP and IPv4, not for other hosts.
pub fn probe_filter() -> Vec<Insn> {
    vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE),
        jump(BPF_JMP | BPF_JEQ | BPF_K, PACKET_OTHERHOST, 3, 0),
        stmt(BPF_LD | BPF_H | BPF_ABS, 12),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0x0806, 2, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0x0800, 1, 0),
        stmt(BPF_RET | BPF_K, DROP),
        stmt(BPF_RET | BPF_K, ACCEPT),
    ]
}

/// A filter for the control thread's ARP socket: ARP only, not for other hosts (but for the
/// VIP MAC: routers confirm a neighbour with unicast requests to it).
pub fn arp_filter(vip_mac: Option<MacAddr>) -> Vec<Insn> {
    let mut p = drop_other_hosts_except(vip_mac);
    p.extend([
        stmt(BPF_LD | BPF_H | BPF_ABS, 12),
        jump(BPF_JMP | BPF_JEQ | BPF_K, 0x0806, 1, 0),
        stmt(BPF_RET | BPF_K, DROP),
        stmt(BPF_RET | BPF_K, ACCEPT),
    ]);
    p
}

/// Runs a program over a frame the way the kernel does, for tests. `pkttype` and `vlan` stand in
/// for the skb metadata the ancillary loads read. A load beyond the frame ends the program
/// with 0, as in the kernel.
#[cfg(test)]
pub fn interpret(p: &[Insn], frame: &[u8], pkttype: u32, vlan: bool) -> u32 {
    let (mut acc, mut x): (u32, u32) = (0, 0);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    let load = |k: usize, n: usize| -> Option<u32> {
        let b = frame.get(k..k + n)?;
        Some(b.iter().fold(0u32, |v, byte| v << 8 | u32::from(*byte)))
    };
    while pc < p.len() {
        let i = p[pc];
        let size = match i.code & 0x18 {
            BPF_W => 4,
            BPF_H => 2,
            _ => 1,
        };
        match i.code {
            c if c == BPF_LD | BPF_W | BPF_ABS
                && (i.k == SKF_AD_OFF + SKF_AD_PKTTYPE
                    || i.k == SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT) =>
            {
                acc = if i.k == SKF_AD_OFF + SKF_AD_PKTTYPE {
                    pkttype
                } else {
                    u32::from(vlan)
                };
            }
            c if c & 0x07 == BPF_LD && c & 0xe0 == BPF_ABS => match load(i.k as usize, size) {
                Some(v) => acc = v,
                None => return 0,
            },
            c if c & 0x07 == BPF_LD && c & 0xe0 == BPF_IND => {
                match load((x + i.k) as usize, size) {
                    Some(v) => acc = v,
                    None => return 0,
                }
            }
            c if c == BPF_LD | BPF_W | BPF_LEN => acc = frame.len() as u32,
            c if c == BPF_LD | BPF_MEM => acc = mem[i.k as usize],
            c if c == BPF_ST => mem[i.k as usize] = acc,
            c if c == BPF_LDX | BPF_B | BPF_MSH => match load(i.k as usize, 1) {
                Some(v) => x = (v & 0xf) * 4,
                None => return 0,
            },
            c if c == BPF_MISC | BPF_TAX => x = acc,
            c if c == BPF_ALU | BPF_XOR | BPF_X => acc ^= x,
            c if c == BPF_ALU | BPF_MUL | BPF_K => acc = acc.wrapping_mul(i.k),
            c if c == BPF_ALU | BPF_RSH | BPF_K => acc >>= i.k,
            c if c == BPF_JMP | BPF_JA => pc += i.k as usize,
            c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                pc += usize::from(if acc == i.k { i.jt } else { i.jf });
            }
            c if c == BPF_JMP | BPF_JGE | BPF_K => {
                pc += usize::from(if acc >= i.k { i.jt } else { i.jf });
            }
            c if c == BPF_JMP | BPF_JSET | BPF_K => {
                pc += usize::from(if acc & i.k != 0 { i.jt } else { i.jf });
            }
            c if c == BPF_RET | BPF_K => return i.k,
            c if c == BPF_RET | BPF_A => return acc,
            _ => panic!("unknown insn {i:?}"),
        }
        pc += 1;
    }
    panic!("fell off the end")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_to(dst: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[12] = 0x08;
        f[14] = 0x45;
        f[30..34].copy_from_slice(&dst.octets());
        f
    }

    const HOST: u32 = 0;

    #[test]
    fn accepts_ipv4_to_a_vip_and_drops_other_ipv4() {
        let vips = [Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 101)];
        let p = receive_filter(&vips, &[], &[], None);
        for vip in vips {
            assert_eq!(interpret(&p, &ipv4_to(vip), HOST, false), ACCEPT);
        }
        assert_eq!(
            interpret(&p, &ipv4_to(Ipv4Addr::new(10, 0, 0, 2)), HOST, false),
            DROP
        );
    }

    #[test]
    fn keeps_what_the_worker_must_count_and_drops_host_traffic() {
        let p = receive_filter(&[Ipv4Addr::new(10, 0, 0, 100)], &[], &[], None);
        let vip = ipv4_to(Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(interpret(&p, &vip, PACKET_OTHERHOST, false), DROP);
        assert_eq!(interpret(&p, &vip[..20], HOST, false), ACCEPT, "truncated");
        assert_eq!(
            interpret(&p, &vip[..8], HOST, false),
            ACCEPT,
            "no ethertype"
        );
        assert_eq!(interpret(&p, &vip, HOST, true), ACCEPT, "vlan");
        let mut odd = vip.clone();
        odd[12..14].copy_from_slice(&[0x88, 0xb5]);
        assert_eq!(interpret(&p, &odd, HOST, false), ACCEPT, "odd ethertype");
        let mut arp = vip.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            interpret(&p, &arp, HOST, false),
            DROP,
            "arp goes to control"
        );
        let mut v6 = vip;
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(
            interpret(&p, &v6, HOST, false),
            DROP,
            "ipv6 is host traffic"
        );
    }

    #[test]
    fn many_vips_fall_back_to_accepting_all_ipv4() {
        let vips: Vec<Ipv4Addr> = (0..300u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i))
            .collect();
        let p = receive_filter(&vips, &[], &[], None);
        assert_eq!(
            interpret(&p, &ipv4_to(Ipv4Addr::new(192, 168, 1, 1)), HOST, false),
            ACCEPT
        );
        let few = receive_filter(&vips[..MAX_FILTER_VIPS], &[], &[], None);
        assert_eq!(
            interpret(&few, &ipv4_to(vips[MAX_FILTER_VIPS - 1]), HOST, false),
            ACCEPT
        );
        assert_eq!(interpret(&few, &ipv4_to(vips[0]), HOST, false), ACCEPT);
    }

    /// An Ethernet/IPv4 frame with `proto`, from `src:sport` to `dst:dport`.
    fn packet(proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut f = ipv4_to(Ipv4Addr::from(dst));
        f[14 + 9] = proto;
        f[26..30].copy_from_slice(&src);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    const RS1: [u8; 4] = [192, 168, 80, 11];
    const CLIENT: [u8; 4] = [198, 51, 100, 7];
    const VIP: [u8; 4] = [192, 168, 80, 10];

    fn nat() -> Vec<(u32, u16)> {
        vec![
            (u32::from(Ipv4Addr::from(RS1)), 8080),
            (u32::from(Ipv4Addr::new(192, 168, 80, 12)), 8080),
        ]
    }

    #[test]
    fn masquerading_reals_replies_and_icmp_pass_their_other_traffic_does_not() {
        let p = receive_filter(&[Ipv4Addr::from(VIP)], &nat(), &[], None);
        let reply = packet(6, RS1, 8080, CLIENT, 40000);
        assert_eq!(interpret(&p, &reply, HOST, false), ACCEPT);
        let icmp = packet(1, RS1, 0, CLIENT, 0);
        assert_eq!(interpret(&p, &icmp, HOST, false), ACCEPT);
        // The real's own connections (a DNS query, a download) are the kernel's to route.
        let own = packet(17, RS1, 53000, [198, 51, 100, 53], 53);
        assert_eq!(interpret(&p, &own, HOST, false), DROP);
        let stranger = packet(6, [192, 168, 80, 99], 8080, CLIENT, 40000);
        assert_eq!(interpret(&p, &stranger, HOST, false), DROP);
        let request = packet(6, CLIENT, 40000, VIP, 80);
        assert_eq!(interpret(&p, &request, HOST, false), ACCEPT);
    }

    #[test]
    fn fanout_sends_both_directions_of_a_flow_to_one_worker() {
        let p = fanout_program(&nat(), &[]);
        let workers = 2;
        let mut seen = [0usize; 2];
        for cport in 30000..30200u16 {
            let request = packet(6, CLIENT, cport, VIP, 80);
            let reply = packet(6, RS1, 8080, CLIENT, cport);
            let w = interpret(&p, &request, HOST, false) % workers;
            assert_eq!(interpret(&p, &reply, HOST, false) % workers, w, "{cport}");
            // An ICMP error quoting the reply (port unreachable at the client, say) goes
            // there too.
            let mut icmp = packet(1, CLIENT, 0, VIP, 0);
            icmp[34] = 3;
            icmp.truncate(42);
            icmp.extend_from_slice(&reply[14..14 + 28]);
            assert_eq!(
                interpret(&p, &icmp, HOST, false) % workers,
                w,
                "icmp {cport}"
            );
            seen[w as usize] += 1;
        }
        assert!(seen[0] > 60 && seen[1] > 60, "spread: {seen:?}");
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(interpret(&p, &arp, HOST, false), 0);
    }

    #[test]
    fn fullnat_replies_go_to_the_worker_that_owns_their_local_port() {
        let lip = [10, 1, 0, 2];
        let laddrs = [u32::from(Ipv4Addr::from(lip))];
        let p = fanout_program(&nat(), &laddrs);
        for workers in [2u32, 3] {
            for lport in 1024..1100u16 {
                let reply = packet(6, RS1, 8080, lip, lport);
                assert_eq!(
                    interpret(&p, &reply, HOST, false) % workers,
                    u32::from(lport) % workers
                );
                // A router's ICMP error about what the director sent from the local port.
                let sent = packet(6, lip, lport, RS1, 8080);
                let mut icmp = packet(1, [10, 9, 0, 1], 0, lip, 0);
                icmp[34] = 3;
                icmp.truncate(42);
                icmp.extend_from_slice(&sent[14..14 + 28]);
                assert_eq!(
                    interpret(&p, &icmp, HOST, false) % workers,
                    u32::from(lport) % workers
                );
            }
        }
        // Requests still spread by client.
        let a = interpret(&p, &packet(6, CLIENT, 30000, VIP, 80), HOST, false);
        let b = interpret(&p, &packet(6, CLIENT, 30001, VIP, 80), HOST, false);
        assert_ne!(a, b);
        // The receive filter takes a router's ICMP to the local address, not other traffic.
        let rf = receive_filter(&[Ipv4Addr::from(VIP)], &nat(), &laddrs, None);
        let mut icmp = packet(1, [10, 9, 0, 1], 0, lip, 0);
        icmp[34] = 3;
        assert_eq!(interpret(&rf, &icmp, HOST, false), ACCEPT);
        let ssh = packet(6, [10, 9, 0, 1], 50000, lip, 22);
        assert_eq!(interpret(&rf, &ssh, HOST, false), DROP);
    }

    #[test]
    fn arp_filter_accepts_only_arp() {
        let p = arp_filter(None);
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(interpret(&p, &arp, HOST, false), ACCEPT);
        assert_eq!(interpret(&p, &arp, PACKET_OTHERHOST, false), DROP);
        assert_eq!(
            interpret(&p, &ipv4_to(Ipv4Addr::new(1, 2, 3, 4)), HOST, false),
            DROP
        );
    }

    const VMAC: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x00, 0x01, 0x07]);

    fn addressed_to(mut frame: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
        frame[..6].copy_from_slice(&mac);
        frame
    }

    #[test]
    fn with_a_vip_mac_frames_for_it_are_ours_and_other_hosts_still_not() {
        let vip = Ipv4Addr::new(10, 0, 0, 100);
        let p = receive_filter(&[vip], &[], &[], Some(VMAC));
        let to_vmac = addressed_to(ipv4_to(vip), VMAC.0);
        assert_eq!(interpret(&p, &to_vmac, PACKET_OTHERHOST, false), ACCEPT);
        assert_eq!(interpret(&p, &to_vmac, HOST, false), ACCEPT);
        // One octet off, in either of the two compared words: another host's frame.
        for i in [0, 3, 4, 5] {
            let mut near = VMAC.0;
            near[i] ^= 0x10;
            let f = addressed_to(ipv4_to(vip), near);
            assert_eq!(
                interpret(&p, &f, PACKET_OTHERHOST, false),
                DROP,
                "octet {i}"
            );
        }
        // For the VIP MAC, but not to a VIP: host traffic rules still apply.
        let other = addressed_to(ipv4_to(Ipv4Addr::new(10, 0, 0, 2)), VMAC.0);
        assert_eq!(interpret(&p, &other, PACKET_OTHERHOST, false), DROP);
        assert_eq!(interpret(&p, &to_vmac[..4], PACKET_OTHERHOST, false), DROP);

        let a = arp_filter(Some(VMAC));
        let mut arp = addressed_to(vec![0u8; 42], VMAC.0);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(interpret(&a, &arp, PACKET_OTHERHOST, false), ACCEPT);
        let stranger = addressed_to(arp.clone(), [0x02, 0, 0, 0, 0, 9]);
        assert_eq!(interpret(&a, &stranger, PACKET_OTHERHOST, false), DROP);
        assert_eq!(interpret(&a, &to_vmac, PACKET_OTHERHOST, false), DROP);
    }

    #[test]
    fn tunnel_endpoint_filter_takes_ipip_gre_and_the_gue_port_only() {
        let p = tunnel_endpoint_filter(6080);
        let with = |proto: u8, ihl: u8, dport: u16, frag: u16| {
            let mut f = vec![0u8; 14 + 60 + 8];
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[14] = 0x40 | ihl;
            f[14 + 6..14 + 8].copy_from_slice(&frag.to_be_bytes());
            f[14 + 9] = proto;
            let l4 = 14 + usize::from(ihl) * 4;
            f[l4 + 2..l4 + 4].copy_from_slice(&dport.to_be_bytes());
            f
        };
        assert_eq!(interpret(&p, &with(4, 5, 0, 0), HOST, false), ACCEPT);
        assert_eq!(interpret(&p, &with(47, 5, 0, 0), HOST, false), ACCEPT);
        assert_eq!(interpret(&p, &with(17, 5, 6080, 0), HOST, false), ACCEPT);
        assert_eq!(
            interpret(&p, &with(17, 7, 6080, 0), HOST, false),
            ACCEPT,
            "IP options"
        );
        assert_eq!(interpret(&p, &with(17, 5, 6081, 0), HOST, false), DROP);
        assert_eq!(
            interpret(&p, &with(17, 5, 6080, 0x2000), HOST, false),
            DROP,
            "fragment"
        );
        assert_eq!(interpret(&p, &with(6, 5, 6080, 0), HOST, false), DROP);
        assert_eq!(
            interpret(&p, &with(4, 5, 0, 0), PACKET_OTHERHOST, false),
            DROP
        );
        let mut v6 = with(4, 5, 0, 0);
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(interpret(&p, &v6, HOST, false), DROP);
    }

    #[test]
    fn probe_filter_accepts_arp_and_ipv4_for_us() {
        let p = probe_filter();
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let ip = ipv4_to(Ipv4Addr::new(1, 2, 3, 4));
        assert_eq!(interpret(&p, &arp, HOST, false), ACCEPT);
        assert_eq!(interpret(&p, &ip, HOST, false), ACCEPT);
        assert_eq!(interpret(&p, &ip, PACKET_OTHERHOST, false), DROP);
        let mut v6 = ip.clone();
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(interpret(&p, &v6, HOST, false), DROP);
    }
}
