//! The console's pages: tokens, a token with its versions and jobs, a rotation (the modal,
//! opened), and the audit log. Rendered on the server from the store with maud, which escapes
//! every spliced value; the rotation modal's live parts are `assets/console.js`.

use crate::console::{shell, signed_in};
use crate::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use velvet_core::model::TokenStatus;
use velvet_core::rotation::Word as _;
use velvet_store::JobQuery;

fn ago(t: Option<DateTime<Utc>>) -> String {
    let Some(t) = t else { return "—".into() };
    let secs = (Utc::now() - t).num_seconds();
    let (n, unit) = match secs.abs() {
        s if s < 90 => (s, "s"),
        s if s < 90 * 60 => (s / 60, "min"),
        s if s < 36 * 3600 => (s / 3600, "h"),
        s => (s / 86_400, "d"),
    };
    if secs >= 0 {
        format!("{n} {unit} ago")
    } else {
        format!("in {n} {unit}")
    }
}

pub(crate) fn time(t: Option<DateTime<Utc>>) -> Markup {
    html! {
        @if let Some(t) = t {
            time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S UTC")) }
        } @else {
            "—"
        }
    }
}

pub(crate) fn table(id: &str, caption: &str, headers: &[&str], rows: &[Markup]) -> Markup {
    html! {
        div.table-wrap {
            table id=(id) {
                caption.visually-hidden { (caption) }
                thead { tr { @for h in headers { th scope="col" { (h) } } } }
                tbody {
                    @if rows.is_empty() {
                        tr { td colspan=(headers.len()) { "None yet." } }
                    }
                    @for r in rows { (r) }
                }
            }
        }
    }
}

fn tags(tags: &[String]) -> Markup {
    html! { @for g in tags { span.tag { (g) } } }
}

/// A status cell: its class picks the colour, its text says it.
pub(crate) fn status(class: &str, text: &str) -> Markup {
    html! { td.status.(class) { (text) } }
}

pub(crate) async fn tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = match signed_in(&state, &headers).await? {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    let tokens = state.store.list_tokens().await?;
    // What each active job is doing: a failed or paused job needs a person, not patience.
    let mut active = std::collections::HashMap::new();
    for id in tokens.iter().filter_map(|t| t.active_job_id.as_ref()) {
        if let Some(j) = state.store.get_job(id).await? {
            active.insert(id.clone(), (j.state.status, j.state.awaiting));
        }
    }
    let summary = crate::status::summary(&state).await?;
    let overdue: std::collections::HashSet<&str> =
        summary.overdue.iter().map(|i| i.token.as_str()).collect();
    let rows: Vec<Markup> = tokens
        .iter()
        .filter(|t| t.status == TokenStatus::Active)
        .map(|t| {
            let job_state = t.active_job_id.as_ref().and_then(|j| active.get(j));
            let (text, class) = if let Some((s, awaiting)) = job_state {
                use velvet_core::rotation::{Awaiting, JobStatus};
                match (s, awaiting) {
                    (JobStatus::Failed, _) => ("rotation failed", "failed"),
                    (_, Some(Awaiting::ProceedDistribute)) => {
                        ("awaiting distribute", "awaiting_confirmation")
                    }
                    (_, Some(Awaiting::ProceedRevoke)) => {
                        ("awaiting revoke", "awaiting_confirmation")
                    }
                    (JobStatus::Waiting, _) => ("grace period", "waiting"),
                    _ => ("rotating", "running"),
                }
            } else if t.active_job_id.is_some() {
                ("rotating", "running")
            } else if overdue.contains(t.name.as_str()) {
                ("overdue", "failed")
            } else if t.next_rotation_at.is_some_and(|n| n <= Utc::now()) {
                ("due", "pending")
            } else if t.current_version.is_none() {
                ("no value yet", "pending")
            } else {
                ("ok", "verified")
            };
            // A version is as old as the rotation that made it current (or the adoption).
            let age = ago(t.last_rotated_at.or(Some(t.created_at))).replace(" ago", " old");
            html! {
                tr {
                    td { a href=(format!("/console/tokens/{}", t.name)) { (t.name) } }
                    (status(class, text))
                    td { (t.source_kind) }
                    td {
                        @if let Some(v) = t.current_version { "v" (v) ", " (age) } @else { "—" }
                    }
                    td { (ago(t.last_rotated_at)) }
                    td { (ago(t.next_rotation_at)) }
                    td { (t.consumer_count) }
                    td {
                        @if let Some(j) = &t.active_job_id {
                            a href=(format!("/console/rotations/{}", j)) { (j) }
                        } @else { "—" }
                    }
                    td { (tags(&t.tags)) }
                }
            }
        })
        .collect();
    Ok(shell(
        &s,
        "Tokens",
        html! {
            (attention(&summary))
            h1 { "Tokens" }
            div.toolbar {
                div {
                    label for="token-filter" { "Filter" }
                    input id="token-filter" type="search" placeholder="name, source or tag";
                }
            }
            (table(
                "tokens",
                "Tokens under management",
                &[
                    "Token",
                    "Status",
                    "Source",
                    "Current",
                    "Last rotated",
                    "Next due",
                    "Consumers",
                    "Active job",
                    "Tags",
                ],
                &rows,
            ))
        },
    ))
}

/// A consumer's latest probe: its state, how long ago, and what it found.
fn health(h: Option<&velvet_core::model::Health>) -> Markup {
    match h {
        Some(h) => html! {
            td.status.(h.state.as_str()) title=(h.detail) {
                (h.state.as_str()) " · " (ago(Some(h.checked_at)))
            }
        },
        None => html! { td { "not probed" } },
    }
}

/// How the token is scheduled, in the file's words.
fn schedule_text(spec: &velvet_core::config::TokenSpec) -> String {
    use velvet_core::duration::format;
    match (&spec.schedule, spec.rotate_every) {
        (Some(s), _) => format!(
            "cron {} ({}), window {}, jitter {}",
            s.cron,
            s.timezone,
            format(s.window),
            format(s.jitter)
        ),
        (None, Some(d)) => format!("every {}", format(d)),
        (None, None) => "none (rotated on demand)".into(),
    }
}

/// The current version's age, against `max_age` when the token has one.
fn age_text(since: Option<DateTime<Utc>>, max_age: Option<std::time::Duration>) -> String {
    let Some(since) = since else {
        return "—".into();
    };
    let age = (Utc::now() - since).to_std().unwrap_or_default();
    let shown = velvet_core::duration::format(std::time::Duration::from_secs(age.as_secs()));
    match max_age {
        Some(m) if age >= m => {
            format!("{shown}, past max_age {}", velvet_core::duration::format(m))
        }
        Some(m) => format!("{shown} of max_age {}", velvet_core::duration::format(m)),
        None => shown,
    }
}

/// What needs a person, first on the home page: the same summary as `velvet status`.
fn attention(s: &velvet_core::attention::Status) -> Markup {
    let sections: [(&str, &str, &[velvet_core::attention::Item]); 6] = [
        ("failed", "Failed rotations", &s.failed),
        ("awaiting", "Awaiting a person", &s.awaiting),
        ("overdue", "Overdue", &s.overdue),
        ("due_soon", "Due soon", &s.due_soon),
        ("drifted", "Drifted consumers", &s.drifted),
        ("stale", "Stale consumers", &s.stale),
    ];
    html! {
        section #attention aria-labelledby="attention-heading" {
            h2 #attention-heading { "Needs attention" }
            @if !s.needs_attention {
                p.all-clear { "Nothing needs attention." }
            }
            @for (class, heading, items) in sections {
                @if !items.is_empty() {
                    h3 { (heading) " (" (items.len()) ")" }
                    ul.(class) {
                        @for i in items {
                            li {
                                a href=(format!("/console/tokens/{}", i.token)) { (i.token) }
                                @if let Some(j) = &i.job_id {
                                    " · " a href=(format!("/console/rotations/{j}")) { (j) }
                                }
                                ": " (i.detail)
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The rotation modal: stages, kickoff, awaited action, gate step, live table and timeline.
fn rotation_modal(token: &str, job: Option<&str>) -> Markup {
    html! {
        dialog id="rotation" aria-labelledby="rotation-title" data-token=(token) data-job=[job] {
            header {
                h2 id="rotation-title" { "Rotate " (token) }
                button type="button" id="close-rotation" class="secondary" { "Close" }
            }
            div.body {
                ol.stages aria-label="Stages" {
                    li { "1 · Mint" } li { "2 · Distribute" } li { "3 · Revoke" }
                }
                form id="kickoff" {
                    label for="flow" { "Flow" }
                    select id="flow" name="flow" {
                        option value="" { "the token's own" }
                        option value="staged" { "staged: confirm each stage" }
                        option value="auto" { "auto: no pauses, grace before revoke" }
                        option value="emergency" { "emergency: leaked, no grace" }
                    }
                    label for="reason" { "Reason" }
                    input id="reason" name="reason" maxlength="1000";
                    div.actions { button type="submit" { "Start rotation" } }
                }
                p id="job-status" role="status" aria-live="polite" {}
                p id="rotation-error" class="error" role="alert" {}
                div id="actions" class="actions" {}
                section id="gate" hidden aria-labelledby="gate-title" {
                    h3 id="gate-title" { "Revoke the previous value" }
                    p id="gate-requires" {}
                    div.field {
                        label for="gate-totp" { "Your TOTP code" }
                        input id="gate-totp" inputmode="numeric" autocomplete="one-time-code" maxlength="6";
                    }
                    div.actions {
                        button type="button" id="gate-approve" class="secondary" { "Approve" }
                        button type="button" id="gate-revoke" class="danger" { "Revoke previous value" }
                    }
                }
                h3 { "Subscribers" }
                div.table-wrap {
                    table id="subscribers" {
                        thead {
                            tr {
                                @for h in ["Consumer", "Kind", "Status", "Attempts", "Last error", "Fingerprint", "Duration"] {
                                    th scope="col" { (h) }
                                }
                            }
                        }
                        tbody {}
                    }
                }
                h3 { "Timeline" }
                svg id="timeline" class="timeline" role="img" aria-label="Each consumer's write over time" {}
            }
        }
    }
}

pub(crate) async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let s = match signed_in(&state, &headers).await? {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    let view = state
        .store
        .token_view(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("token `{name}` not found")))?;
    let jobs = state
        .store
        .list_jobs(&JobQuery {
            token: Some(&name),
            status: None,
            limit: 10,
            ..JobQuery::default()
        })
        .await?;
    let t = &view.token;
    let consumers: Vec<Markup> = view
        .consumers
        .iter()
        .map(|c| {
            html! {
                tr {
                    td { (c.name) }
                    td { (c.kind) }
                    td { (c.lock_key.as_deref().unwrap_or_default()) }
                    (health(c.health.as_ref()))
                }
            }
        })
        .collect();
    let config = state.config();
    let spec = config.token(&name);
    let schedule = spec.map(schedule_text).unwrap_or_else(|| "—".into());
    let blackouts: Vec<_> = config
        .blackouts
        .iter()
        .filter_map(|b| b.compile())
        .collect();
    let blackout = velvet_core::schedule::blackout_at(&blackouts, Utc::now())
        .filter(|_| spec.is_some_and(|s| s.cadence().is_some()));
    let max_age = spec.and_then(|s| s.max_age);
    let versions: Vec<Markup> = view
        .versions
        .iter()
        .map(|v| {
            html! {
                tr {
                    td { "v" (v.version) }
                    (status(v.label.as_str(), v.label.as_str()))
                    td.mono { (v.fingerprint) }
                    td { (time(Some(v.created_at))) }
                    td { (time(v.activated_at)) }
                    td { (time(v.revoked_at)) }
                }
            }
        })
        .collect();
    let job_rows: Vec<Markup> = jobs
        .iter()
        .map(|j| {
            html! {
                tr {
                    td { a href=(format!("/console/rotations/{}", j.job_id)) { (j.job_id) } }
                    td { (j.flow_type.as_str()) }
                    td { (j.state.stage.as_str()) }
                    (status(j.state.status.as_str(), j.state.status.as_str()))
                    td { (j.requested_by) }
                    td { (time(Some(j.created_at))) }
                }
            }
        })
        .collect();
    let ui = crate::flags::enabled(&state, "velvet_v2_rotation_ui").await?;
    // A viewer or auditor may not start a rotation: no button that can only fail.
    let may_rotate = s
        .role
        .grants(velvet_core::identity::Permission::RotationsKickoff);
    Ok(shell(
        &s,
        &t.name,
        html! {
            h1 { (t.name) }
            p { (t.description) }
            @if ui && may_rotate {
                div.actions { button type="button" id="open-rotation" { "Rotate…" } }
                (rotation_modal(&t.name, None))
            }
            div.grid.card {
                div { span { "Source" } (t.source_kind) }
                div {
                    span { "Current version" }
                    @if let Some(v) = t.current_version { "v" (v) } @else { "—" }
                }
                div { span { "Last rotated" } (ago(t.last_rotated_at)) }
                div #schedule { span { "Schedule" } (schedule) }
                div #next-start {
                    span { "Next start" }
                    (ago(t.next_rotation_at))
                    @if let Some(b) = &blackout {
                        br; span.status.waiting { "blackout " (b.name) " until " (time(Some(b.until))) }
                    }
                }
                div #age {
                    span { "Age" }
                    (age_text(t.last_rotated_at, max_age))
                }
                div #source-health {
                    span { "Source check" }
                    @match &view.source_health {
                        Some(h) => span.status.(h.state.as_str()) title=(h.detail) { (h.state.as_str()) " · " (ago(Some(h.checked_at))) },
                        None => "not probed yet",
                    }
                }
                div { span { "Tags" } (tags(&t.tags)) }
            }
            h2 { "Consumers" }
            (table("consumers", "Consumers", &["Consumer", "Kind", "Lock key", "Health"], &consumers))
            h2 { "Versions" }
            (table(
                "versions",
                "Versions",
                &["Version", "Label", "Fingerprint", "Created", "Activated", "Revoked"],
                &versions,
            ))
            h2 { "Recent rotations" }
            (table(
                "jobs",
                "Recent rotations",
                &["Job", "Flow", "Stage", "Status", "Requested by", "Created"],
                &job_rows,
            ))
        },
    ))
}

pub(crate) async fn rotation(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    let s = match signed_in(&state, &headers).await? {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    let job = crate::rotations::load(&state, &job_id).await?;
    Ok(shell(
        &s,
        &format!("Rotation {}", job.job_id),
        html! {
            h1 { "Rotation of " a href=(format!("/console/tokens/{}", job.token)) { (job.token) } }
            p.mono { (job.job_id) }
            div.actions { button type="button" id="open-rotation" { "Show rotation" } }
            (rotation_modal(&job.token, Some(&job.job_id)))
        },
    ))
}

pub(crate) async fn audit(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = match signed_in(&state, &headers).await? {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    // The page shows what the API would: audit.read or nothing (design §10).
    if !s.role.grants(velvet_core::identity::Permission::AuditRead) {
        return Err(ApiError::forbidden(format!(
            "role `{}` does not grant velvet.audit.read, so the audit log is not shown",
            s.role.as_str()
        )));
    }
    let report = state.store.verify_audit(&state.keyring, None).await?;
    let after = (report.entries as i64 - 50).max(0);
    let mut events = state.store.audit_page(after, 50).await?;
    events.reverse();
    let decisions = state.store.list_decisions(None, None, 30).await?;
    let security = state.store.list_security_events(30).await?;
    let audit_rows: Vec<Markup> = events
        .iter()
        .map(|e| {
            html! {
                tr {
                    td { (e.seq) } td { (time(Some(e.at))) } td { (e.actor) }
                    td { (e.action) } td { (e.target) } td { (e.outcome) }
                }
            }
        })
        .collect();
    let decision_rows: Vec<Markup> = decisions
        .iter()
        .map(|d| {
            let class = if d.decision == "allow" {
                "verified"
            } else {
                "failed"
            };
            html! {
                tr {
                    td { (time(Some(d.at))) }
                    td { (d.subject) }
                    td { (d.permission) }
                    td { (d.resource) }
                    (status(class, &d.decision))
                    td {
                        @for (i, st) in d.steps.iter().enumerate() {
                            @if i > 0 { " → " }
                            (st.rule) " " (st.outcome)
                        }
                    }
                }
            }
        })
        .collect();
    let security_rows: Vec<Markup> = security
        .iter()
        .map(|e| {
            html! {
                tr {
                    td { (time(Some(e.at))) } td { (e.kind) } td { (e.severity) }
                    td { (e.subject.as_deref().unwrap_or_default()) } td { (e.detail) }
                }
            }
        })
        .collect();
    Ok(shell(
        &s,
        "Audit",
        html! {
            h1 { "Audit" }
            @if report.ok {
                p.chain-ok id="chain" {
                    "Chain verified: " (report.entries) " records, head "
                    (report.head.as_deref().unwrap_or("—"))
                }
            } @else {
                p.chain-bad id="chain" {
                    "Chain broken at record " (report.first_bad_seq.unwrap_or_default()) ": "
                    (report.problem.as_deref().unwrap_or_default())
                }
            }
            h2 { "Latest records" }
            (table(
                "audit",
                "Audit records",
                &["Seq", "At", "Actor", "Action", "Target", "Outcome"],
                &audit_rows,
            ))
            h2 { "Decisions" }
            (table(
                "decisions",
                "Decisions",
                &["At", "Subject", "Permission", "Resource", "Decision", "Steps"],
                &decision_rows,
            ))
            h2 { "Security events" }
            (table(
                "security-events",
                "Security events",
                &["At", "Kind", "Severity", "Subject", "Detail"],
                &security_rows,
            ))
        },
    ))
}
