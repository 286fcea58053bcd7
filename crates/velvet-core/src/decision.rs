//! Authorization decisions with their ordered trace, and security events (design §7). A
//! decision's `trace_hash` covers every step, so an edited trace no longer matches its hash.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// One rule checked on the way to a decision: `token_valid`, `not_revoked`, `permission`…
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DecisionStep {
    pub rule: String,
    /// `pass` or `fail`.
    pub outcome: String,
    pub detail: String,
}

impl DecisionStep {
    pub fn new(rule: &str, pass: bool, detail: impl Into<String>) -> Self {
        Self {
            rule: rule.into(),
            outcome: if pass { "pass" } else { "fail" }.into(),
            detail: detail.into(),
        }
    }

    pub fn passed(&self) -> bool {
        self.outcome == "pass"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Decision {
    pub id: String,
    pub at: DateTime<Utc>,
    pub subject: String,
    pub permission: String,
    pub resource: String,
    /// `allow` when every step passed, else `deny`.
    pub decision: String,
    pub trace_hash: String,
    pub steps: Vec<DecisionStep>,
}

impl Decision {
    pub fn new(subject: &str, permission: &str, resource: &str, steps: Vec<DecisionStep>) -> Self {
        let allow = !steps.is_empty() && steps.iter().all(DecisionStep::passed);
        Self {
            id: new_id("dec"),
            at: crate::audit::now_micros(),
            subject: subject.into(),
            permission: permission.into(),
            resource: resource.into(),
            decision: if allow { "allow" } else { "deny" }.into(),
            trace_hash: trace_hash(subject, permission, resource, &steps),
            steps,
        }
    }

    pub fn allowed(&self) -> bool {
        self.decision == "allow"
    }
}

/// SHA-256 over the decision's inputs and steps, each field length-prefixed so no two
/// different traces encode alike.
pub fn trace_hash(
    subject: &str,
    permission: &str,
    resource: &str,
    steps: &[DecisionStep],
) -> String {
    let mut h = Sha256::new();
    let mut field = |s: &str| {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    };
    field(subject);
    field(permission);
    field(resource);
    for s in steps {
        field(&s.rule);
        field(&s.outcome);
        field(&s.detail);
    }
    hex::encode(h.finalize())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// A normalised security event: `auth_failed`, `rate_limited`, `token_revoked`,
/// `audit_write_failed`, `gate_denied`…
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SecurityEvent {
    pub id: String,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub severity: String,
    pub subject: Option<String>,
    pub client: Option<String>,
    pub decision_id: Option<String>,
    pub job_id: Option<String>,
    pub detail: String,
}

impl SecurityEvent {
    pub fn new(kind: &str, severity: Severity, detail: impl Into<String>) -> Self {
        Self {
            id: new_id("sev"),
            at: crate::audit::now_micros(),
            kind: kind.into(),
            severity: severity.as_str().into(),
            subject: None,
            client: None,
            decision_id: None,
            job_id: None,
            detail: detail.into(),
        }
    }
}

fn new_id(prefix: &str) -> String {
    let mut raw = [0u8; 10];
    getrandom::fill(&mut raw).expect("OS randomness");
    format!("{prefix}_{}", hex::encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_allows_only_when_every_step_passes_and_its_hash_covers_the_trace() {
        let ok = vec![
            DecisionStep::new("token_valid", true, "service token st_1"),
            DecisionStep::new(
                "permission",
                true,
                "operator grants velvet.rotations.kickoff",
            ),
        ];
        let d = Decision::new(
            "token:ci",
            "velvet.rotations.kickoff",
            "POST /x",
            ok.clone(),
        );
        assert!(d.allowed());
        let mut edited = ok.clone();
        edited[1].detail = "admin grants velvet.rotations.kickoff".into();
        assert_ne!(
            d.trace_hash,
            trace_hash("token:ci", "velvet.rotations.kickoff", "POST /x", &edited)
        );
        assert_eq!(
            d.trace_hash,
            trace_hash("token:ci", "velvet.rotations.kickoff", "POST /x", &ok)
        );
        let mut denied = ok;
        denied.push(DecisionStep::new("gate", false, "totp missing"));
        assert!(!Decision::new("token:ci", "p", "r", denied).allowed());
        assert!(
            !Decision::new("token:ci", "p", "r", vec![]).allowed(),
            "no evidence, no allow"
        );
    }
}
