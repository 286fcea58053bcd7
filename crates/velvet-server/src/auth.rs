//! Authentication for the API. Until service tokens arrive, one bootstrap admin bearer:
//! `VELVET_API_KEY`. The handler signature says what it needs: `Admin` here.

use crate::{ApiError, AppState};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

/// A caller that presented the bootstrap admin bearer.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Who is recorded in audit records.
    pub actor: String,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let config = state.config();
        let Some(key) = &config.api_key else {
            return Err(ApiError::unauthorized(
                "no API credentials are configured: set VELVET_API_KEY",
            ));
        };
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <token>`"))?;
        let ok = presented.len() == key.expose().len()
            && bool::from(presented.as_bytes().ct_eq(key.expose().as_bytes()));
        if !ok {
            tracing::warn!(
                event = "auth_failed",
                "a request presented a wrong bearer token"
            );
            return Err(ApiError::unauthorized("the bearer token is not valid"));
        }
        Ok(Admin {
            actor: "bootstrap-admin".into(),
        })
    }
}
