//! The engine service: every change a person asks of a job goes through here (a kickoff, a
//! stage action with its revocation gate, an approval), so the API, the console and later the
//! scheduler and plans change jobs one way. The gate's policy is the pure
//! `velvet_core::gate`; this module loads what it needs and carries out its verdict.

use crate::gate::approvers;
use crate::runner::Engine;
use velvet_core::decision::DecisionStep;
use velvet_core::gate::{self, Asker, Attempt};
use velvet_core::identity::Role;
use velvet_core::job::RotationJob;
use velvet_core::job_view::JobStateView;
use velvet_core::keyring::version_aad;
use velvet_core::rotation::{Action, Awaiting, InvalidTransition};
use velvet_core::secret::SecretValue;
use velvet_store::{NewJob, StoreError};

/// Who asks, as the API authenticated them.
#[derive(Debug, Clone, Copy)]
pub struct Person<'a> {
    /// As recorded in audit records: `token:<name>`, `operator:<name>`, `bootstrap-admin`.
    pub actor: &'a str,
    pub role: Role,
    /// The operator behind the token or session, who can answer a TOTP step-up.
    pub operator: Option<&'a str>,
    pub client: &'a str,
    /// How the caller proved who it is: the first steps of every decision recorded for it.
    pub steps: &'a [DecisionStep],
}

/// A stage action as asked.
#[derive(Debug, Clone, Copy)]
pub struct StageRequest<'a> {
    pub action: Action,
    pub totp: Option<&'a str>,
    /// Pass the revocation gate by force (admin, a gate with `allow_force`, a reason).
    pub force: bool,
    pub reason: Option<&'a str>,
}

impl StageRequest<'_> {
    /// `action` alone: no code, no force, no reason.
    pub fn new(action: Action) -> Self {
        Self {
            action,
            totp: None,
            force: false,
            reason: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("rotation job `{0}` not found")]
    NotFound(String),
    /// The state machine refuses the action in the job's state.
    #[error(transparent)]
    Invalid(InvalidTransition),
    /// The action does not fit the job as it is (its token left velvet.yaml, its gate takes no
    /// approvals, it awaits nothing to approve).
    #[error("{message}")]
    Conflict {
        message: String,
        state: JobStateView,
    },
    /// The gate refused: 403 with `error` (`gate_required`, `gate_denied`, `forbidden`).
    #[error("{message}")]
    Refused {
        error: &'static str,
        message: String,
    },
    /// The request itself is wrong (422), naming the field.
    #[error("{0}")]
    Validation(String),
    /// The operator spent its wrong step-up codes.
    #[error(
        "too many wrong codes for operator {operator}; step-ups are refused for {} more \
         minute(s). If these were not your attempts, tell an admin: someone holds a token of \
         yours",
        retry_after.div_ceil(60)
    )]
    StepUpLocked { operator: String, retry_after: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// Whether asking again later may succeed (the store was busy or unreachable).
    pub fn retryable(&self) -> bool {
        matches!(self, ServiceError::Store(e) if e.retryable())
    }
}

impl Engine {
    /// Creates a job (I3: one unfinished job per token) and wakes the runner to start it.
    pub async fn kickoff(&self, new: &NewJob<'_>) -> Result<RotationJob, StoreError> {
        let job = self.store.create_job(new).await?;
        self.nudge();
        Ok(job)
    }

    /// [`Engine::kickoff`], with the value a person gave for a `manual` token sealed as the
    /// job's new version in the job's own transaction.
    pub async fn kickoff_given(
        &self,
        new: &NewJob<'_>,
        value: Option<SecretValue>,
    ) -> Result<RotationJob, StoreError> {
        let Some(value) = value else {
            return self.kickoff(new).await;
        };
        let version = self.store.next_version(new.token).await?;
        let now = chrono::Utc::now();
        let sealed = self
            .keyring
            .seal(&value, &version_aad(new.token, version), now)?;
        let fingerprint = self.keyring.fingerprint(&value, now)?;
        let mut new = new.clone();
        new.given = Some(velvet_store::GivenValue {
            version,
            sealed,
            fingerprint,
        });
        self.kickoff(&new).await
    }

    async fn job(&self, job_id: &str) -> Result<RotationJob, ServiceError> {
        self.store
            .get_job(job_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(job_id.into()))
    }

    /// Applies a stage action; `proceed_revoke` on a job awaiting it meets the token's gate.
    pub async fn stage(
        &self,
        who: &Person<'_>,
        job_id: &str,
        req: StageRequest<'_>,
    ) -> Result<RotationJob, ServiceError> {
        if req.force && req.action != Action::ProceedRevoke {
            return Err(ServiceError::Validation(
                "force: goes only with proceed_revoke (it passes a revocation gate that allows it)"
                    .into(),
            ));
        }
        let job = self.job(job_id).await?;
        let gate = self.gate_of(&job);
        if req.force && gate.is_none() {
            return Err(ServiceError::Validation(
                "force: no revocation gate applies to this token, so there is nothing to force"
                    .into(),
            ));
        }
        // Only a revoke the job is actually awaiting meets the gate; anything else is the state
        // machine's to refuse.
        let gate_passed = match gate {
            Some(g)
                if req.action == Action::ProceedRevoke
                    && job.state.awaiting == Some(Awaiting::ProceedRevoke) =>
            {
                self.pass_gate(who, &job, &g, req).await?;
                true
            }
            Some(_) => false,
            None => true,
        };
        self.act(&job, req.action, gate_passed, who.actor, req.reason)
            .await
    }

    async fn pass_gate(
        &self,
        who: &Person<'_>,
        job: &RotationJob,
        g: &velvet_core::config::GateSpec,
        req: StageRequest<'_>,
    ) -> Result<(), ServiceError> {
        let asker = Asker {
            role: who.role,
            operator: who.operator,
        };
        let standing = self.standing(job).await?;
        let approvals = approvers(&standing);
        let attempt = |code| match req.force {
            true => Attempt::Force { reason: req.reason },
            false => Attempt::Pass { code },
        };
        let d = self
            .decide(who, job, req.totp, |code| {
                gate::proceed_revoke(g, &job.job_id, asker, &approvals, attempt(code))
            })
            .await?;
        self.settle(who, job, d).await
    }

    /// An operator approves a job's revoke, proving presence with a fresh TOTP code.
    pub async fn approve(
        &self,
        who: &Person<'_>,
        job_id: &str,
        totp: &str,
    ) -> Result<RotationJob, ServiceError> {
        let job = self.job(job_id).await?;
        let conflict = |message: &str| ServiceError::Conflict {
            message: message.into(),
            state: job.state.into(),
        };
        let g = self
            .gate_of(&job)
            .filter(|g| g.require.approvals > 0)
            .ok_or_else(|| conflict("this job's revocation gate asks for no approvals"))?;
        if job.state.awaiting != Some(Awaiting::ProceedRevoke) {
            return Err(conflict(
                "approvals are taken while the job awaits proceed_revoke",
            ));
        }
        let role = match who.operator {
            Some(op) => self.active_operator(op).await?.map(|o| o.role),
            None => None,
        };
        let d = self
            .decide(who, &job, Some(totp), |code| {
                gate::approve(&g, job_id, who.operator, role.as_deref(), code)
            })
            .await?;
        self.settle(who, &job, d).await?;
        let operator = who.operator.expect("a passed approval has an operator");
        self.store
            .approve_revoke(job_id, operator, who.actor)
            .await?;
        let _ = self.bus.send(job_id.to_string());
        Ok(job)
    }
}
