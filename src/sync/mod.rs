//! IPVS connection synchronisation, version 1 of the kernel's format (ip_vs_sync.c), so a
//! BACKUP director already knows the MASTER's connections when it takes over — from another
//! uvs or from a kernel IPVS master (and the reverse).
//!
//! - [`wire`]: the v1 message format (pure).
//! - [`SyncedTable`]: connections learned from the master, shared by all workers.
//! - [`daemon`]: the UDP multicast sender/receiver on the control thread.
//!
//! Which worker finds a synced flow: the master may be a kernel IPVS or a uvs with another
//! worker count, so the backup cannot place a record in the worker that will receive the
//! flow's packets after takeover. A worker whose own table misses consults the shared
//! [`SyncedTable`] and *moves* the entry into its own table. Misses are rare on the packet
//! path (new connections, and the first packet of each synced connection after takeover), so
//! the sharded lock is not on the hot path of established traffic. A NAT connection may be
//! met first by a real's reply, so the table also finds it by the reply's five-tuple. See
//! docs/ha.md.

pub mod daemon;
pub mod gate;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::flow::tcp_state::TcpState;
use crate::flow::{FlowKey, reached};
use crate::model::ForwardMethod;
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
    /// The real's port: the service's, or a NAT real's own.
    pub real_port: u16,
    /// How the connection is forwarded. IPVS's flags do not carry a tunnel's encapsulation,
    /// so a received tunnelled connection reads as IPIP: adoption matches any tunnel.
    pub forward: ForwardMethod,
    pub state: TcpState,
    /// Seconds of life left.
    pub timeout_secs: u32,
}

impl SyncRecord {
    /// The five-tuple of the real's replies, for a NAT connection (whose replies come back
    /// through the director).
    pub fn reply_key(&self) -> Option<FlowKey> {
        (self.forward == ForwardMethod::Masq).then_some(FlowKey {
            saddr: self.real_addr,
            daddr: self.key.saddr,
            sport: self.real_port,
            dport: self.key.sport,
            proto: self.key.proto,
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub struct SyncedFlow {
    pub real_addr: u32,
    pub real_port: u16,
    pub forward: ForwardMethod,
    pub state: TcpState,
    /// On `clock::now_ms`.
    pub expires: u32,
}

const SHARDS: usize = 64;

/// The reply five-tuple of synced connection `key`, if it is a NAT one.
fn reply_key_of(key: &FlowKey, f: &SyncedFlow) -> Option<FlowKey> {
    SyncRecord {
        key: *key,
        real_addr: f.real_addr,
        real_port: f.real_port,
        forward: f.forward,
        state: f.state,
        timeout_secs: 0,
    }
    .reply_key()
}

/// Connections learned from the master, until a worker adopts them or they expire.
///
/// `replies` maps a NAT connection's reply five-tuple to its key. It is sharded by the reply
/// key, so it is locked after (never while holding) a `shards` lock; an entry whose
/// connection is gone only makes a lookup miss, and goes when that connection's entry does.
pub struct SyncedTable {
    shards: Vec<Mutex<HashMap<FlowKey, SyncedFlow>>>,
    replies: Vec<Mutex<HashMap<FlowKey, FlowKey>>>,
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
            replies: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
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
        let f = SyncedFlow {
            real_addr: r.real_addr,
            real_port: r.real_port,
            forward: r.forward,
            state: r.state,
            expires: now.wrapping_add(r.timeout_secs.saturating_mul(1000)),
        };
        let replaced = {
            let mut m = self.lock_flows(&r.key);
            if let Some(old) = m.get_mut(&r.key) {
                Some(std::mem::replace(old, f))
            } else if self.len() < self.capacity {
                m.insert(r.key, f);
                self.len.fetch_add(1, Ordering::Relaxed);
                None
            } else {
                self.refused_full.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if let Some(old) = replaced
            && let Some(stale) = reply_key_of(&r.key, &old)
            && Some(stale) != r.reply_key()
        {
            self.lock_replies(&stale).remove(&stale);
        }
        if let Some(reply) = r.reply_key() {
            self.lock_replies(&reply).insert(reply, r.key);
        }
        self.learned.fetch_add(1, Ordering::Relaxed);
    }

    fn lock_flows(&self, key: &FlowKey) -> std::sync::MutexGuard<'_, HashMap<FlowKey, SyncedFlow>> {
        self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lock_replies(
        &self,
        reply: &FlowKey,
    ) -> std::sync::MutexGuard<'_, HashMap<FlowKey, FlowKey>> {
        self.replies[shard_of(reply)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A NAT connection met by its real's reply first: the key of the connection whose reply
    /// five-tuple is `reply` (then [`SyncedTable::take`] it). One relaxed load when the table
    /// is empty.
    #[inline]
    pub fn owner_of_reply(&self, reply: &FlowKey) -> Option<FlowKey> {
        if self.is_empty() {
            return None;
        }
        self.lock_replies(reply).get(reply).copied()
    }

    /// Removes and returns a live synced flow (a worker adopts it). One relaxed load when the
    /// table is empty.
    #[inline]
    pub fn take(&self, key: &FlowKey, now: u32) -> Option<SyncedFlow> {
        if self.is_empty() {
            return None;
        }
        let f = self.lock_flows(key).remove(key)?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        if let Some(reply) = reply_key_of(key, &f) {
            self.lock_replies(&reply).remove(&reply);
        }
        if reached(now, f.expires) {
            return None;
        }
        self.adopted.fetch_add(1, Ordering::Relaxed);
        Some(f)
    }

    /// Drops expired entries of one shard per call (the control thread walks them in turn).
    pub fn expire_shard(&self, shard: usize, now: u32) {
        let mut gone = Vec::new();
        {
            let mut m = self.shards[shard % SHARDS]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let before = m.len();
            m.retain(|k, f| {
                let live = !reached(now, f.expires);
                if !live && let Some(reply) = reply_key_of(k, f) {
                    gone.push(reply);
                }
                live
            });
            self.len.fetch_sub(before - m.len(), Ordering::Relaxed);
        }
        for reply in gone {
            self.lock_replies(&reply).remove(&reply);
        }
    }

    /// Entries of the reply index (NAT connections learned and not yet adopted or expired).
    pub fn reply_index_len(&self) -> usize {
        self.replies
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
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
        if !self.sending.load(Ordering::Relaxed) || !wire::syncable(r.forward) {
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
            real_port: 80,
            forward: ForwardMethod::Route,
            state: TcpState::Established,
            timeout_secs: 900,
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

    #[test]
    fn a_nat_connection_is_found_by_its_reply_once_and_its_index_entry_goes_with_it() {
        let t = SyncedTable::new(16);
        let nat = SyncRecord {
            key: key(7),
            real_addr: 0x0a00_000b,
            real_port: 8080,
            forward: ForwardMethod::Masq,
            state: TcpState::Established,
            timeout_secs: 900,
        };
        t.learn(&nat, 0);
        let reply = nat.reply_key().unwrap();
        assert_eq!((reply.sport, reply.dport), (8080, 7));
        let k = t.owner_of_reply(&reply).unwrap();
        let f = t.take(&k, 1).unwrap();
        assert_eq!(
            (k, f.real_port, f.forward),
            (key(7), 8080, ForwardMethod::Masq)
        );
        assert!(t.take(&key(7), 1).is_none(), "adopted once");
        assert!(t.owner_of_reply(&reply).is_none());
        assert_eq!(t.reply_index_len(), 0);

        // Adopted by its request instead: the reply finds nothing afterwards.
        t.learn(&nat, 0);
        assert!(t.take(&key(7), 1).is_some());
        assert!(t.owner_of_reply(&reply).is_none());
        // Expired: both entries go.
        t.learn(
            &SyncRecord {
                timeout_secs: 1,
                ..nat
            },
            0,
        );
        for s in 0..SHARDS {
            t.expire_shard(s, 5000);
        }
        assert!(t.is_empty());
        assert_eq!(t.reply_index_len(), 0);
        // Relearned on another real port: the old reply tuple no longer leads to it.
        t.learn(&nat, 0);
        t.learn(
            &SyncRecord {
                real_port: 8081,
                ..nat
            },
            0,
        );
        assert!(t.owner_of_reply(&reply).is_none());
        assert_eq!(t.reply_index_len(), 1);
        // A DR connection has no reply tuple.
        let dr = SyncRecord {
            key: key(8),
            forward: ForwardMethod::Route,
            ..nat
        };
        assert_eq!(dr.reply_key(), None);
    }
}
