//! Decision trace and capture: what the workers decided, streamed to `uvs trace` / `uvs capture`.
//!
//! Cost rules:
//! - Nobody attached: a worker does one relaxed load of [`TraceHub::armed`] per loop round
//!   (per batch round, never per packet) and nothing else.
//! - Attached: per packet, the worker checks the sessions' filters (a few integer compares),
//!   a per-second rate limit, and writes one fixed-size [`Record`] into its own preallocated
//!   single-producer/single-consumer ring: no allocation, no formatting, no lock, no syscall
//!   but one vDSO clock read. A full ring drops the *record* (counted in
//!   [`TraceHub::dropped`]); the packet is forwarded regardless.
//! - The control thread drains the rings every tick and hands batches of records to each
//!   session's own thread through a bounded channel (a full channel drops the batch, counted);
//!   that thread formats and writes to the client. Nothing on the forwarding path waits.
//!
//! A record holds the frame as transmitted (or as received, for a drop) up to [`SNAPLEN`]
//! bytes, plus the received Ethernet header, TTL and IP checksum, so the capture writes the
//! received frame and the sent frame exactly, side by side.

use std::cell::UnsafeCell;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};

use crate::conns::ConnCounts;
use crate::datapath::counters::DropReason;
use crate::sched::Scheduler;
use crate::snapshot::ServiceEntry;
use crate::wire::ipv4_from_u32;

/// Frame bytes kept per record (headers and the start of the payload).
pub const SNAPLEN: usize = 256;
/// Records per worker ring (power of two).
pub const RING_RECORDS: usize = 2048;
/// Reals whose figures a scheduling explanation keeps.
pub const WHY_REALS: usize = 8;
/// Concurrent sessions (e.g. one `uvs trace` and one `uvs capture`).
pub const MAX_SESSIONS: usize = 2;
/// Default per-worker rate limit, records per second.
pub const DEFAULT_RATE: u32 = 20_000;

/// What a session wants to see. Zero fields match everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceFilter {
    pub vip: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub client: Option<Ipv4Addr>,
    /// Stop after this many decisions (0 = until the client disconnects).
    pub count: u64,
    /// Records per second per worker (0 = [`DEFAULT_RATE`]).
    pub rate: u32,
}

/// One real server's figures at decision time.
#[derive(Clone, Copy, Debug, Default)]
pub struct WhyReal {
    pub addr: u32,
    pub weight: u32,
    pub active: u32,
    pub inactive: u32,
    pub usable: bool,
}

/// Why the scheduler chose its real server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Why {
    /// `SchedulerKind` name index (see [`sched_name`]); 0xff = unknown.
    pub sched: u8,
    /// Position of the chosen real in the service's list, and the list's length.
    pub chosen: u8,
    pub n: u8,
    /// wrr: current weight after the pick.
    pub cw: i64,
    /// How the real was found: [`VIA_SCHEDULER`], [`VIA_TEMPLATE_HIT`], ...
    pub via: u8,
    /// One-packet scheduling (UDP `-o`): no flow entry is kept.
    pub ops: bool,
    /// Persistence netmask of the service (the template's client network).
    pub pmask: u32,
    pub reals: [WhyReal; WHY_REALS],
}

/// The scheduler picked the real (not persistent).
pub const VIA_SCHEDULER: u8 = 0;
/// Persistent service: an existing template for the client's network placed the flow; the
/// scheduler was not asked.
pub const VIA_TEMPLATE_HIT: u8 = 1;
/// Persistent service: no template yet; the scheduler picked and a template was created.
pub const VIA_TEMPLATE_NEW: u8 = 2;
/// Persistent service, but the template table was full: scheduled without persistence.
pub const VIA_TEMPLATE_FULL: u8 = 3;
/// A flow synced from the former MASTER (HA), adopted with the real it had there.
pub const VIA_SYNCED: u8 = 4;

pub const KIND_FORWARD: u8 = 1;
pub const KIND_DROP: u8 = 2;

/// One decision, fixed size, written by a worker.
#[derive(Clone, Copy)]
pub struct Record {
    pub kind: u8,
    pub worker: u8,
    pub new_flow: bool,
    pub tcp_flags: u8,
    pub proto: u8,
    pub drop_reason: u8,
    /// Bit per session whose filter matched.
    pub sessions: u8,
    pub ingress: u16,
    pub egress: u16,
    /// CLOCK_REALTIME, nanoseconds.
    pub time_ns: u64,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub real_addr: u32,
    /// Received Ethernet header, TTL and IP header checksum (bytes 10-11 of the IP header).
    pub rx_eth: [u8; 14],
    pub rx_ttl: u8,
    pub rx_csum: [u8; 2],
    pub why: Why,
    /// Frame length on the wire and the bytes kept (as sent, or as received for a drop).
    pub wire_len: u32,
    pub cap_len: u16,
    pub bytes: [u8; SNAPLEN],
}

impl Default for Record {
    fn default() -> Self {
        Record {
            kind: 0,
            worker: 0,
            new_flow: false,
            tcp_flags: 0,
            proto: 0,
            drop_reason: 0,
            sessions: 0,
            ingress: 0,
            egress: 0,
            time_ns: 0,
            saddr: 0,
            daddr: 0,
            sport: 0,
            dport: 0,
            real_addr: 0,
            rx_eth: [0; 14],
            rx_ttl: 0,
            rx_csum: [0; 2],
            why: Why::default(),
            wire_len: 0,
            cap_len: 0,
            bytes: [0; SNAPLEN],
        }
    }
}

impl Record {
    /// The frame as received: the kept bytes with the received Ethernet header, TTL and IP
    /// checksum put back (a forward changes nothing else).
    pub fn received_frame(&self) -> Vec<u8> {
        let mut f = self.bytes[..usize::from(self.cap_len)].to_vec();
        if self.kind == KIND_FORWARD && f.len() >= 14 + 12 {
            f[..14].copy_from_slice(&self.rx_eth);
            f[14 + 8] = self.rx_ttl;
            f[14 + 10..14 + 12].copy_from_slice(&self.rx_csum);
        }
        f
    }

    pub fn sent_frame(&self) -> &[u8] {
        &self.bytes[..usize::from(self.cap_len)]
    }

    pub fn drop_reason(&self) -> Option<DropReason> {
        DropReason::ALL.get(usize::from(self.drop_reason)).copied()
    }
}

/// A single-producer, single-consumer ring of records. The producer is the one worker whose
/// [`Tap`] owns the producer side; the consumer is the control thread (behind a mutex that
/// only the control side ever takes).
pub struct Ring {
    slots: Box<[UnsafeCell<Record>]>,
    head: CachePadded<AtomicUsize>,
    tail: CachePadded<AtomicUsize>,
    producer_taken: AtomicBool,
}

// SAFETY: slots are written only by the single producer at positions in [tail, tail + cap)
// that it owns until it publishes them with a release store of `head`; the single consumer reads
// a slot only after an acquire load of `head` shows it published, and hands it back with a
// release store of `tail`. One producer (enforced by `producer_taken`) and one consumer
// (enforced by `TraceHub::consumer`) never touch the same slot at the same time.
unsafe impl Sync for Ring {}
// SAFETY: see above; the records are plain data.
unsafe impl Send for Ring {}

impl Ring {
    fn new(cap: usize) -> Ring {
        assert!(cap.is_power_of_two());
        Ring {
            slots: (0..cap)
                .map(|_| UnsafeCell::new(Record::default()))
                .collect(),
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            producer_taken: AtomicBool::new(false),
        }
    }

    /// Producer only: fills the next slot with `fill`; `false` if the ring is full.
    #[inline]
    fn push(&self, fill: impl FnOnce(&mut Record)) -> bool {
        let h = self.head.load(Ordering::Relaxed);
        let t = self.tail.load(Ordering::Acquire);
        if h.wrapping_sub(t) >= self.slots.len() {
            return false;
        }
        let slot = &self.slots[h & (self.slots.len() - 1)];
        // SAFETY: slot `h` is not yet published (h - t < cap), so the consumer does not read
        // it, and only this producer writes.
        fill(unsafe { &mut *slot.get() });
        self.head.store(h.wrapping_add(1), Ordering::Release);
        true
    }

    /// Consumer only: copies out every published record.
    fn drain(&self, out: &mut Vec<Record>) {
        let t = self.tail.load(Ordering::Relaxed);
        let h = self.head.load(Ordering::Acquire);
        let mut i = t;
        while i != h {
            let slot = &self.slots[i & (self.slots.len() - 1)];
            // SAFETY: published by the producer (acquire above) and not handed back yet.
            out.push(unsafe { *slot.get() });
            i = i.wrapping_add(1);
        }
        self.tail.store(h, Ordering::Release);
    }
}

/// One attached session's filter, as workers read it (atomics; 0 = any).
#[derive(Default)]
struct SessionSlot {
    active: AtomicBool,
    vip: AtomicU32,
    port: AtomicU32,
    client: AtomicU32,
}

/// Shared between the control thread (sessions, draining) and the workers (taps).
pub struct TraceHub {
    armed: AtomicBool,
    rate: AtomicU32,
    slots: [SessionSlot; MAX_SESSIONS],
    rings: Vec<Ring>,
    /// Records lost to a full ring, or to the rate limit.
    pub dropped_full: AtomicU64,
    pub dropped_rate: AtomicU64,
    /// Records lost because a session's queue to its reader thread was full.
    pub dropped_queue: AtomicU64,
    consumer: Mutex<()>,
}

impl TraceHub {
    pub fn new(workers: usize) -> TraceHub {
        TraceHub {
            armed: AtomicBool::new(false),
            rate: AtomicU32::new(DEFAULT_RATE),
            slots: Default::default(),
            rings: (0..workers).map(|_| Ring::new(RING_RECORDS)).collect(),
            dropped_full: AtomicU64::new(0),
            dropped_rate: AtomicU64::new(0),
            dropped_queue: AtomicU64::new(0),
            consumer: Mutex::new(()),
        }
    }

    /// The producer side of worker `index`'s ring; `None` if already taken.
    pub fn tap(self: &std::sync::Arc<Self>, index: usize) -> Option<Tap> {
        let ring = self.rings.get(index)?;
        if ring.producer_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Tap {
            hub: std::sync::Arc::clone(self),
            index,
            armed: false,
            ingress: 0,
            second: 0,
            in_second: 0,
            note: Note::default(),
        })
    }

    /// Claims a free session slot with `filter`; `None` if every slot is in use.
    pub fn attach(&self, filter: &TraceFilter) -> Option<usize> {
        for (i, s) in self.slots.iter().enumerate() {
            if s.active.load(Ordering::Acquire) {
                continue;
            }
            s.vip
                .store(filter.vip.map_or(0, u32::from), Ordering::Relaxed);
            s.port
                .store(filter.port.map_or(0, u32::from), Ordering::Relaxed);
            s.client
                .store(filter.client.map_or(0, u32::from), Ordering::Relaxed);
            s.active.store(true, Ordering::Release);
            let r = if filter.rate == 0 {
                DEFAULT_RATE
            } else {
                filter.rate
            };
            self.rate.store(r, Ordering::Relaxed);
            self.armed.store(true, Ordering::Release);
            return Some(i);
        }
        None
    }

    pub fn detach(&self, slot: usize) {
        if let Some(s) = self.slots.get(slot) {
            s.active.store(false, Ordering::Release);
        }
        let any = self.slots.iter().any(|s| s.active.load(Ordering::Acquire));
        self.armed.store(any, Ordering::Release);
    }

    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// Control thread: every record published so far, all workers.
    pub fn drain(&self, out: &mut Vec<Record>) {
        let _g = self.consumer.lock().unwrap_or_else(|e| e.into_inner());
        for r in &self.rings {
            r.drain(out);
        }
    }

    fn matches(&self, saddr: u32, daddr: u32, dport: u16) -> u8 {
        let mut m = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if !s.active.load(Ordering::Relaxed) {
                continue;
            }
            let vip = s.vip.load(Ordering::Relaxed);
            let port = s.port.load(Ordering::Relaxed);
            let client = s.client.load(Ordering::Relaxed);
            if (vip == 0 || vip == daddr)
                && (port == 0 || port == u32::from(dport))
                && (client == 0 || client == saddr)
            {
                m |= 1 << i;
            }
        }
        m
    }
}

/// What `decide` noted about a decision while armed.
#[derive(Clone, Copy, Default)]
pub struct Note {
    pub new_flow: bool,
    pub real_addr: u32,
    pub why: Why,
}

/// A worker's producer side. Lives in the worker's `Forwarder`.
pub struct Tap {
    hub: std::sync::Arc<TraceHub>,
    index: usize,
    /// Cached [`TraceHub::armed`], refreshed once per loop round by the worker.
    pub armed: bool,
    /// Interface index of the ring being drained (set by the worker per ring).
    pub ingress: u16,
    second: u64,
    in_second: u32,
    pub note: Note,
}

impl Tap {
    /// One relaxed load; the worker calls this once per loop round.
    #[inline]
    pub fn refresh(&mut self) {
        self.armed = self.hub.armed();
    }

    /// Records one decision. `frame` is the Ethernet frame after the decision (rewritten if
    /// forwarded); `rx` what [`rx_header`] kept of it before.
    pub fn record(
        &mut self,
        frame: &[u8],
        wire_len: usize,
        rx: &([u8; 14], u8, [u8; 2]),
        verdict: Result<u16, DropReason>,
    ) {
        let ingress = self.ingress;
        // Cheap parse: IPs and ports are never rewritten, so the rewritten frame will do.
        let (saddr, daddr, sport, dport, proto, flags) = flow_fields(frame);
        let sessions = self.hub.matches(saddr, daddr, dport);
        if sessions == 0 {
            return;
        }
        let now = realtime_ns();
        let sec = now / 1_000_000_000;
        if sec != self.second {
            self.second = sec;
            self.in_second = 0;
        }
        if self.in_second >= self.hub.rate.load(Ordering::Relaxed) {
            self.hub.dropped_rate.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.in_second += 1;
        let note = self.note;
        let worker = self.index as u8;
        let ok = self.hub.rings[self.index].push(|r| {
            r.worker = worker;
            r.sessions = sessions;
            r.time_ns = now;
            r.saddr = saddr;
            r.daddr = daddr;
            r.sport = sport;
            r.dport = dport;
            r.proto = proto;
            r.tcp_flags = flags;
            r.ingress = ingress;
            r.new_flow = note.new_flow;
            r.why = note.why;
            r.real_addr = note.real_addr;
            match verdict {
                Ok(e) => {
                    r.kind = KIND_FORWARD;
                    r.egress = e;
                    r.drop_reason = 0;
                }
                Err(d) => {
                    r.kind = KIND_DROP;
                    r.egress = u16::MAX;
                    r.drop_reason = DropReason::ALL.iter().position(|x| *x == d).unwrap_or(0) as u8;
                }
            }
            r.rx_eth = rx.0;
            r.rx_ttl = rx.1;
            r.rx_csum = rx.2;
            let n = frame.len().min(SNAPLEN);
            r.bytes[..n].copy_from_slice(&frame[..n]);
            r.cap_len = n as u16;
            r.wire_len = wire_len as u32;
        });
        if !ok {
            self.hub.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the worker keeps of the received frame before deciding (only when armed).
#[inline]
pub fn rx_header(frame: &[u8]) -> ([u8; 14], u8, [u8; 2]) {
    let mut eth = [0u8; 14];
    let mut ttl = 0;
    let mut csum = [0u8; 2];
    if frame.len() >= 14 {
        eth.copy_from_slice(&frame[..14]);
    }
    if frame.len() >= 14 + 12 {
        ttl = frame[14 + 8];
        csum.copy_from_slice(&frame[14 + 10..14 + 12]);
    }
    (eth, ttl, csum)
}

/// (saddr, daddr, sport, dport, proto, tcp flags) of an Ethernet/IPv4 frame; zeros where the
/// frame is too short or not IPv4.
pub fn flow_fields(f: &[u8]) -> (u32, u32, u16, u16, u8, u8) {
    if f.len() < 34 || f[12] != 0x08 || f[13] != 0 {
        return (0, 0, 0, 0, 0, 0);
    }
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let saddr = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let daddr = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let proto = ip[9];
    let l4 = ip.get(ihl..).unwrap_or(&[]);
    let (sport, dport) = if l4.len() >= 4 && (proto == 6 || proto == 17) {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    } else {
        (0, 0)
    };
    let flags = if proto == 6 && l4.len() >= 14 {
        l4[13]
    } else {
        0
    };
    (saddr, daddr, sport, dport, proto, flags)
}

pub fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

const SCHED_NAMES: [&str; 14] = [
    "rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf", "dh", "sh", "mh", "twos", "lblc", "lblcr",
];

pub fn sched_name(code: u8) -> &'static str {
    SCHED_NAMES.get(usize::from(code)).copied().unwrap_or("?")
}

fn sched_code(s: &Scheduler) -> u8 {
    match s {
        Scheduler::Rr(_) => 0,
        Scheduler::Wrr(_) => 1,
        Scheduler::Lc(_) => 2,
        Scheduler::Wlc(_) => 3,
        Scheduler::Sed(_) => 4,
        Scheduler::Nq(_) => 5,
        Scheduler::Fo(_) => 6,
        Scheduler::Ovf(_) => 7,
        Scheduler::Dh(_) => 8,
        Scheduler::Sh(_) => 9,
        Scheduler::Mh(_) => 10,
        Scheduler::Twos(_) => 11,
        Scheduler::Lblc(_) => 12,
        Scheduler::Lblcr(_) => 13,
    }
}

/// The scheduler's inputs around a pick (called right after `pick`, before the new flow is
/// bound, so the counts are the ones it compared). Only when a trace is armed.
pub fn explain(svc: &ServiceEntry, conns: &ConnCounts, chosen: usize) -> Why {
    let mut w = Why {
        sched: sched_code(&svc.scheduler),
        chosen: chosen.min(255) as u8,
        n: svc.reals.len().min(255) as u8,
        cw: 0,
        via: VIA_SCHEDULER,
        ops: svc.ops,
        pmask: svc.persistence.map_or(u32::MAX, |p| p.netmask),
        reals: [WhyReal::default(); WHY_REALS],
    };
    if let Scheduler::Wrr(s) = &svc.scheduler {
        w.cw = s.current_weight();
    }
    for (slot, r) in w.reals.iter_mut().zip(&svc.reals) {
        *slot = WhyReal {
            addr: r.addr,
            weight: r.weight,
            active: conns.active(r.id),
            inactive: conns.inactive(r.id),
            usable: crate::sched::usable(r, conns),
        };
    }
    w
}

fn tcp_flags(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, '.'),
        (0x20, 'U'),
    ] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if s.is_empty() { "none".into() } else { s }
}

fn mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `HH:MM:SS.micro` (UTC).
pub fn clock(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        (ns % 1_000_000_000) / 1000
    )
}

/// Why this real was chosen, in words: the persistence template, or the scheduler.
pub fn explain_text(w: &Why) -> String {
    let mut s = String::new();
    if w.ops {
        s.push_str("ops: one-packet scheduling, every datagram scheduled, no flow kept; ");
    }
    let real = w
        .reals
        .get(usize::from(w.chosen))
        .filter(|_| w.chosen < w.n)
        .map(|r| ipv4_from_u32(r.addr).to_string())
        .unwrap_or_else(|| "?".into());
    let len = w.pmask.leading_ones();
    match w.via {
        VIA_TEMPLATE_HIT => {
            s.push_str(&format!(
                "persistent template hit -> {real}: client net /{len} already placed there, {} not asked",
                sched_name(w.sched)
            ));
            return s;
        }
        VIA_TEMPLATE_NEW => s.push_str(&format!(
            "no persistence template for the client net /{len}: new template -> {real}, "
        )),
        VIA_TEMPLATE_FULL => {
            s.push_str("persistence template table full: scheduled without a template, ")
        }
        VIA_SYNCED => {
            s.push_str(&format!(
                "synced from the former MASTER: adopted with its real {real}, not scheduled"
            ));
            return s;
        }
        _ => {}
    }
    s.push_str(&sched_text(w));
    s
}

/// Why this scheduler chose, in words.
fn sched_text(w: &Why) -> String {
    let name = sched_name(w.sched);
    let n = usize::from(w.n).min(WHY_REALS);
    let reals = &w.reals[..n];
    let ip = |r: &WhyReal| ipv4_from_u32(r.addr).to_string();
    match name {
        "rr" => format!(
            "rr: position {}/{} (next usable after the previous pick)",
            usize::from(w.chosen) + 1,
            w.n
        ),
        "wrr" => format!(
            "wrr: cw={} picks the next real with weight >= cw (weights {})",
            w.cw,
            reals
                .iter()
                .map(|r| format!("{}={}", ip(r), r.weight))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        "lc" | "wlc" | "sed" | "nq" | "fo" | "ovf" | "twos" | "lblc" | "lblcr" => {
            let figs = reals
                .iter()
                .map(|r| {
                    let oh = u64::from(r.active) * 256 + u64::from(r.inactive);
                    format!(
                        "{} oh={}({}a/{}i)/w{}{}",
                        ip(r),
                        oh,
                        r.active,
                        r.inactive,
                        r.weight,
                        if r.usable { "" } else { " unusable" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let rule = match name {
                "lc" => "least overhead (active*256+inactive)",
                "wlc" | "lblc" | "lblcr" => "least overhead/weight",
                "sed" => "least (active+1)/weight",
                "nq" => "an idle real, else least (active+1)/weight",
                "fo" => "highest weight",
                "ovf" => "highest weight below its threshold",
                _ => "least loaded of two random picks",
            };
            format!("{name}: {rule}: {figs}")
        }
        "dh" | "sh" | "mh" => format!(
            "{name}: hash of the {} address -> position {}/{}",
            if name == "dh" {
                "destination"
            } else {
                "source"
            },
            usize::from(w.chosen) + 1,
            w.n
        ),
        _ => format!("{name}: position {}", w.chosen),
    }
}

/// One line per decision, as `uvs trace` prints it. `ifname` names interface indexes.
pub fn format_record(r: &Record, ifname: &dyn Fn(u16) -> String) -> String {
    let proto = match r.proto {
        6 => "tcp",
        17 => "udp",
        _ => "ip",
    };
    let mut s = format!(
        "{} w{} {}:{} > {}:{} {proto}",
        clock(r.time_ns),
        r.worker,
        ipv4_from_u32(r.saddr),
        r.sport,
        ipv4_from_u32(r.daddr),
        r.dport
    );
    if r.proto == 6 {
        s.push_str(&format!(" [{}]", tcp_flags(r.tcp_flags)));
    }
    s.push_str(&format!(" in {}", ifname(r.ingress)));
    let rx_dst = mac(&r.rx_eth[0..6]);
    let rx_src = mac(&r.rx_eth[6..12]);
    if r.kind == KIND_DROP {
        let reason = r.drop_reason().map_or("?", |d| d.name());
        s.push_str(&format!(
            " DROP {reason}: {} (mac {rx_src} > {rx_dst})",
            drop_explanation(reason)
        ));
        return s;
    }
    let out = r.sent_frame();
    let (tx_dst, tx_src) = if out.len() >= 12 {
        (mac(&out[0..6]), mac(&out[6..12]))
    } else {
        (String::new(), String::new())
    };
    if r.new_flow {
        s.push_str(&format!(
            " {} -> {} ({})",
            if r.why.ops {
                "ops datagram"
            } else {
                "new flow"
            },
            ipv4_from_u32(r.real_addr),
            explain_text(&r.why)
        ));
    } else {
        s.push_str(&format!(" existing flow -> {}", ipv4_from_u32(r.real_addr)));
    }
    s.push_str(&format!(
        " | mac {rx_src} > {rx_dst} => {tx_src} > {tx_dst} ttl {}->{} out {}",
        r.rx_ttl,
        r.rx_ttl.saturating_sub(1),
        ifname(r.egress)
    ));
    s
}

pub fn drop_explanation(reason: &str) -> &'static str {
    match reason {
        "tcp_no_flow" => "not a SYN and no flow for it (IPVS without sloppy_tcp drops it too)",
        "no_real_server" => "no usable real server (none, or all weight 0/overloaded)",
        "real_removed" => "the flow's real server was deleted",
        "no_neighbor" => "the real server's MAC is not known (no ARP answer yet)",
        "ttl_exceeded" => "TTL would reach 0",
        "not_a_service" => "to a VIP but no service on that protocol/port",
        "fragment" => "IP fragments are not reassembled",
        "bad_ip_checksum" => "bad IPv4 header checksum",
        "bad_source" => "broadcast/multicast/zero source",
        "tx_failed" => "the kernel refused to send it",
        _ => "malformed or unsupported frame",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ring_is_fifo_and_drops_when_full() {
        let hub = Arc::new(TraceHub::new(1));
        let mut tap = hub.tap(0).unwrap();
        assert!(hub.tap(0).is_none(), "one producer per ring");
        let slot = hub
            .attach(&TraceFilter {
                rate: 1_000_000,
                ..Default::default()
            })
            .unwrap();
        tap.refresh();
        assert!(tap.armed);
        let mut frame = vec![0u8; 60];
        frame[12] = 8;
        frame[14] = 0x45;
        frame[14 + 9] = 6;
        for i in 0..RING_RECORDS + 10 {
            frame[14 + 15] = i as u8;
            tap.record(&frame, 60, &rx_header(&frame), Ok(0));
        }
        assert_eq!(hub.dropped_full.load(Ordering::Relaxed), 10);
        let mut out = Vec::new();
        hub.drain(&mut out);
        assert_eq!(out.len(), RING_RECORDS);
        assert_eq!(out[1].saddr & 0xff, 1);
        hub.detach(slot);
        tap.refresh();
        assert!(!tap.armed);
    }

    #[test]
    fn filter_and_received_frame_restoration() {
        let hub = Arc::new(TraceHub::new(1));
        let mut tap = hub.tap(0).unwrap();
        hub.attach(&TraceFilter {
            client: Some(Ipv4Addr::new(1, 2, 3, 4)),
            ..Default::default()
        })
        .unwrap();
        let mut f = vec![0u8; 60];
        f[12] = 8;
        f[14] = 0x45;
        f[14 + 8] = 64;
        f[14 + 9] = 6;
        f[14 + 12..14 + 16].copy_from_slice(&[1, 2, 3, 4]);
        f[..6].copy_from_slice(&[2, 0, 0, 0, 2, 0]);
        let rx = rx_header(&f);
        let mut sent = f.clone();
        sent[..6].copy_from_slice(&[2, 0, 0, 0, 0x11, 0]);
        sent[14 + 8] = 63;
        tap.record(&sent, 60, &rx, Ok(0));
        let mut other = f.clone();
        other[14 + 15] = 5;
        tap.record(&other, 60, &rx_header(&other), Ok(0));
        let mut out = Vec::new();
        hub.drain(&mut out);
        assert_eq!(out.len(), 1, "client filter");
        assert_eq!(out[0].received_frame(), f);
        assert_eq!(out[0].sent_frame(), &sent[..]);
    }
}

// ---- sessions: control thread side ----

/// What a streaming client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamMode {
    /// One text line per decision (and ARP event).
    Trace,
    /// pcapng bytes.
    Capture,
}

/// Sent from the control thread to a session's thread.
pub enum Msg {
    Records(Vec<Record>),
    /// An event the control thread formatted itself (ARP).
    Line(String),
}

/// One attached `uvs trace` / `uvs capture`, as the control thread keeps it.
pub struct Session {
    pub slot: usize,
    pub mode: StreamMode,
    pub filter: TraceFilter,
    tx: crossbeam_channel::Sender<Msg>,
    done: std::sync::Arc<AtomicBool>,
}

/// Batches of records queued per session before the control thread starts dropping them.
const SESSION_QUEUE: usize = 256;

/// Writes one chunk of the stream: u32 big-endian length, then the bytes.
fn write_chunk(w: &mut impl std::io::Write, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(&(bytes.len() as u32).to_be_bytes())?;
    w.write_all(bytes)
}

/// Starts a session on `stream` (the request was read and authorised; the `Streaming` reply
/// has been written). The session's own thread formats and writes; the control thread feeds
/// it with [`pump`]. `Err` if every slot is taken.
pub fn start_session(
    hub: &std::sync::Arc<TraceHub>,
    mode: StreamMode,
    filter: TraceFilter,
    mut stream: std::os::unix::net::UnixStream,
    ifnames: Vec<String>,
) -> std::io::Result<Session> {
    let Some(slot) = hub.attach(&filter) else {
        return Err(std::io::Error::other(
            "every trace slot is in use (one trace and one capture at a time)",
        ));
    };
    let (tx, rx) = crossbeam_channel::bounded::<Msg>(SESSION_QUEUE);
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let done2 = std::sync::Arc::clone(&done);
    let hub2 = std::sync::Arc::clone(hub);
    let spawned = std::thread::Builder::new()
        .name("uvs-trace".into())
        .spawn(move || {
            let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(5)));
            let r = run_session(&hub2, mode, filter, &mut stream, &rx, &ifnames);
            if let Err(e) = r {
                log::debug!("trace session ended: {e}");
            }
            done2.store(true, Ordering::Release);
        });
    if let Err(e) = spawned {
        hub.detach(slot);
        return Err(e);
    }
    log::info!("trace session attached ({mode:?}, {filter:?})");
    Ok(Session {
        slot,
        mode,
        filter,
        tx,
        done,
    })
}

fn peer_gone(stream: &std::os::unix::net::UnixStream) -> bool {
    let mut b = [0u8; 1];
    let _ = stream.set_nonblocking(true);
    let gone = matches!(std::io::Read::read(&mut &*stream, &mut b), Ok(0));
    let _ = stream.set_nonblocking(false);
    gone
}

fn run_session(
    hub: &TraceHub,
    mode: StreamMode,
    filter: TraceFilter,
    stream: &mut std::os::unix::net::UnixStream,
    rx: &crossbeam_channel::Receiver<Msg>,
    ifnames: &[String],
) -> std::io::Result<()> {
    let name = |i: u16| {
        ifnames
            .get(usize::from(i))
            .cloned()
            .unwrap_or_else(|| format!("if{i}"))
    };
    let (full0, rate0) = (
        hub.dropped_full.load(Ordering::Relaxed) + hub.dropped_queue.load(Ordering::Relaxed),
        hub.dropped_rate.load(Ordering::Relaxed),
    );
    let mut lost_shown = (0, 0);
    match mode {
        StreamMode::Capture => write_chunk(stream, &crate::capture::header(ifnames))?,
        StreamMode::Trace => write_chunk(
            stream,
            format!(
                "# uvs trace: {}; times UTC; oh = active*256+inactive (IPVS overhead)\n",
                describe(&filter)
            )
            .as_bytes(),
        )?,
    }
    let mut seen = 0u64;
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(250)) {
            Ok(Msg::Records(v)) => {
                let mut text = String::new();
                for r in &v {
                    match mode {
                        StreamMode::Trace => {
                            text.push_str(&format_record(r, &name));
                            text.push('\n');
                        }
                        StreamMode::Capture => {
                            write_chunk(stream, &crate::capture::record_blocks(r, &name))?
                        }
                    }
                    seen += 1;
                    if filter.count != 0 && seen >= filter.count {
                        break;
                    }
                }
                if !text.is_empty() {
                    write_chunk(stream, text.as_bytes())?;
                }
                if filter.count != 0 && seen >= filter.count {
                    return Ok(());
                }
            }
            Ok(Msg::Line(l)) => {
                if mode == StreamMode::Trace {
                    write_chunk(stream, format!("{l}\n").as_bytes())?;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if peer_gone(stream) {
                    return Ok(());
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Ok(()),
        }
        let lost = (
            hub.dropped_full.load(Ordering::Relaxed) + hub.dropped_queue.load(Ordering::Relaxed)
                - full0,
            hub.dropped_rate.load(Ordering::Relaxed) - rate0,
        );
        if mode == StreamMode::Trace && lost != lost_shown {
            write_chunk(
                stream,
                format!(
                    "# trace records lost since attach: {} (buffer full), {} (rate limit); packets are unaffected\n",
                    lost.0, lost.1
                )
                .as_bytes(),
            )?;
            lost_shown = lost;
        }
    }
}

fn describe(f: &TraceFilter) -> String {
    let mut parts = Vec::new();
    match (f.vip, f.port) {
        (Some(v), Some(p)) => parts.push(format!("service {v}:{p}")),
        (Some(v), None) => parts.push(format!("VIP {v}")),
        (None, Some(p)) => parts.push(format!("port {p}")),
        _ => {}
    }
    if let Some(c) = f.client {
        parts.push(format!("client {c}"));
    }
    if parts.is_empty() {
        "every decision".into()
    } else {
        parts.join(", ")
    }
}

/// Control thread, every tick: detaches finished sessions, drains the workers' rings and
/// hands each session its records. Never blocks: a session whose queue is full loses that
/// batch (counted as lost records).
pub fn pump(hub: &TraceHub, sessions: &mut Vec<Session>, buf: &mut Vec<Record>) {
    sessions.retain(|s| {
        let keep = !s.done.load(Ordering::Acquire);
        if !keep {
            hub.detach(s.slot);
            log::info!("trace session detached ({:?})", s.mode);
        }
        keep
    });
    buf.clear();
    hub.drain(buf);
    if buf.is_empty() {
        return;
    }
    // Workers' rings interleave: show decisions in time order.
    buf.sort_by_key(|r| r.time_ns);
    for s in sessions.iter() {
        let bit = 1u8 << s.slot;
        let mine: Vec<Record> = buf
            .iter()
            .filter(|r| r.sessions & bit != 0)
            .copied()
            .collect();
        let n = mine.len() as u64;
        if n > 0 && s.tx.try_send(Msg::Records(mine)).is_err() {
            hub.dropped_queue.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Lost trace/capture records by reason, for the metrics (`uvs_trace_records_dropped_total`):
/// a worker's ring was full, the per-worker rate limit, a session's queue was full.
pub fn dropped_by_reason(hub: &TraceHub) -> [(&'static str, u64); 3] {
    [
        ("ring_full", hub.dropped_full.load(Ordering::Relaxed)),
        ("rate_limit", hub.dropped_rate.load(Ordering::Relaxed)),
        (
            "session_queue_full",
            hub.dropped_queue.load(Ordering::Relaxed),
        ),
    ]
}

/// Control thread (HA): a trace line per VRRP state change between two listings, with the
/// VIPs it concerns: what the change means for ARP and forwarding.
pub fn vrrp_events(
    before: &[crate::vrrp::runtime::InstanceStatus],
    after: &[crate::vrrp::runtime::InstanceStatus],
) -> Vec<(Vec<Ipv4Addr>, String)> {
    use crate::vrrp::machine::State;
    let t = clock(realtime_ns());
    let mut out = Vec::new();
    for a in after {
        let Some(b) = before.iter().find(|b| b.name == a.name) else {
            continue;
        };
        if a.state == b.state {
            continue;
        }
        let vips = a
            .vips
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let what = match a.state {
            State::Master => format!(
                "uvs now answers ARP for {vips} and forwards to it; gratuitous ARP announces it"
            ),
            State::Backup => format!(
                "master is {}: uvs stops answering ARP for {vips}; frames to it are dropped (not_a_service)",
                a.master.map_or("unknown".to_string(), |m| m.to_string())
            ),
            State::Fault => format!("tracked interface down: {vips} not answered"),
            State::Init => String::new(),
        };
        out.push((
            a.vips.clone(),
            format!(
                "{t} VRRP {} (vrid {} on {}, priority {}): {} -> {}: {what}",
                a.name,
                a.vrid,
                a.interface,
                a.priority,
                b.state.name(),
                a.state.name()
            ),
        ));
    }
    out
}

/// Control thread: an ARP event line for the trace sessions whose filter concerns `ips`.
pub fn arp_event(sessions: &[Session], ips: &[Ipv4Addr], line: &str) {
    for s in sessions.iter().filter(|s| s.mode == StreamMode::Trace) {
        if s.filter.client.is_some() {
            continue;
        }
        if let Some(v) = s.filter.vip {
            if !ips.contains(&v) {
                continue;
            }
        }
        let _ = s.tx.try_send(Msg::Line(line.to_string()));
    }
}

/// Client side: reads the stream's chunks until EOF, `stop()` or an error, handing each to
/// `sink`. Returns the number of chunks.
pub fn read_stream(
    stream: &mut std::os::unix::net::UnixStream,
    stop: &dyn Fn() -> bool,
    sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    use std::io::Read;
    stream.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
    let mut n = 0;
    let mut read_exact = |buf: &mut [u8], may_stop: bool| -> std::io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match stream.read(&mut buf[got..]) {
                Ok(0) => return Ok(false),
                Ok(k) => got += k,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    if got == 0 && may_stop && stop() {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    };
    loop {
        let mut len = [0u8; 4];
        if !read_exact(&mut len, true)? {
            return Ok(n);
        }
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        if !read_exact(&mut buf, false)? {
            return Ok(n);
        }
        sink(&buf)?;
        n += 1;
    }
}

/// The forwarding cost of a trace, in memory (no sockets): `cargo test --release --lib
/// trace::cost -- --ignored --nocapture`. Figures are in docs/trace-and-capture.md.
#[cfg(test)]
mod cost {
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::datapath::counters::WorkerCounters;
    use crate::datapath::process::Forwarder;
    use crate::io::VNET_HDR_LEN;
    use crate::io::ring::RxFrame;
    use crate::model::{Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec, ServiceTable};
    use crate::neigh::cache::NeighTable;
    use crate::snapshot::{Placement, Snapshot};
    use crate::wire::MacAddr;

    struct Lan;
    impl Placement for Lan {
        fn place(&mut self, addr: Ipv4Addr) -> Option<(u16, u32)> {
            Some((0, u32::from(addr) & 0xff))
        }
    }

    fn frame(sport: u16, syn: bool) -> Vec<u8> {
        let mut out = vec![0u8; VNET_HDR_LEN];
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 2, 0])
            .ipv4([172, 30, 0, 10], [10, 0, 0, 100], 64)
            .tcp(sport, 80, 1, 65535);
        let b = if syn { b.syn() } else { b.ack(1) };
        b.write(&mut out, &[]).unwrap();
        out
    }

    /// ns per packet over `rounds` passes of established-flow ACKs.
    fn run(
        fwd: &mut Forwarder,
        snap: &Snapshot,
        neigh: &NeighTable,
        hub: Option<&TraceHub>,
    ) -> f64 {
        let c = WorkerCounters::new();
        let mut frames: Vec<Vec<u8>> = (0..1024u16).map(|i| frame(10000 + i, true)).collect();
        for f in frames.iter_mut() {
            let n = f.len() - VNET_HDR_LEN;
            fwd.process(
                snap,
                neigh,
                &c,
                RxFrame {
                    buf: f,
                    wire_len: n,
                    status: 0,
                    scratch: false,
                },
                0,
            );
        }
        let mut acks: Vec<Vec<u8>> = (0..1024u16).map(|i| frame(10000 + i, false)).collect();
        let mut sink = Vec::with_capacity(RING_RECORDS);
        let rounds = 2000;
        let t = Instant::now();
        for _ in 0..rounds {
            if let Some(tap) = fwd.tap.as_mut() {
                tap.refresh();
            }
            for f in acks.iter_mut() {
                // Undo the previous rewrite so every pass forwards the same frame.
                f[VNET_HDR_LEN..VNET_HDR_LEN + 12]
                    .copy_from_slice(&[2, 0, 0, 0, 2, 0, 2, 0, 0, 0, 1, 1]);
                let n = f.len() - VNET_HDR_LEN;
                let v = fwd.process(
                    snap,
                    neigh,
                    &c,
                    RxFrame {
                        buf: f,
                        wire_len: n,
                        status: 0,
                        scratch: false,
                    },
                    1,
                );
                std::hint::black_box(v);
            }
            if let Some(h) = hub {
                sink.clear();
                h.drain(&mut sink);
            }
        }
        t.elapsed().as_nanos() as f64 / (rounds * 1024) as f64
    }

    /// Runs `frames` through a forwarder with a trace attached; returns the trace lines.
    fn traced_lines(t: &ServiceTable, frames: Vec<Vec<u8>>) -> Vec<String> {
        let snap = Snapshot::build(t, 1, &mut Lan).unwrap();
        let neigh = NeighTable::new(256);
        neigh.set(11, Some(MacAddr([2, 0, 0, 0, 0x11, 0])));
        neigh.set(12, Some(MacAddr([2, 0, 0, 0, 0x12, 0])));
        let mut fwd = Forwarder::new(
            1 << 10,
            false,
            vec![MacAddr([2, 0, 0, 0, 2, 0])],
            Arc::new(crate::conns::ConnCounts::new()),
        )
        .unwrap();
        let hub = Arc::new(TraceHub::new(1));
        fwd.tap = hub.tap(0);
        hub.attach(&TraceFilter::default()).unwrap();
        fwd.tap.as_mut().unwrap().refresh();
        let c = WorkerCounters::new();
        for mut f in frames {
            let n = f.len() - VNET_HDR_LEN;
            let rx = RxFrame {
                buf: &mut f,
                wire_len: n,
                status: 0,
                scratch: false,
            };
            fwd.process(&snap, &neigh, &c, rx, 0);
        }
        let mut recs = Vec::new();
        hub.drain(&mut recs);
        recs.iter()
            .map(|r| format_record(r, &|_| "eth0".to_string()))
            .collect()
    }

    fn two_reals(proto: Protocol, port: u16, f: impl FnOnce(&mut ServiceSpec)) -> ServiceTable {
        let mut t = ServiceTable::new();
        let key = ServiceKey::addr(proto, Ipv4Addr::new(10, 0, 0, 100), port);
        let mut spec = ServiceSpec::new(key, SchedulerKind::Rr);
        f(&mut spec);
        t.add_service(spec).unwrap();
        for i in 0..2u8 {
            t.add_real(&key, RealSpec::route(Ipv4Addr::new(10, 0, 0, 11 + i), port))
                .unwrap();
        }
        t
    }

    #[test]
    fn persistent_template_hit_is_named_in_the_trace() {
        let t = two_reals(Protocol::Tcp, 80, |s| s.persistence_timeout = Some(300));
        // Three connections from one client: the first creates the template, the others are
        // placed by it (rr alone would alternate).
        let lines = traced_lines(
            &t,
            vec![frame(10000, true), frame(10001, true), frame(10002, true)],
        );
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(
            lines[0].contains(
                "new flow -> 10.0.0.11 (no persistence template for the client net /32: new template -> 10.0.0.11, rr: position 1/2"
            ),
            "{}",
            lines[0]
        );
        for l in &lines[1..] {
            assert!(
                l.contains(
                    "new flow -> 10.0.0.11 (persistent template hit -> 10.0.0.11: client net /32 already placed there, rr not asked)"
                ),
                "{l}"
            );
        }
    }

    #[test]
    fn one_packet_scheduling_is_named_in_the_trace() {
        let t = two_reals(Protocol::Udp, 53, |s| s.ops = true);
        let udp = |sport: u16| {
            let mut out = vec![0u8; VNET_HDR_LEN];
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 2, 0])
                .ipv4([172, 30, 0, 10], [10, 0, 0, 100], 64)
                .udp(sport, 53)
                .write(&mut out, b"q")
                .unwrap();
            out
        };
        // The same 4-tuple twice: with OPS each datagram is scheduled on its own.
        let lines = traced_lines(&t, vec![udp(5000), udp(5000)]);
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(
            lines[0].contains("ops datagram -> 10.0.0.11 (ops: one-packet scheduling"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("ops datagram -> 10.0.0.12"),
            "{}",
            lines[1]
        );
    }

    #[test]
    #[ignore]
    fn forwarding_cost_with_a_trace_attached() {
        let mut t = ServiceTable::new();
        let key = ServiceKey {
            proto: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 0, 0, 100),
            port: 80,
            fwmark: 0,
        };
        t.add_service(ServiceSpec::new(key, SchedulerKind::Rr))
            .unwrap();
        for i in 0..2u8 {
            t.add_real(&key, RealSpec::route(Ipv4Addr::new(10, 0, 0, 11 + i), 80))
                .unwrap();
        }
        let snap = Snapshot::build(&t, 1, &mut Lan).unwrap();
        let neigh = NeighTable::new(256);
        neigh.set(11, Some(MacAddr([2, 0, 0, 0, 0x11, 0])));
        neigh.set(12, Some(MacAddr([2, 0, 0, 0, 0x12, 0])));
        let new_fwd = || {
            Forwarder::new(
                1 << 16,
                false,
                vec![MacAddr([2, 0, 0, 0, 2, 0])],
                Arc::new(crate::conns::ConnCounts::new()),
            )
            .unwrap()
        };
        let mut f0 = new_fwd();
        let base = run(&mut f0, &snap, &neigh, None);
        let hub = Arc::new(TraceHub::new(1));
        let mut f1 = new_fwd();
        f1.tap = hub.tap(0);
        let idle = run(&mut f1, &snap, &neigh, None);
        let hub2 = Arc::new(TraceHub::new(1));
        let mut f2 = new_fwd();
        f2.tap = hub2.tap(0);
        hub2.attach(&TraceFilter {
            rate: u32::MAX,
            ..Default::default()
        })
        .unwrap();
        let all = run(&mut f2, &snap, &neigh, Some(&hub2));
        let hub3 = Arc::new(TraceHub::new(1));
        let mut f3 = new_fwd();
        f3.tap = hub3.tap(0);
        hub3.attach(&TraceFilter {
            client: Some(Ipv4Addr::new(192, 168, 1, 1)),
            ..Default::default()
        })
        .unwrap();
        let filtered = run(&mut f3, &snap, &neigh, Some(&hub3));
        println!(
            "ns/packet (established flow): no tap {base:.1}; tap, nobody attached {idle:.1}; \
             attached, every packet recorded {all:.1}; attached, filtered out {filtered:.1}; \
             records lost to full ring {}",
            hub2.dropped_full.load(Ordering::Relaxed)
        );
    }
}
