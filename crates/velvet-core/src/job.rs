//! Rotation jobs as stored and as the API shows them (design §5, the job object), and the
//! per-consumer states of a job.

use crate::config::FlowType;
use crate::rotation::{JobState, Revert};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// A job id: `rot_` and 26 lowercase base32 characters (130 random bits).
pub fn new_job_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut raw = [0u8; 26];
    getrandom::fill(&mut raw).expect("the OS random generator is available");
    let id: String = raw
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect();
    format!("rot_{id}")
}

/// Whether `s` looks like a job id (cheap validation before a lookup).
pub fn is_job_id(s: &str) -> bool {
    s.strip_prefix("rot_").is_some_and(|id| {
        id.len() == 26
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    })
}

macro_rules! consumer_status {
    ($($variant:ident = $word:literal),* $(,)?) => {
        /// Where one consumer is in a job.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum ConsumerStatus { $($variant),* }

        impl ConsumerStatus {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $word),* }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($word => Some(Self::$variant),)* _ => None }
            }
        }
    };
}

consumer_status!(
    Pending = "pending",
    InProgress = "in_progress",
    Distributed = "distributed",
    Verified = "verified",
    Failed = "failed",
    RolledBack = "rolled_back",
);

/// One consumer's state in a job: the `consumers[]` entries of the job object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JobConsumer {
    pub consumer: String,
    pub kind: String,
    pub status: ConsumerStatus,
    pub attempts: i64,
    /// Never holds a secret value.
    pub last_error: Option<String>,
    /// What the consumer was verified to hold.
    pub fingerprint: Option<String>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub lock_key: Option<String>,
    #[serde(skip)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When its first attempt began (the console's timeline starts each bar there).
    pub started_at: Option<DateTime<Utc>>,
}

/// A rotation job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Job {
    pub job_id: String,
    pub token: String,
    pub flow_type: FlowType,
    #[serde(flatten)]
    pub state: JobStateView,
    pub new_version: Option<i64>,
    pub previous_version: Option<i64>,
    pub requested_by: String,
    /// The requester's role at kickoff: what an unattended revoke may do on its behalf (I2b).
    #[serde(skip)]
    pub requested_role: Option<crate::identity::Role>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// Filled by the API from the revocation gate that applies (a later issue).
    #[schema(value_type = Option<Object>)]
    pub gate: Option<serde_json::Value>,
    pub consumers: Vec<JobConsumer>,
    #[serde(skip)]
    pub lease_owner: Option<String>,
    #[serde(skip)]
    pub lease_expires_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub wake_at: Option<DateTime<Utc>>,
}

/// The state as the API shows it: `stage`, `status`, `awaiting`; the internals are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JobStateView {
    pub stage: crate::rotation::Stage,
    pub status: crate::rotation::JobStatus,
    pub awaiting: Option<crate::rotation::Awaiting>,
    #[serde(skip)]
    pub revoke_started: bool,
    #[serde(skip)]
    pub reverting: Option<Revert>,
}

impl From<JobState> for JobStateView {
    fn from(s: JobState) -> Self {
        Self {
            stage: s.stage,
            status: s.status,
            awaiting: s.awaiting,
            revoke_started: s.revoke_started,
            reverting: s.reverting,
        }
    }
}

impl From<JobStateView> for JobState {
    fn from(s: JobStateView) -> Self {
        Self {
            stage: s.stage,
            status: s.status,
            awaiting: s.awaiting,
            revoke_started: s.revoke_started,
            reverting: s.reverting,
        }
    }
}

/// What changes besides the state when a job moves on, applied in the same transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobChanges {
    /// Set (or clear, with `Some(None)`) the job's error.
    pub error: Option<Option<String>>,
    /// When a waiting job is due again.
    pub wake_at: Option<Option<DateTime<Utc>>>,
    /// Distribute finished: pending → current, current → previous.
    pub promote: bool,
    /// Revoke finished: previous → revoked.
    pub revoke_previous: bool,
    /// Rollback or abort finished: the new version is discarded and the previous is current.
    pub discard_new: bool,
    /// Failed consumers go back to pending (retry_failed).
    pub reset_failed_consumers: bool,
    /// Forget the job's new version so the next mint makes a fresh one.
    pub clear_new_version: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_prefixed_random_and_checkable() {
        let a = new_job_id();
        assert!(is_job_id(&a), "{a}");
        assert_ne!(a, new_job_id());
        assert!(!is_job_id("rot_short") && !is_job_id("job_aaaaaaaaaaaaaaaaaaaaaaaaaa"));
    }

    #[test]
    fn job_serialises_in_the_contract_shape() {
        let now = Utc::now();
        let job = Job {
            job_id: "rot_x".into(),
            token: "t".into(),
            flow_type: FlowType::Staged,
            state: JobState::NEW.into(),
            new_version: None,
            previous_version: Some(1),
            requested_by: "admin".into(),
            requested_role: None,
            reason: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
            error: None,
            gate: None,
            consumers: vec![],
            lease_owner: Some("r1".into()),
            lease_expires_at: None,
            wake_at: None,
        };
        let v = serde_json::to_value(&job).unwrap();
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
    }
}
