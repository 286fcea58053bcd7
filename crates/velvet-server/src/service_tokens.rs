//! `/api/v1/auth/tokens`: service tokens, admin only. The token is shown once, at creation;
//! the store keeps its SHA-256.

use crate::auth::{AdminOnly, Can};
use crate::body::Body;
use crate::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use velvet_core::identity::{Role, mint_service_token, new_service_token_id};
use velvet_core::model::ServiceTokenRecord;
use velvet_store::NewServiceToken;

const MAX_NAME: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/tokens", get(list).post(create))
        .route("/api/v1/auth/tokens/{id}", delete(revoke))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    role: String,
    /// A duration such as `90d` or `12h`.
    expires_in: Option<String>,
    /// The operator who owns the token (used for TOTP step-up).
    operator: Option<String>,
}

fn view(t: &ServiceTokenRecord) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": t.role,
        "prefix": t.prefix,
        "operator": t.operator,
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "last_used_at": t.last_used_at,
        "revoked_at": t.revoked_at,
    })
}

fn checked_name(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() || value.len() > MAX_NAME || value.chars().any(char::is_control) {
        return Err(ApiError::validation(format!(
            "{field}: give 1 to {MAX_NAME} printable characters"
        )));
    }
    Ok(())
}

async fn create(
    Can(caller, ..): Can<AdminOnly>,
    State(state): State<AppState>,
    Body(body): Body<CreateBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    checked_name("name", &body.name)?;
    let role = Role::parse(&body.role).ok_or_else(|| {
        let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        ApiError::validation(format!(
            "role: `{}` is not one of {}",
            body.role,
            roles.join(", ")
        ))
    })?;
    if let Some(op) = &body.operator {
        checked_name("operator", op)?;
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
            let d = chrono::Duration::from_std(d)
                .map_err(|_| ApiError::validation("expires_in: too long"))?;
            Some(
                chrono::Utc::now()
                    .checked_add_signed(d)
                    .ok_or_else(|| ApiError::validation("expires_in: too long"))?,
            )
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
        Json(json!({
            "id": record.id,
            "name": record.name,
            "role": record.role,
            "prefix": record.prefix,
            "token": minted.token.expose(),
            "expires_at": record.expires_at,
        })),
    ))
}

async fn list(_: Can<AdminOnly>, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let tokens = state.store.list_service_tokens().await?;
    Ok(Json(
        json!({"tokens": tokens.iter().map(view).collect::<Vec<_>>()}),
    ))
}

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
