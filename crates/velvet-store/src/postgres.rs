//! The shared store: PostgreSQL, for several replicas. The audit chain and migrations are
//! serialised across replicas with advisory locks; an unreachable server is retried at start.

use crate::migrate::{self, AppliedMigration, Dialect, MigrationSet, MigrationState};
use crate::reconcile::{self, Change};
use crate::rows::*;
use crate::{Context, Reseal, Store, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, Transaction};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use velvet_core::audit::{AuditDraft, AuditEntry};
use velvet_core::config::TokenSpec;
use velvet_core::keyring::{Keyring, Sealed};
use velvet_core::model::{ReconcileReport, SealedVersion, VersionRecord};

const MAX_CONNECTIONS: u32 = 16;
/// Advisory lock keys ("velvet" in ASCII, plus a purpose byte).
const MIGRATION_LOCK: i64 = 0x0076_656c_7665_7401;
const AUDIT_LOCK: i64 = 0x0076_656c_7665_7402;
const RECONCILE_LOCK: i64 = 0x0076_656c_7665_7403;

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

pub(crate) type Tx = Transaction<'static, Postgres>;

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

    pub(crate) async fn begin(&self) -> Result<Tx, StoreError> {
        self.pool.begin().await.ctx("starting a transaction")
    }

    /// Appends an audit record inside `tx`; a transaction-scoped advisory lock keeps the chain
    /// linear across replicas.
    pub(crate) async fn audit_in(
        &self,
        tx: &mut Tx,
        draft: &AuditDraft,
    ) -> Result<AuditEntry, StoreError> {
        let mut entries = self.audit_many(tx, &[draft]).await?;
        Ok(entries.pop().expect("one draft, one entry"))
    }

    /// Appends audit records inside `tx`, reading the chain head once.
    pub(crate) async fn audit_many(
        &self,
        tx: &mut Tx,
        drafts: &[&AuditDraft],
    ) -> Result<Vec<AuditEntry>, StoreError> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK)
            .execute(&mut **tx)
            .await
            .map_err(|e| StoreError::AuditUnavailable(e.to_string()))?;
        let keyring = self.keyring.as_deref().ok_or_else(|| {
            StoreError::AuditUnavailable("the store was opened without a keyring".into())
        })?;
        let head: Option<AuditHead> =
            sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut **tx)
                .await
                .map_err(|e| StoreError::AuditUnavailable(e.to_string()))?;
        let mut head = head.map(|h| (h.seq, h.hash));
        let mut out = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let e = reconcile::next_audit(keyring, head.take(), draft)?;
            sqlx::query(
                "INSERT INTO audit_events (seq, at, actor, action, target, outcome, detail, key_id, prev_hash, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(e.seq)
            .bind(e.at)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.target)
            .bind(&e.outcome)
            .bind(&e.detail)
            .bind(&e.key_id)
            .bind(&e.prev_hash)
            .bind(&e.hash)
            .execute(&mut **tx)
            .await
            .map_err(|err| StoreError::AuditUnavailable(err.to_string()))?;
            head = Some((e.seq, e.hash.clone()));
            out.push(e);
        }
        Ok(out)
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

    async fn upsert_consumers(
        tx: &mut Tx,
        token_id: i64,
        spec: &TokenSpec,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        for c in &spec.consumers {
            sqlx::query(
                "INSERT INTO consumers (token_id, name, kind, lock_key, spec, status, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, 'active', $6, $6)
                 ON CONFLICT (token_id, name) DO UPDATE SET kind = excluded.kind, lock_key = excluded.lock_key,
                     spec = excluded.spec, status = 'active', updated_at = excluded.updated_at",
            )
            .bind(token_id)
            .bind(&c.name)
            .bind(c.kind.as_str())
            .bind(&c.lock_key)
            .bind(serde_json::to_string(c).expect("consumer specs serialise"))
            .bind(now)
            .execute(&mut **tx)
            .await
            .ctx("saving a consumer")?;
        }
        let active: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM consumers WHERE token_id = $1 AND status = 'active'",
        )
        .bind(token_id)
        .fetch_all(&mut **tx)
        .await
        .ctx("listing consumers")?;
        for name in active {
            if !spec.consumers.iter().any(|c| c.name == name) {
                sqlx::query("UPDATE consumers SET status = 'retired', updated_at = $3 WHERE token_id = $1 AND name = $2")
                    .bind(token_id)
                    .bind(&name)
                    .bind(now)
                    .execute(&mut **tx)
                    .await
                    .ctx("retiring a consumer")?;
            }
        }
        Ok(())
    }

    async fn token_id(tx: &mut Tx, name: &str) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT id FROM tokens WHERE name = $1 AND status = 'active'")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await
            .ctx("finding a token")?
            .ok_or_else(|| StoreError::NotFound(format!("token `{name}`")))
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

    async fn reconcile(
        &self,
        tokens: &[TokenSpec],
        now: DateTime<Utc>,
    ) -> Result<ReconcileReport, StoreError> {
        let mut tx = self.begin().await?;
        // Replicas reconcile the same file at start; one at a time, each seeing the last's work.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(RECONCILE_LOCK)
            .execute(&mut *tx)
            .await
            .ctx("taking the reconcile lock")?;
        let existing: Vec<ExistingToken> =
            sqlx::query_as("SELECT id, name, spec_hash, status, last_rotated_at FROM tokens")
                .fetch_all(&mut *tx)
                .await
                .ctx("reading tokens")?;
        let (changes, unchanged) = reconcile::plan(tokens, &existing);
        let mut report = ReconcileReport {
            unchanged,
            ..Default::default()
        };
        for change in changes {
            match change {
                Change::Declare(d) => {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO tokens (name, description, tags, source_kind, spec, spec_hash, status, next_rotation_at, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $8) RETURNING id",
                    )
                    .bind(&d.spec.name)
                    .bind(&d.spec.description)
                    .bind(&d.tags_json)
                    .bind(d.spec.source.kind())
                    .bind(&d.spec_json)
                    .bind(&d.spec_hash)
                    .bind(d.next_rotation_at(None, now))
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await
                    .ctx("declaring a token")?;
                    Self::upsert_consumers(&mut tx, id, d.spec, now).await?;
                    self.audit_in(&mut tx, &velvet_core::audit::AuditDraft::token_declared(&d.spec.name, serde_json::json!({"source": d.spec.source.kind(), "consumers": d.spec.consumers.len()}))).await?;
                    report.declared.push(d.spec.name.clone());
                }
                Change::Update {
                    id,
                    decl: d,
                    last_rotated_at,
                } => {
                    sqlx::query(
                        "UPDATE tokens SET description = $2, tags = $3, source_kind = $4, spec = $5, spec_hash = $6,
                             status = 'active', retired_at = NULL, next_rotation_at = $7, updated_at = $8 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(&d.spec.description)
                    .bind(&d.tags_json)
                    .bind(d.spec.source.kind())
                    .bind(&d.spec_json)
                    .bind(&d.spec_hash)
                    .bind(d.next_rotation_at(last_rotated_at, now))
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .ctx("updating a token")?;
                    Self::upsert_consumers(&mut tx, id, d.spec, now).await?;
                    self.audit_in(
                        &mut tx,
                        &velvet_core::audit::AuditDraft::token_updated(
                            &d.spec.name,
                            serde_json::json!({"spec_hash": d.spec_hash}),
                        ),
                    )
                    .await?;
                    report.updated.push(d.spec.name.clone());
                }
                Change::Retire { id, name } => {
                    sqlx::query("UPDATE tokens SET status = 'retired', retired_at = $2, updated_at = $2 WHERE id = $1")
                        .bind(id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .ctx("retiring a token")?;
                    self.audit_in(
                        &mut tx,
                        &velvet_core::audit::AuditDraft::token_retired(&name),
                    )
                    .await?;
                    report.retired.push(name);
                }
            }
        }
        tx.commit().await.ctx("committing reconcile")?;
        Ok(report)
    }

    async fn import_version(
        &self,
        token: &str,
        sealed: &Sealed,
        fingerprint: &str,
        actor: &str,
    ) -> Result<VersionRecord, StoreError> {
        let mut tx = self.begin().await?;
        let id = Self::token_id(&mut tx, token).await?;
        let existing: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM secret_versions WHERE token_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .ctx("counting versions")?;
        if existing > 0 {
            return Err(StoreError::Conflict(format!(
                "token `{token}` already has {existing} version(s); import is for adopting a credential once, rotate it instead"
            )));
        }
        let now = velvet_core::audit::now_micros();
        // Audit first (I6): the record is written before the value, in the same transaction.
        self.audit_in(
            &mut tx,
            &AuditDraft::version_imported(actor, token, 1, fingerprint),
        )
        .await?;
        sqlx::query(
            "INSERT INTO secret_versions (token_id, version, label, key_id, ciphertext, fingerprint, created_at, activated_at)
             VALUES ($1, 1, 'current', $2, $3, $4, $5, $5)",
        )
        .bind(id)
        .bind(&sealed.key_id)
        .bind(&sealed.ciphertext)
        .bind(fingerprint)
        .bind(now)
        .execute(&mut *tx)
        .await
        .ctx("storing the imported version")?;
        sqlx::query("UPDATE tokens SET last_rotated_at = $2, updated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("updating the token")?;
        tx.commit().await.ctx("committing the import")?;
        Ok(VersionRecord {
            version: 1,
            label: velvet_core::model::VersionLabel::Current,
            fingerprint: fingerprint.to_string(),
            created_at: now,
            activated_at: Some(now),
            revoked_at: None,
        })
    }

    async fn sealed_version(&self, token: &str, version: i64) -> Result<Sealed, StoreError> {
        let row: Option<SealedRow> = sqlx::query_as(
            "SELECT t.name AS token, v.version, v.key_id, v.ciphertext FROM secret_versions v
             JOIN tokens t ON t.id = v.token_id WHERE t.name = $1 AND v.version = $2",
        )
        .bind(token)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading a sealed value")?;
        row.map(|r| SealedVersion::from(r).sealed)
            .ok_or_else(|| StoreError::NotFound(format!("version {version} of token `{token}`")))
    }

    async fn key_ids_in_use(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT key_id FROM secret_versions UNION SELECT key_id FROM audit_events
             UNION SELECT totp_key_id FROM operators ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .ctx("listing key ids in use")
    }

    async fn sealed_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query_as(
            "SELECT key_id, CAST(SUM(n) AS BIGINT) FROM (
                 SELECT key_id, COUNT(*) AS n FROM secret_versions GROUP BY key_id
                 UNION ALL SELECT totp_key_id, COUNT(*) FROM operators GROUP BY totp_key_id
             ) AS sealed GROUP BY key_id ORDER BY key_id",
        )
        .fetch_all(&self.pool)
        .await
        .ctx("counting sealed values")
    }

    async fn sample_sealed(&self, key_id: &str) -> Result<Option<SealedVersion>, StoreError> {
        let row: Option<SealedRow> = sqlx::query_as(
            "SELECT t.name AS token, v.version, v.key_id, v.ciphertext FROM secret_versions v
             JOIN tokens t ON t.id = v.token_id WHERE v.key_id = $1 LIMIT 1",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await
        .ctx("sampling a sealed value")?;
        Ok(row.map(Into::into))
    }

    async fn sealed_not_under(
        &self,
        key_id: &str,
        limit: i64,
    ) -> Result<Vec<SealedVersion>, StoreError> {
        let rows: Vec<SealedRow> = sqlx::query_as(
            "SELECT t.name AS token, v.version, v.key_id, v.ciphertext FROM secret_versions v
             JOIN tokens t ON t.id = v.token_id WHERE v.key_id <> $1 ORDER BY v.id LIMIT $2",
        )
        .bind(key_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .ctx("listing values to re-seal")?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn reseal(&self, batch: &[Reseal]) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let mut changed = 0;
        for r in batch {
            changed += sqlx::query(
                "UPDATE secret_versions SET key_id = $4, ciphertext = $5, fingerprint = $6
                 WHERE token_id = (SELECT id FROM tokens WHERE name = $1) AND version = $2 AND key_id = $3",
            )
            .bind(&r.token)
            .bind(r.version)
            .bind(&r.old_key_id)
            .bind(&r.sealed.key_id)
            .bind(&r.sealed.ciphertext)
            .bind(&r.fingerprint)
            .execute(&mut *tx)
            .await
            .ctx("re-sealing a value")?
            .rows_affected();
        }
        tx.commit().await.ctx("committing re-sealed values")?;
        Ok(changed)
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

    async fn append_audit(&self, draft: &AuditDraft) -> Result<AuditEntry, StoreError> {
        let mut tx = self
            .begin()
            .await
            .map_err(|e| StoreError::AuditUnavailable(e.to_string()))?;
        let e = self.audit_in(&mut tx, draft).await?;
        tx.commit()
            .await
            .map_err(|e| StoreError::AuditUnavailable(e.to_string()))?;
        Ok(e)
    }

    async fn audit_page(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT seq, at, actor, action, target, outcome, detail, key_id, prev_hash, hash
             FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .ctx("reading the audit log")?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}
