//! Feature flag overrides set through the API, over the file's values: the trait and its one
//! body for both dialects.

use crate::StoreError;
use crate::audit;
use crate::db::{Backend, Conn, DbError, Driver, FromRow, Row, audit_keyring, read_all};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use velvet_core::audit::{AuditDraft, now_micros};

/// A flag's stored override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagOverride {
    pub name: String,
    pub enabled: bool,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

#[async_trait]
pub trait FlagStore: Send + Sync {
    async fn flag_overrides(&self) -> Result<Vec<FlagOverride>, StoreError>;

    /// Sets an override, audited first (I6).
    async fn set_flag(
        &self,
        name: &str,
        enabled: bool,
        actor: &str,
    ) -> Result<FlagOverride, StoreError>;
}

const LIST: &str = "SELECT name, enabled, updated_at, updated_by FROM feature_flags ORDER BY name";
const UPSERT: &str =
    "INSERT INTO feature_flags (name, enabled, updated_at, updated_by) VALUES ($1, $2, $3, $4)
     ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled, updated_at = excluded.updated_at,
         updated_by = excluded.updated_by
     RETURNING name, enabled, updated_at, updated_by";

impl FromRow for FlagOverride {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(FlagOverride {
            name: r.text()?,
            enabled: r.bool()?,
            updated_at: r.time()?,
            updated_by: r.text()?,
        })
    }
}

#[async_trait]
impl<B: Backend> FlagStore for B {
    async fn flag_overrides(&self) -> Result<Vec<FlagOverride>, StoreError> {
        read_all(self, "reading feature flags", LIST, vec![]).await
    }

    async fn set_flag(
        &self,
        name: &str,
        enabled: bool,
        actor: &str,
    ) -> Result<FlagOverride, StoreError> {
        const WHAT: &str = "setting a feature flag";
        let keyring = audit_keyring(self.keyring())?;
        let (name, actor) = (name.to_owned(), actor.to_owned());
        self.driver()
            .write(WHAT, move |c| {
                Box::pin(async move {
                    audit::record(c, &keyring, &AuditDraft::flag_set(&actor, &name, enabled))
                        .await?;
                    c.one(
                        WHAT,
                        UPSERT,
                        &[
                            (&name).into(),
                            enabled.into(),
                            now_micros().into(),
                            (&actor).into(),
                        ],
                    )
                    .await
                })
            })
            .await
    }
}
