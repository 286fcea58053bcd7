//! Delivering the notification outbox (design §11), on the scheduler's leader only: route each
//! event of record to the channels that want it, record standing states (`overdue`,
//! `due_soon`) at most once per `notify_repeat`, and deliver with retries and backoff. It runs
//! beside the engine, never in a job's path, so a failing channel cannot slow a rotation.

use crate::runner::Engine;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use velvet_adapters::notify::{self, Notice};
use velvet_core::config::{ChannelSpec, Config, NOTIFY_REPEAT, gate_for};
use velvet_store::{Attempted, Delivery, NotificationEvent, StoreError};

/// Deliveries tried before one is given up (about 3 hours of backoff).
pub const ATTEMPTS: i64 = 10;
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How often standing states are looked at.
const STANDING_EVERY: Duration = Duration::from_secs(60);
/// Deliveries sent at once.
const AT_ONCE: usize = 16;

/// The backoff before attempt `n + 1` after `n` failed ones.
pub fn backoff(attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(exp))
        .min(MAX_BACKOFF)
}

/// The event a stored one is sent as: an awaited revoke past a gate that takes approvals is
/// `awaiting_approval`, addressed to those who can approve.
fn effective(config: &Config, e: &NotificationEvent) -> String {
    if e.event == "awaiting_confirmation"
        && e.data["awaiting"] == "proceed_revoke"
        && config
            .token(&e.token)
            .and_then(|t| gate_for(&config.revocation_gates, t))
            .is_some_and(|g| g.require.approvals > 0)
    {
        return "awaiting_approval".into();
    }
    e.event.clone()
}

/// One line for people: what happened and what to do next.
pub fn summary(config: &Config, e: &NotificationEvent) -> String {
    let job = e.job_id.as_deref().unwrap_or("?");
    let s = |k: &str| e.data[k].as_str().unwrap_or("").to_string();
    match e.event.as_str() {
        "failed" => format!(
            "Rotation {job} of {} failed at {}: {}. Retry, roll back or abort it (velvet rotations show {job}).",
            e.token,
            s("stage"),
            e.data["error"].as_str().unwrap_or("no reason recorded")
        ),
        "succeeded" => format!("Rotation {job} of {} succeeded.", e.token),
        "awaiting_approval" => {
            let gate = config
                .token(&e.token)
                .and_then(|t| gate_for(&config.revocation_gates, t));
            let (name, n, totp) = gate.map_or(("?".into(), 0, false), |g| {
                (g.name.clone(), g.require.approvals, g.require.totp)
            });
            format!(
                "Rotation {job} of {} awaits approval of its revoke past gate `{name}`: {n} approval(s){}. Approve with `velvet rotations approve {job} --totp CODE`, then proceed_revoke.",
                e.token,
                if totp { " and a TOTP step-up" } else { "" }
            )
        }
        "awaiting_confirmation" => format!(
            "Rotation {job} of {} awaits {}: a person must confirm (velvet rotations stage {job} {}).",
            e.token,
            s("awaiting"),
            s("awaiting")
        ),
        "schedule_missed" => format!(
            "{} scheduled slot(s) of {} were missed, the latest at {}: {}. The next slot is used.",
            e.data["slots_missed"],
            e.token,
            s("slot"),
            s("reason")
        ),
        _ => e.data["detail"]
            .as_str()
            .map(|d| format!("{}: {d}", e.token))
            .unwrap_or_else(|| format!("{} for {}", e.event, e.token)),
    }
}

impl Engine {
    /// Routes every unrouted event to the channels of the configuration in force.
    pub async fn route_notifications(&self) -> Result<usize, StoreError> {
        let config = self.config();
        let events = self.store.unrouted(500).await?;
        for e in &events {
            let event = effective(&config, e);
            let token = config.token(&e.token);
            let channels: Vec<String> = config
                .notifications
                .iter()
                .filter(|c| c.wants(&event, token))
                .map(|c| c.name.clone())
                .collect();
            self.store.route(&e.id, &event, &channels).await?;
        }
        Ok(events.len())
    }

    /// Records `overdue` and `due_soon` for each token in that state, unless told within
    /// `notify_repeat`.
    pub async fn record_standing(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let config = self.config();
        let wanted = |e: &str| {
            config
                .notifications
                .iter()
                .any(|c| c.on.iter().any(|o| o == e))
        };
        if !wanted("overdue") && !wanted("due_soon") {
            return Ok(0);
        }
        let tokens: Vec<_> = self
            .store
            .list_tokens()
            .await?
            .into_iter()
            .filter(|t| t.status == velvet_core::model::TokenStatus::Active)
            .collect();
        let s = velvet_core::attention::status(&config, &tokens, &[], &[], now);
        let mut recorded = 0;
        for (event, items) in [("overdue", &s.overdue), ("due_soon", &s.due_soon)] {
            for i in items {
                let data = serde_json::json!({"detail": i.detail, "at": i.at});
                if self
                    .store
                    .record_standing(event, &i.token, &data, NOTIFY_REPEAT, now)
                    .await?
                {
                    recorded += 1;
                }
            }
        }
        Ok(recorded)
    }

    /// Sends every delivery due at `now`, a few at once; what each came to is stored.
    pub async fn deliver_notifications(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let due = self.store.due_deliveries(now, 200).await?;
        let n = due.len();
        let config = self.config();
        let mut sends = futures_util::stream::iter(due.into_iter().map(|d| {
            let config = config.clone();
            async move {
                let outcome = self.attempt(&config, &d).await;
                (d, outcome)
            }
        }))
        .buffer_unordered(AT_ONCE);
        use futures_util::StreamExt as _;
        while let Some((d, outcome)) = sends.next().await {
            if let Attempted::Failed { error } | Attempted::Retry { error, .. } = &outcome {
                tracing::warn!(channel = %d.channel, event = %d.event.event, token = %d.event.token, attempts = d.attempts + 1, error = %error, "a notification was not delivered");
            }
            self.store
                .attempted(&d.event.id, &d.channel, &outcome)
                .await?;
        }
        Ok(n)
    }

    async fn attempt(&self, config: &Config, d: &Delivery) -> Attempted {
        let Some(channel): Option<&ChannelSpec> =
            config.notifications.iter().find(|c| c.name == d.channel)
        else {
            return Attempted::Failed {
                error: format!("channel `{}` is no longer declared", d.channel),
            };
        };
        let summary = summary(config, &d.event);
        let notice = Notice {
            id: &d.event.id,
            event: &d.event.event,
            token: &d.event.token,
            job_id: d.event.job_id.as_deref(),
            at: d.event.at,
            summary: &summary,
            data: &d.event.data,
        };
        let env = self.opts.env.clone();
        let lookup = move |n: &str| env(n);
        match notify::send(channel, &notice, &lookup).await {
            Ok(()) => {
                crate::runner::crash_point("after_notification_sent");
                Attempted::Delivered
            }
            Err(e) if !e.is_retryable() || d.attempts + 1 >= ATTEMPTS => Attempted::Failed {
                error: e.to_string(),
            },
            Err(e) => {
                let wait = e.retry_after().unwrap_or_else(|| backoff(d.attempts));
                Attempted::Retry {
                    error: e.to_string(),
                    at: Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
                }
            }
        }
    }

    /// While this replica leads: route, record standing states, deliver; until `shutdown`.
    pub(crate) async fn notify_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut standing_at = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if self.leads_scheduler() {
                let now = Utc::now();
                if let Err(e) = self.route_notifications().await {
                    tracing::warn!(error = %e, "routing notifications failed");
                }
                if tokio::time::Instant::now() >= standing_at {
                    standing_at = tokio::time::Instant::now() + STANDING_EVERY;
                    if let Err(e) = self.record_standing(now).await {
                        tracing::warn!(error = %e, "recording standing notifications failed");
                    }
                }
                if let Err(e) = self.deliver_notifications(now).await {
                    tracing::warn!(error = %e, "delivering notifications failed");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.opts.notify_interval) => {}
                changed = shutdown.changed() => if changed.is_err() { break; }
            }
        }
    }
}
