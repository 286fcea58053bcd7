//! The one error type handlers return, rendered as `{"error": code, "message": text}` with the
//! status codes of design §5. Internal causes are logged, never echoed.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Every error: `{"error": code, "message": text}`, plus the fields some codes carry.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// `unauthorized`, `forbidden`, `gate_required`, `gate_denied`, `not_found`, `job_active`,
    /// `invalid_transition`, `validation_failed`, `payload_too_large`, `rate_limited`,
    /// `not_enabled`, `audit_unavailable`, `unavailable` (the store is busy: retry after
    /// `Retry-After`) or `internal`.
    pub error: String,
    /// What went wrong and what to do about it, for a human.
    pub message: String,
    /// `job_active`: the token's active job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// `invalid_transition`: where the job is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<velvet_core::rotation::Stage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<velvet_core::rotation::JobStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable)]
    pub awaiting: Option<velvet_core::rotation::Awaiting>,
}

/// `401 unauthorized`, which every authenticated route may answer before its handler runs.
#[derive(utoipa::IntoResponses)]
#[response(status = 401, description = "`unauthorized`: no valid bearer token")]
#[allow(dead_code)] // only its OpenAPI entry is used: the answer itself is an `ApiError`
pub struct Unauthorized(ErrorBody);

/// `429 rate_limited` of the authentication limiter, shared by every authenticated route.
#[derive(utoipa::IntoResponses)]
#[response(status = 429, description = "`rate_limited`: too many failed authentications",
    headers(("Retry-After" = u16, description = "Seconds until this address may try again")))]
#[allow(dead_code)] // as `Unauthorized`
pub struct RateLimited(ErrorBody);

/// `503 unavailable`: the store is busy or unreachable; nothing was done, and the same request
/// may succeed after `Retry-After`.
#[derive(utoipa::IntoResponses)]
#[response(status = 503, description = "`unavailable`: the store is busy, so nothing was done; retry after `Retry-After` seconds",
    headers(("Retry-After" = u16, description = "Seconds to wait before retrying")))]
#[allow(dead_code)] // as `Unauthorized`
pub struct Unavailable(ErrorBody);

impl From<velvet_store::StoreError> for ApiError {
    fn from(e: velvet_store::StoreError) -> Self {
        use velvet_store::StoreError as S;
        match e {
            S::NotFound(what) => Self::not_found(format!("{what} not found")),
            S::JobActive(id) => Self::new(
                StatusCode::CONFLICT,
                "job_active",
                format!("the token already has an active rotation job {id}"),
            )
            .with("job_id", id),
            S::IdempotencyMismatch => Self::validation(
                "Idempotency-Key: this key was used with a different request within 24 h; use a new key",
            ),
            S::AuditUnavailable(m) => {
                tracing::error!(event = "audit_write_failed", severity = "critical", error = %m, "an audited action was refused because its audit record could not be written");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    format!("the audit log cannot be written, so nothing was done: {m}"),
                )
            }
            // Busy, pool exhausted or connection lost: the same request may succeed shortly, so
            // say so (a client backs off) instead of a 500 that reads as a bug.
            other if other.retryable() => {
                tracing::warn!(error = %other, "store busy; answered 503 unavailable");
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the store is busy or unreachable, so nothing was done; retry after the Retry-After seconds",
                );
                e.retry_after = Some(1);
                e
            }
            other => Self::internal(&other),
        }
    }
}

impl From<velvet_engine::ServiceError> for ApiError {
    fn from(e: velvet_engine::ServiceError) -> Self {
        use velvet_engine::ServiceError as S;
        let conflict = |message: String, state: velvet_core::job_view::JobStateView| {
            Self::new(StatusCode::CONFLICT, "invalid_transition", message)
                .with("stage", state.stage)
                .with("status", state.status)
                .with("awaiting", state.awaiting)
        };
        match e {
            S::NotFound(id) => Self::not_found(format!("rotation job `{id}` not found")),
            S::Invalid(e) => conflict(e.to_string(), e.state.into()),
            S::Conflict { message, state } => conflict(message, state),
            S::Refused { error, message } => Self::new(StatusCode::FORBIDDEN, error, message),
            S::Validation(m) => Self::validation(m),
            e @ S::StepUpLocked { retry_after, .. } => {
                Self::rate_limited(e.to_string(), retry_after.min(u16::MAX as u64) as u16)
            }
            S::Store(e) => e.into(),
            e @ S::Internal(_) => Self::internal(&e),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Fields the contract adds for some codes (`job_id` for `job_active`; `stage`, `status`
    /// and `awaiting` for `invalid_transition`).
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Seconds for a `Retry-After` header (429, and 503 `unavailable`).
    pub retry_after: Option<u16>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: serde_json::Map::new(),
            retry_after: None,
        }
    }

    pub fn rate_limited(message: impl Into<String>, retry_after: u16) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        e.retry_after = Some(retry_after);
        e
    }

    pub fn with(mut self, key: &str, value: impl serde::Serialize) -> Self {
        self.extra.insert(
            key.into(),
            serde_json::to_value(value).expect("serialisable"),
        );
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
    }

    pub fn not_enabled(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "not_enabled", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// Logs the cause and answers 500 without it.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), self.code.into());
        body.insert("message".into(), self.message.into());
        body.extend(self.extra);
        let mut response = (self.status, Json(serde_json::Value::Object(body))).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use velvet_store::StoreError;

    fn database(retryable: bool) -> StoreError {
        StoreError::Database {
            context: "claiming a job",
            retryable,
            source: "connection pool timed out".into(),
        }
    }

    #[test]
    fn a_busy_store_answers_503_unavailable_with_retry_after_and_a_broken_one_500() {
        for e in [
            ApiError::from(database(true)),
            ApiError::from(velvet_engine::ServiceError::Store(database(true))),
        ] {
            assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(e.code, "unavailable");
            let response = e.into_response();
            assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "1");
        }
        let e = ApiError::from(database(false));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !e.message.contains("pool"),
            "a 500 keeps its cause in the log"
        );
    }
}
