//! Feature flag overrides set through the API, over the file's values: the trait and its one
//! body for both dialects.

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A flag's stored override.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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

macro_rules! impl_flag_store {
    ($store:ty, $reader:ident) => {
        #[async_trait]
        impl FlagStore for $store {
            async fn flag_overrides(&self) -> Result<Vec<FlagOverride>, StoreError> {
                use crate::Context;
                sqlx::query_as(LIST)
                    .fetch_all(&self.$reader)
                    .await
                    .ctx("reading feature flags")
            }

            async fn set_flag(
                &self,
                name: &str,
                enabled: bool,
                actor: &str,
            ) -> Result<FlagOverride, StoreError> {
                use crate::Context;
                let mut tx = self.begin().await?;
                self.audit_in(
                    &mut tx,
                    &velvet_core::audit::AuditDraft::flag_set(actor, name, enabled),
                )
                .await?;
                let row: FlagOverride = sqlx::query_as(UPSERT)
                    .bind(name)
                    .bind(enabled)
                    .bind(velvet_core::audit::now_micros())
                    .bind(actor)
                    .fetch_one(&mut *tx)
                    .await
                    .ctx("setting a feature flag")?;
                tx.commit().await.ctx("committing a feature flag")?;
                Ok(row)
            }
        }
    };
}

impl_flag_store!(crate::sqlite::SqliteStore, reader);
impl_flag_store!(crate::postgres::PostgresStore, pool);
