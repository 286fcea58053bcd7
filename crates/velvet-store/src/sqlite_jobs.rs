//! Rotation jobs on SQLite. Every change runs on the writer thread (`sqlite_writer`) in one
//! transaction with its audit record and events; that single writer serialises all changes, so
//! claims and per-job event numbering need no further locking. Reads use sqlx's reader pool.

use crate::rows::{EventRow, JOB_COLUMNS, JOB_CONSUMERS_SQL, JobConsumerRow, JobRow};
use crate::sqlite::SqliteStore;
use crate::{ConsumerChange, Context, JobEvent, JobQuery, JobStore, NewJob, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};
use sqlx::AssertSqlSafe;
use velvet_core::audit::{AuditDraft, now_micros};
use velvet_core::job::{Job, JobChanges, new_job_id};
use velvet_core::keyring::{Keyring, Sealed};
use velvet_core::rotation::JobState;

fn lease_until(lease: std::time::Duration) -> DateTime<Utc> {
    now_micros() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30))
}

/// A time as sqlx writes it, so rows written here and there read and compare alike.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// A time column as written by either path; borrowed, not copied.
pub(crate) fn time_at(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let Some(s) = row.get_ref(i)?.as_str_or_null()? else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(s)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
}

pub(crate) fn required_time(row: &Row<'_>, i: usize) -> rusqlite::Result<DateTime<Utc>> {
    time_at(row, i)?.ok_or(rusqlite::Error::InvalidColumnType(
        i,
        "time".into(),
        rusqlite::types::Type::Null,
    ))
}

fn job_row(r: &Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        token: r.get(1)?,
        flow_type: r.get(2)?,
        stage: r.get(3)?,
        status: r.get(4)?,
        awaiting: r.get(5)?,
        revoke_started: r.get(6)?,
        reverting: r.get(7)?,
        new_version: r.get(8)?,
        previous_version: r.get(9)?,
        requested_by: r.get(10)?,
        reason: r.get(11)?,
        error: r.get(12)?,
        lease_owner: r.get(13)?,
        lease_expires_at: time_at(r, 14)?,
        wake_at: time_at(r, 15)?,
        created_at: required_time(r, 16)?,
        updated_at: required_time(r, 17)?,
        finished_at: time_at(r, 18)?,
        requested_role: r.get(19)?,
    })
}

fn consumer_row(r: &Row<'_>) -> rusqlite::Result<JobConsumerRow> {
    Ok(JobConsumerRow {
        name: r.get(0)?,
        kind: r.get(1)?,
        lock_key: r.get(2)?,
        status: r.get(3)?,
        attempts: r.get(4)?,
        last_error: r.get(5)?,
        fingerprint: r.get(6)?,
        next_attempt_at: time_at(r, 7)?,
        started_at: time_at(r, 8)?,
        updated_at: required_time(r, 9)?,
    })
}

/// The job as it stands inside the writer's transaction.
fn load(conn: &Connection, job_id: &str) -> Result<Option<Job>, StoreError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM rotation_jobs j JOIN tokens t ON t.id = j.token_id WHERE j.id = ?1"
    );
    let row = conn
        .prepare_cached(&sql)
        .and_then(|mut st| st.query_row([job_id], job_row).optional())
        .ctx("reading a job")?;
    let Some(row) = row else { return Ok(None) };
    let consumers = conn
        .prepare_cached(JOB_CONSUMERS_SQL)
        .and_then(|mut st| {
            st.query_map([job_id], consumer_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("reading a job's consumers")?;
    row.into_job(consumers).map(Some)
}

fn event(conn: &Connection, job_id: &str, kind: &str, data: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO rotation_events (job_id, seq, at, event, data)
         VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM rotation_events WHERE job_id = ?1), ?2, ?3, ?4)",
    )
    .and_then(|mut st| st.execute(params![job_id, ts(now_micros()), kind, data]))
    .ctx("appending a job event")?;
    Ok(())
}

fn job_json(job: &Job) -> String {
    serde_json::to_string(job).expect("jobs serialise")
}

/// Appends audit records, reading the chain head once; the single writer keeps it linear.
pub(crate) fn audit_many(
    conn: &Connection,
    keyring: Option<&Keyring>,
    drafts: &[&AuditDraft],
) -> Result<(), StoreError> {
    if drafts.is_empty() {
        return Ok(());
    }
    let keyring = keyring.ok_or_else(|| {
        StoreError::AuditUnavailable("the store was opened without a keyring".into())
    })?;
    let unavailable = |e: rusqlite::Error| StoreError::AuditUnavailable(e.to_string());
    let mut head: Option<(i64, String)> = conn
        .prepare_cached("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        .and_then(|mut st| st.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(unavailable)?;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO audit_events (seq, at, actor, action, target, outcome, detail, key_id, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(unavailable)?;
    for draft in drafts {
        let e = crate::reconcile::next_audit(keyring, head.take(), draft)?;
        insert
            .execute(params![
                e.seq,
                ts(e.at),
                e.actor,
                e.action,
                e.target,
                e.outcome,
                e.detail,
                e.key_id,
                e.prev_hash,
                e.hash
            ])
            .map_err(unavailable)?;
        head = Some((e.seq, e.hash));
    }
    Ok(())
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn create_job(&self, new: &NewJob<'_>) -> Result<Job, StoreError> {
        let keyring = self.keyring.clone();
        let (token, flow, requested_by) = (
            new.token.to_string(),
            new.flow,
            new.requested_by.to_string(),
        );
        let reason = new.reason.map(str::to_string);
        let role = new.requested_role.map(|r| r.as_str());
        let idem = new.idempotency.as_ref().map(|k| {
            (
                k.scope.to_string(),
                k.key.to_string(),
                k.request_hash.to_string(),
            )
        });
        self.db.writer.call("creating a job", move |c| {
            let conn = c.raw();
            if let Some((scope, key, hash)) = &idem {
                let cutoff = ts(now_micros() - crate::IDEMPOTENCY_WINDOW);
                let seen: Option<(String, String)> = conn
                    .prepare_cached(
                        "SELECT job_id, request_hash FROM idempotency_keys
                         WHERE scope = ?1 AND key = ?2 AND julianday(created_at) > julianday(?3)",
                    )
                    .and_then(|mut st| {
                        st.query_row(params![scope, key, cutoff], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                    })
                    .ctx("reading an idempotency key")?;
                if let Some((job_id, seen_hash)) = seen {
                    if &seen_hash != hash {
                        return Err(StoreError::IdempotencyMismatch);
                    }
                    return load(conn, &job_id)?
                        .ok_or_else(|| StoreError::NotFound(format!("job `{job_id}`")));
                }
            }
            let token_id: i64 = conn
                .prepare_cached("SELECT id FROM tokens WHERE name = ?1 AND status = 'active'")
                .and_then(|mut st| st.query_row([&token], |r| r.get(0)).optional())
                .ctx("finding a token")?
                .ok_or_else(|| StoreError::NotFound(format!("token `{token}`")))?;
            let previous: Option<i64> = conn
                .prepare_cached("SELECT version FROM secret_versions WHERE token_id = ?1 AND label = 'current'")
                .and_then(|mut st| st.query_row([token_id], |r| r.get(0)).optional())
                .ctx("finding the current version")?;
            let id = new_job_id();
            let now = ts(now_micros());
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO rotation_jobs (id, token_id, flow_type, stage, status, previous_version, requested_by, reason, created_at, updated_at, requested_role)
                     VALUES (?1, ?2, ?3, 'mint', 'pending', ?4, ?5, ?6, ?7, ?7, ?8)",
                )
                .and_then(|mut st| {
                    st.execute(params![id, token_id, flow.as_str(), previous, requested_by, reason, now, role])
                });
            if let Err(rusqlite::Error::SqliteFailure(e, _)) = &inserted
                && e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            {
                // I3, enforced by the partial unique index: report the job that holds the slot.
                let active: String = conn
                    .prepare_cached(
                        "SELECT id FROM rotation_jobs WHERE token_id = ?1 AND status NOT IN ('succeeded', 'aborted', 'rolled_back')",
                    )
                    .and_then(|mut st| st.query_row([token_id], |r| r.get(0)))
                    .ctx("finding the active job")?;
                return Err(StoreError::JobActive(active));
            }
            inserted.ctx("creating a job")?;
            conn.prepare_cached(
                "INSERT INTO rotation_job_consumers (job_id, consumer_id, status, attempts, updated_at)
                 SELECT ?1, id, 'pending', 0, ?2 FROM consumers WHERE token_id = ?3 AND status = 'active'",
            )
            .and_then(|mut st| st.execute(params![id, now, token_id]))
            .ctx("creating a job's consumers")?;
            if let Some((scope, key, hash)) = &idem {
                conn.prepare_cached(
                    "INSERT INTO idempotency_keys (scope, key, request_hash, job_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (scope, key) DO UPDATE SET request_hash = excluded.request_hash,
                         job_id = excluded.job_id, created_at = excluded.created_at",
                )
                .and_then(|mut st| st.execute(params![scope, key, hash, id, now]))
                .ctx("recording an idempotency key")?;
            }
            audit_many(
                conn,
                keyring.as_deref(),
                &[&AuditDraft::rotation_requested(
                    &requested_by,
                    &token,
                    &id,
                    flow.as_str(),
                    reason.as_deref(),
                )],
            )?;
            let job = load(conn, &id)?.expect("just inserted");
            event(conn, &id, "job", &job_json(&job))?;
            Ok(job)
        })
        .await
    }

    async fn get_job(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let mut conn = self.reader.acquire().await.ctx("reading a job")?;
        let row: Option<JobRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS} FROM rotation_jobs j JOIN tokens t ON t.id = j.token_id WHERE j.id = $1"
        )))
        .bind(job_id)
        .fetch_optional(&mut *conn)
        .await
        .ctx("reading a job")?;
        let Some(row) = row else { return Ok(None) };
        let consumers: Vec<JobConsumerRow> = sqlx::query_as(JOB_CONSUMERS_SQL)
            .bind(job_id)
            .fetch_all(&mut *conn)
            .await
            .ctx("reading a job's consumers")?;
        row.into_job(consumers).map(Some)
    }

    async fn list_jobs(&self, q: &JobQuery<'_>) -> Result<Vec<Job>, StoreError> {
        // The single writer inserts jobs in creation order, so the rowid is that order exactly
        // (stored times only compare to the millisecond in SQL); the cursor's id marks the spot.
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT j.id FROM rotation_jobs j JOIN tokens t ON t.id = j.token_id
             WHERE ($1 IS NULL OR t.name = $1) AND ($2 IS NULL OR j.status = $2)
               AND ($3 IS NULL OR j.rowid < (SELECT rowid FROM rotation_jobs WHERE id = $3))
             ORDER BY j.rowid DESC LIMIT $4",
        )
        .bind(q.token)
        .bind(q.status)
        .bind(q.after.map(|(_, id)| id))
        .bind(q.limit)
        .fetch_all(&self.reader)
        .await
        .ctx("listing jobs")?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            jobs.extend(self.get_job(&id).await?);
        }
        Ok(jobs)
    }

    async fn claim_job(
        &self,
        owner: &str,
        lease: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<Job>, StoreError> {
        let owner = owner.to_string();
        self.db
            .writer
            .call("claiming a job", move |c| {
                let conn = c.raw();
                // The status list comes first so the index narrows the scan to unfinished jobs
                // (finished ones pile up forever); julianday() compares instants whatever digits
                // the text has.
                let id: Option<String> = conn
                    .prepare_cached(
                        "SELECT id FROM rotation_jobs
                     WHERE status IN ('pending', 'running', 'waiting')
                       AND (status <> 'waiting' OR julianday(wake_at) <= julianday(?1))
                       AND (lease_expires_at IS NULL OR julianday(lease_expires_at) < julianday(?1))
                     ORDER BY created_at LIMIT 1",
                    )
                    .and_then(|mut st| st.query_row([ts(now)], |r| r.get(0)).optional())
                    .ctx("finding a job to claim")?;
                let Some(id) = id else { return Ok(None) };
                conn.prepare_cached(
                "UPDATE rotation_jobs SET lease_owner = ?2, lease_expires_at = ?3 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![id, owner, ts(lease_until(lease))]))
            .ctx("claiming a job")?;
                load(conn, &id)
            })
            .await
    }

    async fn renew_lease(
        &self,
        job_id: &str,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let (job_id, owner) = (job_id.to_string(), owner.to_string());
        self.db.writer
            .call("renewing a lease", move |c| {
            let conn = c.raw();
                let n = conn
                    .prepare_cached(
                        "UPDATE rotation_jobs SET lease_expires_at = ?3 WHERE id = ?1 AND lease_owner = ?2",
                    )
                    .and_then(|mut st| st.execute(params![job_id, owner, ts(lease_until(lease))]))
                    .ctx("renewing a lease")?;
                Ok(n == 1)
            })
            .await
    }

    async fn release_lease(&self, job_id: &str, owner: &str) -> Result<(), StoreError> {
        let (job_id, owner) = (job_id.to_string(), owner.to_string());
        self.db.writer
            .call("releasing a lease", move |c| {
            let conn = c.raw();
                conn.prepare_cached(
                    "UPDATE rotation_jobs SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ?1 AND lease_owner = ?2",
                )
                .and_then(|mut st| st.execute(params![job_id, owner]))
                .ctx("releasing a lease")?;
                Ok(())
            })
            .await
    }

    async fn transition_job(
        &self,
        job_id: &str,
        from: JobState,
        to: JobState,
        changes: &JobChanges,
        owner: Option<&str>,
        audit: &AuditDraft,
    ) -> Result<Job, StoreError> {
        let keyring = self.keyring.clone();
        let (job_id, changes, owner, audit) = (
            job_id.to_string(),
            changes.clone(),
            owner.map(str::to_string),
            audit.clone(),
        );
        self.db.writer.call("moving a job on", move |c| {
            let conn = c.raw();
            let now = ts(now_micros());
            let terminal = to.status.is_terminal();
            let n = conn
                .prepare_cached(
                    "UPDATE rotation_jobs SET stage = ?2, status = ?3, awaiting = ?4, revoke_started = ?5, reverting = ?6, updated_at = ?7,
                         error = CASE WHEN ?8 THEN ?9 ELSE error END,
                         wake_at = CASE WHEN ?10 THEN ?11 ELSE wake_at END,
                         finished_at = CASE WHEN ?12 THEN ?7 ELSE finished_at END,
                         lease_owner = CASE WHEN ?12 THEN NULL ELSE lease_owner END,
                         lease_expires_at = CASE WHEN ?12 THEN NULL ELSE lease_expires_at END
                     WHERE id = ?1 AND stage = ?13 AND status = ?14 AND awaiting IS ?15 AND reverting IS ?16
                       AND (?17 IS NULL OR lease_owner = ?17)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        job_id,
                        to.stage.as_str(),
                        to.status.as_str(),
                        to.awaiting.map(|a| a.as_str()),
                        to.revoke_started,
                        to.reverting.map(|r| r.as_str()),
                        now,
                        changes.error.is_some(),
                        changes.error.clone().flatten(),
                        changes.wake_at.is_some(),
                        changes.wake_at.flatten().map(ts),
                        terminal,
                        from.stage.as_str(),
                        from.status.as_str(),
                        from.awaiting.map(|a| a.as_str()),
                        from.reverting.map(|r| r.as_str()),
                        owner,
                    ])
                })
                .ctx("moving a job on")?;
            if n == 0 {
                let current = load(conn, &job_id)?
                    .ok_or_else(|| StoreError::NotFound(format!("job `{job_id}`")))?;
                return Err(StoreError::StaleJob {
                    stage: current.state.stage.as_str().into(),
                    status: current.state.status.as_str().into(),
                });
            }
            let token_of = "(SELECT token_id FROM rotation_jobs WHERE id = ?1)";
            let version_of = |col: &str| format!("(SELECT {col} FROM rotation_jobs WHERE id = ?1)");
            let mut statements: Vec<(String, &'static str)> = Vec::new();
            if changes.promote {
                for sql in [
                    format!("UPDATE secret_versions SET label = 'previous' WHERE token_id = {token_of} AND label = 'current'"),
                    format!(
                        "UPDATE secret_versions SET label = 'current', activated_at = ?2 WHERE token_id = {token_of} AND version = {} AND label = 'pending'",
                        version_of("new_version")
                    ),
                ] {
                    statements.push((sql, "promoting the new version"));
                }
            }
            if changes.revoke_previous {
                statements.push((
                    format!(
                        "UPDATE secret_versions SET label = 'revoked', revoked_at = ?2 WHERE token_id = {token_of} AND version = {} AND label = 'previous'",
                        version_of("previous_version")
                    ),
                    "marking the previous version revoked",
                ));
                // A rotation has happened only once it succeeded: a rollback after promotion
                // must not move it (design §11).
                statements.push((
                    format!("UPDATE tokens SET last_rotated_at = ?2, updated_at = ?2 WHERE id = {token_of}"),
                    "recording the rotation",
                ));
            }
            if changes.discard_new {
                for sql in [
                    format!(
                        "UPDATE secret_versions SET label = 'discarded' WHERE token_id = {token_of} AND version = {}",
                        version_of("new_version")
                    ),
                    format!(
                        "UPDATE secret_versions SET label = 'current' WHERE token_id = {token_of} AND version = {} AND label = 'previous'",
                        version_of("previous_version")
                    ),
                ] {
                    statements.push((sql, "discarding the new version"));
                }
            }
            if changes.clear_new_version {
                statements.push((
                    "UPDATE rotation_jobs SET new_version = NULL WHERE id = ?1".into(),
                    "clearing the new version",
                ));
            }
            if changes.reset_failed_consumers {
                statements.push((
                    "UPDATE rotation_job_consumers SET status = 'pending', attempts = 0, last_error = NULL, next_attempt_at = NULL, updated_at = ?2 WHERE job_id = ?1 AND status = 'failed'".into(),
                    "resetting failed consumers",
                ));
            }
            let both: [&dyn rusqlite::ToSql; 2] = [&job_id, &now];
            for (sql, what) in statements {
                conn.prepare_cached(&sql)
                    .and_then(|mut st| {
                        let n = st.parameter_count();
                        st.execute(&both[..n])
                    })
                    .ctx(what)?;
            }
            audit_many(conn, keyring.as_deref(), &[&audit])?;
            let job = load(conn, &job_id)?.expect("updated above");
            event(conn, &job_id, "job", &job_json(&job))?;
            Ok(job)
        })
        .await
    }

    async fn next_version(&self, token: &str) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT COALESCE(MAX(v.version), 0) + 1 FROM secret_versions v JOIN tokens t ON t.id = v.token_id WHERE t.name = $1",
        )
        .bind(token)
        .fetch_one(&self.reader)
        .await
        .ctx("numbering a new version")
    }

    async fn store_new_version(
        &self,
        job_id: &str,
        version: i64,
        sealed: &Sealed,
        fingerprint: &str,
    ) -> Result<i64, StoreError> {
        let keyring = self.keyring.clone();
        let (job_id, sealed, fingerprint) =
            (job_id.to_string(), sealed.clone(), fingerprint.to_string());
        self.db.writer.call("storing the new version", move |c| {
            let conn = c.raw();
            let row: Option<(Option<i64>, i64, String)> = conn
                .prepare_cached(
                    "SELECT j.new_version, j.token_id, t.name FROM rotation_jobs j JOIN tokens t ON t.id = j.token_id WHERE j.id = ?1",
                )
                .and_then(|mut st| {
                    st.query_row([&job_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .ctx("reading a job")?;
            let (existing, token_id, token) =
                row.ok_or_else(|| StoreError::NotFound(format!("job `{job_id}`")))?;
            if let Some(v) = existing {
                return Ok(v); // already stored before a crash: the same value goes on
            }
            let now = ts(now_micros());
            conn.prepare_cached(
                "INSERT INTO secret_versions (token_id, version, label, key_id, ciphertext, fingerprint, job_id, created_at)
                 VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut st| {
                st.execute(params![token_id, version, sealed.key_id, sealed.ciphertext, fingerprint, job_id, now])
            })
            .ctx("storing the new version")?;
            conn.prepare_cached("UPDATE rotation_jobs SET new_version = ?2, updated_at = ?3 WHERE id = ?1")
                .and_then(|mut st| st.execute(params![job_id, version, now]))
                .ctx("recording the new version on the job")?;
            audit_many(
                conn,
                keyring.as_deref(),
                &[&AuditDraft::version_minted(&token, &job_id, version, &fingerprint)],
            )?;
            let job = load(conn, &job_id)?.expect("exists");
            event(conn, &job_id, "job", &job_json(&job))?;
            Ok(version)
        })
        .await
    }

    async fn update_job_consumers(
        &self,
        job_id: &str,
        changes: &[ConsumerChange],
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let keyring = self.keyring.clone();
        let (job_id, changes) = (job_id.to_string(), changes.to_vec());
        self.db.writer.call("updating a job's consumers", move |c| {
            let conn = c.raw();
            let now = now_micros();
            let n = conn
                .prepare_cached("UPDATE rotation_jobs SET updated_at = ?2 WHERE id = ?1")
                .and_then(|mut st| st.execute(params![job_id, ts(now)]))
                .ctx("touching a job")?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("job `{job_id}`")));
            }
            // One lookup of the next event number per batch: the single writer keeps anyone
            // else from numbering this job's events meanwhile.
            let mut seq: i64 = conn
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM rotation_events WHERE job_id = ?1")
                .and_then(|mut st| st.query_row([&job_id], |r| r.get(0)))
                .ctx("numbering job events")?;
            let mut update = conn
                .prepare_cached(
                    "UPDATE rotation_job_consumers SET status = ?3, attempts = ?4, last_error = ?5, fingerprint = ?6, next_attempt_at = ?7,
                         updated_at = ?8, started_at = COALESCE(started_at, CASE WHEN ?3 = 'in_progress' THEN ?8 END)
                     WHERE job_id = ?1 AND consumer_id = (SELECT c.id FROM consumers c
                         WHERE c.token_id = (SELECT token_id FROM rotation_jobs WHERE id = ?1) AND c.name = ?2)
                     RETURNING (SELECT kind FROM consumers WHERE id = consumer_id), started_at",
                )
                .ctx("updating a job consumer")?;
            let mut insert = conn
                .prepare_cached("INSERT INTO rotation_events (job_id, seq, at, event, data) VALUES (?1, ?2, ?3, 'consumer', ?4)")
                .ctx("appending a job event")?;
            for ch in &changes {
                let u = &ch.update;
                let found: Option<(String, Option<DateTime<Utc>>)> = update
                    .query_row(
                        params![
                            job_id,
                            ch.consumer,
                            u.status.as_str(),
                            u.attempts,
                            u.last_error,
                            u.fingerprint,
                            u.next_attempt_at.map(ts),
                            ts(now)
                        ],
                        |r| Ok((r.get(0)?, time_at(r, 1)?)),
                    )
                    .optional()
                    .ctx("updating a job consumer")?;
                let Some((kind, started_at)) = found else {
                    return Err(StoreError::NotFound(format!(
                        "consumer `{}` of job `{job_id}`",
                        ch.consumer
                    )));
                };
                seq += 1;
                let data = serde_json::json!({
                    "consumer": ch.consumer,
                    "kind": kind,
                    "status": u.status,
                    "attempts": u.attempts,
                    "last_error": u.last_error,
                    "fingerprint": u.fingerprint,
                    "updated_at": now,
                    "started_at": started_at,
                    "job_id": job_id,
                });
                insert
                    .execute(params![job_id, seq, ts(now), data.to_string()])
                    .ctx("appending a job event")?;
            }
            let audits: Vec<&AuditDraft> = changes.iter().filter_map(|c| c.audit.as_ref()).collect();
            audit_many(conn, keyring.as_deref(), &audits)
        })
        .await
    }

    async fn last_event_seq(&self, job_id: &str) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM rotation_events WHERE job_id = $1")
            .bind(job_id)
            .fetch_one(&self.reader)
            .await
            .ctx("reading a job's last event")
    }

    async fn job_events(
        &self,
        job_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<JobEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as("SELECT seq, at, event, data FROM rotation_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .bind(job_id)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.reader)
            .await
            .ctx("reading job events")?;
        Ok(rows
            .into_iter()
            .map(|r| JobEvent {
                seq: r.seq,
                at: r.at,
                event: r.event,
                data: serde_json::from_str(&r.data).unwrap_or(serde_json::Value::Null),
            })
            .collect())
    }
}
