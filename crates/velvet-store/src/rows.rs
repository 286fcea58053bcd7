//! Row types shared by both dialects, and their conversion into domain records, so domain
//! types never depend on sqlx.

use crate::StoreError;
use chrono::{DateTime, Utc};
use velvet_core::audit::AuditEntry;
use velvet_core::keyring::Sealed;
use velvet_core::model::{
    ConsumerRecord, SealedVersion, TokenRecord, TokenStatus, VersionLabel, VersionRecord,
};

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
}

impl TryFrom<ConsumerRow> for ConsumerRecord {
    type Error = StoreError;
    fn try_from(r: ConsumerRow) -> Result<Self, StoreError> {
        Ok(ConsumerRecord {
            spec: serde_json::from_str(&r.spec).map_err(|_| corrupt("consumer spec", &r.name))?,
            name: r.name,
            kind: r.kind,
            lock_key: r.lock_key,
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

/// The chain head as stored: last seq and hash.
#[derive(sqlx::FromRow)]
pub(crate) struct AuditHead {
    pub seq: i64,
    pub hash: String,
}

#[derive(sqlx::FromRow)]
pub(crate) struct ExistingToken {
    pub id: i64,
    pub name: String,
    pub spec_hash: String,
    pub status: String,
    pub last_rotated_at: Option<DateTime<Utc>>,
}
