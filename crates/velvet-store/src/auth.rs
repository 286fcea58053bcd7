//! Service tokens in the store: the trait both dialects implement, and what they share (the row
//! type and SQL that reads the same in both).

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
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

#[derive(sqlx::FromRow)]
pub(crate) struct ServiceTokenRow {
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

impl From<ServiceTokenRow> for ServiceTokenRecord {
    fn from(r: ServiceTokenRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            role: r.role,
            prefix: r.prefix,
            operator: r.operator,
            created_by: r.created_by,
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        }
    }
}

pub(crate) const INSERT: &str = "INSERT INTO service_tokens (id, name, role, prefix, token_hash, operator, created_by, created_at, expires_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
pub(crate) const BY_HASH: &str = "SELECT id, name, role, prefix, operator, created_by, created_at, expires_at, last_used_at, revoked_at
     FROM service_tokens WHERE token_hash = $1";
pub(crate) const BY_ID: &str = "SELECT id, name, role, prefix, operator, created_by, created_at, expires_at, last_used_at, revoked_at
     FROM service_tokens WHERE id = $1";
pub(crate) const LIST: &str = "SELECT id, name, role, prefix, operator, created_by, created_at, expires_at, last_used_at, revoked_at
     FROM service_tokens ORDER BY created_at DESC, id";
pub(crate) const REVOKE: &str =
    "UPDATE service_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";
pub(crate) const TOUCH: &str = "UPDATE service_tokens SET last_used_at = $2 WHERE id = $1";

/// The same statements on either dialect (SQLite on its sqlx writer and readers): `$store` has `begin()`, `audit_in()` and a read pool
/// field `$reader`. One body, so the two stores cannot drift apart.
macro_rules! impl_auth_store {
    ($store:ty, $reader:ident) => {
        #[async_trait::async_trait]
        impl $crate::auth::AuthStore for $store {
            async fn create_service_token(
                &self,
                new: &$crate::auth::NewServiceToken<'_>,
            ) -> Result<velvet_core::model::ServiceTokenRecord, $crate::StoreError> {
                use $crate::Context;
                let mut tx = self.begin().await?;
                self.audit_in(
                    &mut tx,
                    &velvet_core::audit::AuditDraft::service_token_created(
                        new.created_by,
                        new.id,
                        new.name,
                        new.role,
                    ),
                )
                .await?;
                sqlx::query($crate::auth::INSERT)
                    .bind(new.id)
                    .bind(new.name)
                    .bind(new.role)
                    .bind(new.prefix)
                    .bind(new.hash)
                    .bind(new.operator)
                    .bind(new.created_by)
                    .bind(velvet_core::audit::now_micros())
                    .bind(new.expires_at)
                    .execute(&mut *tx)
                    .await
                    .ctx("storing a service token")?;
                let row: $crate::auth::ServiceTokenRow = sqlx::query_as($crate::auth::BY_ID)
                    .bind(new.id)
                    .fetch_one(&mut *tx)
                    .await
                    .ctx("reading a service token")?;
                tx.commit().await.ctx("committing a service token")?;
                Ok(row.into())
            }

            async fn service_token_by_hash(
                &self,
                hash: &str,
            ) -> Result<Option<velvet_core::model::ServiceTokenRecord>, $crate::StoreError> {
                self.lookup_service_token(hash).await
            }

            async fn list_service_tokens(
                &self,
            ) -> Result<Vec<velvet_core::model::ServiceTokenRecord>, $crate::StoreError> {
                use $crate::Context;
                let rows: Vec<$crate::auth::ServiceTokenRow> = sqlx::query_as($crate::auth::LIST)
                    .fetch_all(&self.$reader)
                    .await
                    .ctx("listing service tokens")?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn revoke_service_token(
                &self,
                id: &str,
                actor: &str,
            ) -> Result<velvet_core::model::ServiceTokenRecord, $crate::StoreError> {
                use $crate::Context;
                let mut tx = self.begin().await?;
                let row: Option<$crate::auth::ServiceTokenRow> =
                    sqlx::query_as($crate::auth::BY_ID)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await
                        .ctx("reading a service token")?;
                let row = row
                    .ok_or_else(|| $crate::StoreError::NotFound(format!("service token `{id}`")))?;
                if row.revoked_at.is_none() {
                    self.audit_in(
                        &mut tx,
                        &velvet_core::audit::AuditDraft::service_token_revoked(
                            actor, id, &row.name,
                        ),
                    )
                    .await?;
                    sqlx::query($crate::auth::REVOKE)
                        .bind(id)
                        .bind(velvet_core::audit::now_micros())
                        .execute(&mut *tx)
                        .await
                        .ctx("revoking a service token")?;
                }
                let row: $crate::auth::ServiceTokenRow = sqlx::query_as($crate::auth::BY_ID)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await
                    .ctx("reading a service token")?;
                tx.commit().await.ctx("committing a revocation")?;
                Ok(row.into())
            }

            async fn touch_service_token(
                &self,
                id: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::StoreError> {
                use $crate::Context;
                let mut tx = self.begin().await?;
                sqlx::query($crate::auth::TOUCH)
                    .bind(id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await
                    .ctx("recording a token's use")?;
                tx.commit().await.ctx("recording a token's use")
            }
        }
    };
}
impl_auth_store!(crate::sqlite::SqliteStore, reader);
impl_auth_store!(crate::postgres::PostgresStore, pool);

impl crate::sqlite::SqliteStore {
    /// Per request, so on rusqlite (`sqlite_reader`).
    async fn lookup_service_token(
        &self,
        hash: &str,
    ) -> Result<Option<ServiceTokenRecord>, StoreError> {
        use crate::Context;
        self.db.readers.read("looking up a service token", |c| {
            crate::sqlite_reader::service_token_by_hash(c.raw(), hash)
                .ctx("looking up a service token")
        })
    }
}

impl crate::postgres::PostgresStore {
    async fn lookup_service_token(
        &self,
        hash: &str,
    ) -> Result<Option<ServiceTokenRecord>, StoreError> {
        use crate::Context;
        let row: Option<ServiceTokenRow> = sqlx::query_as(BY_HASH)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .ctx("looking up a service token")?;
        Ok(row.map(Into::into))
    }
}
