//! The OpenAPI 3.1 description of the API, generated from the handlers themselves: every route
//! is registered through `utoipa_axum::routes!`, so a route cannot exist without its entry, and
//! the response types are the types the handlers serialise.

use crate::AppState;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Velvet",
        description = "Credential rotation: mint, distribute to every consumer and verify, then revoke. \
            Authenticate with `Authorization: Bearer <service token or VELVET_API_KEY>`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&Bearer),
    tags(
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "tokens", description = "Tokens under management and the kickoff of a rotation"),
        (name = "rotations", description = "Rotation jobs, their stages and their live events"),
        (name = "audit", description = "The audit chain, authorization decisions and security events"),
        (name = "flags", description = "Feature flags"),
        (name = "auth", description = "Service tokens"),
    )
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A service token (`vlt_…`) or the bootstrap VELVET_API_KEY",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every route, each with its OpenAPI entry.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(document))
        .merge(crate::health::router())
        .merge(crate::metrics::router())
        .merge(crate::tokens::router())
        .merge(crate::status::router())
        .merge(crate::notifications::router())
        .merge(crate::resync::router())
        .merge(crate::rotations::router())
        .merge(crate::service_tokens::router())
        .merge(crate::audit::router())
        .merge(crate::flags::router())
}

/// The document, built once.
pub fn document_json() -> &'static [u8] {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, api) = routes().split_for_parts();
        serde_json::to_vec_pretty(&api).expect("the OpenAPI document serialises")
    })
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "getOpenApi", tag = "health",
    responses((status = 200, description = "OpenAPI 3.1 of every route", content_type = "application/json", body = Object)))]
async fn document() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], document_json())
}
