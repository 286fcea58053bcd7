//! What reconciling the file into the store must change, decided without touching the
//! database, so both dialects apply the same plan.

use crate::rows::ExistingToken;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use velvet_core::audit::{AuditDraft, AuditEntry, seal_record};
use velvet_core::config::TokenSpec;
use velvet_core::keyring::{Keyring, KeyringError};

/// A declared token serialised for storage.
pub(crate) struct Declared<'a> {
    pub spec: &'a TokenSpec,
    pub spec_json: String,
    pub spec_hash: String,
    pub tags_json: String,
}

impl<'a> Declared<'a> {
    pub fn new(spec: &'a TokenSpec) -> Self {
        let spec_json = serde_json::to_string(spec).expect("specs serialise");
        let spec_hash = hex::encode(Sha256::digest(spec_json.as_bytes()));
        Self {
            spec,
            tags_json: serde_json::to_string(&spec.tags).expect("tags serialise"),
            spec_json,
            spec_hash,
        }
    }

    /// When the next scheduled rotation is due, counted from the last one (or from now).
    pub fn next_rotation_at(
        &self,
        last: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let every = chrono::Duration::from_std(self.spec.rotate_every?).ok()?;
        Some(last.unwrap_or(now) + every)
    }
}

pub(crate) enum Change<'a> {
    Declare(Declared<'a>),
    Update {
        id: i64,
        decl: Declared<'a>,
        last_rotated_at: Option<DateTime<Utc>>,
    },
    Retire {
        id: i64,
        name: String,
    },
}

pub(crate) fn plan<'a>(
    tokens: &'a [TokenSpec],
    existing: &[ExistingToken],
) -> (Vec<Change<'a>>, usize) {
    let mut changes = Vec::new();
    let mut unchanged = 0;
    for spec in tokens {
        let decl = Declared::new(spec);
        match existing.iter().find(|e| e.name == spec.name) {
            None => changes.push(Change::Declare(decl)),
            Some(e) if e.spec_hash != decl.spec_hash || e.status != "active" => {
                changes.push(Change::Update {
                    id: e.id,
                    decl,
                    last_rotated_at: e.last_rotated_at,
                })
            }
            Some(_) => unchanged += 1,
        }
    }
    for e in existing {
        if e.status == "active" && !tokens.iter().any(|t| t.name == e.name) {
            changes.push(Change::Retire {
                id: e.id,
                name: e.name.clone(),
            });
        }
    }
    (changes, unchanged)
}

/// The next audit record after `head` (`None` for an empty chain), ready to insert.
pub(crate) fn next_audit(
    keyring: &Keyring,
    head: Option<(i64, String)>,
    draft: &AuditDraft,
) -> Result<AuditEntry, KeyringError> {
    let (seq, prev_hex) = match head {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, hex::encode(velvet_core::audit::GENESIS_HASH)),
    };
    let mut prev = [0u8; 32];
    hex::decode_to_slice(&prev_hex, &mut prev).map_err(|_| KeyringError::Decrypt)?;
    let at = velvet_core::audit::now_micros();
    let detail = draft.detail.to_string();
    let (key_id, hash) = seal_record(keyring, seq, at, &detail, draft, &prev)?;
    Ok(AuditEntry {
        seq,
        at,
        actor: draft.actor.clone(),
        action: draft.action.clone(),
        target: draft.target.clone(),
        outcome: draft.outcome.clone(),
        detail,
        key_id,
        prev_hash: prev_hex,
        hash: hex::encode(hash),
    })
}
