//! The store: one [`Store`] trait, implemented once for SQLite (the embedded default) and once
//! for PostgreSQL (several replicas). Each implementation owns its SQL; nothing branches on the
//! dialect at run time.

mod audit;
mod auth;
mod chain;
mod db;
mod decisions;
mod flags;
mod health;
mod job_changes;
mod jobs;
mod lock_keys;
mod migrate;
mod notifications;
mod operators;
mod postgres;
mod reconcile;
mod rows;
mod schedules;
mod sealed;
mod sessions;
mod sqlite;
mod tokens;
mod wakeups;

pub use audit::AuditStore;
pub use auth::{AuthStore, NewServiceToken};
pub use chain::{check_keyring, reseal_all};
pub use decisions::DecisionStore;
pub use flags::{FlagOverride, FlagStore};
pub use health::{ConsumerHealth, HealthStore, Probed};
pub use lock_keys::LockKeyHold;
pub use migrate::{
    AppliedMigration, Dialect, Migration, MigrationError, MigrationSet, MigrationState,
};
pub use notifications::{Attempted, Delivery, NotificationEvent, NotificationStore};
pub use operators::{Approval, NewOperator, OperatorRecord, OperatorStore};
pub use postgres::PostgresStore;
pub use schedules::{ScheduleRow, ScheduleStore};
pub use sealed::SealedStore;
pub use sessions::{NewSession, SessionRecord, SessionStore};
pub use sqlite::SqliteStore;
pub use tokens::{TokenStore, TokenView};

pub use wakeups::{JobChanged, OnJobChange};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use velvet_core::audit::{AuditDraft, VerifyReport};
use velvet_core::config::{FlowType, StoreUrl};
use velvet_core::job::{ConsumerStatus, JobChanges, RotationJob};
use velvet_core::keyring::{Keyring, KeyringError, Sealed};
use velvet_core::rotation::JobState;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// I3: the token already has an unfinished job.
    #[error("token already has an active rotation job {0}")]
    JobActive(String),
    /// A scheduler kickoff for a slot that was already used (by another replica, or earlier).
    #[error("schedule slot {0} of this token was already used")]
    SlotTaken(DateTime<Utc>),
    /// An `Idempotency-Key` came back with a different request.
    #[error("the Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    /// The job moved on since it was read (another replica or request acted first).
    #[error("the job is no longer at stage {stage} with status {status}")]
    StaleJob { stage: String, status: String },
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("{0}")]
    Unavailable(String),
    /// I6: the audit record could not be written, so the action did not happen.
    #[error("the audit log could not be written, so the action was refused: {0}")]
    AuditUnavailable(String),
    /// A statement failed; `retryable` when trying again may succeed (busy, connection lost).
    #[error("database error while {context}: {source}")]
    Database {
        context: &'static str,
        retryable: bool,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Whether the same call may succeed later: the engine backs off on these instead of
    /// failing the job.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Database {
                retryable: true,
                ..
            } | StoreError::Unavailable(_)
        )
    }
}

pub(crate) use db::Ctx as Context;

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(db::postgres::db_error).ctx(context)
    }
}

impl<T> Context<T> for Result<T, rusqlite::Error> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(db::sqlite::db_error).ctx(context)
    }
}

/// A re-sealed value to write back, only if the row is still under `old_key_id`.
#[derive(Debug, Clone)]
pub struct Reseal {
    pub token: String,
    pub version: i64,
    pub old_key_id: String,
    pub sealed: Sealed,
    pub fingerprint: String,
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub token: &'a str,
    pub flow: FlowType,
    pub requested_by: &'a str,
    /// The requester's role, which bounds what an unattended revoke may do for it (I2b).
    pub requested_role: Option<velvet_core::identity::Role>,
    pub reason: Option<&'a str>,
    /// A client's `Idempotency-Key`, checked and recorded in the job's own transaction.
    pub idempotency: Option<IdempotencyKey<'a>>,
    /// The schedule slot a scheduler kickoff is for, taken in the job's own transaction: a
    /// slot already taken refuses the kickoff with [`StoreError::SlotTaken`].
    pub schedule_slot: Option<DateTime<Utc>>,
    /// A value a person gave (a `manual` token), stored sealed as the job's new version in the
    /// job's own transaction, so the engine never runs the job without it.
    pub given: Option<GivenValue>,
}

/// A given value, sealed for its version.
#[derive(Debug, Clone)]
pub struct GivenValue {
    pub version: i64,
    pub sealed: Sealed,
    pub fingerprint: String,
}

/// A page of jobs: filters, and the job the previous page ended with.
#[derive(Debug, Clone, Default)]
pub struct JobQuery<'a> {
    pub token: Option<&'a str>,
    pub status: Option<&'a str>,
    pub limit: i64,
    /// `created_at` and `job_id` of the last job already seen.
    pub after: Option<(DateTime<Utc>, &'a str)>,
    /// Only jobs requested by this actor (`scheduler`, `operator:alice`, `token:ci`…).
    pub requested_by: Option<&'a str>,
    /// Only jobs created at or after / before these times.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// How long an `Idempotency-Key` answers with the job it made.
pub const IDEMPOTENCY_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// An `Idempotency-Key` within its caller's scope, with a hash of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    pub request_hash: &'a str,
}

/// A consumer's new state within a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerUpdate {
    pub status: ConsumerStatus,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub fingerprint: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// One consumer's new state, with the audit record of an outcome.
#[derive(Debug, Clone)]
pub struct ConsumerChange {
    pub consumer: String,
    pub update: ConsumerUpdate,
    pub audit: Option<AuditDraft>,
}

/// One entry of a job's event stream: `job` or `consumer`, with its `seq` and JSON data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobEvent {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub event: String,
    pub data: serde_json::Value,
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long to keep retrying an unreachable PostgreSQL at start.
    pub connect_budget: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            connect_budget: Duration::from_secs(30),
        }
    }
}

/// Rotation jobs: creation under single flight, leases, transitions, per-consumer state and
/// the event stream.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Creates a job (I3: refused with `JobActive` while the token has an unfinished one), with
    /// a `pending` row for each active consumer, its first event and its audit record.
    async fn create_job(&self, job: &NewJob<'_>) -> Result<RotationJob, StoreError>;

    async fn get_job(&self, job_id: &str) -> Result<Option<RotationJob>, StoreError>;

    /// Jobs newest first, filtered, starting after `query.after` (the last job of the previous
    /// page), at most `query.limit`.
    async fn list_jobs(&self, query: &JobQuery<'_>) -> Result<Vec<RotationJob>, StoreError>;

    /// Takes the lease of one job that has work to do (pending, running, or waiting and due)
    /// and whose lease is free or expired.
    async fn claim_job(
        &self,
        owner: &str,
        lease: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<RotationJob>, StoreError>;

    /// Extends `owner`'s lease; false if the lease was lost to another replica.
    async fn renew_lease(
        &self,
        job_id: &str,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError>;

    /// Gives the lease back (the job stays as it is).
    async fn release_lease(&self, job_id: &str, owner: &str) -> Result<(), StoreError>;

    /// Moves a job from `from` to `to` with `changes`, its event and audit record, in one
    /// transaction; `StaleJob` if the job is no longer at `from` (or, with `owner`, no longer
    /// leased by it).
    async fn transition_job(
        &self,
        job_id: &str,
        from: JobState,
        to: JobState,
        changes: &JobChanges,
        owner: Option<&str>,
        audit: &AuditDraft,
    ) -> Result<RotationJob, StoreError>;

    /// The next version number of `token`, to seal a new value for.
    async fn next_version(&self, token: &str) -> Result<i64, StoreError>;

    /// I1: stores the sealed new value as a `pending` version of the job's token and records it
    /// on the job, before any source or consumer sees it. Repeating it for the same job returns
    /// the version already stored.
    async fn store_new_version(
        &self,
        job_id: &str,
        version: i64,
        sealed: &Sealed,
        fingerprint: &str,
    ) -> Result<i64, StoreError>;

    /// Updates consumers of a job in one transaction, each with its event (and audit record,
    /// for outcomes). Many updates per commit is what keeps a wide fan-out fast.
    async fn update_job_consumers(
        &self,
        job_id: &str,
        updates: &[ConsumerChange],
    ) -> Result<(), StoreError>;

    /// The seq of a job's latest event (0 before any).
    /// How many jobs each token has had, by status (for `velvet_rotations_total`).
    async fn job_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError>;

    async fn last_event_seq(&self, job_id: &str) -> Result<i64, StoreError>;

    /// Events of a job with `seq > after_seq`, oldest first.
    async fn job_events(
        &self,
        job_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<JobEvent>, StoreError>;
}

#[async_trait]
pub trait Store:
    JobStore
    + AuthStore
    + TokenStore
    + FlagStore
    + DecisionStore
    + OperatorStore
    + SessionStore
    + SealedStore
    + AuditStore
    + ScheduleStore
    + NotificationStore
    + HealthStore
    + Send
    + Sync
    + std::fmt::Debug
{
    fn dialect(&self) -> Dialect;

    /// A trivial query: does the database answer?
    async fn ping(&self) -> Result<(), StoreError>;

    /// Every migration of `set` with its state; fails on an edited or unknown migration.
    async fn migrations(&self, set: &MigrationSet) -> Result<Vec<MigrationState>, StoreError>;

    /// Applies pending migrations in order under a lock, each in its own transaction, and
    /// returns those applied (or, with `dry_run`, those that would be).
    async fn migrate(
        &self,
        set: &MigrationSet,
        dry_run: bool,
    ) -> Result<Vec<MigrationState>, StoreError>;

    /// Tells `on_change` of every job change any replica makes, from now until the store is
    /// dropped; false when this store needs it not (SQLite: one process, which wakes itself).
    fn watch_jobs(&self, on_change: OnJobChange) -> bool;

    /// Takes one of `slots` holds on the lock key `key` for this process, or `None` while every
    /// slot is held by another replica: the caller waits and tries again.
    async fn try_lock_key(&self, key: &str, slots: u32) -> Result<Option<LockKeyHold>, StoreError>;

    /// Walks the whole audit chain and reports the first bad record; `expected_head` (an
    /// exported `seq:hash`) also detects records removed from the end.
    async fn verify_audit(
        &self,
        keyring: &Keyring,
        expected_head: Option<&str>,
    ) -> Result<VerifyReport, StoreError> {
        chain::verify_in_pages(self, keyring, expected_head).await
    }
}

/// Opens the store named by the config, with the keyring used to sign audit records (`None`
/// only for tools that never write audited state, such as `velvet migrate`).
pub async fn open(
    url: &StoreUrl,
    keyring: Option<Arc<Keyring>>,
    opts: &StoreOptions,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match url {
        StoreUrl::Sqlite(path) => Arc::new(SqliteStore::open(path, keyring).await?),
        StoreUrl::Postgres(url) => Arc::new(PostgresStore::connect(url, keyring, opts).await?),
    })
}
