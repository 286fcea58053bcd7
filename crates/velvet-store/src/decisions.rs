//! Authorization decisions and security events: the trait and one body for both dialects.

use crate::StoreError;
use crate::db::{Backend, Conn, DbError, Driver, FromRow, Row, read_all};
use async_trait::async_trait;
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

impl FromRow for Decision {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(Decision {
            id: r.text()?,
            at: r.time()?,
            subject: r.text()?,
            permission: r.text()?,
            resource: r.text()?,
            decision: r.text()?,
            trace_hash: r.text()?,
            steps: Vec::new(),
        })
    }
}

impl FromRow for DecisionStep {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(DecisionStep {
            rule: r.text()?,
            outcome: r.text()?,
            detail: r.text()?,
        })
    }
}

impl FromRow for SecurityEvent {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(SecurityEvent {
            id: r.text()?,
            at: r.time()?,
            kind: r.text()?,
            severity: r.text()?,
            subject: r.opt_text()?,
            client: r.opt_text()?,
            decision_id: r.opt_text()?,
            job_id: r.opt_text()?,
            detail: r.text()?,
        })
    }
}

const INSERT_DECISION: &str =
    "INSERT INTO policy_decisions (id, at, subject, permission, resource, decision, trace_hash)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
const INSERT_STEP: &str =
    "INSERT INTO policy_decision_steps (decision_id, position, rule, outcome, detail)
     VALUES ($1, $2, $3, $4, $5)";
const LIST_DECISIONS: &str =
    "SELECT id, at, subject, permission, resource, decision, trace_hash FROM policy_decisions
     WHERE (CAST($1 AS TEXT) IS NULL OR subject = $1) AND (CAST($2 AS TEXT) IS NULL OR decision = $2)
     ORDER BY at DESC, id DESC LIMIT $3";
const STEPS: &str = "SELECT rule, outcome, detail FROM policy_decision_steps WHERE decision_id = $1 ORDER BY position";
const INSERT_EVENT: &str = "INSERT INTO security_events (id, at, kind, severity, subject, client, decision_id, job_id, detail)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const LIST_EVENTS: &str =
    "SELECT id, at, kind, severity, subject, client, decision_id, job_id, detail
     FROM security_events ORDER BY at DESC, id DESC LIMIT $1";

#[async_trait]
impl<B: Backend> DecisionStore for B {
    async fn record_decision(&self, d: &Decision) -> Result<(), StoreError> {
        const WHAT: &str = "recording a decision";
        let d = d.clone();
        self.driver()
            .write(WHAT, move |c| {
                Box::pin(async move {
                    c.run(
                        WHAT,
                        INSERT_DECISION,
                        &[
                            (&d.id).into(),
                            d.at.into(),
                            (&d.subject).into(),
                            (&d.permission).into(),
                            (&d.resource).into(),
                            (&d.decision).into(),
                            (&d.trace_hash).into(),
                        ],
                    )
                    .await?;
                    for (i, s) in d.steps.iter().enumerate() {
                        c.run(
                            "recording a decision step",
                            INSERT_STEP,
                            &[
                                (&d.id).into(),
                                (i as i64).into(),
                                (&s.rule).into(),
                                (&s.outcome).into(),
                                (&s.detail).into(),
                            ],
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn list_decisions(
        &self,
        subject: Option<&str>,
        decision: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Decision>, StoreError> {
        const WHAT: &str = "listing decisions";
        let (subject, decision) = (subject.map(str::to_owned), decision.map(str::to_owned));
        self.driver()
            .read(WHAT, move |c| {
                Box::pin(async move {
                    let mut out: Vec<Decision> = c
                        .all(
                            WHAT,
                            LIST_DECISIONS,
                            &[(&subject).into(), (&decision).into(), limit.into()],
                        )
                        .await?;
                    for d in &mut out {
                        d.steps = c
                            .all("reading decision steps", STEPS, &[(&d.id).into()])
                            .await?;
                    }
                    Ok(out)
                })
            })
            .await
    }

    async fn record_security_event(&self, e: &SecurityEvent) -> Result<(), StoreError> {
        const WHAT: &str = "recording a security event";
        let e = e.clone();
        self.driver()
            .write(WHAT, move |c| {
                Box::pin(async move {
                    c.run(
                        WHAT,
                        INSERT_EVENT,
                        &[
                            (&e.id).into(),
                            e.at.into(),
                            (&e.kind).into(),
                            (&e.severity).into(),
                            (&e.subject).into(),
                            (&e.client).into(),
                            (&e.decision_id).into(),
                            (&e.job_id).into(),
                            (&e.detail).into(),
                        ],
                    )
                    .await
                    .map(drop)
                })
            })
            .await
    }

    async fn list_security_events(&self, limit: i64) -> Result<Vec<SecurityEvent>, StoreError> {
        read_all(
            self,
            "listing security events",
            LIST_EVENTS,
            vec![limit.into()],
        )
        .await
    }
}
