//! `/api/v1/rotations/{id}`: a job, and the operator actions that move it.

use crate::audit::Params;
use crate::auth::{Can, TokensRead};
use crate::body::Body;
use crate::error::{ErrorBody, RateLimited, Unauthorized, Unavailable};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use std::collections::HashMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use velvet_core::identity::Permission;
use velvet_core::job::{RotationJob, is_job_id};
use velvet_core::job_view::{RotationJobView, RotationPage};
use velvet_core::rotation::Word as _;
use velvet_core::rotation::{Action, JobStatus};
use velvet_engine::StageRequest;
use velvet_store::JobQuery;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(stage))
        .routes(routes!(crate::gate::approve))
        .routes(routes!(crate::events::stream))
}

pub(crate) async fn load(state: &AppState, job_id: &str) -> Result<RotationJob, ApiError> {
    let missing = || ApiError::not_found(format!("rotation job `{job_id}` not found"));
    if !is_job_id(job_id) {
        return Err(missing());
    }
    state.store.get_job(job_id).await?.ok_or_else(missing)
}

/// A page cursor: the last job's creation time (µs) and id; opaque to clients.
fn cursor_of(job: &RotationJob) -> String {
    format!("{}.{}", job.created_at.timestamp_micros(), job.job_id)
}

fn parse_cursor(c: &str) -> Option<(chrono::DateTime<chrono::Utc>, &str)> {
    let (micros, id) = c.split_once('.')?;
    let at = chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    is_job_id(id).then_some((at, id))
}

/// Rotation jobs, newest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/rotations", operation_id = "listRotations", tag = "rotations", security(("bearer" = [])),
    params(
        ("token" = Option<String>, Query, description = "Only this token's jobs"),
        ("status" = Option<JobStatus>, Query, description = "Only jobs with this status"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("requested_by" = Option<String>, Query, description = "Only jobs of this requester (`scheduler`, `operator:alice`, `token:ci`)"),
        ("since" = Option<String>, Query, format = DateTime, description = "Only jobs created at or after this RFC 3339 time"),
        ("until" = Option<String>, Query, format = DateTime, description = "Only jobs created before this RFC 3339 time"),
    ),
    responses(
        (status = 200, description = "A page of jobs", body = RotationPage),
        Unauthorized,
        Unavailable,
        (status = 403, description = "`forbidden`: the role lacks tokens.read", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a query parameter is wrong or unknown", body = ErrorBody),
        RateLimited,
    ))]
async fn list(
    _: Can<TokensRead>,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<RotationPage>, ApiError> {
    let p = Params::new(
        q,
        &[
            "token",
            "status",
            "limit",
            "cursor",
            "requested_by",
            "since",
            "until",
        ],
    )?;
    let when = |key: &str| -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        p.str(key)
            .map(|v| {
                chrono::DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|_| {
                        ApiError::validation(format!(
                            "{key}: `{v}` is not an RFC 3339 time (e.g. 2026-12-01T00:00:00Z)"
                        ))
                    })
            })
            .transpose()
    };
    let (since, until) = (when("since")?, when("until")?);
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
            requested_by: p.str("requested_by"),
            since,
            until,
        })
        .await?;
    let more = jobs.len() as i64 > limit;
    jobs.truncate(limit as usize);
    let next = more.then(|| jobs.last().map(cursor_of)).flatten();
    Ok(Json(RotationPage {
        rotations: jobs.iter().map(RotationJobView::from).collect(),
        next_cursor: next,
    }))
}

/// One rotation job.
#[utoipa::path(get, path = "/api/v1/rotations/{job_id}", operation_id = "getRotation", tag = "rotations", security(("bearer" = [])),
    params(("job_id" = String, Path, description = "`rot_` and 26 base32 characters")),
    responses(
        (status = 200, description = "The job", body = RotationJobView),
        Unauthorized,
        Unavailable,
        (status = 403, description = "`forbidden`: the role lacks tokens.read", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
        RateLimited,
    ))]
async fn show(
    _: Can<TokensRead>,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Json<RotationJobView>, ApiError> {
    Ok(Json(
        crate::gate::show(&state, load(&state, &job_id).await?).await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StageBody {
    /// `proceed_distribute`, `proceed_revoke`, `retry_failed`, `rollback` or `abort`.
    #[schema(value_type = Action)]
    action: String,
    /// The current TOTP code of the operator who owns the caller's token, for a revocation
    /// gate that asks for one.
    totp: Option<String>,
    /// Why, for the audit log.
    reason: Option<String>,
    /// With `proceed_revoke`: pass a revocation gate without its TOTP and approvals, where the
    /// gate says `allow_force: true`; needs the admin role and a `reason`, and is recorded as a
    /// critical security event. It never revokes before every consumer is verified (I2).
    #[serde(default)]
    force: bool,
}

/// An operator action that moves a job: proceed, retry, roll back or abort.
#[utoipa::path(post, path = "/api/v1/rotations/{job_id}/stage", operation_id = "stageRotation", tag = "rotations", security(("bearer" = [])),
    params(("job_id" = String, Path, description = "`rot_` and 26 base32 characters")),
    request_body(content = StageBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The job after the action", body = RotationJobView),
        Unauthorized,
        (status = 403, description = "`forbidden` (the role lacks rotations.stage, or rotations.revoke for proceed_revoke), `gate_required` or `gate_denied`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: the job cannot take this action now (`stage`, `status`, `awaiting`)", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 1 MiB", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a field is wrong or unknown", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many failed authentications, or the operator spent its wrong step-up codes (5 in 15 minutes)", body = ErrorBody,
            headers(("Retry-After" = u16, description = "Seconds until this address may try again"))),
        (status = 501, description = "`not_enabled`: the velvet_v2_rotation flag is off, or this server runs no engine", body = ErrorBody),
        (status = 503, description = "`audit_unavailable`: the audit record could not be written, so nothing ran; or `unavailable`: the store is busy, retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u16, description = "Seconds to wait before retrying (`unavailable`)"))),
    ))]
async fn stage(
    caller: crate::auth::Caller,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    Body(body): Body<StageBody>,
) -> Result<Json<RotationJobView>, ApiError> {
    // A locked operator's step-up flood is answered before anything is recorded (§10).
    if body.action == Action::ProceedRevoke.as_str()
        && body.totp.is_some()
        && let Some(op) = &caller.operator
    {
        crate::gate::step_up_limited(&state, op)?;
    }
    crate::auth::authorize(
        &state,
        &caller,
        Permission::RotationsStage,
        &format!("POST /api/v1/rotations/{job_id}/stage"),
        true,
    )
    .await?;
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
    let job = load(&state, &job_id).await?;
    let req = StageRequest {
        action,
        totp: body.totp.as_deref(),
        force: body.force,
        reason: body.reason.as_deref(),
    };
    let job = engine(&state)?
        .stage(&caller.person(), &job.job_id, req)
        .await?;
    Ok(Json(crate::gate::show(&state, job).await?))
}

/// The engine service, which every change to a job goes through.
pub(crate) fn engine(state: &AppState) -> Result<&velvet_engine::Engine, ApiError> {
    state
        .engine
        .as_deref()
        .ok_or_else(|| ApiError::not_enabled("this server runs no rotation engine"))
}
