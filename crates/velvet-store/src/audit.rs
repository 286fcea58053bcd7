//! The one audit-chain append, inside the caller's transaction (I6: the action and its record
//! commit together or not at all). The head is read under a transaction lock, so the chain stays
//! linear across PostgreSQL replicas; SQLite's single writer already orders every append.

use crate::StoreError;
use crate::db::{Backend, Conn, Driver, FromRow, Row, audit_keyring, read_all};
use velvet_core::audit::{AuditDraft, AuditEntry};
use velvet_core::keyring::Keyring;

/// Advisory lock key of the chain head ("velvet" in ASCII, plus a purpose byte).
pub(crate) const AUDIT_LOCK: i64 = 0x0076_656c_7665_7402;

impl FromRow for AuditEntry {
    fn from_row(r: &mut Row) -> Result<Self, crate::db::DbError> {
        Ok(AuditEntry {
            seq: r.int()?,
            at: r.time()?,
            actor: r.text()?,
            action: r.text()?,
            target: r.text()?,
            outcome: r.text()?,
            detail: r.text()?,
            key_id: r.text()?,
            prev_hash: r.text()?,
            hash: r.text()?,
        })
    }
}

/// Appends `drafts` in order, reading the chain head once.
pub(crate) async fn append<C: Conn>(
    c: &mut C,
    keyring: &Keyring,
    drafts: &[&AuditDraft],
) -> Result<Vec<AuditEntry>, StoreError> {
    if drafts.is_empty() {
        return Ok(Vec::new());
    }
    let unavailable = |e: StoreError| StoreError::AuditUnavailable(e.to_string());
    c.xact_lock(AUDIT_LOCK)
        .await
        .map_err(|e| StoreError::AuditUnavailable(e.to_string()))?;
    let mut head: Option<(i64, String)> = c
        .opt(
            "reading the audit head",
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(unavailable)?;
    let mut out = Vec::with_capacity(drafts.len());
    for draft in drafts {
        let e = crate::reconcile::next_audit(keyring, head.take(), draft)?;
        c.run(
            "appending an audit record",
            "INSERT INTO audit_events (seq, at, actor, action, target, outcome, detail, key_id, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                e.seq.into(),
                e.at.into(),
                (&e.actor).into(),
                (&e.action).into(),
                (&e.target).into(),
                (&e.outcome).into(),
                (&e.detail).into(),
                (&e.key_id).into(),
                (&e.prev_hash).into(),
                (&e.hash).into(),
            ],
        )
        .await
        .map_err(unavailable)?;
        head = Some((e.seq, e.hash.clone()));
        out.push(e);
    }
    Ok(out)
}

/// Appends one record.
pub(crate) async fn record<C: Conn>(
    c: &mut C,
    keyring: &Keyring,
    draft: &AuditDraft,
) -> Result<AuditEntry, StoreError> {
    let mut entries = append(c, keyring, &[draft]).await?;
    Ok(entries.pop().expect("one draft, one entry"))
}

#[async_trait::async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends one audit record in its own transaction.
    async fn append_audit(&self, draft: &AuditDraft) -> Result<AuditEntry, StoreError>;

    /// Audit records with `seq > after_seq`, oldest first.
    async fn audit_page(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>, StoreError>;
}

#[async_trait::async_trait]
impl<B: Backend> AuditStore for B {
    /// Any failure is `AuditUnavailable` (I6).
    async fn append_audit(&self, draft: &AuditDraft) -> Result<AuditEntry, StoreError> {
        let keyring = audit_keyring(self.keyring())?;
        let draft = draft.clone();
        self.driver()
            .write("appending an audit record", move |c| {
                Box::pin(async move { record(c, &keyring, &draft).await })
            })
            .await
            .map_err(|e| match e {
                StoreError::AuditUnavailable(_) => e,
                other => StoreError::AuditUnavailable(other.to_string()),
            })
    }

    async fn audit_page(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        read_all(
            self,
            "reading the audit log",
            "SELECT seq, at, actor, action, target, outcome, detail, key_id, prev_hash, hash
             FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
            vec![after_seq.into(), limit.into()],
        )
        .await
    }
}
