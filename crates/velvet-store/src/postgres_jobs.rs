//! Rotation jobs on PostgreSQL, shared by several replicas: claims skip rows another replica
//! holds (`FOR UPDATE SKIP LOCKED`), and every change updates the job row first, so its row lock
//! orders the job's events.

use crate::postgres::{PostgresStore, Tx};
use crate::rows::{EventRow, JOB_COLUMNS, JOB_CONSUMERS_SQL, JobConsumerRow, JobRow};
use crate::{ConsumerChange, Context, JobEvent, JobQuery, JobStore, NewJob, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use velvet_core::audit::{AuditDraft, now_micros};
use velvet_core::job::{Job, JobChanges, new_job_id};
use velvet_core::keyring::Sealed;
use velvet_core::rotation::JobState;

const UNFINISHED: &str = "status NOT IN ('succeeded', 'aborted', 'rolled_back')";

fn lease_until(lease: std::time::Duration) -> DateTime<Utc> {
    now_micros() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30))
}

async fn load(tx: &mut sqlx::PgConnection, job_id: &str) -> Result<Option<Job>, StoreError> {
    let row: Option<JobRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM rotation_jobs j JOIN tokens t ON t.id = j.token_id WHERE j.id = $1"
    )))
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await
    .ctx("reading a job")?;
    let Some(row) = row else { return Ok(None) };
    let consumers: Vec<JobConsumerRow> = sqlx::query_as(JOB_CONSUMERS_SQL)
        .bind(job_id)
        .fetch_all(&mut *tx)
        .await
        .ctx("reading a job's consumers")?;
    row.into_job(consumers).map(Some)
}

async fn event(
    tx: &mut Tx,
    job_id: &str,
    kind: &str,
    data: &serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO rotation_events (job_id, seq, at, event, data)
         VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM rotation_events WHERE job_id = $1), $2, $3, $4)",
    )
    .bind(job_id)
    .bind(now_micros())
    .bind(kind)
    .bind(data.to_string())
    .execute(&mut **tx)
    .await
    .ctx("appending a job event")?;
    Ok(())
}

fn job_json(job: &Job) -> serde_json::Value {
    serde_json::to_value(job).expect("jobs serialise")
}

impl PostgresStore {
    /// The job an unexpired `Idempotency-Key` already made, if the request matches;
    /// `IdempotencyMismatch` if it does not.
    async fn replayed(
        &self,
        tx: &mut sqlx::PgConnection,
        new: &NewJob<'_>,
    ) -> Result<Option<Job>, StoreError> {
        let Some(k) = &new.idempotency else {
            return Ok(None);
        };
        let seen: Option<(String, String)> = sqlx::query_as(
            "SELECT job_id, request_hash FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at > $3",
        )
        .bind(k.scope)
        .bind(k.key)
        .bind(now_micros() - crate::IDEMPOTENCY_WINDOW)
        .fetch_optional(&mut *tx)
        .await
        .ctx("reading an idempotency key")?;
        match seen {
            None => Ok(None),
            Some((_, hash)) if hash != k.request_hash => Err(StoreError::IdempotencyMismatch),
            Some((job_id, _)) => load(tx, &job_id).await,
        }
    }
}

#[async_trait]
impl JobStore for PostgresStore {
    async fn create_job(&self, new: &NewJob<'_>) -> Result<Job, StoreError> {
        let mut tx = self.begin().await?;
        if let Some(job) = self.replayed(&mut tx, new).await? {
            return Ok(job);
        }
        let token_id: i64 =
            sqlx::query_scalar("SELECT id FROM tokens WHERE name = $1 AND status = 'active'")
                .bind(new.token)
                .fetch_optional(&mut *tx)
                .await
                .ctx("finding a token")?
                .ok_or_else(|| StoreError::NotFound(format!("token `{}`", new.token)))?;
        let previous: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM secret_versions WHERE token_id = $1 AND label = 'current'",
        )
        .bind(token_id)
        .fetch_optional(&mut *tx)
        .await
        .ctx("finding the current version")?;
        let id = new_job_id();
        let now = now_micros();
        let inserted = sqlx::query(
            "INSERT INTO rotation_jobs (id, token_id, flow_type, stage, status, previous_version, requested_by, reason, created_at, updated_at, requested_role)
             VALUES ($1, $2, $3, 'mint', 'pending', $4, $5, $6, $7, $7, $8)",
        )
        .bind(&id)
        .bind(token_id)
        .bind(new.flow.as_str())
        .bind(previous)
        .bind(new.requested_by)
        .bind(new.reason)
        .bind(now)
        .bind(new.requested_role.map(|r| r.as_str()))
        .execute(&mut *tx)
        .await;
        if let Err(sqlx::Error::Database(e)) = &inserted
            && e.is_unique_violation()
        {
            // I3, enforced by the partial unique index: report the job that holds the slot,
            // unless a concurrent request with our Idempotency-Key made it (it committed before
            // the index let us fail), in which case it is our job too.
            drop(tx);
            let mut conn = self
                .pool
                .acquire()
                .await
                .ctx("reading an idempotency key")?;
            if let Some(job) = self.replayed(&mut conn, new).await? {
                return Ok(job);
            }
            drop(conn);
            let active: String = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT id FROM rotation_jobs WHERE token_id = $1 AND {UNFINISHED}"
            )))
            .bind(token_id)
            .fetch_one(&self.pool)
            .await
            .ctx("finding the active job")?;
            return Err(StoreError::JobActive(active));
        }
        inserted.ctx("creating a job")?;
        sqlx::query(
            "INSERT INTO rotation_job_consumers (job_id, consumer_id, status, attempts, updated_at)
             SELECT $1, id, 'pending', 0, $2 FROM consumers WHERE token_id = $3 AND status = 'active'",
        )
        .bind(&id)
        .bind(now)
        .bind(token_id)
        .execute(&mut *tx)
        .await
        .ctx("creating a job's consumers")?;
        if let Some(k) = &new.idempotency {
            sqlx::query(
                "INSERT INTO idempotency_keys (scope, key, request_hash, job_id, created_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (scope, key) DO UPDATE SET request_hash = excluded.request_hash,
                     job_id = excluded.job_id, created_at = excluded.created_at",
            )
            .bind(k.scope)
            .bind(k.key)
            .bind(k.request_hash)
            .bind(&id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("recording an idempotency key")?;
        }
        self.audit_in(
            &mut tx,
            &AuditDraft::rotation_requested(
                new.requested_by,
                new.token,
                &id,
                new.flow.as_str(),
                new.reason,
            ),
        )
        .await?;
        let job = load(&mut tx, &id).await?.expect("just inserted");
        event(&mut tx, &id, "job", &job_json(&job)).await?;
        tx.commit().await.ctx("committing a new job")?;
        Ok(job)
    }

    async fn get_job(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let mut conn = self.pool.acquire().await.ctx("reading a job")?;
        load(&mut conn, job_id).await
    }

    async fn list_jobs(&self, q: &JobQuery<'_>) -> Result<Vec<Job>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT j.id FROM rotation_jobs j JOIN tokens t ON t.id = j.token_id
             WHERE ($1::text IS NULL OR t.name = $1) AND ($2::text IS NULL OR j.status = $2)
               AND ($3::timestamptz IS NULL OR (j.created_at, j.id) < ($3, $4))
             ORDER BY j.created_at DESC, j.id DESC LIMIT $5",
        )
        .bind(q.token)
        .bind(q.status)
        .bind(q.after.map(|(at, _)| at))
        .bind(q.after.map(|(_, id)| id))
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await
        .ctx("listing jobs")?;
        let mut conn = self.pool.acquire().await.ctx("reading jobs")?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            jobs.extend(load(&mut conn, &id).await?);
        }
        Ok(jobs)
    }

    async fn claim_job(
        &self,
        owner: &str,
        lease: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<Job>, StoreError> {
        let mut tx = self.begin().await?;
        let id: Option<String> = sqlx::query_scalar(
            "UPDATE rotation_jobs SET lease_owner = $2, lease_expires_at = $3
             WHERE id = (SELECT id FROM rotation_jobs
                         WHERE status IN ('pending', 'running', 'waiting')
                           AND (status <> 'waiting' OR wake_at <= $1)
                           AND (lease_expires_at IS NULL OR lease_expires_at < $1)
                         ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING id",
        )
        .bind(now)
        .bind(owner)
        .bind(lease_until(lease))
        .fetch_optional(&mut *tx)
        .await
        .ctx("claiming a job")?;
        let Some(id) = id else { return Ok(None) };
        let job = load(&mut tx, &id).await?;
        tx.commit().await.ctx("committing a claim")?;
        Ok(job)
    }

    async fn renew_lease(
        &self,
        job_id: &str,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE rotation_jobs SET lease_expires_at = $3 WHERE id = $1 AND lease_owner = $2",
        )
        .bind(job_id)
        .bind(owner)
        .bind(lease_until(lease))
        .execute(&mut *tx)
        .await
        .ctx("renewing a lease")?
        .rows_affected();
        tx.commit().await.ctx("committing a lease")?;
        Ok(n == 1)
    }

    async fn release_lease(&self, job_id: &str, owner: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE rotation_jobs SET lease_owner = NULL, lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2")
            .bind(job_id)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .ctx("releasing a lease")?;
        tx.commit().await.ctx("committing a lease")?;
        Ok(())
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
        let mut tx = self.begin().await?;
        let now = now_micros();
        let terminal = to.status.is_terminal();
        let n = sqlx::query(
            "UPDATE rotation_jobs SET stage = $2, status = $3, awaiting = $4, revoke_started = $5, reverting = $6, updated_at = $7,
                 error = CASE WHEN $8 THEN $9 ELSE error END,
                 wake_at = CASE WHEN $10 THEN $11 ELSE wake_at END,
                 finished_at = CASE WHEN $12 THEN $7 ELSE finished_at END,
                 lease_owner = CASE WHEN $12 THEN NULL ELSE lease_owner END,
                 lease_expires_at = CASE WHEN $12 THEN NULL ELSE lease_expires_at END
             WHERE id = $1 AND stage = $13 AND status = $14 AND awaiting IS NOT DISTINCT FROM $15
               AND reverting IS NOT DISTINCT FROM $16
               AND ($17 IS NULL OR lease_owner = $17)",
        )
        .bind(job_id)
        .bind(to.stage.as_str())
        .bind(to.status.as_str())
        .bind(to.awaiting.map(|a| a.as_str()))
        .bind(to.revoke_started)
        .bind(to.reverting.map(|r| r.as_str()))
        .bind(now)
        .bind(changes.error.is_some())
        .bind(changes.error.clone().flatten())
        .bind(changes.wake_at.is_some())
        .bind(changes.wake_at.flatten())
        .bind(terminal)
        .bind(from.stage.as_str())
        .bind(from.status.as_str())
        .bind(from.awaiting.map(|a| a.as_str()))
        .bind(from.reverting.map(|r| r.as_str()))
        .bind(owner)
        .execute(&mut *tx)
        .await
        .ctx("moving a job on")?
        .rows_affected();
        if n == 0 {
            let current = load(&mut tx, job_id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("job `{job_id}`")))?;
            return Err(StoreError::StaleJob {
                stage: current.state.stage.as_str().into(),
                status: current.state.status.as_str().into(),
            });
        }
        let token_of = "(SELECT token_id FROM rotation_jobs WHERE id = $1)";
        let version_of = |col: &str| format!("(SELECT {col} FROM rotation_jobs WHERE id = $1)");
        if changes.promote {
            for sql in [
                format!(
                    "UPDATE secret_versions SET label = 'previous' WHERE token_id = {token_of} AND label = 'current'"
                ),
                format!(
                    "UPDATE secret_versions SET label = 'current', activated_at = $2 WHERE token_id = {token_of} AND version = {} AND label = 'pending'",
                    version_of("new_version")
                ),
            ] {
                sqlx::query(AssertSqlSafe(sql))
                    .bind(job_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .ctx("promoting the new version")?;
            }
        }
        if changes.revoke_previous {
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE secret_versions SET label = 'revoked', revoked_at = $2 WHERE token_id = {token_of} AND version = {} AND label = 'previous'",
                version_of("previous_version")
            )))
            .bind(job_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("marking the previous version revoked")?;
            // A rotation has happened only once it succeeded: a rollback after promotion must
            // not move it (design §11).
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE tokens SET last_rotated_at = $2, updated_at = $2 WHERE id = {token_of}"
            )))
            .bind(job_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("recording the rotation")?;
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
                sqlx::query(AssertSqlSafe(sql))
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await
                    .ctx("discarding the new version")?;
            }
        }
        if changes.clear_new_version {
            sqlx::query("UPDATE rotation_jobs SET new_version = NULL WHERE id = $1")
                .bind(job_id)
                .execute(&mut *tx)
                .await
                .ctx("clearing the new version")?;
        }
        if changes.reset_failed_consumers {
            sqlx::query("UPDATE rotation_job_consumers SET status = 'pending', attempts = 0, last_error = NULL, next_attempt_at = NULL, updated_at = $2 WHERE job_id = $1 AND status = 'failed'")
                .bind(job_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .ctx("resetting failed consumers")?;
        }
        self.audit_in(&mut tx, audit).await?;
        let job = load(&mut tx, job_id).await?.expect("updated above");
        event(&mut tx, job_id, "job", &job_json(&job)).await?;
        tx.commit().await.ctx("committing a job change")?;
        Ok(job)
    }

    async fn next_version(&self, token: &str) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT COALESCE(MAX(v.version), 0) + 1 FROM secret_versions v JOIN tokens t ON t.id = v.token_id WHERE t.name = $1",
        )
        .bind(token)
        .fetch_one(&self.pool)
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
        let mut tx = self.begin().await?;
        let row: Option<(Option<i64>, i64, String)> = sqlx::query_as(
            "SELECT j.new_version, j.token_id, t.name FROM rotation_jobs j JOIN tokens t ON t.id = j.token_id WHERE j.id = $1",
        )
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await
        .ctx("reading a job")?;
        let (existing, token_id, token) =
            row.ok_or_else(|| StoreError::NotFound(format!("job `{job_id}`")))?;
        if let Some(v) = existing {
            return Ok(v); // already stored before a crash: the same value goes on
        }
        let now = now_micros();
        sqlx::query(
            "INSERT INTO secret_versions (token_id, version, label, key_id, ciphertext, fingerprint, job_id, created_at)
             VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7)",
        )
        .bind(token_id)
        .bind(version)
        .bind(&sealed.key_id)
        .bind(&sealed.ciphertext)
        .bind(fingerprint)
        .bind(job_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .ctx("storing the new version")?;
        sqlx::query("UPDATE rotation_jobs SET new_version = $2, updated_at = $3 WHERE id = $1")
            .bind(job_id)
            .bind(version)
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("recording the new version on the job")?;
        self.audit_in(
            &mut tx,
            &AuditDraft::version_minted(&token, job_id, version, fingerprint),
        )
        .await?;
        let job = load(&mut tx, job_id).await?.expect("exists");
        event(&mut tx, job_id, "job", &job_json(&job)).await?;
        tx.commit().await.ctx("committing the new version")?;
        Ok(version)
    }

    async fn update_job_consumers(
        &self,
        job_id: &str,
        changes: &[ConsumerChange],
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        let now = now_micros();
        // The job row first: on PostgreSQL its lock orders this job's events.
        let n = sqlx::query("UPDATE rotation_jobs SET updated_at = $2 WHERE id = $1")
            .bind(job_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx("touching a job")?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("job `{job_id}`")));
        }
        // One lookup of the next event number per batch; the job row (locked above on
        // PostgreSQL) keeps anyone else from numbering this job's events meanwhile.
        let mut seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0) FROM rotation_events WHERE job_id = $1",
        )
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await
        .ctx("numbering job events")?;
        for ch in changes {
            let u = &ch.update;
            let found: Option<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
                "UPDATE rotation_job_consumers SET status = $3, attempts = $4, last_error = $5, fingerprint = $6, next_attempt_at = $7,
                     updated_at = $8, started_at = COALESCE(started_at, CASE WHEN $3 = 'in_progress' THEN $8 END)
                 WHERE job_id = $1 AND consumer_id = (SELECT c.id FROM consumers c
                     WHERE c.token_id = (SELECT token_id FROM rotation_jobs WHERE id = $1) AND c.name = $2)
                 RETURNING (SELECT kind FROM consumers WHERE id = consumer_id), started_at",
            )
            .bind(job_id)
            .bind(&ch.consumer)
            .bind(u.status.as_str())
            .bind(u.attempts)
            .bind(&u.last_error)
            .bind(&u.fingerprint)
            .bind(u.next_attempt_at)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
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
            sqlx::query("INSERT INTO rotation_events (job_id, seq, at, event, data) VALUES ($1, $2, $3, 'consumer', $4)")
                .bind(job_id)
                .bind(seq)
                .bind(now)
                .bind(data.to_string())
                .execute(&mut *tx)
                .await
                .ctx("appending a job event")?;
        }
        let audits: Vec<&AuditDraft> = changes.iter().filter_map(|c| c.audit.as_ref()).collect();
        self.audit_many(&mut tx, &audits).await?;
        tx.commit().await.ctx("committing consumer updates")?;
        Ok(())
    }

    async fn last_event_seq(&self, job_id: &str) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM rotation_events WHERE job_id = $1")
            .bind(job_id)
            .fetch_one(&self.pool)
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
            .fetch_all(&self.pool)
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
