//! The embedded store: SQLite in WAL mode. All writes go through a single-connection pool with
//! `BEGIN IMMEDIATE`, so writers queue instead of failing with SQLITE_BUSY; reads use a small
//! read-only pool.

use crate::db::sqlite::{Readers, SqliteDb, Writer};
use crate::migrate::{self, AppliedMigration, Dialect, MigrationSet, MigrationState};
use crate::reconcile::{self, Change};
use crate::rows::*;
use crate::{Context, Reseal, Store, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Sqlite, Transaction};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use velvet_core::audit::{
    AuditDraft, AuditEntry, AuditRecordRef, RangeOutcome, RangeVerifier, VerifyReport, join_ranges,
    parse_head,
};
use velvet_core::config::TokenSpec;
use velvet_core::keyring::{Keyring, Sealed};
use velvet_core::model::{ReconcileReport, SealedVersion, VersionRecord};

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READERS: u32 = 4;
/// Rows the driver thread may read ahead of the consumer; the default (50) makes every few rows
/// a cross-thread wake-up, which dominated long scans such as audit verification.
const READ_ROW_BUFFER: usize = 4096;

#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
    /// rusqlite: the writer thread and the read pool (`db::sqlite`).
    pub(crate) db: SqliteDb,
    /// Signs audit records; a store opened without one (for `migrate`) refuses audited writes.
    pub(crate) keyring: Option<Arc<Keyring>>,
}

pub(crate) type Tx = Transaction<'static, Sqlite>;

impl crate::db::Backend for SqliteStore {
    type Driver = SqliteDb;
    fn driver(&self) -> &SqliteDb {
        &self.db
    }
    fn keyring(&self) -> Option<&Arc<Keyring>> {
        self.keyring.as_ref()
    }
}

impl SqliteStore {
    pub async fn open(path: &Path, keyring: Option<Arc<Keyring>>) -> Result<Self, StoreError> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(StoreError::Unavailable(format!(
                "store.url: directory {} does not exist; create it (mkdir -p {}) or point store.url elsewhere",
                dir.display(),
                dir.display()
            )));
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let open_err = |e: sqlx::Error| {
            StoreError::Unavailable(format!("cannot open SQLite store {}: {e}", path.display()))
        };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone().create_if_missing(true))
            .await
            .map_err(open_err)?;
        // Touch the schema so a file that is not a database fails here, with its name.
        sqlx::query("SELECT count(*) FROM sqlite_master")
            .execute(&writer)
            .await
            .map_err(open_err)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(opts.read_only(true).row_buffer_size(READ_ROW_BUFFER))
            .await
            .map_err(open_err)?;
        let jobs = Writer::open(path, BUSY_TIMEOUT).map_err(|e| {
            StoreError::Unavailable(format!("cannot open SQLite store {}: {e}", path.display()))
        })?;
        Ok(Self {
            db: SqliteDb {
                writer: jobs,
                readers: Readers::new(path, BUSY_TIMEOUT),
            },
            path: path.to_path_buf(),
            writer,
            reader,
            keyring,
        })
    }

    pub(crate) async fn begin(&self) -> Result<Tx, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .ctx("starting a write transaction")
    }

    /// Appends an audit record inside `tx`; the single writer keeps the chain linear.
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
        tx: &mut sqlx::SqliteConnection,
    ) -> Result<Vec<AppliedMigration>, StoreError> {
        let exists: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'velvet_schema_migrations'",
        )
        .fetch_optional(&mut *tx)
        .await
        .ctx("reading migration state")?;
        if exists.is_none() {
            return Ok(Vec::new());
        }
        sqlx::query_as("SELECT version, name, checksum, applied_at FROM velvet_schema_migrations ORDER BY version")
            .fetch_all(&mut *tx)
            .await
            .ctx("reading migration state")
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

/// Chains shorter than this are verified on one thread.
const PARALLEL_VERIFY_MIN: i64 = 20_000;

/// Microseconds since the epoch of a time as sqlx stores it (`2026-11-23T13:48:51.466092+00:00`),
/// read by position for speed, with chrono for any other RFC 3339 form.
fn parse_stored_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b.get(r.clone())?.iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let fast = (|| {
        if b.len() < 25 || b[4] != b'-' || b[10] != b'T' || !s.ends_with("+00:00") {
            return None;
        }
        let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
        let frac = &b[19..b.len() - 6];
        let micros = match frac {
            [] => 0,
            [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
                let n = num(20..20 + digits.len())? as u64;
                (n * 10u64.pow(9 - digits.len() as u32) / 1000) as u32
            }
            _ => return None,
        };
        let time = chrono::NaiveTime::from_hms_micro_opt(
            num(11..13)?,
            num(14..16)?,
            num(17..19)?,
            micros,
        )?;
        Some(date.and_time(time).and_utc().timestamp_micros())
    })();
    fast.or_else(|| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_micros())
    })
}

/// Checks one seq range of the chain through rusqlite, which reads columns in place: sqlx
/// copies every value across a thread, costing more per row than the HMAC being checked
/// (docs/adr/0004-audit-verify-in-parallel-ranges.md).
fn verify_range(
    path: &Path,
    keyring: &Keyring,
    start: i64,
    bounds: (i64, i64),
    head: Option<(i64, String)>,
) -> Result<RangeOutcome, StoreError> {
    use rusqlite::OpenFlags;
    let fail = |e: rusqlite::Error| StoreError::Unavailable(format!("reading the audit log: {e}"));
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
    // Read pages through a memory map rather than a copy per page read.
    conn.pragma_update(None, "mmap_size", 1i64 << 30)
        .map_err(fail)?;
    let mut stmt = conn
        .prepare(
            "SELECT seq, at, actor, action, target, outcome, detail, key_id, prev_hash, hash
             FROM audit_events WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq",
        )
        .map_err(fail)?;
    let mut rows = stmt.query(bounds).map_err(fail)?;
    let mut verifier = RangeVerifier::new(keyring, start, head);
    while let Some(row) = rows.next().map_err(fail)? {
        let bytes = |i: usize| -> Result<&[u8], StoreError> {
            row.get_ref(i)
                .map_err(fail)?
                .as_bytes()
                .map_err(|e| StoreError::Unavailable(format!("reading the audit log: {e}")))
        };
        let at = std::str::from_utf8(bytes(1)?).unwrap_or("");
        let at_micros = parse_stored_time(at).ok_or_else(|| {
            StoreError::Unavailable(format!("audit record has an invalid time `{at}`"))
        })?;
        verifier.push(AuditRecordRef {
            seq: row.get(0).map_err(fail)?,
            at_micros,
            actor: bytes(2)?,
            action: bytes(3)?,
            target: bytes(4)?,
            outcome: bytes(5)?,
            detail: bytes(6)?,
            key_id: std::str::from_utf8(bytes(7)?).unwrap_or(""),
            prev_hash: bytes(8)?,
            hash: bytes(9)?,
        });
        if verifier.failed() {
            break;
        }
    }
    Ok(verifier.finish(start))
}

#[async_trait]
impl Store for SqliteStore {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .ctx("pinging the store")?;
        Ok(())
    }

    async fn migrations(&self, set: &MigrationSet) -> Result<Vec<MigrationState>, StoreError> {
        let mut conn = self.reader.acquire().await.ctx("reading migration state")?;
        let applied = self.applied(&mut conn).await?;
        Ok(migrate::plan(set, &applied)?)
    }

    async fn migrate(
        &self,
        set: &MigrationSet,
        dry_run: bool,
    ) -> Result<Vec<MigrationState>, StoreError> {
        let mut done = Vec::new();
        loop {
            // One IMMEDIATE transaction per migration: it is the lock, and a failure keeps the
            // migrations before it.
            let mut tx = self.begin().await?;
            let applied = self.applied(&mut tx).await?;
            let states = migrate::plan(set, &applied)?;
            if dry_run {
                return Ok(states
                    .into_iter()
                    .filter(|s| s.status == "pending")
                    .collect());
            }
            let Some(m) = migrate::next_pending(set, &states) else {
                return Ok(done);
            };
            sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS velvet_schema_migrations (
                    version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)",
            )
            .execute(&mut *tx)
            .await
            .ctx("creating the migration table")?;
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

    async fn reconcile(
        &self,
        tokens: &[TokenSpec],
        now: DateTime<Utc>,
    ) -> Result<ReconcileReport, StoreError> {
        let mut tx = self.begin().await?;
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
        .fetch_optional(&self.reader)
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
        .fetch_all(&self.reader)
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
        .fetch_all(&self.reader)
        .await
        .ctx("counting sealed values")
    }

    async fn sample_sealed(&self, key_id: &str) -> Result<Option<SealedVersion>, StoreError> {
        let row: Option<SealedRow> = sqlx::query_as(
            "SELECT t.name AS token, v.version, v.key_id, v.ciphertext FROM secret_versions v
             JOIN tokens t ON t.id = v.token_id WHERE v.key_id = $1 LIMIT 1",
        )
        .bind(key_id)
        .fetch_optional(&self.reader)
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
        .fetch_all(&self.reader)
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

    fn watch_jobs(&self, _on_change: crate::OnJobChange) -> bool {
        false
    }

    /// One process serves an SQLite store, and the engine's semaphores order it.
    async fn try_lock_key(
        &self,
        _key: &str,
        _slots: u32,
    ) -> Result<Option<crate::LockKeyHold>, StoreError> {
        Ok(Some(crate::LockKeyHold::local()))
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

    /// Splits the chain into one seq range per core and checks them in parallel; each record's
    /// hash covers only its own fields and stored `prev_hash`, and the seams are checked after.
    async fn verify_audit(
        &self,
        keyring: &Keyring,
        expected_head: Option<&str>,
    ) -> Result<VerifyReport, StoreError> {
        let head = expected_head
            .map(parse_head)
            .transpose()
            .map_err(StoreError::Conflict)?;
        let max: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_events")
            .fetch_one(&self.reader)
            .await
            .ctx("reading the audit log")?;
        let Some(max) = max else {
            return Ok(join_ranges(&[], head.as_ref()));
        };
        let cores = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8) as i64;
        let parts = if max < PARALLEL_VERIFY_MIN { 1 } else { cores };
        let step = (max.max(1) + parts - 1) / parts;
        // The first range also reads seq < 1 and the last anything past `max`, so a forged row
        // outside 1..=max is still checked (and fails the seq check).
        let ranges: Vec<(i64, (i64, i64))> = (0..parts)
            .map(|k| {
                let start = k * step + 1;
                let lo = if k == 0 { i64::MIN } else { start };
                let hi = if k == parts - 1 {
                    i64::MAX
                } else {
                    (k + 1) * step
                };
                (start, (lo, hi))
            })
            .collect();
        let path = &self.path;
        let run = || {
            std::thread::scope(|s| {
                let handles: Vec<_> = ranges
                    .iter()
                    .map(|&(start, bounds)| {
                        let head = head.clone();
                        s.spawn(move || verify_range(path, keyring, start, bounds, head))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a verify thread panicked"))
                    .collect::<Result<Vec<_>, _>>()
            })
        };
        let outcomes = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => run(),
            _ => tokio::task::block_in_place(run),
        }?;
        Ok(join_ranges(&outcomes, head.as_ref()))
    }

    async fn audit_page(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT seq, at, actor, action, target, outcome, detail, key_id, prev_hash, hash
             FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .ctx("reading the audit log")?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_times_parse_like_chrono() {
        for s in [
            "2026-11-23T13:48:51.466092+00:00",
            "2026-11-23T13:48:51+00:00",
            "2026-11-23T13:48:51.5+00:00",
            "2026-01-01T00:00:00.000001+00:00",
            "2026-11-23T13:48:51.466092Z",
            "2026-11-23T14:48:51.466092+01:00",
        ] {
            let want = chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_micros();
            assert_eq!(super::parse_stored_time(s), Some(want), "{s}");
        }
        assert_eq!(super::parse_stored_time("2026-13-01T00:00:00+00:00"), None);
    }
}
