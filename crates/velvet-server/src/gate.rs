//! Revocation gates at the API (design §3 `revocation_gates`, §7): the job object's `gate`, and
//! approvals (`POST /api/v1/rotations/{id}/approvals`). The policy is `velvet_core::gate`; the
//! engine service applies it and records every outcome.

use crate::auth::Caller;
use crate::body::Body;
use crate::error::{ErrorBody, Unauthorized};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use utoipa::ToSchema;
use velvet_core::job::RotationJob;
use velvet_core::job_view::{GateView, RotationJobView};

/// The job object: the job with its gate, what it requires and the approvals so far.
pub(crate) async fn show(state: &AppState, job: RotationJob) -> Result<RotationJobView, ApiError> {
    let gate = match state.engine.as_ref().and_then(|e| e.gate_of(&job)) {
        Some(g) => {
            let approvals = state.store.approvals(&job.job_id).await?;
            Some(GateView::new(&g, approvals))
        }
        None => None,
    };
    Ok(RotationJobView::from(&job).with_gate(gate))
}

/// 429 while `operator` has spent its wrong step-up codes. Asked before anything is recorded,
/// so a flood adds no decision rows.
pub(crate) fn step_up_limited(state: &AppState, operator: &str) -> Result<(), ApiError> {
    Ok(crate::rotations::engine(state)?.step_up_limited(operator)?)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// The approving operator's current TOTP code.
    totp: String,
}

/// An operator approves a job's revoke, proving presence with a fresh TOTP code.
#[utoipa::path(post, path = "/api/v1/rotations/{job_id}/approvals", operation_id = "approveRevoke", tag = "rotations", security(("bearer" = [])),
    params(("job_id" = String, Path, description = "`rot_` and 26 base32 characters")),
    request_body(content = ApproveBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The job, its gate listing the approvals so far", body = RotationJobView),
        Unauthorized,
        (status = 403, description = "`forbidden` (the role lacks rotations.revoke), `gate_required` (not an operator) or `gate_denied` (wrong or replayed code)", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: the job is not awaiting proceed_revoke, or its gate needs no approvals", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 1 MiB", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the body is wrong", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many failed authentications, or the operator spent its wrong step-up codes (5 in 15 minutes)", body = ErrorBody,
            headers(("Retry-After" = u16, description = "Seconds until this address may try again"))),
        (status = 503, description = "`audit_unavailable`: the approval could not be audited, so it was not recorded; or `unavailable`: the store is busy, retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u16, description = "Seconds to wait before retrying (`unavailable`)"))),
    ))]
pub(crate) async fn approve(
    caller: Caller,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    Body(body): Body<ApproveBody>,
) -> Result<Json<RotationJobView>, ApiError> {
    // A locked operator's flood is answered before anything is recorded.
    if let Some(op) = &caller.operator {
        step_up_limited(&state, op)?;
    }
    let resource = format!("POST /api/v1/rotations/{job_id}/approvals");
    crate::auth::authorize(
        &state,
        &caller,
        velvet_core::identity::Permission::RotationsRevoke,
        &resource,
        true,
    )
    .await?;
    let job = crate::rotations::load(&state, &job_id).await?;
    let job = crate::rotations::engine(&state)?
        .approve(&caller.person(), &job.job_id, &body.totp)
        .await?;
    Ok(Json(show(&state, job).await?))
}
