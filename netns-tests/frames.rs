//! Frames the tests build and send themselves (malformed, random, floods): the DR lab's MACs,
//! a SYN to the VIP, IPv4 header repair, and `uvs lab-send-frames` to put them on a link.

use etherparse::PacketBuilder;
use uvs::lab::{Lab, addr, inject};

use crate::common;

/// Offset of the IPv4 header in an untagged frame.
pub const IP: usize = 14;
/// Offset of the transport header behind a 20-byte IPv4 header.
pub const L4: usize = IP + 20;

/// The router's LAN side, where client traffic to the VIP comes from.
pub fn router_mac() -> [u8; 6] {
    addr::mac(addr::HOST_ROUTER, 1)
}

pub fn dir_mac() -> [u8; 6] {
    addr::mac(addr::HOST_DIR, 0)
}

/// A TCP SYN with 8 payload bytes from `src`:`sport` to VIP:`dport`, router → director.
pub fn syn_from(src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(router_mac(), dir_mac())
        .ipv4(src, addr::VIP.octets(), 64)
        .tcp(sport, dport, 1, 64240)
        .syn();
    let mut v = Vec::new();
    b.write(&mut v, &[0u8; 8]).unwrap();
    v
}

/// The client's SYN from port 40000 to VIP:80.
pub fn client_syn() -> Vec<u8> {
    syn_from(addr::CLIENT.octets(), 40000, 80)
}

fn csum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Recomputes the IPv4 header checksum (IHL from the header, clamped to the frame), so a
/// defect under test is the only one the frame has.
pub fn fix_ip(f: &mut [u8]) {
    if f.len() < IP + 12 {
        return;
    }
    let ihl = (usize::from(f[IP] & 0x0f) * 4).min(f.len() - IP);
    f[IP + 10] = 0;
    f[IP + 11] = 0;
    let c = csum(&f[IP..IP + ihl.max(12)]);
    f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
}

/// `f` changed by `e`, with its IPv4 header checksum made right again.
pub fn edit(mut f: Vec<u8>, e: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    e(&mut f);
    fix_ip(&mut f);
    f
}

/// Sends `frames` out of `ifname` in `host` with `uvs lab-send-frames`; returns what it
/// printed ("sent N frames, M too short to send"). `tag` names the frame file.
pub fn send(lab: &Lab, host: &str, ifname: &str, frames: &[Vec<u8>], tag: &str) -> String {
    let file = lab.dir().join(format!("frames-{tag}.bin"));
    std::fs::write(&file, inject::encode_frames(frames).unwrap()).unwrap();
    let exe = common::uvs_exe();
    lab.exec_ok(
        host,
        &[
            common::path_str(&exe),
            "lab-send-frames",
            "--interface",
            ifname,
            "--file",
            common::path_str(&file),
        ],
    )
    .unwrap_or_else(|e| panic!("lab-send-frames {tag}: {e:#}"))
}
