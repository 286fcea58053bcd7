//! Stage actions on a job (`POST /rotations/{id}/stage`): checked by the state machine,
//! persisted with their audit record, then the runner is woken to carry them out.

use crate::runner::Engine;
use crate::service::ServiceError;
use velvet_core::audit::AuditDraft;
use velvet_core::job::{JobChanges, RotationJob};
use velvet_core::rotation::Word as _;
use velvet_core::rotation::{Action, Event, InvalidTransition, JobState, Stage, transition};
use velvet_store::StoreError;

impl Engine {
    /// Applies an operator's `action` to `job` (read again if it moved meanwhile); the service
    /// checked the revocation gate and reports it in `gate_passed`.
    pub(crate) async fn act(
        &self,
        job: &RotationJob,
        action: Action,
        gate_passed: bool,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<RotationJob, ServiceError> {
        let job_id = job.job_id.as_str();
        let mut job = job.clone();
        for attempt in 0..3 {
            if attempt > 0 {
                job = self
                    .store
                    .get_job(job_id)
                    .await?
                    .ok_or_else(|| ServiceError::NotFound(job_id.into()))?;
            }
            let from: JobState = job.state;
            // Ending a job never needs its token's declaration (a revert that failed is ended
            // by retrying it); going on does.
            let ends = matches!(action, Action::Abort | Action::Rollback)
                || (action == Action::RetryFailed && from.reverting.is_some());
            if !ends && self.token_spec(&job).is_err() {
                return Err(ServiceError::Conflict {
                    state: job.state.into(),
                    message: format!(
                        "token `{}` is no longer declared in velvet.yaml, so this job can only be \
                     ended: `velvet rotations stage {job_id} abort` (before distribution) or \
                     `rollback`",
                        job.token
                    ),
                });
            }
            let to = transition(
                job.flow_type,
                from,
                Event::Operator {
                    action,
                    gate_passed,
                },
            )
            .map_err(ServiceError::Invalid)?;
            // A mint that kept failing starts over with a fresh value, not the same one.
            let fresh_mint = action == Action::RetryFailed
                && from.stage == Stage::Mint
                && job.new_version.is_some();
            let changes = JobChanges {
                reset_failed_consumers: action == Action::RetryFailed,
                discard_new: fresh_mint,
                clear_new_version: fresh_mint,
                error: (action == Action::RetryFailed).then_some(None),
                ..Default::default()
            };
            let audit = AuditDraft::new(actor, &format!("rotation.{}", action.as_str()), &job.token, "success")
                .detail(serde_json::json!({"job_id": job_id, "from": {"stage": from.stage, "status": from.status}, "reason": reason}));
            match self
                .store
                .transition_job(job_id, from, to, &changes, None, &audit)
                .await
            {
                Ok(job) => {
                    self.nudge();
                    let _ = self.bus.send(job_id.to_string());
                    return Ok(job);
                }
                // The engine moved the job meanwhile: decide again on its new state.
                Err(StoreError::StaleJob { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let job = self
            .store
            .get_job(job_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(job_id.into()))?;
        Err(ServiceError::Invalid(InvalidTransition {
            what: "act on",
            state: job.state,
        }))
    }
}
