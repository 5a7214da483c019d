//! Scheduler pick cost, flow-table costs from 10^4 to 10^7 flows (lookup, insert, bytes per
//! flow, worst single `expire_some` call with the workers' per-batch budget), and the
//! persistence-template table. Prints figures; asserts nothing.
//! Run: `cargo bench --bench sched`.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Instant;

use uvs::conns::{ConnCounts, Thresholds};
use uvs::datapath::flow_table::FlowTable;
use uvs::datapath::templates::{TemplateKey, TemplateTable};
use uvs::flow::FlowKey;
use uvs::flow::TcpState;
use uvs::model::{RealId, SchedFlags, SchedulerKind};
use uvs::sched::Dest;
use uvs::sched::Scheduler;

/// Slots a worker's `expire_some` examines per batch (datapath::worker::EXPIRE_PER_BATCH).
const EXPIRE_PER_BATCH: usize = 256;
/// ... and per idle wake-up (EXPIRE_PER_IDLE).
const EXPIRE_PER_IDLE: usize = 16384;

fn key(i: u32) -> FlowKey {
    FlowKey {
        saddr: 0x0a00_0000 ^ i.wrapping_mul(2_654_435_761),
        daddr: 0x0a00_0064,
        sport: (i & 0xffff) as u16,
        dport: 80,
        proto: 6,
    }
}

fn picks() {
    let reals: Vec<Dest> = (0..8u32)
        .map(|i| Dest {
            id: RealId(NonZeroU32::new(i + 1).unwrap_or(NonZeroU32::MIN)),
            addr: 0x0a00_000b + i,
            weight: i % 3 + 1,
            last_weight: i % 3 + 1,
            thresholds: Thresholds::default(),
        })
        .collect();
    let conns = ConnCounts::new();
    for (i, r) in reals.iter().enumerate() {
        conns.set(r.id, 10 + (i as u32 * 7) % 13, 100 + i as u32 * 3);
    }
    let keys: Vec<FlowKey> = (0..4096).map(key).collect();
    println!("scheduler pick over 8 reals (weights 1..3, 10..22 active conns), ns per pick:");
    let n = 2_000_000usize;
    for kind in SchedulerKind::ALL {
        let s = Scheduler::build(kind, &reals, SchedFlags::default(), 80);
        let start = Instant::now();
        for i in 0..n {
            black_box(s.pick(&reals, &keys[i & 4095], &conns, 0));
        }
        let ns = start.elapsed().as_nanos() as f64 / n as f64;
        println!("  {:<6} {ns:6.1}", kind.name());
    }
}

fn flow_tables() {
    println!(
        "flow table: {} bytes per flow; table sized 2x the flows; ns per op; worst single expire_some:",
        FlowTable::bytes_per_flow()
    );
    let id = RealId(NonZeroU32::MIN);
    for flows in [10_000usize, 100_000, 1_000_000, 10_000_000] {
        let mut t = FlowTable::new(flows * 2).expect("flow table");
        let s = Instant::now();
        for i in 0..flows as u32 {
            // Half expire at 1 s, half at 1000 s.
            let exp = if i % 2 == 0 { 1_000 } else { 1_000_000 };
            black_box(t.insert(&key(i), id, TcpState::Established, exp, 0, None, None));
        }
        let ins = s.elapsed().as_nanos() as f64 / flows as f64;
        let s = Instant::now();
        let mut hits = 0usize;
        for i in (0..flows as u32).rev() {
            hits += usize::from(t.lookup(&key(i), 1).is_some());
        }
        let look = s.elapsed().as_nanos() as f64 / flows as f64;
        // Reap the expired half call by call with the per-batch budget, as a busy worker does,
        // timing each call. The maximum includes any preemption of this thread by the host.
        let mut calls: Vec<u128> = Vec::new();
        let mut removed = 0;
        while removed < flows / 2 && calls.len() < 4 * t.capacity() / EXPIRE_PER_BATCH + 16 {
            let s = Instant::now();
            removed += t.expire_some(2_000, EXPIRE_PER_BATCH, |_| {});
            calls.push(s.elapsed().as_nanos());
        }
        calls.sort_unstable();
        let pct = |p: f64| calls[((calls.len() - 1) as f64 * p) as usize] as f64 / 1e3;
        let s = Instant::now();
        t.expire_some(2_000, EXPIRE_PER_IDLE, |_| {});
        let idle = s.elapsed().as_nanos() as f64 / 1e3;
        println!(
            "  {flows:>9} flows: lookup {look:6.1}  insert {ins:6.1}  (hits {hits}, evictions {}); \
             expire_some({EXPIRE_PER_BATCH}) us p50 {:.2} p99.9 {:.2} max {:.1}; \
             idle call ({EXPIRE_PER_IDLE}) {idle:.1} us; {} MiB",
            t.evictions,
            pct(0.5),
            pct(0.999),
            pct(1.0),
            (t.capacity() * FlowTable::bytes_per_flow()) >> 20
        );
    }
}

fn templates() {
    let t = TemplateTable::new(1 << 20);
    let n = 500_000u32;
    let tk = |i: u32| TemplateKey {
        proto: 6,
        snet: 0xac10_0000 + i,
        vip: 0x0a00_0064,
        vport: 80,
    };
    let id = RealId(NonZeroU32::MIN);
    let s = Instant::now();
    for i in 0..n {
        black_box(t.insert(&tk(i), id, 300_000, 0, true, |_| true));
    }
    let ins = s.elapsed().as_nanos() as f64 / f64::from(n);
    let s = Instant::now();
    for i in 0..n {
        black_box(t.lookup(&tk(i), 1, true, |_| true));
    }
    let hit = s.elapsed().as_nanos() as f64 / f64::from(n);
    println!(
        "persistence templates: {} bytes each, {} slots ({} MiB); {n} templates: insert {ins:.1} ns, hit {hit:.1} ns",
        TemplateTable::bytes_per_template(),
        t.capacity(),
        (t.capacity() * TemplateTable::bytes_per_template()) >> 20
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    picks();
    templates();
    flow_tables();
}
