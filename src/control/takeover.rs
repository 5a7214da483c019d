//! The control thread's side of `uvs run --takeover`, in the new process. The new process
//! starts completely beside the old one — workers on their rings (which accept nothing yet),
//! ARP, health checks — and only then, once every real's MAC is known, asks the old one to
//! hand over: the old one stops receiving and answers its connections, and this one attaches
//! its receive filters straight away, so the rings change hands within milliseconds. What
//! only one process may hold (the instance lock, the admin socket, the metrics port, the
//! nftables table) the old one keeps until it is gone; this one takes each then.
//!
//! How the old one is asked, and how those are opened, is the front end's business
//! ([`Takeover`], implemented by `ctl::takeover`).

use std::time::Instant;

use super::{AdminPort, Control};
use crate::io::filter::receive_filter;
use crate::io::socket::attach_filter;
use crate::kernel_filter::KernelFilter;
use crate::metrics::Endpoint;
use crate::model::ServiceTable;
use crate::snapshot::Snapshot;
use crate::sync::SyncRecord;

/// What the old process held, opened once it is gone.
pub struct Inheritance {
    /// Held until this process exits: the next takeover waits for it.
    pub instance_lock: Box<dyn std::any::Any>,
    pub admin: Box<dyn AdminPort>,
    pub metrics: Option<Endpoint>,
    pub kernel_filter: Option<KernelFilter>,
}

/// The steps that talk to the old process and open what it held.
pub trait Takeover {
    /// Asks the old process to stop receiving and hand over its connections (blocks for the
    /// few tens of milliseconds that takes). Connections `table` cannot adopt are counted and
    /// logged by the implementation.
    fn hand_over(&mut self, table: &ServiceTable) -> Result<Vec<SyncRecord>, String>;

    /// `None` while the old process still holds its instance lock; then what it held.
    fn inherit(&mut self, snapshot: &Snapshot) -> Option<Result<Inheritance, String>>;
}

/// Where a takeover stands.
pub enum Phase {
    /// Starting beside the old process; asks once this one is ready.
    Starting(Box<dyn Takeover>),
    /// Handed over; waiting for the old process to be gone.
    Inheriting {
        takeover: Box<dyn Takeover>,
        asked: Instant,
    },
}

impl Control {
    /// Asks for the old process's connections and starts receiving. Called once, when this
    /// process is ready; a failure stops it (the old process keeps or has lost nothing it can
    /// get back: see the log).
    pub(crate) fn take_over_now(&mut self) {
        let Some(Phase::Starting(mut takeover)) = self.takeover.take() else {
            return;
        };
        let asked = Instant::now();
        let records = match takeover.hand_over(&self.state.table) {
            Ok(r) => r,
            Err(e) => {
                log::error!("takeover failed: {e}; stopping");
                crate::io::signals::request_stop_now();
                return;
            }
        };
        let now = crate::io::clock::now_ms();
        for r in &records {
            self.ha.hooks.synced.learn(r, now);
        }
        let snap = self.snapshot.load();
        let program = receive_filter(
            snap.vips(),
            snap.nat_sources(),
            snap.laddrs(),
            self.arp.vip_mac(),
        );
        for &(iface, fd) in &self.ring_fds {
            let name = self.interfaces.get(iface).map_or("?", |i| i.name.as_str());
            if let Err(e) = attach_filter(fd, &program, name) {
                log::error!("takeover: cannot attach a worker's socket filter: {e}");
            }
        }
        log::info!(
            "takeover: {} connection(s) adopted; forwarding again {} µs after the old uvs was asked to stop receiving",
            records.len(),
            asked.elapsed().as_micros()
        );
        self.takeover = Some(Phase::Inheriting { takeover, asked });
    }

    /// Once the old process is gone: its lock, admin socket, metrics port and nftables table.
    pub(crate) fn takeover_turn(&mut self) {
        let Some(Phase::Inheriting { takeover, asked }) = &mut self.takeover else {
            return;
        };
        let snap = self.snapshot.load();
        match takeover.inherit(&snap) {
            None => {}
            Some(Ok(inh)) => {
                log::info!(
                    "takeover complete: the old uvs exited {} ms after the handover",
                    asked.elapsed().as_millis()
                );
                self.instance_lock = Some(inh.instance_lock);
                self.admin = Some(inh.admin);
                self.metrics = inh.metrics;
                self.kernel_filter = inh.kernel_filter;
                self.takeover = None;
            }
            Some(Err(e)) => {
                log::error!("takeover: {e}");
                self.takeover = None;
            }
        }
    }
}
