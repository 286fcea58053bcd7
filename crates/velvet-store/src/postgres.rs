//! The shared store: PostgreSQL, for several replicas. The audit chain and migrations are
//! serialised across replicas with advisory locks; an unreachable server is retried at start.

use crate::migrate::{self, AppliedMigration, Dialect, MigrationSet, MigrationState};
use crate::{Context, Store, StoreError};
use async_trait::async_trait;
use chrono::Utc;
use sqlx::AssertSqlSafe;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use velvet_core::keyring::Keyring;

const MAX_CONNECTIONS: u32 = 16;
/// Advisory lock keys ("velvet" in ASCII, plus a purpose byte).
const MIGRATION_LOCK: i64 = 0x0076_656c_7665_7401;

pub struct PostgresStore {
    pub(crate) pool: PgPool,
    pub(crate) db: crate::db::postgres::PgDb,
    /// Signs audit records; a store opened without one (for `migrate`) refuses audited writes.
    keyring: Option<Arc<Keyring>>,
    /// The connection this replica's lock keys are held on.
    locks: Arc<crate::lock_keys::LockSession>,
    /// How to connect, for the connections kept apart from the pool.
    options: PgConnectOptions,
    /// The task listening for job changes, stopped with the store.
    watching: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The URL with its password masked, for messages.
    shown_url: String,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(task) = self.watching.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.shown_url)
            .finish()
    }
}

impl crate::db::Backend for PostgresStore {
    type Driver = crate::db::postgres::PgDb;
    fn driver(&self) -> &crate::db::postgres::PgDb {
        &self.db
    }
    fn keyring(&self) -> Option<&Arc<Keyring>> {
        self.keyring.as_ref()
    }
}

impl PostgresStore {
    /// Connects, retrying with backoff for `opts.connect_budget` so a database that starts
    /// after Velvet (a common container race) does not fail the start.
    pub async fn connect(
        url: &str,
        keyring: Option<Arc<Keyring>>,
        opts: &crate::StoreOptions,
    ) -> Result<Self, StoreError> {
        let shown_url = velvet_core::config::redact_url(url);
        let options = PgConnectOptions::from_str(url).map_err(|e| {
            StoreError::Unavailable(format!("{shown_url} is not a valid PostgreSQL URL: {e}"))
        })?;
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        let mut attempts = 0;
        loop {
            attempts += 1;
            // One direct connection first: its error says why (refused, auth, no database),
            // where a pool would only report a timeout.
            let remaining = opts.connect_budget.saturating_sub(started.elapsed());
            let attempt = remaining.clamp(Duration::from_millis(500), Duration::from_secs(5));
            let result =
                match tokio::time::timeout(attempt, PgConnection::connect_with(&options)).await {
                    Ok(Ok(conn)) => {
                        let _ = conn.close().await;
                        PgPoolOptions::new()
                            .max_connections(MAX_CONNECTIONS)
                            .acquire_timeout(Duration::from_secs(5))
                            .connect_with(options.clone())
                            .await
                            .map_err(|e| e.to_string())
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {attempt:?}")),
                };
            match result {
                Ok(pool) => {
                    return Ok(Self {
                        db: crate::db::postgres::PgDb { pool: pool.clone() },
                        pool,
                        keyring,
                        locks: crate::lock_keys::LockSession::new(options.clone()),
                        options: options.clone(),
                        watching: Default::default(),
                        shown_url,
                    });
                }
                Err(e) if started.elapsed() + delay < opts.connect_budget => {
                    tracing::warn!(url = %shown_url, attempt = attempts, error = %e, retry_in_ms = delay.as_millis() as u64, "PostgreSQL not reachable yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "cannot reach PostgreSQL at {shown_url} after {attempts} attempt(s) over {:.1}s: {e}",
                        started.elapsed().as_secs_f64()
                    )));
                }
            }
        }
    }

    /// The pool, for tests and tools that need raw access.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn applied(
        &self,
        tx: &mut sqlx::PgConnection,
    ) -> Result<Vec<AppliedMigration>, StoreError> {
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('velvet_schema_migrations') IS NOT NULL")
                .fetch_one(&mut *tx)
                .await
                .ctx("reading migration state")?;
        if !exists {
            return Ok(Vec::new());
        }
        sqlx::query_as("SELECT version, name, checksum, applied_at FROM velvet_schema_migrations ORDER BY version")
            .fetch_all(&mut *tx)
            .await
            .ctx("reading migration state")
    }

    async fn migrate_locked(
        &self,
        conn: &mut sqlx::PgConnection,
        set: &MigrationSet,
    ) -> Result<Vec<MigrationState>, StoreError> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS velvet_schema_migrations (
                version BIGINT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)",
        )
        .execute(&mut *conn)
        .await
        .ctx("creating the migration table")?;
        let mut done = Vec::new();
        loop {
            let applied = self.applied(&mut *conn).await?;
            let states = migrate::plan(set, &applied)?;
            let Some(m) = migrate::next_pending(set, &states) else {
                return Ok(done);
            };
            let mut tx = sqlx::Connection::begin(&mut *conn)
                .await
                .ctx("starting a migration")?;
            sqlx::raw_sql(AssertSqlSafe(m.sql.clone()))
                .execute(&mut *tx)
                .await
                .ctx("applying a migration")?;
            let now = Utc::now();
            sqlx::query("INSERT INTO velvet_schema_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)")
                .bind(m.version)
                .bind(&m.name)
                .bind(&m.checksum)
                .bind(now)
                .execute(&mut *tx)
                .await
                .ctx("recording a migration")?;
            tx.commit().await.ctx("committing a migration")?;
            done.push(MigrationState {
                version: m.version,
                name: m.name.clone(),
                status: "applied",
                applied_at: Some(now),
            });
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .ctx("pinging the store")?;
        Ok(())
    }

    async fn migrations(&self, set: &MigrationSet) -> Result<Vec<MigrationState>, StoreError> {
        let mut conn = self.pool.acquire().await.ctx("reading migration state")?;
        let applied = self.applied(&mut conn).await?;
        Ok(migrate::plan(set, &applied)?)
    }

    async fn migrate(
        &self,
        set: &MigrationSet,
        dry_run: bool,
    ) -> Result<Vec<MigrationState>, StoreError> {
        let mut conn = self.pool.acquire().await.ctx("connecting to migrate")?;
        if dry_run {
            let applied = self.applied(&mut conn).await?;
            let states = migrate::plan(set, &applied)?;
            return Ok(states
                .into_iter()
                .filter(|s| s.status == "pending")
                .collect());
        }
        // A session lock: a second replica waits here until the first has finished.
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .ctx("taking the migration lock")?;
        let result = self.migrate_locked(&mut conn, set).await;
        let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await;
        if unlock.is_err() {
            // The lock dies with the session; make sure this connection is not reused.
            conn.detach();
        }
        result
    }

    async fn try_lock_key(
        &self,
        key: &str,
        slots: u32,
    ) -> Result<Option<crate::LockKeyHold>, StoreError> {
        self.locks.try_lock(key, slots).await
    }

    fn watch_jobs(&self, on_change: crate::OnJobChange) -> bool {
        let task = crate::wakeups::listen(self.options.clone(), on_change);
        let mut watching = self.watching.lock().expect("never poisoned");
        if let Some(old) = watching.replace(task) {
            old.abort();
        }
        true
    }
}
