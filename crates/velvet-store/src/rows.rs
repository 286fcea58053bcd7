//! Row types shared by both dialects, and their conversion into domain records, so domain
//! types never depend on sqlx.

use crate::StoreError;
use chrono::{DateTime, Utc};
use velvet_core::audit::AuditEntry;
use velvet_core::config::FlowType;
use velvet_core::identity::Role;
use velvet_core::job::{ConsumerStatus, JobConsumer, RotationJob};
use velvet_core::keyring::Sealed;
use velvet_core::model::{
    ConsumerRecord, SealedVersion, TokenRecord, TokenStatus, VersionLabel, VersionRecord,
};
use velvet_core::rotation::Word as _;
use velvet_core::rotation::{Awaiting, JobState, JobStatus, Revert, Stage};

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Unavailable(format!("the store holds an invalid {what} `{value}`"))
}

#[derive(sqlx::FromRow)]
pub(crate) struct TokenRow {
    pub name: String,
    pub description: String,
    pub tags: String,
    pub source_kind: String,
    pub status: String,
    pub spec: String,
    pub current_version: Option<i64>,
    pub last_rotated_at: Option<DateTime<Utc>>,
    pub next_rotation_at: Option<DateTime<Utc>>,
    pub consumer_count: i64,
    pub active_job_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<TokenRow> for TokenRecord {
    type Error = StoreError;
    fn try_from(r: TokenRow) -> Result<Self, StoreError> {
        Ok(TokenRecord {
            status: TokenStatus::parse(&r.status)
                .ok_or_else(|| corrupt("token status", &r.status))?,
            tags: serde_json::from_str(&r.tags).map_err(|_| corrupt("tag list", &r.tags))?,
            spec: serde_json::from_str(&r.spec).map_err(|_| corrupt("token spec", &r.name))?,
            name: r.name,
            description: r.description,
            source_kind: r.source_kind,
            current_version: r.current_version,
            last_rotated_at: r.last_rotated_at,
            next_rotation_at: r.next_rotation_at,
            consumer_count: r.consumer_count,
            active_job_id: r.active_job_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ConsumerRow {
    pub name: String,
    pub kind: String,
    pub lock_key: Option<String>,
    pub spec: String,
    pub health: Option<String>,
}

impl TryFrom<ConsumerRow> for ConsumerRecord {
    type Error = StoreError;
    fn try_from(r: ConsumerRow) -> Result<Self, StoreError> {
        Ok(ConsumerRecord {
            spec: serde_json::from_str(&r.spec).map_err(|_| corrupt("consumer spec", &r.name))?,
            name: r.name,
            kind: r.kind,
            lock_key: r.lock_key,
            // A health that does not parse is as good as none: the next probe rewrites it.
            health: r.health.and_then(|h| serde_json::from_str(&h).ok()),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct VersionRow {
    pub version: i64,
    pub label: String,
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<VersionRow> for VersionRecord {
    type Error = StoreError;
    fn try_from(r: VersionRow) -> Result<Self, StoreError> {
        Ok(VersionRecord {
            label: VersionLabel::parse(&r.label)
                .ok_or_else(|| corrupt("version label", &r.label))?,
            version: r.version,
            fingerprint: r.fingerprint,
            created_at: r.created_at,
            activated_at: r.activated_at,
            revoked_at: r.revoked_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SealedRow {
    pub token: String,
    pub version: i64,
    pub key_id: String,
    pub ciphertext: Vec<u8>,
}

impl From<SealedRow> for SealedVersion {
    fn from(r: SealedRow) -> Self {
        SealedVersion {
            token: r.token,
            version: r.version,
            sealed: Sealed {
                key_id: r.key_id,
                ciphertext: r.ciphertext,
            },
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
    pub key_id: String,
    pub prev_hash: String,
    pub hash: String,
}

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> Self {
        AuditEntry {
            seq: r.seq,
            at: r.at,
            actor: r.actor,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            detail: r.detail,
            key_id: r.key_id,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

pub(crate) struct ExistingToken {
    pub id: i64,
    pub name: String,
    pub spec_hash: String,
    pub status: String,
    pub last_rotated_at: Option<DateTime<Utc>>,
    /// The stored declaration's `schedule`, to notice when it changes.
    pub schedule: serde_json::Value,
}

pub(crate) struct JobRow {
    pub id: String,
    pub token: String,
    pub flow_type: String,
    pub stage: String,
    pub status: String,
    pub awaiting: Option<String>,
    pub revoke_started: bool,
    pub reverting: Option<String>,
    pub new_version: Option<i64>,
    pub previous_version: Option<i64>,
    pub requested_by: String,
    pub requested_role: Option<String>,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub wake_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The columns [`JobRow`] reads, for `SELECT {JOB_COLUMNS} FROM rotation_jobs j JOIN tokens t`.
pub(crate) const JOB_COLUMNS: &str = "j.id, t.name AS token, j.flow_type, j.stage, j.status, j.awaiting, j.revoke_started,
    j.reverting, j.new_version, j.previous_version, j.requested_by, j.reason, j.error, j.lease_owner,
    j.lease_expires_at, j.wake_at, j.created_at, j.updated_at, j.finished_at, j.requested_role";

pub(crate) struct JobConsumerRow {
    pub name: String,
    pub kind: String,
    pub lock_key: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub fingerprint: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) const JOB_CONSUMERS_SQL: &str = "SELECT c.name, c.kind, c.lock_key, jc.status, jc.attempts, jc.last_error,
    jc.fingerprint, jc.next_attempt_at, jc.started_at, jc.updated_at
    FROM rotation_job_consumers jc JOIN consumers c ON c.id = jc.consumer_id WHERE jc.job_id = $1 ORDER BY c.id";

impl TryFrom<JobConsumerRow> for JobConsumer {
    type Error = StoreError;
    fn try_from(r: JobConsumerRow) -> Result<Self, StoreError> {
        Ok(JobConsumer {
            status: ConsumerStatus::parse(&r.status)
                .ok_or_else(|| corrupt("consumer status", &r.status))?,
            consumer: r.name,
            kind: r.kind,
            attempts: r.attempts,
            last_error: r.last_error,
            fingerprint: r.fingerprint,
            updated_at: r.updated_at,
            lock_key: r.lock_key,
            next_attempt_at: r.next_attempt_at,
            started_at: r.started_at,
        })
    }
}

impl JobRow {
    pub fn into_job(self, consumers: Vec<JobConsumerRow>) -> Result<RotationJob, StoreError> {
        let word = |what: &str, s: &str| corrupt(what, s);
        Ok(RotationJob {
            flow_type: match self.flow_type.as_str() {
                "staged" => FlowType::Staged,
                "auto" => FlowType::Auto,
                "emergency" => FlowType::Emergency,
                other => return Err(word("flow type", other)),
            },
            state: JobState {
                stage: Stage::parse(&self.stage).ok_or_else(|| word("stage", &self.stage))?,
                status: JobStatus::parse(&self.status)
                    .ok_or_else(|| word("job status", &self.status))?,
                awaiting: self
                    .awaiting
                    .as_deref()
                    .map(|a| Awaiting::parse(a).ok_or_else(|| word("awaiting", a)))
                    .transpose()?,
                revoke_started: self.revoke_started,
                reverting: self
                    .reverting
                    .as_deref()
                    .map(|r| Revert::parse(r).ok_or_else(|| word("revert", r)))
                    .transpose()?,
            },
            consumers: consumers
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            job_id: self.id,
            token: self.token,
            new_version: self.new_version,
            previous_version: self.previous_version,
            requested_by: self.requested_by,
            requested_role: self.requested_role.as_deref().and_then(Role::parse),
            reason: self.reason,
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
            error: self.error,
            lease_owner: self.lease_owner,
            lease_expires_at: self.lease_expires_at,
            wake_at: self.wake_at,
        })
    }
}
