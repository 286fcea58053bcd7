//! `GET /api/v1/notifications`: the latest deliveries and their state (design §11), so an
//! operator sees a channel that fails without reading logs.

use crate::audit::Params;
use crate::auth::{Can, TokensRead};
use crate::error::{ErrorBody, RateLimited, Unauthorized, Unavailable};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Query, State};
use serde::Serialize;
use std::collections::HashMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use velvet_store::Delivery;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Debug, Serialize, ToSchema)]
struct Deliveries {
    notifications: Vec<Delivery>,
}

/// The latest notification deliveries, newest first: each event (its id is the one receivers
/// deduplicate on), the channel, `pending`/`delivered`/`failed`, attempts and the last error.
#[utoipa::path(get, path = "/api/v1/notifications", operation_id = "listNotifications", tag = "tokens", security(("bearer" = [])),
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "How many (default 100)"),
    ),
    responses(
        (status = 200, description = "Deliveries, newest first", body = Deliveries),
        Unauthorized,
        Unavailable,
        (status = 403, description = "`forbidden`: the role lacks tokens.read", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a query parameter is wrong or unknown", body = ErrorBody),
        RateLimited,
    ))]
async fn list(
    _: Can<TokensRead>,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Deliveries>, ApiError> {
    let limit = Params::new(q, &["limit"])?.int("limit", 100, 1, 500)?;
    Ok(Json(Deliveries {
        notifications: state.store.deliveries(limit).await?,
    }))
}
