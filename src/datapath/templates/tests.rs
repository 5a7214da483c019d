//! Template table with a virtual clock (milliseconds; no sleeps).

use std::num::NonZeroU32;
use std::sync::Arc;

use super::*;

fn rid(n: u32) -> RealId {
    RealId(NonZeroU32::new(n).unwrap())
}

fn key(snet: u32) -> TemplateKey {
    TemplateKey {
        proto: 6,
        snet,
        vip: 0x0a00_0064,
        vport: 80,
    }
}

const P60: u32 = 60_000;
const CLIENT: u32 = 0xac1e_000a;

fn any(_: RealId) -> bool {
    true
}

/// A new connection as `Forwarder::schedule` makes it: lookup, else insert `pick`.
fn connect(t: &TemplateTable, k: &TemplateKey, pick: u32, now: u32) -> Placed {
    t.lookup(k, now, true, any)
        .or_else(|| t.insert(k, rid(pick), P60, now, true, any))
        .unwrap()
}

#[test]
fn same_client_net_gets_the_same_real_and_counts_children() {
    let t = TemplateTable::new(1024);
    let k = key(CLIENT);
    let first = connect(&t, &k, 1, 0);
    assert_eq!(first.real, rid(1));
    assert_eq!(first.created, Some(rid(1)));
    for i in 1..10u32 {
        // The scheduler would now say 2: the template wins.
        let p = connect(&t, &k, 2, i * 1000);
        assert_eq!(p.real, rid(1));
        assert_eq!(p.created, None);
        assert_eq!(p.slot, first.slot);
    }
    let live = t.live(10_000);
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].n_control, 10);
    assert_eq!(live[0].key, k);
    assert_eq!(live[0].real, rid(1));
    assert_eq!(
        live[0].expires_in_ms,
        P60 - 1000,
        "refreshed by the last connection"
    );
    // Another client is a miss.
    assert!(t.lookup(&key(CLIENT + 1), 10_000, true, any).is_none());
}

#[test]
fn netmask_groups_clients() {
    // -M 255.255.255.0: the key carries the masked address (done by the caller).
    let t = TemplateTable::new(1024);
    let mask = 0xFFFF_FF00;
    let a = connect(&t, &key(CLIENT & mask), 3, 0);
    let b = connect(&t, &key((CLIENT + 7) & mask), 4, 10);
    assert_eq!((a.real, b.real), (rid(3), rid(3)));
    let c = connect(&t, &key((CLIENT + 256) & mask), 4, 20);
    assert_eq!(c.real, rid(4), "another /24 is another template");
}

#[test]
fn template_expires_after_its_timeout_without_children() {
    let t = TemplateTable::new(1024);
    let k = key(CLIENT);
    // OPS-style use (no child): lives exactly `timeout` after its last use.
    let p = t.insert(&k, rid(1), P60, 0, false, any).unwrap();
    assert_eq!(p.slot, None);
    assert!(
        t.lookup(&k, 59_999, false, any).is_some(),
        "refreshed at 59.999 s"
    );
    assert!(t.lookup(&k, 119_998, false, any).is_some());
    assert!(t.lookup(&k, 119_998 + P60, false, any).is_none());
    let mut freed = Vec::new();
    t.expire_some(119_998 + P60, 1 << 20, |r| freed.push(r));
    assert_eq!(freed, vec![rid(1)]);
    assert!(t.live(0).is_empty());
}

#[test]
fn template_outlives_its_timeout_while_a_child_lives_then_ticks_by_60s() {
    let t = TemplateTable::new(1024);
    let k = key(CLIENT);
    let timeout = 10_000; // -p 10
    let p = t.insert(&k, rid(1), timeout, 0, true, any).unwrap();
    let slot = p.slot.unwrap();
    // Timer fires at 10 s with a child: re-armed every 60 s (IPVS `expire_later`).
    let mut freed = 0;
    t.expire_some(50_000, 1 << 20, |_| freed += 1);
    assert_eq!(freed, 0, "a template with children never expires");
    let live = t.live(50_000);
    assert_eq!(live[0].expires_in_ms, 20_000, "next tick at 70 s");
    assert!(t.lookup(&k, 50_000, false, any).is_some(), "still matches");
    // That use refreshed it with the 60 s timeout it now has: expires at 110 s.
    assert_eq!(t.live(50_000)[0].expires_in_ms, 60_000);
    // The child leaves at 120 s (past due since 110 s): dies at the next tick, 170 s.
    t.release(slot, 120_000);
    assert_eq!(t.live(120_000)[0].expires_in_ms, 50_000);
    assert!(t.lookup(&k, 169_999, false, any).is_some());
    // Refreshed at 169.999 s, timeout still 60 s.
    assert!(t.lookup(&k, 229_998, false, any).is_some());
    assert!(t.lookup(&k, 229_998 + 60_000, false, any).is_none());
}

#[test]
fn a_child_leaving_before_the_timeout_changes_nothing() {
    let t = TemplateTable::new(1024);
    let k = key(CLIENT);
    let p = t.insert(&k, rid(1), P60, 0, true, any).unwrap();
    t.release(p.slot.unwrap(), 5_000);
    assert_eq!(t.live(5_000)[0].expires_in_ms, 55_000);
    assert_eq!(t.live(5_000)[0].n_control, 0);
    assert!(t.live(60_000).is_empty());
}

#[test]
fn quiesced_or_removed_real_invalidates_the_template() {
    let t = TemplateTable::new(1024);
    let k = key(CLIENT);
    let first = connect(&t, &k, 1, 0);
    // expire_quiescent_template with real 1 at weight 0: check fails → miss, reschedule.
    assert!(t.lookup(&k, 1000, true, |r| r != rid(1)).is_none());
    let second = t.insert(&k, rid(2), P60, 1000, true, any).unwrap();
    assert_eq!(second.real, rid(2));
    assert_ne!(second.slot, first.slot);
    // The invalidated template stays for its child, unmatchable, then goes.
    let live = t.live(1000);
    assert_eq!(live.len(), 2);
    assert!(live.iter().any(|e| !e.valid && e.real == rid(1)));
    t.release(first.slot.unwrap(), 2000);
    let mut freed = Vec::new();
    t.expire_some(60_001, 1 << 20, |r| freed.push(r));
    assert_eq!(freed, vec![rid(1)]);
    assert_eq!(connect(&t, &k, 3, 60_001).real, rid(2));
}

#[test]
fn full_window_evicts_an_idle_template_and_never_one_with_children() {
    let t = TemplateTable::new(16); // one window: every key shares it
    for c in 0..16u32 {
        let p = t.insert(&key(c), rid(1), P60 + c, 0, true, any).unwrap();
        assert!(p.slot.is_some());
    }
    assert!(
        t.insert(&key(100), rid(2), P60, 0, true, any).is_none(),
        "all control children"
    );
    assert_eq!(t.full.load(Ordering::Relaxed), 1);
    // Client 5's children both leave (the first one and this lookup's): now evictable.
    let p = t.lookup(&key(5), 0, true, any).unwrap();
    t.release(p.slot.unwrap(), 0);
    t.release(p.slot.unwrap(), 0);
    let placed = t.insert(&key(100), rid(2), P60, 0, true, any).unwrap();
    assert_eq!(placed.displaced, Some(rid(1)));
    assert_eq!(t.evictions.load(Ordering::Relaxed), 1);
    assert!(t.lookup(&key(5), 0, true, any).is_none());
}

#[test]
fn racing_inserts_agree_on_one_real() {
    for round in 0..200u32 {
        let t = Arc::new(TemplateTable::new(1024));
        let k = key(CLIENT + round);
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (1..=4u32)
            .map(|w| {
                let (t, b) = (Arc::clone(&t), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    b.wait();
                    // Every worker misses, "schedules" its own real and inserts.
                    match t.lookup(&k, 0, true, any) {
                        Some(p) => p,
                        None => t.insert(&k, rid(w), P60, 0, true, any).unwrap(),
                    }
                })
            })
            .collect();
        let placed: Vec<Placed> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let real = placed[0].real;
        assert!(
            placed.iter().all(|p| p.real == real),
            "round {round}: {placed:?}"
        );
        let created: Vec<_> = placed.iter().filter_map(|p| p.created).collect();
        let live = t.live(0);
        let valid: Vec<_> = live.iter().filter(|e| e.valid).collect();
        assert_eq!(valid.len(), 1, "round {round}: {live:?}");
        assert_eq!(valid[0].n_control, 4);
        // persistconns bookkeeping matches the templates left in the table.
        assert_eq!(created.len(), live.len(), "round {round}");
    }
}

#[test]
fn ages_from_a_clock_slightly_behind_are_not_expiries() {
    let t = TemplateTable::new(1024);
    let k = key(CLIENT);
    t.insert(&k, rid(1), P60, 1000, false, any).unwrap();
    // Another worker's batch clock read 3 ms earlier.
    assert!(t.lookup(&k, 997, false, any).is_some());
}
