//! In-memory datapath figures (no sockets): nanoseconds per frame through the full per-frame
//! decision (`Forwarder::process`: parse → flow lookup → schedule on a miss → MAC rewrite + TTL)
//! for established flows and for new flows, plus flow-table lookup/insert costs by table size.
//! Prints figures; asserts nothing. Run: `cargo bench --bench datapath`.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use etherparse::PacketBuilder;
use uvs::conns::ConnCounts;
use uvs::datapath::counters::WorkerCounters;
use uvs::datapath::flow_table::FlowTable;
use uvs::datapath::process::Forwarder;
use uvs::flow::FlowKey;
use uvs::flow::TcpState;
use uvs::io::VNET_HDR_LEN;
use uvs::io::ring::RxFrame;
use uvs::model::ForwardMethod;
use uvs::model::{
    Protocol, RealId, RealSpec, SchedulerKind, ServiceKey, ServiceSpec, ServiceTable,
};
use uvs::neigh::cache::NeighTable;
use uvs::snapshot::{NextHop, PlaceError, Placement, Snapshot};
use uvs::wire::MacAddr;

struct Lan;
impl Placement for Lan {
    fn next_hop(&mut self, addr: Ipv4Addr, _: ForwardMethod) -> Result<NextHop, PlaceError> {
        Ok(NextHop {
            egress: 0,
            neigh: u32::from(addr) & 0xff,
        })
    }
}

fn frame(sport: u16, saddr: [u8; 4], syn: bool) -> Vec<u8> {
    let mut out = vec![0u8; VNET_HDR_LEN];
    let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 2, 0])
        .ipv4(saddr, [10, 0, 0, 100], 64)
        .tcp(sport, 80, 1, 65535);
    b = if syn { b.syn() } else { b.ack(1) };
    let _ = b.write(&mut out, &[]);
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut t = ServiceTable::new();
    let key = ServiceKey {
        proto: Protocol::Tcp,
        vip: Ipv4Addr::new(10, 0, 0, 100),
        port: 80,
        fwmark: 0,
    };
    let _ = t.add_service(ServiceSpec::new(key, SchedulerKind::Wrr));
    for i in 0..8u8 {
        let mut r = RealSpec::route(Ipv4Addr::new(10, 0, 0, 11 + i), 80);
        r.weight = u32::from(i % 3) + 1;
        let _ = t.add_real(&key, r);
    }
    let Ok(snap) = Snapshot::build(&t, 1, &mut Lan) else {
        return;
    };
    let neigh = NeighTable::new(256);
    for i in 0..8u32 {
        neigh.set(11 + i, Some(MacAddr([2, 0, 0, 0, 0x11, i as u8])));
    }
    let counters = WorkerCounters::new();

    // Established flows: 1024 distinct flows, each SYN'd once, then ACKs round-robin.
    let mut fwd = Forwarder::new(
        1 << 16,
        false,
        vec![MacAddr([2, 0, 0, 0, 2, 0])],
        Arc::new(ConnCounts::new()),
    )
    .expect("flow table");
    let mut frames: Vec<Vec<u8>> = (0..1024u16)
        .map(|i| frame(10000 + i, [172, 30, 0, 10], true))
        .collect();
    for f in frames.iter_mut() {
        let n = f.len() - VNET_HDR_LEN;
        fwd.process(
            &snap,
            &neigh,
            &counters,
            RxFrame {
                buf: f,
                wire_len: n,
                status: 0,
                scratch: false,
            },
            0,
        );
    }
    let template: Vec<Vec<u8>> = (0..1024u16)
        .map(|i| frame(10000 + i, [172, 30, 0, 10], false))
        .collect();
    let rounds = 2000;
    let mut work = template.clone();
    let start = Instant::now();
    for r in 0..rounds {
        for (w, t) in work.iter_mut().zip(&template) {
            // Restore the TTL/MACs the previous round rewrote (a cheap copy of 64 bytes).
            w.copy_from_slice(t);
            let n = w.len() - VNET_HDR_LEN;
            black_box(fwd.process(
                &snap,
                &neigh,
                &counters,
                RxFrame {
                    buf: w,
                    wire_len: n,
                    status: 0,
                    scratch: false,
                },
                r,
            ));
        }
    }
    let est = start.elapsed().as_nanos() as f64 / (rounds as f64 * 1024.0);

    // New flows: every frame a SYN from a new source (the SYN-flood path).
    let mut fwd = Forwarder::new(
        1 << 22,
        false,
        vec![MacAddr([2, 0, 0, 0, 2, 0])],
        Arc::new(ConnCounts::new()),
    )
    .expect("flow table");
    let n_new = 2_000_000u32;
    // One valid frame per source address, built (checksummed) before the clock starts; the
    // loop only patches the source port, which the IP checksum does not cover.
    let bases: Vec<Vec<u8>> = (0..=(n_new >> 14))
        .map(|hi| frame(1, (0xAC10_0000u32 + hi).to_be_bytes(), true))
        .collect();
    let mut w = bases[0].clone();
    let start = Instant::now();
    for i in 0..n_new {
        w.copy_from_slice(&bases[(i >> 14) as usize]);
        let ip = VNET_HDR_LEN + 14;
        w[ip + 20..ip + 22].copy_from_slice(&((i & 0x3fff) as u16 + 1024).to_be_bytes());
        let n = w.len() - VNET_HDR_LEN;
        black_box(fwd.process(
            &snap,
            &neigh,
            &counters,
            RxFrame {
                buf: &mut w,
                wire_len: n,
                status: 0,
                scratch: false,
            },
            0,
        ));
    }
    let new = start.elapsed().as_nanos() as f64 / f64::from(n_new);

    println!("datapath, in memory, one core (ns per frame):");
    println!(
        "  established flow (lookup + state + rewrite): {est:6.1}  ({:.1} Mpps)",
        1e3 / est
    );
    println!(
        "  new flow (SYN: miss + wrr pick + insert):    {new:6.1}  ({:.1} M flows/s)",
        1e3 / new
    );
    println!(
        "flow table: {} bytes per flow; lookup / insert ns at fill:",
        FlowTable::bytes_per_flow()
    );
    for exp in [10u32, 14, 17, 20] {
        let flows = 1usize << exp;
        let mut t = FlowTable::new(flows * 2).expect("flow table");
        let keys: Vec<FlowKey> = (0..flows as u32)
            .map(|i| FlowKey {
                saddr: 0x0a00_0000 ^ i.wrapping_mul(2654435761),
                daddr: 0x0a00_0064,
                sport: (i & 0xffff) as u16,
                dport: 80,
                proto: 6,
            })
            .collect();
        let id = RealId(std::num::NonZeroU32::MIN);
        let s = Instant::now();
        for k in &keys {
            black_box(t.insert(k, id, TcpState::Established, 1_000_000, 0, None, None));
        }
        let ins = s.elapsed().as_nanos() as f64 / flows as f64;
        let s = Instant::now();
        let mut hits = 0usize;
        for k in keys.iter().rev() {
            hits += usize::from(t.lookup(k, 1).is_some());
        }
        let look = s.elapsed().as_nanos() as f64 / flows as f64;
        println!(
            "  {flows:>9} flows: lookup {look:6.1}  insert {ins:6.1}  (hits {hits}, evictions {})",
            t.evictions
        );
    }
    per_method();
}

/// Established flows per forwarding method: the decision plus, for a tunnel, filling the
/// transmit slot with the outer headers (what the worker does per frame before `sendmmsg`).
fn per_method() {
    use uvs::datapath::process::Verdict;
    use uvs::io::tx::HEAD_CAP;
    use uvs::model::{Tunnel, TunnelCsum, TunnelKind};
    use uvs::snapshot::TunnelEnd;
    struct Routed;
    impl Placement for Routed {
        fn next_hop(&mut self, _: Ipv4Addr, _: ForwardMethod) -> Result<NextHop, PlaceError> {
            Ok(NextHop {
                egress: 0,
                neigh: 1,
            })
        }
        fn tunnel_end(&mut self, _: Ipv4Addr, _: NextHop) -> Result<TunnelEnd, PlaceError> {
            Ok(TunnelEnd {
                source: 0x0a00_0001,
                mtu: 1500,
            })
        }
    }
    let gue = Tunnel {
        kind: TunnelKind::Gue,
        port: 6080,
        csum: TunnelCsum::NoCsum,
    };
    println!("established flows by forwarding method (ns per frame, decision + slot fill):");
    for (name, method) in [
        ("DR (-g)", ForwardMethod::Route),
        ("TUN ipip", ForwardMethod::IPIP),
        ("TUN gue", ForwardMethod::Tunnel(gue)),
    ] {
        let mut t = ServiceTable::new();
        let key = ServiceKey::addr(Protocol::Tcp, Ipv4Addr::new(10, 0, 0, 100), 80);
        let _ = t.add_service(ServiceSpec::new(key, SchedulerKind::Rr));
        for i in 0..2u8 {
            let mut r = RealSpec::route(Ipv4Addr::new(10, 0, 0, 11 + i), 80);
            r.forward = method;
            let _ = t.add_real(&key, r);
        }
        let Ok(snap) = Snapshot::build(&t, 1, &mut Routed) else {
            return;
        };
        let neigh = NeighTable::new(16);
        neigh.set(1, Some(MacAddr([2, 0, 0, 0, 9, 9])));
        let counters = WorkerCounters::new();
        let mut fwd = Forwarder::new(
            1 << 16,
            true,
            vec![MacAddr([2, 0, 0, 0, 2, 0])],
            Arc::new(ConnCounts::new()),
        )
        .expect("flow table");
        let template: Vec<Vec<u8>> = (0..1024u16)
            .map(|i| frame(10000 + i, [172, 30, 0, 10], false))
            .collect();
        let mut work = template.clone();
        let mut slot = [0u8; HEAD_CAP];
        let rounds = 2000u32;
        let start = Instant::now();
        for r in 0..rounds {
            for (w, t) in work.iter_mut().zip(&template) {
                w.copy_from_slice(t);
                let n = w.len() - VNET_HDR_LEN;
                let v = fwd.process(
                    &snap,
                    &neigh,
                    &counters,
                    RxFrame {
                        buf: w,
                        wire_len: n,
                        status: 0,
                        scratch: false,
                    },
                    r,
                );
                if let Verdict::Compose { packets, .. } = v {
                    for k in 0..packets {
                        black_box(fwd.compose.fill(k, &mut slot));
                    }
                }
                black_box(&slot);
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / (f64::from(rounds) * 1024.0);
        println!("  {name:<10} {ns:6.1}");
    }
}
