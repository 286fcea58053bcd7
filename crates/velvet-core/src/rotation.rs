//! The rotation flow of design §4 as a pure transition function: given a job's state and what
//! happened (an engine event or an operator action), the next state or `InvalidTransition`.
//! No I/O here; the engine persists what this decides.

use crate::config::FlowType;
use serde::{Deserialize, Serialize};

/// A flow word: an enum stored, sent and shown as one snake_case word. strum derives the
/// words (`IntoStaticStr`, `EnumString`, `VariantArray`) and serde the same ones for JSON; the
/// `words_round_trip` test holds the two together.
pub trait Word: Copy + Into<&'static str> + std::str::FromStr + strum::VariantArray {
    const ALL: &'static [Self] = Self::VARIANTS;

    fn as_str(self) -> &'static str {
        self.into()
    }

    fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

impl<T: Copy + Into<&'static str> + std::str::FromStr + strum::VariantArray> Word for T {}

/// Where a job is in the flow.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Stage {
    Mint,
    Distribute,
    Revoke,
    Done,
}

/// What a job is doing at its stage.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Running,
    AwaitingConfirmation,
    Waiting,
    Succeeded,
    Failed,
    Aborted,
    RolledBack,
}

/// The operator action a paused job waits for.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Awaiting {
    ProceedDistribute,
    ProceedRevoke,
}

/// Actions an operator may ask for through `POST /rotations/{id}/stage`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Action {
    ProceedDistribute,
    ProceedRevoke,
    RetryFailed,
    Rollback,
    Abort,
}

/// A revert in progress: the job stays `running` while the engine undoes it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Revert {
    Rollback,
    Abort,
}

impl JobStatus {
    /// Terminal jobs no longer hold the token's single-flight slot (I3).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Aborted | Self::RolledBack)
    }
}

/// What happened to a job: the engine's progress, or an operator's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A worker claimed a pending job.
    Claimed,
    /// The new version is stored (as `pending`) and the source has minted it.
    Minted,
    /// Every consumer verified the new value; the version is promoted. `unattended_revoke`
    /// says whether a revoke may follow with nobody present ([`crate::gate::unattended_revoke`]);
    /// an `emergency` job that may not pauses at `proceed_revoke`.
    AllVerified { unattended_revoke: bool },
    /// A consumer exhausted its retries (or a stage step failed for good).
    StepFailed,
    /// The grace period of an `auto` job ended; unless `unattended_revoke`, the job pauses
    /// at `proceed_revoke` for a person.
    GraceElapsed { unattended_revoke: bool },
    /// The source and consumers dropped the previous value.
    Revoked,
    /// The previous value was re-applied where the new one landed, and the source reverted.
    RolledBack,
    /// The new version was discarded and the source reverted.
    Aborted,
    /// An operator action; `gate_passed` matters only for `proceed_revoke` (the caller
    /// evaluates the gate, this function only refuses to revoke without its say-so).
    Operator { action: Action, gate_passed: bool },
}

/// A job's position in the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct JobState {
    pub stage: Stage,
    pub status: JobStatus,
    pub awaiting: Option<Awaiting>,
    /// Whether any revoke step has run; rollback is refused once it has.
    pub revoke_started: bool,
    /// Set by `rollback` or `abort` until the engine reports the revert done; while set, only
    /// revert progress is accepted.
    pub reverting: Option<Revert>,
}

impl JobState {
    pub const NEW: JobState = JobState {
        stage: Stage::Mint,
        status: JobStatus::Pending,
        awaiting: None,
        revoke_started: false,
        reverting: None,
    };

    fn at(
        stage: Stage,
        status: JobStatus,
        awaiting: Option<Awaiting>,
        revoke_started: bool,
    ) -> Self {
        Self {
            stage,
            status,
            awaiting,
            revoke_started,
            reverting: None,
        }
    }

    fn reverting(mut self, revert: Revert) -> Self {
        self.reverting = Some(revert);
        self
    }
}

/// The refusal of an action or event that the current state does not allow, carrying the state
/// so the API can answer 409 `invalid_transition` with `stage`, `status` and `awaiting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {what} a job at stage {} with status {}{}", .state.stage, .state.status, .state.awaiting.map(|a| format!(" awaiting {a}")).unwrap_or_default())]
pub struct InvalidTransition {
    pub what: &'static str,
    pub state: JobState,
}

fn describe(event: Event) -> &'static str {
    match event {
        Event::Claimed => "claim",
        Event::Minted => "finish minting",
        Event::AllVerified { .. } => "finish distributing",
        Event::StepFailed => "fail",
        Event::GraceElapsed { .. } => "end the grace period of",
        Event::Revoked => "finish revoking",
        Event::RolledBack => "finish rolling back",
        Event::Aborted => "finish aborting",
        Event::Operator {
            action: Action::ProceedDistribute,
            ..
        } => "proceed_distribute",
        Event::Operator {
            action: Action::ProceedRevoke,
            ..
        } => "proceed_revoke",
        Event::Operator {
            action: Action::RetryFailed,
            ..
        } => "retry_failed",
        Event::Operator {
            action: Action::Rollback,
            ..
        } => "rollback",
        Event::Operator {
            action: Action::Abort,
            ..
        } => "abort",
    }
}

/// The next state. Rollback and abort move the job to `running` with `reverting` set; the
/// engine then reverts the source and consumers and reports `RolledBack` / `Aborted`, so a crash
/// in between resumes the revert rather than forgetting it.
pub fn transition(
    flow: FlowType,
    s: JobState,
    event: Event,
) -> Result<JobState, InvalidTransition> {
    use Awaiting::*;
    use JobStatus::*;
    use Stage::*;
    let invalid = || InvalidTransition {
        what: describe(event),
        state: s,
    };
    if let Some(revert) = s.reverting {
        return match (s.status, event, revert) {
            (Running, Event::RolledBack, Revert::Rollback) => {
                Ok(JobState::at(Done, RolledBack, None, false))
            }
            (Running, Event::Aborted, Revert::Abort) => {
                Ok(JobState::at(Done, Aborted, None, false))
            }
            (Running, Event::StepFailed, _) => Ok(JobState {
                status: Failed,
                ..s
            }),
            (
                Failed,
                Event::Operator {
                    action: Action::RetryFailed,
                    ..
                },
                _,
            ) => Ok(JobState {
                status: Running,
                ..s
            }),
            _ => Err(invalid()),
        };
    }
    let op = |a: Action| matches!(event, Event::Operator { action, .. } if action == a);
    let next = match (s.stage, s.status, s.awaiting, event) {
        (Mint, Pending, None, Event::Claimed) => JobState::at(Mint, Running, None, false),
        (Mint, Running, None, Event::Minted) => match flow {
            FlowType::Staged => JobState::at(
                Distribute,
                AwaitingConfirmation,
                Some(ProceedDistribute),
                false,
            ),
            FlowType::Auto | FlowType::Emergency => JobState::at(Distribute, Running, None, false),
        },
        (Distribute, AwaitingConfirmation, Some(ProceedDistribute), _)
            if op(Action::ProceedDistribute) =>
        {
            JobState::at(Distribute, Running, None, false)
        }
        (Distribute, Running, None, Event::AllVerified { unattended_revoke }) => match flow {
            FlowType::Auto => JobState::at(Revoke, Waiting, None, false),
            FlowType::Emergency if unattended_revoke => JobState::at(Revoke, Running, None, false),
            // I2b: the flow never weakens a gate.
            FlowType::Staged | FlowType::Emergency => {
                JobState::at(Revoke, AwaitingConfirmation, Some(ProceedRevoke), false)
            }
        },
        (
            Revoke,
            Waiting,
            None,
            Event::GraceElapsed {
                unattended_revoke: false,
            },
        ) => JobState::at(Revoke, AwaitingConfirmation, Some(ProceedRevoke), false),
        (
            Revoke,
            Waiting,
            None,
            Event::GraceElapsed {
                unattended_revoke: true,
            },
        ) => JobState::at(Revoke, Running, None, false),
        // I2: revoke runs only with the gate's say-so.
        (
            Revoke,
            AwaitingConfirmation,
            Some(ProceedRevoke),
            Event::Operator {
                action: Action::ProceedRevoke,
                gate_passed: true,
            },
        ) => JobState::at(Revoke, Running, None, false),
        (Revoke, Running, None, Event::Revoked) => JobState::at(Done, Succeeded, None, true),
        (stage @ (Mint | Distribute | Revoke), Running, None, Event::StepFailed) => {
            JobState::at(stage, Failed, None, s.revoke_started || stage == Revoke)
        }
        (stage @ (Mint | Distribute | Revoke), Failed, None, _) if op(Action::RetryFailed) => {
            JobState::at(stage, Running, None, s.revoke_started)
        }
        // Rollback: from failed or awaiting, as long as no revoke step has run.
        (stage @ (Mint | Distribute | Revoke), Failed | AwaitingConfirmation, _, _)
            if op(Action::Rollback) && !s.revoke_started =>
        {
            JobState::at(stage, Running, None, false).reverting(Revert::Rollback)
        }
        // Abort: before anything was distributed (a failed mint included: it must have a way
        // to end that is not a rollback of what never went out).
        (Mint, Pending | Failed, None, _)
        | (Distribute, AwaitingConfirmation, Some(ProceedDistribute), _)
            if op(Action::Abort) =>
        {
            JobState::at(s.stage, Running, None, false).reverting(Revert::Abort)
        }
        _ => return Err(invalid()),
    };
    Ok(next)
}

#[cfg(test)]
mod tests;
