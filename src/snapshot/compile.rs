//! The next snapshot from the previous one and the services a change touched.
//!
//! A change costs what it touches: each touched service is compiled again (its reals placed,
//! its scheduler built) and stored in its slot; its index entries are inserted or removed
//! only when it appears or disappears; the real-id table is rewritten for its reals only.
//! Everything else — the other services' `Arc`s, and every page of the slot, index and
//! real-id tables that holds nothing touched — is shared with the previous snapshot
//! (`paged`). The derived lists (VIPs, the masquerading reals' reply sources) are kept as
//! reference counts and rebuilt only when a count goes to or from zero.
//!
//! Rejected: rebuilding everything per change (the way uvs did until issue 25: ~2 ms per
//! change at 2,000 services, growing with the table) and a persistent hash map crate for the
//! index (a lookup per packet would chase a pointer per trie level; the paged open-addressing
//! table costs one extra load).
//!
//! Mark rules, and fwmark services appearing or disappearing while rules name their mark,
//! change which service a (protocol, VIP, port) reaches across the table: those changes, a
//! `-C` and a change of routes compile everything again, as rarely as they happen.
//!
//! Two steps, so a failure changes nothing: [`Compiler::plan`] compiles aside (and can fail,
//! when a real cannot be placed) and reports the [`Delta`] the kernel's filters need; only
//! [`Compiler::commit`] updates the compiler's own books.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::paged::{Paged, PagedEdit};
use super::{
    IndexSlot, MIN_INDEX, Placement, RealLoc, Routes, ServiceEntry, Snapshot, SnapshotError,
    service_hash,
};
use crate::model::change::Touched;
use crate::model::{ServiceKey, ServiceTable};

/// The control thread's books about the published snapshot: what it needs to compile the next
/// one from it without looking at every service.
#[derive(Clone, Debug, Default)]
pub struct Compiler {
    /// Slot of every compiled service.
    slot_of: HashMap<ServiceKey, u32>,
    /// Slots freed by deleted services, reused first.
    free: Vec<u32>,
    /// Slots ever handed out.
    slots: u32,
    /// (protocol, VIP, port) keys taken over by mark rules → the fwmark service they reach.
    marked: HashMap<ServiceKey, ServiceKey>,
    /// The marked keys reaching each fwmark service.
    reaching_mark: HashMap<ServiceKey, Vec<ServiceKey>>,
    /// Index entries in use.
    index_len: usize,
    /// Index entries per VIP.
    vip_refs: BTreeMap<Ipv4Addr, u32>,
    /// Services whose masquerading or FullNAT reals answer from each (protocol, address,
    /// port).
    nat_refs: BTreeMap<ServiceKey, u32>,
    /// Services whose flows may take each FullNAT local address.
    laddr_refs: BTreeMap<u32, u32>,
    /// Services whose FullNAT reals take each address as their default local address (the
    /// director's address towards them), which must not be a VIP.
    source_refs: BTreeMap<u32, u32>,
}

/// What changed between two snapshots, for the kernel's side of a publication.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// (protocol, VIP, port) keys forwarded now and not before, and the reverse.
    pub keys_added: Vec<ServiceKey>,
    pub keys_removed: Vec<ServiceKey>,
    /// The masquerading reals' reply keys, likewise.
    pub nat_added: Vec<ServiceKey>,
    pub nat_removed: Vec<ServiceKey>,
    /// The VIP list changed (the receive filter and ARP depend on it).
    pub vips_changed: bool,
    /// The NAT reply sources changed (the receive filter and the fanout program).
    pub nat_sources_changed: bool,
    /// The FullNAT local addresses changed (the receive filter, the fanout program, the
    /// workers' port pools, ARP).
    pub laddrs_changed: bool,
    /// Everything was compiled again.
    pub full: bool,
}

/// A compiled next snapshot, not yet committed.
#[derive(Debug)]
pub struct Planned {
    snapshot: Snapshot,
    pub delta: Delta,
    books: Books,
}

impl Planned {
    /// The snapshot that [`Compiler::commit`] will return.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// How the compiler's books change when a plan is committed.
#[derive(Debug)]
enum Books {
    Replace(Box<Compiler>),
    Update(Box<Update>),
}

/// The books' changes after an incremental plan.
#[derive(Debug)]
struct Update {
    slots: Vec<(ServiceKey, Option<u32>)>,
    free_taken: usize,
    freed: Vec<u32>,
    fresh: u32,
    index_len: usize,
    vip_diff: HashMap<Ipv4Addr, i64>,
    nat_diff: HashMap<ServiceKey, i64>,
    laddr_diff: HashMap<u32, i64>,
    source_diff: HashMap<u32, i64>,
}

/// The service index being changed.
struct IndexEdit {
    slots: PagedEdit<IndexSlot>,
    mask: usize,
    len: usize,
}

impl IndexEdit {
    fn with_capacity(entries: usize) -> IndexEdit {
        let cap = (entries * 2).max(MIN_INDEX).next_power_of_two();
        IndexEdit {
            slots: Paged::new(cap).edit(),
            mask: cap - 1,
            len: 0,
        }
    }

    fn home(&self, k: &ServiceKey) -> usize {
        service_hash(k.proto.number(), u32::from(k.vip), k.port) as usize & self.mask
    }

    fn insert(&mut self, k: &ServiceKey, slot: u32) {
        if (self.len + 1) * 2 > self.mask + 1 {
            self.grow();
        }
        let mut i = self.home(k);
        while self.slots.get(i).is_some_and(|e| e.svc != 0) {
            i = (i + 1) & self.mask;
        }
        self.slots.set(
            i,
            IndexSlot {
                vip: u32::from(k.vip),
                svc: slot + 1,
                port: k.port,
                proto: k.proto.number(),
            },
        );
        self.len += 1;
    }

    fn find(&self, k: &ServiceKey) -> Option<usize> {
        let (vip, proto) = (u32::from(k.vip), k.proto.number());
        let mut i = self.home(k);
        loop {
            let e = self.slots.get(i)?;
            if e.svc == 0 {
                return None;
            }
            if e.vip == vip && e.port == k.port && e.proto == proto {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Removes `k`, shifting later entries of its probe run back so that no lookup stops
    /// early at the hole (linear probing without tombstones).
    fn remove(&mut self, k: &ServiceKey) {
        let Some(mut hole) = self.find(k) else {
            return;
        };
        self.len -= 1;
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let Some(&e) = self.slots.get(j) else {
                break;
            };
            if e.svc == 0 {
                break;
            }
            let home = service_hash(e.proto, e.vip, e.port) as usize & self.mask;
            // `e` may move into the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots.set(hole, e);
                hole = j;
            }
        }
        self.slots.set(hole, IndexSlot::default());
    }

    /// Doubles the capacity (every entry placed again: amortised over the inserts).
    fn grow(&mut self) {
        let entries: Vec<IndexSlot> = (0..=self.mask)
            .filter_map(|i| self.slots.get(i).copied())
            .filter(|e| e.svc != 0)
            .collect();
        let mut bigger = IndexEdit::with_capacity(entries.len().max(self.len) * 2);
        for e in entries {
            if let Some(k) = e.key() {
                bigger.insert(&k, e.svc - 1);
            }
        }
        *self = bigger;
    }
}

/// Adds `d` to `key`'s count in `diff`.
fn bump<K: std::hash::Hash + Eq>(diff: &mut HashMap<K, i64>, key: K, d: i64) {
    *diff.entry(key).or_default() += d;
}

/// The keys whose count goes from zero to positive, and from positive to zero.
fn transitions<K: Ord + Copy>(
    counts: &BTreeMap<K, u32>,
    diff: &HashMap<K, i64>,
) -> (Vec<K>, Vec<K>) {
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for (k, d) in diff {
        let before = i64::from(counts.get(k).copied().unwrap_or(0));
        let after = before + d;
        if before == 0 && after > 0 {
            up.push(*k);
        } else if before > 0 && after <= 0 {
            down.push(*k);
        }
    }
    up.sort();
    down.sort();
    (up, down)
}

/// `list` (sorted) without `gone` and with `new` (both sorted), sorted.
fn patched<K: Ord + Copy>(list: &[K], gone: &[K], new: &[K]) -> Vec<K> {
    let mut out: Vec<K> = list
        .iter()
        .filter(|k| gone.binary_search(k).is_err())
        .copied()
        .collect();
    out.extend_from_slice(new);
    out.sort();
    out.dedup();
    out
}

/// Sorted `a` minus sorted `b`.
fn minus<K: Ord + Copy>(a: &[K], b: &[K]) -> Vec<K> {
    a.iter()
        .filter(|k| b.binary_search(k).is_err())
        .copied()
        .collect()
}

fn nat_sources_of(replies: &[ServiceKey]) -> Vec<(u32, u16)> {
    let mut v: Vec<(u32, u16)> = replies.iter().map(|k| (u32::from(k.vip), k.port)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl Compiler {
    /// Whether `key` is in the service index under its own key (an address service no mark
    /// rule takes over).
    fn indexed(&self, key: &ServiceKey) -> bool {
        !key.is_fwmark() && !self.marked.contains_key(key)
    }

    /// The (protocol, VIP, port) keys that reach a compiled service.
    fn reaching(&self, key: &ServiceKey) -> Vec<ServiceKey> {
        if key.is_fwmark() {
            self.reaching_mark.get(key).cloned().unwrap_or_default()
        } else if self.indexed(key) {
            vec![*key]
        } else {
            Vec::new()
        }
    }

    /// Compiles the snapshot that follows `prev` (compiled by this compiler) once `touched`
    /// services of `table` changed; `local` services are configured but not forwarded (see
    /// `health::book`). Changes nothing: [`Compiler::commit`] does.
    pub fn plan(
        &self,
        prev: &Snapshot,
        table: &ServiceTable,
        local: &BTreeSet<ServiceKey>,
        touched: &Touched,
        placement: &mut dyn Placement,
    ) -> Result<Planned, SnapshotError> {
        let forwarded = |k: &ServiceKey| table.service(k).filter(|_| !local.contains(k));
        // A fwmark service that appears or disappears while mark rules name its mark moves
        // (protocol, VIP, port) keys between services: compiled whole.
        let moves_marks = |k: &ServiceKey| {
            k.is_fwmark()
                && forwarded(k).is_some() != self.slot_of.contains_key(k)
                && table.mark_rules().iter().any(|r| r.mark == k.fwmark)
        };
        if touched.all || touched.keys.iter().any(moves_marks) {
            return self.plan_full(prev, table, local, placement);
        }
        let mut compiled = Vec::with_capacity(touched.keys.len());
        for k in &touched.keys {
            let entry = match forwarded(k) {
                Some(svc) => Some(ServiceEntry::compile(svc, placement)?),
                None => None,
            };
            compiled.push((*k, entry));
        }

        let mut services = prev.services.edit();
        let mut real_by_id = prev.real_by_id.edit();
        let mut index = IndexEdit {
            slots: prev.index.edit(),
            mask: prev.index_mask,
            len: self.index_len,
        };
        let mut delta = Delta::default();
        let mut slots = Vec::new();
        let (mut free_taken, mut fresh) = (0usize, 0u32);
        let mut freed = Vec::new();
        let mut vip_diff = HashMap::new();
        let mut nat_diff = HashMap::new();
        let mut laddr_diff = HashMap::new();
        let mut source_diff = HashMap::new();
        // FullNAT reals of the compiled services that take a default local address: checked
        // against the VIPs once those are known.
        let mut new_sources: Vec<(u32, ServiceKey, u32)> = Vec::new();
        for (k, entry) in compiled {
            let old_slot = self.slot_of.get(&k).copied();
            let old = old_slot.and_then(|s| services.get(s as usize).cloned().flatten());
            let reaching = self.reaching(&k);
            if let Some(old) = &old {
                for r in &old.reals {
                    real_by_id.set(r.id.index(), RealLoc::default());
                }
                for n in old.nat_replies(&reaching) {
                    bump(&mut nat_diff, n, -1);
                }
                for a in old.laddrs_in_use() {
                    bump(&mut laddr_diff, a, -1);
                }
                for a in old.sources_in_use() {
                    bump(&mut source_diff, a, -1);
                }
            }
            match entry {
                Some(e) => {
                    let slot = match old_slot {
                        Some(s) => s,
                        None => {
                            let s = if free_taken < self.free.len() {
                                free_taken += 1;
                                self.free[self.free.len() - free_taken]
                            } else {
                                fresh += 1;
                                self.slots + fresh - 1
                            };
                            slots.push((k, Some(s)));
                            if self.indexed(&k) {
                                index.insert(&k, s);
                                bump(&mut vip_diff, k.vip, 1);
                                delta.keys_added.push(k);
                            }
                            s
                        }
                    };
                    for (position, r) in e.reals.iter().enumerate() {
                        let loc = RealLoc {
                            svc: slot + 1,
                            position: position as u32,
                        };
                        real_by_id.set(r.id.index(), loc);
                    }
                    let reaching = if old_slot.is_some() {
                        reaching
                    } else {
                        self.reaching(&k)
                    };
                    for n in e.nat_replies(&reaching) {
                        bump(&mut nat_diff, n, 1);
                    }
                    for a in e.laddrs_in_use() {
                        bump(&mut laddr_diff, a, 1);
                    }
                    for a in e.sources_in_use() {
                        bump(&mut source_diff, a, 1);
                    }
                    new_sources.extend(e.default_sources().map(|(r, src)| (r, e.key, src)));
                    services.set(slot as usize, Some(Arc::new(e)));
                }
                None => {
                    if let Some(s) = old_slot {
                        services.set(s as usize, None);
                        freed.push(s);
                        slots.push((k, None));
                        if self.indexed(&k) {
                            index.remove(&k);
                            bump(&mut vip_diff, k.vip, -1);
                            delta.keys_removed.push(k);
                        }
                    }
                }
            }
        }
        let (vips_up, vips_down) = transitions(&self.vip_refs, &vip_diff);
        let vips = if vips_up.is_empty() && vips_down.is_empty() {
            Arc::clone(&prev.vips)
        } else {
            delta.vips_changed = true;
            patched(&prev.vips, &vips_down, &vips_up).into()
        };
        let (nat_up, nat_down) = transitions(&self.nat_refs, &nat_diff);
        let (nat_replies, nat_sources) = if nat_up.is_empty() && nat_down.is_empty() {
            (Arc::clone(&prev.nat_replies), Arc::clone(&prev.nat_sources))
        } else {
            let replies = patched(&prev.nat_replies, &nat_down, &nat_up);
            let sources = nat_sources_of(&replies);
            delta.nat_sources_changed = *sources != *prev.nat_sources;
            (replies.into(), sources.into())
        };
        delta.nat_added = nat_up;
        delta.nat_removed = nat_down;
        // A default local address must not be a VIP: the compiled services' against every
        // VIP, and a VIP that appears against every service's.
        for &(real, key, source) in &new_sources {
            if vips.binary_search(&Ipv4Addr::from(source)).is_ok() {
                return Err(source_is_vip(real, key, source));
            }
        }
        for vip in &vips_up {
            let a = u32::from(*vip);
            let users = i64::from(self.source_refs.get(&a).copied().unwrap_or(0))
                + source_diff.get(&a).copied().unwrap_or(0);
            if users > 0 {
                // Rare: find who, among every service.
                let user = (0..services.len())
                    .filter_map(|i| services.get(i).cloned().flatten())
                    .find_map(|e| {
                        e.default_sources()
                            .find(|&(_, src)| src == a)
                            .map(|(r, _)| (r, e.key))
                    });
                if let Some((real, key)) = user {
                    return Err(source_is_vip(real, key, a));
                }
            }
        }
        let (laddrs_up, laddrs_down) = transitions(&self.laddr_refs, &laddr_diff);
        let laddrs = if laddrs_up.is_empty() && laddrs_down.is_empty() {
            Arc::clone(&prev.laddrs)
        } else {
            delta.laddrs_changed = true;
            patched(&prev.laddrs, &laddrs_down, &laddrs_up).into()
        };
        let snapshot = Snapshot {
            generation: prev.generation + 1,
            timeouts: prev.timeouts.clone(),
            services: services.finish(),
            index_mask: index.mask,
            index: index.slots.finish(),
            real_by_id: real_by_id.finish(),
            routes: prev.routes.clone(),
            local_addrs: Arc::clone(&prev.local_addrs),
            interface_addrs: Arc::clone(&prev.interface_addrs),
            vips,
            nat_sources,
            nat_replies,
            laddrs,
        };
        Ok(Planned {
            snapshot,
            delta,
            books: Books::Update(Box::new(Update {
                slots,
                free_taken,
                freed,
                fresh,
                index_len: index.len,
                vip_diff,
                nat_diff,
                laddr_diff,
                source_diff,
            })),
        })
    }

    /// Compiles every service of `table` anew (slots in table order).
    fn plan_full(
        &self,
        prev: &Snapshot,
        table: &ServiceTable,
        local: &BTreeSet<ServiceKey>,
        placement: &mut dyn Placement,
    ) -> Result<Planned, SnapshotError> {
        let mut c = Compiler::default();
        let forwarded = |k: &ServiceKey| table.service(k).is_some() && !local.contains(k);
        for (k, svc) in table.marked_keys() {
            if forwarded(&svc) {
                c.marked.insert(k, svc);
                c.reaching_mark.entry(svc).or_default().push(k);
            }
        }
        let mut services = Paged::new(0).edit();
        let mut entries: Vec<(ServiceKey, u32)> = Vec::new();
        for svc in table.services() {
            if !forwarded(&svc.key) {
                continue;
            }
            let e = ServiceEntry::compile(svc, placement)?;
            let slot = c.slots;
            c.slots += 1;
            c.slot_of.insert(svc.key, slot);
            services.set(slot as usize, Some(Arc::new(e)));
            entries.push((svc.key, slot));
        }
        // Index entries: marked keys to their fwmark service, then the address services no
        // mark rule took (IPVS finds fwmark services before address ones).
        let mut keys: Vec<(ServiceKey, u32)> = Vec::new();
        for (k, svc) in &c.marked {
            if let Some(&slot) = c.slot_of.get(svc) {
                keys.push((*k, slot));
            }
        }
        keys.extend(entries.iter().filter(|(k, _)| c.indexed(k)).copied());
        let mut index = IndexEdit::with_capacity(keys.len());
        for (k, slot) in &keys {
            index.insert(k, *slot);
            *c.vip_refs.entry(k.vip).or_default() += 1;
        }
        c.index_len = index.len;
        let mut real_by_id = Paged::new(0).edit();
        for (k, slot) in &entries {
            let Some(Some(e)) = services.get(*slot as usize).cloned() else {
                continue;
            };
            for (position, r) in e.reals.iter().enumerate() {
                let loc = RealLoc {
                    svc: slot + 1,
                    position: position as u32,
                };
                real_by_id.set(r.id.index(), loc);
            }
            for n in e.nat_replies(&c.reaching(k)) {
                *c.nat_refs.entry(n).or_default() += 1;
            }
            for a in e.laddrs_in_use() {
                *c.laddr_refs.entry(a).or_default() += 1;
            }
            for a in e.sources_in_use() {
                *c.source_refs.entry(a).or_default() += 1;
            }
            for (real, source) in e.default_sources() {
                if c.vip_refs.contains_key(&Ipv4Addr::from(source)) {
                    return Err(source_is_vip(real, e.key, source));
                }
            }
        }
        let nat_replies: Vec<ServiceKey> = c.nat_refs.keys().copied().collect();
        let nat_sources = nat_sources_of(&nat_replies);
        let vips: Vec<Ipv4Addr> = c.vip_refs.keys().copied().collect();
        let mut local_addrs = placement.local_addrs();
        local_addrs.sort_unstable();
        let laddrs: Vec<u32> = c.laddr_refs.keys().copied().collect();
        let interface_addrs: Vec<u32> = (0..=u16::MAX)
            .map_while(|e| placement.interface_addr(e))
            .collect();
        let snapshot = Snapshot {
            generation: prev.generation + 1,
            timeouts: prev.timeouts.clone(),
            services: services.finish(),
            index_mask: index.mask,
            index: index.slots.finish(),
            real_by_id: real_by_id.finish(),
            routes: Routes::new(placement.routes()?),
            local_addrs: local_addrs.into(),
            interface_addrs: interface_addrs.into(),
            vips: vips.into(),
            nat_sources: nat_sources.into(),
            nat_replies: nat_replies.into(),
            laddrs: laddrs.into(),
        };
        let (before, after) = (prev.forwarded_keys(), snapshot.forwarded_keys());
        let delta = Delta {
            keys_added: minus(&after, &before),
            keys_removed: minus(&before, &after),
            nat_added: minus(snapshot.nat_replies(), prev.nat_replies()),
            nat_removed: minus(prev.nat_replies(), snapshot.nat_replies()),
            vips_changed: snapshot.vips() != prev.vips(),
            nat_sources_changed: snapshot.nat_sources() != prev.nat_sources(),
            laddrs_changed: snapshot.laddrs() != prev.laddrs(),
            full: true,
        };
        Ok(Planned {
            snapshot,
            delta,
            books: Books::Replace(Box::new(c)),
        })
    }

    /// Takes a plan made from this compiler's last snapshot: updates the books and returns the
    /// snapshot to publish.
    pub fn commit(&mut self, planned: Planned) -> Snapshot {
        match planned.books {
            Books::Replace(c) => *self = *c,
            Books::Update(u) => {
                let Update {
                    slots,
                    free_taken,
                    freed,
                    fresh,
                    index_len,
                    vip_diff,
                    nat_diff,
                    laddr_diff,
                    source_diff,
                } = *u;
                for (k, slot) in slots {
                    match slot {
                        Some(s) => self.slot_of.insert(k, s),
                        None => self.slot_of.remove(&k),
                    };
                }
                self.free
                    .truncate(self.free.len().saturating_sub(free_taken));
                self.free.extend(freed);
                self.slots += fresh;
                self.index_len = index_len;
                apply_diff(&mut self.vip_refs, vip_diff);
                apply_diff(&mut self.nat_refs, nat_diff);
                apply_diff(&mut self.laddr_refs, laddr_diff);
                apply_diff(&mut self.source_refs, source_diff);
            }
        }
        planned.snapshot
    }
}

fn source_is_vip(real: u32, key: ServiceKey, source: u32) -> SnapshotError {
    SnapshotError::SourceIsVip(Ipv4Addr::from(real), key, Ipv4Addr::from(source))
}

fn apply_diff<K: Ord>(counts: &mut BTreeMap<K, u32>, diff: HashMap<K, i64>) {
    for (k, d) in diff {
        let after = i64::from(counts.get(&k).copied().unwrap_or(0)) + d;
        if after <= 0 {
            counts.remove(&k);
        } else {
            counts.insert(k, u32::try_from(after).unwrap_or(u32::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::change::{AdminState, Change};
    use crate::model::{
        ForwardMethod, LocalAddr, MarkRule, Protocol, RealSpec, SchedulerKind, ServiceSpec,
    };
    use crate::snapshot::tests::AllOnLink;
    use crate::snapshot::{NextHop, PlaceError, TunnelEnd};

    /// Every real on-link; the director's address towards real 10.0.0.x is 10.0.1.(x % 8 + 1),
    /// some of which are VIPs in the walk below (a FullNAT real without a service local
    /// address is then refused).
    struct OnLinkWithSources;
    impl Placement for OnLinkWithSources {
        fn next_hop(&mut self, addr: Ipv4Addr, m: ForwardMethod) -> Result<NextHop, PlaceError> {
            AllOnLink.next_hop(addr, m)
        }
        fn tunnel_end(&mut self, addr: Ipv4Addr, _: NextHop) -> Result<TunnelEnd, PlaceError> {
            let source = Ipv4Addr::new(10, 0, 1, addr.octets()[3] % 8 + 1);
            Ok(TunnelEnd {
                source: u32::from(source),
                mtu: 1500,
            })
        }
    }

    /// What a worker can see of a snapshot: every lookup it makes, and the kernel's lists.
    fn seen(s: &Snapshot, keys: &[ServiceKey], ids: u32) -> String {
        let mut out = String::new();
        for k in keys {
            let e = s.service(k.proto.number(), u32::from(k.vip), k.port);
            out.push_str(&format!(
                "{k}: {:?}\n",
                e.map(|e| (e.key, &e.reals, &e.paths, e.ops, e.persistence))
            ));
        }
        for id in 1..=ids {
            let Some(nz) = std::num::NonZeroU32::new(id) else {
                continue;
            };
            let r = s.real(crate::model::RealId(nz));
            out.push_str(&format!("{id}: {:?}\n", r.map(|r| (r.dest, r.path))));
        }
        out.push_str(&format!(
            "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n",
            s.forwarded_keys(),
            s.vips(),
            s.nat_replies(),
            s.nat_sources(),
            s.laddrs()
        ));
        out
    }

    /// A deterministic stream of numbers (no dependency, same sequence every run).
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn compiling_only_what_changed_gives_the_snapshot_a_full_build_gives() {
        let vip = |i: u64| Ipv4Addr::new(10, 0, 1, (i % 5) as u8 + 1);
        let key = |i: u64| {
            if i % 11 == 0 {
                ServiceKey::fwmark((i % 3) as u32 + 1)
            } else {
                let proto = if i % 2 == 0 {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                };
                ServiceKey::addr(proto, vip(i), 80 + (i % 7) as u16)
            }
        };
        let mut all_keys: Vec<ServiceKey> = Vec::new();
        for i in 0..60 {
            for p in 78..90 {
                for proto in [Protocol::Tcp, Protocol::Udp] {
                    all_keys.push(ServiceKey::addr(proto, vip(i), p));
                }
            }
        }
        all_keys.sort();
        all_keys.dedup();
        let mut rng = Lcg(25);
        let mut state = AdminState::default();
        let mut compiler = Compiler::default();
        let mut snap = Snapshot::empty();
        let mut local = BTreeSet::new();
        let mut refused = 0;
        for step in 0..1500 {
            let i = rng.below(60);
            let k = key(i);
            let real = Ipv4Addr::new(10, 0, 0, 10 + rng.below(6) as u8);
            let mut spec = match rng.below(4) {
                0 => RealSpec::masq(real, if rng.below(2) == 0 { 0 } else { 8080 }),
                1 => RealSpec {
                    forward: ForwardMethod::FullNat,
                    ..RealSpec::masq(real, 8080)
                },
                _ => RealSpec::route(real, k.port),
            };
            spec.weight = rng.below(4) as u32;
            let laddr = Ipv4Addr::new(10, 0, 2, rng.below(3) as u8 + 1);
            let change = match rng.below(22) {
                0..=2 => Change::AddService(ServiceSpec::new(k, SchedulerKind::Wrr)),
                3 => Change::DeleteService(k),
                4..=8 => Change::AddReal(k, spec),
                9..=14 => Change::EditReal(k, spec),
                15..=16 => Change::DeleteReal(k, real, spec.port),
                17 => Change::AddMarkRule(MarkRule {
                    proto: Protocol::Tcp,
                    vip: vip(i),
                    ports: vec![80 + (i % 9) as u16],
                    mark: (i % 3) as u32 + 1,
                }),
                18 => {
                    // A service handed to the director's stack, or taken back.
                    if !local.remove(&k) {
                        local.insert(k);
                    }
                    Change::SetTimeouts {
                        tcp: 0,
                        tcpfin: 0,
                        udp: 0,
                    }
                }
                19 => Change::AddLocalAddr(
                    k,
                    LocalAddr {
                        addr: laddr,
                        interface: None,
                    },
                ),
                20 => Change::DeleteLocalAddr(k, laddr),
                _ => match state.table.mark_rules().first() {
                    Some(r) if rng.below(4) == 0 => Change::DeleteMarkRule(r.clone()),
                    _ => Change::EditService(ServiceSpec::new(k, SchedulerKind::Rr)),
                },
            };
            let changes = [change];
            let Ok(journal) = state.apply_in_place(&changes) else {
                continue;
            };
            let mut touched = Touched::of(&changes);
            touched.add(k);
            let planned = compiler.plan(
                &snap,
                &state.table,
                &local,
                &touched,
                &mut OnLinkWithSources,
            );
            let full = Snapshot::build(
                &crate::health::book::published(&state.table, &local),
                0,
                &mut OnLinkWithSources,
            );
            // Refused (a FullNAT real's default local address is a VIP) exactly when a full
            // build refuses, and then taken back as the control thread does.
            let (planned, full) = match (planned, full) {
                (Ok(p), Ok(f)) => (p, f),
                (Err(a), Err(b)) => {
                    let vip = |e: &SnapshotError| matches!(e, SnapshotError::SourceIsVip(..));
                    assert!(vip(&a) && vip(&b), "step {step}: {a} / {b}");
                    refused += 1;
                    state.undo(journal);
                    if let Change::SetTimeouts { .. } = changes[0] {
                        // The local set is not part of the state: take it back too.
                        if !local.remove(&k) {
                            local.insert(k);
                        }
                    }
                    continue;
                }
                (p, f) => panic!(
                    "step {step}: {changes:?}: incremental {:?}, full {:?}",
                    p.err(),
                    f.err()
                ),
            };
            drop(journal);
            let prev_keys = snap.forwarded_keys();
            let d = planned.delta.clone();
            let next = compiler.commit(planned);
            assert_eq!(
                seen(&next, &all_keys, 400),
                seen(&full, &all_keys, 400),
                "step {step}: {changes:?}"
            );
            // The delta is exactly what the kernel filter must change.
            let now = next.forwarded_keys();
            assert_eq!(d.keys_added, minus(&now, &prev_keys), "step {step}");
            assert_eq!(d.keys_removed, minus(&prev_keys, &now), "step {step}");
            snap = next;
        }
        assert!(state.table.services().len() > 10, "the walk built a table");
        assert!(
            refused > 0,
            "the walk met a default local address that is a VIP"
        );
        assert!(
            !snap.laddrs().is_empty(),
            "the walk ended with FullNAT local addresses"
        );
    }

    #[test]
    fn a_weight_change_compiles_one_service_and_shares_the_others() {
        let mut state = AdminState::default();
        let vip = Ipv4Addr::new(10, 0, 0, 100);
        let mut changes = Vec::new();
        for port in 1000..1300u16 {
            let k = ServiceKey::addr(Protocol::Tcp, vip, port);
            changes.push(Change::AddService(ServiceSpec::new(k, SchedulerKind::Wrr)));
            changes.push(Change::AddReal(
                k,
                RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), port),
            ));
        }
        let _ = state.apply_in_place(&changes).unwrap();
        let mut compiler = Compiler::default();
        let planned = compiler
            .plan(
                &Snapshot::empty(),
                &state.table,
                &BTreeSet::new(),
                &Touched::all(),
                &mut AllOnLink,
            )
            .unwrap();
        let before = compiler.commit(planned);
        let edited = ServiceKey::addr(Protocol::Tcp, vip, 1100);
        let mut spec = RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), 1100);
        spec.weight = 5;
        let change = [Change::EditReal(edited, spec)];
        let _ = state.apply_in_place(&change).unwrap();
        let planned = compiler
            .plan(
                &before,
                &state.table,
                &BTreeSet::new(),
                &Touched::of(&change),
                &mut AllOnLink,
            )
            .unwrap();
        assert_eq!(
            planned.delta,
            Delta::default(),
            "nothing for the kernel filter, no socket filter to re-attach"
        );
        let after = compiler.commit(planned);
        for port in 1000..1300u16 {
            let k = ServiceKey::addr(Protocol::Tcp, vip, port);
            let (a, b) = (
                before.shared_service(&k).unwrap(),
                after.shared_service(&k).unwrap(),
            );
            assert_eq!(Arc::ptr_eq(a, b), k != edited, "{k}");
        }
        let w = |s: &Snapshot| s.service(6, u32::from(vip), 1100).unwrap().reals[0].weight;
        assert_eq!((w(&before), w(&after)), (1, 5));
        // The index and the real-id table were not copied at all.
        assert!(Arc::ptr_eq(
            &before.index.pages_arc(),
            &after.index.pages_arc()
        ));
    }
}
