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

    pub fn service_token_created(actor: &str, id: &str, name: &str, role: &str) -> Self {
        Self::new(
            actor,
            "auth.token_created",
            &format!("service_token:{id}"),
            "success",
        )
        .detail(serde_json::json!({"name": name, "role": role}))
    }

    pub fn service_token_revoked(actor: &str, id: &str, name: &str) -> Self {
        Self::new(
            actor,
            "auth.token_revoked",
            &format!("service_token:{id}"),
            "success",
        )
        .detail(serde_json::json!({"name": name}))
    }

    pub fn operator_added(actor: &str, name: &str, role: &str) -> Self {
        Self::new(
            actor,
            "operator.added",
            &format!("operator:{name}"),
            "success",
        )
        .detail(serde_json::json!({"role": role}))
    }

    pub fn operator_totp_reset(actor: &str, name: &str) -> Self {
        Self::new(
            actor,
            "operator.totp_reset",
            &format!("operator:{name}"),
            "success",
        )
    }

    pub fn operator_logged_in(operator: &str, client: &str) -> Self {
        Self::new(
            &format!("operator:{operator}"),
            "operator.logged_in",
            &format!("operator:{operator}"),
            "success",
        )
        .detail(serde_json::json!({"client": client}))
    }

    pub fn operator_logged_out(actor: &str) -> Self {
        Self::new(actor, "operator.logged_out", actor, "success")
    }

    pub fn operator_sessions_revoked(actor: &str, operator: &str) -> Self {
        Self::new(
            actor,
            "operator.sessions_revoked",
            &format!("operator:{operator}"),
            "success",
        )
    }

    pub fn revoke_approved(actor: &str, job_id: &str, operator: &str) -> Self {
        Self::new(actor, "rotation.revoke_approved", job_id, "success")
            .detail(serde_json::json!({"operator": operator}))
    }

    pub fn flag_set(actor: &str, name: &str, enabled: bool) -> Self {
        Self::new(actor, "flag.set", &format!("flag:{name}"), "success")
            .detail(serde_json::json!({"enabled": enabled}))
    }

    pub fn rotation_requested(
        actor: &str,
        token: &str,
        job_id: &str,
        flow: &str,
        reason: Option<&str>,
    ) -> Self {
        Self::new(actor, "rotation.requested", token, "success")
            .detail(serde_json::json!({"job_id": job_id, "flow_type": flow, "reason": reason}))
    }

    pub fn version_minted(token: &str, job_id: &str, version: i64, fingerprint: &str) -> Self {
        Self::new("system:engine", "version.minted", token, "success").detail(
            serde_json::json!({"job_id": job_id, "version": version, "fingerprint": fingerprint}),
        )
    }

    pub fn keys_rotated(actor: &str, key_id: &str, resealed: u64) -> Self {
        Self::new(actor, "keys.rotated", "keyring", "success")
            .detail(serde_json::json!({"key_id": key_id, "resealed": resealed}))
    }
}

/// One stored record of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
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
    fields: [&[u8]; 5], // actor, action, target, outcome, detail
) {
    out.clear();
    out.extend_from_slice(b"velvet-audit-v1");
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&at.timestamp_micros().to_be_bytes());
    for f in fields {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
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
            draft.actor.as_bytes(),
            draft.action.as_bytes(),
            draft.target.as_bytes(),
            draft.outcome.as_bytes(),
            draft_detail.as_bytes(),
        ],
    );
    let mut mac = key.audit_mac().clone();
    mac.update(prev_hash);
    mac.update(&buf);
    Ok((key.id.clone(), mac.finalize().into_bytes().into()))
}

/// A borrowed view of one stored record, so scans need not allocate per row.
#[derive(Debug, Clone, Copy)]
pub struct AuditRecordRef<'a> {
    pub seq: i64,
    pub at_micros: i64,
    /// Text fields as stored bytes: hashing needs no UTF-8 check.
    pub actor: &'a [u8],
    pub action: &'a [u8],
    pub target: &'a [u8],
    pub outcome: &'a [u8],
    pub detail: &'a [u8],
    pub key_id: &'a str,
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
}

impl AuditEntry {
    pub fn as_record(&self) -> AuditRecordRef<'_> {
        AuditRecordRef {
            seq: self.seq,
            at_micros: self.at.timestamp_micros(),
            actor: self.actor.as_bytes(),
            action: self.action.as_bytes(),
            target: self.target.as_bytes(),
            outcome: self.outcome.as_bytes(),
            detail: self.detail.as_bytes(),
            key_id: &self.key_id,
            prev_hash: self.prev_hash.as_bytes(),
            hash: self.hash.as_bytes(),
        }
    }
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

/// Checks one contiguous range of records. Every record's hash covers only its own fields and
/// its stored `prev_hash`, so ranges can be checked on separate cores and joined with
/// [`join_ranges`], which checks the seams.
#[derive(Debug)]
pub struct RangeVerifier<'k> {
    keyring: &'k Keyring,
    expected_seq: i64,
    /// Whether `prev` holds the previous record's hash; not at the start of a later range.
    linked: bool,
    prev: [u8; 32],
    /// `prev` as the lowercase hex stored in the next record's `prev_hash`.
    prev_hex: [u8; 64],
    first_prev_hex: Option<String>,
    entries: u64,
    last_seq: Option<i64>,
    first_bad: Option<(i64, String)>,
    buf: Vec<u8>,
    cached_key: Option<(String, hmac::Hmac<sha2::Sha256>)>,
    expected_head: Option<(i64, String)>,
    head_seen: bool,
}

/// What one range found.
#[derive(Debug, Clone)]
pub struct RangeOutcome {
    pub first_seq: i64,
    /// The stored `prev_hash` of the range's first record, to check against the range before.
    pub first_prev_hash: Option<String>,
    pub last: Option<(i64, String)>,
    pub entries: u64,
    pub first_bad: Option<(i64, String)>,
    pub head_seen: bool,
}

impl<'k> RangeVerifier<'k> {
    /// A range starting at `first_seq`; the first range (seq 1) starts from the genesis hash.
    pub fn new(keyring: &'k Keyring, first_seq: i64, expected_head: Option<(i64, String)>) -> Self {
        Self {
            keyring,
            expected_seq: first_seq,
            linked: first_seq == 1,
            prev: GENESIS_HASH,
            prev_hex: [b'0'; 64],
            first_prev_hex: None,
            entries: 0,
            last_seq: None,
            first_bad: None,
            buf: Vec::with_capacity(512),
            cached_key: None,
            expected_head,
            head_seen: false,
        }
    }

    /// True once a bad record was found; later records need not be read.
    pub fn failed(&self) -> bool {
        self.first_bad.is_some()
    }

    pub fn push(&mut self, e: AuditRecordRef<'_>) {
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
            if !hash.as_bytes().eq_ignore_ascii_case(e.hash) {
                self.first_bad = Some((e.seq, "hash differs from the exported head".into()));
                return;
            }
            self.head_seen = true;
        }
        self.entries += 1;
        self.expected_seq = e.seq + 1;
        self.last_seq = Some(e.seq);
    }

    fn check(&mut self, e: AuditRecordRef<'_>) -> Result<(), String> {
        if e.seq != self.expected_seq {
            return Err(format!(
                "expected seq {}, found {} (a record was deleted or reordered)",
                self.expected_seq, e.seq
            ));
        }
        if !self.linked {
            // The first record of a later range: its link is checked at the seam.
            if hex::decode_to_slice(e.prev_hash, &mut self.prev).is_err() {
                return Err("prev_hash is not 64 hex characters".into());
            }
            hex::encode_to_slice(self.prev, &mut self.prev_hex).expect("64 bytes hold 32 in hex");
            self.first_prev_hex = Some(String::from_utf8_lossy(e.prev_hash).to_ascii_lowercase());
            self.linked = true;
        } else if e.prev_hash != self.prev_hex {
            return Err("prev_hash does not match the previous record's hash".into());
        }
        let mut mac = match &self.cached_key {
            Some((id, mac)) if id == e.key_id => mac.clone(),
            _ => {
                let key = self
                    .keyring
                    .lookup(e.key_id)
                    .map_err(|err| err.to_string())?;
                self.cached_key = Some((e.key_id.to_string(), key.audit_mac().clone()));
                key.audit_mac().clone()
            }
        };
        let at = DateTime::from_timestamp_micros(e.at_micros).ok_or("time out of range")?;
        canonical(
            &mut self.buf,
            e.seq,
            at,
            [e.actor, e.action, e.target, e.outcome, e.detail],
        );
        mac.update(&self.prev);
        mac.update(&self.buf);
        // Compare in hex, as stored: one encode instead of decoding two hashes per record.
        let computed: [u8; 32] = mac.finalize().into_bytes().into();
        let mut computed_hex = [0u8; 64];
        hex::encode_to_slice(computed, &mut computed_hex).expect("64 bytes hold 32 in hex");
        if e.hash != computed_hex {
            return Err("hash does not match the record's contents".into());
        }
        self.prev = computed;
        self.prev_hex = computed_hex;
        Ok(())
    }

    pub fn finish(self, first_seq: i64) -> RangeOutcome {
        RangeOutcome {
            first_seq,
            first_prev_hash: self.first_prev_hex,
            last: self.last_seq.map(|seq| (seq, hex::encode(self.prev))),
            entries: self.entries,
            first_bad: self.first_bad,
            head_seen: self.head_seen,
        }
    }
}

/// Parses an exported head `SEQ:HASH`.
pub fn parse_head(head: &str) -> Result<(i64, String), String> {
    head.split_once(':')
        .and_then(|(s, h)| Some((s.parse::<i64>().ok()?, h.to_ascii_lowercase())))
        .filter(|(_, h)| h.len() == 64)
        .ok_or_else(|| {
            format!("`{head}` is not a head: expected SEQ:HASH as printed by --export-head")
        })
}

/// Joins range outcomes (in seq order) into one report, checking that each range's first
/// record links to the previous range's last.
pub fn join_ranges(ranges: &[RangeOutcome], expected_head: Option<&(i64, String)>) -> VerifyReport {
    let mut entries = 0;
    let mut head: Option<(i64, String)> = None;
    let mut first_bad: Option<(i64, String)> = None;
    for r in ranges {
        if let (Some((_, last_hash)), Some(first_prev)) = (&head, &r.first_prev_hash)
            && last_hash != first_prev
        {
            first_bad = Some((
                r.first_seq,
                "prev_hash does not match the previous record's hash".into(),
            ));
            break;
        }
        // A range after an entirely missing one: its first record links to nothing we saw.
        if head.is_none() && r.first_prev_hash.is_some() {
            first_bad = Some((r.first_seq, "the previous record is missing".into()));
            break;
        }
        entries += r.entries;
        if let Some(bad) = &r.first_bad {
            first_bad = Some(bad.clone());
            break;
        }
        if r.last.is_some() {
            head = r.last.clone();
        }
    }
    if first_bad.is_none()
        && let Some((seq, _)) = expected_head
        && !ranges.iter().any(|r| r.head_seen)
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
        entries,
        head: head.map(|(seq, hash)| format!("{seq}:{hash}")),
        first_bad_seq: first_bad.as_ref().map(|(s, _)| *s),
        problem: first_bad.map(|(_, p)| p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(keyring: &Keyring, n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|seq| {
                let d = AuditDraft::new("a", "act", &format!("t{seq}"), "success");
                let at = now_micros();
                let (key_id, hash) = seal_record(keyring, seq, at, "{}", &d, &prev).unwrap();
                let e = AuditEntry {
                    seq,
                    at,
                    actor: d.actor,
                    action: d.action,
                    target: d.target,
                    outcome: d.outcome,
                    detail: "{}".into(),
                    key_id,
                    prev_hash: hex::encode(prev),
                    hash: hex::encode(hash),
                };
                prev = hash;
                e
            })
            .collect()
    }

    /// Verifies `entries` split at `cuts` (range start seqs after the first).
    fn verify(
        keyring: &Keyring,
        entries: &[AuditEntry],
        cuts: &[i64],
        head: Option<&str>,
    ) -> VerifyReport {
        let head = head.map(|h| parse_head(h).unwrap());
        let mut starts = vec![1];
        starts.extend_from_slice(cuts);
        let outcomes: Vec<RangeOutcome> = starts
            .iter()
            .enumerate()
            .map(|(i, &start)| {
                let end = starts.get(i + 1).copied().unwrap_or(i64::MAX);
                let mut v = RangeVerifier::new(keyring, start, head.clone());
                for e in entries
                    .iter()
                    .filter(|e| (i == 0 || e.seq >= start) && e.seq < end)
                {
                    v.push(e.as_record());
                }
                v.finish(start)
            })
            .collect();
        join_ranges(&outcomes, head.as_ref())
    }

    fn keyring() -> Keyring {
        Keyring::generate(std::path::Path::new("/nonexistent/k.json"), Utc::now())
    }

    #[test]
    fn ranges_agree_with_one_pass_on_every_tampering() {
        let kr = keyring();
        let good = chain(&kr, 30);
        for cuts in [vec![], vec![11], vec![8, 16, 24]] {
            let r = verify(&kr, &good, &cuts, None);
            assert!(r.ok && r.entries == 30, "{cuts:?} {r:?}");
            assert_eq!(
                r.head.as_deref(),
                Some(format!("30:{}", good[29].hash).as_str())
            );

            let mut edited = good.clone();
            edited[14].outcome = "failure".into();
            assert_eq!(
                verify(&kr, &edited, &cuts, None).first_bad_seq,
                Some(15),
                "edit {cuts:?}"
            );

            for deleted in [1, 10, 11, 16, 17, 29] {
                let mut d = good.clone();
                d.retain(|e| e.seq != deleted);
                let r = verify(&kr, &d, &cuts, None);
                let expect = if deleted == 30 {
                    None
                } else {
                    Some(deleted + 1)
                };
                assert_eq!(
                    r.first_bad_seq, expect,
                    "delete {deleted} cuts {cuts:?}: {r:?}"
                );
            }

            let mut gap = good.clone();
            gap.retain(|e| !(9..=16).contains(&e.seq));
            assert_eq!(
                verify(&kr, &gap, &cuts, None).first_bad_seq,
                Some(17),
                "a whole range missing {cuts:?}"
            );

            let mut swapped = good.clone();
            let (a, b) = (swapped[20].clone(), swapped[21].clone());
            swapped[20] = AuditEntry { seq: 21, ..b };
            swapped[21] = AuditEntry { seq: 22, ..a };
            assert_eq!(
                verify(&kr, &swapped, &cuts, None).first_bad_seq,
                Some(21),
                "reorder {cuts:?}"
            );

            let head = format!("20:{}", good[19].hash);
            assert!(verify(&kr, &good, &cuts, Some(&head)).ok);
            let truncated: Vec<_> = good.iter().filter(|e| e.seq < 20).cloned().collect();
            let r = verify(&kr, &truncated, &cuts, Some(&head));
            assert_eq!(
                (r.ok, r.first_bad_seq),
                (false, Some(20)),
                "truncation {cuts:?}"
            );
        }
    }

    #[test]
    fn rows_outside_the_numbering_are_caught() {
        let kr = keyring();
        let mut c = chain(&kr, 5);
        let mut forged = c[0].clone();
        forged.seq = 0;
        c.insert(0, forged);
        assert_eq!(verify(&kr, &c, &[], None).first_bad_seq, Some(0));
        assert!(parse_head("12").is_err() && parse_head("x:abc").is_err());
    }
}
