//! `POST /api/v1/tokens/{name}/resync`: puts the current version back on the consumers a
//! probe found drifted (design §11), and only on those; audited as `token.resynced`.

use crate::auth::{Can, Kickoff};
use crate::error::{ErrorBody, RateLimited, Unauthorized, Unavailable};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(resync))
}

#[derive(Debug, Serialize, ToSchema)]
struct Resynced {
    token: String,
    /// The version put back.
    version: i64,
    /// Drifted consumers that hold the current version again.
    repaired: Vec<String>,
    /// Drifted consumers that could not be repaired, with why.
    failed: Vec<FailedResync>,
}

#[derive(Debug, Serialize, ToSchema)]
struct FailedResync {
    consumer: String,
    error: String,
}

/// Re-applies the current version to the token's drifted consumers, then verifies each.
#[utoipa::path(post, path = "/api/v1/tokens/{name}/resync", operation_id = "resyncToken", tag = "tokens", security(("bearer" = [])),
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 200, description = "What was repaired (an empty list: nothing had drifted)", body = Resynced),
        Unauthorized,
        Unavailable,
        (status = 403, description = "`forbidden`: the role lacks rotations.kickoff", body = ErrorBody),
        (status = 404, description = "`not_found`: no such token", body = ErrorBody),
        (status = 409, description = "`job_active`: an unfinished rotation owns the consumers (`job_id`)", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the token has no current version", body = ErrorBody),
        RateLimited,
    ))]
async fn resync(
    Can(caller, ..): Can<Kickoff>,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Resynced>, ApiError> {
    let r = crate::rotations::engine(&state)?
        .resync(&name, &caller.actor)
        .await?;
    Ok(Json(Resynced {
        token: r.token,
        version: r.version,
        repaired: r.repaired,
        failed: r
            .failed
            .into_iter()
            .map(|(consumer, error)| FailedResync { consumer, error })
            .collect(),
    }))
}
