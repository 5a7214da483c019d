//! `uvs capture`: the director's received and sent frames as pcapng, written from the trace
//! records (see `crate::datapath::tap`: same rings, same cost rules).
//!
//! pcapng rather than pcap because it names interfaces (one Interface Description Block per
//! director interface, `if_name` = the interface's name) and carries the direction of every
//! packet (`epb_flags` inbound/outbound), which Wireshark shows (`frame.interface_name`,
//! `frame.packet_flags_direction`) and libpcap-based tools read (tcpdump -r). Each forwarded
//! packet is written twice, back to back: as received (inbound, on its ingress interface) and
//! as sent (outbound, on its egress interface, rewritten as the real's forwarding method
//! says), each with a comment saying which. A dropped packet is written once, inbound, with the drop reason as comment.
//! Frames are kept up to [`crate::datapath::tap::SNAPLEN`] bytes (original length recorded).
//!
//! Written by hand: the three block types used are a few lines each, and no dependency is
//! needed for them.

use crate::datapath::tap::{Outcome, Record, SNAPLEN};

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const EPB: u32 = 6;
const LINKTYPE_ETHERNET: u16 = 1;
const DIR_IN: u32 = 1;
const DIR_OUT: u32 = 2;

fn pad4(v: &mut Vec<u8>) {
    while v.len() % 4 != 0 {
        v.push(0);
    }
}

fn option(v: &mut Vec<u8>, code: u16, data: &[u8]) {
    v.extend_from_slice(&code.to_le_bytes());
    v.extend_from_slice(&(data.len() as u16).to_le_bytes());
    v.extend_from_slice(data);
    pad4(v);
}

fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let total = (12 + body.len()) as u32;
    let mut b = Vec::with_capacity(total as usize);
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&total.to_le_bytes());
    b.extend_from_slice(body);
    b.extend_from_slice(&total.to_le_bytes());
    b
}

/// Section header plus one interface block per director interface (ids = interface indexes).
pub fn header(interfaces: &[String]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&(-1i64).to_le_bytes());
    option(&mut body, 4, b"uvs capture"); // shb_userappl
    option(&mut body, 0, &[]);
    let mut out = block(SHB, &body);
    for name in interfaces {
        let mut b = Vec::new();
        b.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&(SNAPLEN as u32).to_le_bytes());
        option(&mut b, 2, name.as_bytes()); // if_name
        option(
            &mut b,
            3,
            format!("uvs director interface {name}: frames received and sent").as_bytes(),
        );
        option(&mut b, 0, &[]);
        out.extend(block(IDB, &b));
    }
    out
}

fn epb(out: &mut Vec<u8>, iface: u16, ts_ns: u64, data: &[u8], orig: u32, dir: u32, comment: &str) {
    let us = ts_ns / 1000;
    let mut b = Vec::with_capacity(32 + data.len() + comment.len());
    b.extend_from_slice(&u32::from(iface).to_le_bytes());
    b.extend_from_slice(&((us >> 32) as u32).to_le_bytes());
    b.extend_from_slice(&(us as u32).to_le_bytes());
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&orig.max(data.len() as u32).to_le_bytes());
    b.extend_from_slice(data);
    pad4(&mut b);
    option(&mut b, 1, comment.as_bytes()); // opt_comment
    option(&mut b, 2, &dir.to_le_bytes()); // epb_flags: direction
    option(&mut b, 0, &[]);
    out.extend(block(EPB, &b));
}

/// The packet blocks of one decision: received (+ sent, for a forward).
pub fn record_blocks(r: &Record, ifname: &dyn Fn(u16) -> String) -> Vec<u8> {
    let mut out = Vec::new();
    let rx = r.received.bytes();
    let (ingress, t) = (r.ingress, r.time_ns);
    match r.outcome {
        Outcome::Forwarded { egress } => {
            let comment = format!("uvs: received on {}", ifname(ingress));
            epb(
                &mut out,
                ingress,
                t,
                rx,
                r.received.wire_len,
                DIR_IN,
                &comment,
            );
            let comment = format!(
                "uvs: sent on {} to real server {} ({} flow)",
                ifname(egress),
                crate::wire::ipv4_from_u32(r.real_addr),
                if r.new_flow { "new" } else { "existing" }
            );
            let sent = r.sent.bytes();
            epb(
                &mut out,
                egress,
                t,
                sent,
                r.sent.wire_len,
                DIR_OUT,
                &comment,
            );
        }
        Outcome::Dropped(reason) => {
            let comment = format!(
                "uvs: received on {} and dropped: {}",
                ifname(ingress),
                reason.name()
            );
            epb(
                &mut out,
                ingress,
                t,
                rx,
                r.received.wire_len,
                DIR_IN,
                &comment,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_well_formed() {
        let h = header(&["eth0".into()]);
        assert_eq!(&h[..4], &SHB.to_le_bytes());
        let shb_len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
        assert_eq!(&h[shb_len - 4..shb_len], &h[4..8]);
        assert_eq!(&h[shb_len..shb_len + 4], &IDB.to_le_bytes());
        assert_eq!(h.len() % 4, 0);
        let mut r = Record {
            outcome: Outcome::Forwarded { egress: 0 },
            ..Default::default()
        };
        for head in [&mut r.received, &mut r.sent] {
            head.cap_len = 61;
            head.wire_len = 61;
            head.bytes[12] = 8;
        }
        let b = record_blocks(&r, &|_| "eth0".into());
        let l1 = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
        assert_eq!(b.len() % 4, 0);
        assert_eq!(&b[l1..l1 + 4], &EPB.to_le_bytes());
    }
}
