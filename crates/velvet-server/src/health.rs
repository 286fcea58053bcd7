//! `/healthz` (the process answers) and `/readyz` (the store answers and is fully migrated).

use crate::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use velvet_store::MigrationSet;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `velvet`.
    service: &'static str,
    /// Always `ok`: the process answers.
    status: &'static str,
}

/// The process answers.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        service: "velvet",
        status: "ok",
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// `ready` or `not_ready`.
    status: &'static str,
    checks: ReadyChecks,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyChecks {
    /// `ok` or `unreachable`.
    store: String,
    /// `ok`, `N pending` or `unknown`.
    migrations: String,
}

/// Ready for traffic: the store answers and no migration is pending.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready; `checks` says why", body = Ready),
    ))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Ready>) {
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
    let body = Ready {
        status: if ready { "ready" } else { "not_ready" },
        checks: ReadyChecks { store, migrations },
    };
    (status, Json(body))
}
