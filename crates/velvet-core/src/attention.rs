//! What needs a person (design §11, `GET /api/v1/status`): failed jobs, jobs awaiting an
//! action, tokens past `max_age` or nearing it, rotations that need a person coming up; as a
//! pure function of the tokens, their unfinished jobs and the time, so `velvet status`, the
//! console and `/metrics` say the same.

use crate::config::{Config, FlowType, SourceSpec, gate_for};
use crate::job::RotationJob;
use crate::model::{Health, HealthState, TokenRecord};
use crate::rotation::{Awaiting, JobStatus};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

/// One thing that needs attention (or is coming up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Item {
    pub token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The moment it is about: when the job failed or paused, when the token became or
    /// becomes overdue, when the rotation is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    pub detail: String,
}

/// The summary `GET /api/v1/status` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Status {
    /// Whether anything below needs a person: a monitor alerts on this.
    pub needs_attention: bool,
    pub failed: Vec<Item>,
    pub awaiting: Vec<Item>,
    /// The current version is older than `max_age`.
    pub overdue: Vec<Item>,
    /// Within `remind_before` of `max_age`, or of a rotation that needs a person.
    pub due_soon: Vec<Item>,
    /// Consumers holding another value (from probes).
    pub drifted: Vec<Item>,
    /// Consumers whose credential is refused (from probes).
    pub stale: Vec<Item>,
}

fn delta(d: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

fn ago(d: TimeDelta) -> String {
    crate::duration::format(d.to_std().unwrap_or_default())
}

/// The summary at `now`: `tokens` active ones, `jobs` their unfinished jobs.
pub fn status(
    config: &Config,
    tokens: &[TokenRecord],
    jobs: &[RotationJob],
    health: &[(String, String, Health)],
    now: DateTime<Utc>,
) -> Status {
    let mut s = Status::default();
    for (token, consumer, h) in health {
        let item = Item {
            token: token.clone(),
            job_id: None,
            at: Some(h.checked_at),
            detail: format!("consumer {consumer}: {}", h.detail),
        };
        match h.state {
            HealthState::Drifted => s.drifted.push(Item {
                detail: format!(
                    "{}; put the current version back with `velvet tokens resync {token}`",
                    item.detail
                ),
                ..item
            }),
            HealthState::Stale => s.stale.push(item),
            _ => {}
        }
    }
    for job in jobs {
        let item = |detail: String| Item {
            token: job.token.clone(),
            job_id: Some(job.job_id.clone()),
            at: Some(job.updated_at),
            detail,
        };
        match (job.state.status, job.state.awaiting) {
            (JobStatus::Failed, _) => s.failed.push(item(format!(
                "failed at {}: {}; retry, roll back or abort it (velvet rotations show {})",
                job.state.stage,
                job.error.as_deref().unwrap_or("no reason recorded"),
                job.job_id
            ))),
            (_, Some(a)) => s.awaiting.push(item(match a {
                Awaiting::ProceedDistribute => {
                    "awaits proceed_distribute: confirm the new version may go out".to_string()
                }
                Awaiting::ProceedRevoke => {
                    let gate = config
                        .token(&job.token)
                        .and_then(|t| gate_for(&config.revocation_gates, t))
                        .map(|g| {
                        let r = &g.require;
                        let mut needs = vec![];
                        if r.totp {
                            needs.push("a TOTP step-up".to_string());
                        }
                        if r.approvals > 0 {
                            needs.push(format!("{} approval(s)", r.approvals));
                        }
                        if !r.roles.is_empty() {
                            needs.push(format!("a role among {}", r.roles.join(", ")));
                        }
                        format!(" past gate `{}` ({})", g.name, needs.join(", "))
                    });
                    format!(
                        "awaits proceed_revoke{}: every consumer is verified; revoke the old version",
                        gate.unwrap_or_default()
                    )
                }
            })),
            _ => {}
        }
    }
    for t in tokens {
        let Some(spec) = config.token(&t.name) else {
            continue;
        };
        let remind = delta(spec.remind_before());
        let item = |at: DateTime<Utc>, detail: String| Item {
            token: t.name.clone(),
            job_id: None,
            at: Some(at),
            detail,
        };
        let mut due_soon = None;
        if let (Some(max_age), Some(since)) = (spec.max_age.map(delta), t.last_rotated_at) {
            let expires = since + max_age;
            let age = now - since;
            if now >= expires {
                s.overdue.push(item(
                    expires,
                    format!(
                        "the current version is {} old, past max_age {}; rotate it",
                        ago(age),
                        ago(max_age)
                    ),
                ));
                continue;
            }
            // Nearing max_age with no rotation scheduled before it.
            if now + remind >= expires && t.next_rotation_at.is_none_or(|n| n >= expires) {
                due_soon = Some(item(
                    expires,
                    format!(
                        "reaches max_age {} in {} and no rotation is scheduled before",
                        ago(max_age),
                        ago(expires - now)
                    ),
                ));
            }
        }
        // A coming rotation that needs a person: a value only a person can give, or a staged
        // flow that pauses for confirmation. (An `auto` one due soon rotates itself.)
        let manual = matches!(spec.source, SourceSpec::Manual);
        if due_soon.is_none()
            && (manual || spec.flow == FlowType::Staged)
            && let Some(next) = t.next_rotation_at
            && now + remind >= next
            && t.active_job_id.is_none()
        {
            let when = if next <= now {
                format!("was due {} ago", ago(now - next))
            } else {
                format!("is due in {}", ago(next - now))
            };
            let who = if manual {
                format!(
                    "a person gives the new value: `velvet rotate {} --value-stdin`",
                    t.name
                )
            } else {
                "its staged flow waits for confirmation".to_string()
            };
            due_soon = Some(item(next, format!("its rotation {when}; {who}")));
        }
        s.due_soon.extend(due_soon);
    }
    s.needs_attention = !(s.failed.is_empty()
        && s.awaiting.is_empty()
        && s.overdue.is_empty()
        && s.due_soon.is_empty()
        && s.drifted.is_empty()
        && s.stale.is_empty());
    s
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
