//! Tokens, their consumers and versions as read by the API and the console, written once.
//! `token_view` reads all three in one snapshot on SQLite (one read transaction), so a rotation
//! cannot land between them.

use crate::StoreError;
use crate::db::{Backend, Conn, DbError, Driver, FromRow, Row};
use crate::rows::{ConsumerRow, TokenRow, VersionRow};
use async_trait::async_trait;
use velvet_core::model::{ConsumerRecord, TokenRecord, VersionRecord};

/// A token with its consumers and versions.
#[derive(Debug, Clone)]
pub struct TokenView {
    pub token: TokenRecord,
    pub consumers: Vec<ConsumerRecord>,
    pub versions: Vec<VersionRecord>,
    /// The source's latest verifying login (design §11), if a probe ran.
    pub source_health: Option<velvet_core::model::Health>,
}

#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Syncs the declared tokens and consumers into the store; tokens no longer declared are
    /// retired, never deleted. Every change is audited in the same transaction.
    async fn reconcile(
        &self,
        tokens: &[velvet_core::config::TokenSpec],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<velvet_core::model::ReconcileReport, StoreError>;

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    async fn get_token(&self, name: &str) -> Result<Option<TokenRecord>, StoreError>;
    async fn list_consumers(&self, token: &str) -> Result<Vec<ConsumerRecord>, StoreError>;
    async fn list_versions(&self, token: &str) -> Result<Vec<VersionRecord>, StoreError>;

    /// A token with its consumers and versions (what `GET /api/v1/tokens/{name}` shows).
    async fn token_view(&self, name: &str) -> Result<Option<TokenView>, StoreError>;
}

macro_rules! token_select {
    ($tail:literal) => {
        concat!(
            "SELECT t.name, t.description, t.tags, t.source_kind, t.status, t.spec,
                t.last_rotated_at, t.next_rotation_at, t.created_at, t.updated_at,
                (SELECT v.version FROM secret_versions v WHERE v.token_id = t.id AND v.label = 'current'),
                (SELECT COUNT(*) FROM consumers c WHERE c.token_id = t.id AND c.status = 'active'),
                (SELECT j.id FROM rotation_jobs j WHERE j.token_id = t.id
                   AND j.status NOT IN ('succeeded', 'aborted', 'rolled_back'))
             FROM tokens t ",
            $tail
        )
    };
}

const ALL: &str = token_select!("ORDER BY t.name");
const BY_NAME: &str = token_select!("WHERE t.name = $1");
const CONSUMERS: &str = "SELECT c.name, c.kind, c.lock_key, c.spec, c.health FROM consumers c
     JOIN tokens t ON t.id = c.token_id WHERE t.name = $1 AND c.status = 'active' ORDER BY c.id";
const VERSIONS: &str = "SELECT v.version, v.label, v.fingerprint, v.created_at, v.activated_at, v.revoked_at
     FROM secret_versions v JOIN tokens t ON t.id = v.token_id WHERE t.name = $1 ORDER BY v.version DESC";

impl FromRow for TokenRow {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(TokenRow {
            name: r.text()?,
            description: r.text()?,
            tags: r.text()?,
            source_kind: r.text()?,
            status: r.text()?,
            spec: r.text()?,
            last_rotated_at: r.opt_time()?,
            next_rotation_at: r.opt_time()?,
            created_at: r.time()?,
            updated_at: r.time()?,
            current_version: r.opt_int()?,
            consumer_count: r.int()?,
            active_job_id: r.opt_text()?,
        })
    }
}

impl FromRow for ConsumerRow {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(ConsumerRow {
            name: r.text()?,
            kind: r.text()?,
            lock_key: r.opt_text()?,
            spec: r.text()?,
            health: r.opt_text()?,
        })
    }
}

impl FromRow for VersionRow {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(VersionRow {
            version: r.int()?,
            label: r.text()?,
            fingerprint: r.text()?,
            created_at: r.time()?,
            activated_at: r.opt_time()?,
            revoked_at: r.opt_time()?,
        })
    }
}

fn convert<R, T: TryFrom<R, Error = StoreError>>(rows: Vec<R>) -> Result<Vec<T>, StoreError> {
    rows.into_iter().map(TryInto::try_into).collect()
}

async fn token<C: Conn>(c: &mut C, name: &str) -> Result<Option<TokenRecord>, StoreError> {
    let row: Option<TokenRow> = c.opt("reading a token", BY_NAME, &[name.into()]).await?;
    row.map(TryInto::try_into).transpose()
}

async fn consumers<C: Conn>(c: &mut C, token: &str) -> Result<Vec<ConsumerRecord>, StoreError> {
    let rows: Vec<ConsumerRow> = c
        .all("listing consumers", CONSUMERS, &[token.into()])
        .await?;
    convert(rows)
}

async fn versions<C: Conn>(c: &mut C, token: &str) -> Result<Vec<VersionRecord>, StoreError> {
    let rows: Vec<VersionRow> = c.all("listing versions", VERSIONS, &[token.into()]).await?;
    convert(rows)
}

#[async_trait]
impl<B: Backend> TokenStore for B {
    async fn reconcile(
        &self,
        tokens: &[velvet_core::config::TokenSpec],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<velvet_core::model::ReconcileReport, StoreError> {
        crate::reconcile::apply(self, tokens, now).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        const WHAT: &str = "listing tokens";
        self.driver()
            .read(WHAT, |c| {
                Box::pin(async move {
                    let rows: Vec<TokenRow> = c.all(WHAT, ALL, &[]).await?;
                    convert(rows)
                })
            })
            .await
    }

    async fn get_token(&self, name: &str) -> Result<Option<TokenRecord>, StoreError> {
        let name = name.to_owned();
        self.driver()
            .read("reading a token", move |c| {
                Box::pin(async move { token(c, &name).await })
            })
            .await
    }

    async fn list_consumers(&self, token: &str) -> Result<Vec<ConsumerRecord>, StoreError> {
        let token = token.to_owned();
        self.driver()
            .read("listing consumers", move |c| {
                Box::pin(async move { consumers(c, &token).await })
            })
            .await
    }

    async fn list_versions(&self, token: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let token = token.to_owned();
        self.driver()
            .read("listing versions", move |c| {
                Box::pin(async move { versions(c, &token).await })
            })
            .await
    }

    async fn token_view(&self, name: &str) -> Result<Option<TokenView>, StoreError> {
        let name = name.to_owned();
        self.driver()
            .read("reading a token", move |c| {
                Box::pin(async move {
                    let Some(token) = token(c, &name).await? else {
                        return Ok(None);
                    };
                    let source_health: Option<Option<String>> = c
                        .opt(
                            "reading a source's health",
                            "SELECT source_health FROM tokens WHERE name = $1",
                            &[name.as_str().into()],
                        )
                        .await?;
                    Ok(Some(TokenView {
                        token,
                        consumers: consumers(c, &name).await?,
                        versions: versions(c, &name).await?,
                        source_health: source_health
                            .flatten()
                            .and_then(|h| serde_json::from_str(&h).ok()),
                    }))
                })
            })
            .await
    }
}
