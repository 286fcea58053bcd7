//! `/api/v1/flags`: feature flags. The file sets a value over the built-in default, and an
//! admin's `PUT` stores an override over both; every replica reads the store, so an override
//! holds everywhere on the next request.

use crate::auth::{AdminOnly, Can, TokensRead};
use crate::body::Body;
use crate::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/flags", get(list))
        .route("/api/v1/flags/{name}", put(set))
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

async fn list(_: Can<TokensRead>, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let flags: Vec<Value> = effective(&state)
        .await?
        .into_iter()
        .map(|(name, enabled, source)| json!({"name": name, "enabled": enabled, "source": source}))
        .collect();
    Ok(Json(json!({"flags": flags})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    enabled: bool,
}

async fn set(
    Can(caller, ..): Can<AdminOnly>,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body<SetBody>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(
        json!({"name": o.name, "enabled": o.enabled, "source": "override"}),
    ))
}
