//! The notification outbox (design §11). Events are appended in the transaction of the change
//! that causes them ([`record`]); the leader routes each to the channels that want it and
//! delivers, with retries, recording each delivery's state. Nothing here carries a value: an
//! event's data holds names, states and (already masked) errors.

use crate::StoreError;
use crate::db::{Backend, Conn, DbError, Driver, FromRow, Row, read_all};
use crate::jobs::at;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;
use velvet_core::audit::now_micros;

/// An event of record, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct NotificationEvent {
    /// `ntf_…`: the id a receiver deduplicates on.
    pub id: String,
    pub event: String,
    pub token: String,
    pub job_id: Option<String>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub at: DateTime<Utc>,
}

impl FromRow for NotificationEvent {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(NotificationEvent {
            id: r.text()?,
            event: r.text()?,
            token: r.text()?,
            job_id: r.opt_text()?,
            data: serde_json::from_str(&r.text()?).unwrap_or(serde_json::Value::Null),
            at: r.time()?,
        })
    }
}

/// One event's delivery to one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    #[serde(flatten)]
    pub event: NotificationEvent,
    pub channel: String,
    /// `pending`, `delivered` or `failed` (gave up).
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl FromRow for Delivery {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(Delivery {
            event: NotificationEvent::from_row(r)?,
            channel: r.text()?,
            status: r.text()?,
            attempts: r.int()?,
            next_attempt_at: r.time()?,
            last_error: r.opt_text()?,
            updated_at: r.time()?,
        })
    }
}

/// What a delivery attempt came to.
#[derive(Debug, Clone)]
pub enum Attempted {
    Delivered,
    /// Try again at this time.
    Retry {
        error: String,
        at: DateTime<Utc>,
    },
    /// Give up.
    Failed {
        error: String,
    },
}

/// `ntf_` and 26 base32 characters.
fn new_id() -> String {
    let id = velvet_core::job::new_job_id();
    format!("ntf_{}", &id[4..])
}

/// Appends an event inside the caller's transaction.
pub(crate) async fn record<C: Conn>(
    c: &mut C,
    event: &str,
    token: &str,
    job_id: Option<&str>,
    data: &serde_json::Value,
) -> Result<(), StoreError> {
    c.run(
        "recording a notification",
        "INSERT INTO notification_events (id, event, token, job_id, data, at) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            new_id().as_str().into(),
            event.into(),
            token.into(),
            job_id.into(),
            data.to_string().as_str().into(),
            now_micros().into(),
        ],
    )
    .await?;
    Ok(())
}

#[async_trait]
pub trait NotificationStore: Send + Sync {
    /// Records a standing state (`overdue`, `due_soon`…) unless the same event for the same
    /// token was recorded within `repeat`; whether it was recorded.
    async fn record_standing(
        &self,
        event: &str,
        token: &str,
        data: &serde_json::Value,
        repeat: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Events not yet routed to channels, oldest first.
    async fn unrouted(&self, limit: i64) -> Result<Vec<NotificationEvent>, StoreError>;

    /// Routes an event: renames it (an awaited revoke that needs approvals becomes
    /// `awaiting_approval`), creates one pending delivery per channel, and marks it routed.
    async fn route(
        &self,
        event_id: &str,
        event: &str,
        channels: &[String],
    ) -> Result<(), StoreError>;

    /// Pending deliveries due at `now`, oldest first.
    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError>;

    async fn attempted(
        &self,
        event_id: &str,
        channel: &str,
        outcome: &Attempted,
    ) -> Result<(), StoreError>;

    /// The latest deliveries, newest first (`GET /api/v1/notifications`).
    async fn deliveries(&self, limit: i64) -> Result<Vec<Delivery>, StoreError>;

    /// Deliveries given up, per channel (for `velvet_notifications_failed_total`).
    async fn failed_deliveries(&self) -> Result<Vec<(String, i64)>, StoreError>;
}

const DELIVERY_SELECT: &str = "SELECT e.id, e.event, e.token, e.job_id, e.data, e.at,
        d.channel, d.status, d.attempts, d.next_attempt_at, d.last_error, d.updated_at
     FROM notification_deliveries d JOIN notification_events e ON e.id = d.event_id";

#[async_trait]
impl<B: Backend> NotificationStore for B {
    async fn record_standing(
        &self,
        event: &str,
        token: &str,
        data: &serde_json::Value,
        repeat: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let since = now - chrono::Duration::from_std(repeat).unwrap_or(chrono::Duration::days(1));
        let (event, token, data) = (event.to_string(), token.to_string(), data.clone());
        self.driver()
            .write("recording a standing notification", move |c| {
                Box::pin(async move {
                    let recent = at(c.dialect(), "at", ">", "$3");
                    let sql = format!(
                        "SELECT COUNT(*) FROM notification_events WHERE event = $1 AND token = $2 AND {recent}"
                    );
                    let n: i64 = c
                        .one(
                            "reading recent notifications",
                            &sql,
                            &[event.as_str().into(), token.as_str().into(), since.into()],
                        )
                        .await?;
                    if n > 0 {
                        return Ok(false);
                    }
                    record(c, &event, &token, None, &data).await?;
                    Ok(true)
                })
            })
            .await
    }

    async fn unrouted(&self, limit: i64) -> Result<Vec<NotificationEvent>, StoreError> {
        let sql: &'static str = "SELECT e.id, e.event, e.token, e.job_id, e.data, e.at
             FROM notification_events e WHERE e.routed = false ORDER BY e.at, e.id LIMIT $1";
        read_all(
            self,
            "reading unrouted notifications",
            sql,
            vec![limit.into()],
        )
        .await
    }

    async fn route(
        &self,
        event_id: &str,
        event: &str,
        channels: &[String],
    ) -> Result<(), StoreError> {
        let (id, event, channels) = (event_id.to_string(), event.to_string(), channels.to_vec());
        self.driver()
            .write("routing a notification", move |c| {
                Box::pin(async move {
                    let now = now_micros();
                    for ch in &channels {
                        c.run(
                            "queueing a delivery",
                            "INSERT INTO notification_deliveries (event_id, channel, status, attempts, next_attempt_at, updated_at)
                             VALUES ($1, $2, 'pending', 0, $3, $3) ON CONFLICT (event_id, channel) DO NOTHING",
                            &[id.as_str().into(), ch.as_str().into(), now.into()],
                        )
                        .await?;
                    }
                    c.run(
                        "marking a notification routed",
                        "UPDATE notification_events SET routed = true, event = $2 WHERE id = $1",
                        &[id.as_str().into(), event.as_str().into()],
                    )
                    .await?;
                    Ok(())
                })
            })
            .await
    }

    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.driver()
            .read("reading due deliveries", move |c| {
                Box::pin(async move {
                    let due = at(c.dialect(), "d.next_attempt_at", "<=", "$1");
                    let sql = format!(
                        "{DELIVERY_SELECT} WHERE d.status = 'pending' AND {due} ORDER BY e.at, e.id, d.channel LIMIT $2"
                    );
                    c.all("reading due deliveries", &sql, &[now.into(), limit.into()])
                        .await
                })
            })
            .await
    }

    async fn attempted(
        &self,
        event_id: &str,
        channel: &str,
        outcome: &Attempted,
    ) -> Result<(), StoreError> {
        let now = now_micros();
        let (status, error, next) = match outcome {
            Attempted::Delivered => ("delivered", None, now),
            Attempted::Retry { error, at } => ("pending", Some(error.clone()), *at),
            Attempted::Failed { error } => ("failed", Some(error.clone()), now),
        };
        crate::db::write_one(
            self,
            "recording a delivery attempt",
            "UPDATE notification_deliveries SET status = $3, attempts = attempts + 1, last_error = $4,
                 next_attempt_at = $5, updated_at = $6 WHERE event_id = $1 AND channel = $2",
            vec![
                event_id.into(),
                channel.into(),
                status.into(),
                error.as_deref().into(),
                next.into(),
                now.into(),
            ],
        )
        .await
        .map(drop)
    }

    async fn deliveries(&self, limit: i64) -> Result<Vec<Delivery>, StoreError> {
        self.driver()
            .read("listing deliveries", move |c| {
                Box::pin(async move {
                    let sql = format!(
                        "{DELIVERY_SELECT} ORDER BY d.updated_at DESC, e.id DESC, d.channel LIMIT $1"
                    );
                    c.all("listing deliveries", &sql, &[limit.into()]).await
                })
            })
            .await
    }

    async fn failed_deliveries(&self) -> Result<Vec<(String, i64)>, StoreError> {
        read_all(
            self,
            "counting failed deliveries",
            "SELECT channel, COUNT(*) FROM notification_deliveries WHERE status = 'failed' GROUP BY channel ORDER BY channel",
            vec![],
        )
        .await
    }
}
