//! `/api/v1/tokens`: the tokens under management, and the kickoff of a rotation.

use crate::auth::{Can, Kickoff, TokensRead};
use crate::body::OptionalBody;
use crate::error::{ErrorBody, RateLimited, Unauthorized, Unavailable};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use velvet_core::config::FlowType;
use velvet_core::model::{Health, TokenRecord, TokenStatus, VersionRecord};
use velvet_core::rotation::{JobStatus, Stage};
use velvet_store::{IdempotencyKey, NewJob};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(rotate))
}

/// A token as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenSummary {
    name: String,
    description: String,
    tags: Vec<String>,
    /// The source kind: `random`, `postgres_role`, `redis_acl`…
    source_kind: String,
    current_version: Option<i64>,
    last_rotated_at: Option<DateTime<Utc>>,
    next_rotation_at: Option<DateTime<Utc>>,
    consumer_count: i64,
    /// The token's unfinished rotation job, if any.
    active_job_id: Option<String>,
}

impl From<TokenRecord> for TokenSummary {
    fn from(t: TokenRecord) -> Self {
        Self {
            name: t.name,
            description: t.description,
            tags: t.tags,
            source_kind: t.source_kind,
            current_version: t.current_version,
            last_rotated_at: t.last_rotated_at,
            next_rotation_at: t.next_rotation_at,
            consumer_count: t.consumer_count,
            active_job_id: t.active_job_id,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    /// Declared tokens (retired ones are kept in the store, not listed).
    tokens: Vec<TokenSummary>,
}

/// A consumer of a token, as declared.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerView {
    name: String,
    kind: String,
    /// Consumers sharing a lock key are written one at a time.
    lock_key: Option<String>,
    /// The latest probe: `in_sync`, `drifted`, `stale` or `unreachable` (null: not probed yet,
    /// or the consumer cannot be read back).
    health: Option<Health>,
}

/// A token with its consumers and versions (never a value: versions carry fingerprints).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenDetail {
    #[serde(flatten)]
    summary: TokenSummary,
    status: TokenStatus,
    consumers: Vec<ConsumerView>,
    versions: Vec<VersionRecord>,
    /// The source's latest verifying login (null: not probed yet).
    source_health: Option<Health>,
}

/// Tokens declared in `velvet.yaml`.
#[utoipa::path(get, path = "/api/v1/tokens", operation_id = "listTokens", tag = "tokens", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every declared token", body = TokenList),
        Unauthorized,
        Unavailable,
        (status = 403, description = "`forbidden`: the role lacks tokens.read", body = ErrorBody),
        RateLimited,
    ))]
async fn list(
    _: Can<TokensRead>,
    State(state): State<AppState>,
) -> Result<Json<TokenList>, ApiError> {
    let tokens = state.store.list_tokens().await?;
    let tokens = tokens
        .into_iter()
        .filter(|t| t.status == TokenStatus::Active)
        .map(TokenSummary::from)
        .collect();
    Ok(Json(TokenList { tokens }))
}

/// One token with its consumers and versions.
#[utoipa::path(get, path = "/api/v1/tokens/{name}", operation_id = "getToken", tag = "tokens", security(("bearer" = [])),
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 200, description = "The token", body = TokenDetail),
        Unauthorized,
        Unavailable,
        (status = 403, description = "`forbidden`: the role lacks tokens.read", body = ErrorBody),
        (status = 404, description = "`not_found`: no such token", body = ErrorBody),
        RateLimited,
    ))]
async fn show(
    _: Can<TokensRead>,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TokenDetail>, ApiError> {
    let velvet_store::TokenView {
        token,
        consumers,
        versions,
        source_health,
    } = state
        .store
        .token_view(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("token `{name}` not found")))?;
    let status = token.status;
    Ok(Json(TokenDetail {
        summary: token.into(),
        status,
        consumers: consumers
            .into_iter()
            .map(|c| ConsumerView {
                name: c.name,
                kind: c.kind,
                lock_key: c.lock_key,
                health: c.health,
            })
            .collect(),
        versions,
        source_health,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// Overrides the token's declared flow for this job.
    flow_type: Option<FlowType>,
    /// Why, for the audit log (at most 1000 characters).
    #[schema(max_length = 1000)]
    reason: Option<String>,
    /// The new value of a `manual` token (only those take one; it is sealed at once and never
    /// shown again). At most 64 KiB.
    #[schema(value_type = Option<String>, max_length = 65536)]
    value: Option<velvet_core::secret::SecretString>,
}

/// The job a kickoff created (or found, for a repeated `Idempotency-Key`).
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct KickoffAccepted {
    pub job_id: String,
    pub status: JobStatus,
    pub stage: Stage,
    pub flow_type: FlowType,
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

/// Start a rotation of the token.
#[utoipa::path(post, path = "/api/v1/tokens/{name}/rotate", operation_id = "rotateToken", tag = "tokens", security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "The token's name"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "The same key with the same body within 24 h returns the same job"),
    ),
    request_body(content = Option<RotateBody>, description = "Optional; every field may be left out", content_type = "application/json"),
    responses(
        (status = 202, description = "The job is queued", body = KickoffAccepted,
            headers(("Location" = String, description = "The job: /api/v1/rotations/{job_id}")),
            links(
                ("GetRotation" = (operation_id = "getRotation", parameters(("job_id" = "$response.body#/job_id")))),
                ("StageRotation" = (operation_id = "stageRotation", parameters(("job_id" = "$response.body#/job_id")))),
                ("StreamRotationEvents" = (operation_id = "streamRotationEvents", parameters(("job_id" = "$response.body#/job_id")))),
            )),
        Unauthorized,
        (status = 403, description = "`forbidden`: the role lacks rotations.kickoff", body = ErrorBody),
        (status = 404, description = "`not_found`: no such token", body = ErrorBody),
        (status = 409, description = "`job_active`: the token already has an unfinished job (`job_id`)", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 1 MiB", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a field is wrong, or the Idempotency-Key was used with another body", body = ErrorBody),
        RateLimited,
        (status = 501, description = "`not_enabled`: the velvet_v2_rotation flag is off", body = ErrorBody),
        (status = 503, description = "`audit_unavailable`: the audit record could not be written, so nothing ran; or `unavailable`: the store is busy, retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u16, description = "Seconds to wait before retrying (`unavailable`)"))),
    ))]
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
        value: None,
    });
    let config = state.config();
    let spec = config
        .token(&name)
        .ok_or_else(|| ApiError::not_found(format!("token `{name}` is not declared")))?;
    if body.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(ApiError::validation("reason: at most 1000 characters"));
    }
    let manual = matches!(spec.source, velvet_core::config::SourceSpec::Manual);
    let given = match (&body.value, manual) {
        (None, true) => {
            return Err(ApiError::validation(format!(
                "value: `{name}` is a manual token, so its rotation takes the new value from \
                 you: `velvet rotate {name} --value-stdin` (or the console)"
            )));
        }
        (Some(_), false) => {
            return Err(ApiError::validation(format!(
                "value: only a manual token takes a value; `{name}`'s source ({}) mints its own",
                spec.source.kind()
            )));
        }
        (Some(v), true) if v.expose().is_empty() || v.expose().len() > 65536 => {
            return Err(ApiError::validation("value: must be 1 byte to 64 KiB long"));
        }
        (v, _) => v.clone(),
    };
    let key = idempotency_key(&headers)?;
    // What makes two kickoffs "the same request": the token and the body as sent.
    let request_hash = hex::encode(Sha256::digest(
        // A given value counts by its presence only: no hash of a secret is kept.
        json!({"token": name, "flow_type": body.flow_type, "reason": body.reason, "value": given.is_some()})
            .to_string()
            .as_bytes(),
    ));
    let flow = body.flow_type.unwrap_or(spec.flow);
    let job = crate::rotations::engine(&state)?
        .kickoff_given(
            &NewJob {
                token: &name,
                flow,
                requested_by: &caller.actor,
                requested_role: Some(caller.role),
                reason: body.reason.as_deref(),
                idempotency: key.as_deref().map(|key| IdempotencyKey {
                    scope: &caller.actor,
                    key,
                    request_hash: &request_hash,
                }),
                schedule_slot: None,
                given: None,
            },
            given.map(velvet_core::secret::SecretValue::single_secret),
        )
        .await?;
    let location = format!("/api/v1/rotations/{}", job.job_id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(KickoffAccepted {
            job_id: job.job_id,
            status: job.state.status,
            stage: job.state.stage,
            flow_type: job.flow_type,
        }),
    ))
}
