//! Per-real-server connection counts, shared by all workers: IPVS's `activeconns`,
//! `inactconns` and `persistconns`, and the overload flag the `-x`/`-y` thresholds drive.
//!
//! IPVS updates these atomically when a connection is bound to or unbound from a destination
//! and when its TCP state crosses the active/inactive line, and its schedulers read them
//! live. uvs does the same with one atomic word per count: workers update them on connection
//! events only (new flow, state change, expiry) — never per packet — so the counts are exact
//! and never stale, and a burst of new flows on one worker already sees its own earlier
//! picks, as the kernel's lc/wlc do. Contention is one cache line per real server per event.
//!
//! Indexed by [`RealId`]. Ids are never reused (see `model`), so a table of fixed capacity
//! stops counting for ids beyond it; such reals are scheduled as if idle (documented limit,
//! 65536 reals created over the daemon's life).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::model::RealId;

pub const CAPACITY: usize = 1 << 16;

#[derive(Default)]
#[repr(align(16))]
struct Slot {
    active: AtomicU32,
    inactive: AtomicU32,
    persistent: AtomicU32,
    overloaded: AtomicBool,
}

/// Connection thresholds of a real server (`-x` upper, `-y` lower; 0 = none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Thresholds {
    pub upper: u32,
    pub lower: u32,
}

pub struct ConnCounts {
    slots: Box<[Slot]>,
}

impl Default for ConnCounts {
    fn default() -> Self {
        ConnCounts::new()
    }
}

fn dec(a: &AtomicU32) {
    // Saturating: a count can never go below zero even if an event is reported twice.
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
}

impl ConnCounts {
    pub fn new() -> ConnCounts {
        ConnCounts {
            slots: (0..CAPACITY).map(|_| Slot::default()).collect(),
        }
    }

    fn slot(&self, id: RealId) -> Option<&Slot> {
        self.slots.get(id.index())
    }

    pub fn active(&self, id: RealId) -> u32 {
        self.slot(id)
            .map_or(0, |s| s.active.load(Ordering::Relaxed))
    }

    pub fn inactive(&self, id: RealId) -> u32 {
        self.slot(id)
            .map_or(0, |s| s.inactive.load(Ordering::Relaxed))
    }

    pub fn persistent(&self, id: RealId) -> u32 {
        self.slot(id)
            .map_or(0, |s| s.persistent.load(Ordering::Relaxed))
    }

    /// `ip_vs_dest_conn_overhead`: active × 256 + inactive.
    pub fn overhead(&self, id: RealId) -> u64 {
        (u64::from(self.active(id)) << 8) + u64::from(self.inactive(id))
    }

    pub fn overloaded(&self, id: RealId) -> bool {
        self.slot(id)
            .is_some_and(|s| s.overloaded.load(Ordering::Relaxed))
    }

    fn total(s: &Slot) -> u64 {
        u64::from(s.active.load(Ordering::Relaxed)) + u64::from(s.inactive.load(Ordering::Relaxed))
    }

    /// A connection was bound to `id` (`ip_vs_bind_dest`). Sets the overload flag when the
    /// upper threshold is reached.
    pub fn bind(&self, id: RealId, active: bool, t: Thresholds) {
        let Some(s) = self.slot(id) else { return };
        if active {
            s.active.fetch_add(1, Ordering::Relaxed);
        } else {
            s.inactive.fetch_add(1, Ordering::Relaxed);
        }
        if t.upper != 0 && Self::total(s) >= u64::from(t.upper) {
            s.overloaded.store(true, Ordering::Relaxed);
        }
    }

    /// A connection left `id` (`ip_vs_unbind_dest`). Clears the overload flag below the lower
    /// threshold, or below ¾ of the upper one when no lower threshold is set.
    pub fn unbind(&self, id: RealId, active: bool, t: Thresholds) {
        let Some(s) = self.slot(id) else { return };
        dec(if active { &s.active } else { &s.inactive });
        Self::clear_overload(s, t);
    }

    fn clear_overload(s: &Slot, t: Thresholds) {
        let total = Self::total(s);
        let clear = if t.lower != 0 {
            total < u64::from(t.lower)
        } else if t.upper != 0 {
            total * 4 < u64::from(t.upper) * 3
        } else {
            true
        };
        if clear {
            s.overloaded.store(false, Ordering::Relaxed);
        }
    }

    /// A connection of `id` crossed the active/inactive line (`set_tcp_state`).
    pub fn moved(&self, id: RealId, now_active: bool) {
        let Some(s) = self.slot(id) else { return };
        if now_active {
            dec(&s.inactive);
            s.active.fetch_add(1, Ordering::Relaxed);
        } else {
            dec(&s.active);
            s.inactive.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A persistence template was bound to `id` (`ip_vs_bind_dest` with
    /// `IP_VS_CONN_F_TEMPLATE`): `persistconns` grows, and, as in the kernel, the upper
    /// threshold is checked against active + inactive (templates are not in that total).
    pub fn bind_template(&self, id: RealId, t: Thresholds) {
        let Some(s) = self.slot(id) else { return };
        s.persistent.fetch_add(1, Ordering::Relaxed);
        if t.upper != 0 && Self::total(s) >= u64::from(t.upper) {
            s.overloaded.store(true, Ordering::Relaxed);
        }
    }

    /// A template left `id` (`ip_vs_unbind_dest`): same overload clearing as [`Self::unbind`].
    pub fn unbind_template(&self, id: RealId, t: Thresholds) {
        let Some(s) = self.slot(id) else { return };
        dec(&s.persistent);
        Self::clear_overload(s, t);
    }

    /// Test helper: set counts directly.
    pub fn set(&self, id: RealId, active: u32, inactive: u32) {
        if let Some(s) = self.slot(id) {
            s.active.store(active, Ordering::Relaxed);
            s.inactive.store(inactive, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn id(n: u32) -> RealId {
        RealId(NonZeroU32::new(n).unwrap())
    }

    #[test]
    fn counts_follow_bind_move_unbind() {
        let c = ConnCounts::new();
        let t = Thresholds::default();
        c.bind(id(1), false, t);
        assert_eq!((c.active(id(1)), c.inactive(id(1))), (0, 1));
        c.moved(id(1), true);
        assert_eq!((c.active(id(1)), c.inactive(id(1))), (1, 0));
        assert_eq!(c.overhead(id(1)), 256);
        c.unbind(id(1), true, t);
        assert_eq!((c.active(id(1)), c.inactive(id(1))), (0, 0));
        c.unbind(id(1), true, t);
        assert_eq!(c.active(id(1)), 0, "never below zero");
    }

    #[test]
    fn overload_sets_at_upper_and_clears_at_lower_or_three_quarters() {
        let c = ConnCounts::new();
        let t = Thresholds { upper: 4, lower: 2 };
        for _ in 0..3 {
            c.bind(id(2), true, t);
        }
        assert!(!c.overloaded(id(2)));
        c.bind(id(2), true, t);
        assert!(c.overloaded(id(2)), "4 >= upper 4");
        c.unbind(id(2), true, t);
        c.unbind(id(2), true, t);
        assert!(c.overloaded(id(2)), "2 is not below lower 2");
        c.unbind(id(2), true, t);
        assert!(!c.overloaded(id(2)), "1 < lower 2");

        let t = Thresholds { upper: 8, lower: 0 };
        for _ in 0..8 {
            c.bind(id(3), true, t);
        }
        assert!(c.overloaded(id(3)));
        c.unbind(id(3), true, t);
        c.unbind(id(3), true, t);
        assert!(c.overloaded(id(3)), "6*4 = 24 is not < 8*3 = 24");
        c.unbind(id(3), true, t);
        assert!(!c.overloaded(id(3)), "5*4 < 24");
    }

    #[test]
    fn ids_beyond_capacity_are_ignored() {
        let c = ConnCounts::new();
        let far = id(CAPACITY as u32 + 5);
        c.bind(far, true, Thresholds::default());
        assert_eq!(c.active(far), 0);
        assert!(!c.overloaded(far));
    }
}
