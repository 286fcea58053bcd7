//! What the pure gate (`velvet_core::gate`) needs from the world, and what its verdict asks of
//! it: the approvals as they stand, the step-up code checked (and spent) only when the gate asks,
//! every outcome kept as a decision, every refusal as a security event (design §7).

use crate::runner::Engine;
use crate::service::{Person, ServiceError};
use velvet_core::config::{GateSpec, gate_for};
use velvet_core::decision::{Decision, SecurityEvent, Severity};
use velvet_core::gate::{Approver, Code, GateDecision, Verdict};
use velvet_core::job::RotationJob;
use velvet_core::operator;
use velvet_store::{OperatorRecord, Store, StoreError};

/// Wrong step-up codes an operator may give in [`STEP_UP_WINDOW`] (design §10).
pub(crate) const STEP_UP_BUDGET: u32 = 5;
pub(crate) const STEP_UP_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Logs a security event and keeps it in the store; a store that fails is logged, not fatal.
pub async fn raise(store: &dyn Store, ev: SecurityEvent) {
    match ev.severity.as_str() {
        "critical" => {
            tracing::error!(event = %ev.kind, severity = %ev.severity, subject = ?ev.subject, client = ?ev.client, detail = %ev.detail, "security event")
        }
        "warning" => {
            tracing::warn!(event = %ev.kind, severity = %ev.severity, subject = ?ev.subject, client = ?ev.client, detail = %ev.detail, "security event")
        }
        _ => {
            tracing::info!(event = %ev.kind, severity = %ev.severity, subject = ?ev.subject, detail = %ev.detail, "security event")
        }
    }
    if let Err(e) = store.record_security_event(&ev).await {
        tracing::warn!(error = %e, "storing a security event failed");
    }
}

impl Engine {
    /// The gate that stands in front of `job`'s revoke: the first matching its token.
    pub fn gate_of(&self, job: &RotationJob) -> Option<GateSpec> {
        let config = self.config();
        config
            .token(&job.token)
            .and_then(|t| gate_for(&config.revocation_gates, t))
            .cloned()
    }

    /// 429 while `operator` has spent its wrong step-up codes (design §10: 5 in 15 minutes).
    pub fn step_up_limited(&self, operator: &str) -> Result<(), ServiceError> {
        match self.step_up.blocked(operator) {
            Some(retry_after) => Err(ServiceError::StepUpLocked {
                operator: operator.to_string(),
                retry_after,
            }),
            None => Ok(()),
        }
    }

    /// The approvals on `job` with each approver's role now (`None` when gone or disabled).
    pub(crate) async fn standing(
        &self,
        job: &RotationJob,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let mut out = vec![];
        for a in self.store.approvals(&job.job_id).await? {
            let role = self.active_operator(&a.operator).await?.map(|o| o.role);
            out.push((a.operator, role));
        }
        Ok(out)
    }

    pub(crate) async fn active_operator(
        &self,
        name: &str,
    ) -> Result<Option<OperatorRecord>, StoreError> {
        Ok(self
            .store
            .operator(name)
            .await?
            .filter(|o| o.disabled_at.is_none()))
    }

    /// Checks `code` as a fresh TOTP code of `who`'s operator, spending it if it is. A wrong or
    /// replayed code counts against the operator's step-up budget.
    pub(crate) async fn check_code(
        &self,
        who: &Person<'_>,
        job: &RotationJob,
        code: &str,
    ) -> Result<Code, ServiceError> {
        let name = who.operator.ok_or_else(|| {
            ServiceError::Internal("the gate asked to check the code of no operator".into())
        })?;
        self.step_up_limited(name)?;
        let op = self.active_operator(name).await?;
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let step = match &op {
            Some(o) => {
                let secret = self
                    .keyring
                    .open(&o.totp, &operator::totp_aad(&o.name))
                    .map_err(|e| ServiceError::Internal(e.to_string()))?;
                secret
                    .get("value")
                    .and_then(|s| operator::totp_step(s.expose(), code, now))
            }
            None => None,
        };
        let checked = match step {
            None => Code::Wrong,
            Some(step) if !self.store.accept_totp_step(name, step as i64).await? => {
                Code::Replayed { step }
            }
            Some(_) => Code::Fresh,
        };
        if checked != Code::Fresh {
            self.wrong_code(who, job, name).await;
        }
        Ok(checked)
    }

    /// Counts a wrong step-up code; the one that spends the budget is a critical `totp_locked`.
    async fn wrong_code(&self, who: &Person<'_>, job: &RotationJob, operator: &str) {
        if self.step_up.record(operator) {
            let mut ev = SecurityEvent::new(
                "totp_locked",
                Severity::Critical,
                format!(
                    "{STEP_UP_BUDGET} wrong step-up codes for operator {operator} within 15 \
                     minutes; step-ups refused until the window passes"
                ),
            );
            ev.subject = Some(who.actor.to_string());
            ev.client = Some(who.client.to_string());
            ev.job_id = Some(job.job_id.clone());
            raise(&*self.store, ev).await;
        }
    }

    /// Decides with `decide`, first with the code unchecked; only if the gate then asks for it
    /// is the code checked (and spent), and the gate asked again with the result.
    pub(crate) async fn decide(
        &self,
        who: &Person<'_>,
        job: &RotationJob,
        code: Option<&str>,
        decide: impl Fn(Code) -> GateDecision,
    ) -> Result<GateDecision, ServiceError> {
        let given = code.filter(|c| !c.trim().is_empty());
        let d = decide(if given.is_some() {
            Code::Unchecked
        } else {
            Code::Missing
        });
        match given {
            Some(code) if d.verdict == Verdict::CheckCode => {
                Ok(decide(self.check_code(who, job, code).await?))
            }
            _ => Ok(d),
        }
    }

    /// Carries out a final verdict: a pass is recorded first and does not go ahead unrecorded
    /// (I6); a refusal is recorded as a denied decision and a security event.
    pub(crate) async fn settle(
        &self,
        who: &Person<'_>,
        job: &RotationJob,
        d: GateDecision,
    ) -> Result<(), ServiceError> {
        let mut steps = who.steps.to_vec();
        steps.extend(d.steps);
        let decision = Decision::new(who.actor, "velvet.rotations.revoke", &d.resource, steps);
        match d.verdict {
            Verdict::Pass => {
                self.store.record_decision(&decision).await.map_err(|e| {
                    StoreError::AuditUnavailable(format!("recording the decision: {e}"))
                })?;
                if let Some(alert) = d.alert {
                    let mut ev = SecurityEvent::new("force_revoke", Severity::Critical, alert);
                    ev.subject = Some(who.actor.to_string());
                    ev.client = Some(who.client.to_string());
                    ev.job_id = Some(job.job_id.clone());
                    raise(&*self.store, ev).await;
                }
                Ok(())
            }
            Verdict::Refuse {
                error,
                event,
                message,
            } => {
                if let Err(e) = self.store.record_decision(&decision).await {
                    tracing::warn!(error = %e, "recording a gate refusal failed");
                }
                let mut ev = SecurityEvent::new(event, Severity::Warning, message.clone());
                ev.subject = Some(who.actor.to_string());
                ev.client = Some(who.client.to_string());
                ev.decision_id = Some(decision.id);
                ev.job_id = Some(job.job_id.clone());
                raise(&*self.store, ev).await;
                Err(ServiceError::Refused { error, message })
            }
            Verdict::Invalid(m) => Err(ServiceError::Validation(m)),
            Verdict::CheckCode => Err(ServiceError::Internal(
                "the gate still asks for a code check".into(),
            )),
        }
    }
}

/// Borrows the standing approvals as the pure gate takes them.
pub(crate) fn approvers(standing: &[(String, Option<String>)]) -> Vec<Approver<'_>> {
    standing
        .iter()
        .map(|(operator, role)| Approver {
            operator,
            role: role.as_deref(),
        })
        .collect()
}
