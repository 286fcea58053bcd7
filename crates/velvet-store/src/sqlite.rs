//! The embedded store: SQLite in WAL mode, on one driver (`db::sqlite`): every write goes
//! through the writer thread, every read through the read-only pool.

use crate::db::sqlite::{Readers, SqliteConn, SqliteDb, Writer, ts};
use crate::db::{Conn, Row};
use crate::migrate::{self, AppliedMigration, Dialect, MigrationSet, MigrationState};
use crate::{Context, Store, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use velvet_core::audit::{
    AuditRecordRef, RangeOutcome, RangeVerifier, VerifyReport, join_ranges, parse_head,
};
use velvet_core::keyring::Keyring;

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    /// rusqlite: the writer thread and the read pool (`db::sqlite`).
    pub(crate) db: SqliteDb,
    /// Signs audit records; a store opened without one (for `migrate`) refuses audited writes.
    pub(crate) keyring: Option<Arc<Keyring>>,
}

impl crate::db::Backend for SqliteStore {
    type Driver = SqliteDb;
    fn driver(&self) -> &SqliteDb {
        &self.db
    }
    fn keyring(&self) -> Option<&Arc<Keyring>> {
        self.keyring.as_ref()
    }
}

/// The migrations recorded in the store, oldest first (none before the first one).
fn applied(c: &mut SqliteConn) -> Result<Vec<AppliedMigration>, StoreError> {
    let what = "reading migration state";
    let exists = crate::db::sqlite::now(c.rows(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'velvet_schema_migrations'",
        &[],
    ))
    .ctx(what)?;
    if exists.is_empty() {
        return Ok(Vec::new());
    }
    let rows = crate::db::sqlite::now(c.rows(
        "SELECT version, name, checksum, applied_at FROM velvet_schema_migrations ORDER BY version",
        &[],
    ))
    .ctx(what)?;
    rows.into_iter()
        .map(|mut r: Row| {
            Ok(AppliedMigration {
                version: r.int()?,
                name: r.text()?,
                checksum: r.text()?,
                applied_at: r.time()?,
            })
        })
        .collect::<Result<_, crate::db::DbError>>()
        .ctx(what)
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
        let writer = Writer::open(path, BUSY_TIMEOUT).map_err(|e| {
            StoreError::Unavailable(format!("cannot open SQLite store {}: {e}", path.display()))
        })?;
        Ok(Self {
            db: SqliteDb {
                writer,
                readers: Readers::new(path, BUSY_TIMEOUT),
            },
            path: path.to_path_buf(),
            keyring,
        })
    }
}

/// Chains shorter than this are verified on one thread.
const PARALLEL_VERIFY_MIN: i64 = 20_000;

/// Microseconds since the epoch of a time as `db::sqlite::ts` writes it
/// (`2026-11-23T13:48:51.466092+00:00`), read by position for speed, with chrono for any other
/// RFC 3339 form.
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
        self.db
            .readers
            .read("pinging the store", |c| {
                crate::db::sqlite::now(c.rows("SELECT 1", &[])).ctx("pinging the store")
            })
            .map(drop)
    }

    async fn migrations(&self, set: &MigrationSet) -> Result<Vec<MigrationState>, StoreError> {
        let applied = self.db.readers.read("reading migration state", applied)?;
        Ok(migrate::plan(set, &applied)?)
    }

    async fn migrate(
        &self,
        set: &MigrationSet,
        dry_run: bool,
    ) -> Result<Vec<MigrationState>, StoreError> {
        if dry_run {
            let states = self.migrations(set).await?;
            return Ok(states
                .into_iter()
                .filter(|s| s.status == "pending")
                .collect());
        }
        let set = Arc::new(set.clone());
        let mut done = Vec::new();
        loop {
            // One writer request per migration: the writer thread is the lock, and a failure
            // keeps the migrations before it.
            let set = Arc::clone(&set);
            let applied_now = self
                .db
                .writer
                .call("applying a migration", move |c| {
                    let states = migrate::plan(&set, &applied(c)?)?;
                    let Some(m) = migrate::next_pending(&set, &states) else {
                        return Ok(None);
                    };
                    c.raw()
                        .execute_batch(
                            "CREATE TABLE IF NOT EXISTS velvet_schema_migrations (
                                version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)",
                        )
                        .ctx("creating the migration table")?;
                    c.raw().execute_batch(&m.sql).ctx("applying a migration")?;
                    let now = Utc::now();
                    c.raw()
                        .execute(
                            "INSERT INTO velvet_schema_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
                            rusqlite::params![m.version, m.name, m.checksum, ts(now)],
                        )
                        .ctx("recording a migration")?;
                    Ok(Some(MigrationState {
                        version: m.version,
                        name: m.name.clone(),
                        status: "applied",
                        applied_at: Some(now),
                    }))
                })
                .await?;
            match applied_now {
                Some(state) => done.push(state),
                None => return Ok(done),
            }
        }
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
        let max = self.db.readers.read("reading the audit log", |c| {
            let mut rows = crate::db::sqlite::now(c.rows("SELECT MAX(seq) FROM audit_events", &[]))
                .ctx("reading the audit log")?;
            rows[0].opt_int().ctx("reading the audit log")
        })?;
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
