//! Rotation jobs as the store keeps them and the engine drives them, and the per-consumer
//! states of a job. What the API shows of them is `job_view`.

use crate::config::FlowType;
use crate::rotation::JobState;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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

/// Where one consumer is in a job.
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
pub enum ConsumerStatus {
    Pending,
    InProgress,
    Distributed,
    Verified,
    Failed,
    RolledBack,
}

/// One consumer's state in a job.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub lock_key: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When its first attempt began (the console's timeline starts each bar there).
    pub started_at: Option<DateTime<Utc>>,
}

/// A rotation job: the stored row, its consumers, and what the engine needs to drive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationJob {
    pub job_id: String,
    pub token: String,
    pub flow_type: FlowType,
    pub state: JobState,
    pub new_version: Option<i64>,
    pub previous_version: Option<i64>,
    pub requested_by: String,
    /// The requester's role at kickoff: what an unattended revoke may do on its behalf (I2b).
    pub requested_role: Option<crate::identity::Role>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub consumers: Vec<JobConsumer>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub wake_at: Option<DateTime<Utc>>,
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
}
