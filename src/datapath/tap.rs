//! The datapath's side of `uvs trace` and `uvs capture`: per-worker rings of fixed-size
//! decision records. Formatting, sessions and the client live in `crate::trace`.
//!
//! Cost rules:
//! - Nobody attached: a worker does one relaxed load of [`TraceHub::armed`] per loop round
//!   (per batch round, never per packet) and nothing else.
//! - Attached: per packet, the worker checks the sessions' filters against the received
//!   frame (a few integer compares). Only a matching frame costs more: a per-second rate
//!   limit, a copy of the received frame's head, the decision, and one fixed-size [`Record`]
//!   into the worker's own bounded ring (preallocated; no allocation, no formatting, no lock,
//!   no syscall but one vDSO clock read). A full ring drops the *record* (counted in
//!   [`TraceHub::dropped_full`]); the packet is forwarded regardless.
//! - The control thread drains the rings every tick and hands the records to the sessions.
//!
//! A record keeps the frame as received and as transmitted, each up to [`SNAPLEN`] bytes, so
//! every rewrite a forwarding method makes (MACs, addresses, ports, an outer header) shows
//! side by side.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::conns::ConnCounts;
use crate::datapath::counters::{DropReason, ReuseReason};
use crate::io::clock::realtime_ns;
use crate::model::SchedulerKind;
use crate::sched::{Scheduler, usable};
use crate::snapshot::ServiceEntry;
use crate::wire;

/// Frame bytes kept per record and direction (headers and the start of the payload).
pub const SNAPLEN: usize = 256;
/// Records per worker ring.
pub const RING_RECORDS: usize = 2048;
/// Reals whose figures a scheduling explanation keeps.
pub const WHY_REALS: usize = 8;
/// Concurrent sessions (e.g. one `uvs trace` and one `uvs capture`).
pub const MAX_SESSIONS: usize = 2;
/// Default per-worker rate limit, records per second.
pub const DEFAULT_RATE: u32 = 20_000;

/// What a session wants to see. `None` fields match everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// How the real server of a new flow was found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Via {
    /// The scheduler picked it (the service is not persistent).
    #[default]
    Scheduler,
    /// Persistent service: an existing template for the client's network placed the flow;
    /// the scheduler was not asked.
    TemplateHit,
    /// Persistent service: no template yet; the scheduler picked and a template was created.
    TemplateNew,
    /// Persistent service, but the template table was full: scheduled without persistence.
    TemplateFull,
    /// A flow synced from the former MASTER (HA), adopted with the real it had there.
    Synced,
}

/// Why the real server was chosen.
#[derive(Clone, Copy, Debug, Default)]
pub struct Why {
    /// The service's scheduler (`None` until explained).
    pub sched: Option<SchedulerKind>,
    /// Position of the chosen real in the service's list, and the list's length.
    pub chosen: u8,
    pub n: u8,
    /// wrr: current weight after the pick.
    pub cw: i64,
    pub via: Via,
    /// One-packet scheduling (UDP `-o`): no flow entry is kept.
    pub ops: bool,
    /// sh/mh: the client's port was hashed with its address (`sh-port`, `mh-port`).
    pub hash_port: bool,
    /// Persistence netmask of the service (the template's client network).
    pub pmask: u32,
    pub reals: [WhyReal; WHY_REALS],
}

/// The head of a frame as it was on the wire.
#[derive(Clone, Copy)]
pub struct FrameHead {
    /// Length on the wire.
    pub wire_len: u32,
    /// Bytes kept in `bytes`.
    pub cap_len: u16,
    pub bytes: [u8; SNAPLEN],
}

impl Default for FrameHead {
    fn default() -> Self {
        FrameHead {
            wire_len: 0,
            cap_len: 0,
            bytes: [0; SNAPLEN],
        }
    }
}

impl FrameHead {
    pub fn copy(frame: &[u8], wire_len: usize) -> FrameHead {
        let mut h = FrameHead::default();
        let n = frame.len().min(SNAPLEN);
        h.bytes[..n].copy_from_slice(&frame[..n]);
        h.cap_len = n as u16;
        h.wire_len = u32::try_from(wire_len).unwrap_or(u32::MAX);
        h
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.cap_len)]
    }
}

/// What became of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Forwarded { egress: u16 },
    Dropped(DropReason),
}

/// One decision, fixed size, written by a worker.
#[derive(Clone, Copy)]
pub struct Record {
    pub worker: u8,
    /// Bit per session whose filter matched.
    pub sessions: u8,
    pub outcome: Outcome,
    pub new_flow: bool,
    pub reuse: Option<ReuseReason>,
    pub reply: bool,
    pub ingress: u16,
    /// CLOCK_REALTIME, nanoseconds.
    pub time_ns: u64,
    /// The received frame's flow fields (zeros where it has none).
    pub fields: wire::FlowFields,
    pub real_addr: u32,
    pub why: Why,
    pub received: FrameHead,
    /// The transmitted frame (empty for a drop).
    pub sent: FrameHead,
}

impl Default for Record {
    fn default() -> Self {
        Record {
            worker: 0,
            sessions: 0,
            outcome: Outcome::Dropped(DropReason::Truncated),
            new_flow: false,
            reuse: None,
            reply: false,
            ingress: 0,
            time_ns: 0,
            fields: wire::FlowFields::default(),
            real_addr: 0,
            why: Why::default(),
            received: FrameHead::default(),
            sent: FrameHead::default(),
        }
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

/// One worker's ring: a bounded lock-free queue whose buffer is allocated once, here.
struct Ring {
    tx: crossbeam_channel::Sender<Record>,
    rx: crossbeam_channel::Receiver<Record>,
    producer_taken: AtomicBool,
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
}

impl TraceHub {
    pub fn new(workers: usize) -> TraceHub {
        TraceHub {
            armed: AtomicBool::new(false),
            rate: AtomicU32::new(DEFAULT_RATE),
            slots: Default::default(),
            rings: (0..workers)
                .map(|_| {
                    let (tx, rx) = crossbeam_channel::bounded(RING_RECORDS);
                    Ring {
                        tx,
                        rx,
                        producer_taken: AtomicBool::new(false),
                    }
                })
                .collect(),
            dropped_full: AtomicU64::new(0),
            dropped_rate: AtomicU64::new(0),
            dropped_queue: AtomicU64::new(0),
        }
    }

    /// The producer side of worker `index`'s ring; `None` if already taken.
    pub fn tap(self: &Arc<Self>, index: usize) -> Option<Tap> {
        let ring = self.rings.get(index)?;
        if ring.producer_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Tap {
            hub: Arc::clone(self),
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
        for r in &self.rings {
            out.extend(r.rx.try_iter());
        }
    }

    /// Bit per session whose filter matches a frame from `saddr` to `daddr:dport`.
    fn matches(&self, f: &wire::FlowFields) -> u8 {
        let mut m = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if !s.active.load(Ordering::Relaxed) {
                continue;
            }
            let vip = s.vip.load(Ordering::Relaxed);
            let port = s.port.load(Ordering::Relaxed);
            let client = s.client.load(Ordering::Relaxed);
            if (vip == 0 || vip == f.daddr)
                && (port == 0 || port == u32::from(f.dport))
                && (client == 0 || client == f.saddr)
            {
                m |= 1 << i;
            }
        }
        m
    }
}

/// What the decision noted about itself while a trace was armed.
#[derive(Clone, Copy, Default)]
pub struct Note {
    pub new_flow: bool,
    /// A SYN on an old flow's five-tuple started this new flow, for this reason.
    pub reuse: Option<ReuseReason>,
    /// A real server's reply, rewritten back (NAT).
    pub reply: bool,
    pub real_addr: u32,
    pub why: Why,
}

/// A worker's producer side. Lives in the worker's `Forwarder`.
pub struct Tap {
    hub: Arc<TraceHub>,
    index: usize,
    /// Cached [`TraceHub::armed`], refreshed once per loop round by the worker.
    pub armed: bool,
    /// Interface index of the ring being drained (set by the worker per ring).
    pub ingress: u16,
    second: u64,
    in_second: u32,
    pub note: Note,
}

/// A received frame a session wants recorded: its fields, the sessions, its head.
pub struct Pending {
    fields: wire::FlowFields,
    sessions: u8,
    time_ns: u64,
    received: FrameHead,
}

impl Tap {
    /// One relaxed load; the worker calls this once per loop round.
    #[inline]
    pub fn refresh(&mut self) {
        self.armed = self.hub.armed();
    }

    /// Before the decision: `Some` if a session wants this received frame recorded and the
    /// rate limit lets it through (the frame's head is copied then, and only then).
    pub fn want(&mut self, frame: &[u8], wire_len: usize) -> Option<Pending> {
        let fields = wire::FlowFields::of_frame(frame);
        let sessions = self.hub.matches(&fields);
        if sessions == 0 {
            return None;
        }
        let now = realtime_ns();
        let sec = now / 1_000_000_000;
        if sec != self.second {
            self.second = sec;
            self.in_second = 0;
        }
        if self.in_second >= self.hub.rate.load(Ordering::Relaxed) {
            self.hub.dropped_rate.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.in_second += 1;
        self.note = Note::default();
        Some(Pending {
            fields,
            sessions,
            time_ns: now,
            received: FrameHead::copy(frame, wire_len),
        })
    }

    /// After the decision: records it. `sent` is the transmitted frame (empty for a drop).
    pub fn record(&mut self, p: Pending, outcome: Outcome, sent: &[u8], sent_wire_len: usize) {
        let note = self.note;
        let rec = Record {
            worker: u8::try_from(self.index).unwrap_or(u8::MAX),
            sessions: p.sessions,
            outcome,
            new_flow: note.new_flow,
            reuse: note.reuse,
            reply: note.reply,
            ingress: self.ingress,
            time_ns: p.time_ns,
            fields: p.fields,
            real_addr: note.real_addr,
            why: note.why,
            received: p.received,
            sent: FrameHead::copy(sent, sent_wire_len),
        };
        let pushed = self
            .hub
            .rings
            .get(self.index)
            .is_some_and(|r| r.tx.try_send(rec).is_ok());
        if !pushed {
            self.hub.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The scheduler's inputs around a pick (called right after `pick`, before the new flow is
/// bound, so the counts are the ones it compared). Only when a trace is armed.
pub fn explain(svc: &ServiceEntry, conns: &ConnCounts, chosen: usize) -> Why {
    let mut w = Why {
        sched: Some(svc.scheduler.kind()),
        chosen: chosen.min(255) as u8,
        n: svc.reals.len().min(255) as u8,
        cw: 0,
        via: Via::Scheduler,
        ops: svc.ops,
        hash_port: svc.scheduler.hashes_port(),
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
            usable: usable(r, conns),
        };
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(client: [u8; 4], last: u8) -> Vec<u8> {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 2, 0], [2, 0, 0, 0, 1, 0])
            .ipv4(client, [10, 0, 0, last], 64)
            .tcp(40000, 80, 1, 1000)
            .syn()
            .write(&mut f, &[])
            .unwrap();
        f
    }

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
        for i in 0..RING_RECORDS + 10 {
            let f = frame([172, 30, 0, 10], i as u8);
            let p = tap.want(&f, f.len()).unwrap();
            tap.record(p, Outcome::Forwarded { egress: 0 }, &f, f.len());
        }
        assert_eq!(hub.dropped_full.load(Ordering::Relaxed), 10);
        let mut out = Vec::new();
        hub.drain(&mut out);
        assert_eq!(out.len(), RING_RECORDS);
        assert_eq!(out[1].fields.daddr & 0xff, 1);
        hub.detach(slot);
        tap.refresh();
        assert!(!tap.armed);
    }

    #[test]
    fn only_matching_frames_are_recorded_with_both_heads() {
        let hub = Arc::new(TraceHub::new(1));
        let mut tap = hub.tap(0).unwrap();
        hub.attach(&TraceFilter {
            client: Some(Ipv4Addr::new(1, 2, 3, 4)),
            ..Default::default()
        })
        .unwrap();
        let received = frame([1, 2, 3, 4], 100);
        let mut sent = received.clone();
        sent[..6].copy_from_slice(&[2, 0, 0, 0, 0x11, 0]);
        let p = tap.want(&received, received.len()).unwrap();
        tap.record(p, Outcome::Forwarded { egress: 0 }, &sent, sent.len());
        let other = frame([1, 2, 3, 5], 100);
        assert!(tap.want(&other, other.len()).is_none(), "client filter");
        let mut out = Vec::new();
        hub.drain(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].received.bytes(), &received[..]);
        assert_eq!(out[0].sent.bytes(), &sent[..]);
    }
}
