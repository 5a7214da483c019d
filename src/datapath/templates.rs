//! Persistence templates (`ipvsadm -p [timeout] [-M netmask]`), shared by all workers.
//!
//! IPVS keeps one template per `<proto, client net, vip, vport>` (client port 0, state NONE in
//! `-Lnc`) in its global connection table; a client's connections hash to different uvs
//! workers, so the templates live in one table that every worker reads and writes with atomics
//! only: fixed capacity, no allocation after construction, no lock.
//!
//! ## Kernel rules reproduced (`ip_vs_sched_persist`, `ip_vs_conn_expire`, `ip_vs_check_template`)
//! - New connection, template found and its real usable: that real, even at weight 0 (unless
//!   `expire_quiescent_template`); the template's timer restarts with its timeout and its
//!   `n_control` (children) grows by one. A template whose real is gone (or quiesced with
//!   `expire_quiescent_template`) is invalidated: unmatchable, it lives on only for its children.
//! - Not found: the scheduler picks, a template is created with `svc->timeout`.
//! - The timer firing while children remain re-arms it for 60 s and sets the template's timeout
//!   to 60 s for good (`expire_later`). Here the timer is evaluated lazily and exactly: the
//!   child leaving last moves the deadline to the next 60 s tick after the original one.
//! - Packets of existing connections never touch the template.
//!
//! ## Layout and concurrency
//! A slot is 32 bytes: the key (two words), the real id, the timeout, and one 64-bit `life`
//! word holding the state, `n_control`, the "delayed" bit and the last-use time. Every change to
//! a live template is one CAS on `life`. A free slot is claimed by CAS-ing `life` to BUSY, the
//! key and real are written, then `life` is published LIVE with a release store; readers that
//! meet a BUSY slot wait the few stores it takes. Two workers racing to create the same
//! template: after publishing, an inserter looks for another live template with the same key
//! earlier in the probe window; if there is one it withdraws its own and adopts that one, so
//! both agree on one real (the loser's scheduler pick is discarded).
//!
//! Open addressing, lookups scan a window of [`WINDOW`] slots from the key's home (deleted slots
//! are simply emptied: no shifting, since other workers read concurrently).
//!
//! ## Full window
//! An insert takes the first empty slot, else the first dead one (expired, no children), else
//! evicts the template without children that expires soonest (counted in `evictions`). If every
//! slot in the window controls children, no template is created: the connection is scheduled
//! without persistence and `full` is counted. Memory never grows.
//!
//! ## Limits
//! Times are milliseconds on the workers' wrapping 32-bit clock; an age is valid up to
//! 46 days (the longest `-p` is 31 days). `n_control` saturates at 2^24 − 1 children; a child
//! beyond that is not linked to the template (it keeps its real; the template may expire
//! before it). `persistconns` of a dead template drops when the sweep reaches it
//! ([`TemplateTable::expire_some`], run by the workers a little per batch).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::model::RealId;

/// Slots a lookup or insert examines.
pub const WINDOW: usize = 16;
/// `expire_later`: a template that still controls connections is re-checked every 60 s.
pub const DELAY_MS: u32 = 60_000;

const LAST_USE_MASK: u64 = 0xFFFF_FFFF;
const N_SHIFT: u32 = 32;
const N_MAX: u64 = (1 << 24) - 1;
const DELAYED: u64 = 1 << 56;
const STATE_SHIFT: u32 = 57;
const STATE_MASK: u64 = 0b11 << STATE_SHIFT;
const EMPTY: u64 = 0;
const BUSY: u64 = 1 << STATE_SHIFT;
const LIVE: u64 = 2 << STATE_SHIFT;
const INVALID: u64 = 3 << STATE_SHIFT;
/// Ages beyond this are read as "in the future" (a worker's batch clock a little behind the
/// one that refreshed the template).
const FUTURE: u32 = 0xF000_0000;

/// What a template is keyed by: `<proto, client & netmask, vip, vport>` (client port 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TemplateKey {
    pub proto: u8,
    pub snet: u32,
    pub vip: u32,
    /// The service port, or 0 for FTP and port-zero services (see `snapshot::Persistence`).
    pub vport: u16,
}

impl TemplateKey {
    fn a(&self) -> u64 {
        (u64::from(self.snet) << 32) | u64::from(self.vip)
    }
    /// Never 0, so a half-written slot cannot match a key.
    fn b(&self) -> u32 {
        (u32::from(self.vport) << 16) | (u32::from(self.proto) << 8) | 1
    }
    fn hash(&self) -> u64 {
        let mut h = self.a().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(self.b());
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^ (h >> 33)
    }
}

#[repr(C, align(32))]
#[derive(Default)]
struct Slot {
    key_a: AtomicU64,
    key_b: AtomicU32,
    real: AtomicU32,
    timeout_ms: AtomicU32,
    _pad: u32,
    life: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 32);

#[inline]
fn state(life: u64) -> u64 {
    life & STATE_MASK
}
#[inline]
fn n_control(life: u64) -> u64 {
    (life >> N_SHIFT) & N_MAX
}
#[inline]
fn last_use(life: u64) -> u32 {
    (life & LAST_USE_MASK) as u32
}
#[inline]
fn pack(st: u64, n: u64, delayed: bool, last: u32) -> u64 {
    st | (n << N_SHIFT) | if delayed { DELAYED } else { 0 } | u64::from(last)
}
#[inline]
fn age(now: u32, last: u32) -> u32 {
    let a = now.wrapping_sub(last);
    if a >= FUTURE { 0 } else { a }
}

/// Time left before the template's timer fires, or `None` if it has fired with no child
/// left (dead). With children, a fired timer re-arms every 60 s.
fn remaining(life: u64, timeout: u32, now: u32) -> Option<u32> {
    let eff = if life & DELAYED != 0 {
        DELAY_MS
    } else {
        timeout
    };
    let a = age(now, last_use(life));
    if a < eff {
        return Some(eff - a);
    }
    if n_control(life) == 0 {
        return None;
    }
    Some(DELAY_MS - (a - eff) % DELAY_MS)
}

/// A template found or created for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub real: RealId,
    /// The slot the new connection is a child of (pass it to [`TemplateTable::release`] when
    /// the connection goes); `None` if it is not linked (OPS, or no room).
    pub slot: Option<u32>,
    /// A template was created for this real: count it (`ConnCounts::bind_template`).
    pub created: Option<RealId>,
    /// A template of this real was discarded to make room: uncount it.
    pub displaced: Option<RealId>,
}

/// A live template, for listings (`ipvsadm -Lnc`: protocol, expire, NONE, client net:0, vip,
/// real).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemplateEntry {
    pub key: TemplateKey,
    pub real: RealId,
    /// Milliseconds until the template's timer fires.
    pub expires_in_ms: u32,
    pub n_control: u32,
    /// `false` once invalidated (real gone or quiesced): kept only for its children.
    pub valid: bool,
}

pub struct TemplateTable {
    slots: Box<[Slot]>,
    mask: usize,
    sweep: AtomicUsize,
    /// Idle templates discarded to make room.
    pub evictions: AtomicU64,
    /// Connections scheduled without a template because the window was full of templates
    /// with children.
    pub full: AtomicU64,
}

impl TemplateTable {
    /// A table of at least `capacity` slots (power of two, minimum [`WINDOW`]).
    pub fn new(capacity: usize) -> TemplateTable {
        let cap = capacity.max(WINDOW).next_power_of_two();
        TemplateTable {
            slots: (0..cap).map(|_| Slot::default()).collect(),
            mask: cap - 1,
            sweep: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
            full: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn bytes_per_template() -> usize {
        std::mem::size_of::<Slot>()
    }

    /// Waits out a BUSY slot (a claimer between its CAS and its publish: a few stores).
    #[inline]
    fn settled(&self, i: usize) -> u64 {
        let mut spins = 0u32;
        loop {
            let life = self.slots[i].life.load(Ordering::Acquire);
            if state(life) != BUSY {
                return life;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    #[inline]
    fn matches(&self, i: usize, key: &TemplateKey) -> bool {
        let s = &self.slots[i];
        s.key_b.load(Ordering::Relaxed) == key.b() && s.key_a.load(Ordering::Relaxed) == key.a()
    }

    #[inline]
    fn real_at(&self, i: usize) -> Option<RealId> {
        std::num::NonZeroU32::new(self.slots[i].real.load(Ordering::Relaxed)).map(RealId)
    }

    /// Uses the live template for `key`, if any: `valid(real)` is IPVS's
    /// `ip_vs_check_template` (real still present, and not quiesced when
    /// `expire_quiescent_template` is on); a template failing it is invalidated and skipped.
    /// `child`: the new connection will be a child (false for one-packet scheduling).
    pub fn lookup(
        &self,
        key: &TemplateKey,
        now: u32,
        child: bool,
        valid: impl Fn(RealId) -> bool,
    ) -> Option<Placed> {
        let home = key.hash() as usize;
        for p in 0..WINDOW {
            let i = (home + p) & self.mask;
            if let Some(placed) = self.try_use(i, key, now, child, &valid) {
                return Some(placed);
            }
        }
        None
    }

    /// Refreshes slot `i` if it holds a live, valid template for `key`.
    fn try_use(
        &self,
        i: usize,
        key: &TemplateKey,
        now: u32,
        child: bool,
        valid: &impl Fn(RealId) -> bool,
    ) -> Option<Placed> {
        let mut life = self.settled(i);
        loop {
            if state(life) != LIVE || !self.matches(i, key) {
                return None;
            }
            let timeout = self.slots[i].timeout_ms.load(Ordering::Relaxed);
            remaining(life, timeout, now)?;
            let real = self.real_at(i)?;
            let n = n_control(life);
            if !valid(real) {
                // Invalidate: unmatchable from now on, its timer not restarted.
                let inv = (life & !STATE_MASK) | INVALID;
                match self.slots[i].life.compare_exchange(
                    life,
                    inv,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return None,
                    Err(cur) => {
                        life = cur;
                        continue;
                    }
                }
            }
            // A timer that has fired with children re-armed at 60 s: the timeout is 60 s now.
            let eff = if life & DELAYED != 0 {
                DELAY_MS
            } else {
                timeout
            };
            let delayed = life & DELAYED != 0 || age(now, last_use(life)) >= eff;
            let link = child && n < N_MAX;
            let new = pack(LIVE, n + u64::from(link), delayed, now);
            match self.slots[i].life.compare_exchange(
                life,
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Placed {
                        real,
                        slot: link.then_some(i as u32),
                        created: None,
                        displaced: None,
                    });
                }
                Err(cur) => life = cur,
            }
        }
    }

    /// Creates the template for `key` → `real` (after a [`lookup`](Self::lookup) miss and a
    /// scheduler pick). If another worker created one meanwhile, that one is used instead
    /// (see the module doc), so `Placed::real` may differ from `real`. `None`: no room.
    pub fn insert(
        &self,
        key: &TemplateKey,
        real: RealId,
        timeout_ms: u32,
        now: u32,
        child: bool,
        valid: impl Fn(RealId) -> bool,
    ) -> Option<Placed> {
        let home = key.hash() as usize;
        'retry: loop {
            let mut empty = None;
            let mut dead = None;
            let mut victim: Option<(usize, u64, u32)> = None;
            for p in 0..WINDOW {
                let i = (home + p) & self.mask;
                if let Some(placed) = self.try_use(i, key, now, child, &valid) {
                    return Some(placed);
                }
                let life = self.slots[i].life.load(Ordering::Acquire);
                match state(life) {
                    EMPTY if empty.is_none() => empty = Some((i, life)),
                    EMPTY => {}
                    LIVE | INVALID => {
                        let timeout = self.slots[i].timeout_ms.load(Ordering::Relaxed);
                        match remaining(life, timeout, now) {
                            None => {
                                if dead.is_none() {
                                    dead = Some((i, life));
                                }
                            }
                            Some(left) if n_control(life) == 0 => {
                                if victim.is_none_or(|(_, _, l)| left < l) {
                                    victim = Some((i, life, left));
                                }
                            }
                            Some(_) => {}
                        }
                    }
                    _ => {}
                }
            }
            let (i, old, evict) = match (empty, dead, victim) {
                (Some((i, l)), _, _) => (i, l, false),
                (None, Some((i, l)), _) => (i, l, false),
                (None, None, Some((i, l, _))) => (i, l, true),
                (None, None, None) => {
                    self.full.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            };
            let old_real = if state(old) == EMPTY {
                None
            } else {
                self.real_at(i)
            };
            if self.slots[i]
                .life
                .compare_exchange(old, BUSY, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue 'retry;
            }
            if evict {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
            let s = &self.slots[i];
            s.key_a.store(key.a(), Ordering::Relaxed);
            s.key_b.store(key.b(), Ordering::Relaxed);
            s.real.store(real.0.get(), Ordering::Relaxed);
            s.timeout_ms.store(timeout_ms, Ordering::Relaxed);
            let mine = pack(LIVE, u64::from(child), false, now);
            s.life.store(mine, Ordering::Release);

            // Did another worker publish the same key earlier in the window meanwhile?
            for p in 0..WINDOW {
                let j = (home + p) & self.mask;
                if j == i {
                    break;
                }
                if let Some(placed) = self.try_use(j, key, now, child, &valid) {
                    // Withdraw ours: empty if nobody joined it, else leave it to its children.
                    let mut cur = mine;
                    loop {
                        let n = n_control(cur) - u64::from(child);
                        let next = if n == 0 {
                            EMPTY
                        } else {
                            (cur & !(STATE_MASK | (N_MAX << N_SHIFT))) | INVALID | (n << N_SHIFT)
                        };
                        match s.life.compare_exchange(
                            cur,
                            next,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => {
                                return Some(Placed {
                                    created: (n != 0).then_some(real),
                                    displaced: old_real,
                                    ..placed
                                });
                            }
                            Err(c) => cur = c,
                        }
                    }
                }
            }
            return Some(Placed {
                real,
                slot: child.then_some(i as u32),
                created: Some(real),
                displaced: old_real,
            });
        }
    }

    /// A child of the template in `slot` went away (`ip_vs_control_del`). If the template's
    /// timer has already fired (it was kept only for its children) and this was the last
    /// child, it now dies at the next 60 s tick, as the kernel's re-armed timer does.
    pub fn release(&self, slot: u32, now: u32) {
        let Some(s) = self.slots.get(slot as usize) else {
            return;
        };
        let timeout = s.timeout_ms.load(Ordering::Relaxed);
        let mut life = s.life.load(Ordering::Acquire);
        loop {
            let st = state(life);
            let n = n_control(life);
            if (st != LIVE && st != INVALID) || n == 0 {
                return;
            }
            let mut next = life - (1 << N_SHIFT);
            if n == 1 {
                let eff = if life & DELAYED != 0 {
                    DELAY_MS
                } else {
                    timeout
                };
                let a = age(now, last_use(life));
                if a >= eff {
                    let ticks = (a - eff) / DELAY_MS + 1;
                    let deadline = last_use(life)
                        .wrapping_add(eff)
                        .wrapping_add(ticks.wrapping_mul(DELAY_MS));
                    next = pack(st, 0, true, deadline.wrapping_sub(DELAY_MS));
                }
            }
            match s
                .life
                .compare_exchange(life, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(cur) => life = cur,
            }
        }
    }

    /// Frees dead templates among the next `budget` slots (a cursor shared by all workers),
    /// reporting each one's real to `on_remove` (`ConnCounts::unbind_template`).
    pub fn expire_some(&self, now: u32, budget: usize, mut on_remove: impl FnMut(RealId)) -> usize {
        let budget = budget.min(self.slots.len());
        let start = self.sweep.fetch_add(budget, Ordering::Relaxed);
        let mut removed = 0;
        for k in 0..budget {
            let i = (start + k) & self.mask;
            let s = &self.slots[i];
            let life = s.life.load(Ordering::Acquire);
            let st = state(life);
            if st != LIVE && st != INVALID {
                continue;
            }
            let timeout = s.timeout_ms.load(Ordering::Relaxed);
            if remaining(life, timeout, now).is_some() {
                continue;
            }
            let real = self.real_at(i);
            if s.life
                .compare_exchange(life, EMPTY, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                removed += 1;
                if let Some(r) = real {
                    on_remove(r);
                }
            }
        }
        removed
    }

    /// Visits every live template (valid or kept for its children): a read-only pass over the
    /// atomics for the control thread's listings. Entries may change while it runs.
    pub fn for_each_live(&self, now: u32, mut f: impl FnMut(&TemplateEntry)) {
        for (i, s) in self.slots.iter().enumerate() {
            let life = s.life.load(Ordering::Acquire);
            let st = state(life);
            if st != LIVE && st != INVALID {
                continue;
            }
            let timeout = s.timeout_ms.load(Ordering::Relaxed);
            let Some(left) = remaining(life, timeout, now) else {
                continue;
            };
            let (a, b) = (
                s.key_a.load(Ordering::Relaxed),
                s.key_b.load(Ordering::Relaxed),
            );
            let Some(real) = self.real_at(i) else {
                continue;
            };
            f(&TemplateEntry {
                key: TemplateKey {
                    proto: (b >> 8) as u8,
                    snet: (a >> 32) as u32,
                    vip: a as u32,
                    vport: (b >> 16) as u16,
                },
                real,
                expires_in_ms: left,
                n_control: n_control(life) as u32,
                valid: st == LIVE,
            });
        }
    }

    /// Live templates (listing helper; control path only).
    pub fn live(&self, now: u32) -> Vec<TemplateEntry> {
        let mut v = Vec::new();
        self.for_each_live(now, |e| v.push(*e));
        v
    }
}

#[cfg(test)]
mod tests;
