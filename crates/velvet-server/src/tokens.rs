//! `/api/v1/tokens`: the tokens under management, and the kickoff of a rotation.

use crate::auth::{Can, Kickoff, TokensRead};
use crate::body::OptionalBody;
use crate::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use velvet_core::config::FlowType;
use velvet_core::model::{TokenRecord, TokenStatus};
use velvet_store::{IdempotencyKey, NewJob};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", get(list))
        .route("/api/v1/tokens/{name}", get(show))
        .route("/api/v1/tokens/{name}/rotate", post(rotate))
}

fn summary(t: &TokenRecord) -> Value {
    json!({
        "name": t.name,
        "description": t.description,
        "tags": t.tags,
        "source_kind": t.source_kind,
        "current_version": t.current_version,
        "last_rotated_at": t.last_rotated_at,
        "next_rotation_at": t.next_rotation_at,
        "consumer_count": t.consumer_count,
        "active_job_id": t.active_job_id,
    })
}

async fn list(_: Can<TokensRead>, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let tokens = state.store.list_tokens().await?;
    let active: Vec<Value> = tokens
        .iter()
        .filter(|t| t.status == TokenStatus::Active)
        .map(summary)
        .collect();
    Ok(Json(json!({"tokens": active})))
}

async fn show(
    _: Can<TokensRead>,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let token = state
        .store
        .get_token(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("token `{name}` not found")))?;
    let consumers = state.store.list_consumers(&name).await?;
    let versions = state.store.list_versions(&name).await?;
    let mut body = summary(&token);
    body["status"] = json!(token.status);
    body["consumers"] = json!(
        consumers
            .iter()
            .map(|c| json!({"name": c.name, "kind": c.kind, "lock_key": c.lock_key}))
            .collect::<Vec<_>>()
    );
    body["versions"] = json!(versions);
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    flow_type: Option<FlowType>,
    reason: Option<String>,
}

/// The `Idempotency-Key` header, checked: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .map(|k| Some(k.to_string()))
        .ok_or_else(|| {
            ApiError::validation("Idempotency-Key: give 1 to 255 visible ASCII characters")
        })
}

async fn rotate(
    Can(caller, ..): Can<Kickoff>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    OptionalBody(body): OptionalBody<RotateBody>,
) -> Result<impl IntoResponse, ApiError> {
    crate::flags::require_rotation(&state).await?;
    let body = body.unwrap_or(RotateBody {
        flow_type: None,
        reason: None,
    });
    let config = state.config();
    let spec = config
        .token(&name)
        .ok_or_else(|| ApiError::not_found(format!("token `{name}` is not declared")))?;
    if body.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(ApiError::validation("reason: at most 1000 characters"));
    }
    let key = idempotency_key(&headers)?;
    // What makes two kickoffs "the same request": the token and the body as sent.
    let request_hash = hex::encode(Sha256::digest(
        json!({"token": name, "flow_type": body.flow_type, "reason": body.reason})
            .to_string()
            .as_bytes(),
    ));
    let flow = body.flow_type.unwrap_or(spec.flow);
    let job = state
        .store
        .create_job(&NewJob {
            token: &name,
            flow,
            requested_by: &caller.actor,
            reason: body.reason.as_deref(),
            idempotency: key.as_deref().map(|key| IdempotencyKey {
                scope: &caller.actor,
                key,
                request_hash: &request_hash,
            }),
        })
        .await?;
    if let Some(engine) = &state.engine {
        engine.nudge();
    }
    let location = format!("/api/v1/rotations/{}", job.job_id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(
            json!({"job_id": job.job_id, "status": job.state.status, "stage": job.state.stage, "flow_type": job.flow_type}),
        ),
    ))
}
