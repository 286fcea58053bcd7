//! `/healthz` (the process answers) and `/readyz` (the store answers and is fully migrated).

use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use velvet_store::MigrationSet;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<Value> {
    Json(json!({"service": "velvet", "status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut ready = true;
    let store = match state.store.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => {
            ready = false;
            tracing::warn!(error = %e, "readiness: store does not answer");
            "unreachable".to_string()
        }
    };
    let set = MigrationSet::embedded(state.store.dialect());
    let migrations = match state.store.migrations(&set).await {
        Ok(states) => match states.iter().filter(|s| s.status == "pending").count() {
            0 => "ok".to_string(),
            n => {
                ready = false;
                format!("{n} pending")
            }
        },
        Err(e) => {
            ready = false;
            tracing::warn!(error = %e, "readiness: cannot read migration state");
            "unknown".to_string()
        }
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {"store": store, "migrations": migrations},
    });
    (status, Json(body))
}
