//! Operators' console sessions: the trait and its one body for both dialects. A session is
//! found by the SHA-256 of its id; the id itself lives only in the operator's cookie.

use crate::StoreError;
use crate::audit;
use crate::db::{Backend, Conn, DbError, Driver, FromRow, Row, audit_keyring, read_opt, write_one};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use velvet_core::audit::{AuditDraft, now_micros};

#[derive(Debug, Clone, PartialEq, Eq)]
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

impl FromRow for SessionRecord {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(SessionRecord {
            operator: r.text()?,
            csrf: r.text()?,
            client: r.text()?,
            created_at: r.time()?,
            last_seen_at: r.time()?,
            expires_at: r.time()?,
            revoked_at: r.opt_time()?,
        })
    }
}

#[async_trait]
impl<B: Backend> SessionStore for B {
    async fn create_session(&self, s: &NewSession<'_>) -> Result<(), StoreError> {
        const WHAT: &str = "opening a session";
        let keyring = audit_keyring(self.keyring())?;
        let draft = AuditDraft::operator_logged_in(s.operator, s.client);
        let (id_hash, operator, csrf, client, expires_at) = (
            s.id_hash.to_owned(),
            s.operator.to_owned(),
            s.csrf.to_owned(),
            s.client.to_owned(),
            s.expires_at,
        );
        self.driver()
            .write(WHAT, move |c| {
                Box::pin(async move {
                    audit::record(c, &keyring, &draft).await?;
                    c.run(
                        WHAT,
                        "INSERT INTO operator_sessions (id_hash, operator, csrf, client, created_at, last_seen_at, expires_at)
                         VALUES ($1, $2, $3, $4, $5, $5, $6)",
                        &[
                            (&id_hash).into(),
                            (&operator).into(),
                            (&csrf).into(),
                            (&client).into(),
                            now_micros().into(),
                            expires_at.into(),
                        ],
                    )
                    .await
                    .map(drop)
                })
            })
            .await
    }

    async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        read_opt(self, "reading a session", SELECT, vec![id_hash.into()]).await
    }

    async fn touch_session(&self, id_hash: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        write_one(
            self,
            "touching a session",
            "UPDATE operator_sessions SET last_seen_at = $2 WHERE id_hash = $1",
            vec![id_hash.into(), at.into()],
        )
        .await
        .map(drop)
    }

    async fn end_session(&self, id_hash: &str, actor: &str) -> Result<bool, StoreError> {
        const WHAT: &str = "ending a session";
        let keyring = audit_keyring(self.keyring())?;
        let draft = AuditDraft::operator_logged_out(actor);
        let id_hash = id_hash.to_owned();
        self.driver()
            .write(WHAT, move |c| {
                Box::pin(async move {
                    audit::record(c, &keyring, &draft).await?;
                    let n = c
                        .run(
                            WHAT,
                            "UPDATE operator_sessions SET revoked_at = $2 WHERE id_hash = $1 AND revoked_at IS NULL",
                            &[(&id_hash).into(), now_micros().into()],
                        )
                        .await?;
                    Ok(n == 1)
                })
            })
            .await
    }

    async fn end_sessions_of(&self, operator: &str, actor: &str) -> Result<u64, StoreError> {
        const WHAT: &str = "ending sessions";
        let keyring = audit_keyring(self.keyring())?;
        let draft = AuditDraft::operator_sessions_revoked(actor, operator);
        let operator = operator.to_owned();
        self.driver()
            .write(WHAT, move |c| {
                Box::pin(async move {
                    audit::record(c, &keyring, &draft).await?;
                    c.run(
                        WHAT,
                        "UPDATE operator_sessions SET revoked_at = $2 WHERE operator = $1 AND revoked_at IS NULL",
                        &[(&operator).into(), now_micros().into()],
                    )
                    .await
                })
            })
            .await
    }
}
