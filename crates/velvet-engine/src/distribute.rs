//! Distribute: every consumer in parallel, bounded by the global limit and by the per-lock-key
//! limit, each retried with backoff on its own, so one bad target never stops the others. Also
//! the consumer halves of revoke and rollback.

use crate::runner::{Engine, Step, Stop};
use crate::step_error::StepError;
use crate::values::JobValues;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use velvet_adapters::Delivery;
use velvet_adapters::consumer::{self, Consumer};
use velvet_core::audit::AuditDraft;
use velvet_core::config::TokenSpec;
use velvet_core::job::{ConsumerStatus, JobChanges, RotationJob};
use velvet_core::rotation::{Event, JobStatus};
use velvet_core::secret::SecretValue;
use velvet_store::{ConsumerChange, ConsumerUpdate, LockKeyHold};

/// What every consumer task of one job shares.
struct Shared {
    engine: Arc<Engine>,
    job_id: String,
    token: String,
    version: i64,
    fingerprint: String,
    previous_version: Option<i64>,
    previous_fingerprint: Option<String>,
    new: SecretValue,
    previous: Option<SecretValue>,
    spec: TokenSpec,
    /// Consumer changes go to the job's writer, which commits them in batches.
    writes: tokio::sync::mpsc::UnboundedSender<ConsumerChange>,
}

impl Shared {
    fn delivery(&self) -> Delivery<'_> {
        Delivery {
            token: &self.token,
            job_id: &self.job_id,
            version: self.version,
            new: &self.new,
            new_fingerprint: &self.fingerprint,
            previous: self.previous.as_ref(),
            previous_version: self.previous_version,
            previous_fingerprint: self.previous_fingerprint.as_deref(),
        }
    }

    fn update(
        &self,
        consumer: &str,
        status: ConsumerStatus,
        attempts: i64,
        last_error: Option<String>,
        audit: Option<AuditDraft>,
    ) {
        let update = ConsumerUpdate {
            status,
            attempts,
            last_error,
            fingerprint: (status == ConsumerStatus::Verified).then(|| self.fingerprint.clone()),
            next_attempt_at: None,
        };
        // Losing an unwritten status in a crash is safe: the consumer is applied again, and
        // applying is idempotent.
        let _ = self.writes.send(ConsumerChange {
            consumer: consumer.to_string(),
            update,
            audit,
        });
    }
}

/// Commits a job's consumer changes: whatever queued while the last commit ran goes into the
/// next one (group commit), so a thousand consumers cost tens of commits, not thousands.
async fn writer(
    engine: Arc<Engine>,
    job_id: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ConsumerChange>,
) {
    const MAX_BATCH: usize = 1024;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        if let Err(e) = engine.store.update_job_consumers(&job_id, &batch).await {
            tracing::warn!(job_id = %job_id, error = %e, changes = batch.len(), "recording consumer states failed");
        }
        let _ = engine.bus.send(job_id.clone());
    }
}

impl Engine {
    /// Holds `key` for one write: a slot of this process's semaphore, then one in the store.
    pub(crate) async fn hold(&self, key: &str) -> (OwnedSemaphorePermit, LockKeyHold) {
        let permit = self
            .lock_key(key)
            .acquire_owned()
            .await
            .expect("never closed");
        (permit, self.hold_lock_key(key).await)
    }

    /// Waits until the store grants one of this key's `per_lock_key` slots. A busy key or a
    /// store error is tried again with a growing pause: writing without the key would let two
    /// replicas write one target at once.
    async fn hold_lock_key(&self, key: &str) -> LockKeyHold {
        let mut pause = Duration::from_millis(20);
        loop {
            let slots = u32::try_from(self.per_lock_key()).unwrap_or(u32::MAX);
            match self.store.try_lock_key(key, slots).await {
                Ok(Some(held)) => return held,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(lock_key = %key, error = %e, "taking a lock key failed; trying again")
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    fn lock_key(&self, key: &str) -> Arc<Semaphore> {
        // The size the limits currently have (a reload resizes every key's semaphore).
        let per = self.per_lock_key();
        self.lock_keys
            .lock()
            .expect("lock-key map is never poisoned")
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(per)))
            .clone()
    }
}

/// A job's consumer, built from its declaration, with its lock key; or why it cannot be.
type Built = Result<(Arc<dyn Consumer>, String), String>;

fn consumers_of(spec: &TokenSpec, engine: &Engine, job: &RotationJob) -> Vec<(String, Built)> {
    job.consumers
        .iter()
        .map(|jc| {
            let built = match spec.consumers.iter().find(|c| c.name == jc.consumer) {
                None => Err(format!("consumer `{}` is no longer declared", jc.consumer)),
                Some(c) => consumer::build_among(c, &spec.consumers, &*engine.opts.env)
                    .map(|built| {
                        let key = c
                            .lock_key
                            .clone()
                            .unwrap_or_else(|| built.default_lock_key());
                        (Arc::<dyn Consumer>::from(built), key)
                    })
                    .map_err(|e| e.to_string()),
            };
            (jc.consumer.clone(), built)
        })
        .collect()
}

/// Delivers to one consumer until it is verified or has failed for good.
async fn deliver(
    shared: Arc<Shared>,
    name: String,
    consumer: Arc<dyn Consumer>,
    lock_key: String,
    mut attempts: i64,
) {
    // The lock key first: a task queued behind a busy key must not sit on a global slot that
    // consumers of other keys could use.
    let (_key, held) = shared.engine.hold(&lock_key).await;
    let _global = shared
        .engine
        .global
        .clone()
        .acquire_owned()
        .await
        .expect("never closed");
    loop {
        attempts += 1;
        shared.update(&name, ConsumerStatus::InProgress, attempts, None, None);
        let d = shared.delivery();
        let result = match consumer.apply(&d).await {
            Ok(()) => {
                crate::runner::crash_point("after_consumer_applied");
                shared.update(&name, ConsumerStatus::Distributed, attempts, None, None);
                consumer.verify(&d).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                let audit = AuditDraft::new("system:engine", "consumer.verified", &shared.token, "success")
                    .detail(serde_json::json!({"job_id": shared.job_id, "consumer": name, "version": shared.version, "fingerprint": shared.fingerprint, "attempts": attempts}));
                shared.update(&name, ConsumerStatus::Verified, attempts, None, Some(audit));
                break;
            }
            Err(e) if e.is_retryable() && attempts < i64::from(shared.spec.retry.attempts) => {
                let delay =
                    crate::backoff::delay(&shared.spec.retry, attempts as u32, e.retry_after());
                shared.update(
                    &name,
                    ConsumerStatus::InProgress,
                    attempts,
                    Some(e.to_string()),
                    None,
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                let audit = AuditDraft::new("system:engine", "consumer.failed", &shared.token, "failure")
                    .detail(serde_json::json!({"job_id": shared.job_id, "consumer": name, "version": shared.version, "attempts": attempts, "error": e.to_string()}));
                shared.update(
                    &name,
                    ConsumerStatus::Failed,
                    attempts,
                    Some(e.to_string()),
                    Some(audit),
                );
                break;
            }
        }
    }
    held.release().await;
}

pub(crate) async fn run(engine: &Arc<Engine>, job: &RotationJob) -> Step {
    let spec = match engine.token_spec(job) {
        Ok(s) => s,
        Err(e) => return engine.fail(job, e).await,
    };
    let vals = match crate::values::of_job(&*engine.store, &engine.keyring, job).await {
        Ok(v) => v,
        Err(e) => return engine.fail(job, e).await,
    };
    let Some(new) = vals.new else {
        return engine
            .fail(job, "the job has no new version to distribute".to_string())
            .await;
    };
    let (writes, queued) = tokio::sync::mpsc::unbounded_channel();
    let writer = tokio::spawn(writer(engine.clone(), job.job_id.clone(), queued));
    let shared = Arc::new(Shared {
        writes,
        engine: engine.clone(),
        job_id: job.job_id.clone(),
        token: job.token.clone(),
        version: job.new_version.unwrap_or_default(),
        fingerprint: vals.new_fingerprint,
        previous_version: job.previous_version,
        previous_fingerprint: vals.previous_fingerprint,
        new,
        previous: vals.previous,
        spec: spec.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (jc, (name, built)) in job.consumers.iter().zip(consumers_of(&spec, engine, job)) {
        if jc.status == ConsumerStatus::Verified {
            continue;
        }
        match built {
            Ok((consumer, key)) => {
                tasks.spawn(deliver(shared.clone(), name, consumer, key, jc.attempts));
            }
            Err(e) => shared.update(&name, ConsumerStatus::Failed, jc.attempts, Some(e), None),
        }
    }
    while tasks.join_next().await.is_some() {}
    // Every change is committed before the outcome is judged.
    drop(shared);
    let _ = writer.await;
    let job = match engine.store.get_job(&job.job_id).await {
        Ok(Some(j)) => j,
        _ => return Err(Stop::Backoff),
    };
    if job.state.status != JobStatus::Running {
        return Err(Stop::Stale);
    }
    let failed: Vec<&str> = job
        .consumers
        .iter()
        .filter(|c| c.status != ConsumerStatus::Verified)
        .map(|c| c.consumer.as_str())
        .collect();
    if !failed.is_empty() {
        let reason = format!(
            "{} of {} consumer(s) failed: {}",
            failed.len(),
            job.consumers.len(),
            failed.join(", ")
        );
        return engine.fail(&job, reason).await;
    }
    let wake_at = (job.flow_type == velvet_core::config::FlowType::Auto)
        .then(|| Utc::now() + chrono::Duration::from_std(spec.grace_period).unwrap_or_default());
    let changes = JobChanges {
        promote: true,
        wake_at: wake_at.map(Some),
        ..Default::default()
    };
    // Only an emergency revokes straight away; auto decides when its grace period ends.
    let unattended_revoke = job.flow_type == velvet_core::config::FlowType::Emergency
        && engine.unattended(&job).await?;
    engine
        .advance(
            &job,
            Event::AllVerified { unattended_revoke },
            changes,
            "rotation.distributed",
        )
        .await
}

/// Drops the previous value from every consumer that keeps one.
/// What revoke and rollback steps hand a consumer.
fn delivery_of<'a>(
    job: &'a RotationJob,
    new: &'a SecretValue,
    vals: &'a JobValues,
) -> Delivery<'a> {
    Delivery {
        token: &job.token,
        job_id: &job.job_id,
        version: job.new_version.unwrap_or_default(),
        new,
        new_fingerprint: &vals.new_fingerprint,
        previous: vals.previous.as_ref(),
        previous_version: job.previous_version,
        previous_fingerprint: vals.previous_fingerprint.as_deref(),
    }
}

pub(crate) async fn revoke_previous(
    engine: &Engine,
    job: &RotationJob,
    spec: &TokenSpec,
    vals: &JobValues,
) -> Result<(), StepError> {
    let Some(new) = &vals.new else { return Ok(()) };
    for (name, built) in consumers_of(spec, engine, job) {
        let (consumer, key) = built?;
        let d = delivery_of(job, new, vals);
        let (_permit, held) = engine.hold(&key).await;
        let revoked = engine
            .with_retries(
                spec,
                &format!("revoking the previous value at `{name}`"),
                || consumer.revoke_previous(&d),
            )
            .await;
        held.release().await;
        revoked?;
    }
    Ok(())
}

/// Puts the previous value back wherever the new one may have landed: every consumer that was
/// tried (distributed, verified, mid-apply, or failed: a failure after the target took the
/// value still left it there). Returns the failed consumers that could not be reverted, which
/// the job then names; a verified one that cannot be reverted fails the step instead.
pub(crate) async fn roll_back(
    engine: &Engine,
    job: &RotationJob,
    spec: &TokenSpec,
    vals: &JobValues,
) -> Result<Vec<String>, StepError> {
    let Some(new) = &vals.new else {
        return Ok(vec![]);
    };
    let mut not_reverted = vec![];
    for (jc, (name, built)) in job.consumers.iter().zip(consumers_of(spec, engine, job)) {
        // Every consumer that might hold the new value gets the previous one back: a failed
        // one too (a webhook may have taken the value and then failed its verify).
        if matches!(
            jc.status,
            ConsumerStatus::Pending | ConsumerStatus::RolledBack
        ) {
            continue;
        }
        let d = delivery_of(job, new, vals);
        let result = match built {
            Ok((consumer, key)) => {
                let (_permit, held) = engine.hold(&key).await;
                let reverted = engine
                    .with_retries(spec, &format!("rolling back `{name}`"), || {
                        consumer.rollback(&d)
                    })
                    .await;
                held.release().await;
                reverted
            }
            Err(e) => Err(e),
        };
        let u = match result {
            Ok(()) => ConsumerUpdate {
                status: ConsumerStatus::RolledBack,
                attempts: jc.attempts,
                last_error: None,
                fingerprint: None,
                next_attempt_at: None,
            },
            // One that never verified may well not hold the new value: say it was not
            // reverted and go on, so the job can end. One that verified must be reverted.
            Err(e) if jc.status == ConsumerStatus::Failed => {
                not_reverted.push(format!("{name} ({e})"));
                ConsumerUpdate {
                    status: ConsumerStatus::Failed,
                    attempts: jc.attempts,
                    last_error: Some(format!("not reverted: {e}")),
                    fingerprint: None,
                    next_attempt_at: None,
                }
            }
            Err(e) => return Err(e.into()),
        };
        let change = ConsumerChange {
            consumer: name.clone(),
            update: u,
            audit: None,
        };
        engine
            .store
            .update_job_consumers(&job.job_id, &[change])
            .await?;
    }
    Ok(not_reverted)
}
