//! Authorization decisions and security events: the trait and one body for both dialects.

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use velvet_core::decision::{Decision, DecisionStep, SecurityEvent};

#[async_trait]
pub trait DecisionStore: Send + Sync {
    /// Stores a decision and its steps in one transaction.
    async fn record_decision(&self, d: &Decision) -> Result<(), StoreError>;

    /// Newest first, optionally only one subject's or one outcome's.
    async fn list_decisions(
        &self,
        subject: Option<&str>,
        decision: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Decision>, StoreError>;

    async fn record_security_event(&self, e: &SecurityEvent) -> Result<(), StoreError>;

    /// Newest first.
    async fn list_security_events(&self, limit: i64) -> Result<Vec<SecurityEvent>, StoreError>;
}

#[derive(sqlx::FromRow)]
struct DecisionRow {
    id: String,
    at: DateTime<Utc>,
    subject: String,
    permission: String,
    resource: String,
    decision: String,
    trace_hash: String,
}

#[derive(sqlx::FromRow)]
struct StepRow {
    rule: String,
    outcome: String,
    detail: String,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: String,
    at: DateTime<Utc>,
    kind: String,
    severity: String,
    subject: Option<String>,
    client: Option<String>,
    decision_id: Option<String>,
    job_id: Option<String>,
    detail: String,
}

const INSERT_DECISION: &str =
    "INSERT INTO policy_decisions (id, at, subject, permission, resource, decision, trace_hash)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
const INSERT_STEP: &str =
    "INSERT INTO policy_decision_steps (decision_id, position, rule, outcome, detail)
     VALUES ($1, $2, $3, $4, $5)";
const LIST_DECISIONS: &str =
    "SELECT id, at, subject, permission, resource, decision, trace_hash FROM policy_decisions
     WHERE ($1 IS NULL OR subject = $1) AND ($2 IS NULL OR decision = $2)
     ORDER BY at DESC, id DESC LIMIT $3";
const LIST_DECISIONS_PG: &str =
    "SELECT id, at, subject, permission, resource, decision, trace_hash FROM policy_decisions
     WHERE ($1::text IS NULL OR subject = $1) AND ($2::text IS NULL OR decision = $2)
     ORDER BY at DESC, id DESC LIMIT $3";
const STEPS: &str = "SELECT rule, outcome, detail FROM policy_decision_steps WHERE decision_id = $1 ORDER BY position";
const INSERT_EVENT: &str = "INSERT INTO security_events (id, at, kind, severity, subject, client, decision_id, job_id, detail)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const LIST_EVENTS: &str =
    "SELECT id, at, kind, severity, subject, client, decision_id, job_id, detail
     FROM security_events ORDER BY at DESC, id DESC LIMIT $1";

macro_rules! impl_decision_store {
    ($store:ty, $reader:ident, $list:expr) => {
        #[async_trait]
        impl DecisionStore for $store {
            async fn record_decision(&self, d: &Decision) -> Result<(), StoreError> {
                use crate::Context;
                let mut tx = self.begin().await?;
                sqlx::query(INSERT_DECISION)
                    .bind(&d.id)
                    .bind(d.at)
                    .bind(&d.subject)
                    .bind(&d.permission)
                    .bind(&d.resource)
                    .bind(&d.decision)
                    .bind(&d.trace_hash)
                    .execute(&mut *tx)
                    .await
                    .ctx("recording a decision")?;
                for (i, s) in d.steps.iter().enumerate() {
                    sqlx::query(INSERT_STEP)
                        .bind(&d.id)
                        .bind(i as i64)
                        .bind(&s.rule)
                        .bind(&s.outcome)
                        .bind(&s.detail)
                        .execute(&mut *tx)
                        .await
                        .ctx("recording a decision step")?;
                }
                tx.commit().await.ctx("committing a decision")
            }

            async fn list_decisions(
                &self,
                subject: Option<&str>,
                decision: Option<&str>,
                limit: i64,
            ) -> Result<Vec<Decision>, StoreError> {
                use crate::Context;
                let rows: Vec<DecisionRow> = sqlx::query_as($list)
                    .bind(subject)
                    .bind(decision)
                    .bind(limit)
                    .fetch_all(&self.$reader)
                    .await
                    .ctx("listing decisions")?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let steps: Vec<StepRow> = sqlx::query_as(STEPS)
                        .bind(&r.id)
                        .fetch_all(&self.$reader)
                        .await
                        .ctx("reading decision steps")?;
                    out.push(Decision {
                        id: r.id,
                        at: r.at,
                        subject: r.subject,
                        permission: r.permission,
                        resource: r.resource,
                        decision: r.decision,
                        trace_hash: r.trace_hash,
                        steps: steps
                            .into_iter()
                            .map(|s| DecisionStep {
                                rule: s.rule,
                                outcome: s.outcome,
                                detail: s.detail,
                            })
                            .collect(),
                    });
                }
                Ok(out)
            }

            async fn record_security_event(&self, e: &SecurityEvent) -> Result<(), StoreError> {
                use crate::Context;
                let mut tx = self.begin().await?;
                sqlx::query(INSERT_EVENT)
                    .bind(&e.id)
                    .bind(e.at)
                    .bind(&e.kind)
                    .bind(&e.severity)
                    .bind(&e.subject)
                    .bind(&e.client)
                    .bind(&e.decision_id)
                    .bind(&e.job_id)
                    .bind(&e.detail)
                    .execute(&mut *tx)
                    .await
                    .ctx("recording a security event")?;
                tx.commit().await.ctx("committing a security event")
            }

            async fn list_security_events(
                &self,
                limit: i64,
            ) -> Result<Vec<SecurityEvent>, StoreError> {
                use crate::Context;
                let rows: Vec<EventRow> = sqlx::query_as(LIST_EVENTS)
                    .bind(limit)
                    .fetch_all(&self.$reader)
                    .await
                    .ctx("listing security events")?;
                Ok(rows
                    .into_iter()
                    .map(|r| SecurityEvent {
                        id: r.id,
                        at: r.at,
                        kind: r.kind,
                        severity: r.severity,
                        subject: r.subject,
                        client: r.client,
                        decision_id: r.decision_id,
                        job_id: r.job_id,
                        detail: r.detail,
                    })
                    .collect())
            }
        }
    };
}

impl_decision_store!(crate::sqlite::SqliteStore, reader, LIST_DECISIONS);
impl_decision_store!(crate::postgres::PostgresStore, pool, LIST_DECISIONS_PG);
