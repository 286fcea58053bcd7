//! The two writes that change a job's state inside its transaction, for both dialects: a
//! checked transition with what it implies for the versions, and a batch of consumer changes
//! with their events.

use crate::db::{Conn, DbError, FromRow, Row};
use crate::{ConsumerChange, StoreError};
use chrono::{DateTime, Utc};
use velvet_core::audit::now_micros;
use velvet_core::job::JobChanges;
use velvet_core::job_view::{ConsumerEvent, ConsumerView};
use velvet_core::rotation::Word as _;
use velvet_core::rotation::{JobState, JobStatus};

/// Moves the job from `from` to `to` (refused as `StaleJob` if it moved meanwhile, or if
/// `owner` no longer holds its lease) and applies `changes`.
pub(crate) async fn apply<C: Conn>(
    c: &mut C,
    job_id: &str,
    from: JobState,
    to: JobState,
    changes: &JobChanges,
    owner: Option<&str>,
) -> Result<(), StoreError> {
    let now = now_micros();
    let terminal = to.status.is_terminal();
    let error = changes.error.clone().flatten();
    let n = c
        .run(
            "moving a job on",
            "UPDATE rotation_jobs SET stage = $2, status = $3, awaiting = $4, revoke_started = $5, reverting = $6, updated_at = $7,
                 error = CASE WHEN $8 THEN $9 ELSE error END,
                 wake_at = CASE WHEN $10 THEN $11 ELSE wake_at END,
                 finished_at = CASE WHEN $12 THEN $7 ELSE finished_at END,
                 lease_owner = CASE WHEN $12 THEN NULL ELSE lease_owner END,
                 lease_expires_at = CASE WHEN $12 THEN NULL ELSE lease_expires_at END
             WHERE id = $1 AND stage = $13 AND status = $14 AND awaiting IS NOT DISTINCT FROM $15
               AND reverting IS NOT DISTINCT FROM $16
               AND ($17 IS NULL OR lease_owner = $17)",
            &[
                job_id.into(),
                to.stage.as_str().into(),
                to.status.as_str().into(),
                to.awaiting.map(|a| a.as_str()).into(),
                to.revoke_started.into(),
                to.reverting.map(|r| r.as_str()).into(),
                now.into(),
                changes.error.is_some().into(),
                error.as_deref().into(),
                changes.wake_at.is_some().into(),
                changes.wake_at.flatten().into(),
                terminal.into(),
                from.stage.as_str().into(),
                from.status.as_str().into(),
                from.awaiting.map(|a| a.as_str()).into(),
                from.reverting.map(|r| r.as_str()).into(),
                owner.into(),
            ],
        )
        .await?;
    if n == 0 {
        let current: Option<(String, String)> = c
            .opt(
                "reading a job",
                "SELECT stage, status FROM rotation_jobs WHERE id = $1",
                &[job_id.into()],
            )
            .await?;
        let (stage, status) =
            current.ok_or_else(|| StoreError::NotFound(format!("job `{job_id}`")))?;
        return Err(StoreError::StaleJob { stage, status });
    }
    let token_of = "(SELECT token_id FROM rotation_jobs WHERE id = $1)";
    let version_of = |col: &str| format!("(SELECT {col} FROM rotation_jobs WHERE id = $1)");
    // Each statement with its arguments: `$1` the job, `$2` now.
    let mut statements: Vec<(String, &'static str, bool)> = Vec::new();
    if changes.promote {
        statements.push((
            format!("UPDATE secret_versions SET label = 'previous' WHERE token_id = {token_of} AND label = 'current'"),
            "promoting the new version",
            false,
        ));
        statements.push((
            format!(
                "UPDATE secret_versions SET label = 'current', activated_at = $2 WHERE token_id = {token_of} AND version = {} AND label = 'pending'",
                version_of("new_version")
            ),
            "promoting the new version",
            true,
        ));
    }
    if changes.revoke_previous {
        statements.push((
            format!(
                "UPDATE secret_versions SET label = 'revoked', revoked_at = $2 WHERE token_id = {token_of} AND version = {} AND label = 'previous'",
                version_of("previous_version")
            ),
            "marking the previous version revoked",
            true,
        ));
        // A rotation has happened only once it succeeded: a rollback after promotion must not
        // move it (design §11).
        statements.push((
            format!(
                "UPDATE tokens SET last_rotated_at = $2, updated_at = $2 WHERE id = {token_of}"
            ),
            "recording the rotation",
            true,
        ));
    }
    if changes.discard_new {
        statements.push((
            format!(
                "UPDATE secret_versions SET label = 'discarded' WHERE token_id = {token_of} AND version = {}",
                version_of("new_version")
            ),
            "discarding the new version",
            false,
        ));
        statements.push((
            format!(
                "UPDATE secret_versions SET label = 'current' WHERE token_id = {token_of} AND version = {} AND label = 'previous'",
                version_of("previous_version")
            ),
            "discarding the new version",
            false,
        ));
    }
    if changes.clear_new_version {
        statements.push((
            "UPDATE rotation_jobs SET new_version = NULL WHERE id = $1".into(),
            "clearing the new version",
            false,
        ));
    }
    if changes.reset_failed_consumers {
        statements.push((
            "UPDATE rotation_job_consumers SET status = 'pending', attempts = 0, last_error = NULL, next_attempt_at = NULL, updated_at = $2 WHERE job_id = $1 AND status = 'failed'".into(),
            "resetting failed consumers",
            true,
        ));
    }
    for (sql, what, with_now) in statements {
        let both = [job_id.into(), now.into()];
        let args = if with_now { &both[..] } else { &both[..1] };
        c.run(what, &sql, args).await?;
    }
    notify(c, job_id, from, to, error.as_deref()).await
}

/// The notification a transition causes (design §11), in its own transaction: a failure, a
/// pause for a person, a success.
async fn notify<C: Conn>(
    c: &mut C,
    job_id: &str,
    from: JobState,
    to: JobState,
    error: Option<&str>,
) -> Result<(), StoreError> {
    if from.status == to.status && from.awaiting == to.awaiting {
        return Ok(());
    }
    let event = match (to.status, to.awaiting) {
        (JobStatus::Failed, _) => "failed",
        (JobStatus::Succeeded, _) => "succeeded",
        (JobStatus::AwaitingConfirmation, Some(_)) => "awaiting_confirmation",
        _ => return Ok(()),
    };
    // The job's error as it now stands (this change may keep an earlier one).
    let (token, stored): (String, String) = c
        .one(
            "reading a job's token",
            "SELECT t.name, COALESCE(j.error, '') FROM rotation_jobs j JOIN tokens t ON t.id = j.token_id WHERE j.id = $1",
            &[job_id.into()],
        )
        .await?;
    let error = error
        .map(str::to_string)
        .or((!stored.is_empty()).then_some(stored));
    let data = serde_json::json!({
        "stage": to.stage.as_str(),
        "status": to.status.as_str(),
        "awaiting": to.awaiting.map(|a| a.as_str()),
        "error": error,
    });
    crate::notifications::record(c, event, &token, Some(job_id), &data).await
}

/// Records a batch of consumer changes and one `consumer` event each, numbered after the job's
/// last: the job row is updated first, so on PostgreSQL its lock keeps anyone else from
/// numbering this job's events meanwhile (SQLite's single writer already does).
pub(crate) async fn consumers<C: Conn>(
    c: &mut C,
    job_id: &str,
    changes: &[ConsumerChange],
) -> Result<(), StoreError> {
    let now = now_micros();
    let n = c
        .run(
            "touching a job",
            "UPDATE rotation_jobs SET updated_at = $2 WHERE id = $1",
            &[job_id.into(), now.into()],
        )
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("job `{job_id}`")));
    }
    let mut seq: i64 = c
        .one(
            "numbering job events",
            "SELECT COALESCE(MAX(seq), 0) FROM rotation_events WHERE job_id = $1",
            &[job_id.into()],
        )
        .await?;
    for ch in changes {
        let u = &ch.update;
        let found: Option<(String, Option<DateTime<Utc>>)> = c
            .opt(
                "updating a job consumer",
                "UPDATE rotation_job_consumers SET status = $3, attempts = $4, last_error = $5, fingerprint = $6, next_attempt_at = $7,
                     updated_at = $8, started_at = COALESCE(started_at, CASE WHEN $3 = 'in_progress' THEN $8 END)
                 WHERE job_id = $1 AND consumer_id = (SELECT c.id FROM consumers c
                     WHERE c.token_id = (SELECT token_id FROM rotation_jobs WHERE id = $1) AND c.name = $2)
                 RETURNING (SELECT kind FROM consumers WHERE id = consumer_id), started_at",
                &[
                    job_id.into(),
                    ch.consumer.as_str().into(),
                    u.status.as_str().into(),
                    u.attempts.into(),
                    (&u.last_error).into(),
                    (&u.fingerprint).into(),
                    u.next_attempt_at.into(),
                    now.into(),
                ],
            )
            .await?;
        let Some((kind, started_at)) = found else {
            return Err(StoreError::NotFound(format!(
                "consumer `{}` of job `{job_id}`",
                ch.consumer
            )));
        };
        seq += 1;
        let data = serde_json::to_string(&ConsumerEvent {
            job_id: job_id.to_string(),
            consumer: ConsumerView {
                consumer: ch.consumer.clone(),
                kind,
                status: u.status,
                attempts: u.attempts,
                last_error: u.last_error.clone(),
                fingerprint: u.fingerprint.clone(),
                updated_at: now,
                started_at,
            },
        })
        .expect("consumer events serialise");
        c.run(
            "appending a job event",
            "INSERT INTO rotation_events (job_id, seq, at, event, data) VALUES ($1, $2, $3, 'consumer', $4)",
            &[job_id.into(), seq.into(), now.into(), data.as_str().into()],
        )
        .await?;
    }
    Ok(())
}

impl FromRow for (String, Option<DateTime<Utc>>) {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok((r.text()?, r.opt_time()?))
    }
}

impl FromRow for (Option<i64>, i64, String) {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok((r.opt_int()?, r.int()?, r.text()?))
    }
}
