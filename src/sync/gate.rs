//! The VRRP standby gate the workers read. VRRP (above) decides which VIPs stand by; the
//! datapath only asks whether a frame's VIP does.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;

/// What the workers read: the VIPs whose instance is not MASTER. Traffic to them is dropped
/// (a BACKUP forwards nothing, as IPVS with `backup_only=1`). One relaxed load per frame when
/// no instance is standing by.
#[derive(Default)]
pub struct HaGate {
    any_standby: AtomicBool,
    standby: ArcSwap<Vec<u32>>,
    /// Frames to a standing-by VIP, dropped.
    pub standby_drops: AtomicU64,
}

impl HaGate {
    pub fn new() -> Arc<HaGate> {
        Arc::new(HaGate::default())
    }

    /// `vip` as a host-order integer (as the flow key holds it).
    #[inline]
    pub fn is_standby(&self, vip: u32) -> bool {
        if !self.any_standby.load(Ordering::Relaxed) {
            return false;
        }
        let hit = self.standby.load().contains(&vip);
        if hit {
            self.standby_drops.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    pub fn set_standby(&self, vips: &[Ipv4Addr]) {
        let v: Vec<u32> = vips.iter().map(|a| u32::from(*a)).collect();
        let any = !v.is_empty();
        // Order matters for the fast path: publish the list before raising the flag, and
        // lower the flag before emptying it.
        if any {
            self.standby.store(Arc::new(v));
            self.any_standby.store(true, Ordering::Release);
        } else {
            self.any_standby.store(false, Ordering::Release);
            self.standby.store(Arc::new(v));
        }
    }
}
