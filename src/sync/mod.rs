//! IPVS connection synchronisation, version 1 of the kernel's format (ip_vs_sync.c), so a
//! BACKUP director already knows the MASTER's connections when it takes over — from another
//! uvs or from a kernel IPVS master (and the reverse).
//!
//! - [`wire`]: the v1 message format (pure).
//! - [`SyncedTable`]: connections learned from the master, shared by all workers.
//! - [`daemon`]: the UDP multicast sender/receiver on the control thread.
//!
//! Which worker finds a synced flow: the kernel's PACKET_FANOUT_HASH is randomly seeded, so
//! the backup cannot know which worker will receive a flow's packets after takeover. Rather
//! than steering frames with a fanout program of our own (which would change the receive
//! path and its load balancing), a worker whose own table misses consults the shared
//! [`SyncedTable`] and *moves* the entry into its own table. Misses are rare on the packet
//! path (new connections, and the first packet of each synced connection after takeover), so
//! the sharded lock is not on the hot path of established traffic. See docs/ha.md.

pub mod daemon;
pub mod gate;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::flow::tcp_state::TcpState;
use crate::flow::{FlowKey, reached};
use gate::HaGate;

/// Who decides the sync role.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SyncRole {
    /// keepalived's `lvs_sync_daemon IF INSTANCE`: master while that instance is MASTER,
    /// backup otherwise.
    FollowVrrp(String),
    Master,
    Backup,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncConfig {
    pub interface: String,
    /// 0 = accept every syncid (as the kernel's backup), send 0.
    pub syncid: u8,
    pub role: SyncRole,
}

impl SyncConfig {
    pub fn new(interface: &str) -> SyncConfig {
        SyncConfig {
            interface: interface.to_string(),
            syncid: 0,
            role: SyncRole::Master,
        }
    }
}

/// `ipvsadm --start-daemon|--stop-daemon master|backup [--mcast-interface IF] [--syncid N]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonCommand {
    pub start: bool,
    /// `master` (else `backup`).
    pub master: bool,
    /// `--mcast-interface` (ipvsadm's default: `eth0`).
    pub interface: String,
    /// `--syncid` (default 0).
    pub syncid: u8,
}

/// A connection as the sync protocol carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncRecord {
    pub key: FlowKey,
    /// Real server address (host-order integer).
    pub real_addr: u32,
    pub state: TcpState,
    /// Seconds of life left.
    pub timeout_secs: u32,
    /// The connection's forwarding method as IPVS flags it (`wire::F_DROUTE`, `F_TUNNEL`,
    /// `F_MASQ`).
    pub fwd: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct SyncedFlow {
    pub real_addr: u32,
    pub state: TcpState,
    /// On `clock::now_ms`.
    pub expires: u32,
}

const SHARDS: usize = 64;

/// Connections learned from the master, until a worker adopts them or they expire.
pub struct SyncedTable {
    shards: Vec<Mutex<HashMap<FlowKey, SyncedFlow>>>,
    len: AtomicUsize,
    capacity: usize,
    pub learned: AtomicU64,
    pub adopted: AtomicU64,
    pub refused_full: AtomicU64,
}

fn shard_of(k: &FlowKey) -> usize {
    let h = (k.saddr ^ k.daddr.rotate_left(7) ^ (u32::from(k.sport) << 16 | u32::from(k.dport)))
        .wrapping_mul(0x9E37_79B1);
    (h >> 26) as usize % SHARDS
}

impl SyncedTable {
    pub fn new(capacity: usize) -> SyncedTable {
        SyncedTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            len: AtomicUsize::new(0),
            capacity,
            learned: AtomicU64::new(0),
            adopted: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Learns (or refreshes) a connection.
    pub fn learn(&self, r: &SyncRecord, now: u32) {
        let mut m = self.shards[shard_of(&r.key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let f = SyncedFlow {
            real_addr: r.real_addr,
            state: r.state,
            expires: now.wrapping_add(r.timeout_secs.saturating_mul(1000)),
        };
        if let Some(old) = m.get_mut(&r.key) {
            *old = f;
        } else if self.len() < self.capacity {
            m.insert(r.key, f);
            self.len.fetch_add(1, Ordering::Relaxed);
        } else {
            self.refused_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.learned.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes and returns a live synced flow (a worker adopts it). One relaxed load when the
    /// table is empty.
    #[inline]
    pub fn take(&self, key: &FlowKey, now: u32) -> Option<SyncedFlow> {
        if self.is_empty() {
            return None;
        }
        let mut m = self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let f = m.remove(key)?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        if reached(now, f.expires) {
            return None;
        }
        self.adopted.fetch_add(1, Ordering::Relaxed);
        Some(f)
    }

    /// Drops expired entries of one shard per call (the control thread walks them in turn).
    pub fn expire_shard(&self, shard: usize, now: u32) {
        let mut m = self.shards[shard % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let before = m.len();
        m.retain(|_, f| !reached(now, f.expires));
        self.len.fetch_sub(before - m.len(), Ordering::Relaxed);
    }

    pub const SHARDS: usize = SHARDS;
}

/// What the workers share for HA: the VRRP gate, the synced connections, and the queue of
/// connection records to send while this director is the sync master.
pub struct HaHooks {
    pub gate: Arc<HaGate>,
    pub synced: SyncedTable,
    /// Records are queued only while `sending` is set.
    pub sending: AtomicBool,
    pub out: crossbeam_channel::Sender<SyncRecord>,
    pub out_dropped: AtomicU64,
}

impl HaHooks {
    pub fn new(
        gate: Arc<HaGate>,
        capacity: usize,
    ) -> (Arc<HaHooks>, crossbeam_channel::Receiver<SyncRecord>) {
        let (tx, rx) = crossbeam_channel::bounded(65_536);
        (
            Arc::new(HaHooks {
                gate,
                synced: SyncedTable::new(capacity),
                sending: AtomicBool::new(false),
                out: tx,
                out_dropped: AtomicU64::new(0),
            }),
            rx,
        )
    }

    /// Hooks that never stand by, learn nothing and send nothing (a forwarder without HA,
    /// until the daemon hands it the shared ones).
    pub fn inert() -> Arc<HaHooks> {
        let (out, _) = crossbeam_channel::bounded(1);
        Arc::new(HaHooks {
            gate: HaGate::new(),
            synced: SyncedTable::new(0),
            sending: AtomicBool::new(false),
            out,
            out_dropped: AtomicU64::new(0),
        })
    }

    /// Queues a connection for the sync master (never blocks; a full queue drops and counts).
    #[inline]
    pub fn emit(&self, r: SyncRecord) {
        if !self.sending.load(Ordering::Relaxed) {
            return;
        }
        if self.out.try_send(r).is_err() {
            self.out_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: u16) -> FlowKey {
        FlowKey {
            saddr: 0xac1e_000a,
            daddr: 0x0a00_0064,
            sport: p,
            dport: 80,
            proto: 6,
        }
    }

    #[test]
    fn synced_flows_are_adopted_once_and_expire() {
        let t = SyncedTable::new(2);
        assert!(t.take(&key(1), 0).is_none());
        let r = SyncRecord {
            key: key(1),
            real_addr: 0x0a00_000b,
            state: TcpState::Established,
            timeout_secs: 900,
            fwd: wire::F_DROUTE,
        };
        t.learn(&r, 0);
        t.learn(&r, 0);
        assert_eq!(t.len(), 1);
        t.learn(
            &SyncRecord {
                key: key(2),
                timeout_secs: 1,
                ..r
            },
            0,
        );
        t.learn(&SyncRecord { key: key(3), ..r }, 0);
        assert_eq!(t.refused_full.load(Ordering::Relaxed), 1);
        let f = t.take(&key(1), 10).unwrap();
        assert_eq!((f.real_addr, f.state), (0x0a00_000b, TcpState::Established));
        assert!(t.take(&key(1), 10).is_none(), "moved, not copied");
        for s in 0..SHARDS {
            t.expire_shard(s, 5000);
        }
        assert!(t.is_empty());
    }
}
