//! Sealed values outside a rotation, for both dialects: adopting an existing credential
//! (`velvet import`), reading one back, and what key rotation needs (which keys seal what, a
//! sample to prove the keyring opens stored data, and re-sealing in batches).

use crate::db::{Backend, Conn, DbError, Driver, FromRow, Row, audit_keyring, read_all, read_opt};
use crate::{Reseal, StoreError, audit};
use async_trait::async_trait;
use velvet_core::audit::{AuditDraft, now_micros};
use velvet_core::keyring::Sealed;
use velvet_core::model::{SealedVersion, VersionLabel, VersionRecord};

impl FromRow for SealedVersion {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(SealedVersion {
            token: r.text()?,
            version: r.int()?,
            sealed: Sealed {
                key_id: r.text()?,
                ciphertext: r.blob()?,
            },
        })
    }
}

/// The sealed-value query with its condition, as one literal.
macro_rules! sealed {
    ($tail:literal) => {
        concat!(
            "SELECT t.name, v.version, v.key_id, v.ciphertext FROM secret_versions v
             JOIN tokens t ON t.id = v.token_id",
            $tail
        )
    };
}

#[async_trait]
pub trait SealedStore: Send + Sync {
    /// Stores an existing credential as version 1, `current`, sealed with the associated data
    /// of `(token, 1)`. Refused if the token already has versions.
    async fn import_version(
        &self,
        token: &str,
        sealed: &Sealed,
        fingerprint: &str,
        actor: &str,
    ) -> Result<VersionRecord, StoreError>;

    async fn sealed_version(&self, token: &str, version: i64) -> Result<Sealed, StoreError>;

    /// Key ids referenced by sealed values and audit records.
    async fn key_ids_in_use(&self) -> Result<Vec<String>, StoreError>;

    /// How many values each key seals.
    async fn sealed_counts(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// One sealed value under `key_id`, to prove the keyring really opens stored data.
    async fn sample_sealed(&self, key_id: &str) -> Result<Option<SealedVersion>, StoreError>;

    /// Up to `limit` values sealed under any key other than `key_id`.
    async fn sealed_not_under(
        &self,
        key_id: &str,
        limit: i64,
    ) -> Result<Vec<SealedVersion>, StoreError>;

    /// Writes re-sealed values in one transaction; rows already moved are left alone, so an
    /// interrupted run can simply be repeated. Returns how many rows changed.
    async fn reseal(&self, batch: &[Reseal]) -> Result<u64, StoreError>;
}

#[async_trait]
impl<B: Backend> SealedStore for B {
    async fn import_version(
        &self,
        token: &str,
        sealed: &Sealed,
        fingerprint: &str,
        actor: &str,
    ) -> Result<VersionRecord, StoreError> {
        let keyring = audit_keyring(self.keyring())?;
        let (token, sealed, fingerprint, actor) = (
            token.to_string(),
            sealed.clone(),
            fingerprint.to_string(),
            actor.to_string(),
        );
        self.driver()
            .write("importing a version", move |c| {
                Box::pin(async move {
                    let id: i64 = c
                        .opt(
                            "finding a token",
                            "SELECT id FROM tokens WHERE name = $1 AND status = 'active'",
                            &[token.as_str().into()],
                        )
                        .await?
                        .ok_or_else(|| StoreError::NotFound(format!("token `{token}`")))?;
                    let existing: i64 = c
                        .one(
                            "counting versions",
                            "SELECT COUNT(*) FROM secret_versions WHERE token_id = $1",
                            &[id.into()],
                        )
                        .await?;
                    if existing > 0 {
                        return Err(StoreError::Conflict(format!(
                            "token `{token}` already has {existing} version(s); import is for adopting a credential once, rotate it instead"
                        )));
                    }
                    let now = now_micros();
                    // Audit first (I6): the record is written before the value, in one transaction.
                    let draft = AuditDraft::version_imported(&actor, &token, 1, &fingerprint);
                    audit::record(c, &keyring, &draft).await?;
                    c.run(
                        "storing the imported version",
                        "INSERT INTO secret_versions (token_id, version, label, key_id, ciphertext, fingerprint, created_at, activated_at)
                         VALUES ($1, 1, 'current', $2, $3, $4, $5, $5)",
                        &[
                            id.into(),
                            sealed.key_id.as_str().into(),
                            sealed.ciphertext.as_slice().into(),
                            fingerprint.as_str().into(),
                            now.into(),
                        ],
                    )
                    .await?;
                    c.run(
                        "updating the token",
                        "UPDATE tokens SET last_rotated_at = $2, updated_at = $2 WHERE id = $1",
                        &[id.into(), now.into()],
                    )
                    .await?;
                    Ok(VersionRecord {
                        version: 1,
                        label: VersionLabel::Current,
                        fingerprint,
                        created_at: now,
                        activated_at: Some(now),
                        revoked_at: None,
                    })
                })
            })
            .await
    }

    async fn sealed_version(&self, token: &str, version: i64) -> Result<Sealed, StoreError> {
        let sql = sealed!(" WHERE t.name = $1 AND v.version = $2");
        let row: Option<SealedVersion> = read_opt(
            self,
            "reading a sealed value",
            sql,
            vec![token.into(), version.into()],
        )
        .await?;
        row.map(|r| r.sealed)
            .ok_or_else(|| StoreError::NotFound(format!("version {version} of token `{token}`")))
    }

    async fn key_ids_in_use(&self) -> Result<Vec<String>, StoreError> {
        read_all(
            self,
            "listing key ids in use",
            "SELECT key_id FROM secret_versions UNION SELECT key_id FROM audit_events
             UNION SELECT totp_key_id FROM operators ORDER BY 1",
            vec![],
        )
        .await
    }

    async fn sealed_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        read_all(
            self,
            "counting sealed values",
            "SELECT key_id, CAST(SUM(n) AS BIGINT) FROM (
                 SELECT key_id, COUNT(*) AS n FROM secret_versions GROUP BY key_id
                 UNION ALL SELECT totp_key_id, COUNT(*) FROM operators GROUP BY totp_key_id
             ) AS sealed GROUP BY key_id ORDER BY key_id",
            vec![],
        )
        .await
    }

    async fn sample_sealed(&self, key_id: &str) -> Result<Option<SealedVersion>, StoreError> {
        let sql = sealed!(" WHERE v.key_id = $1 LIMIT 1");
        read_opt(self, "sampling a sealed value", sql, vec![key_id.into()]).await
    }

    async fn sealed_not_under(
        &self,
        key_id: &str,
        limit: i64,
    ) -> Result<Vec<SealedVersion>, StoreError> {
        let sql = sealed!(" WHERE v.key_id <> $1 ORDER BY v.id LIMIT $2");
        read_all(
            self,
            "listing values to re-seal",
            sql,
            vec![key_id.into(), limit.into()],
        )
        .await
    }

    async fn reseal(&self, batch: &[Reseal]) -> Result<u64, StoreError> {
        let batch = batch.to_vec();
        self.driver()
            .write("re-sealing values", move |c| {
                Box::pin(async move {
                    let mut changed = 0;
                    for r in &batch {
                        changed += c
                            .run(
                                "re-sealing a value",
                                "UPDATE secret_versions SET key_id = $4, ciphertext = $5, fingerprint = $6
                                 WHERE token_id = (SELECT id FROM tokens WHERE name = $1) AND version = $2 AND key_id = $3",
                                &[
                                    r.token.as_str().into(),
                                    r.version.into(),
                                    r.old_key_id.as_str().into(),
                                    r.sealed.key_id.as_str().into(),
                                    r.sealed.ciphertext.as_slice().into(),
                                    r.fingerprint.as_str().into(),
                                ],
                            )
                            .await?;
                    }
                    Ok(changed)
                })
            })
            .await
    }
}
