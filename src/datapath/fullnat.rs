//! FullNAT's per-worker state: the local ports a worker owns on each local address, the
//! connection each port carries, and the TCP rewrites a connection needs besides addresses and
//! ports (DPVS's `fnat_seq`, `tcp_in_remove_ts`).
//!
//! Ports: a request `CIP:cport → VIP:vport` leaves as `LIP:lport → RIP:rport`, and the real's
//! reply comes back to `LIP:lport`. The fanout program sends a frame to `LIP:lport` to the
//! worker `lport % workers` (the kernel takes its result modulo the group's size, and workers
//! join their groups in index order), so a worker only ever hands out the ports it will
//! receive the replies of — DPVS splits ports by their low bits per core for the same reason.
//! The reply then finds its connection by `(LIP, lport)` alone, in the pool's array, with no
//! lookup: the port *is* the index. Ports are handed out oldest-freed first, so a port is not
//! reused while the real may still hold the previous connection in TIME_WAIT (uvs keeps a
//! closed connection, and so its port, for its own TIME_WAIT timeout, 120 s by default, which
//! outlasts Linux's 60 s).
//!
//! Sequence numbers: the PROXY protocol header is sent to the real as the first bytes of the
//! stream, so every later client byte sits `delta` (the header's length) further on for the
//! real: client → real `seq += delta`; real → client `ack −= delta` and SACK edges too.
//! Timestamps: connections of many clients share a local address and port over time, and their
//! clocks differ, so the timestamp option is overwritten with NOPs in the client's SYN (no
//! connection negotiates it), as DPVS does; the real's PAWS then never rejects a new client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use crate::datapath::flow_table::LocalPort;
use crate::model::RealId;
use crate::wire::{MacAddr, be32, csum};

/// Local addresses a worker may hold ports of: the services' own (`model::MAX_LOCAL_ADDRS`)
/// and the director's addresses towards FullNAT reals.
pub const MAX_POOLS: usize = crate::model::MAX_LOCAL_ADDRS + 64;

/// The ports uvs hands out on every local address by default: below Linux's default
/// ephemeral range (32768–60999), so the director's own connections from the same address
/// never pick one (see `daemon` for a range that overlaps).
pub const DEFAULT_PORTS: (u16, u16) = (1024, 32767);

/// What the control thread reads about one local address on one worker.
#[derive(Debug, Default)]
pub struct LaddrCounters {
    /// Ports carrying a connection.
    pub in_use: AtomicU64,
    /// Connections refused because every port was in use (DPVS's "conflicts").
    pub exhausted: AtomicU64,
}

/// A worker's local ports: one pool per local address, sorted by address.
pub struct LocalPorts {
    pools: Vec<(u32, PortPool, Arc<LaddrCounters>)>,
    /// The ports uvs uses on every local address (inclusive).
    pub range: (u16, u16),
    /// Round-robin position over a service's local addresses.
    cursor: usize,
}

/// Why a FullNAT connection got no local port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoPort {
    /// Every port of every candidate address is in use.
    Exhausted,
    /// No pool for the address yet (the control thread sends one before the snapshot that
    /// needs it; seen only if that failed).
    NoPool,
}

impl LocalPorts {
    pub fn new(range: (u16, u16)) -> LocalPorts {
        LocalPorts {
            pools: Vec::with_capacity(MAX_POOLS),
            range,
            cursor: 0,
        }
    }

    /// Takes the pool of `addr` (from the control thread), unless one is there already.
    /// Within [`MAX_POOLS`] this never allocates.
    pub fn add(&mut self, addr: u32, pool: PortPool, counters: Arc<LaddrCounters>) {
        match self.pools.binary_search_by_key(&addr, |p| p.0) {
            Ok(_) => {}
            Err(at) if self.pools.len() < MAX_POOLS => {
                self.pools.insert(at, (addr, pool, counters))
            }
            Err(_) => {
                log::warn!("fullnat: more than {MAX_POOLS} local addresses: {addr:#x} ignored")
            }
        }
    }

    pub fn has(&self, addr: u32) -> bool {
        self.pools.binary_search_by_key(&addr, |p| p.0).is_ok()
    }

    #[inline]
    fn find(&self, addr: u32) -> Option<usize> {
        self.pools.binary_search_by_key(&addr, |p| p.0).ok()
    }

    /// Whether `port` is one uvs hands out (else a reply to it is the kernel's).
    #[inline]
    pub fn in_range(&self, port: u16) -> bool {
        (self.range.0..=self.range.1).contains(&port)
    }

    /// A port on one of `candidates` (a service's local addresses, tried round-robin from the
    /// worker's cursor) for `conn`.
    pub fn allocate(&mut self, candidates: &[u32], conn: FnatConn) -> Result<LocalPort, NoPort> {
        let n = candidates.len();
        let mut why = NoPort::NoPool;
        for i in 0..n {
            let addr = candidates[(self.cursor + i) % n];
            let Some(at) = self.find(addr) else {
                continue;
            };
            let (_, pool, counters) = &mut self.pools[at];
            match pool.allocate(conn) {
                Some(port) => {
                    self.cursor = self.cursor.wrapping_add(1);
                    counters.in_use.store(pool.in_use() as u64, Relaxed);
                    return Ok(LocalPort { addr, port });
                }
                None => {
                    counters.exhausted.fetch_add(1, Relaxed);
                    why = NoPort::Exhausted;
                }
            }
        }
        Err(why)
    }

    /// Gives a port back (its flow ended).
    pub fn release(&mut self, lp: LocalPort) {
        if let Some(at) = self.find(lp.addr) {
            let (_, pool, counters) = &mut self.pools[at];
            pool.release(lp.port);
            counters.in_use.store(pool.in_use() as u64, Relaxed);
        }
    }

    #[inline]
    pub fn conn(&self, lp: LocalPort) -> Option<&FnatConn> {
        self.pools[self.find(lp.addr)?].1.conn(lp.port)
    }

    #[inline]
    pub fn conn_mut(&mut self, lp: LocalPort) -> Option<&mut FnatConn> {
        let at = self.find(lp.addr)?;
        self.pools[at].1.conn_mut(lp.port)
    }
}

/// TCP option kinds.
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_SACK: u8 = 5;
const OPT_TIMESTAMP: u8 = 8;

/// One FullNAT connection, stored at its local port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FnatConn {
    pub in_use: bool,
    /// The client's side: its address and port, and the VIP and port it connected to.
    pub client: u32,
    pub client_port: u16,
    pub vip: u32,
    pub vport: u16,
    pub proto: u8,
    /// The real's address and port, which its replies come from.
    pub real_addr: u32,
    pub real_port: u16,
    pub real: Option<RealId>,
    /// The MAC the client's frames came from (the next hop of replies to an on-link client).
    pub client_mac: MacAddr,
    /// TCP: the client's initial sequence number.
    pub client_isn: u32,
    /// Bytes inserted before the client's first byte (the PROXY header): what client → real
    /// sequence numbers gain and real → client acknowledgements lose.
    pub delta: u32,
    /// The PROXY header is still to be sent or not yet acknowledged by the real.
    pub header_unacked: bool,
    /// The header went out (again: cleared when the real shows it never got it).
    pub header_sent: bool,
    /// Which PROXY header (the service's when the connection began).
    pub proxy: crate::proxy_protocol::Version,
}

impl FnatConn {
    /// The real's acknowledgement `ack`, as the client must see it.
    pub fn ack_to_client(&self, ack: u32) -> u32 {
        let first = self.client_isn.wrapping_add(1);
        // Inside the header (or before it): the client's first byte is still unacknowledged.
        let into_stream = ack.wrapping_sub(first);
        if into_stream < self.delta || into_stream > u32::MAX / 2 {
            first
        } else {
            ack.wrapping_sub(self.delta)
        }
    }

    /// Whether the real's acknowledgement `ack` covers the whole header.
    pub fn acks_header(&self, ack: u32) -> bool {
        let into_stream = ack.wrapping_sub(self.client_isn.wrapping_add(1));
        into_stream >= self.delta && into_stream <= u32::MAX / 2
    }
}

/// The ports of one local address that one worker owns, and their connections.
pub struct PortPool {
    /// First owned port and the distance between owned ports (the number of workers).
    base: u16,
    step: u16,
    /// Free ports, oldest-freed first (a ring: `head` is the next to hand out).
    free: Box<[u16]>,
    head: usize,
    free_len: usize,
    conns: Box<[FnatConn]>,
}

impl PortPool {
    /// The ports `lo..=hi` with `port % workers == worker`, all free.
    pub fn new(lo: u16, hi: u16, workers: u16, worker: u16) -> PortPool {
        let step = workers.max(1);
        let w = worker % step;
        let first = u32::from(lo)
            + (u32::from(w) + u32::from(step) - u32::from(lo) % u32::from(step)) % u32::from(step);
        let ports: Vec<u16> = (first..=u32::from(hi))
            .step_by(usize::from(step))
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        let n = ports.len();
        PortPool {
            base: u16::try_from(first).unwrap_or(u16::MAX),
            step,
            free: ports.into_boxed_slice(),
            head: 0,
            free_len: n,
            conns: vec![FnatConn::default(); n].into_boxed_slice(),
        }
    }

    /// Ports this pool owns.
    pub fn capacity(&self) -> usize {
        self.conns.len()
    }

    /// Ports carrying a connection.
    pub fn in_use(&self) -> usize {
        self.capacity() - self.free_len
    }

    fn index(&self, port: u16) -> Option<usize> {
        let off = port.checked_sub(self.base)?;
        if off % self.step != 0 {
            return None;
        }
        let i = usize::from(off / self.step);
        (i < self.conns.len()).then_some(i)
    }

    /// Takes the oldest free port for `conn`; `None` when every port is in use.
    pub fn allocate(&mut self, conn: FnatConn) -> Option<u16> {
        if self.free_len == 0 {
            return None;
        }
        let port = self.free[self.head];
        self.head = (self.head + 1) % self.free.len();
        self.free_len -= 1;
        let i = self.index(port)?;
        self.conns[i] = FnatConn {
            in_use: true,
            ..conn
        };
        Some(port)
    }

    /// Returns `port` to the pool (its connection ended). A port not in use is left alone.
    pub fn release(&mut self, port: u16) {
        let Some(i) = self.index(port) else { return };
        if !self.conns[i].in_use {
            return;
        }
        self.conns[i].in_use = false;
        let tail = (self.head + self.free_len) % self.free.len();
        self.free[tail] = port;
        self.free_len += 1;
    }

    /// The connection on `port`, if one is.
    #[inline]
    pub fn conn(&self, port: u16) -> Option<&FnatConn> {
        self.index(port)
            .map(|i| &self.conns[i])
            .filter(|c| c.in_use)
    }

    #[inline]
    pub fn conn_mut(&mut self, port: u16) -> Option<&mut FnatConn> {
        let i = self.index(port)?;
        Some(&mut self.conns[i]).filter(|c| c.in_use)
    }
}

/// Where a TCP checksum stands for a rewrite of the segment's own bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// Complete: the rewrite updates it.
    Full,
    /// Partial (checksum offload): the kernel sums the segment on transmit, so a change of
    /// the segment's bytes needs no update.
    Partial,
}

/// Client → real: `seq += delta` (not on a SYN, whose number is the ISN); on a SYN, the
/// timestamp option overwritten with NOPs. `tcp` is the TCP header (options included).
pub fn rewrite_to_real(tcp: &mut [u8], delta: u32, sum: Checksum) {
    let syn = tcp[13] & crate::wire::tcp::SYN != 0;
    if !syn && delta != 0 {
        let seq = be32(tcp, 4);
        replace_u32(tcp, 4, seq.wrapping_add(delta), sum);
    }
    if syn {
        strip_timestamps(tcp, sum);
    }
}

/// Real → client: acknowledgement and SACK edges back into the client's numbering.
pub fn rewrite_to_client(tcp: &mut [u8], conn: &FnatConn, sum: Checksum) {
    if conn.delta == 0 {
        return;
    }
    if tcp[13] & crate::wire::tcp::ACK != 0 {
        let ack = be32(tcp, 8);
        replace_u32(tcp, 8, conn.ack_to_client(ack), sum);
    }
    let Some(opts) = options_range(tcp) else {
        return;
    };
    let mut at = opts.start;
    while let Some((kind, len)) = option_at(tcp, at, opts.end) {
        if kind == OPT_SACK && len >= 10 && (len - 2) % 8 == 0 {
            let mut edge = at + 2;
            while edge + 4 <= at + len {
                let v = be32(tcp, edge);
                replace_u32(tcp, edge, conn.ack_to_client(v), sum);
                edge += 4;
            }
        }
        at += len.max(1);
    }
}

/// Overwrites the timestamp option with NOPs.
fn strip_timestamps(tcp: &mut [u8], sum: Checksum) {
    let Some(opts) = options_range(tcp) else {
        return;
    };
    let mut at = opts.start;
    while let Some((kind, len)) = option_at(tcp, at, opts.end) {
        if kind == OPT_TIMESTAMP && len == 10 {
            for i in at..at + len {
                replace_u8(tcp, i, OPT_NOP, sum);
            }
        }
        at += len.max(1);
    }
}

/// The options of a TCP header, if its data offset is sane.
fn options_range(tcp: &[u8]) -> Option<std::ops::Range<usize>> {
    let hlen = crate::wire::tcp::header_len(tcp);
    (hlen > 20 && hlen <= tcp.len()).then_some(20..hlen)
}

/// The option at `at` (kind, length), `None` at the end or where the list is malformed.
fn option_at(tcp: &[u8], at: usize, end: usize) -> Option<(u8, usize)> {
    let kind = *tcp.get(at).filter(|_| at < end)?;
    match kind {
        OPT_END => None,
        OPT_NOP => Some((kind, 1)),
        _ => {
            let len = usize::from(*tcp.get(at + 1).filter(|_| at + 1 < end)?);
            (len >= 2 && at + len <= end).then_some((kind, len))
        }
    }
}

/// Where the TCP checksum field is.
const CHECK: usize = 16;

fn replace_u32(tcp: &mut [u8], at: usize, new: u32, sum: Checksum) {
    let old = be32(tcp, at);
    if old == new {
        return;
    }
    tcp[at..at + 4].copy_from_slice(&new.to_be_bytes());
    if sum == Checksum::Full {
        // Offsets 4, 8 and SACK edges may sit at odd offsets within the header only for
        // SACK; the word view below handles both alignments.
        update_span(tcp, at, &old.to_be_bytes());
    }
}

fn replace_u8(tcp: &mut [u8], at: usize, new: u8, sum: Checksum) {
    let old = tcp[at];
    if old == new {
        return;
    }
    tcp[at] = new;
    if sum == Checksum::Full {
        update_span(tcp, at, &[old]);
    }
}

/// Updates the checksum for bytes at `at` that held `old` and now hold what `tcp` holds: the
/// 16-bit words covering them, aligned to the header's start (as the checksum sees them).
fn update_span(tcp: &mut [u8], at: usize, old: &[u8]) {
    let start = at & !1;
    let end = (at + old.len() + 1) & !1;
    let mut before = [0u8; 8];
    let mut after = [0u8; 8];
    let n = end - start;
    if n > before.len() || end > tcp.len() {
        return;
    }
    after[..n].copy_from_slice(&tcp[start..end]);
    before[..n].copy_from_slice(&tcp[start..end]);
    before[at - start..at - start + old.len()].copy_from_slice(old);
    let words = |b: &[u8]| {
        let mut w = [0u16; 4];
        for (i, c) in b[..n].chunks_exact(2).enumerate() {
            w[i] = u16::from_be_bytes([c[0], c[1]]);
        }
        w
    };
    let (o, nw) = (words(&before), words(&after));
    let check = u16::from_be_bytes([tcp[CHECK], tcp[CHECK + 1]]);
    let c = csum::update(check, &o[..n / 2], &nw[..n / 2]);
    tcp[CHECK..CHECK + 2].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests;
