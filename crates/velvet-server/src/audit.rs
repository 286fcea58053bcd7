//! `/api/v1/audit`: the tamper-evident log, page by page, and a walk of the whole chain.

use crate::auth::{AuditRead, Can};
use crate::{ApiError, AppState};
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/audit", get(page))
        .route("/api/v1/audit/verify", get(verify))
        .route("/api/v1/audit/decisions", get(decisions))
        .route("/api/v1/audit/security-events", get(security_events))
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

async fn page(
    _: Can<AuditRead>,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let p = Params::new(q, &["after_seq", "limit"])?;
    let after = p.int("after_seq", 0, 0, i64::MAX)?;
    let limit = p.int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    let events = state.store.audit_page(after, limit).await?;
    // A full page may have more behind it; a short one is the end for now.
    let next = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    Ok(Json(json!({"events": events, "next_after_seq": next})))
}

async fn verify(_: Can<AuditRead>, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let report = state.store.verify_audit(&state.keyring, None).await?;
    Ok(Json(json!({
        "ok": report.ok,
        "entries": report.entries,
        "head": report.head,
        "first_bad_seq": report.first_bad_seq,
        "problem": report.problem,
    })))
}

async fn decisions(
    _: Can<AuditRead>,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({"decisions": found})))
}

async fn security_events(
    _: Can<AuditRead>,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let p = Params::new(q, &["limit"])?;
    let limit = p.int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?;
    let events = state.store.list_security_events(limit).await?;
    Ok(Json(json!({"security_events": events})))
}
