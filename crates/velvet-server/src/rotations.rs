//! `/api/v1/rotations/{id}`: a job, and the operator actions that move it.

use crate::audit::Params;
use crate::auth::{Can, Stage, TokensRead};
use crate::body::Body;
use crate::{ApiError, AppState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use velvet_core::config::gate_for;
use velvet_core::identity::Permission;
use velvet_core::job::{Job, is_job_id};
use velvet_core::rotation::{Action, Awaiting, JobStatus};
use velvet_engine::ActionError;
use velvet_store::JobQuery;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/rotations", get(list))
        .route("/api/v1/rotations/{job_id}", get(show))
        .route("/api/v1/rotations/{job_id}/stage", post(stage))
        .route(
            "/api/v1/rotations/{job_id}/events",
            get(crate::events::stream),
        )
}

async fn load(state: &AppState, job_id: &str) -> Result<Job, ApiError> {
    let missing = || ApiError::not_found(format!("rotation job `{job_id}` not found"));
    if !is_job_id(job_id) {
        return Err(missing());
    }
    state.store.get_job(job_id).await?.ok_or_else(missing)
}

/// A page cursor: the last job's creation time (µs) and id; opaque to clients.
fn cursor_of(job: &Job) -> String {
    format!("{}.{}", job.created_at.timestamp_micros(), job.job_id)
}

fn parse_cursor(c: &str) -> Option<(chrono::DateTime<chrono::Utc>, &str)> {
    let (micros, id) = c.split_once('.')?;
    let at = chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    is_job_id(id).then_some((at, id))
}

async fn list(
    _: Can<TokensRead>,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let p = Params::new(q, &["token", "status", "limit", "cursor"])?;
    let limit = p.int("limit", 50, 1, 500)?;
    let status = p.str("status");
    if let Some(s) = status
        && JobStatus::parse(s).is_none()
    {
        let names: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
        return Err(ApiError::validation(format!(
            "status: `{s}` is not one of {}",
            names.join(", ")
        )));
    }
    let after = match p.str("cursor") {
        None => None,
        Some(c) => Some(parse_cursor(c).ok_or_else(|| {
            ApiError::validation("cursor: not a cursor this API gave out (use next_cursor)")
        })?),
    };
    // One more than asked tells whether another page follows.
    let mut jobs = state
        .store
        .list_jobs(&JobQuery {
            token: p.str("token"),
            status,
            limit: limit + 1,
            after,
        })
        .await?;
    let more = jobs.len() as i64 > limit;
    jobs.truncate(limit as usize);
    let next = more.then(|| jobs.last().map(cursor_of)).flatten();
    Ok(Json(json!({"rotations": jobs, "next_cursor": next})))
}

async fn show(
    _: Can<TokensRead>,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(load(&state, &job_id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageBody {
    action: String,
    /// Part of the contract; checked once operators and their TOTP exist (issue #5).
    #[allow(dead_code)]
    totp: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    force: bool,
}

async fn stage(
    Can(caller, ..): Can<Stage>,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    Body(body): Body<StageBody>,
) -> Result<Json<Job>, ApiError> {
    crate::flags::require_rotation(&state).await?;
    let action = Action::parse(&body.action).ok_or_else(|| {
        let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        ApiError::validation(format!(
            "action: `{}` is not one of {}",
            body.action,
            names.join(", ")
        ))
    })?;
    // `proceed_revoke` retires the old credential: it needs more than moving stages.
    if action == Action::ProceedRevoke {
        let resource = format!("POST /api/v1/rotations/{job_id}/stage proceed_revoke");
        crate::auth::authorize(
            &state,
            &caller,
            Permission::RotationsRevoke,
            &resource,
            true,
        )
        .await?;
    }
    if body.force {
        let mut ev = velvet_core::decision::SecurityEvent::new(
            "gate_denied",
            velvet_core::decision::Severity::Warning,
            "a forced revoke was refused: no operator can pass a gate yet",
        );
        ev.subject = Some(caller.actor.clone());
        ev.client = Some(caller.client.clone());
        ev.job_id = Some(job_id.clone());
        crate::auth::security_event(&state, ev).await;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "gate_denied",
            "force needs a revocation gate with allow_force and an operator (not available yet)",
        ));
    }
    let job = load(&state, &job_id).await?;
    let engine = state
        .engine
        .as_ref()
        .ok_or_else(|| ApiError::not_enabled("this server runs no rotation engine"))?;
    // Revocation gates with TOTP or approvals need operators, which come later: until then such
    // a gate cannot be passed through the bootstrap key.
    let config = state.config();
    let gate_passed = match config
        .token(&job.token)
        .and_then(|t| gate_for(&config.revocation_gates, t))
    {
        Some(g) if g.require.totp || g.require.approvals > 0 => {
            // Only a revoke the job is actually awaiting meets the gate; anything else is the
            // state machine's to refuse (409).
            if action == Action::ProceedRevoke
                && job.state.awaiting == Some(Awaiting::ProceedRevoke)
            {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "gate_required",
                    format!(
                        "the revocation gate `{}` requires TOTP step-up or approvals",
                        g.name
                    ),
                ));
            }
            false
        }
        _ => true,
    };
    match engine
        .act(
            &job_id,
            action,
            gate_passed,
            &caller.actor,
            body.reason.as_deref(),
        )
        .await
    {
        Ok(job) => Ok(Json(job)),
        Err(ActionError::NotFound(_)) => Err(ApiError::not_found(format!(
            "rotation job `{job_id}` not found"
        ))),
        Err(ActionError::Invalid(e)) => {
            Err(
                ApiError::new(StatusCode::CONFLICT, "invalid_transition", e.to_string())
                    .with("stage", e.state.stage)
                    .with("status", e.state.status)
                    .with("awaiting", e.state.awaiting),
            )
        }
        Err(ActionError::Store(e)) => Err(e.into()),
    }
}
