//! `mysql_user`: passwords of a MariaDB account (`'user'@'host'`).
//!
//! `single` keeps the old and the new password working between mint and revoke: MariaDB has no
//! `RETAIN CURRENT PASSWORD`, but an account may be identified by a chain of alternatives
//! (`IDENTIFIED VIA mysql_native_password USING '*old' OR mysql_native_password USING '*new'`),
//! and a client retries down the chain by auth switch. Revoke leaves only the new password.
//! `alternating` re-keys the idle one of two users. Passwords go to the server as
//! `mysql_native_password` hashes, so the plaintext never reaches its logs; the hash is
//! checked for shape before it is spliced, since `ALTER USER` takes no bind parameters.
//!
//! MySQL 8 (dual passwords by `RETAIN CURRENT PASSWORD`) is not supported yet and is refused
//! by name rather than half-handled.

use super::{Source, credential_value, credentials};
use crate::{AdapterError, Result};
use async_trait::async_trait;
use sha1::{Digest, Sha1};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;
use std::time::Duration;
use velvet_core::config::MysqlStrategy;
use velvet_core::secret::SecretValue;

const PASSWORD_LEN: usize = 40;
const TIMEOUT: Duration = Duration::from_secs(10);
const NATIVE: &str = "mysql_native_password";

pub struct MysqlUser {
    admin: MySqlConnectOptions,
    strategy: MysqlStrategy,
    host: String,
}

impl std::fmt::Debug for MysqlUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlUser")
            .field("strategy", &self.strategy)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// `mysql_native_password`'s stored form: `*` and the upper-case hex of SHA1(SHA1(password)).
fn native_hash(password: &str) -> String {
    let twice = Sha1::digest(Sha1::digest(password.as_bytes()));
    format!("*{}", hex::encode_upper(twice))
}

fn is_native_hash(s: &str) -> bool {
    s.len() == 41
        && s.starts_with('*')
        && s[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// What the server said, with the grant that fixes it when it is a missing privilege.
fn db_error(what: &str, e: sqlx::Error) -> AdapterError {
    match &e {
        sqlx::Error::Database(d) => {
            let m = d.message();
            // 1227: a privilege is missing; 1142/1044: a table or database is not readable.
            match d.code().as_deref() {
                Some("42000") if m.contains("CREATE USER") => AdapterError::permanent(format!(
                    "{what}: the admin lacks the CREATE USER privilege, which ALTER USER on \
                     another account needs: GRANT CREATE USER ON *.* TO <admin>"
                )),
                Some("42000") if m.contains("global_priv") => AdapterError::permanent(format!(
                    "{what}: the admin may not read mysql.global_priv, where the account's \
                     passwords are: GRANT SELECT ON mysql.global_priv TO <admin>"
                )),
                _ => AdapterError::permanent(format!("{what}: {m}")),
            }
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => {
            AdapterError::retryable(format!("{what}: {e}"))
        }
        _ => AdapterError::permanent(format!("{what}: {e}")),
    }
}

/// Single-quoted for `'user'@'host'`; the config admits only plain names and host patterns,
/// so this is a second fence, not the first.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

impl MysqlUser {
    pub fn new(admin_url: &str, strategy: MysqlStrategy, host: &str) -> Result<Self> {
        let admin = MySqlConnectOptions::from_str(admin_url)
            .map_err(|_| AdapterError::permanent("the admin URL is not a valid mysql:// URL"))?
            .disable_statement_logging();
        Ok(Self {
            admin,
            strategy,
            host: host.to_string(),
        })
    }

    fn account(&self, user: &str) -> String {
        format!("{}@{}", quoted(user), quoted(&self.host))
    }

    async fn connect(&self, opts: &MySqlConnectOptions, who: &str) -> Result<MySqlConnection> {
        tokio::time::timeout(TIMEOUT, opts.connect())
            .await
            .map_err(|_| {
                AdapterError::retryable(format!("logging in to MariaDB as {who} timed out"))
            })?
            .map_err(|e| db_error(&format!("logging in to MariaDB as {who}"), e))
    }

    /// An admin connection to a MariaDB server (MySQL is refused by name).
    async fn admin(&self) -> Result<MySqlConnection> {
        let mut conn = self.connect(&self.admin, "admin").await?;
        let version: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| db_error("reading the server version", e))?;
        if !version.contains("MariaDB") {
            return Err(AdapterError::permanent(format!(
                "the server is MySQL {version}; mysql_user supports MariaDB 10.4 and later for now \
                 (MySQL 8's RETAIN CURRENT PASSWORD is not handled yet)"
            )));
        }
        Ok(conn)
    }

    /// The account's `mysql_native_password` hashes, first alternative first; an error names
    /// an account that does not exist.
    async fn hashes(&self, conn: &mut MySqlConnection, user: &str) -> Result<Vec<String>> {
        let priv_json: Option<String> =
            sqlx::query_scalar("SELECT Priv FROM mysql.global_priv WHERE User = ? AND Host = ?")
                .bind(user)
                .bind(&self.host)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| db_error("reading the account's passwords", e))?;
        let Some(priv_json) = priv_json else {
            return Err(AdapterError::permanent(format!(
                "the account {} does not exist; create it with its grants first",
                self.account(user)
            )));
        };
        let v: serde_json::Value = serde_json::from_str(&priv_json).map_err(|_| {
            AdapterError::permanent("mysql.global_priv holds a Priv that is not JSON")
        })?;
        let mut alternatives = vec![&v];
        if let Some(rest) = v["auth_or"].as_array() {
            // MariaDB keeps the first alternative at the top level and an empty object for it.
            alternatives.extend(rest.iter().filter(|a| a.get("plugin").is_some()));
        }
        if let Some(other) = alternatives
            .iter()
            .filter_map(|a| a["plugin"].as_str())
            .find(|p| *p != NATIVE)
        {
            return Err(AdapterError::permanent(format!(
                "the account {} is identified via {other}; mysql_user manages passwords of \
                 {NATIVE} accounts: ALTER USER {} IDENTIFIED BY '…' first",
                self.account(user),
                self.account(user)
            )));
        }
        Ok(alternatives
            .into_iter()
            .filter_map(|a| a["authentication_string"].as_str())
            .filter(|h| is_native_hash(h))
            .map(str::to_string)
            .collect())
    }

    /// Identifies `user` by exactly the password hashes `hashes` (each works).
    async fn identify(
        &self,
        conn: &mut MySqlConnection,
        user: &str,
        hashes: &[String],
    ) -> Result<()> {
        let chain: Vec<String> = hashes
            .iter()
            .filter(|h| is_native_hash(h))
            .map(|h| format!("{NATIVE} USING '{h}'"))
            .collect();
        if chain.is_empty() {
            return Err(AdapterError::permanent(format!(
                "no password hash to identify {} by",
                self.account(user)
            )));
        }
        let sql = format!(
            "ALTER USER {} IDENTIFIED VIA {}",
            self.account(user),
            chain.join(" OR ")
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                db_error(
                    &format!("changing the password of {}", self.account(user)),
                    e,
                )
            })?;
        Ok(())
    }

    /// The user a new value goes to.
    fn next_user(&self, previous: Option<&SecretValue>) -> String {
        match &self.strategy {
            MysqlStrategy::Single { user } => user.clone(),
            MysqlStrategy::Alternating { users } => super::idle_of(users, previous),
        }
    }

    fn users(&self) -> Vec<String> {
        match &self.strategy {
            MysqlStrategy::Single { user } => vec![user.clone()],
            MysqlStrategy::Alternating { users } => users.to_vec(),
        }
    }
}

#[async_trait]
impl Source for MysqlUser {
    fn generate(&self, previous: Option<&SecretValue>) -> Result<SecretValue> {
        Ok(credential_value(
            &self.next_user(previous),
            crate::random_password(PASSWORD_LEN),
        ))
    }

    async fn activate(&self, new: &SecretValue, previous: Option<&SecretValue>) -> Result<()> {
        let (user, password) = credentials(new)?;
        let new_hash = native_hash(password);
        let mut conn = self.admin().await?;
        let held = self.hashes(&mut conn, user).await?;
        if held.contains(&new_hash) {
            return Ok(()); // activated before a crash: nothing to repeat
        }
        let chain = match &self.strategy {
            // The password in use stays beside the new one until revoke: the previous
            // version's, or on a first rotation whatever the account held before Velvet.
            MysqlStrategy::Single { .. } => {
                let old = previous
                    .map(|p| credentials(p).map(|(_, pw)| native_hash(pw)))
                    .transpose()?
                    .filter(|h| held.contains(h))
                    .or_else(|| held.first().cloned());
                old.into_iter().chain([new_hash]).collect::<Vec<_>>()
            }
            // The idle user: nobody logs in with its old password.
            MysqlStrategy::Alternating { .. } => vec![new_hash],
        };
        let done = self.identify(&mut conn, user, &chain).await;
        let _ = conn.close().await;
        done
    }

    async fn verify(&self, new: &SecretValue) -> Result<()> {
        let (user, password) = credentials(new)?;
        // Over TCP to the admin URL's server, and into no database: the account may be
        // granted none, and the admin URL's database is the admin's.
        let opts = MySqlConnectOptions::new()
            .host(self.admin.get_host())
            .port(self.admin.get_port())
            .ssl_mode(self.admin.get_ssl_mode())
            .username(user)
            .password(password)
            .disable_statement_logging();
        let mut conn = self.connect(&opts, user).await?;
        sqlx::query("SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(|e| db_error(&format!("querying as {user}"), e))?;
        let _ = conn.close().await;
        Ok(())
    }

    async fn revoke(&self, current: &SecretValue, previous: Option<&SecretValue>) -> Result<()> {
        let (current_user, password) = credentials(current)?;
        let mut conn = self.admin().await?;
        let done = match &self.strategy {
            // Only the new password is left, which also ends one set before Velvet.
            MysqlStrategy::Single { .. } => {
                self.identify(&mut conn, current_user, &[native_hash(password)])
                    .await
            }
            MysqlStrategy::Alternating { users } => {
                let retired = match previous {
                    Some(p) => credentials(p)?.0.to_string(),
                    // A first rotation: the other user holds a password from before Velvet.
                    None => match users.iter().find(|u| u.as_str() != current_user) {
                        Some(u) => u.clone(),
                        None => current_user.to_string(),
                    },
                };
                if retired == current_user {
                    Ok(())
                } else {
                    // A password nobody knows, never stored: the retired user cannot log in.
                    let locked = native_hash(&crate::random_password(PASSWORD_LEN));
                    self.identify(&mut conn, &retired, &[locked]).await
                }
            }
        };
        let _ = conn.close().await;
        done
    }

    async fn revert(&self, new: &SecretValue, previous: Option<&SecretValue>) -> Result<()> {
        let (user, password) = credentials(new)?;
        let new_hash = native_hash(password);
        let mut conn = self.admin().await?;
        let held = self.hashes(&mut conn, user).await?;
        let rest: Vec<String> = held.into_iter().filter(|h| *h != new_hash).collect();
        let chain = match (&self.strategy, previous) {
            // What worked before activate works again, and only that.
            (MysqlStrategy::Single { .. }, _) if !rest.is_empty() => rest,
            (MysqlStrategy::Single { .. }, Some(p)) => vec![native_hash(credentials(p)?.1)],
            // The idle user, or nothing to restore: locked again.
            _ => vec![native_hash(&crate::random_password(PASSWORD_LEN))],
        };
        let done = self.identify(&mut conn, user, &chain).await;
        let _ = conn.close().await;
        done
    }

    async fn probe(&self) -> Result<String> {
        let mut conn = self.admin().await?;
        for user in self.users() {
            self.hashes(&mut conn, &user).await?;
        }
        let grants: Vec<String> = sqlx::query_scalar("SHOW GRANTS")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| db_error("reading the admin's grants", e))?;
        let global = grants.iter().any(|g| {
            g.contains(" ON *.* ") && (g.contains("ALL PRIVILEGES") || g.contains("CREATE USER"))
        });
        if !global {
            return Err(AdapterError::permanent(
                "the admin lacks the CREATE USER privilege, which ALTER USER on another account \
                 needs: GRANT CREATE USER ON *.* TO <admin>",
            ));
        }
        let me: String = sqlx::query_scalar("SELECT CURRENT_USER()")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| db_error("asking who the admin is", e))?;
        let _ = conn.close().await;
        Ok(format!(
            "admin login works as {me} with CREATE USER; account(s) {} exist",
            self.users()
                .iter()
                .map(|u| self.account(u))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}
