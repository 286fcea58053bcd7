//! `/api/v1/auth/tokens`: service tokens, admin only. The token is shown once, at creation;
//! the store keeps its SHA-256.

use crate::auth::{AdminOnly, Can};
use crate::body::Body;
use crate::error::{ErrorBody, RateLimited, Unauthorized, Unavailable};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use velvet_core::identity::{Role, mint_service_token, new_service_token_id};

use velvet_core::model::ServiceTokenRecord;
use velvet_store::NewServiceToken;

const MAX_NAME: usize = 128;
/// Ten years: further than that is "never", which is what leaving `expires_in` out says.
const MAX_EXPIRY: std::time::Duration = std::time::Duration::from_secs(3650 * 86_400);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
        .routes(routes!(end_sessions))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndedSessions {
    operator: String,
    /// How many sessions had not been ended yet (ones already past a time limit included).
    ended: u64,
}

/// End every console session of an operator, at once on every replica.
#[utoipa::path(delete, path = "/api/v1/auth/sessions/{operator}", operation_id = "endOperatorSessions", tag = "auth", security(("bearer" = [])),
    params(("operator" = String, Path, description = "The operator's name")),
    responses(
        (status = 200, description = "The sessions are ended", body = EndedSessions),
        Unauthorized,
        (status = 403, description = "`forbidden`: only admin may end sessions", body = ErrorBody),
        (status = 404, description = "`not_found`: no such operator", body = ErrorBody),
        RateLimited,
        (status = 503, description = "`audit_unavailable`: the audit record could not be written, so nothing changed; or `unavailable`: the store is busy, retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u16, description = "Seconds to wait before retrying (`unavailable`)"))),
    ))]
async fn end_sessions(
    Can(caller, ..): Can<AdminOnly>,
    State(state): State<AppState>,
    Path(operator): Path<String>,
) -> Result<Json<EndedSessions>, ApiError> {
    if state.store.operator(&operator).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "operator `{operator}` not found"
        )));
    }
    let ended = state
        .store
        .end_sessions_of(&operator, &caller.actor)
        .await?;
    tracing::info!(operator = %operator, ended, by = %caller.actor, "operator sessions ended");
    Ok(Json(EndedSessions { operator, ended }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// 1 to 100 characters, no control character, not all blank.
    #[schema(
        max_length = 100,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    name: String,
    #[schema(value_type = Role)]
    role: String,
    /// A positive duration up to `3650d`, such as `90d`, `12h` or `30m`; no expiry when left
    /// out.
    #[schema(pattern = "^([0-9]+(ms|s|m|h|d|w))+$")]
    expires_in: Option<String>,
    /// The operator who owns the token (used for TOTP step-up).
    #[schema(
        max_length = 100,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    operator: Option<String>,
}

/// A service token as listed: never the token itself.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ServiceTokenView {
    /// `st_` and 16 hex characters.
    pub id: String,
    pub name: String,
    pub role: String,
    /// The first characters of the token, to recognise it.
    pub prefix: String,
    pub operator: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ServiceTokenRecord> for ServiceTokenView {
    fn from(t: ServiceTokenRecord) -> Self {
        Self {
            id: t.id,
            name: t.name,
            role: t.role,
            prefix: t.prefix,
            operator: t.operator,
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        }
    }
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ServiceTokenList {
    pub tokens: Vec<ServiceTokenView>,
}

/// A new service token: the only time `token` is shown.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct CreatedServiceToken {
    pub id: String,
    pub name: String,
    pub role: String,
    pub prefix: String,
    /// `vlt_` and 43 base62 characters. Store it now: Velvet keeps only its SHA-256.
    pub token: String,
    pub expires_at: Option<DateTime<Utc>>,
}

fn checked_name(field: &str, value: &str) -> Result<(), ApiError> {
    if !velvet_core::identity::valid_actor_name(value) {
        return Err(ApiError::validation(format!(
            "{field}: `{}` is not a name: 1 to {MAX_NAME} ASCII letters, digits, `_`, `.`, `@` \
             or `-`, starting with a letter or digit",
            value.escape_default()
        )));
    }
    Ok(())
}

/// Create a service token.
#[utoipa::path(post, path = "/api/v1/auth/tokens", operation_id = "createServiceToken", tag = "auth", security(("bearer" = [])),
    request_body(content = CreateBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; `token` is shown this once", body = CreatedServiceToken),
        Unauthorized,
        (status = 403, description = "`forbidden`: only admin may manage service tokens", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 1 MiB", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a field is wrong or unknown", body = ErrorBody),
        RateLimited,
        (status = 503, description = "`audit_unavailable`: the audit record could not be written, so nothing was created; or `unavailable`: the store is busy, retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u16, description = "Seconds to wait before retrying (`unavailable`)"))),
    ))]
async fn create(
    Can(caller, ..): Can<AdminOnly>,
    State(state): State<AppState>,
    Body(body): Body<CreateBody>,
) -> Result<(StatusCode, Json<CreatedServiceToken>), ApiError> {
    checked_name("name", &body.name)?;
    let role = Role::parse(&body.role).ok_or_else(|| {
        let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        ApiError::validation(format!(
            "role: `{}` is not one of {}",
            body.role,
            roles.join(", ")
        ))
    })?;
    if let Some(name) = &body.operator {
        checked_name("operator", name)?;
        let op = state
            .store
            .operator(name)
            .await?
            .filter(|o| o.disabled_at.is_none())
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "operator: no operator `{name}` (add one with `velvet operator add {name} --role R`)"
                ))
            })?;
        let op_role = Role::parse(&op.role).unwrap_or(Role::Viewer);
        if !role.within(op_role) {
            return Err(ApiError::validation(format!(
                "role: `{}` grants more than operator {name}'s role `{}`; a token may not do \
                 more than the operator it belongs to",
                role.as_str(),
                op.role
            )));
        }
    }
    let expires_at = match &body.expires_in {
        None => None,
        Some(text) => {
            let d = velvet_core::duration::parse(text)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    ApiError::validation(format!(
                        "expires_in: `{text}` is not a positive duration such as 90d, 12h or 30m"
                    ))
                })?;
            if d > MAX_EXPIRY {
                return Err(ApiError::validation(
                    "expires_in: at most 3650d; leave it out for a token that does not expire",
                ));
            }
            let d = chrono::Duration::from_std(d).expect("at most ten years");
            Some(chrono::Utc::now() + d)
        }
    };
    let minted = mint_service_token();
    let id = new_service_token_id();
    let record = state
        .store
        .create_service_token(&NewServiceToken {
            id: &id,
            name: &body.name,
            role: role.as_str(),
            prefix: &minted.prefix,
            hash: &minted.hash,
            operator: body.operator.as_deref(),
            created_by: &caller.actor,
            expires_at,
        })
        .await?;
    tracing::info!(token_id = %record.id, name = %record.name, role = %record.role, by = %caller.actor, "service token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedServiceToken {
            id: record.id,
            name: record.name,
            role: record.role,
            prefix: record.prefix,
            token: minted.token.expose().to_string(),
            expires_at: record.expires_at,
        }),
    ))
}

/// Every service token, revoked and expired ones included.
#[utoipa::path(get, path = "/api/v1/auth/tokens", operation_id = "listServiceTokens", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "The service tokens", body = ServiceTokenList),
        Unauthorized,
        Unavailable,
        (status = 403, description = "`forbidden`: only admin may manage service tokens", body = ErrorBody),
        RateLimited,
    ))]
async fn list(
    _: Can<AdminOnly>,
    State(state): State<AppState>,
) -> Result<Json<ServiceTokenList>, ApiError> {
    let tokens = state.store.list_service_tokens().await?;
    Ok(Json(ServiceTokenList {
        tokens: tokens.into_iter().map(ServiceTokenView::from).collect(),
    }))
}

/// Revoke a service token: refused on every replica from the next request on.
#[utoipa::path(delete, path = "/api/v1/auth/tokens/{id}", operation_id = "revokeServiceToken", tag = "auth", security(("bearer" = [])),
    params(("id" = String, Path, description = "The service token's id (`st_…`)")),
    responses(
        (status = 204, description = "Revoked"),
        Unauthorized,
        (status = 403, description = "`forbidden`: only admin may manage service tokens", body = ErrorBody),
        (status = 404, description = "`not_found`: no such service token", body = ErrorBody),
        RateLimited,
        (status = 503, description = "`audit_unavailable`: the audit record could not be written, so nothing was revoked; or `unavailable`: the store is busy, retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u16, description = "Seconds to wait before retrying (`unavailable`)"))),
    ))]
async fn revoke(
    Can(caller, ..): Can<AdminOnly>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let record = state
        .store
        .revoke_service_token(&id, &caller.actor)
        .await
        .map_err(|e| match e {
            velvet_store::StoreError::NotFound(_) => {
                ApiError::not_found(format!("service token `{id}` not found"))
            }
            other => other.into(),
        })?;
    let mut ev = velvet_core::decision::SecurityEvent::new(
        "token_revoked",
        velvet_core::decision::Severity::Info,
        format!("service token {} ({}) revoked", record.id, record.name),
    );
    ev.subject = Some(caller.actor.clone());
    ev.client = Some(caller.client.clone());
    crate::auth::security_event(&state, ev).await;
    Ok(StatusCode::NO_CONTENT)
}
