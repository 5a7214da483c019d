//! The endpoint refuses what the kernel's tunnel drivers refuse.

use super::*;

/// An IPIP frame (virtio header + Ethernet) around a small UDP datagram.
fn ipip() -> Vec<u8> {
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ipv4([198, 51, 100, 10], [203, 0, 113, 2], 63)
        .udp(5000, 53)
        .write(&mut inner, b"query")
        .unwrap();
    let mut out = vec![0u8; VNET_HDR_LEN];
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 9, 2], 63)
        .write(&mut out, etherparse::IpNumber(4), &inner)
        .unwrap();
    out
}

#[test]
fn ipip_gives_the_inner_packet() {
    let mut f = ipip();
    let r = decapsulate(&mut f, None).unwrap();
    assert_eq!(ipv4::dst(&f[r.clone()]), 0xcb00_7102);
    assert_eq!(r.end, f.len());
}

#[test]
fn damaged_or_foreign_frames_are_refused() {
    let mut f = ipip();
    f[VNET_HDR_LEN + 14 + 10] ^= 1;
    assert_eq!(decapsulate(&mut f, None), Err(Reject::OuterChecksum));
    let mut f = ipip();
    let ip = VNET_HDR_LEN + 14;
    f[ip + 6] |= 0x20; // MF
    f[ip + 10..ip + 12].fill(0);
    let c = ipv4::checksum(&f[ip..ip + 20]);
    f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    assert_eq!(decapsulate(&mut f, None), Err(Reject::Fragment));
    let mut f = ipip();
    f.truncate(VNET_HDR_LEN + 14 + 30);
    assert_eq!(decapsulate(&mut f, None), Err(Reject::Malformed));
    let mut f = ipip();
    f[VNET_HDR_LEN + 14 + 20] = 0x65; // "IPv6" inside
    assert_eq!(decapsulate(&mut f, None), Err(Reject::Unsupported));
}

#[test]
fn gre_checksums_and_gue_ports_are_checked() {
    // GRE with a checksum, then a flipped payload bit.
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ipv4([198, 51, 100, 10], [203, 0, 113, 2], 63)
        .udp(5000, 53)
        .write(&mut inner, b"query")
        .unwrap();
    let mut gre = vec![0x80, 0, 0x08, 0, 0, 0, 0, 0];
    gre.extend_from_slice(&inner);
    let c = csum::checksum(&gre);
    gre[4..6].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0u8; VNET_HDR_LEN];
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 9, 2], 63)
        .write(&mut f, etherparse::IpNumber(47), &gre)
        .unwrap();
    let ok = f.clone();
    assert!(decapsulate(&mut f, None).is_ok());
    let mut bad = ok.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    assert_eq!(decapsulate(&mut bad, None), Err(Reject::TunnelChecksum));
    // UDP to a port that is not the GUE port.
    let mut u = vec![0u8; VNET_HDR_LEN];
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 9, 2], 63)
        .udp(40000, 6081)
        .write(&mut u, &[0, 4, 0, 0])
        .unwrap();
    assert_eq!(decapsulate(&mut u, Some(6080)), Err(Reject::NotGue));
}
