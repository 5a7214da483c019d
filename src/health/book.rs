//! The control thread's health ledger: what the checkers said, what the operator configured,
//! and from both the *desired* service table, expressed as ordinary `Change`s.
//!
//! Pure (no I/O): [`Book::on_report`] records a check; [`Book::reconcile`] compares the desired
//! state with the running table and returns the changes that make them equal, the set of
//! services handed to the director's own stack, and the notify commands to run.
//!
//! **Quorum** (keepalived): the sum of the effective weights of live reals. Quorum is lost
//! when that sum drops below `quorum − hysteresis` (or to 0), and regained when it reaches
//! `quorum + hysteresis`; `quorum_down` / `quorum_up` run on each change. With the default
//! quorum of 1 this is "no live real" (ldirectord's fallback condition).
//!
//! **Sorry server.** While quorum is lost and a sorry server is configured, it replaces every
//! real: live reals are removed (or set to weight 0 when the service is quiescent), the sorry
//! server is added with weight 1. When quorum returns, the sorry server is removed and the
//! reals get their weights back.
//!
//! **Sorry server on the director itself** (`127.0.0.1`, or one of the director's own
//! addresses, as the seed tutorials write it; ldirectord `fallback=127.0.0.1:80 gate`). IPVS
//! hands such traffic to the local stack. uvs does the same by marking the service *local*:
//! the service stays in the configured table (and `uvsadm -Ln` shows it, with the sorry
//! server as its only real), but the published snapshot, the workers' socket filters and the
//! nftables table are built without it, so uvs stops forwarding it and stops dropping it at
//! ingress, and the director's kernel answers (the VIP must be configured on the director,
//! e.g. on `lo`, with a server listening, as in the tutorials). uvs keeps answering ARP for
//! the VIP. When a real returns the service is published again, in the same transaction as
//! the weight changes.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use super::fsm::Transition;
use super::{HealthConfig, Report};
use crate::model::change::Change;
use crate::model::{ForwardMethod, RealSpec, ServiceKey, ServiceTable};

/// One real as the book sees it.
#[derive(Clone, Debug)]
struct RealState {
    addr: Ipv4Addr,
    /// The operator's configured spec (weight = configured weight).
    configured: RealSpec,
    check: &'static str,
    alive: bool,
    dyn_weight: Option<u32>,
    notify_up: Option<String>,
    notify_down: Option<String>,
    quiescent: bool,
    checks: u64,
    failures: u64,
    transitions: u64,
    last_latency: Duration,
    last_message: String,
}

impl RealState {
    fn weight(&self) -> u32 {
        self.dyn_weight.unwrap_or(self.configured.weight)
    }
}

#[derive(Clone, Debug)]
struct ServiceState {
    key: ServiceKey,
    quorum: u32,
    hysteresis: u32,
    sorry: Option<std::net::SocketAddrV4>,
    sorry_forward: ForwardMethod,
    sorry_local: bool,
    quorum_up_cmd: Option<String>,
    quorum_down_cmd: Option<String>,
    quorum_up: bool,
    reals: Vec<RealState>,
    /// Deleted by the operator: no longer managed, its reports are ignored. Kept in place so
    /// that positions never move (a refused change puts a state back where it was).
    ended: bool,
}

impl ServiceState {
    fn sorry_active(&self) -> bool {
        !self.quorum_up && self.sorry.is_some()
    }

    fn live_weight(&self) -> u64 {
        self.reals
            .iter()
            .filter(|r| r.alive)
            .map(|r| u64::from(r.weight()))
            .sum()
    }

    /// keepalived's hysteresis rule; returns the new state.
    fn quorum_next(&self) -> bool {
        let sum = self.live_weight() as i64;
        let (q, h) = (i64::from(self.quorum), i64::from(self.hysteresis));
        if self.quorum_up {
            !(sum == 0 || sum < q - h)
        } else {
            sum >= q + h && sum > 0
        }
    }

    /// Effective weight of a real: `None` = not in the table.
    fn desired(&self, r: &RealState) -> Option<u32> {
        if self.sorry_active() || !r.alive {
            return r.quiescent.then_some(0);
        }
        Some(r.weight())
    }
}

/// What a reconciliation asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Services handed to the director's own stack (sorry server on the director).
    pub local: BTreeSet<ServiceKey>,
    /// Shell commands to run (notify_*, quorum_*), in order.
    pub commands: Vec<String>,
}

/// The health ledger of the control thread.
#[derive(Clone, Debug, Default)]
pub struct Book {
    services: Vec<ServiceState>,
    /// Position of each service in `services`.
    by_key: HashMap<ServiceKey, usize>,
    /// Commands produced by reports, handed out with the next plan.
    pending: Vec<String>,
    /// Services whose desired state reports changed since the last reconciliation.
    dirty: BTreeSet<ServiceKey>,
}

/// What [`Book::save`] keeps to take an operator's change back.
#[derive(Debug)]
pub struct BookSave(Saved);

#[derive(Debug)]
enum Saved {
    /// The states of the services a change touches, by position, and the pending commands.
    Some(Vec<(usize, ServiceState)>, Vec<String>),
    /// Everything (a `-C`).
    All(Box<Book>),
}

fn is_local(addr: Ipv4Addr, own: &[Ipv4Addr]) -> bool {
    addr.is_loopback() || own.contains(&addr)
}

impl Book {
    /// `own` = the director's own interface addresses (a sorry server there is local).
    pub fn new(cfg: &HealthConfig, table: &ServiceTable, own: &[Ipv4Addr]) -> Book {
        let mut services = Vec::new();
        for sh in &cfg.services {
            let Some(svc) = table.service(&sh.key) else {
                continue;
            };
            let reals = svc
                .reals
                .iter()
                .map(|r| {
                    let h = sh.reals.iter().find(|h| h.addr == r.addr);
                    let check = h.map_or(super::CheckKind::None.name(), |h| h.check.kind.name());
                    RealState {
                        addr: r.addr,
                        configured: RealSpec {
                            addr: r.addr,
                            port: r.port,
                            weight: r.weight,
                            forward: r.forward,
                            upper_threshold: r.upper_threshold,
                            lower_threshold: r.lower_threshold,
                        },
                        check,
                        alive: h.is_none_or(|h| !h.check.timing.alpha),
                        dyn_weight: None,
                        notify_up: h.and_then(|h| h.notify_up.clone()),
                        notify_down: h.and_then(|h| h.notify_down.clone()),
                        quiescent: h.and_then(|h| h.quiescent).unwrap_or(sh.quiescent),
                        checks: 0,
                        failures: 0,
                        transitions: 0,
                        last_latency: Duration::ZERO,
                        last_message: String::new(),
                    }
                })
                .collect();
            let mut s = ServiceState {
                key: sh.key,
                quorum: sh.quorum,
                hysteresis: sh.hysteresis,
                sorry: sh.sorry,
                sorry_forward: sh.sorry_forward,
                sorry_local: sh.sorry.is_some_and(|a| is_local(*a.ip(), own)),
                quorum_up_cmd: sh.quorum_up.clone(),
                quorum_down_cmd: sh.quorum_down.clone(),
                quorum_up: true,
                reals,
                ended: false,
            };
            // Start from the state the reals start in (alpha: all down), without hysteresis.
            s.quorum_up = s.live_weight() >= u64::from(s.quorum.max(1));
            services.push(s);
        }
        let by_key = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key, i))
            .collect();
        Book {
            services,
            by_key,
            pending: Vec::new(),
            dirty: BTreeSet::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.services.iter().all(|s| s.ended)
    }

    fn position(&self, key: &ServiceKey) -> Option<usize> {
        let i = *self.by_key.get(key)?;
        self.services.get(i).filter(|s| !s.ended).map(|_| i)
    }

    fn service_mut(&mut self, key: &ServiceKey) -> Option<&mut ServiceState> {
        let i = self.position(key)?;
        self.services.get_mut(i)
    }

    /// Whether the sorry server of service `key` stands in for its reals (quorum lost).
    /// `false` for a service without checks or without a sorry server.
    pub fn sorry_active(&self, key: &ServiceKey) -> bool {
        self.services
            .iter()
            .any(|s| s.key == *key && s.sorry_active())
    }

    fn real_mut(&mut self, key: &ServiceKey, addr: Ipv4Addr) -> Option<&mut RealState> {
        self.service_mut(key)?
            .reals
            .iter_mut()
            .find(|r| r.addr == addr)
    }

    /// Records one check, for every service it stands for. Returns whether the desired state
    /// may have changed (those services are then reconciled by [`Book::reconcile_dirty`]).
    pub fn on_report(&mut self, r: &Report) -> bool {
        let mut any = false;
        let mut logged = false;
        for key in r.services.iter() {
            let Some(real) = self.real_mut(key, r.addr) else {
                continue;
            };
            real.checks += 1;
            if !r.passed {
                real.failures += 1;
            }
            real.last_latency = r.latency;
            real.last_message.clone_from(&r.message);
            let changed = real.alive != r.up || real.dyn_weight != r.weight;
            let mut cmd = None;
            if real.alive != r.up {
                real.transitions += 1;
                cmd = if r.up {
                    real.notify_up.clone()
                } else {
                    real.notify_down.clone()
                };
                // One line per check, not per service: a real behind 2,000 services fails once.
                if !logged {
                    let more = match r.services.len() {
                        1 => String::new(),
                        n => format!(" (and in {} more services)", n - 1),
                    };
                    log::warn!(
                        "health: {key} real {} is {} ({}){more}",
                        r.addr,
                        if r.up { "UP" } else { "DOWN" },
                        r.message
                    );
                    logged = true;
                }
            } else if r.transition == Some(Transition::Weight) && !logged {
                log::info!(
                    "health: {key} real {} dynamic weight {:?}",
                    r.addr,
                    r.weight
                );
                logged = true;
            }
            real.alive = r.up;
            real.dyn_weight = r.weight;
            self.pending.extend(cmd);
            if changed {
                self.dirty.insert(*key);
                any = true;
            }
        }
        any
    }

    /// Saves what [`Book::operator_changes`] and a reconciliation of `touched` may change, so
    /// that a refused change can be taken back with [`Book::restore`].
    pub fn save(&self, touched: &crate::model::change::Touched) -> BookSave {
        if touched.all {
            return BookSave(Saved::All(Box::new(self.clone())));
        }
        let states = touched
            .keys
            .iter()
            .filter_map(|k| {
                let i = *self.by_key.get(k)?;
                Some((i, self.services.get(i)?.clone()))
            })
            .collect();
        BookSave(Saved::Some(states, self.pending.clone()))
    }

    pub fn restore(&mut self, saved: BookSave) {
        match saved.0 {
            Saved::All(book) => *self = *book,
            Saved::Some(states, pending) => {
                for (i, s) in states {
                    if let Some(slot) = self.services.get_mut(i) {
                        *slot = s;
                    }
                }
                self.pending = pending;
            }
        }
    }

    /// Takes an operator's (already accepted) changes into account: an edit or re-add of a
    /// checked real sets its configured spec; deleting a checked real or service ends its
    /// management.
    pub fn operator_changes(&mut self, changes: &[Change], before: &ServiceTable) {
        for c in changes {
            match c {
                Change::EditReal(key, spec) | Change::AddReal(key, spec) => {
                    if let Some(r) = self.real_mut(key, spec.addr) {
                        let port = r.configured.port;
                        r.configured = *spec;
                        r.configured.port = port;
                    }
                }
                Change::DeleteReal(key, addr, _) => {
                    let present = before
                        .service(key)
                        .is_some_and(|s| s.reals.iter().any(|r| r.addr == *addr));
                    if let Some(s) = self.service_mut(key)
                        && present
                    {
                        s.reals.retain(|r| r.addr != *addr);
                        log::info!(
                            "health: {key} real {addr} deleted by the operator: no longer managed"
                        );
                    }
                }
                Change::DeleteService(key) => {
                    if let Some(s) = self.service_mut(key) {
                        s.ended = true;
                    }
                }
                Change::Clear => self.services.iter_mut().for_each(|s| s.ended = true),
                _ => {}
            }
        }
    }

    /// The changes that make `table` what health wants, and the services to hand to the
    /// director's own stack: every service (at start, and to retry).
    pub fn reconcile(&mut self, table: &ServiceTable) -> Plan {
        self.dirty.clear();
        let keys: Vec<ServiceKey> = self
            .services
            .iter()
            .filter(|s| !s.ended)
            .map(|s| s.key)
            .collect();
        self.reconcile_keys(table, &keys, &BTreeSet::new())
    }

    /// [`Book::reconcile`] for the services reports changed since the last reconciliation
    /// only: what one round of checks found is one plan, however many services it touches.
    /// `local` = the services handed to the director's own stack now.
    pub fn reconcile_dirty(&mut self, table: &ServiceTable, local: &BTreeSet<ServiceKey>) -> Plan {
        let keys: Vec<ServiceKey> = std::mem::take(&mut self.dirty).into_iter().collect();
        self.reconcile_keys(table, &keys, local)
    }

    /// Reconciles the services `keys` (managed ones; others are skipped); the plan's `local`
    /// is `local` updated for them.
    pub fn reconcile_keys(
        &mut self,
        table: &ServiceTable,
        keys: &[ServiceKey],
        local: &BTreeSet<ServiceKey>,
    ) -> Plan {
        let mut plan = Plan {
            commands: std::mem::take(&mut self.pending),
            local: local.clone(),
            ..Plan::default()
        };
        for key in keys {
            plan.local.remove(key);
            let Some(svc) = table.service(key) else {
                continue;
            };
            let Some(s) = self.service_mut(key) else {
                continue;
            };
            let up = s.quorum_next();
            if up != s.quorum_up {
                s.quorum_up = up;
                log::warn!(
                    "health: {} quorum {} (live weight {}, quorum {}, hysteresis {}){}",
                    s.key,
                    if up { "UP" } else { "LOST" },
                    s.live_weight(),
                    s.quorum,
                    s.hysteresis,
                    match (s.sorry, up) {
                        (Some(a), false) => format!(": sorry server {a} takes the traffic"),
                        (Some(a), true) => format!(": sorry server {a} withdrawn"),
                        _ => String::new(),
                    }
                );
                plan.commands.extend(if up {
                    s.quorum_up_cmd.clone()
                } else {
                    s.quorum_down_cmd.clone()
                });
            }
            for r in &s.reals {
                let current = svc.reals.iter().find(|x| x.addr == r.addr);
                let want = s.desired(r);
                push_diff(
                    &mut plan.changes,
                    s.key,
                    r.configured,
                    current.map(|c| (c.weight, c.port)),
                    want,
                );
            }
            if let Some(sorry) = s.sorry {
                if s.sorry_local {
                    if s.sorry_active() {
                        plan.local.insert(s.key);
                    }
                } else if !s.reals.iter().any(|r| r.addr == *sorry.ip()) {
                    let current = svc.reals.iter().find(|x| x.addr == *sorry.ip());
                    let spec = RealSpec {
                        forward: s.sorry_forward,
                        ..RealSpec::route(*sorry.ip(), sorry.port())
                    };
                    push_diff(
                        &mut plan.changes,
                        s.key,
                        spec,
                        current.map(|c| (c.weight, c.port)),
                        s.sorry_active().then_some(1),
                    );
                }
            }
        }
        plan
    }

    /// Managed reals that `table` lacks (removed by health), with their configured spec.
    pub fn absent_reals(&self, table: &ServiceTable) -> Vec<(ServiceKey, RealSpec)> {
        let mut out = Vec::new();
        for s in self.services.iter().filter(|s| !s.ended) {
            let Some(svc) = table.service(&s.key) else {
                continue;
            };
            for r in &s.reals {
                if !svc.reals.iter().any(|x| x.addr == r.addr) {
                    out.push((s.key, r.configured));
                }
            }
        }
        out
    }

    /// Rows for `uvs health`; `table` gives the effective weights.
    pub fn listing(&self, table: &ServiceTable, local: &BTreeSet<ServiceKey>) -> HealthListing {
        HealthListing {
            services: self
                .services
                .iter()
                .filter(|s| !s.ended)
                .map(|s| {
                    let svc = table.service(&s.key);
                    ServiceHealthRow {
                        key: s.key,
                        quorum_up: s.quorum_up,
                        live_weight: s.live_weight(),
                        quorum: s.quorum,
                        hysteresis: s.hysteresis,
                        sorry: s.sorry.map(|a| a.to_string()),
                        sorry_active: s.sorry_active(),
                        local: local.contains(&s.key),
                        reals: s
                            .reals
                            .iter()
                            .map(|r| RealHealthRow {
                                addr: r.addr,
                                check: r.check.to_string(),
                                up: r.alive,
                                configured_weight: r.configured.weight,
                                effective_weight: svc.and_then(|v| {
                                    v.reals.iter().find(|x| x.addr == r.addr).map(|x| x.weight)
                                }),
                                checks: r.checks,
                                failures: r.failures,
                                transitions: r.transitions,
                                last_latency_us: r.last_latency.as_micros() as u64,
                                last_message: r.last_message.clone(),
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

/// The change that takes a real from `current` (its weight and port in the table, if there)
/// to `want` (its weight, or absent). A delete names the port the table holds, which for a
/// NAT real is its own and for a DR real the service's, whatever the configuration said.
fn push_diff(
    out: &mut Vec<Change>,
    key: ServiceKey,
    spec: RealSpec,
    current: Option<(u32, u16)>,
    want: Option<u32>,
) {
    match (current, want) {
        (Some((_, port)), None) => out.push(Change::DeleteReal(key, spec.addr, port)),
        (None, Some(w)) => out.push(Change::AddReal(key, RealSpec { weight: w, ..spec })),
        (Some((c, _)), Some(w)) if c != w => {
            out.push(Change::EditReal(key, RealSpec { weight: w, ..spec }))
        }
        _ => {}
    }
}

/// The table the workers and the kernel filter see: `table` without the local services.
pub fn published(table: &ServiceTable, local: &BTreeSet<ServiceKey>) -> ServiceTable {
    let mut t = table.clone();
    for k in local {
        let _ = t.delete_service(k);
    }
    t
}

/// `uvs health`: check state of every managed real.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthListing {
    pub services: Vec<ServiceHealthRow>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealthRow {
    pub key: ServiceKey,
    pub quorum_up: bool,
    pub live_weight: u64,
    pub quorum: u32,
    pub hysteresis: u32,
    pub sorry: Option<String>,
    pub sorry_active: bool,
    /// Handed to the director's own stack (sorry server on the director).
    pub local: bool,
    pub reals: Vec<RealHealthRow>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealHealthRow {
    pub addr: Ipv4Addr,
    pub check: String,
    pub up: bool,
    pub configured_weight: u32,
    /// Weight in the running table; `None` = removed.
    pub effective_weight: Option<u32>,
    pub checks: u64,
    pub failures: u64,
    pub transitions: u64,
    pub last_latency_us: u64,
    pub last_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::fsm::Timing;
    use crate::health::{CheckKind, CheckSpec, RealHealth, ServiceHealth};
    use crate::model::{Protocol, SchedulerKind, ServiceSpec};

    const RS1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
    const RS2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);

    fn key() -> ServiceKey {
        ServiceKey {
            proto: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 0, 0, 100),
            port: 80,
            fwmark: 0,
        }
    }

    fn table(weights: &[(Ipv4Addr, u32)]) -> ServiceTable {
        let mut t = ServiceTable::new();
        t.add_service(ServiceSpec::new(key(), SchedulerKind::Rr))
            .unwrap();
        for &(a, w) in weights {
            let mut s = RealSpec::route(a, 80);
            s.weight = w;
            t.add_real(&key(), s).unwrap();
        }
        t
    }

    fn cfg(f: impl FnOnce(&mut ServiceHealth)) -> HealthConfig {
        let mut s = ServiceHealth::new(key());
        for a in [RS1, RS2] {
            s.reals.push(RealHealth {
                addr: a,
                check: CheckSpec {
                    kind: CheckKind::Tcp,
                    timing: Timing::default(),
                    ..CheckSpec::default()
                },
                notify_up: Some(format!("echo up {a}")),
                notify_down: Some(format!("echo down {a}")),
                quiescent: None,
            });
        }
        f(&mut s);
        HealthConfig { services: vec![s] }
    }

    fn report(addr: Ipv4Addr, up: bool) -> Report {
        Report {
            services: std::sync::Arc::from([key()]),
            addr,
            passed: up,
            up,
            weight: None,
            transition: None,
            latency: Duration::from_millis(1),
            message: String::new(),
        }
    }

    /// Applies a plan's changes to a table, as the control thread would.
    fn run(t: &ServiceTable, plan: &Plan) -> ServiceTable {
        let state = crate::model::change::AdminState {
            table: t.clone(),
            ..Default::default()
        };
        crate::model::change::apply(&state, &plan.changes)
            .unwrap()
            .table
    }

    fn weights(t: &ServiceTable) -> Vec<(Ipv4Addr, u32)> {
        t.service(&key())
            .unwrap()
            .reals
            .iter()
            .map(|r| (r.addr, r.weight))
            .collect()
    }

    #[test]
    fn quiescent_down_is_weight_zero_and_recovery_restores_the_configured_weight() {
        let mut t = table(&[(RS1, 3), (RS2, 1)]);
        let mut b = Book::new(&cfg(|_| {}), &t, &[]);
        assert!(b.reconcile(&t).changes.is_empty());
        assert!(b.on_report(&report(RS1, false)));
        let p = b.reconcile(&t);
        assert_eq!(p.commands, vec![format!("echo down {RS1}")]);
        t = run(&t, &p);
        assert_eq!(weights(&t), vec![(RS1, 0), (RS2, 1)]);
        b.on_report(&report(RS1, true));
        t = run(&t, &b.reconcile(&t));
        assert_eq!(weights(&t), vec![(RS1, 3), (RS2, 1)]);
    }

    #[test]
    fn non_quiescent_down_removes_and_recovery_re_adds() {
        let mut t = table(&[(RS1, 2), (RS2, 1)]);
        let mut b = Book::new(&cfg(|s| s.quiescent = false), &t, &[]);
        b.on_report(&report(RS2, false));
        t = run(&t, &b.reconcile(&t));
        assert_eq!(weights(&t), vec![(RS1, 2)]);
        b.on_report(&report(RS2, true));
        t = run(&t, &b.reconcile(&t));
        assert_eq!(weights(&t), vec![(RS1, 2), (RS2, 1)]);
    }

    #[test]
    fn a_nat_real_on_its_own_port_is_removed_and_restored_on_that_port() {
        let mut t = ServiceTable::new();
        t.add_service(ServiceSpec::new(key(), SchedulerKind::Rr))
            .unwrap();
        for a in [RS1, RS2] {
            t.add_real(&key(), RealSpec::masq(a, 8080)).unwrap();
        }
        let mut b = Book::new(&cfg(|s| s.quiescent = false), &t, &[]);
        b.on_report(&report(RS2, false));
        t = run(&t, &b.reconcile(&t));
        assert_eq!(weights(&t), vec![(RS1, 1)]);
        b.on_report(&report(RS2, true));
        t = run(&t, &b.reconcile(&t));
        let back = &t.service(&key()).unwrap().reals[1];
        assert_eq!(
            (back.addr, back.port, back.forward),
            (RS2, 8080, crate::model::ForwardMethod::Masq)
        );
    }

    #[test]
    fn operator_weight_edit_on_a_down_real_waits_for_recovery() {
        let mut t = table(&[(RS1, 1), (RS2, 1)]);
        let mut b = Book::new(&cfg(|_| {}), &t, &[]);
        b.on_report(&report(RS1, false));
        t = run(&t, &b.reconcile(&t));
        // uvsadm -e -r RS1 -w 5: accepted, then rewritten to 0 in the same transaction.
        let mut spec = RealSpec::route(RS1, 80);
        spec.weight = 5;
        let op = vec![Change::EditReal(key(), spec)];
        let after_op = run(
            &t,
            &Plan {
                changes: op.clone(),
                ..Plan::default()
            },
        );
        b.operator_changes(&op, &t);
        let fix = b.reconcile(&after_op);
        t = run(&after_op, &fix);
        assert_eq!(weights(&t), vec![(RS1, 0), (RS2, 1)]);
        b.on_report(&report(RS1, true));
        t = run(&t, &b.reconcile(&t));
        assert_eq!(weights(&t), vec![(RS1, 5), (RS2, 1)]);
    }

    #[test]
    fn sorry_server_replaces_all_and_local_sorry_hands_the_service_to_the_kernel() {
        let sorry: std::net::SocketAddrV4 = "10.0.0.50:80".parse().unwrap();
        let mut t = table(&[(RS1, 1), (RS2, 1)]);
        let mut b = Book::new(&cfg(|s| s.sorry = Some(sorry)), &t, &[]);
        b.on_report(&report(RS1, false));
        t = run(&t, &b.reconcile(&t));
        assert_eq!(weights(&t), vec![(RS1, 0), (RS2, 1)]);
        b.on_report(&report(RS2, false));
        t = run(&t, &b.reconcile(&t));
        assert_eq!(weights(&t), vec![(RS1, 0), (RS2, 0), (*sorry.ip(), 1)]);
        assert!(b.sorry_active(&key()), "the sorry server stands in");
        b.on_report(&report(RS2, true));
        t = run(&t, &b.reconcile(&t));
        assert_eq!(weights(&t), vec![(RS1, 0), (RS2, 1)]);
        assert!(!b.sorry_active(&key()));

        let local: std::net::SocketAddrV4 = "127.0.0.1:80".parse().unwrap();
        let mut t = table(&[(RS1, 1), (RS2, 1)]);
        let mut b = Book::new(&cfg(|s| s.sorry = Some(local)), &t, &[]);
        b.on_report(&report(RS1, false));
        b.on_report(&report(RS2, false));
        let p = b.reconcile(&t);
        assert_eq!(p.local, [key()].into_iter().collect());
        t = run(&t, &p);
        assert!(published(&t, &p.local).services().is_empty());
        b.on_report(&report(RS1, true));
        let p = b.reconcile(&t);
        assert!(p.local.is_empty());
        t = run(&t, &p);
        assert_eq!(weights(&t), vec![(RS1, 1), (RS2, 0)]);
    }

    #[test]
    fn a_sorry_server_comes_and_goes_with_its_method_and_the_port_the_table_holds() {
        // NAT: the sorry server is a Masq real on its own port.
        let sorry: std::net::SocketAddrV4 = "10.0.0.50:8080".parse().unwrap();
        let t0 = table(&[(RS1, 1), (RS2, 1)]);
        for (forward, port) in [(ForwardMethod::Masq, 8080), (ForwardMethod::Route, 80)] {
            let c = cfg(|s| {
                s.sorry = Some(sorry);
                s.sorry_forward = forward;
            });
            let mut b = Book::new(&c, &t0, &[]);
            b.on_report(&report(RS1, false));
            b.on_report(&report(RS2, false));
            let t = run(&t0, &b.reconcile(&t0));
            let added = t.service(&key()).unwrap().reals[2].clone();
            assert_eq!(
                (added.addr, added.port, added.forward),
                (*sorry.ip(), port, forward)
            );
            // Back: the sorry server leaves (a DR one was stored on the service port, not the
            // configured 8080, and must still be found).
            b.on_report(&report(RS1, true));
            let t = run(&t, &b.reconcile(&t));
            assert_eq!(weights(&t), vec![(RS1, 1), (RS2, 0)], "{forward:?}");
        }
    }

    #[test]
    fn quorum_with_hysteresis() {
        // Weights 1+1+1, quorum 2, hysteresis 1: lost below 1 live weight, back at 3.
        let rs3 = Ipv4Addr::new(10, 0, 0, 13);
        let t = table(&[(RS1, 1), (RS2, 1), (rs3, 1)]);
        let mut b = Book::new(
            &cfg(|s| {
                s.quorum = 2;
                s.hysteresis = 1;
                s.quorum_up = Some("qup".into());
                s.quorum_down = Some("qdown".into());
                s.reals.push(RealHealth {
                    addr: rs3,
                    check: CheckSpec::default(),
                    notify_up: None,
                    notify_down: None,
                    quiescent: None,
                });
            }),
            &t,
            &[],
        );
        let quorum = |b: &Book| b.services[0].quorum_up;
        b.on_report(&report(RS1, false));
        assert!(b.reconcile(&t).commands.iter().all(|c| c != "qdown"));
        assert!(quorum(&b), "2 live ≥ 2 − 1");
        b.on_report(&report(RS2, false));
        b.reconcile(&t);
        assert!(quorum(&b), "1 live ≥ 2 − 1: hysteresis keeps quorum");
        // rs3 has no checker (always up), so use its fsm-less state directly.
        b.services[0].reals[2].alive = false;
        let p = b.reconcile(&t);
        assert!(!quorum(&b));
        assert!(p.commands.contains(&"qdown".to_string()));
        b.on_report(&report(RS1, true));
        b.on_report(&report(RS2, true));
        b.reconcile(&t);
        assert!(!quorum(&b), "2 live < 2 + 1: still lost");
        b.services[0].reals[2].alive = true;
        let p = b.reconcile(&t);
        assert!(quorum(&b));
        assert!(p.commands.contains(&"qup".to_string()));
    }

    #[test]
    fn alpha_starts_down() {
        let t = table(&[(RS1, 1), (RS2, 1)]);
        let mut b = Book::new(
            &cfg(|s| {
                for r in &mut s.reals {
                    r.check.timing.alpha = true;
                }
            }),
            &t,
            &[],
        );
        let t2 = run(&t, &b.reconcile(&t));
        assert_eq!(weights(&t2), vec![(RS1, 0), (RS2, 0)]);
    }

    #[test]
    fn operator_delete_ends_management() {
        let t = table(&[(RS1, 1), (RS2, 1)]);
        let mut b = Book::new(&cfg(|_| {}), &t, &[]);
        b.operator_changes(&[Change::DeleteReal(key(), RS1, 0)], &t);
        assert!(!b.on_report(&report(RS1, false)));
        assert_eq!(b.services[0].reals.len(), 1);
    }
}
