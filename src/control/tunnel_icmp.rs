//! ICMP errors about the tunnel path, translated back to the client, as IPVS's `ip_vs_in_icmp`
//! does in its tunnel branch.
//!
//! A router between the director and a tunnelling real that cannot forward an outer packet
//! (DF set, link MTU too small) sends fragmentation-needed to the outer source: the director's
//! own address, so the director's kernel receives it, not uvs's rings. A raw ICMP socket gets a
//! copy of every such message. When it quotes an outer packet uvs sent (from a tunnel source
//! to a tunnelling real of the current snapshot, IPIP, GUE to the real's port, or GRE) whose
//! inner packet went to a service and had DF, the client gets fragmentation-needed about its
//! own packet (the inner one, as quoted), with the router's MTU less the outer headers. The
//! kernel sends it (routing, source address), at most [`PER_SECOND`] a second. Messages that
//! quote too little of the inner packet to name its flow (a router quoting only 8 bytes past
//! the outer header) cannot be translated, as in IPVS.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::model::TunnelKind;
use crate::snapshot::{SharedSnapshot, Snapshot, Xmit};
use crate::wire::{IPPROTO_TCP, IPPROTO_UDP, be16, csum, icmp, ipv4};

/// Translated errors sent per second at most.
pub const PER_SECOND: u32 = 100;

/// A translated error: to `client`, the ICMP message (header and quote).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translated {
    pub client: Ipv4Addr,
    pub message: Vec<u8>,
}

/// What the translator counted, for the metrics.
#[derive(Debug, Default)]
pub struct Counts {
    pub translated: AtomicU64,
    pub rate_limited: AtomicU64,
}

/// The translation of `packet` (an IPv4 packet with its header, as a raw ICMP socket reads
/// it), if it is fragmentation-needed about one of `snap`'s tunnels.
pub fn translate(snap: &Snapshot, packet: &[u8]) -> Option<Translated> {
    if packet.len() < 20 || ipv4::version(packet) != 4 {
        return None;
    }
    let ihl = ipv4::header_len(packet);
    let total = ipv4::total_len(packet).min(packet.len());
    let msg = packet.get(ihl..total)?;
    if msg.len() < icmp::HDR_LEN + 20
        || msg[0] != icmp::DEST_UNREACH
        || msg[1] != icmp::FRAG_NEEDED
        || csum::checksum(msg) != 0
    {
        return None;
    }
    let mtu = usize::from(be16(msg, 6));
    let outer = &msg[icmp::HDR_LEN..];
    let oihl = ipv4::header_len(outer);
    if ipv4::version(outer) != 4 || oihl < 20 || outer.len() < oihl + 8 {
        return None;
    }
    let (source, real) = (ipv4::src(outer), ipv4::dst(outer));
    let encap = snap.services().find_map(|s| {
        s.paths
            .iter()
            .zip(&s.reals)
            .find_map(|(p, d)| match p.xmit {
                Xmit::Tunnel { encap, end } if d.addr == real && end.source == source => {
                    Some(encap)
                }
                _ => None,
            })
    })?;
    let payload = &outer[oihl..];
    let inner_at = match (encap.kind, ipv4::protocol(outer)) {
        (TunnelKind::Ipip, crate::datapath::tunnel::IPPROTO_IPIP) => 0,
        (TunnelKind::Gre, crate::datapath::tunnel::IPPROTO_GRE) => {
            if be16(payload, 0) & 0x8000 != 0 { 8 } else { 4 }
        }
        (TunnelKind::Gue, IPPROTO_UDP) if be16(payload, 2) == encap.port => {
            8 + 4 + usize::from(*payload.get(8)? & 0x1f) * 4
        }
        _ => return None,
    };
    let inner = payload.get(inner_at..)?;
    let iihl = ipv4::header_len(inner);
    if inner.len() < 20 || ipv4::version(inner) != 4 || inner.len() < iihl + 8 {
        return None;
    }
    let proto = ipv4::protocol(inner);
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let dport = be16(inner, iihl + 2);
    let df = be16(inner, 6) & 0x4000 != 0;
    if !df || snap.service(proto, ipv4::dst(inner), dport).is_none() {
        return None;
    }
    // The router's MTU applies to the outer packet: the inner one gets what is left.
    let over = oihl + inner_at;
    let inner_mtu = u16::try_from(mtu.checked_sub(over)?).ok()?;
    if inner_mtu < 68 {
        return None;
    }
    let quote = &inner[..iihl + 8];
    let mut m = vec![0u8; icmp::HDR_LEN + quote.len()];
    m[0] = icmp::DEST_UNREACH;
    m[1] = icmp::FRAG_NEEDED;
    m[6..8].copy_from_slice(&inner_mtu.to_be_bytes());
    m[icmp::HDR_LEN..].copy_from_slice(quote);
    let c = csum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    Some(Translated {
        client: Ipv4Addr::from(ipv4::src(inner)),
        message: m,
    })
}

/// Runs the translator on its own thread until `stop` says so.
pub fn spawn(
    snapshot: SharedSnapshot,
    counts: Arc<Counts>,
    stop: fn() -> bool,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let fd = crate::io::tun::open_icmp_raw()?;
    std::thread::Builder::new()
        .name("uvs-tunnel-icmp".into())
        .spawn(move || {
            let mut buf = vec![0u8; 2048];
            let mut window = Instant::now();
            let mut sent = 0u32;
            while !stop() {
                let Ok(Some(n)) = crate::io::tun::recv_timeout(fd.as_raw_fd(), &mut buf, 200)
                else {
                    continue;
                };
                let snap = snapshot.load();
                let Some(t) = translate(&snap, &buf[..n]) else {
                    continue;
                };
                if window.elapsed() >= Duration::from_secs(1) {
                    window = Instant::now();
                    sent = 0;
                }
                if sent >= PER_SECOND {
                    counts.rate_limited.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                sent += 1;
                match crate::io::tun::send_icmp(fd.as_raw_fd(), &t.message, t.client) {
                    Ok(()) => {
                        counts.translated.fetch_add(1, Ordering::Relaxed);
                        log::debug!(
                            "tunnel path: fragmentation-needed translated for {}",
                            t.client
                        );
                    }
                    Err(e) => log::warn!("tunnel path: ICMP to {}: {e}", t.client),
                }
            }
        })
}

#[cfg(test)]
mod tests;
