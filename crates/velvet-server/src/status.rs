//! `GET /api/v1/status`: what needs attention (design §11), the same summary `velvet status`
//! prints, the console's home view leads with, and `/metrics` counts.

use crate::auth::{Can, TokensRead};
use crate::error::{ErrorBody, RateLimited, Unauthorized, Unavailable};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use velvet_core::attention::Status;
use velvet_core::model::TokenStatus;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(status))
}

/// The summary at this moment, from the store.
pub(crate) async fn summary(state: &AppState) -> Result<Status, ApiError> {
    let tokens: Vec<_> = state
        .store
        .list_tokens()
        .await?
        .into_iter()
        .filter(|t| t.status == TokenStatus::Active)
        .collect();
    let mut jobs = Vec::new();
    for id in tokens.iter().filter_map(|t| t.active_job_id.as_deref()) {
        if let Some(job) = state.store.get_job(id).await? {
            jobs.push(job);
        }
    }
    let health: Vec<_> = state
        .store
        .consumer_health()
        .await?
        .into_iter()
        .map(|h| (h.token, h.consumer, h.health))
        .collect();
    Ok(velvet_core::attention::status(
        &state.config(),
        &tokens,
        &jobs,
        &health,
        chrono::Utc::now(),
    ))
}

/// What needs attention: failed and paused jobs, overdue and due-soon tokens, drifted and
/// stale consumers. `needs_attention` is what a monitor alerts on.
#[utoipa::path(get, path = "/api/v1/status", operation_id = "getStatus", tag = "tokens", security(("bearer" = [])),
    responses(
        (status = 200, description = "The summary", body = Status),
        Unauthorized,
        Unavailable,
        (status = 403, description = "`forbidden`: the role lacks tokens.read", body = ErrorBody),
        RateLimited,
    ))]
async fn status(
    _: Can<TokensRead>,
    State(state): State<AppState>,
) -> Result<Json<Status>, ApiError> {
    Ok(Json(summary(&state).await?))
}
