//! Revocation gates (design §3 `revocation_gates`, §7): the first gate matching a token stands
//! in front of its `proceed_revoke`. It may ask for a fresh TOTP code from the operator who
//! proceeds (`gate_required` without one, `gate_denied` for a wrong or replayed one), for N
//! approvals by other operators (`POST /api/v1/rotations/{id}/approvals`), and for one of some
//! roles. Every outcome is a decision on record; every refusal a security event.

use crate::auth::Caller;
use crate::body::Body;
use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use velvet_core::config::{GateSpec, gate_for};
use velvet_core::decision::{Decision, DecisionStep, SecurityEvent, Severity};
use velvet_core::job::Job;
use velvet_core::operator;
use velvet_core::rotation::Awaiting;

/// The gate that applies to `job`'s token, if any.
pub(crate) fn of(state: &AppState, job: &Job) -> Option<GateSpec> {
    let config = state.config();
    config
        .token(&job.token)
        .and_then(|t| gate_for(&config.revocation_gates, t))
        .cloned()
}

/// Fills the job object's `gate`: what it requires and the approvals so far.
pub(crate) async fn show(state: &AppState, mut job: Job) -> Result<Job, ApiError> {
    if let Some(g) = of(state, &job) {
        let approvals = state.store.approvals(&job.job_id).await?;
        job.gate = Some(serde_json::json!({
            "name": g.name,
            "requires": {"totp": g.require.totp, "approvals": g.require.approvals, "roles": g.require.roles},
            "allow_force": g.allow_force,
            "approvals": approvals,
        }));
    }
    Ok(job)
}

fn refusal(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

/// Keeps a refusal as a decision and a security event, and returns the answer to give.
#[allow(clippy::too_many_arguments)]
async fn deny(
    state: &AppState,
    caller: &Caller,
    job: &Job,
    resource: &str,
    step: DecisionStep,
    code: &'static str,
    kind: &'static str,
    message: String,
) -> ApiError {
    let mut steps = caller.steps.clone();
    steps.push(step);
    let d = Decision::new(&caller.actor, "velvet.rotations.revoke", resource, steps);
    if let Err(e) = state.store.record_decision(&d).await {
        tracing::warn!(error = %e, "recording a gate refusal failed");
    }
    let mut ev = SecurityEvent::new(kind, Severity::Warning, message.clone());
    ev.subject = Some(caller.actor.clone());
    ev.client = Some(caller.client.clone());
    ev.decision_id = Some(d.id);
    ev.job_id = Some(job.job_id.clone());
    crate::auth::security_event(state, ev).await;
    refusal(code, message)
}

/// Keeps a pass as a decision; one that cannot be recorded does not go ahead (I6).
async fn allow(
    state: &AppState,
    caller: &Caller,
    resource: &str,
    step: DecisionStep,
) -> Result<(), ApiError> {
    let mut steps = caller.steps.clone();
    steps.push(step);
    let d = Decision::new(&caller.actor, "velvet.rotations.revoke", resource, steps);
    state.store.record_decision(&d).await.map_err(|e| {
        velvet_store::StoreError::AuditUnavailable(format!("recording the decision: {e}"))
    })?;
    Ok(())
}

/// 429 while `operator` has spent its wrong step-up codes (design §10: 5 in 15 minutes). No
/// decision is stored for such a request, so a flood adds no rows.
pub(crate) fn step_up_limited(state: &AppState, operator: &str) -> Result<(), ApiError> {
    match state.limits.step_up.blocked(operator) {
        Some(secs) => Err(ApiError::rate_limited(
            format!(
                "too many wrong codes for operator {operator}; step-ups are refused for {} more \
                 minute(s). If these were not your attempts, tell an admin: someone holds a \
                 token of yours",
                secs.div_ceil(60)
            ),
            secs.min(u16::MAX as u64) as u16,
        )),
        None => Ok(()),
    }
}

/// Counts a wrong step-up code; the one that spends the budget is a critical `totp_locked`.
async fn wrong_code(state: &AppState, caller: &Caller, job: &Job, operator: &str) {
    if state.limits.step_up.record(operator) {
        let mut ev = SecurityEvent::new(
            "totp_locked",
            Severity::Critical,
            format!(
                "5 wrong step-up codes for operator {operator} within 15 minutes; step-ups refused until the window passes"
            ),
        );
        ev.subject = Some(caller.actor.clone());
        ev.client = Some(caller.client.clone());
        ev.job_id = Some(job.job_id.clone());
        crate::auth::security_event(state, ev).await;
    }
}

/// Checks `code` as a fresh TOTP code of the caller's operator; the operator if it is.
async fn fresh_totp(
    state: &AppState,
    caller: &Caller,
    job: &Job,
    resource: &str,
    gate: &str,
    code: Option<&str>,
) -> Result<velvet_store::OperatorRecord, ApiError> {
    let Some(name) = caller.operator.clone() else {
        return Err(deny(state, caller, job, resource,
            DecisionStep::new("gate_totp", false, "the caller is not an operator"), "gate_required", "gate_denied", format!("the gate `{gate}` needs an operator's TOTP code: use a service token owned by an operator (velvet auth create-token --name N --role R --operator NAME) or log in to the console")).await);
    };
    let Some(code) = code.filter(|c| !c.trim().is_empty()) else {
        return Err(deny(state, caller, job, resource,
            DecisionStep::new("gate_totp", false, "no code given"), "gate_required", "gate_denied", format!("the gate `{gate}` needs a TOTP code from your authenticator: velvet rotations stage {} proceed_revoke --totp CODE (the API's `totp` field)", job.job_id)).await);
    };
    step_up_limited(state, &name)?;
    let op = state
        .store
        .operator(&name)
        .await?
        .filter(|o| o.disabled_at.is_none());
    let secret = match &op {
        Some(o) => Some(
            state
                .keyring
                .open(&o.totp, &operator::totp_aad(&o.name))
                .map_err(|e| ApiError::internal(&e))?,
        ),
        None => None,
    };
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let step = secret
        .as_ref()
        .and_then(|s| s.get("value"))
        .and_then(|s| operator::totp_step(s.expose(), code, now));
    let (Some(step), Some(op)) = (step, op) else {
        wrong_code(state, caller, job, &name).await;
        return Err(deny(
            state,
            caller,
            job,
            resource,
            DecisionStep::new(
                "gate_totp",
                false,
                format!("wrong code for operator {name}"),
            ),
            "gate_denied",
            "gate_denied",
            "the TOTP code is not valid now".into(),
        )
        .await);
    };
    if !state.store.accept_totp_step(&name, step as i64).await? {
        wrong_code(state, caller, job, &name).await;
        return Err(deny(
            state,
            caller,
            job,
            resource,
            DecisionStep::new(
                "gate_totp",
                false,
                format!("code of step {step} already used by operator {name}"),
            ),
            "gate_denied",
            "totp_replayed",
            "this TOTP code was already used (each code counts once per operator, so the \
             code you just logged in with is spent); wait for the next code, at most 30 s"
                .into(),
        )
        .await);
    }
    Ok(op)
}

/// Whether an operator of `role` may approve or pass `gate` (its `roles`, when it lists any).
fn role_fits(gate: &GateSpec, role: &str) -> bool {
    gate.require.roles.is_empty() || gate.require.roles.iter().any(|r| r == role)
}

/// Evaluates `gate` for `caller` proceeding to revoke `job` (awaiting it): Ok when it passes.
pub(crate) async fn pass(
    state: &AppState,
    caller: &Caller,
    job: &Job,
    gate: &GateSpec,
    totp: Option<&str>,
) -> Result<(), ApiError> {
    let resource = format!(
        "POST /api/v1/rotations/{}/stage proceed_revoke gate {}",
        job.job_id, gate.name
    );
    let r = &gate.require;
    if !r.roles.is_empty() && !r.roles.iter().any(|x| x == caller.role.as_str()) {
        return Err(deny(
            state,
            caller,
            job,
            &resource,
            DecisionStep::new(
                "gate_role",
                false,
                format!(
                    "role {} is not one of {}",
                    caller.role.as_str(),
                    r.roles.join(", ")
                ),
            ),
            "gate_denied",
            "gate_denied",
            format!(
                "the gate `{}` accepts only {}",
                gate.name,
                r.roles.join(", ")
            ),
        )
        .await);
    }
    let mut passed = vec![];
    // Approvals first: a TOTP code is spent when checked, so it is checked last.
    if r.approvals > 0 {
        // Approvals count only from other operators who hold one of the gate's roles now.
        let mut others = 0u32;
        for a in state.store.approvals(&job.job_id).await? {
            if Some(&a.operator) == caller.operator.as_ref() {
                continue;
            }
            let fits = state
                .store
                .operator(&a.operator)
                .await?
                .is_some_and(|o| o.disabled_at.is_none() && role_fits(gate, &o.role));
            others += u32::from(fits);
        }
        if others < r.approvals {
            let message = format!(
                "the gate `{}` needs {} approval(s) by other operators{}; it has {others}: \
                 each approves with `velvet rotations approve {} --totp CODE` or in the console",
                gate.name,
                r.approvals,
                if r.roles.is_empty() {
                    String::new()
                } else {
                    format!(" holding one of {}", r.roles.join(", "))
                },
                job.job_id
            );
            let step = DecisionStep::new(
                "gate_approvals",
                false,
                format!("{others} of {} approvals", r.approvals),
            );
            return Err(deny(
                state,
                caller,
                job,
                &resource,
                step,
                "gate_required",
                "gate_denied",
                message,
            )
            .await);
        }
        passed.push(format!("{others} approvals"));
    }
    if r.totp {
        let who = fresh_totp(state, caller, job, &resource, &gate.name, totp).await?;
        passed.push(format!("fresh TOTP of operator {}", who.name));
    }
    allow(
        state,
        caller,
        &resource,
        DecisionStep::new(
            "gate",
            true,
            format!("gate {}: {}", gate.name, passed.join(", ")),
        ),
    )
    .await
}

/// Passes `gate` by force: only where it allows force, only for an admin, only with a reason.
pub(crate) async fn force(
    state: &AppState,
    caller: &Caller,
    job: &Job,
    gate: &GateSpec,
    reason: Option<&str>,
) -> Result<(), ApiError> {
    let resource = format!(
        "POST /api/v1/rotations/{}/stage proceed_revoke force gate {}",
        job.job_id, gate.name
    );
    if !gate.allow_force {
        return Err(deny(
            state,
            caller,
            job,
            &resource,
            DecisionStep::new("gate_force", false, "the gate does not allow force"),
            "gate_denied",
            "gate_denied",
            format!(
                "the gate `{}` does not allow force (allow_force: false)",
                gate.name
            ),
        )
        .await);
    }
    if caller.role != velvet_core::identity::Role::Admin {
        return Err(deny(
            state,
            caller,
            job,
            &resource,
            DecisionStep::new(
                "gate_force",
                false,
                format!("role {} is not admin", caller.role.as_str()),
            ),
            "forbidden",
            "gate_denied",
            "forcing a revocation gate needs the admin role (velvet.admin)".into(),
        )
        .await);
    }
    let Some(reason) = reason.map(str::trim).filter(|r| !r.is_empty()) else {
        return Err(ApiError::validation(
            "reason: a forced revoke needs a reason",
        ));
    };
    allow(
        state,
        caller,
        &resource,
        DecisionStep::new(
            "gate_force",
            true,
            format!("forced past gate {}: {reason}", gate.name),
        ),
    )
    .await?;
    let mut ev = SecurityEvent::new(
        "force_revoke",
        Severity::Critical,
        format!("the gate `{}` was forced: {reason}", gate.name),
    );
    ev.subject = Some(caller.actor.clone());
    ev.client = Some(caller.client.clone());
    ev.job_id = Some(job.job_id.clone());
    crate::auth::security_event(state, ev).await;
    Ok(())
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
        (status = 200, description = "The job, its gate listing the approvals so far", body = Job),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 403, description = "`forbidden` (the role lacks rotations.revoke), `gate_required` (not an operator) or `gate_denied` (wrong or replayed code)", body = ErrorBody),
        (status = 404, description = "`not_found`: no such job", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: the job is not awaiting proceed_revoke, or its gate needs no approvals", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 1 MiB", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the body is wrong", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many failed authentications, or the operator spent its wrong step-up codes (5 in 15 minutes)", body = ErrorBody,
            headers(("Retry-After" = u16, description = "Seconds until this address may try again"))),
        (status = 503, description = "`audit_unavailable`: the approval could not be audited, so it was not recorded", body = ErrorBody),
    ))]
pub(crate) async fn approve(
    caller: Caller,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    Body(body): Body<ApproveBody>,
) -> Result<Json<Job>, ApiError> {
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
    let conflict = |m: String| {
        ApiError::new(StatusCode::CONFLICT, "invalid_transition", m)
            .with("stage", job.state.stage)
            .with("status", job.state.status)
            .with("awaiting", job.state.awaiting)
    };
    let gate = of(&state, &job)
        .filter(|g| g.require.approvals > 0)
        .ok_or_else(|| conflict("this job's revocation gate asks for no approvals".into()))?;
    if job.state.awaiting != Some(Awaiting::ProceedRevoke) {
        return Err(conflict(
            "approvals are taken while the job awaits proceed_revoke".into(),
        ));
    }
    let resource = format!(
        "POST /api/v1/rotations/{job_id}/approvals gate {}",
        gate.name
    );
    let op = fresh_totp(
        &state,
        &caller,
        &job,
        &resource,
        &gate.name,
        Some(&body.totp),
    )
    .await?;
    let operator = op.name;
    if !role_fits(&gate, &op.role) {
        return Err(deny(
            &state,
            &caller,
            &job,
            &resource,
            DecisionStep::new(
                "gate_role",
                false,
                format!("operator {operator} has role {}", op.role),
            ),
            "gate_denied",
            "gate_denied",
            format!(
                "operator {operator} has role {}; the gate `{}` takes approvals only from {}",
                op.role,
                gate.name,
                gate.require.roles.join(", ")
            ),
        )
        .await);
    }
    allow(
        &state,
        &caller,
        &resource,
        DecisionStep::new("gate_totp", true, format!("operator {operator} approves")),
    )
    .await?;
    state
        .store
        .approve_revoke(&job_id, &operator, &caller.actor)
        .await?;
    Ok(Json(show(&state, job).await?))
}
