//! The whole per-frame path: parse → flow lookup → schedule → rewrite, on a small snapshot.
//!
//! Input: byte 0 picks the scheduler and sloppy TCP; then records of
//! `[status byte][time step byte][len u16 BE][bytes…]`, each processed as one received frame
//! (the bytes are the ring's virtio header + frame), so sequences build and evict flows.
//! Checks: no panic, and a forwarded frame is a valid IPv4 frame with its TTL decremented,
//! its checksum still valid, addresses untouched, and the director's MAC as source.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uvs::datapath::process::{STATUS_VLAN_VALID, Verdict};
use uvs::io::VNET_HDR_LEN;
use uvs::io::ring::RxFrame;
use uvs::model::SchedulerKind;
use uvs::wire::{ETH_HDR_LEN, ipv4};

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let sched = SchedulerKind::ALL[usize::from(first & 0x0f) % SchedulerKind::ALL.len()];
    let mut rig = uvs_fuzz::frame_rig(sched, first & 0x80 != 0);
    let mut now: u32 = u32::MAX - 100_000; // close to the wrap
    let mut buf = Vec::new();
    let mut frames = 0;
    while rest.len() >= 4 && frames < 256 {
        frames += 1;
        let status = if rest[0] & 1 != 0 {
            STATUS_VLAN_VALID
        } else {
            0
        };
        let step = u32::from(rest[1]);
        now = now.wrapping_add(step * step * 16);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]])).min(rest.len() - 4);
        let bytes = &rest[4..4 + len];
        rest = &rest[4 + len..];
        // Either the record is the whole ring buffer, or a wire length larger than it (a
        // truncating ring) when the status byte asks.
        buf.clear();
        buf.extend_from_slice(bytes);
        let before = buf.clone();
        let wire_len = if status == 0 && bytes.first().is_some_and(|b| b & 0x40 != 0) {
            buf.len() + 1
        } else {
            buf.len().saturating_sub(VNET_HDR_LEN)
        };
        let v = rig.fwd.process(
            &rig.snap,
            &rig.neigh,
            &rig.counters,
            RxFrame {
                buf: &mut buf,
                wire_len,
                status,
                scratch: false,
            },
            now,
        );
        match v {
            Verdict::Forward { egress } => {
                assert_eq!(egress, 0);
                let f = &buf[VNET_HDR_LEN..];
                let ip = &f[ETH_HDR_LEN..];
                let ihl = ipv4::header_len(ip);
                assert_eq!(ipv4::checksum(&ip[..ihl]), 0, "checksum broken by rewrite");
                let old_ip = &before[VNET_HDR_LEN + ETH_HDR_LEN..];
                assert_eq!(ipv4::ttl(ip) + 1, ipv4::ttl(old_ip));
                assert_eq!(ipv4::src(ip), ipv4::src(old_ip));
                assert_eq!(ipv4::dst(ip), ipv4::dst(old_ip));
                assert_eq!(&f[6..12], &uvs_fuzz::DIR_MAC);
                assert_eq!(&f[0..6], &uvs_fuzz::RS_MAC[0]);
                assert_eq!(buf.len(), before.len());
            }
            Verdict::Drop(_) => assert_eq!(&buf[..], &before[..], "a dropped frame was modified"),
            // The fuzz rig's reals are direct-routing ones: nothing is ever composed.
            Verdict::Compose { .. } => panic!("a composed packet for a direct-routing real"),
        }
        if frames % 16 == 0 {
            rig.fwd.expire_some(&rig.snap, now, 32);
        }
    }
});
