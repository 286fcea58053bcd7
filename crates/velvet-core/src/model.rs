//! Records as the store keeps them: tokens, consumers, versions, flags. No secret values here,
//! only fingerprints.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Whether a token is still declared in `velvet.yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenStatus {
    Active,
    /// Removed from the file; kept with its versions for audit, never deleted.
    Retired,
}

impl TokenStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "retired" => Some(Self::Retired),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenRecord {
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub source_kind: String,
    pub status: TokenStatus,
    /// The token's declaration as JSON (secrets are `*_env` names, never values).
    pub spec: serde_json::Value,
    pub current_version: Option<i64>,
    pub last_rotated_at: Option<DateTime<Utc>>,
    pub next_rotation_at: Option<DateTime<Utc>>,
    pub consumer_count: i64,
    /// The token's unfinished rotation job, if any.
    pub active_job_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsumerRecord {
    pub name: String,
    pub kind: String,
    pub lock_key: Option<String>,
    pub spec: serde_json::Value,
    /// The latest probe (design §11), if one ran.
    pub health: Option<Health>,
}

/// What a probe found (design §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Holds the current version (for a source: the current credential logs in).
    InSync,
    /// Holds another value.
    Drifted,
    /// The credential is refused (a 401 or 403).
    Stale,
    /// Could not be reached.
    Unreachable,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InSync => "in_sync",
            Self::Drifted => "drifted",
            Self::Stale => "stale",
            Self::Unreachable => "unreachable",
        }
    }
}

/// A consumer's (or a source's) latest probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub state: HealthState,
    pub checked_at: DateTime<Utc>,
    pub detail: String,
}

/// The label of one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VersionLabel {
    Pending,
    Current,
    Previous,
    Revoked,
    Discarded,
}

impl VersionLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Current => "current",
            Self::Previous => "previous",
            Self::Revoked => "revoked",
            Self::Discarded => "discarded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "current" => Self::Current,
            "previous" => Self::Previous,
            "revoked" => Self::Revoked,
            "discarded" => Self::Discarded,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VersionRecord {
    pub version: i64,
    pub label: VersionLabel,
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A sealed value with the row it belongs to, for re-sealing under a new key.
#[derive(Debug, Clone)]
pub struct SealedVersion {
    pub token: String,
    pub version: i64,
    pub sealed: crate::keyring::Sealed,
}

/// A feature flag and where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlagRecord {
    pub name: String,
    pub enabled: bool,
    /// `file` (velvet.yaml default) or `override` (set through the API or CLI).
    pub source: String,
}

/// What reconciling the file into the store changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub declared: Vec<String>,
    pub updated: Vec<String>,
    pub retired: Vec<String>,
    pub unchanged: usize,
}

/// A service token as stored: never the token itself, only its hash (kept in the store) and a
/// display prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceTokenRecord {
    pub id: String,
    pub name: String,
    pub role: String,
    pub prefix: String,
    pub operator: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ServiceTokenRecord {
    /// Usable now: not revoked and not expired.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| t > now)
    }
}
