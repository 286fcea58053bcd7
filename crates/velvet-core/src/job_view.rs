//! A rotation job as the API shows it (design §5, the job object): what the server sends, the
//! store writes into a job's events, and the CLI reads back. One set of types for all three, so
//! a change to the contract shape is a change here, and a client meeting a shape it does not know
//! fails to decode instead of printing blanks. Fields the server adds later are ignored.

use crate::config::{FlowType, GateSpec};
use crate::job::{ConsumerStatus, JobConsumer, RotationJob};
use crate::rotation::{Awaiting, JobState, JobStatus, Stage};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The job object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = RotationJob)]
pub struct RotationJobView {
    pub job_id: String,
    pub token: String,
    pub flow_type: FlowType,
    #[serde(flatten)]
    pub state: JobStateView,
    pub new_version: Option<i64>,
    pub previous_version: Option<i64>,
    pub requested_by: String,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// The revocation gate in front of this job's revoke, where one applies and the answer
    /// comes from `GET /rotations/{id}` or an approval; null in events.
    pub gate: Option<GateView>,
    pub consumers: Vec<ConsumerView>,
}

/// A page of rotation jobs (`GET /rotations`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RotationPage {
    /// Newest first.
    pub rotations: Vec<RotationJobView>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// Where a job is: `stage`, `status`, and the action it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobStateView {
    pub stage: Stage,
    pub status: JobStatus,
    pub awaiting: Option<Awaiting>,
}

impl From<JobState> for JobStateView {
    fn from(s: JobState) -> Self {
        Self {
            stage: s.stage,
            status: s.status,
            awaiting: s.awaiting,
        }
    }
}

/// One consumer's state in a job: the `consumers[]` entries of the job object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = JobConsumer)]
pub struct ConsumerView {
    pub consumer: String,
    pub kind: String,
    pub status: ConsumerStatus,
    pub attempts: i64,
    /// Never holds a secret value.
    pub last_error: Option<String>,
    /// What the consumer was verified to hold.
    pub fingerprint: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// When its first attempt began (the console's timeline starts each bar there).
    pub started_at: Option<DateTime<Utc>>,
}

/// The `data` of a `consumer` event: the consumer's state in the job, and the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsumerEvent {
    pub job_id: String,
    #[serde(flatten)]
    pub consumer: ConsumerView,
}

/// A revocation gate as a job shows it: what it requires, and the approvals so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateView {
    pub name: String,
    pub requires: GateRequires,
    /// Whether an admin may pass it with `force` and a reason.
    pub allow_force: bool,
    pub approvals: Vec<ApprovalView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateRequires {
    /// The caller's own TOTP code with `proceed_revoke`.
    pub totp: bool,
    /// Approvals from other operators before the revoke.
    pub approvals: u32,
    /// The roles that may pass or approve; empty for any with `rotations.revoke`.
    pub roles: Vec<String>,
}

/// One operator's approval of a job's revoke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApprovalView {
    pub operator: String,
    pub approved_at: DateTime<Utc>,
}

impl GateView {
    pub fn new(gate: &GateSpec, approvals: Vec<ApprovalView>) -> Self {
        Self {
            name: gate.name.clone(),
            requires: GateRequires {
                totp: gate.require.totp,
                approvals: gate.require.approvals,
                roles: gate.require.roles.clone(),
            },
            allow_force: gate.allow_force,
            approvals,
        }
    }
}

impl From<&JobConsumer> for ConsumerView {
    fn from(c: &JobConsumer) -> Self {
        Self {
            consumer: c.consumer.clone(),
            kind: c.kind.clone(),
            status: c.status,
            attempts: c.attempts,
            last_error: c.last_error.clone(),
            fingerprint: c.fingerprint.clone(),
            updated_at: c.updated_at,
            started_at: c.started_at,
        }
    }
}

impl From<&RotationJob> for RotationJobView {
    fn from(j: &RotationJob) -> Self {
        Self {
            job_id: j.job_id.clone(),
            token: j.token.clone(),
            flow_type: j.flow_type,
            state: j.state.into(),
            new_version: j.new_version,
            previous_version: j.previous_version,
            requested_by: j.requested_by.clone(),
            reason: j.reason.clone(),
            created_at: j.created_at,
            updated_at: j.updated_at,
            finished_at: j.finished_at,
            error: j.error.clone(),
            gate: None,
            consumers: j.consumers.iter().map(ConsumerView::from).collect(),
        }
    }
}

impl RotationJobView {
    /// The job with the gate that applies to it.
    pub fn with_gate(mut self, gate: Option<GateView>) -> Self {
        self.gate = gate;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> RotationJob {
        let now = Utc::now();
        RotationJob {
            job_id: "rot_x".into(),
            token: "t".into(),
            flow_type: FlowType::Staged,
            state: JobState::NEW,
            new_version: None,
            previous_version: Some(1),
            requested_by: "admin".into(),
            requested_role: None,
            reason: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
            error: None,
            consumers: vec![JobConsumer {
                consumer: "app".into(),
                kind: "file".into(),
                status: ConsumerStatus::Pending,
                attempts: 0,
                last_error: None,
                fingerprint: None,
                updated_at: now,
                lock_key: Some("file:/x".into()),
                next_attempt_at: None,
                started_at: None,
            }],
            lease_owner: Some("r1".into()),
            lease_expires_at: None,
            wake_at: None,
        }
    }

    #[test]
    fn the_view_has_the_contract_shape_and_none_of_the_engine_state() {
        let v = serde_json::to_value(RotationJobView::from(&job())).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "job_id",
                "token",
                "flow_type",
                "stage",
                "status",
                "awaiting",
                "new_version",
                "previous_version",
                "requested_by",
                "reason",
                "created_at",
                "updated_at",
                "finished_at",
                "error",
                "gate",
                "consumers"
            ]
        );
        assert_eq!(
            (v["stage"].as_str(), v["status"].as_str()),
            (Some("mint"), Some("pending"))
        );
        let consumer: Vec<&str> = v["consumers"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(!consumer.contains(&"lock_key") && !consumer.contains(&"next_attempt_at"));
    }

    #[test]
    fn a_view_reads_back_what_it_wrote_and_refuses_a_shape_it_does_not_know() {
        let v = RotationJobView::from(&job());
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<RotationJobView>(&text).unwrap(), v);
        // A field added later is ignored; a missing or mistyped one fails.
        let mut extra: serde_json::Value = serde_json::from_str(&text).unwrap();
        extra["added_later"] = serde_json::json!(1);
        assert!(serde_json::from_value::<RotationJobView>(extra.clone()).is_ok());
        let mut missing = extra.clone();
        missing.as_object_mut().unwrap().remove("token");
        let e = serde_json::from_value::<RotationJobView>(missing).unwrap_err();
        assert!(e.to_string().contains("token"), "{e}");
        let mut wrong = extra;
        wrong["status"] = serde_json::json!("half_done");
        assert!(serde_json::from_value::<RotationJobView>(wrong).is_err());
    }
}
