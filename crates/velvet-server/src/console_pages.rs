//! The console's pages: tokens, a token with its versions and jobs, a rotation (the modal,
//! opened), and the audit log. Rendered on the server from the store; the rotation modal's
//! live parts are `assets/console.js`.

use crate::console::{esc, shell, signed_in};
use crate::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use velvet_core::model::TokenStatus;
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
        format!("in {} {unit}", -n)
    }
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| {
        format!(
            "<time datetime=\"{}\">{}</time>",
            t.to_rfc3339(),
            t.format("%Y-%m-%d %H:%M:%S UTC")
        )
    })
    .unwrap_or_else(|| "—".into())
}

fn table(id: &str, caption: &str, headers: &[&str], rows: &[String]) -> String {
    let head: String = headers
        .iter()
        .map(|h| format!("<th scope=\"col\">{h}</th>"))
        .collect();
    let body = if rows.is_empty() {
        format!("<tr><td colspan=\"{}\">None yet.</td></tr>", headers.len())
    } else {
        rows.concat()
    };
    format!(
        "<div class=\"table-wrap\"><table id=\"{id}\"><caption class=\"visually-hidden\">{caption}</caption>\
         <thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )
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
    let rows: Vec<String> = tokens
        .iter()
        .filter(|t| t.status == TokenStatus::Active)
        .map(|t| {
            let tags: String = t
                .tags
                .iter()
                .map(|g| format!("<span class=\"tag\">{}</span>", esc(g)))
                .collect();
            let job = t
                .active_job_id
                .as_ref()
                .map(|j| format!("<a href=\"/console/rotations/{0}\">{0}</a>", esc(j)))
                .unwrap_or_else(|| "—".into());
            let job_state = t.active_job_id.as_ref().and_then(|j| active.get(j));
            let (status, class) = if let Some((s, awaiting)) = job_state {
                use velvet_core::rotation::{Awaiting, JobStatus};
                match (s, awaiting) {
                    (JobStatus::Failed, _) => ("rotation failed", "failed"),
                    (_, Some(Awaiting::ProceedDistribute)) => {
                        ("awaiting distribute", "awaiting_confirmation")
                    }
                    (_, Some(Awaiting::ProceedRevoke)) => ("awaiting revoke", "awaiting_confirmation"),
                    (JobStatus::Waiting, _) => ("grace period", "waiting"),
                    _ => ("rotating", "running"),
                }
            } else if t.active_job_id.is_some() {
                ("rotating", "running")
            } else if t.next_rotation_at.is_some_and(|n| n <= Utc::now()) {
                ("overdue", "failed")
            } else if t.current_version.is_none() {
                ("no value yet", "pending")
            } else {
                ("ok", "verified")
            };
            // A version is as old as the rotation that made it current (or the adoption).
            let age = ago(t.last_rotated_at.or(Some(t.created_at))).replace(" ago", " old");
            let current = t
                .current_version
                .map(|v| format!("v{v}, {age}"))
                .unwrap_or_else(|| "—".into());
            format!(
                "<tr><td><a href=\"/console/tokens/{0}\">{0}</a></td><td class=\"status {class}\">{status}</td><td>{1}</td><td>{2}</td><td>{3}</td><td>{4}</td><td>{5}</td><td>{job}</td><td>{tags}</td></tr>",
                esc(&t.name),
                esc(&t.source_kind),
                current,
                ago(t.last_rotated_at),
                ago(t.next_rotation_at),
                t.consumer_count,
            )
        })
        .collect();
    Ok(shell(
        &s,
        "Tokens",
        &format!(
            "<h1>Tokens</h1><div class=\"toolbar\"><div><label for=\"token-filter\">Filter</label>\
             <input id=\"token-filter\" type=\"search\" placeholder=\"name, source or tag\"></div></div>{}",
            table(
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
                    "Tags"
                ],
                &rows
            )
        ),
    ))
}

/// The rotation modal: stages, kickoff, awaited action, gate step, live table and timeline.
fn rotation_modal(token: &str, job: Option<&str>) -> String {
    let job_attr = job
        .map(|j| format!(" data-job=\"{}\"", esc(j)))
        .unwrap_or_default();
    format!(
        "<dialog id=\"rotation\" aria-labelledby=\"rotation-title\" data-token=\"{t}\"{job_attr}>\
         <header><h2 id=\"rotation-title\">Rotate {t}</h2>\
         <button type=\"button\" id=\"close-rotation\" class=\"secondary\">Close</button></header><div class=\"body\">\
         <ol class=\"stages\" aria-label=\"Stages\"><li>1 · Mint</li><li>2 · Distribute</li><li>3 · Revoke</li></ol>\
         <form id=\"kickoff\"><label for=\"flow\">Flow</label><select id=\"flow\" name=\"flow\">\
         <option value=\"\">the token's own</option><option value=\"staged\">staged: confirm each stage</option>\
         <option value=\"auto\">auto: no pauses, grace before revoke</option>\
         <option value=\"emergency\">emergency: leaked, no grace</option></select>\
         <label for=\"reason\">Reason</label><input id=\"reason\" name=\"reason\" maxlength=\"1000\">\
         <div class=\"actions\"><button type=\"submit\">Start rotation</button></div></form>\
         <p id=\"job-status\" role=\"status\" aria-live=\"polite\"></p>\
         <p id=\"rotation-error\" class=\"error\" role=\"alert\"></p>\
         <div id=\"actions\" class=\"actions\"></div>\
         <section id=\"gate\" hidden aria-labelledby=\"gate-title\"><h3 id=\"gate-title\">Revoke the previous value</h3>\
         <p id=\"gate-requires\"></p><div class=\"field\"><label for=\"gate-totp\">Your TOTP code</label>\
         <input id=\"gate-totp\" inputmode=\"numeric\" autocomplete=\"one-time-code\" maxlength=\"6\"></div>\
         <div class=\"actions\"><button type=\"button\" id=\"gate-approve\" class=\"secondary\">Approve</button>\
         <button type=\"button\" id=\"gate-revoke\" class=\"danger\">Revoke previous value</button></div></section>\
         <h3>Subscribers</h3><div class=\"table-wrap\"><table id=\"subscribers\"><thead><tr>\
         <th scope=\"col\">Consumer</th><th scope=\"col\">Kind</th><th scope=\"col\">Status</th><th scope=\"col\">Attempts</th>\
         <th scope=\"col\">Last error</th><th scope=\"col\">Fingerprint</th><th scope=\"col\">Duration</th></tr></thead><tbody></tbody></table></div>\
         <h3>Timeline</h3><svg id=\"timeline\" class=\"timeline\" role=\"img\" aria-label=\"Each consumer's write over time\"></svg>\
         </div></dialog>",
        t = esc(token)
    )
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
            after: None,
        })
        .await?;
    let t = &view.token;
    let consumers: Vec<String> = view
        .consumers
        .iter()
        .map(|c| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.name),
                esc(&c.kind),
                c.lock_key.as_deref().map(esc).unwrap_or_default()
            )
        })
        .collect();
    let versions: Vec<String> = view
        .versions
        .iter()
        .map(|v| {
            format!(
                "<tr><td>v{}</td><td class=\"status {1}\">{1}</td><td class=\"mono\">{2}</td><td>{3}</td><td>{4}</td><td>{5}</td></tr>",
                v.version,
                v.label.as_str(),
                esc(&v.fingerprint),
                time(Some(v.created_at)),
                time(v.activated_at),
                time(v.revoked_at)
            )
        })
        .collect();
    let job_rows: Vec<String> = jobs
        .iter()
        .map(|j| {
            format!(
                "<tr><td><a href=\"/console/rotations/{0}\">{0}</a></td><td>{1}</td><td>{2}</td><td class=\"status {3}\">{3}</td><td>{4}</td><td>{5}</td></tr>",
                esc(&j.job_id),
                j.flow_type.as_str(),
                j.state.stage.as_str(),
                j.state.status.as_str(),
                esc(&j.requested_by),
                time(Some(j.created_at))
            )
        })
        .collect();
    let ui = crate::flags::enabled(&state, "velvet_v2_rotation_ui").await?;
    // A viewer or auditor may not start a rotation: no button that can only fail.
    let may_rotate = s
        .role
        .grants(velvet_core::identity::Permission::RotationsKickoff);
    let rotate = if ui && may_rotate {
        format!(
            "<div class=\"actions\"><button type=\"button\" id=\"open-rotation\">Rotate…</button></div>{}",
            rotation_modal(&t.name, None)
        )
    } else {
        String::new()
    };
    let tags: String = t
        .tags
        .iter()
        .map(|g| format!("<span class=\"tag\">{}</span>", esc(g)))
        .collect();
    Ok(shell(
        &s,
        &t.name,
        &format!(
            "<h1>{name}</h1><p>{desc}</p>{rotate}<div class=\"grid card\">\
             <div><span>Source</span>{source}</div><div><span>Current version</span>{current}</div>\
             <div><span>Last rotated</span>{last}</div><div><span>Next due</span>{next}</div><div><span>Tags</span>{tags}</div></div>\
             <h2>Consumers</h2>{consumers}<h2>Versions</h2>{versions}<h2>Recent rotations</h2>{jobs}",
            name = esc(&t.name),
            desc = esc(&t.description),
            source = esc(&t.source_kind),
            current = t
                .current_version
                .map(|v| format!("v{v}"))
                .unwrap_or_else(|| "—".into()),
            last = ago(t.last_rotated_at),
            next = ago(t.next_rotation_at),
            consumers = table(
                "consumers",
                "Consumers",
                &["Consumer", "Kind", "Lock key"],
                &consumers
            ),
            versions = table(
                "versions",
                "Versions",
                &[
                    "Version",
                    "Label",
                    "Fingerprint",
                    "Created",
                    "Activated",
                    "Revoked"
                ],
                &versions
            ),
            jobs = table(
                "jobs",
                "Recent rotations",
                &["Job", "Flow", "Stage", "Status", "Requested by", "Created"],
                &job_rows
            ),
        ),
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
        &format!(
            "<h1>Rotation of <a href=\"/console/tokens/{0}\">{0}</a></h1><p class=\"mono\">{1}</p>\
             <div class=\"actions\"><button type=\"button\" id=\"open-rotation\">Show rotation</button></div>{2}",
            esc(&job.token),
            esc(&job.job_id),
            rotation_modal(&job.token, Some(&job.job_id))
        ),
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
    let chain = if report.ok {
        format!(
            "<p class=\"chain-ok\" id=\"chain\">Chain verified: {} records, head {}</p>",
            report.entries,
            esc(report.head.as_deref().unwrap_or("—"))
        )
    } else {
        format!(
            "<p class=\"chain-bad\" id=\"chain\">Chain broken at record {}: {}</p>",
            report.first_bad_seq.unwrap_or_default(),
            esc(report.problem.as_deref().unwrap_or(""))
        )
    };
    let audit_rows: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e.seq,
                time(Some(e.at)),
                esc(&e.actor),
                esc(&e.action),
                esc(&e.target),
                esc(&e.outcome)
            )
        })
        .collect();
    let decision_rows: Vec<String> = decisions
        .iter()
        .map(|d| {
            let steps: Vec<String> = d
                .steps
                .iter()
                .map(|st| format!("{} {}", esc(&st.rule), esc(&st.outcome)))
                .collect();
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"status {}\">{}</td><td>{}</td></tr>",
                time(Some(d.at)),
                esc(&d.subject),
                esc(&d.permission),
                esc(&d.resource),
                if d.decision == "allow" { "verified" } else { "failed" },
                esc(&d.decision),
                steps.join(" → ")
            )
        })
        .collect();
    let security_rows: Vec<String> = security
        .iter()
        .map(|e| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                time(Some(e.at)),
                esc(&e.kind),
                esc(&e.severity),
                esc(e.subject.as_deref().unwrap_or("")),
                esc(&e.detail)
            )
        })
        .collect();
    Ok(shell(
        &s,
        "Audit",
        &format!(
            "<h1>Audit</h1>{chain}<h2>Latest records</h2>{}<h2>Decisions</h2>{}<h2>Security events</h2>{}",
            table(
                "audit",
                "Audit records",
                &["Seq", "At", "Actor", "Action", "Target", "Outcome"],
                &audit_rows
            ),
            table(
                "decisions",
                "Decisions",
                &[
                    "At",
                    "Subject",
                    "Permission",
                    "Resource",
                    "Decision",
                    "Steps"
                ],
                &decision_rows
            ),
            table(
                "security-events",
                "Security events",
                &["At", "Kind", "Severity", "Subject", "Detail"],
                &security_rows
            ),
        ),
    ))
}
