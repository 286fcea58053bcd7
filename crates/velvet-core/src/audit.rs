//! The tamper-evident audit chain. Each record's hash is
//! `HMAC-SHA256(audit_key[key_id], prev_hash || canonical(record))`; the key id is stored with the
//! record so the keyring can rotate without breaking older links.

use crate::keyring::{Keyring, KeyringError};
use chrono::{DateTime, Utc};
use hmac::Mac;
use serde::Serialize;

/// The `prev_hash` of the first record.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

/// What a caller asks to record; the store assigns `seq`, `at`, key and hashes.
#[derive(Debug, Clone, Serialize)]
pub struct AuditDraft {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    /// JSON object with details; never a secret value, only fingerprints.
    pub detail: serde_json::Value,
}

impl AuditDraft {
    pub fn new(actor: &str, action: &str, target: &str, outcome: &str) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// Named constructors, so every place records the same action with the same words.
    pub fn token_declared(target: &str, detail: serde_json::Value) -> Self {
        Self::new("system:reconcile", "token.declared", target, "success").detail(detail)
    }

    pub fn token_updated(target: &str, detail: serde_json::Value) -> Self {
        Self::new("system:reconcile", "token.updated", target, "success").detail(detail)
    }

    pub fn token_retired(target: &str) -> Self {
        Self::new("system:reconcile", "token.retired", target, "success")
    }

    pub fn version_imported(actor: &str, target: &str, version: i64, fingerprint: &str) -> Self {
        Self::new(actor, "version.imported", target, "success")
            .detail(serde_json::json!({"version": version, "fingerprint": fingerprint}))
    }

    pub fn keys_rotated(actor: &str, key_id: &str, resealed: u64) -> Self {
        Self::new(actor, "keys.rotated", "keyring", "success")
            .detail(serde_json::json!({"key_id": key_id, "resealed": resealed}))
    }
}

/// One stored record of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    /// The detail JSON exactly as stored and hashed.
    pub detail: String,
    pub key_id: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Length-prefixed fields, so no two different records share an encoding.
pub fn canonical(
    out: &mut Vec<u8>,
    seq: i64,
    at: DateTime<Utc>,
    fields: [&str; 5], // actor, action, target, outcome, detail
) {
    out.clear();
    out.extend_from_slice(b"velvet-audit-v1");
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&at.timestamp_micros().to_be_bytes());
    for f in fields {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f.as_bytes());
    }
}

/// Audit timestamps carry microseconds, the precision both SQLite text and PostgreSQL keep.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).expect("now is in range")
}

/// Computes the hash of a record about to be appended.
pub fn seal_record(
    keyring: &Keyring,
    seq: i64,
    at: DateTime<Utc>,
    draft_detail: &str,
    draft: &AuditDraft,
    prev_hash: &[u8; 32],
) -> Result<(String, [u8; 32]), KeyringError> {
    let key = keyring.current(Utc::now())?;
    let mut buf = Vec::with_capacity(256);
    canonical(
        &mut buf,
        seq,
        at,
        [
            &draft.actor,
            &draft.action,
            &draft.target,
            &draft.outcome,
            draft_detail,
        ],
    );
    let mut mac = key.audit_mac().clone();
    mac.update(prev_hash);
    mac.update(&buf);
    Ok((key.id.clone(), mac.finalize().into_bytes().into()))
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub entries: u64,
    /// `{seq}:{hash}` of the last record walked, for storage off the machine.
    pub head: Option<String>,
    pub first_bad_seq: Option<i64>,
    /// Why the first bad record is bad.
    pub problem: Option<String>,
}

/// Walks records in `seq` order and finds the first one that breaks the chain. Feed it pages
/// with [`ChainVerifier::push`], then call [`ChainVerifier::finish`].
#[derive(Debug)]
pub struct ChainVerifier<'k> {
    keyring: &'k Keyring,
    expected_seq: i64,
    prev_hash: [u8; 32],
    entries: u64,
    head: Option<String>,
    first_bad: Option<(i64, String)>,
    buf: Vec<u8>,
    cached_key: Option<(String, hmac::Hmac<sha2::Sha256>)>,
    expected_head: Option<(i64, String)>,
    head_seen: bool,
}

impl<'k> ChainVerifier<'k> {
    pub fn new(keyring: &'k Keyring) -> Self {
        Self {
            keyring,
            expected_seq: 1,
            prev_hash: GENESIS_HASH,
            entries: 0,
            head: None,
            first_bad: None,
            buf: Vec::with_capacity(512),
            cached_key: None,
            expected_head: None,
            head_seen: false,
        }
    }

    /// Requires the chain to contain `head` (`seq:hash`, exported earlier by `--export-head`),
    /// which detects records removed from the end.
    pub fn expect_head(mut self, head: &str) -> Result<Self, String> {
        let (seq, hash) = head
            .split_once(':')
            .and_then(|(s, h)| Some((s.parse::<i64>().ok()?, h.to_ascii_lowercase())))
            .ok_or_else(|| format!("`{head}` is not a head: expected SEQ:HASH"))?;
        self.expected_head = Some((seq, hash));
        Ok(self)
    }

    /// True once a bad record was found; later records need not be read.
    pub fn failed(&self) -> bool {
        self.first_bad.is_some()
    }

    pub fn push(&mut self, e: &AuditEntry) {
        if self.failed() {
            return;
        }
        if let Err(problem) = self.check(e) {
            self.first_bad = Some((e.seq, problem));
            return;
        }
        if let Some((seq, hash)) = &self.expected_head
            && *seq == e.seq
        {
            if *hash != e.hash {
                self.first_bad = Some((e.seq, "hash differs from the exported head".into()));
                return;
            }
            self.head_seen = true;
        }
        self.entries += 1;
        self.expected_seq = e.seq + 1;
        self.head = Some(format!("{}:{}", e.seq, e.hash));
    }

    fn check(&mut self, e: &AuditEntry) -> Result<(), String> {
        if e.seq != self.expected_seq {
            return Err(format!(
                "expected seq {}, found {} (a record was deleted or reordered)",
                self.expected_seq, e.seq
            ));
        }
        let mut prev = [0u8; 32];
        if hex::decode_to_slice(&e.prev_hash, &mut prev).is_err() || prev != self.prev_hash {
            return Err("prev_hash does not match the previous record's hash".into());
        }
        let mut stored = [0u8; 32];
        if hex::decode_to_slice(&e.hash, &mut stored).is_err() {
            return Err("hash is not 64 hex characters".into());
        }
        let mac = match &self.cached_key {
            Some((id, mac)) if *id == e.key_id => mac.clone(),
            _ => {
                let key = self
                    .keyring
                    .lookup(&e.key_id)
                    .map_err(|err| err.to_string())?;
                self.cached_key = Some((e.key_id.clone(), key.audit_mac().clone()));
                key.audit_mac().clone()
            }
        };
        canonical(
            &mut self.buf,
            e.seq,
            e.at,
            [&e.actor, &e.action, &e.target, &e.outcome, &e.detail],
        );
        let mut mac = mac;
        mac.update(&prev);
        mac.update(&self.buf);
        mac.verify_slice(&stored)
            .map_err(|_| "hash does not match the record's contents".to_string())?;
        self.prev_hash = stored;
        Ok(())
    }

    pub fn finish(self) -> VerifyReport {
        let mut first_bad = self.first_bad;
        if first_bad.is_none()
            && let Some((seq, _)) = &self.expected_head
            && !self.head_seen
        {
            first_bad = Some((
                *seq,
                format!(
                    "record {seq} of the exported head is missing (records were removed from the end)"
                ),
            ));
        }
        VerifyReport {
            ok: first_bad.is_none(),
            entries: self.entries,
            head: self.head,
            first_bad_seq: first_bad.as_ref().map(|(s, _)| *s),
            problem: first_bad.map(|(_, p)| p),
        }
    }
}
