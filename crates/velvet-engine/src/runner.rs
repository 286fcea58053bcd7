//! The claim loop and the driving of one job: each step reads the job, acts, and persists the
//! next state through the pure state machine before taking the next step.

use crate::step_error::StepError;
use crate::values;
use chrono::Utc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, watch};
use velvet_adapters::AdapterError;
use velvet_adapters::source::{self, Source};
use velvet_core::audit::AuditDraft;
use velvet_core::config::{Config, LiveConfig, TokenSpec};
use velvet_core::decision::Decision;
use velvet_core::job::{ConsumerStatus, JobChanges, RotationJob};
use velvet_core::keyring::{Keyring, version_aad};
use velvet_core::rotation::Word as _;
use velvet_core::rotation::{Event, JobState, JobStatus, Revert, Stage, transition};
use velvet_core::secret::SecretValue;
use velvet_store::JobChanged;
use velvet_store::{Store, StoreError};

/// The points `VELVET_CRASH_AT` and `VELVET_PANIC_AT` can name (the README lists the same).
pub const CRASH_POINTS: &[&str] = &[
    "after_version_stored",
    "after_consumer_applied",
    "after_source_revoked",
    "after_notification_sent",
];

/// Fault injection for crash-safety tests: when `VELVET_CRASH_AT` names this point, the process
/// dies on the spot (abort: no destructors, no flush), exactly like `kill -9` for what is on disk;
/// when `VELVET_PANIC_AT` names it, the step panics (the process lives on).
pub(crate) fn crash_point(name: &str) {
    debug_assert!(CRASH_POINTS.contains(&name), "{name} is listed");
    if std::env::var("VELVET_CRASH_AT").is_ok_and(|v| v == name) {
        eprintln!("VELVET_CRASH_AT={name}: aborting");
        std::process::abort();
    }
    if std::env::var("VELVET_PANIC_AT").is_ok_and(|v| v == name) {
        panic!("VELVET_PANIC_AT={name}");
    }
}

/// Moves `sem` from `from` permits to `to`.
fn resize(sem: &Arc<tokio::sync::Semaphore>, from: usize, to: usize) {
    if to > from {
        sem.add_permits(to - from);
    } else if from > to {
        let owed = (from - to) - sem.forget_permits(from - to);
        if owed > 0 {
            // The rest are in use: take them out as they come back.
            let sem = sem.clone();
            tokio::spawn(async move {
                if let Ok(p) = sem.acquire_many_owned(owed as u32).await {
                    p.forget();
                }
            });
        }
    }
}

/// Looks up `*_env` variables for adapters.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

#[derive(Clone)]
pub struct EngineOptions {
    /// This replica's name in leases.
    pub owner: String,
    /// How often to look for due work when nothing wakes the loop.
    pub poll_interval: Duration,
    pub env: EnvLookup,
    /// Contend for the scheduler lease and run its passes (off in tests that drive
    /// `schedule_pass` with their own clock).
    pub lead_scheduler: bool,
    /// How often the leader looks for notifications to route and deliver.
    pub notify_interval: Duration,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("owner", &self.owner)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl EngineOptions {
    /// A unique owner name for this process, and the process environment.
    pub fn for_this_process() -> Self {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).expect("OS randomness");
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        Self {
            owner: format!("{host}-{}-{}", std::process::id(), hex::encode(b)),
            // A safety net only: kickoffs and actions wake the loop, other replicas' changes
            // come by LISTEN/NOTIFY, and a waiting job sets a timer for its wake time.
            poll_interval: Duration::from_secs(5),
            env: Arc::new(|name| std::env::var(name).ok()),
            lead_scheduler: true,
            notify_interval: Duration::from_secs(1),
        }
    }
}

pub struct Engine {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) config: LiveConfig,
    pub(crate) opts: EngineOptions,
    /// Builds each step's source, and owns the admin pools those share.
    sources: source::Sources,
    pub(crate) wake: Notify,
    pub(crate) bus: broadcast::Sender<String>,
    pub(crate) global: Arc<tokio::sync::Semaphore>,
    pub(crate) lock_keys:
        std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// The limits the semaphores were sized for, so a reload can resize them.
    sized: std::sync::Mutex<(usize, usize)>,
    /// Every job driver, so a stop can wait for them.
    drivers: tokio_util::task::TaskTracker,
    /// Wrong step-up codes per operator, at a gate or an approval.
    pub(crate) step_up: velvet_core::limiter::FailureLimiter<String>,
    /// The jobs this replica drives now: their changes need no claim.
    driving: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Set once a stop was asked for: drivers finish their step, release the lease and end.
    stopping: AtomicBool,
    pub(crate) scheduler: crate::scheduler::SchedulerState,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("owner", &self.opts.owner)
            .finish_non_exhaustive()
    }
}

/// Why a step stopped driving its job, which decides what happens to the lease.
pub(crate) enum Stop {
    /// Nothing more to do now (awaiting an operator, waiting, finished): release the lease so
    /// the job is claimed as soon as it has work again.
    Idle,
    /// The job moved under us (an operator acted, or another replica): release the lease so
    /// whoever acts next is not held up by it.
    Stale,
    /// The store failed, or the engine asked for a transition the flow forbids: keep the lease,
    /// so its expiry paces the next attempt instead of a hot reclaim loop.
    Backoff,
}

pub(crate) type Step = Result<RotationJob, Stop>;

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        config: LiveConfig,
        opts: EngineOptions,
    ) -> Arc<Self> {
        let (concurrency, per_lock_key) = {
            let c = config.load();
            (c.engine.concurrency, c.engine.per_lock_key)
        };
        Arc::new(Self {
            store,
            keyring,
            config,
            opts,
            sources: source::Sources::default(),
            wake: Notify::new(),
            bus: broadcast::channel(1024).0,
            global: Arc::new(tokio::sync::Semaphore::new(concurrency)),
            lock_keys: Default::default(),
            sized: std::sync::Mutex::new((concurrency, per_lock_key)),
            drivers: tokio_util::task::TaskTracker::new(),
            step_up: velvet_core::limiter::FailureLimiter::new(
                crate::gate::STEP_UP_BUDGET,
                crate::gate::STEP_UP_WINDOW,
            ),
            driving: Default::default(),
            stopping: AtomicBool::new(false),
            scheduler: Default::default(),
        })
    }

    /// Applies `engine.concurrency` and `engine.per_lock_key` of the configuration in force
    /// (after SIGHUP) to the running limits: permits are added at once; removed ones are taken
    /// out as work in flight gives them back, so nothing running is cut short.
    pub fn resize(&self) {
        let engine = self.config().engine.clone();
        let mut sized = self.sized.lock().expect("never poisoned");
        let (global, per_key) = *sized;
        resize(&self.global, global, engine.concurrency);
        for sem in self
            .lock_keys
            .lock()
            .expect("lock-key map is never poisoned")
            .values()
        {
            resize(sem, per_key, engine.per_lock_key);
        }
        if (global, per_key) != (engine.concurrency, engine.per_lock_key) {
            tracing::info!(
                concurrency = engine.concurrency,
                per_lock_key = engine.per_lock_key,
                "engine limits resized"
            );
        }
        *sized = (engine.concurrency, engine.per_lock_key);
        // A reload may change schedules and blackouts: the scheduler looks again now.
        self.scheduler.wake.notify_one();
    }

    pub(crate) fn per_lock_key(&self) -> usize {
        self.sized.lock().expect("never poisoned").1
    }

    /// Stops taking work and waits, at most `within`, for every job driver to finish its
    /// current step and release its lease, so another replica (or this one restarted) takes
    /// the jobs over at once instead of after the lease. A driver still busy then is left to
    /// the lease, as a crash would be (I4).
    pub async fn drain(&self, within: Duration) -> bool {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
        self.drivers.close();
        let drained = tokio::time::timeout(within, self.drivers.wait())
            .await
            .is_ok();
        if drained {
            tracing::info!("every job driver stopped and released its lease");
        } else {
            tracing::warn!(
                busy = self.drivers.len(),
                "job drivers still busy at stop; their jobs resume when the lease expires"
            );
        }
        drained
    }

    /// RotationJob ids, each time one of them changes (for live views; the store's events are the truth).
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.bus.subscribe()
    }

    /// Wakes the claim loop (after a kickoff or an operator action).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Claims and drives jobs until `shutdown` turns true.
    pub fn start(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            tracing::info!(owner = %me.opts.owner, "engine started");
            if me.opts.lead_scheduler {
                tokio::spawn(me.clone().lead(shutdown.clone()));
                tokio::spawn(me.clone().notify_loop(shutdown.clone()));
                tokio::spawn(me.clone().probe_loop(shutdown.clone()));
            }
            let weak = Arc::downgrade(&me);
            if me.store.watch_jobs(Box::new(move |c| {
                if let Some(e) = weak.upgrade() {
                    e.heard(c);
                }
            })) {
                tracing::info!("listening for job changes of other replicas");
            }
            loop {
                if *shutdown.borrow() || me.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let lease = me.config().engine.lease;
                match me.store.claim_job(&me.opts.owner, lease, Utc::now()).await {
                    Ok(Some(job)) => {
                        tracing::info!(job_id = %job.job_id, token = %job.token, stage = %job.state.stage, status = %job.state.status, "claimed job");
                        let driver = me.clone();
                        me.drivers.spawn(async move { driver.drive(job).await });
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "claiming a job failed"),
                }
                tokio::select! {
                    _ = me.wake.notified() => {}
                    _ = tokio::time::sleep(me.opts.poll_interval) => {}
                    // A dropped sender means nobody can ask us to stop any more: stop now
                    // rather than spin on a channel that answers at once forever.
                    changed = shutdown.changed() => if changed.is_err() { break; }
                }
            }
            tracing::info!("engine stopped claiming work");
        })
    }

    /// A job changed, maybe on another replica: its event streams look now, and a change of
    /// the job itself may be work to claim (unless this replica drives it already).
    fn heard(&self, c: JobChanged) {
        let _ = self.bus.send(c.job_id.clone());
        let ours = self
            .driving
            .lock()
            .expect("never poisoned")
            .contains(&c.job_id);
        if c.job_row && !ours {
            self.nudge();
        }
    }

    /// Drives one claimed job as far as it can go, renewing the lease meanwhile.
    async fn drive(self: Arc<Self>, mut job: RotationJob) {
        let id = job.job_id.clone();
        self.driving
            .lock()
            .expect("never poisoned")
            .insert(id.clone());
        let lost = Arc::new(AtomicBool::new(false));
        let renew = {
            let (store, owner, id, lost) = (
                self.store.clone(),
                self.opts.owner.clone(),
                job.job_id.clone(),
                lost.clone(),
            );
            let lease = self.config().engine.lease;
            // Aborted when dropped: a step that panics must not leave its lease renewed forever
            // (the job would be stuck until a restart).
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    match store.renew_lease(&id, &owner, lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(job_id = %id, "lease lost to another replica; stopping");
                            lost.store(true, Ordering::SeqCst);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(job_id = %id, error = %e, "renewing a lease failed")
                        }
                    }
                }
            }))
        };
        let stop = loop {
            if lost.load(Ordering::SeqCst) {
                break Stop::Stale;
            }
            // Stopping: leave the job where its last step put it, and hand it back.
            if self.stopping.load(Ordering::SeqCst) {
                break Stop::Idle;
            }
            match self.step(&job).await {
                Ok(next) => {
                    let _ = self.bus.send(next.job_id.clone());
                    job = next;
                }
                Err(stop) => break stop,
            }
        };
        drop(renew);
        // A terminal transition already cleared the lease; releasing one another replica took
        // over matches no row.
        if matches!(stop, Stop::Idle | Stop::Stale) && !job.state.status.is_terminal() {
            let _ = self
                .store
                .release_lease(&job.job_id, &self.opts.owner)
                .await;
        }
        self.driving.lock().expect("never poisoned").remove(&id);
        // A finished job moves its token's next start: the scheduler looks again now.
        if job.state.status.is_terminal() {
            self.scheduler.wake.notify_one();
        }
        // Whoever moved the job may have found it leased to us: look again now.
        if matches!(stop, Stop::Stale) {
            self.nudge();
        }
        // A job waiting for its wake time (a grace period) is claimed again then.
        if let Some(wait) = job.wake_at.and_then(|t| (t - Utc::now()).to_std().ok()) {
            let me = Arc::downgrade(&self);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Some(e) = me.upgrade() {
                    e.nudge();
                }
            });
        }
    }

    /// One step of the flow for `job`, as its state says.
    async fn step(self: &Arc<Self>, job: &RotationJob) -> Step {
        let s: JobState = job.state;
        if s.reverting.is_some() && s.status == JobStatus::Running {
            return self.revert(job).await;
        }
        match (s.stage, s.status) {
            (Stage::Mint, JobStatus::Pending) => {
                self.advance(
                    job,
                    Event::Claimed,
                    JobChanges::default(),
                    "rotation.started",
                )
                .await
            }
            (Stage::Mint, JobStatus::Running) => self.mint(job).await,
            (Stage::Distribute, JobStatus::Running) => crate::distribute::run(self, job).await,
            (Stage::Revoke, JobStatus::Waiting) => {
                if job.wake_at.is_some_and(|t| t > Utc::now()) {
                    return Err(Stop::Idle);
                }
                let unattended_revoke = self.unattended(job).await?;
                self.advance(
                    job,
                    Event::GraceElapsed { unattended_revoke },
                    JobChanges::default(),
                    "rotation.grace_elapsed",
                )
                .await
            }
            (Stage::Revoke, JobStatus::Running) => self.revoke(job).await,
            _ => Err(Stop::Idle),
        }
    }

    /// Whether this job's revoke may run with nobody present (I2b), decided by the gate that
    /// applies now and the requester's role, and kept as a decision before anything acts on it.
    pub(crate) async fn unattended(&self, job: &RotationJob) -> Result<bool, Stop> {
        let gate = self.gate_of(job);
        let verdict = velvet_core::gate::unattended_revoke(gate.as_ref(), job.requested_role);
        let resource = match &gate {
            Some(g) => format!("unattended revoke of {} gate {}", job.job_id, g.name),
            None => format!("unattended revoke of {}", job.job_id),
        };
        let d = Decision::new(
            &job.requested_by,
            "velvet.rotations.revoke",
            &resource,
            verdict.steps,
        );
        if let Err(e) = self.store.record_decision(&d).await {
            tracing::warn!(job_id = %job.job_id, error = %e, "recording an unattended revoke decision failed; retrying when the lease expires");
            return Err(Stop::Backoff);
        }
        if !d.allowed() {
            tracing::info!(job_id = %job.job_id, token = %job.token, "the revoke needs a person: pausing at proceed_revoke");
        }
        Ok(d.allowed())
    }

    /// Persists `event`'s transition with its audit record.
    pub(crate) async fn advance(
        &self,
        job: &RotationJob,
        event: Event,
        changes: JobChanges,
        action: &str,
    ) -> Step {
        let from: JobState = job.state;
        let to = match transition(job.flow_type, from, event) {
            Ok(to) => to,
            Err(e) => {
                tracing::error!(job_id = %job.job_id, error = %e, "the engine asked for a transition the flow forbids");
                return Err(Stop::Backoff);
            }
        };
        let audit = AuditDraft::new(&format!("engine:{}", self.opts.owner), action, &job.token, if to.status == JobStatus::Failed { "failure" } else { "success" })
            .detail(serde_json::json!({"job_id": job.job_id, "stage": to.stage, "status": to.status, "error": changes.error.clone().flatten()}));
        match self
            .store
            .transition_job(
                &job.job_id,
                from,
                to,
                &changes,
                Some(&self.opts.owner),
                &audit,
            )
            .await
        {
            Ok(j) => Ok(j),
            Err(StoreError::StaleJob { .. }) => Err(Stop::Stale),
            Err(e) => {
                tracing::warn!(job_id = %job.job_id, error = %e, "persisting a step failed; the job resumes when its lease expires");
                Err(Stop::Backoff)
            }
        }
    }

    /// Records a failure of the current stage with a readable reason; a store that may answer
    /// later fails nothing and keeps the lease, so the step runs again when it expires.
    pub(crate) async fn fail(&self, job: &RotationJob, why: impl Into<StepError>) -> Step {
        let reason = match why.into() {
            StepError::Transient(e) => {
                tracing::warn!(job_id = %job.job_id, token = %job.token, error = %e, "the store failed for now; the step runs again when the lease expires");
                return Err(Stop::Backoff);
            }
            StepError::Failed(reason) => reason,
        };
        tracing::warn!(job_id = %job.job_id, token = %job.token, reason = %reason, "rotation step failed");
        self.advance(
            job,
            Event::StepFailed,
            JobChanges {
                error: Some(Some(reason)),
                ..Default::default()
            },
            "rotation.failed",
        )
        .await
    }

    pub(crate) fn token_spec(&self, job: &RotationJob) -> Result<TokenSpec, String> {
        self.config()
            .token(&job.token)
            .cloned()
            .ok_or_else(|| format!("token `{}` is no longer declared in velvet.yaml", job.token))
    }

    pub(crate) fn source(&self, spec: &TokenSpec) -> Result<Box<dyn Source>, String> {
        self.sources
            .build(&spec.source, &*self.opts.env)
            .map_err(|e| e.to_string())
    }

    /// Runs `op` until it succeeds, fails for good, or the token's retry budget is spent.
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        spec: &TokenSpec,
        what: &str,
        mut op: F,
    ) -> Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, AdapterError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < spec.retry.attempts => {
                    let d = crate::backoff::delay(&spec.retry, attempt, e.retry_after());
                    tracing::info!(what, attempt, error = %e, retry_in_ms = d.as_millis() as u64, "retrying");
                    tokio::time::sleep(d).await;
                }
                Err(e) => return Err(format!("{what} failed after {attempt} attempt(s): {e}")),
            }
        }
    }

    /// Mint: a new value, stored sealed before the source sees it (I1), then activated and
    /// proved by a real login.
    async fn mint(&self, job: &RotationJob) -> Step {
        let spec = match self.token_spec(job) {
            Ok(s) => s,
            Err(e) => return self.fail(job, e).await,
        };
        let source = match self.source(&spec) {
            Ok(s) => s,
            Err(e) => return self.fail(job, e).await,
        };
        let previous = match job.previous_version {
            Some(v) => match values::open(&*self.store, &self.keyring, &job.token, v).await {
                Ok(p) => Some(p),
                Err(e) => return self.fail(job, e).await,
            },
            None => None,
        };
        let job = if job.new_version.is_none() {
            match self.store_new(job, &*source, previous.as_ref()).await {
                Ok(j) => j,
                Err(e) => return self.fail(job, e).await,
            }
        } else {
            job.clone()
        };
        crash_point("after_version_stored");
        let version = job.new_version.expect("stored above");
        let new = match values::open(&*self.store, &self.keyring, &job.token, version).await {
            Ok(v) => v,
            Err(e) => return self.fail(&job, e).await,
        };
        let activated = self
            .with_retries(&spec, "activating the new value at the source", || {
                source.activate(&new, previous.as_ref())
            })
            .await;
        if let Err(e) = activated {
            return self.fail(&job, e).await;
        }
        if let Err(e) = self
            .with_retries(&spec, "logging in with the new value", || {
                source.verify(&new)
            })
            .await
        {
            return self.fail(&job, e).await;
        }
        self.advance(
            &job,
            Event::Minted,
            JobChanges::default(),
            "rotation.minted",
        )
        .await
    }

    async fn store_new(
        &self,
        job: &RotationJob,
        source: &dyn Source,
        previous: Option<&SecretValue>,
    ) -> Result<RotationJob, StepError> {
        let value = source.generate(previous).map_err(|e| e.to_string())?;
        let version = self.store.next_version(&job.token).await?;
        let now = Utc::now();
        let sealed = self
            .keyring
            .seal(&value, &version_aad(&job.token, version), now)?;
        let fp = self.keyring.fingerprint(&value, now)?;
        self.store
            .store_new_version(&job.job_id, version, &sealed, &fp)
            .await?;
        Ok(self
            .store
            .get_job(&job.job_id)
            .await?
            .ok_or_else(|| "the job disappeared".to_string())?)
    }

    /// Revoke: only once every consumer holds the new value (I2), the source and consumers drop
    /// the previous one.
    async fn revoke(&self, job: &RotationJob) -> Step {
        if let Some(c) = job
            .consumers
            .iter()
            .find(|c| c.status != ConsumerStatus::Verified)
        {
            return self
                .fail(
                    job,
                    format!(
                        "consumer `{}` is {}, not verified: refusing to revoke",
                        c.consumer,
                        c.status.as_str()
                    ),
                )
                .await;
        }
        let spec = match self.token_spec(job) {
            Ok(s) => s,
            Err(e) => return self.fail(job, e).await,
        };
        let vals = match values::of_job(&*self.store, &self.keyring, job).await {
            Ok(v) => v,
            Err(e) => return self.fail(job, e).await,
        };
        // Also on a first rotation (no previous version): what the source held before Velvet
        // managed it is retired too (design §4).
        if let Some(new) = &vals.new {
            let source = match self.source(&spec) {
                Ok(s) => s,
                Err(e) => return self.fail(job, e).await,
            };
            if let Err(e) = self
                .with_retries(&spec, "revoking the previous value at the source", || {
                    source.revoke(new, vals.previous.as_ref())
                })
                .await
            {
                return self.fail(job, e).await;
            }
        }
        crash_point("after_source_revoked");
        if let Err(e) = crate::distribute::revoke_previous(self, job, &spec, &vals).await {
            return self.fail(job, e).await;
        }
        self.advance(
            job,
            Event::Revoked,
            JobChanges {
                revoke_previous: true,
                ..Default::default()
            },
            "rotation.revoked",
        )
        .await
    }

    /// Rollback or abort: put the previous value back where the new one went, revert the source.
    async fn revert(&self, job: &RotationJob) -> Step {
        let (event, action) = match job.state.reverting {
            Some(Revert::Abort) => (Event::Aborted, "rotation.aborted"),
            _ => (Event::RolledBack, "rotation.rolled_back"),
        };
        let Ok(spec) = self.token_spec(job) else {
            // The token left velvet.yaml: Velvet no longer knows its source or consumers, so
            // the job ends here, discarding the new version, and says what was not undone.
            let note = format!(
                "token `{}` is no longer declared in velvet.yaml: the new version was discarded, \
                 but nothing was reverted at its source or consumers; check them by hand",
                job.token
            );
            return self
                .advance(
                    job,
                    event,
                    JobChanges {
                        discard_new: true,
                        error: Some(Some(note)),
                        ..Default::default()
                    },
                    action,
                )
                .await;
        };
        let vals = match values::of_job(&*self.store, &self.keyring, job).await {
            Ok(v) => v,
            Err(e) => return self.fail(job, e).await,
        };
        let not_reverted = match crate::distribute::roll_back(self, job, &spec, &vals).await {
            Ok(n) => n,
            Err(e) => return self.fail(job, e).await,
        };
        if let Some(new) = &vals.new {
            let source = match self.source(&spec) {
                Ok(s) => s,
                Err(e) => return self.fail(job, e).await,
            };
            if let Err(e) = self
                .with_retries(&spec, "reverting the source", || {
                    source.revert(new, vals.previous.as_ref())
                })
                .await
            {
                return self.fail(job, e).await;
            }
        }
        let error = (!not_reverted.is_empty()).then(|| {
            format!(
                "rolled back, but these consumers could not be given the previous value and may \
                 hold the discarded one: {}; check them by hand",
                not_reverted.join("; ")
            )
        });
        self.advance(
            job,
            event,
            JobChanges {
                discard_new: true,
                error: error.map(Some),
                ..Default::default()
            },
            action,
        )
        .await
    }
}
