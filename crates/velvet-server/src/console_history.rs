//! The console's rotations history: every job, newest first, filtered by token, status,
//! requester and time, a page at a time (the same query as `GET /api/v1/rotations`).

use crate::console::{shell, signed_in};
use crate::console_pages::{status, table, time};
use crate::{ApiError, AppState};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use maud::{Markup, html};
use std::collections::HashMap;
use velvet_core::rotation::{JobStatus, Word as _};
use velvet_store::JobQuery;

const PAGE: i64 = 50;

/// A date field (`YYYY-MM-DD`, UTC midnight) or an RFC 3339 time.
fn when(v: &str) -> Option<DateTime<Utc>> {
    if v.is_empty() {
        return None;
    }
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .or_else(|| {
            DateTime::parse_from_rfc3339(v)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
}

pub(crate) async fn rotations(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let s = match signed_in(&state, &headers).await? {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let status_filter = get("status").filter(|v| JobStatus::parse(v).is_some());
    // `before` is the last job of the page shown: its creation time and id.
    let before = get("before")
        .and_then(|id| id.split_once('~'))
        .and_then(|(at, id)| {
            let at: i64 = at.parse().ok()?;
            Some((DateTime::from_timestamp_micros(at)?, id))
        });
    let (since, until) = (get("since").and_then(when), get("until").and_then(when));
    let mut jobs = state
        .store
        .list_jobs(&JobQuery {
            token: get("token"),
            status: status_filter,
            limit: PAGE + 1,
            after: before,
            requested_by: get("requested_by"),
            // A day given as the end means through that day.
            since,
            until: until.map(|u| {
                if get("until").is_some_and(|v| v.len() == 10) {
                    u + chrono::Duration::days(1)
                } else {
                    u
                }
            }),
        })
        .await?;
    let more = jobs.len() as i64 > PAGE;
    jobs.truncate(PAGE as usize);
    let rows: Vec<Markup> = jobs
        .iter()
        .map(|j| {
            html! {
                tr {
                    td { a href=(format!("/console/rotations/{}", j.job_id)) { (j.job_id) } }
                    td { a href=(format!("/console/tokens/{}", j.token)) { (j.token) } }
                    td { (j.flow_type.as_str()) }
                    td { (j.state.stage.as_str()) }
                    (status(j.state.status.as_str(), j.state.status.as_str()))
                    td { (j.requested_by) }
                    td { (time(Some(j.created_at))) }
                    td { (time(j.finished_at)) }
                }
            }
        })
        .collect();
    // The next page keeps the filters and starts after the last job shown.
    let next = more.then(|| jobs.last()).flatten().map(|last| {
        let mut params: Vec<(String, String)> = q
            .iter()
            .filter(|(k, v)| k.as_str() != "before" && !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort();
        params.push((
            "before".into(),
            format!("{}~{}", last.created_at.timestamp_micros(), last.job_id),
        ));
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
            .collect();
        format!("/console/rotations?{}", query.join("&"))
    });
    let value = |k: &str| get(k).unwrap_or_default().to_string();
    Ok(shell(
        &s,
        "Rotations",
        html! {
            h1 { "Rotations" }
            form.toolbar #history-filters method="get" action="/console/rotations" {
                div { label for="f-token" { "Token" } input #f-token name="token" value=(value("token")); }
                div {
                    label for="f-status" { "Status" }
                    select #f-status name="status" {
                        option value="" { "any" }
                        @for st in JobStatus::ALL {
                            option value=(st.as_str()) selected[status_filter == Some(st.as_str())] { (st.as_str()) }
                        }
                    }
                }
                div { label for="f-by" { "Requested by" } input #f-by name="requested_by" placeholder="scheduler, operator:alice" value=(value("requested_by")); }
                div { label for="f-since" { "From" } input #f-since type="date" name="since" value=(value("since")); }
                div { label for="f-until" { "Through" } input #f-until type="date" name="until" value=(value("until")); }
                div { button type="submit" { "Filter" } }
            }
            (table(
                "history",
                "Rotations, newest first",
                &["Job", "Token", "Flow", "Stage", "Status", "Requested by", "Created", "Finished"],
                &rows,
            ))
            @if let Some(n) = next {
                p.pager { a #older href=(n) { "Older rotations →" } }
            }
        },
    ))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
