//! The store: one [`Store`] trait, implemented once for SQLite (the embedded default) and once
//! for PostgreSQL (several replicas). Each implementation owns its SQL; nothing branches on the
//! dialect at run time.

mod chain;
mod migrate;
mod postgres;
mod reconcile;
mod rows;
mod sqlite;

pub use chain::{check_keyring, reseal_all};
pub use migrate::{
    AppliedMigration, Dialect, Migration, MigrationError, MigrationSet, MigrationState,
};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use velvet_core::audit::{AuditDraft, AuditEntry, VerifyReport};
use velvet_core::config::{StoreUrl, TokenSpec};
use velvet_core::keyring::{Keyring, KeyringError, Sealed};
use velvet_core::model::{
    ConsumerRecord, ReconcileReport, SealedVersion, TokenRecord, VersionRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("{0}")]
    Unavailable(String),
    /// I6: the audit record could not be written, so the action did not happen.
    #[error("the audit log could not be written, so the action was refused: {0}")]
    AuditUnavailable(String),
    #[error("database error while {context}: {source}")]
    Database {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

/// Attaches what the store was doing to a database error.
pub(crate) trait Context<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Database { context, source })
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

#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
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

    /// Syncs the declared tokens and consumers into the store; tokens no longer declared are
    /// retired, never deleted. Every change is audited in the same transaction.
    async fn reconcile(
        &self,
        tokens: &[TokenSpec],
        now: DateTime<Utc>,
    ) -> Result<ReconcileReport, StoreError>;

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    async fn get_token(&self, name: &str) -> Result<Option<TokenRecord>, StoreError>;
    async fn list_consumers(&self, token: &str) -> Result<Vec<ConsumerRecord>, StoreError>;
    async fn list_versions(&self, token: &str) -> Result<Vec<VersionRecord>, StoreError>;

    /// Stores an existing credential as version 1, `current`, sealed with the associated data
    /// of `(token, 1)`. Refused if the token already has versions.
    async fn import_version(
        &self,
        token: &str,
        sealed: &Sealed,
        fingerprint: &str,
        actor: &str,
    ) -> Result<VersionRecord, StoreError>;

    async fn sealed_version(&self, token: &str, version: i64) -> Result<Sealed, StoreError>;

    /// Key ids referenced by sealed values and audit records.
    async fn key_ids_in_use(&self) -> Result<Vec<String>, StoreError>;

    /// How many values each key seals.
    async fn sealed_counts(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// One sealed value under `key_id`, to prove the keyring really opens stored data.
    async fn sample_sealed(&self, key_id: &str) -> Result<Option<SealedVersion>, StoreError>;

    /// Up to `limit` values sealed under any key other than `key_id`.
    async fn sealed_not_under(
        &self,
        key_id: &str,
        limit: i64,
    ) -> Result<Vec<SealedVersion>, StoreError>;

    /// Writes re-sealed values in one transaction; rows already moved are left alone, so an
    /// interrupted run can simply be repeated. Returns how many rows changed.
    async fn reseal(&self, batch: &[Reseal]) -> Result<u64, StoreError>;

    /// Appends one audit record in its own transaction.
    async fn append_audit(&self, draft: &AuditDraft) -> Result<AuditEntry, StoreError>;

    /// Audit records with `seq > after_seq`, oldest first.
    async fn audit_page(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>, StoreError>;

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
