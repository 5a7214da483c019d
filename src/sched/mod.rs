//! Schedulers: one trait, one file each, registered under the `ipvsadm -s` name (the kernel's
//! `struct ip_vs_scheduler` + `ip_vs_<name>.c`).
//!
//! A scheduler's state is built on the control thread when a snapshot is built, and lives
//! inside that snapshot. `pick` runs on a worker for each new flow only (never per packet):
//! no allocation, no lock. Where the kernel keeps one cursor per service under a lock (rr,
//! wrr), uvs keeps it in one atomic word shared by all workers and advances it with
//! compare-and-swap, so the sequence across workers is the kernel's sequence.

pub mod rr;
pub mod wrr;

use crate::conns::ConnCounts;
use crate::datapath::flow_table::FlowKey;
use crate::model::SchedulerKind;
use crate::snapshot::RealEntry;

/// The selection rule of one scheduler.
pub trait Schedule {
    /// Picks a real server among `reals` (the service's, in configuration order) for a new
    /// flow. `None` = no usable real server (all weight 0 or overloaded, or none). `conns`
    /// holds the live connection counts and overload flags of every real.
    fn pick(&self, reals: &[RealEntry], flow: &FlowKey, conns: &ConnCounts) -> Option<usize>;
}

/// Static dispatch over the implemented schedulers.
#[derive(Debug)]
pub enum Scheduler {
    Rr(rr::RoundRobin),
    Wrr(wrr::WeightedRoundRobin),
}

impl Scheduler {
    /// Builds the scheduler state for a service. `None` if the kind is not implemented yet
    /// (the model refuses those before a snapshot is ever built).
    pub fn build(kind: SchedulerKind, reals: &[RealEntry]) -> Option<Scheduler> {
        match kind {
            SchedulerKind::Rr => Some(Scheduler::Rr(rr::RoundRobin::new())),
            SchedulerKind::Wrr => Some(Scheduler::Wrr(wrr::WeightedRoundRobin::new(reals))),
            _ => None,
        }
    }

    #[inline]
    pub fn pick(&self, reals: &[RealEntry], flow: &FlowKey, conns: &ConnCounts) -> Option<usize> {
        match self {
            Scheduler::Rr(s) => s.pick(reals, flow, conns),
            Scheduler::Wrr(s) => s.pick(reals, flow, conns),
        }
    }
}

/// Usable for new flows: weight > 0 and not overloaded (every IPVS scheduler skips both).
#[inline]
pub(crate) fn usable(r: &RealEntry, conns: &ConnCounts) -> bool {
    r.weight > 0 && !conns.overloaded(r.id)
}
