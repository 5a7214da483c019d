//! Health on the control thread: drain the checkers' reports each tick, reconcile, and apply
//! the resulting changes through [`Control::publish`], the one path every change takes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::Control;
use crate::health::Report;
use crate::health::book::{Book, HealthListing, Plan};
use crate::model::change::{Change, Refused, apply};
use crate::model::{ServiceKey, ServiceTable};

/// How often a reconciliation the model refused is retried.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Health state owned by the control thread. `Default` = no health checks configured.
#[derive(Default)]
pub struct HealthCtl {
    pub book: Book,
    pub reports: Option<Receiver<Report>>,
    /// Services currently handed to the director's own stack (local sorry server).
    pub local: BTreeSet<ServiceKey>,
    retry_at: Option<Instant>,
}

impl HealthCtl {
    pub fn new(book: Book, reports: Receiver<Report>, local: BTreeSet<ServiceKey>) -> HealthCtl {
        HealthCtl {
            book,
            reports: Some(reports),
            local,
            retry_at: None,
        }
    }
}

/// Runs notify/quorum commands the way keepalived does (`sh -c`, not waited for by the
/// control thread; a helper thread reaps each one and logs a failure).
pub fn run_commands(commands: Vec<String>) {
    for c in commands {
        log::info!("health: running {c:?}");
        let spawned = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&c)
            .stdin(std::process::Stdio::null())
            .spawn();
        match spawned {
            Ok(mut child) => {
                let _ = std::thread::Builder::new()
                    .name("uvs-notify".into())
                    .spawn(move || match child.wait() {
                        Ok(s) if !s.success() => log::warn!("health: {c:?} exited with {s}"),
                        Err(e) => log::warn!("health: waiting for {c:?}: {e}"),
                        _ => {}
                    });
            }
            Err(e) => log::warn!("health: cannot run {c:?}: {e}"),
        }
    }
}

/// `table` plus every managed real it lacks (weight 0), so the ARP engine keeps resolving
/// removed reals: their checks (through-the-VIP needs the MAC) must see them come back.
pub fn with_managed_reals(book: &Book, table: &ServiceTable) -> ServiceTable {
    let missing = book.absent_reals(table);
    if missing.is_empty() {
        return table.clone();
    }
    let mut t = table.clone();
    for (key, spec) in missing {
        let _ = t.add_real(&key, spec);
    }
    t
}

impl Control {
    /// An operator's changes (uvsadm): accepted or refused as a whole; when accepted, health
    /// rewrites what it must (a down real stays at weight 0 or absent) in the same transaction.
    pub fn apply_operator(&mut self, changes: &[Change]) -> Result<(), Refused> {
        if self.health.book.is_empty() {
            let local = self.health.local.clone();
            return self.publish(changes, &local);
        }
        let next = apply(&self.state, changes)?;
        let mut book = self.health.book.clone();
        book.operator_changes(changes, &self.state.table);
        let plan = book.reconcile(&next.table);
        let mut all = changes.to_vec();
        all.extend(plan.changes.iter().cloned());
        self.publish(&all, &plan.local)?;
        for c in &plan.changes {
            log::info!("health: kept after the operator's change: {c:?}");
        }
        self.health.book = book;
        run_commands(plan.commands);
        Ok(())
    }

    /// Drains the checkers' reports; reconciles when something changed.
    pub fn drain_health(&mut self) {
        let Some(rx) = &self.health.reports else {
            return;
        };
        let mut changed = false;
        for _ in 0..1024 {
            match rx.try_recv() {
                Ok(r) => changed |= self.health.book.on_report(&r),
                Err(_) => break,
            }
        }
        let retry = self.health.retry_at.is_some_and(|t| Instant::now() >= t);
        if changed || retry {
            let plan = self.health.book.reconcile(&self.state.table);
            self.apply_plan(plan);
        }
    }

    fn apply_plan(&mut self, plan: Plan) {
        let Plan {
            changes,
            local,
            commands,
        } = plan;
        run_commands(commands);
        if changes.is_empty() && local == self.health.local {
            self.health.retry_at = None;
            return;
        }
        match self.publish(&changes, &local) {
            Err(r) => {
                log::error!(
                    "health: cannot apply {:?}: {} (retrying)",
                    r.change.and_then(|i| changes.get(i)),
                    r.message
                );
                self.health.retry_at = Some(Instant::now() + RETRY_EVERY);
            }
            Ok(()) => self.health.retry_at = None,
        }
    }

    pub fn health_listing(&self) -> HealthListing {
        self.health
            .book
            .listing(&self.state.table, &self.health.local)
    }
}
