//! The scheduler (design §11): one replica leads at a time by holding the `scheduler` lease in
//! the store; the leader's pass reads every token's standing, asks the pure
//! `velvet_core::schedule::next` what to do, and carries it out: a kickoff for a slot (taken in
//! the job's own transaction, so no slot runs twice even if two replicas both lead for a
//! moment), missed slots recorded, `next_rotation_at` kept the real next start.

use crate::runner::Engine;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use velvet_core::config::{Config, ScheduleSpec, SourceSpec};
use velvet_core::identity::Role;
use velvet_core::schedule::{self, Blackout, Cadence, Verdict};
use velvet_store::{NewJob, StoreError};

/// The lease the leader holds.
pub const LEASE: &str = "scheduler";

/// Who scheduled jobs are requested by, and the role that bounds them: it may revoke, but a
/// gate that needs a person still pauses the job for one (§10).
pub const REQUESTER: &str = "scheduler";
const ROLE: Role = Role::Revoker;

/// The scheduler's state in one replica.
#[derive(Default)]
pub(crate) struct SchedulerState {
    leading: AtomicBool,
    /// Cadences parsed once per declared schedule, by token.
    cadences: std::sync::Mutex<HashMap<String, (Declared, Arc<Cadence>)>>,
    pub(crate) wake: Notify,
}

/// What a cadence was parsed from, to notice a changed declaration.
#[derive(Clone, PartialEq)]
enum Declared {
    Every(Duration),
    Slots(ScheduleSpec),
}

impl Declared {
    /// Whether `spec` still declares this, compared in place (a pass asks for every token).
    fn is(&self, spec: &velvet_core::config::TokenSpec) -> bool {
        match (self, &spec.schedule, spec.rotate_every) {
            (Declared::Slots(s), Some(t), _) => s == t,
            (Declared::Every(d), None, Some(e)) => *d == e,
            _ => false,
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub tokens: usize,
    pub started: Vec<String>,
    pub missed: Vec<String>,
    /// Tokens whose `next_rotation_at` changed.
    pub moved: usize,
    /// The earliest start ahead, for the leader's next wake-up.
    pub next: Option<DateTime<Utc>>,
}

impl Engine {
    /// Whether this replica leads the scheduler now.
    pub fn leads_scheduler(&self) -> bool {
        self.scheduler.leading.load(Ordering::Relaxed)
    }

    fn cadence(&self, spec: &velvet_core::config::TokenSpec) -> Option<Arc<Cadence>> {
        let mut cache = self.scheduler.cadences.lock().expect("never poisoned");
        if let Some((d, c)) = cache.get(&spec.name)
            && d.is(spec)
        {
            return Some(c.clone());
        }
        let declared = match (&spec.schedule, spec.rotate_every) {
            (Some(s), _) => Declared::Slots(s.clone()),
            (None, Some(d)) => Declared::Every(d),
            (None, None) => return None,
        };
        let c = Arc::new(spec.cadence()?);
        cache.insert(spec.name.clone(), (declared, c.clone()));
        Some(c)
    }

    /// One pass over every token at `now` (injected, so tests drive the clock).
    pub async fn schedule_pass(&self, now: DateTime<Utc>) -> Result<PassReport, StoreError> {
        let config = self.config();
        let blackouts = blackouts(&config);
        // Laid out once for the pass: the tokens ask it thousands of times.
        let plan = schedule::Plan::new(
            &blackouts,
            now - chrono::Duration::days(1),
            now + chrono::Duration::days(35),
        );
        let rows = self.store.schedule_standing().await?;
        let mut report = PassReport {
            tokens: rows.len(),
            ..PassReport::default()
        };
        let mut moved = Vec::new();
        for row in rows {
            let Some(spec) = config.token(&row.token) else {
                continue;
            };
            let Some(cadence) = self.cadence(spec) else {
                if row.next_rotation_at.is_some() {
                    moved.push((row.token, None));
                }
                continue;
            };
            let decided = schedule::next(&row.token, &cadence, &plan, &row.standing, now);
            if let Some(m) = &decided.missed {
                match self.store.record_missed(&row.token, m).await {
                    Ok(true) => {
                        tracing::warn!(token = %row.token, slot = %m.slot, slots = m.count, reason = %m.reason, "schedule_missed");
                        report.missed.push(row.token.clone());
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(token = %row.token, error = %e, "recording a missed slot failed; the next pass tries again")
                    }
                }
            }
            let next = match decided.verdict {
                // A person gives a manual token's value: its due time is a reminder
                // (`due_soon`, then overdue in `velvet status`), never a job.
                Verdict::Start { slot } if matches!(spec.source, SourceSpec::Manual) => Some(slot),
                Verdict::Start { slot } => {
                    if self.start_scheduled(spec, slot).await {
                        report.started.push(row.token.clone());
                    }
                    Some(slot)
                }
                Verdict::Wait { next, .. } => next,
            };
            if let Some(n) = next.filter(|n| *n > now) {
                report.next = Some(report.next.map_or(n, |r| r.min(n)));
            }
            if next != row.next_rotation_at {
                moved.push((row.token, next));
            }
        }
        report.moved = moved.len();
        self.store.set_next_rotations(&moved).await?;
        Ok(report)
    }

    /// Kicks off `spec`'s job for `slot`; false when another replica (or an earlier pass)
    /// already used the slot, or the token is busy.
    async fn start_scheduled(
        &self,
        spec: &velvet_core::config::TokenSpec,
        slot: DateTime<Utc>,
    ) -> bool {
        let reason = format!("scheduled slot {}", slot.to_rfc3339());
        let made = self
            .kickoff(&NewJob {
                token: &spec.name,
                flow: spec.flow,
                requested_by: REQUESTER,
                requested_role: Some(ROLE),
                reason: Some(&reason),
                idempotency: None,
                schedule_slot: Some(slot),
                given: None,
            })
            .await;
        match made {
            Ok(job) => {
                tracing::info!(token = %spec.name, job_id = %job.job_id, %slot, flow = spec.flow.as_str(), "scheduled rotation started");
                true
            }
            Err(StoreError::SlotTaken(_) | StoreError::JobActive(_)) => false,
            Err(e) => {
                tracing::warn!(token = %spec.name, error = %e, "starting a scheduled rotation failed; the next pass tries again");
                false
            }
        }
    }

    /// Contends for the lease and, while leading, passes over the tokens, until `shutdown`.
    pub(crate) async fn lead(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let lease = self.config().engine.lease;
            // The lease is held for two thirds of `engine.lease` and renewed three times within
            // it, so a killed leader is replaced within `engine.lease`.
            let ttl = lease * 2 / 3;
            let now = Utc::now();
            let leading = match self
                .store
                .hold_lease(LEASE, &self.opts.owner, ttl, now)
                .await
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "holding the scheduler lease failed");
                    false
                }
            };
            if leading != self.scheduler.leading.swap(leading, Ordering::Relaxed) {
                tracing::info!(owner = %self.opts.owner, leading, "scheduler leadership changed");
            }
            let mut wait = ttl / 4;
            if leading {
                match self.schedule_pass(now).await {
                    Ok(r) => {
                        if !r.started.is_empty() || !r.missed.is_empty() {
                            tracing::info!(
                                started = r.started.len(),
                                missed = r.missed.len(),
                                "scheduler pass"
                            );
                        }
                        if let Some(n) = r.next {
                            let until = (n - Utc::now()).to_std().unwrap_or_default();
                            wait = wait.min(until.max(Duration::from_millis(50)));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "scheduler pass failed; trying again"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.scheduler.wake.notified() => {}
                changed = shutdown.changed() => if changed.is_err() { break; }
            }
        }
        if self.scheduler.leading.swap(false, Ordering::Relaxed)
            && let Err(e) = self.store.give_up_lease(LEASE, &self.opts.owner).await
        {
            tracing::warn!(error = %e, "giving up the scheduler lease failed; it expires by itself");
        }
    }
}

fn blackouts(config: &Config) -> Vec<Blackout> {
    config
        .blackouts
        .iter()
        .filter_map(|b| b.compile())
        .collect()
}
