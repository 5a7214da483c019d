//! Health on the control thread: drain the checkers' reports each tick, reconcile, and apply
//! the resulting changes through [`Control::publish`], the one path every change takes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::Control;
use crate::health::Report;
use crate::health::book::{Book, HealthListing, Plan};
use crate::model::ServiceKey;
use crate::model::change::{Change, Refused, Structure, Touched};

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

impl Control {
    /// An operator's changes (uvsadm): accepted or refused as a whole; when accepted, health
    /// rewrites what it must (a down real stays at weight 0 or absent) in the same transaction.
    /// Only the services the changes name are reconciled and saved for a refusal: a change
    /// costs what it touches, also with 10,000 checked services.
    pub fn apply_operator(&mut self, changes: &[Change]) -> Result<(), Refused> {
        if self.health.book.is_empty() {
            let local = self.health.local.clone();
            return self.publish(changes, &local);
        }
        let touched = Touched::of(changes);
        let saved = self.health.book.save(&touched);
        self.health
            .book
            .operator_changes(changes, &self.state.table);
        let journal = match self.state.apply_in_place(changes) {
            Ok(j) => j,
            Err(r) => {
                self.health.book.restore(saved);
                return Err(r);
            }
        };
        let plan = if touched.all {
            self.health.book.reconcile(&self.state.table)
        } else {
            let keys: Vec<ServiceKey> = touched.keys.iter().copied().collect();
            let local = self.health.local.clone();
            self.health
                .book
                .reconcile_keys(&self.state.table, &keys, &local)
        };
        let kept = match self.state.apply_in_place(&plan.changes) {
            Ok(j) => j,
            Err(mut r) => {
                self.state.undo(journal);
                self.health.book.restore(saved);
                r.change = r.change.map(|i| i + changes.len());
                return Err(r);
            }
        };
        let mut all_touched = touched;
        let plan_touched = Touched::of(&plan.changes);
        all_touched.all |= plan_touched.all;
        for k in plan_touched.keys {
            all_touched.add(k);
        }
        let structure = Structure::of(changes).merge(Structure::of(&plan.changes));
        if let Err(r) = self.publish_state(all_touched, structure, &plan.local) {
            self.state.undo(kept);
            self.state.undo(journal);
            self.health.book.restore(saved);
            return Err(r);
        }
        for c in changes {
            log::info!("applied: {c:?}");
        }
        for c in &plan.changes {
            log::info!("health: kept after the operator's change: {c:?}");
        }
        run_commands(plan.commands);
        Ok(())
    }

    /// Drains the checkers' reports; when something changed, reconciles the services it
    /// changed and applies the result as one publication. A check that stands for 2,000
    /// services (one real behind all of them) is one report and one publication, and so are
    /// all the reports that arrived since the last turn of the control loop.
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
        if retry {
            let plan = self.health.book.reconcile(&self.state.table);
            self.apply_plan(plan);
        } else if changed {
            let local = self.health.local.clone();
            let plan = self.health.book.reconcile_dirty(&self.state.table, &local);
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
        let n = changes.len();
        match self.publish(&changes, &local) {
            Err(r) => {
                log::error!(
                    "health: cannot apply {:?}: {} (retrying)",
                    r.change.and_then(|i| changes.get(i)),
                    r.message
                );
                self.health.retry_at = Some(Instant::now() + RETRY_EVERY);
            }
            Ok(()) => {
                if n > 1 {
                    log::info!("health: {n} changes applied in one publication");
                }
                self.health.retry_at = None
            }
        }
    }

    pub fn health_listing(&self) -> HealthListing {
        self.health
            .book
            .listing(&self.state.table, &self.health.local)
    }
}
