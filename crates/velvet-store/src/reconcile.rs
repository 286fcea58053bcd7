//! What reconciling the file into the store must change, decided without touching the
//! database, so both dialects apply the same plan.

use crate::StoreError;
use crate::db::{Backend, Conn, Ctx, DbError, Driver, FromRow, Row, audit_keyring};
use crate::rows::ExistingToken;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use velvet_core::audit::{AuditDraft, AuditEntry, seal_record};
use velvet_core::config::TokenSpec;
use velvet_core::keyring::{Keyring, KeyringError};
use velvet_core::model::ReconcileReport;

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

    /// When the next scheduled rotation starts, by the scheduler's own rule, counted from the
    /// last one (or from now); the scheduler's first pass adds the blackouts.
    pub fn next_rotation_at(
        &self,
        last: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        use velvet_core::schedule::{Blackout, Standing, Verdict, next};
        let standing = Standing {
            first_seen: now,
            last_rotated_at: last,
            ..Standing::default()
        };
        let none: &[Blackout] = &[];
        match next(&self.spec.name, &self.spec.cadence()?, none, &standing, now).verdict {
            Verdict::Start { slot } => Some(slot),
            Verdict::Wait { next, .. } => next,
        }
    }
}

pub(crate) enum Change<'a> {
    Declare(Declared<'a>),
    Update {
        id: i64,
        decl: Declared<'a>,
        last_rotated_at: Option<DateTime<Utc>>,
        /// A new or changed `schedule` (or a token declared again): its slots count from now,
        /// so the slots before it are not reported missed.
        schedule_from_now: bool,
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
                let schedule = serde_json::to_value(&spec.schedule).unwrap_or_default();
                changes.push(Change::Update {
                    id: e.id,
                    decl,
                    last_rotated_at: e.last_rotated_at,
                    schedule_from_now: spec.schedule.is_some()
                        && (e.schedule != schedule || e.status != "active"),
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

impl FromRow for ExistingToken {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(ExistingToken {
            id: r.int()?,
            name: r.text()?,
            spec_hash: r.text()?,
            status: r.text()?,
            last_rotated_at: r.opt_time()?,
            schedule: serde_json::from_str::<serde_json::Value>(&r.text()?)
                .map(|spec| spec["schedule"].clone())
                .unwrap_or_default(),
        })
    }
}

/// Advisory lock key of reconciling ("velvet" in ASCII, plus a purpose byte).
pub(crate) const RECONCILE_LOCK: i64 = 0x0076_656c_7665_7403;

/// Applies the plan in one transaction, each change audited with it. Replicas reconcile the
/// same file at start: one at a time, each seeing the last's work.
pub(crate) async fn apply<B: Backend>(
    b: &B,
    tokens: &[TokenSpec],
    now: DateTime<Utc>,
) -> Result<ReconcileReport, StoreError> {
    let keyring = audit_keyring(b.keyring())?;
    let tokens = tokens.to_vec();
    b.driver()
        .write("reconciling velvet.yaml", move |c| {
            Box::pin(async move {
                c.xact_lock(RECONCILE_LOCK)
                    .await
                    .ctx("taking the reconcile lock")?;
                let existing: Vec<ExistingToken> = c
                    .all(
                        "reading tokens",
                        "SELECT id, name, spec_hash, status, last_rotated_at, spec FROM tokens",
                        &[],
                    )
                    .await?;
                let (changes, unchanged) = plan(&tokens, &existing);
                let mut report = ReconcileReport {
                    unchanged,
                    ..Default::default()
                };
                for change in changes {
                    match change {
                        Change::Declare(d) => {
                            let id: i64 = c
                                .one(
                                    "declaring a token",
                                    "INSERT INTO tokens (name, description, tags, source_kind, spec, spec_hash, status, next_rotation_at, created_at, updated_at)
                                     VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $8) RETURNING id",
                                    &[
                                        d.spec.name.as_str().into(),
                                        d.spec.description.as_str().into(),
                                        d.tags_json.as_str().into(),
                                        d.spec.source.kind().into(),
                                        d.spec_json.as_str().into(),
                                        d.spec_hash.as_str().into(),
                                        d.next_rotation_at(None, now).into(),
                                        now.into(),
                                    ],
                                )
                                .await?;
                            consumers(c, id, d.spec, now).await?;
                            let detail = serde_json::json!({"source": d.spec.source.kind(), "consumers": d.spec.consumers.len()});
                            let draft = AuditDraft::token_declared(&d.spec.name, detail);
                            crate::audit::record(c, &keyring, &draft).await?;
                            report.declared.push(d.spec.name.clone());
                        }
                        Change::Update {
                            id,
                            decl: d,
                            last_rotated_at,
                            schedule_from_now,
                        } => {
                            c.run(
                                "updating a token",
                                "UPDATE tokens SET description = $2, tags = $3, source_kind = $4, spec = $5, spec_hash = $6,
                                     status = 'active', retired_at = NULL, next_rotation_at = $7, updated_at = $8,
                                     schedule_slot_at = CASE WHEN $9 THEN $8 ELSE schedule_slot_at END WHERE id = $1",
                                &[
                                    id.into(),
                                    d.spec.description.as_str().into(),
                                    d.tags_json.as_str().into(),
                                    d.spec.source.kind().into(),
                                    d.spec_json.as_str().into(),
                                    d.spec_hash.as_str().into(),
                                    d.next_rotation_at(last_rotated_at, now).into(),
                                    now.into(),
                                    schedule_from_now.into(),
                                ],
                            )
                            .await?;
                            consumers(c, id, d.spec, now).await?;
                            let detail = serde_json::json!({"spec_hash": d.spec_hash});
                            let draft = AuditDraft::token_updated(&d.spec.name, detail);
                            crate::audit::record(c, &keyring, &draft).await?;
                            report.updated.push(d.spec.name.clone());
                        }
                        Change::Retire { id, name } => {
                            c.run(
                                "retiring a token",
                                "UPDATE tokens SET status = 'retired', retired_at = $2, updated_at = $2 WHERE id = $1",
                                &[id.into(), now.into()],
                            )
                            .await?;
                            let draft = AuditDraft::token_retired(&name);
                            crate::audit::record(c, &keyring, &draft).await?;
                            report.retired.push(name);
                        }
                    }
                }
                Ok(report)
            })
        })
        .await
}

/// Saves a token's declared consumers and retires those no longer declared.
async fn consumers<C: Conn>(
    c: &mut C,
    token_id: i64,
    spec: &TokenSpec,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for k in &spec.consumers {
        let json = serde_json::to_string(k).expect("consumer specs serialise");
        c.run(
            "saving a consumer",
            "INSERT INTO consumers (token_id, name, kind, lock_key, spec, status, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $6)
             ON CONFLICT (token_id, name) DO UPDATE SET kind = excluded.kind, lock_key = excluded.lock_key,
                 spec = excluded.spec, status = 'active', updated_at = excluded.updated_at",
            &[
                token_id.into(),
                k.name.as_str().into(),
                k.kind.as_str().into(),
                (&k.lock_key).into(),
                json.as_str().into(),
                now.into(),
            ],
        )
        .await?;
    }
    let active: Vec<String> = c
        .all(
            "listing consumers",
            "SELECT name FROM consumers WHERE token_id = $1 AND status = 'active'",
            &[token_id.into()],
        )
        .await?;
    for name in active {
        if !spec.consumers.iter().any(|k| k.name == name) {
            c.run(
                "retiring a consumer",
                "UPDATE consumers SET status = 'retired', updated_at = $3 WHERE token_id = $1 AND name = $2",
                &[token_id.into(), name.as_str().into(), now.into()],
            )
            .await?;
        }
    }
    Ok(())
}
