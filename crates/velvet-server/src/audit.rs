//! `/api/v1/audit`: the tamper-evident log, page by page, and a walk of the whole chain.

use crate::auth::{AuditRead, Can};
use crate::error::{ErrorBody, RateLimited, Unauthorized, Unavailable};
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Query, State};
use serde::Serialize;
use std::collections::HashMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use velvet_core::audit::AuditEntry;
use velvet_core::decision::{Decision, SecurityEvent};

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(verify))
        .routes(routes!(decisions))
        .routes(routes!(security_events))
}

/// Query parameters, each checked by name: unknown ones and bad numbers answer 422 naming them.
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    pub(crate) fn new(q: HashMap<String, String>, allowed: &[&str]) -> Result<Self, ApiError> {
        if let Some(k) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::validation(format!(
                "{k}: unknown query parameter; allowed: {}",
                allowed.join(", ")
            )));
        }
        Ok(Self(q))
    }

    pub(crate) fn int(
        &self,
        name: &str,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ApiError> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::validation(format!(
                        "{name}: `{v}` is not a whole number from {min} to {max}"
                    ))
                }),
        }
    }

    pub(crate) fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct AuditPage {
    /// In chain order.
    pub events: Vec<AuditEntry>,
    /// Pass as `after_seq` for the next page; null when this page was the end for now.
    pub next_after_seq: Option<i64>,
}

/// The audit chain, a page at a time.
#[utoipa::path(get, path = "/api/v1/audit", operation_id = "listAudit", tag = "audit", security(("bearer" = [])),
    params(
        ("after_seq" = Option<i64>, Query, minimum = 0, description = "Records after this sequence number (default 0)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Page size (default 100)"),
    ),
    responses(
        (status = 200, description = "A page of records", body = AuditPage),
        Unauthorized,
        Unavailable,
        (status = 403, description = "`forbidden`: the role lacks audit.read", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a query parameter is wrong or unknown", body = ErrorBody),
        RateLimited,
    ))]
async fn page(
    _: Can<AuditRead>,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<AuditPage>, ApiError> {
    let p = Params::new(q, &["after_seq", "limit"])?;
    let after = p.int("after_seq", 0, 0, i64::MAX)?;
    let limit = p.int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    let events = state.store.audit_page(after, limit).await?;
    // A full page may have more behind it; a short one is the end for now.
    let next = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    Ok(Json(AuditPage {
        events,
        next_after_seq: next,
    }))
}

/// The walk of the whole chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct Verification {
    /// Every record's hash and link hold.
    ok: bool,
    entries: u64,
    /// `{seq}:{hash}` of the last record, to keep off the machine.
    head: Option<String>,
    first_bad_seq: Option<i64>,
    /// Why the first bad record is bad.
    problem: Option<String>,
}

/// Walk the whole audit chain and check every hash and link.
#[utoipa::path(get, path = "/api/v1/audit/verify", operation_id = "verifyAudit", tag = "audit", security(("bearer" = [])),
    responses(
        (status = 200, description = "The result of the walk (`ok` false names the first bad record)", body = Verification),
        Unauthorized,
        Unavailable,
        (status = 403, description = "`forbidden`: the role lacks audit.read", body = ErrorBody),
        RateLimited,
    ))]
async fn verify(
    _: Can<AuditRead>,
    State(state): State<AppState>,
) -> Result<Json<Verification>, ApiError> {
    let report = state.store.verify_audit(&state.keyring, None).await?;
    Ok(Json(Verification {
        ok: report.ok,
        entries: report.entries,
        head: report.head,
        first_bad_seq: report.first_bad_seq,
        problem: report.problem,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionList {
    /// Newest first.
    decisions: Vec<Decision>,
}

/// Authorization decisions with their ordered trace, newest first.
#[utoipa::path(get, path = "/api/v1/audit/decisions", operation_id = "listDecisions", tag = "audit", security(("bearer" = [])),
    params(
        ("subject" = Option<String>, Query, description = "Only this subject's (`token:NAME`, `bootstrap-admin`, `anonymous`)"),
        ("decision" = Option<String>, Query, pattern = "^(allow|deny)$", description = "`allow` or `deny`"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "How many (default 100)"),
    ),
    responses(
        (status = 200, description = "Decisions", body = DecisionList),
        Unauthorized,
        Unavailable,
        (status = 403, description = "`forbidden`: the role lacks audit.read", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a query parameter is wrong or unknown", body = ErrorBody),
        RateLimited,
    ))]
async fn decisions(
    _: Can<AuditRead>,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<DecisionList>, ApiError> {
    let p = Params::new(q, &["subject", "decision", "limit"])?;
    let limit = p.int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    let decision = p.str("decision");
    if let Some(d) = decision
        && d != "allow"
        && d != "deny"
    {
        return Err(ApiError::validation(format!(
            "decision: `{d}` is not allow or deny"
        )));
    }
    let found = state
        .store
        .list_decisions(p.str("subject"), decision, limit)
        .await?;
    Ok(Json(DecisionList { decisions: found }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecurityEventList {
    /// Newest first.
    security_events: Vec<SecurityEvent>,
}

/// Security events (failed authentication, rate limiting, denials, revocations, gate refusals),
/// newest first.
#[utoipa::path(get, path = "/api/v1/audit/security-events", operation_id = "listSecurityEvents", tag = "audit", security(("bearer" = [])),
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "How many (default 100)")),
    responses(
        (status = 200, description = "Security events", body = SecurityEventList),
        Unauthorized,
        Unavailable,
        (status = 403, description = "`forbidden`: the role lacks audit.read", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a query parameter is wrong or unknown", body = ErrorBody),
        RateLimited,
    ))]
async fn security_events(
    _: Can<AuditRead>,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<SecurityEventList>, ApiError> {
    let p = Params::new(q, &["limit"])?;
    let limit = p.int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    let events = state.store.list_security_events(limit).await?;
    Ok(Json(SecurityEventList {
        security_events: events,
    }))
}
