//! FullNAT local addresses on the control side: every worker gets the pool of ports it owns on
//! each local address before the first snapshot that uses the address (the worker never
//! allocates one), and the per-address figures (`--get-laddr`, metrics) are summed here.
//!
//! Pools are kept once made: an address that leaves the configuration may still carry
//! connections, whose replies need its pool, and an address that comes back finds its ports
//! as they were. Each pool costs a worker its share of the port range, about 50 bytes a port
//! (1.5 MB per address for the default range over all workers).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::datapath::fullnat::{LaddrCounters, PortPool};
use crate::datapath::worker::{WorkerInbox, WorkerRequest};

/// In-use ports and refused connections of one local address, all workers together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaddrFigures {
    pub conns: u64,
    pub exhausted: u64,
}

/// One worker's pool of a local address, and the counters it reports into.
pub type WorkerPool = (Box<PortPool>, Arc<LaddrCounters>);

pub struct LocalPortPlan {
    /// The ports handed out on every local address (inclusive).
    pub range: (u16, u16),
    workers: usize,
    provisioned: BTreeMap<u32, Vec<Arc<LaddrCounters>>>,
}

impl LocalPortPlan {
    pub fn new(range: (u16, u16), workers: usize) -> LocalPortPlan {
        LocalPortPlan {
            range,
            workers: workers.max(1),
            provisioned: BTreeMap::new(),
        }
    }

    /// Worker `w`'s pool of `addr`, and the counters it reports into (kept here).
    fn make(&mut self, addr: u32, w: usize) -> WorkerPool {
        let counters = Arc::new(LaddrCounters::default());
        self.provisioned
            .entry(addr)
            .or_insert_with(|| Vec::with_capacity(self.workers))
            .push(Arc::clone(&counters));
        let pool = PortPool::new(self.range.0, self.range.1, self.workers as u16, w as u16);
        (Box::new(pool), counters)
    }

    /// The local addresses of `laddrs` no worker has ports of yet, each with one pool per
    /// worker (in worker order), recorded as provisioned.
    pub fn pools_for(&mut self, laddrs: &[u32]) -> Vec<(u32, Vec<WorkerPool>)> {
        let new: Vec<u32> = laddrs
            .iter()
            .copied()
            .filter(|a| !self.provisioned.contains_key(a))
            .collect();
        new.into_iter()
            .map(|addr| {
                let pools = (0..self.workers).map(|w| self.make(addr, w)).collect();
                if log::log_enabled!(log::Level::Info) {
                    log::info!(
                        "fullnat: local address {} gets ports {}-{} over {} worker(s)",
                        Ipv4Addr::from(addr),
                        self.range.0,
                        self.range.1,
                        self.workers
                    );
                }
                (addr, pools)
            })
            .collect()
    }

    /// Sends the workers the pools of the local addresses of `laddrs` they lack. Call before
    /// publishing the snapshot that uses them.
    pub fn provision(&mut self, laddrs: &[u32], requests: &[WorkerInbox]) {
        for (addr, pools) in self.pools_for(laddrs) {
            for (w, (pool, counters)) in pools.into_iter().enumerate() {
                let Some(tx) = requests.get(w) else { continue };
                if !tx.send(WorkerRequest::LocalPorts {
                    addr,
                    pool,
                    counters,
                }) {
                    log::warn!("fullnat: worker {w} is gone; its ports of {addr:#x} were not sent");
                }
            }
        }
    }

    /// The figures of one local address.
    pub fn figures(&self, addr: Ipv4Addr) -> LaddrFigures {
        self.provisioned
            .get(&u32::from(addr))
            .map(|cs| LaddrFigures {
                conns: cs.iter().map(|c| c.in_use.load(Relaxed)).sum(),
                exhausted: cs.iter().map(|c| c.exhausted.load(Relaxed)).sum(),
            })
            .unwrap_or_default()
    }

    /// Every provisioned local address with its figures (metrics).
    pub fn all(&self) -> Vec<(Ipv4Addr, LaddrFigures)> {
        self.provisioned
            .keys()
            .map(|&a| (Ipv4Addr::from(a), self.figures(Ipv4Addr::from(a))))
            .collect()
    }
}

/// The part of uvs's local ports (`ours`) that the kernel may hand its own sockets as
/// ephemeral ports (`ephemeral`, `ip_local_port_range`), if any.
pub fn overlap(ours: (u16, u16), ephemeral: (u16, u16)) -> Option<(u16, u16)> {
    let lo = ours.0.max(ephemeral.0);
    let hi = ours.1.min(ephemeral.1);
    (lo <= hi).then_some((lo, hi))
}

/// `ip_local_reserved_ports` with `range` added (unless a listed range already covers it).
pub fn with_reserved(current: &str, range: (u16, u16)) -> String {
    let covered = current.split(',').map(str::trim).any(|r| {
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= range.0 && range.1 <= b)
    });
    let item = if range.0 == range.1 {
        range.0.to_string()
    } else {
        format!("{}-{}", range.0, range.1)
    };
    match (covered, current.trim()) {
        (true, _) => current.trim().to_string(),
        (false, "") => item,
        (false, c) => format!("{c},{item}"),
    }
}

/// Keeps the director's kernel from picking uvs's local ports for its own connections: the
/// part of `ours` inside `ip_local_port_range` goes into `ip_local_reserved_ports` (kept
/// after uvs exits: a reserved port only means the kernel does not pick it by itself).
/// Below this many ephemeral ports left to the kernel, the reservation is worth a warning.
const MIN_EPHEMERAL_LEFT: u32 = 1024;

/// The kernel's ephemeral ports `ephemeral` that `reserved` (a part of them) leaves.
fn ephemeral_left(ephemeral: (u16, u16), reserved: (u16, u16)) -> u32 {
    let size = |(a, b): (u16, u16)| u32::from(b).saturating_sub(u32::from(a)) + 1;
    size(ephemeral).saturating_sub(size(reserved))
}

pub fn reserve_ports(ours: (u16, u16)) {
    let range = crate::io::sysctl::read("net/ipv4/ip_local_port_range").ok();
    let ephemeral = range.as_deref().and_then(|r| {
        let mut it = r.split_whitespace().map(str::parse::<u16>);
        match (it.next(), it.next()) {
            (Some(Ok(a)), Some(Ok(b))) => Some((a, b)),
            _ => None,
        }
    });
    let Some((e, clash)) = ephemeral.and_then(|e| Some((e, overlap(ours, e)?))) else {
        return;
    };
    let left = ephemeral_left(e, clash);
    if left < MIN_EPHEMERAL_LEFT {
        log::warn!(
            "fullnat: ports {}-{} leave the kernel {left} ephemeral port(s) of {}-{} for the director's own connections (health checks, uvsadm's metrics clients, …): they fail with 'Cannot assign requested address' once those are used; keep [fullnat] ports below {}",
            ours.0,
            ours.1,
            e.0,
            e.1,
            e.0
        );
    }
    const KEY: &str = "net/ipv4/ip_local_reserved_ports";
    let current = crate::io::sysctl::read(KEY).unwrap_or_default();
    let wanted = with_reserved(&current, clash);
    if wanted == current.trim() {
        return;
    }
    match crate::io::sysctl::write(KEY, &wanted) {
        Ok(()) => log::info!(
            "fullnat: ports {}-{} are also the kernel's ephemeral ports: reserved ({KEY} = {wanted})",
            clash.0,
            clash.1
        ),
        Err(e) => log::warn!(
            "fullnat: ports {}-{} are also the kernel's ephemeral ports and could not be reserved ({e}): the director's own connections may collide with FullNAT ones",
            clash.0,
            clash.1
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_reservation_leaves_the_kernel() {
        assert_eq!(ephemeral_left((32768, 60999), (32768, 60999)), 0);
        assert_eq!(ephemeral_left((32768, 60999), (32768, 40000)), 20999);
        assert_eq!(ephemeral_left((32768, 60999), (60000, 60999)), 27232);
    }

    #[test]
    fn only_the_part_of_our_ports_the_kernel_could_pick_is_reserved() {
        assert_eq!(overlap((1024, 32767), (32768, 60999)), None);
        assert_eq!(
            overlap((20000, 40000), (32768, 60999)),
            Some((32768, 40000))
        );
        assert_eq!(with_reserved("", (32768, 40000)), "32768-40000");
        assert_eq!(
            with_reserved("8080,9000-9100", (32768, 40000)),
            "8080,9000-9100,32768-40000"
        );
        assert_eq!(
            with_reserved("30000-50000", (32768, 40000)),
            "30000-50000",
            "covered"
        );
        assert_eq!(with_reserved("", (5, 5)), "5");
    }

    #[test]
    fn each_worker_gets_its_own_ports_once_and_the_figures_add_up() {
        let mut plan = LocalPortPlan::new((2000, 2009), 2);
        let (tx0, rx0) = crossbeam_channel::unbounded();
        let (tx1, rx1) = crossbeam_channel::unbounded();
        let a = u32::from(Ipv4Addr::new(10, 1, 0, 1));
        let inbox = |tx| WorkerInbox {
            requests: tx,
            wakeup: Arc::new(crate::io::wakeup::Wakeup::new().unwrap()),
        };
        let inboxes = [inbox(tx0), inbox(tx1)];
        plan.provision(&[a], &inboxes);
        plan.provision(&[a], &inboxes);
        let take = |rx: &crossbeam_channel::Receiver<WorkerRequest>| -> Vec<(u32, Box<PortPool>, Arc<LaddrCounters>)> {
            rx.try_iter()
                .filter_map(|r| match r {
                    WorkerRequest::LocalPorts { addr, pool, counters } => Some((addr, pool, counters)),
                    _ => None,
                })
                .collect()
        };
        let (w0, w1) = (take(&rx0), take(&rx1));
        assert_eq!((w0.len(), w1.len()), (1, 1), "sent once");
        let mut p0 = w0.into_iter().next().unwrap();
        let p1 = w1.into_iter().next().unwrap();
        assert_eq!((p0.1.capacity(), p1.1.capacity()), (5, 5));
        let c = crate::datapath::fullnat::FnatConn::default();
        assert_eq!(p0.1.allocate(c), Some(2000));
        p0.2.in_use.store(p0.1.in_use() as u64, Relaxed);
        p1.2.exhausted.fetch_add(3, Relaxed);
        assert_eq!(
            plan.figures(Ipv4Addr::new(10, 1, 0, 1)),
            LaddrFigures {
                conns: 1,
                exhausted: 3
            }
        );
    }
}
