//! Service tokens in the store: the trait both dialects implement, and what they share (the row
//! type and SQL that reads the same in both).

use crate::StoreError;
use crate::audit;
use crate::db::{
    Backend, Conn, DbError, Driver, FromRow, Row, audit_keyring, read_all, read_opt, write_one,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use velvet_core::audit::{AuditDraft, now_micros};
use velvet_core::model::ServiceTokenRecord;

/// A service token to store: its hash, never the token.
#[derive(Debug, Clone)]
pub struct NewServiceToken<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub role: &'a str,
    pub prefix: &'a str,
    pub hash: &'a str,
    pub operator: Option<&'a str>,
    pub created_by: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait AuthStore: Send + Sync {
    /// Stores a token with its audit record, written first (I6).
    async fn create_service_token(
        &self,
        new: &NewServiceToken<'_>,
    ) -> Result<ServiceTokenRecord, StoreError>;

    /// The token whose SHA-256 is `hash`, revoked or not.
    async fn service_token_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<ServiceTokenRecord>, StoreError>;

    /// Every token, newest first.
    async fn list_service_tokens(&self) -> Result<Vec<ServiceTokenRecord>, StoreError>;

    /// Revokes a token (audited); revoking a revoked token changes nothing and is not an error.
    async fn revoke_service_token(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<ServiceTokenRecord, StoreError>;

    /// Records a use of the token (callers throttle this; it is only a hint for people).
    async fn touch_service_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;
}

impl FromRow for ServiceTokenRecord {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(ServiceTokenRecord {
            id: r.text()?,
            name: r.text()?,
            role: r.text()?,
            prefix: r.text()?,
            operator: r.opt_text()?,
            created_by: r.text()?,
            created_at: r.time()?,
            expires_at: r.opt_time()?,
            last_used_at: r.opt_time()?,
            revoked_at: r.opt_time()?,
        })
    }
}

const INSERT: &str = "INSERT INTO service_tokens (id, name, role, prefix, token_hash, operator, created_by, created_at, expires_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const BY_HASH: &str = "SELECT id, name, role, prefix, operator, created_by, created_at, expires_at, last_used_at, revoked_at
     FROM service_tokens WHERE token_hash = $1";
const BY_ID: &str = "SELECT id, name, role, prefix, operator, created_by, created_at, expires_at, last_used_at, revoked_at
     FROM service_tokens WHERE id = $1";
const LIST: &str = "SELECT id, name, role, prefix, operator, created_by, created_at, expires_at, last_used_at, revoked_at
     FROM service_tokens ORDER BY created_at DESC, id";
const REVOKE: &str =
    "UPDATE service_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";
const TOUCH: &str = "UPDATE service_tokens SET last_used_at = $2 WHERE id = $1";

#[async_trait]
impl<B: Backend> AuthStore for B {
    async fn create_service_token(
        &self,
        new: &NewServiceToken<'_>,
    ) -> Result<ServiceTokenRecord, StoreError> {
        const WHAT: &str = "storing a service token";
        let keyring = audit_keyring(self.keyring())?;
        let draft = AuditDraft::service_token_created(new.created_by, new.id, new.name, new.role);
        let (id, name, role, prefix, hash, operator, created_by, expires_at) = (
            new.id.to_owned(),
            new.name.to_owned(),
            new.role.to_owned(),
            new.prefix.to_owned(),
            new.hash.to_owned(),
            new.operator.map(str::to_owned),
            new.created_by.to_owned(),
            new.expires_at,
        );
        self.driver()
            .write(WHAT, move |c| {
                Box::pin(async move {
                    audit::record(c, &keyring, &draft).await?;
                    c.run(
                        WHAT,
                        INSERT,
                        &[
                            (&id).into(),
                            (&name).into(),
                            (&role).into(),
                            (&prefix).into(),
                            (&hash).into(),
                            (&operator).into(),
                            (&created_by).into(),
                            now_micros().into(),
                            expires_at.into(),
                        ],
                    )
                    .await?;
                    c.one(WHAT, BY_ID, &[(&id).into()]).await
                })
            })
            .await
    }

    async fn service_token_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<ServiceTokenRecord>, StoreError> {
        read_opt(
            self,
            "looking up a service token",
            BY_HASH,
            vec![hash.into()],
        )
        .await
    }

    async fn list_service_tokens(&self) -> Result<Vec<ServiceTokenRecord>, StoreError> {
        read_all(self, "listing service tokens", LIST, vec![]).await
    }

    async fn revoke_service_token(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<ServiceTokenRecord, StoreError> {
        const WHAT: &str = "revoking a service token";
        let keyring = audit_keyring(self.keyring())?;
        let (id, actor) = (id.to_owned(), actor.to_owned());
        self.driver()
            .write(WHAT, move |c| {
                Box::pin(async move {
                    let row: ServiceTokenRecord = c
                        .opt(WHAT, BY_ID, &[(&id).into()])
                        .await?
                        .ok_or_else(|| StoreError::NotFound(format!("service token `{id}`")))?;
                    if row.revoked_at.is_some() {
                        return Ok(row);
                    }
                    let draft = AuditDraft::service_token_revoked(&actor, &id, &row.name);
                    audit::record(c, &keyring, &draft).await?;
                    c.run(WHAT, REVOKE, &[(&id).into(), now_micros().into()])
                        .await?;
                    c.one(WHAT, BY_ID, &[(&id).into()]).await
                })
            })
            .await
    }

    async fn touch_service_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        write_one(
            self,
            "recording a token's use",
            TOUCH,
            vec![id.into(), at.into()],
        )
        .await
        .map(drop)
    }
}
