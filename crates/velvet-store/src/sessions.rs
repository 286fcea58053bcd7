//! Operators' console sessions: the trait and its one body for both dialects. A session is
//! found by the SHA-256 of its id; the id itself lives only in the operator's cookie.

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRecord {
    pub operator: String,
    /// The token state-changing requests of this session must echo.
    pub csrf: String,
    pub client: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub struct NewSession<'a> {
    pub id_hash: &'a str,
    pub operator: &'a str,
    pub csrf: &'a str,
    pub client: &'a str,
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Opens a session (audited as a login).
    async fn create_session(&self, s: &NewSession<'_>) -> Result<(), StoreError>;

    async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// Records activity, for the idle limit.
    async fn touch_session(&self, id_hash: &str, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Ends one session (logout); false if it was not open.
    async fn end_session(&self, id_hash: &str, actor: &str) -> Result<bool, StoreError>;

    /// Ends every open session of `operator` (audited); how many were open.
    async fn end_sessions_of(&self, operator: &str, actor: &str) -> Result<u64, StoreError>;
}

const SELECT: &str =
    "SELECT operator, csrf, client, created_at, last_seen_at, expires_at, revoked_at
     FROM operator_sessions WHERE id_hash = $1";

macro_rules! impl_session_store {
    ($store:ty, $reader:ident, $writer:ident) => {
        #[async_trait]
        impl SessionStore for $store {
            async fn create_session(&self, s: &NewSession<'_>) -> Result<(), StoreError> {
                use crate::Context;
                let now = velvet_core::audit::now_micros();
                let mut tx = self.begin().await?;
                self.audit_in(
                    &mut tx,
                    &velvet_core::audit::AuditDraft::operator_logged_in(s.operator, s.client),
                )
                .await?;
                sqlx::query(
                    "INSERT INTO operator_sessions (id_hash, operator, csrf, client, created_at, last_seen_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $5, $6)",
                )
                .bind(s.id_hash)
                .bind(s.operator)
                .bind(s.csrf)
                .bind(s.client)
                .bind(now)
                .bind(s.expires_at)
                .execute(&mut *tx)
                .await
                .ctx("opening a session")?;
                tx.commit().await.ctx("committing a session")
            }

            async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
                use crate::Context;
                sqlx::query_as(SELECT)
                    .bind(id_hash)
                    .fetch_optional(&self.$reader)
                    .await
                    .ctx("reading a session")
            }

            async fn touch_session(
                &self,
                id_hash: &str,
                at: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                use crate::Context;
                sqlx::query("UPDATE operator_sessions SET last_seen_at = $2 WHERE id_hash = $1")
                    .bind(id_hash)
                    .bind(at)
                    .execute(&self.$writer)
                    .await
                    .ctx("touching a session")?;
                Ok(())
            }

            async fn end_session(&self, id_hash: &str, actor: &str) -> Result<bool, StoreError> {
                use crate::Context;
                let mut tx = self.begin().await?;
                self.audit_in(
                    &mut tx,
                    &velvet_core::audit::AuditDraft::operator_logged_out(actor),
                )
                .await?;
                let r = sqlx::query(
                    "UPDATE operator_sessions SET revoked_at = $2 WHERE id_hash = $1 AND revoked_at IS NULL",
                )
                .bind(id_hash)
                .bind(velvet_core::audit::now_micros())
                .execute(&mut *tx)
                .await
                .ctx("ending a session")?;
                tx.commit().await.ctx("committing a logout")?;
                Ok(r.rows_affected() == 1)
            }

            async fn end_sessions_of(&self, operator: &str, actor: &str) -> Result<u64, StoreError> {
                use crate::Context;
                let mut tx = self.begin().await?;
                self.audit_in(
                    &mut tx,
                    &velvet_core::audit::AuditDraft::operator_sessions_revoked(actor, operator),
                )
                .await?;
                let r = sqlx::query(
                    "UPDATE operator_sessions SET revoked_at = $2 WHERE operator = $1 AND revoked_at IS NULL",
                )
                .bind(operator)
                .bind(velvet_core::audit::now_micros())
                .execute(&mut *tx)
                .await
                .ctx("ending sessions")?;
                tx.commit().await.ctx("committing ended sessions")?;
                Ok(r.rows_affected())
            }
        }
    };
}

impl_session_store!(crate::sqlite::SqliteStore, reader, writer);
impl_session_store!(crate::postgres::PostgresStore, pool, pool);
