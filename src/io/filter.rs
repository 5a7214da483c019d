//! The classic BPF program attached to every receive socket, so the rings carry only what a
//! worker needs: IPv4 frames to a VIP, plus frames uvs must account for itself (too short to
//! classify, VLAN-tagged, unknown ethertypes). Ordinary host traffic (IPv4 to other addresses,
//! IPv6), ARP (the control thread has its own socket for it) and frames for other hosts seen in
//! promiscuous mode stay out of the rings entirely — except frames to the VIP MAC
//! (`[arp] vip_mac`), which are "for other hosts" to the kernel but are uvs's own.

use std::net::Ipv4Addr;

use crate::wire::MacAddr;

/// Most VIPs matched in the kernel. Beyond this the filter accepts all IPv4 and the worker
/// sorts it out (counted as `not_a_service`); the limit keeps every jump offset within a u8.
pub const MAX_FILTER_VIPS: usize = 200;

const BPF_LD: u16 = 0x00;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_ABS: u16 = 0x20;
const BPF_LEN: u16 = 0x80;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_K: u16 = 0x00;

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

/// Builds the receive filter for the given VIPs.
pub fn receive_filter(vips: &[Ipv4Addr], vip_mac: Option<MacAddr>) -> Vec<Insn> {
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
    if vips.is_empty() {
        p.push(stmt(BPF_RET | BPF_K, DROP));
        return p;
    }
    if vips.len() > MAX_FILTER_VIPS {
        p.push(stmt(BPF_RET | BPF_K, ACCEPT));
        return p;
    }
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, 30));
    let n = vips.len();
    for (i, vip) in vips.iter().enumerate() {
        // On a match jump over the remaining compares and the final DROP to the ACCEPT.
        let to_accept = u8::try_from(n - i).unwrap_or(u8::MAX);
        p.push(jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            u32::from(*vip),
            to_accept,
            0,
        ));
    }
    p.push(stmt(BPF_RET | BPF_K, DROP));
    p.push(stmt(BPF_RET | BPF_K, ACCEPT));
    p
}

/// A filter that accepts nothing: attached before a socket is bound so no frame slips in
/// between `bind` and the real filter.
pub fn drop_all() -> Vec<Insn> {
    vec![stmt(BPF_RET | BPF_K, DROP)]
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
/// for the skb metadata the ancillary loads read.
#[cfg(test)]
pub fn interpret(p: &[Insn], frame: &[u8], pkttype: u32, vlan: bool) -> u32 {
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    while pc < p.len() {
        let i = p[pc];
        match i.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => {
                acc = match i.k {
                    k if k == SKF_AD_OFF + SKF_AD_PKTTYPE => pkttype,
                    k if k == SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT => u32::from(vlan),
                    k => {
                        let k = k as usize;
                        match frame.get(k..k + 4) {
                            Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                            None => return 0,
                        }
                    }
                }
            }
            c if c == BPF_LD | BPF_H | BPF_ABS => {
                let k = i.k as usize;
                match frame.get(k..k + 2) {
                    Some(b) => acc = u32::from(u16::from_be_bytes([b[0], b[1]])),
                    None => return 0,
                }
            }
            c if c == BPF_LD | BPF_W | BPF_LEN => acc = frame.len() as u32,
            c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                pc += usize::from(if acc == i.k { i.jt } else { i.jf });
            }
            c if c == BPF_JMP | BPF_JGE | BPF_K => {
                pc += usize::from(if acc >= i.k { i.jt } else { i.jf });
            }
            c if c == BPF_RET | BPF_K => return i.k,
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
        let p = receive_filter(&vips, None);
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
        let p = receive_filter(&[Ipv4Addr::new(10, 0, 0, 100)], None);
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
        let p = receive_filter(&vips, None);
        assert_eq!(
            interpret(&p, &ipv4_to(Ipv4Addr::new(192, 168, 1, 1)), HOST, false),
            ACCEPT
        );
        let few = receive_filter(&vips[..MAX_FILTER_VIPS], None);
        assert_eq!(
            interpret(&few, &ipv4_to(vips[MAX_FILTER_VIPS - 1]), HOST, false),
            ACCEPT
        );
        assert_eq!(interpret(&few, &ipv4_to(vips[0]), HOST, false), ACCEPT);
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
        let p = receive_filter(&[vip], Some(VMAC));
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
