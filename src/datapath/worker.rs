//! A worker thread: drains its receive rings batch by batch, forwards with one `sendmmsg` per
//! egress interface per batch, reaps expired flows a little at a time, and sleeps in `poll`
//! only when every ring is empty (and, with `[ring] busy_poll_us`, has stayed empty that long).
//! Under sustained load it waits `[ring] coalesce_us` between small rounds, so frames are
//! forwarded in batches rather than one per syscall.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::datapath::coalesce::Coalescer;
use crate::datapath::counters::{DropReason, WorkerCounters, bump};
use crate::datapath::fullnat::{LaddrCounters, PortPool};
use crate::datapath::process::{Forwarder, Verdict};
use crate::flow::FlowKey;
use crate::flow::tcp_state::TcpState;
use crate::io::clock;
use crate::io::ring::RxRing;
use crate::io::socket::wait_readable;
use crate::io::tx::{Forwarding, TxQueue};
use crate::io::wakeup::Wakeup;
use crate::model::RealId;
use crate::neigh::cache::NeighTable;
use crate::snapshot::SharedSnapshot;

/// Flow-table slots examined per batch, and per idle wake-up.
/// Expiry keeps pace with the traffic: slots examined per frame handled in a round, with a
/// floor and a ceiling per round, so its cost stays proportional (the bench's profile showed a
/// fixed per-round sweep costing 5–13 % of a worker). The big sweep runs only once `poll` has
/// timed out, i.e. when there was truly nothing to do.
const EXPIRE_PER_FRAME: usize = 2;
const EXPIRE_MIN_PER_ROUND: usize = 64;
const EXPIRE_MAX_PER_ROUND: usize = 1024;
const EXPIRE_PER_IDLE: usize = 16384;
/// How many frames ahead of the one being processed a worker prefetches flow slots: enough
/// to cover a memory access (~100–300 ns in a VM) with the ~20–40 ns of work per frame, few
/// enough that the lines are still in L1 when their frame comes.
const PREFETCH_AHEAD: usize = 8;
/// Idle sleep bound: how quickly a worker notices shutdown with no traffic.
const IDLE_POLL_MS: i32 = 50;

/// One live flow, as a connection listing (`-Lc`) shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub key: FlowKey,
    pub real: RealId,
    pub state: TcpState,
    /// Milliseconds until the flow expires.
    pub expires_in: u32,
}

/// Requests the control thread sends a worker. Served between batches; a worker asleep in
/// `poll` answers within its idle wake-up bound (`IDLE_POLL_MS`).
pub enum WorkerRequest {
    /// Every live flow of this worker's table. The reply allocates, but on request, never on
    /// the packet path.
    DumpFlows(crossbeam_channel::Sender<Vec<FlowRecord>>),
    /// The ports of a FullNAT local address this worker owns, built by the control thread
    /// (so the worker never allocates them) and sent before the snapshot that uses it.
    LocalPorts {
        addr: u32,
        pool: Box<PortPool>,
        counters: Arc<LaddrCounters>,
    },
}

/// How the control thread reaches a worker: its request queue, and the wake-up that gets an
/// idle worker out of `poll` to serve it.
#[derive(Clone)]
pub struct WorkerInbox {
    pub requests: crossbeam_channel::Sender<WorkerRequest>,
    pub wakeup: Arc<Wakeup>,
}

impl WorkerInbox {
    /// Queues `req` (waiting while the queue is full, as the worker empties it between
    /// rounds) and wakes the worker; false if the worker is gone.
    pub fn send(&self, req: WorkerRequest) -> bool {
        let sent = self.requests.send(req).is_ok();
        self.wakeup.wake();
        sent
    }
}

/// One receive ring of a worker (one per served interface).
pub struct RxPort {
    pub fd: OwnedFd,
    pub ring: RxRing,
}

/// Everything a worker owns, built on the control thread and moved into the worker thread.
pub struct Worker {
    pub index: usize,
    pub core: Option<core_affinity::CoreId>,
    pub rx: Vec<RxPort>,
    /// Transmit sockets, by interface index (the snapshot's `egress`).
    pub tx: Vec<OwnedFd>,
    pub tx_queue_capacity: usize,
    /// How long the rings must stay empty before the worker sleeps (`[ring] busy_poll_us`).
    pub busy_poll: Duration,
    /// Wait between small rounds under sustained load (`[ring] coalesce_us`); zero = none.
    pub coalesce: Duration,
    pub forwarder: Forwarder,
    pub counters: Arc<WorkerCounters>,
    pub snapshot: SharedSnapshot,
    pub neigh: Arc<NeighTable>,
    pub stop: Arc<AtomicBool>,
    pub requests: crossbeam_channel::Receiver<WorkerRequest>,
    /// Rung with each request (see [`WorkerInbox`]).
    pub wakeup: Arc<Wakeup>,
}

impl Worker {
    pub fn run(mut self) {
        if let Some(core) = self.core {
            if !core_affinity::set_for_current(core) {
                log::warn!("worker {}: could not pin to core {}", self.index, core.id);
            }
        }
        let mut queues: Vec<TxQueue> = self
            .tx
            .iter()
            .map(|fd| TxQueue::new(fd.as_raw_fd(), self.tx_queue_capacity))
            .collect();
        let mut pollfds: Vec<libc::pollfd> = self
            .rx
            .iter()
            .map(|p| libc::pollfd {
                fd: p.fd.as_raw_fd(),
                events: libc::POLLIN | libc::POLLERR,
                revents: 0,
            })
            .chain(std::iter::once(libc::pollfd {
                fd: self.wakeup.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }))
            .collect();
        let c = Arc::clone(&self.counters);
        let mut coalescer = Coalescer::new(self.coalesce);
        if coalescer.enabled() {
            // The default 50 µs slack would double a 50 µs wait.
            crate::io::thread::set_timer_slack_ns(1000);
        }
        let mut last_traffic = Instant::now();
        let mut seen_generation = u64::MAX;
        while !self.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let now = clock::now_ms();
            let snap = self.snapshot.load();
            // A new snapshot may use a FullNAT local address whose ports the control thread
            // sent just before publishing it: take them before the first frame needs them.
            if snap.generation != seen_generation {
                seen_generation = snap.generation;
                let ports = &self.forwarder.local_ports;
                if snap.laddrs().iter().any(|a| !ports.has(*a)) {
                    while let Ok(req) = self.requests.try_recv() {
                        serve(&mut self.forwarder, req, now);
                    }
                }
            }
            let mut batches = 0u64;
            // Totals of this round, published once (single-writer counters, but one store per
            // round instead of two per frame).
            let (mut frames, mut bytes) = (0u64, 0u64);
            if let Some(t) = self.forwarder.tap.as_mut() {
                t.refresh(); // trace hook: one relaxed load per round
            }
            for (port_no, port) in self.rx.iter_mut().enumerate() {
                if let Some(t) = self.forwarder.tap.as_mut() {
                    t.ingress = port_no as u16; // trace hook
                }
                // Bounded so one busy interface cannot starve shutdown or the others.
                for _ in 0..64 {
                    let Some(batch) = port.ring.next_batch() else {
                        break;
                    };
                    batches += 1;
                    let mut batch = Forwarding::new(batch, &mut queues);
                    for _ in 0..PREFETCH_AHEAD {
                        match batch.peek_ahead() {
                            Some(ahead) => self.forwarder.prefetch_flow(ahead),
                            None => break,
                        }
                    }
                    loop {
                        if let Some(ahead) = batch.peek_ahead() {
                            self.forwarder.prefetch_flow(ahead);
                        }
                        let Some(frame) = batch.next_frame() else {
                            break;
                        };
                        frames += 1;
                        bytes += frame.wire_len as u64;
                        let verdict = self.forwarder.process(&snap, &self.neigh, &c, frame, now);
                        match verdict {
                            Verdict::Forward { egress } => {
                                if !batch.send(egress) {
                                    c.count_drop(DropReason::TxFailed);
                                }
                            }
                            Verdict::Compose { egress, packets } => {
                                let out = &self.forwarder.compose;
                                let failed = batch.send_composed(egress, packets, |k, slot| {
                                    let p = out.fill(k, slot);
                                    (p.head_len, p.payload_from..p.payload_from + p.payload_len)
                                });
                                for _ in 0..failed {
                                    c.count_drop(DropReason::TxFailed);
                                }
                            }
                            Verdict::Drop(_) => {}
                        }
                    }
                    account(&c, batch.finish());
                }
            }
            if frames > 0 {
                bump(&c.totals.rx_frames, frames);
                bump(&c.totals.rx_bytes, bytes);
                let budget = (frames as usize * EXPIRE_PER_FRAME)
                    .clamp(EXPIRE_MIN_PER_ROUND, EXPIRE_MAX_PER_ROUND);
                self.forwarder.expire_some(&snap, now, budget);
            }
            drop(snap);
            while let Ok(req) = self.requests.try_recv() {
                serve(&mut self.forwarder, req, now);
            }
            c.totals
                .flows
                .store(self.forwarder.flows.len() as u64, Ordering::Relaxed);
            let wait = coalescer.after_round(frames);
            if batches > 0 {
                last_traffic = started;
                bump(&c.totals.batches, batches);
                bump(&c.totals.busy_us, started.elapsed().as_micros() as u64);
                if let Some(wait) = wait {
                    bump(&c.totals.coalesce_waits, 1);
                    std::thread::sleep(wait);
                }
            } else if started.duration_since(last_traffic) < self.busy_poll {
                // A frame that lands now is seen on the next round instead of after a wake-up
                // through the scheduler (bench full7, over the kernel's nft path: added p50
                // 61 µs sleeping, 16 µs polling).
                // Spin, not sched_yield: yielding measured worse (added p50 39 vs 24 µs), and the
                // scheduler still preempts the worker for a thread that shares its core.
                std::hint::spin_loop();
            } else if !wait_readable(&mut pollfds, IDLE_POLL_MS) {
                // Idle for a whole poll period: sweep a large part of the table.
                let snap = self.snapshot.load();
                self.forwarder
                    .expire_some(&snap, clock::now_ms(), EXPIRE_PER_IDLE);
            } else if pollfds
                .last()
                .is_some_and(|p| p.revents & libc::POLLIN != 0)
            {
                // Woken for a request: served at the top of the next round.
                self.wakeup.clear();
            }
        }
    }
}

/// Serves one request from the control thread, between rounds.
fn serve(forwarder: &mut Forwarder, req: WorkerRequest, now: u32) {
    match req {
        WorkerRequest::LocalPorts {
            addr,
            pool,
            counters,
        } => forwarder.local_ports.add(addr, *pool, counters),
        WorkerRequest::DumpFlows(reply) => {
            let mut out = Vec::with_capacity(forwarder.flows.len());
            forwarder.flows.for_each_live(now, |key, flow| {
                out.push(FlowRecord {
                    key: *key,
                    real: flow.real,
                    state: flow.state,
                    expires_in: flow.expires.wrapping_sub(now),
                });
            });
            // The requester may have given up waiting; that is fine.
            let _ = reply.send(out);
        }
    }
}

fn account(c: &WorkerCounters, f: crate::io::tx::Flushed) {
    bump(&c.totals.forwarded, f.sent);
    bump(&c.totals.tx_syscalls, f.syscalls);
    for _ in 0..f.failed {
        c.count_drop(DropReason::TxFailed);
    }
}
