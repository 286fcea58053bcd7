//! `/api/v1/flags`: feature flags. The file sets a value over the built-in default, and an
//! admin's `PUT` stores an override over both; every replica reads the store, so an override
//! holds everywhere on the next request.

use crate::auth::{AdminOnly, Can, TokensRead};
use crate::body::Body;
use crate::error::{ErrorBody, RateLimited, Unauthorized, Unavailable};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(set))
}

/// A flag's effective value.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Flag {
    pub name: String,
    pub enabled: bool,
    /// `default` (built in), `file` (velvet.yaml) or `override` (set through the API).
    #[schema(pattern = "^(default|file|override)$")]
    pub source: String,
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct FlagList {
    pub flags: Vec<Flag>,
}

/// Every known flag with its effective value and where that value comes from.
async fn effective(state: &AppState) -> Result<Vec<(String, bool, &'static str)>, ApiError> {
    let config = state.config();
    let overrides = state.store.flag_overrides().await?;
    Ok(config
        .flags
        .iter()
        .map(
            |(name, &file_value)| match overrides.iter().find(|o| &o.name == name) {
                Some(o) => (name.clone(), o.enabled, "override"),
                None if config.flags_in_file.contains(name) => (name.clone(), file_value, "file"),
                None => (name.clone(), file_value, "default"),
            },
        )
        .collect())
}

pub(crate) async fn enabled(state: &AppState, name: &str) -> Result<bool, ApiError> {
    Ok(effective(state)
        .await?
        .into_iter()
        .find(|(n, ..)| n == name)
        .is_none_or(|(_, on, _)| on))
}

/// 501 `not_enabled` while `velvet_v2_rotation` is off.
pub(crate) async fn require_rotation(state: &AppState) -> Result<(), ApiError> {
    if enabled(state, "velvet_v2_rotation").await? {
        Ok(())
    } else {
        Err(ApiError::not_enabled(
            "rotation is turned off by the velvet_v2_rotation flag",
        ))
    }
}

/// Every feature flag, its value and where the value comes from.
#[utoipa::path(get, path = "/api/v1/flags", operation_id = "listFlags", tag = "flags", security(("bearer" = [])),
    responses(
        (status = 200, description = "The flags", body = FlagList),
        Unauthorized,
        Unavailable,
        (status = 403, description = "`forbidden`: the role lacks tokens.read", body = ErrorBody),
        RateLimited,
    ))]
async fn list(
    _: Can<TokensRead>,
    State(state): State<AppState>,
) -> Result<Json<FlagList>, ApiError> {
    let flags = effective(&state)
        .await?
        .into_iter()
        .map(|(name, enabled, source)| Flag {
            name,
            enabled,
            source: source.into(),
        })
        .collect();
    Ok(Json(FlagList { flags }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBody {
    enabled: bool,
}

/// Override a flag's value on every replica (audited).
#[utoipa::path(put, path = "/api/v1/flags/{name}", operation_id = "setFlag", tag = "flags", security(("bearer" = [])),
    params(("name" = String, Path, description = "The flag, e.g. `velvet_v2_rotation`")),
    request_body(content = SetBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The flag's new value", body = Flag),
        Unauthorized,
        (status = 403, description = "`forbidden`: only admin may set flags", body = ErrorBody),
        (status = 404, description = "`not_found`: no such flag", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over 1 MiB", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the body is wrong", body = ErrorBody),
        RateLimited,
        (status = 503, description = "`audit_unavailable`: the audit record could not be written, so nothing changed; or `unavailable`: the store is busy, retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u16, description = "Seconds to wait before retrying (`unavailable`)"))),
    ))]
async fn set(
    Can(caller, ..): Can<AdminOnly>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body<SetBody>,
) -> Result<Json<Flag>, ApiError> {
    if !state.config().flags.contains_key(&name) {
        let known: Vec<String> = state.config().flags.keys().cloned().collect();
        return Err(ApiError::not_found(format!(
            "flag `{name}` not found; flags: {}",
            known.join(", ")
        )));
    }
    let o = state
        .store
        .set_flag(&name, body.enabled, &caller.actor)
        .await?;
    tracing::info!(flag = %o.name, enabled = o.enabled, by = %caller.actor, "feature flag set");
    Ok(Json(Flag {
        name: o.name,
        enabled: o.enabled,
        source: "override".into(),
    }))
}
