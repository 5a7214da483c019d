//! Schedulers: one trait, one file each, registered under the `ipvsadm -s` name (the kernel's
//! `struct ip_vs_scheduler` + `ip_vs_<name>.c`).
//!
//! A scheduler's state is built on the control thread when a snapshot is built, and lives
//! inside that snapshot. `pick` runs on a worker for each new flow only (never per packet):
//! no allocation, no lock. Where the kernel keeps one cursor per service under a lock (rr,
//! wrr), uvs keeps it in one atomic word shared by all workers and advances it with
//! compare-and-swap, so the sequence across workers is the kernel's sequence.
//!
//! Tie-break order everywhere is the service's configuration order (the kernel's
//! `svc->destinations` list order), and loads are compared by cross-multiplication, never
//! by division, exactly as the kernel does.

pub mod dh;
pub mod fo;
mod lbl_table;
pub mod lblc;
pub mod lblcr;
pub mod lc;
pub mod mh;
pub mod nq;
pub mod ovf;
pub mod rr;
pub mod sed;
pub mod sh;
pub mod twos;
pub mod wlc;
pub mod wrr;

use std::fmt;

use crate::conns::{ConnCounts, Thresholds};
use crate::flow::FlowKey;
use crate::model::{RealId, SchedulerKind};

/// A real server as the schedulers see it: the part of IPVS's `ip_vs_dest` that scheduling
/// reads. How the real is reached (method, next hop) is the snapshot's business, not theirs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dest {
    pub id: RealId,
    pub addr: u32,
    /// The real's port (the service's under direct routing; a NAT real's own). Only `mh`
    /// reads it, to order the reals canonically.
    pub port: u16,
    pub weight: u32,
    /// The last non-zero weight (`mh`'s table uses it; see `model::RealServer`).
    pub last_weight: u32,
    pub thresholds: Thresholds,
}

/// The selection rule of one scheduler.
pub trait Schedule {
    /// Picks a real server among `reals` (the service's, in configuration order) for a new
    /// flow. `None` = no usable real server (all weight 0 or overloaded, or none). `conns`
    /// holds the live connection counts and overload flags of every real; `now` is the
    /// worker's millisecond clock (only the locality schedulers age their tables with it).
    fn pick(&self, reals: &[Dest], flow: &FlowKey, conns: &ConnCounts, now: u32) -> Option<usize>;
}

/// Per-service scheduler flags (`ipvsadm -b`), defined in the model (see there).
pub use crate::model::SchedFlags;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedFlagsError {
    #[error("invalid scheduler flag `{0}'")]
    Invalid(String),
    #[error("incompatible scheduler flag `{0}'")]
    Incompatible(String),
}

impl SchedFlags {
    /// Parses ipvsadm's `-b` argument ("sh-fallback,sh-port") for a service using `kind`
    /// (ipvsadm checks the named flags against the scheduler, defaulting to wlc). The
    /// anonymous `flag-1`/`flag-2` mean the scheduler's first/second flag; on schedulers that
    /// define none, `flag-1..3` are accepted and have no effect (as in the kernel), but uvs does
    /// not keep them, so they are not listed back.
    pub fn parse(arg: &str, kind: SchedulerKind) -> Result<SchedFlags, SchedFlagsError> {
        let mut f = SchedFlags::default();
        for name in arg.split(',').filter(|s| !s.is_empty()) {
            let need = |k: SchedulerKind| {
                if kind == k {
                    Ok(())
                } else {
                    Err(SchedFlagsError::Incompatible(name.to_string()))
                }
            };
            match name {
                "sh-fallback" => {
                    need(SchedulerKind::Sh)?;
                    f.sh_fallback = true;
                }
                "sh-port" => {
                    need(SchedulerKind::Sh)?;
                    f.sh_port = true;
                }
                "mh-fallback" => {
                    need(SchedulerKind::Mh)?;
                    f.mh_fallback = true;
                }
                "mh-port" => {
                    need(SchedulerKind::Mh)?;
                    f.mh_port = true;
                }
                "flag-1" | "flag-2" => {
                    let first = name == "flag-1";
                    match kind {
                        SchedulerKind::Sh if first => f.sh_fallback = true,
                        SchedulerKind::Sh => f.sh_port = true,
                        SchedulerKind::Mh if first => f.mh_fallback = true,
                        SchedulerKind::Mh => f.mh_port = true,
                        _ => {}
                    }
                }
                "flag-3" => {}
                _ => return Err(SchedFlagsError::Invalid(name.to_string())),
            }
        }
        Ok(f)
    }

    pub fn is_empty(&self) -> bool {
        *self == SchedFlags::default()
    }
}

/// ipvsadm's listing of the flags: comma-separated, sh's before mh's, fallback before port
/// (`print_sched_flags`); the caller adds the surrounding " (…)" when not empty.
impl fmt::Display for SchedFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (self.sh_fallback, "sh-fallback"),
            (self.sh_port, "sh-port"),
            (self.mh_fallback, "mh-fallback"),
            (self.mh_port, "mh-port"),
        ];
        let mut first = true;
        for (_, n) in names.iter().filter(|(on, _)| *on) {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(n)?;
            first = false;
        }
        Ok(())
    }
}

/// Static dispatch over the implemented schedulers.
#[derive(Debug)]
pub enum Scheduler {
    Rr(rr::RoundRobin),
    Wrr(wrr::WeightedRoundRobin),
    Lc(lc::LeastConn),
    Wlc(wlc::WeightedLeastConn),
    Sed(sed::ShortestExpectedDelay),
    Nq(nq::NeverQueue),
    Fo(fo::WeightedFailover),
    Ovf(ovf::Overflow),
    Dh(dh::DestinationHash),
    Sh(sh::SourceHash),
    Mh(Box<mh::Maglev>),
    Twos(twos::PowerOfTwo),
    Lblc(lblc::LocalityLeastConn),
    Lblcr(lblcr::LocalityReplicated),
}

impl Scheduler {
    /// Builds the scheduler state for a service. `None` if the kind is not implemented yet
    /// (the model refuses those before a snapshot is ever built). `dest_port` is the reals'
    /// port (in direct routing always the service port): mh hashes it into each real's
    /// permutation.
    pub fn build(
        kind: SchedulerKind,
        reals: &[Dest],
        flags: SchedFlags,
        dest_port: u16,
    ) -> Scheduler {
        match kind {
            SchedulerKind::Rr => Scheduler::Rr(rr::RoundRobin::new()),
            SchedulerKind::Wrr => Scheduler::Wrr(wrr::WeightedRoundRobin::new(reals)),
            SchedulerKind::Lc => Scheduler::Lc(lc::LeastConn),
            SchedulerKind::Wlc => Scheduler::Wlc(wlc::WeightedLeastConn),
            SchedulerKind::Sed => Scheduler::Sed(sed::ShortestExpectedDelay),
            SchedulerKind::Nq => Scheduler::Nq(nq::NeverQueue),
            SchedulerKind::Fo => Scheduler::Fo(fo::WeightedFailover),
            SchedulerKind::Ovf => Scheduler::Ovf(ovf::Overflow),
            SchedulerKind::Dh => Scheduler::Dh(dh::DestinationHash::new(reals)),
            SchedulerKind::Sh => Scheduler::Sh(sh::SourceHash::new(reals, flags)),
            SchedulerKind::Mh => Scheduler::Mh(Box::new(mh::Maglev::new(reals, flags, dest_port))),
            SchedulerKind::Twos => Scheduler::Twos(twos::PowerOfTwo::new()),
            SchedulerKind::Lblc => Scheduler::Lblc(lblc::LocalityLeastConn::new()),
            SchedulerKind::Lblcr => Scheduler::Lblcr(lblcr::LocalityReplicated::new()),
        }
    }

    /// `sh` and `mh` with their `-port` flag: the client's port is hashed too (a trace says so).
    pub fn hashes_port(&self) -> bool {
        match self {
            Scheduler::Sh(s) => s.hashes_port(),
            Scheduler::Mh(m) => m.hashes_port(),
            _ => false,
        }
    }

    /// The `ipvsadm -s` kind this scheduler implements.
    pub fn kind(&self) -> SchedulerKind {
        match self {
            Scheduler::Rr(_) => SchedulerKind::Rr,
            Scheduler::Wrr(_) => SchedulerKind::Wrr,
            Scheduler::Lc(_) => SchedulerKind::Lc,
            Scheduler::Wlc(_) => SchedulerKind::Wlc,
            Scheduler::Sed(_) => SchedulerKind::Sed,
            Scheduler::Nq(_) => SchedulerKind::Nq,
            Scheduler::Fo(_) => SchedulerKind::Fo,
            Scheduler::Ovf(_) => SchedulerKind::Ovf,
            Scheduler::Dh(_) => SchedulerKind::Dh,
            Scheduler::Sh(_) => SchedulerKind::Sh,
            Scheduler::Mh(_) => SchedulerKind::Mh,
            Scheduler::Twos(_) => SchedulerKind::Twos,
            Scheduler::Lblc(_) => SchedulerKind::Lblc,
            Scheduler::Lblcr(_) => SchedulerKind::Lblcr,
        }
    }

    #[inline]
    pub fn pick(
        &self,
        reals: &[Dest],
        flow: &FlowKey,
        conns: &ConnCounts,
        now: u32,
    ) -> Option<usize> {
        match self {
            Scheduler::Rr(s) => s.pick(reals, flow, conns, now),
            Scheduler::Wrr(s) => s.pick(reals, flow, conns, now),
            Scheduler::Lc(s) => s.pick(reals, flow, conns, now),
            Scheduler::Wlc(s) => s.pick(reals, flow, conns, now),
            Scheduler::Sed(s) => s.pick(reals, flow, conns, now),
            Scheduler::Nq(s) => s.pick(reals, flow, conns, now),
            Scheduler::Fo(s) => s.pick(reals, flow, conns, now),
            Scheduler::Ovf(s) => s.pick(reals, flow, conns, now),
            Scheduler::Dh(s) => s.pick(reals, flow, conns, now),
            Scheduler::Sh(s) => s.pick(reals, flow, conns, now),
            Scheduler::Mh(s) => s.pick(reals, flow, conns, now),
            Scheduler::Twos(s) => s.pick(reals, flow, conns, now),
            Scheduler::Lblc(s) => s.pick(reals, flow, conns, now),
            Scheduler::Lblcr(s) => s.pick(reals, flow, conns, now),
        }
    }
}

/// Usable for new flows: weight > 0 and not overloaded (every IPVS scheduler skips both).
#[inline]
pub(crate) fn usable(r: &Dest, conns: &ConnCounts) -> bool {
    r.weight > 0 && !conns.overloaded(r.id)
}

/// The kernel's `hash_32(val, bits)`: multiply by the 32-bit golden ratio, keep the top bits.
#[inline]
pub(crate) fn hash_32(val: u32, bits: u32) -> u32 {
    val.wrapping_mul(0x61C8_8647) >> (32 - bits)
}

/// The source port the kernel's sh/mh hash with their `-port` flag: only TCP, UDP and SCTP
/// carry one; anything else hashes port 0.
#[inline]
pub(crate) fn hashed_sport(flow: &FlowKey) -> u16 {
    const IPPROTO_SCTP: u8 = 132;
    match flow.proto {
        crate::wire::IPPROTO_TCP | crate::wire::IPPROTO_UDP | IPPROTO_SCTP => flow.sport,
        _ => 0,
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::num::NonZeroU32;

    use super::Dest;
    use crate::conns::Thresholds;
    use crate::flow::FlowKey;
    use crate::model::RealId;

    /// Reals 10.0.0.11, .12, … with ids 1, 2, … and the given weights.
    pub fn reals_with_weights(w: &[u32]) -> Vec<Dest> {
        w.iter()
            .enumerate()
            .map(|(i, &weight)| Dest {
                id: RealId(NonZeroU32::new(i as u32 + 1).expect("ids start at 1")),
                addr: 0x0a00_000b + i as u32,
                port: 80,
                weight,
                last_weight: weight,
                thresholds: Thresholds::default(),
            })
            .collect()
    }

    pub fn flow(saddr: u32, daddr: u32, sport: u16) -> FlowKey {
        FlowKey {
            saddr,
            daddr,
            sport,
            dport: 80,
            proto: 6,
        }
    }

    /// Picks rendered as letters (A = first real, '-' = none), for readable sequences.
    pub fn letter(p: Option<usize>) -> char {
        match p {
            Some(i) => (b'A' + i as u8) as char,
            None => '-',
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_print_in_ipvsadm_order() {
        let f = SchedFlags::parse("sh-port,sh-fallback", SchedulerKind::Sh).unwrap();
        assert!(f.sh_port && f.sh_fallback && !f.mh_port);
        assert_eq!(f.to_string(), "sh-fallback,sh-port");
        let f = SchedFlags::parse("mh-port", SchedulerKind::Mh).unwrap();
        assert_eq!(f.to_string(), "mh-port");
        let f = SchedFlags::parse("flag-1,flag-2", SchedulerKind::Mh).unwrap();
        assert_eq!(f.to_string(), "mh-fallback,mh-port");
        assert_eq!(
            SchedFlags::parse("sh-port", SchedulerKind::Wlc),
            Err(SchedFlagsError::Incompatible("sh-port".into()))
        );
        assert_eq!(
            SchedFlags::parse("bogus", SchedulerKind::Sh),
            Err(SchedFlagsError::Invalid("bogus".into()))
        );
        assert!(
            SchedFlags::parse("flag-3", SchedulerKind::Rr)
                .unwrap()
                .is_empty()
        );
        assert_eq!(SchedFlags::default().to_string(), "");
    }

    #[test]
    fn hash_32_matches_the_kernel() {
        // hash_32(1, 8) = (0x61C88647 >> 24).
        assert_eq!(hash_32(1, 8), 0x61);
        assert_eq!(hash_32(0, 8), 0);
        assert_eq!(hash_32(2, 32), 0xC391_0C8E);
    }
}
