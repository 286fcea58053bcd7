//! `redis_acl`: passwords of a Redis ACL user. Mint adds the new password so both work; revoke
//! leaves exactly the new one (`resetpass` and the new hash in one atomic command), which also
//! ends passwords set before Velvet managed the user. Passwords are sent as SHA-256 hashes
//! (`#<hex>`), so the plaintext never appears in Redis's logs or `MONITOR`.

use super::{Source, credential_value, credentials};
use crate::{AdapterError, Result};
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use sha2::{Digest, Sha256};
use std::time::Duration;
use velvet_core::secret::SecretValue;

const PASSWORD_LEN: usize = 40;
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct RedisAcl {
    admin: redis::Client,
    user: String,
}

impl std::fmt::Debug for RedisAcl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAcl")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

fn hashed(password: &str) -> String {
    format!("#{}", hex::encode(Sha256::digest(password.as_bytes())))
}

fn redis_error(what: &str, e: redis::RedisError) -> AdapterError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        AdapterError::retryable(format!("{what}: {e}"))
    } else {
        AdapterError::permanent(format!("{what}: {e}"))
    }
}

impl RedisAcl {
    pub fn new(admin_url: &str, user: &str) -> Result<Self> {
        let admin = redis::Client::open(admin_url)
            .map_err(|_| AdapterError::permanent("the admin URL is not a valid Redis URL"))?;
        Ok(Self {
            admin,
            user: user.to_string(),
        })
    }

    async fn admin(&self) -> Result<MultiplexedConnection> {
        tokio::time::timeout(TIMEOUT, self.admin.get_multiplexed_async_connection())
            .await
            .map_err(|_| AdapterError::retryable("connecting to Redis as admin timed out"))?
            .map_err(|e| redis_error("connecting to Redis as admin", e))
    }

    /// Velvet manages an existing user's password; it never creates users or their grants.
    async fn require_user(&self, conn: &mut MultiplexedConnection) -> Result<()> {
        let exists: Option<redis::Value> = redis::cmd("ACL")
            .arg("GETUSER")
            .arg(&self.user)
            .query_async(conn)
            .await
            .map_err(|e| redis_error("reading the ACL user", e))?;
        if exists.is_none() || exists == Some(redis::Value::Nil) {
            return Err(AdapterError::permanent(format!(
                "Redis ACL user `{}` does not exist; create it with its permissions first",
                self.user
            )));
        }
        Ok(())
    }

    async fn setuser(&self, rules: &[String]) -> Result<()> {
        let mut conn = self.admin().await?;
        self.require_user(&mut conn).await?;
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(&self.user);
        for r in rules {
            cmd.arg(r);
        }
        let _: () = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("changing the ACL user", e))?;
        Ok(())
    }
}

#[async_trait]
impl Source for RedisAcl {
    async fn probe(&self) -> Result<String> {
        let mut conn = self.admin().await?;
        self.require_user(&mut conn).await?;
        // Whether the admin may change the user, asked without changing it (Redis 7 DRYRUN).
        let me: String = redis::cmd("ACL")
            .arg("WHOAMI")
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("asking who the admin is", e))?;
        let dry: redis::RedisResult<String> = redis::cmd("ACL")
            .arg("DRYRUN")
            .arg(&me)
            .arg("ACL")
            .arg("SETUSER")
            .arg(&self.user)
            .query_async(&mut conn)
            .await;
        match dry {
            Ok(s) if s == "OK" => Ok(format!(
                "admin login works as {me}; ACL user {} exists; {me} may run ACL SETUSER",
                self.user
            )),
            Ok(why) => Err(AdapterError::permanent(format!(
                "the admin user {me} may not run ACL SETUSER ({why}); grant it with \
                 `ACL SETUSER {me} +acl|setuser` or use an admin that has +@admin"
            ))),
            Err(e) => Err(redis_error("checking the admin's ACL permissions", e)),
        }
    }

    fn generate(&self, _: Option<&SecretValue>) -> Result<SecretValue> {
        Ok(credential_value(
            &self.user,
            crate::random_password(PASSWORD_LEN),
        ))
    }

    async fn activate(&self, new: &SecretValue, _: Option<&SecretValue>) -> Result<()> {
        let (_, password) = credentials(new)?;
        // Adding a password that is already there is a no-op: idempotent.
        self.setuser(&[hashed(password)]).await
    }

    async fn verify(&self, new: &SecretValue) -> Result<()> {
        let (user, password) = credentials(new)?;
        let mut conn = self.admin().await?;
        let ok: redis::RedisResult<String> = redis::cmd("AUTH")
            .arg(user)
            .arg(password)
            .query_async(&mut conn)
            .await;
        match ok {
            Ok(_) => Ok(()),
            Err(e) if e.is_io_error() || e.is_timeout() => {
                Err(redis_error("AUTH with the new password", e))
            }
            Err(_) => Err(AdapterError::permanent(format!(
                "AUTH as {user} with the new password was refused"
            ))),
        }
    }

    async fn revoke(&self, current: &SecretValue, _: Option<&SecretValue>) -> Result<()> {
        let (_, password) = credentials(current)?;
        self.setuser(&["resetpass".to_string(), hashed(password)])
            .await
    }

    async fn revert(&self, new: &SecretValue, _: Option<&SecretValue>) -> Result<()> {
        let (_, password) = credentials(new)?;
        let hash = hashed(password);
        // `!<hash>` removes it; removing one that is already gone is an error Redis reports
        // and we accept, so the step stays idempotent.
        match self.setuser(&[format!("!{}", &hash[1..])]).await {
            Err(AdapterError::Permanent { message })
                if message.contains("password you are trying to remove") =>
            {
                Ok(())
            }
            other => other,
        }
    }
}
