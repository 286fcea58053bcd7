//! Sources: where a token's versions are minted and revoked.
//!
//! The engine calls them in this order, each step idempotent:
//! `generate` (no external effect; the engine stores the sealed value first, I1) →
//! `activate` (the source accepts the new value) → `verify` (a real login) →
//! … distribute … → `revoke` (only the new value works), or `revert` (back to the previous).

mod manual;
mod mysql;
pub mod postgres;
mod random;
mod redis;

pub use manual::Manual;
pub use mysql::MysqlUser;
pub use postgres::PostgresRole;
pub use random::Random;
pub use redis::RedisAcl;

use crate::{AdapterError, Result};
use async_trait::async_trait;
use velvet_core::config::SourceSpec;
use velvet_core::secret::SecretValue;

#[async_trait]
pub trait Source: Send + Sync + std::fmt::Debug {
    /// A fresh value; `previous` lets alternating strategies pick the other role.
    fn generate(&self, previous: Option<&SecretValue>) -> Result<SecretValue>;

    /// Makes the source accept `new`. Repeating it with the same value changes nothing.
    async fn activate(&self, new: &SecretValue, previous: Option<&SecretValue>) -> Result<()>;

    /// Proves `new` works with a real login.
    async fn verify(&self, new: &SecretValue) -> Result<()>;

    /// Retires `previous` so that only `current` works. On a token's first rotation there is no
    /// `previous` in the store, and revoke still retires whatever the source held before Velvet
    /// managed it (design §4, the first-rotation rule).
    async fn revoke(&self, current: &SecretValue, previous: Option<&SecretValue>) -> Result<()>;

    /// Undoes `activate`: `previous` works as before and `new` no longer does.
    async fn revert(&self, new: &SecretValue, previous: Option<&SecretValue>) -> Result<()>;

    /// Checks, changing nothing, that the source can be reached and holds what rotation needs;
    /// says what was found (`velvet doctor`).
    async fn probe(&self) -> Result<String> {
        Ok("nothing to reach".into())
    }
}

/// The sources of one engine: builds the source each token declares and owns what those share
/// (the PostgreSQL admin pools), so shared connections live with their owner, not the process.
#[derive(Debug, Default)]
pub struct Sources {
    postgres: postgres::AdminPools,
}

impl Sources {
    /// The source `spec` declares. `env` resolves `*_env` fields; their values are read here
    /// and never logged.
    pub fn build(
        &self,
        spec: &SourceSpec,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Box<dyn Source>> {
        let need = |name: &str| {
            env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                AdapterError::permanent(format!("environment variable `{name}` is not set"))
            })
        };
        Ok(match spec {
            SourceSpec::Random { bytes, encoding } => Box::new(Random::new(*bytes, *encoding)),
            SourceSpec::PostgresRole {
                admin_url_env,
                strategy,
            } => Box::new(PostgresRole::new(
                &need(admin_url_env)?,
                strategy.clone(),
                &self.postgres,
            )?),
            SourceSpec::RedisAcl {
                admin_url_env,
                user,
            } => Box::new(RedisAcl::new(&need(admin_url_env)?, user)?),
            SourceSpec::MysqlUser {
                admin_url_env,
                strategy,
                host,
            } => Box::new(MysqlUser::new(
                &need(admin_url_env)?,
                strategy.clone(),
                host,
            )?),
            SourceSpec::Manual => Box::new(Manual),
        })
    }

    /// The PostgreSQL admin pools built so far.
    pub fn postgres_pools(&self) -> &postgres::AdminPools {
        &self.postgres
    }
}

/// Of two alternating logins, the one a new value goes to: the one `previous` does not use
/// (the first on a first rotation).
pub(crate) fn idle_of(pair: &[String; 2], previous: Option<&SecretValue>) -> String {
    let in_use = previous.and_then(|p| p.get("username")).map(|u| u.expose());
    if in_use == Some(pair[0].as_str()) {
        pair[1].clone()
    } else {
        pair[0].clone()
    }
}

/// The `username` and `password` of a database value.
pub(crate) fn credentials(v: &SecretValue) -> Result<(&str, &str)> {
    match (v.get("username"), v.get("password")) {
        (Some(u), Some(p)) => Ok((u.expose(), p.expose())),
        _ => Err(AdapterError::permanent(
            "the stored value has no username/password fields (was it imported for another source kind?)",
        )),
    }
}

pub(crate) fn credential_value(username: &str, password: String) -> SecretValue {
    use velvet_core::secret::SecretString;
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "username".to_string(),
        SecretString::new(username.to_string()),
    );
    fields.insert("password".to_string(), SecretString::new(password));
    SecretValue::from_fields(fields)
}
