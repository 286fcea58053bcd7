//! `postgres_role`: the password of a PostgreSQL role. `single` changes one role's password in
//! place (the old one dies at once); `alternating` re-keys whichever of two equivalent roles is
//! not in use, so the previous credential keeps working until revoke gives its role a password
//! nobody knows.
//!
//! Passwords are sent as SCRAM-SHA-256 verifiers computed here, so the plaintext never reaches
//! the server's statement log.

use super::{Source, credential_value, credentials};
use crate::{AdapterError, Result};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;
use velvet_core::config::PgStrategy;
use velvet_core::secret::SecretValue;

const PASSWORD_LEN: usize = 40;
const SCRAM_ITERATIONS: u32 = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections per server at most, shared by every rotation in this process.
const ADMIN_CONNECTIONS: u32 = 4;

pub struct PostgresRole {
    admin: PgConnectOptions,
    pool: PgPool,
    strategy: PgStrategy,
}

impl std::fmt::Debug for PostgresRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresRole")
            .field("strategy", &self.strategy)
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL identifier, double-quoted.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` for `password` (RFC 5802/7677),
/// the form PostgreSQL stores and accepts in `ALTER ROLE … PASSWORD`. The password is SASLprep'd
/// first, as PostgreSQL does at login (raw bytes when SASLprep refuses it, as PostgreSQL does).
///
/// Not `postgres_protocol::password::scram_sha_256`: it re-keys its HMAC on each of the 4,096
/// rounds, twice the SHA-256 work of `pbkdf2`, and this runs on every rotation (ADR 0016).
pub fn scram_verifier(password: &str) -> String {
    let prepared = zeroize::Zeroizing::new(match stringprep::saslprep(password) {
        Ok(p) => p.into_owned(),
        Err(_) => password.to_string(),
    });
    let mut salt = [0u8; 16];
    crate::random_bytes(&mut salt);
    let mut salted = zeroize::Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(prepared.as_bytes(), &salt, SCRAM_ITERATIONS, &mut *salted);
    let hmac = |key: &[u8], msg: &[u8]| -> [u8; 32] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
        m.update(msg);
        m.finalize().into_bytes().into()
    };
    let client_key = hmac(&*salted, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let server_key = hmac(&*salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

/// Admin connection pools of one engine, one per server and admin login, so rotations share a
/// few warm connections instead of paying for a backend and a SCRAM handshake each. They live
/// and die with the engine that owns them, not the process.
///
/// A pool is found by where it connects (host, port, socket, user, database) and checked against
/// a keyed fingerprint of the URL it was built from, so a changed admin password replaces the
/// pool while no map key or log line ever holds the URL.
pub struct AdminPools {
    fingerprint_key: [u8; 32],
    pools: Mutex<HashMap<Server, (Fingerprint, PgPool)>>,
}

type Fingerprint = [u8; 32];

#[derive(PartialEq, Eq, Hash)]
struct Server {
    host: String,
    port: u16,
    socket: Option<std::path::PathBuf>,
    user: String,
    database: Option<String>,
}

impl Default for AdminPools {
    fn default() -> Self {
        let mut fingerprint_key = [0u8; 32];
        crate::random_bytes(&mut fingerprint_key);
        Self {
            fingerprint_key,
            pools: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for AdminPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminPools")
            .field("pools", &self.len())
            .finish_non_exhaustive()
    }
}

impl AdminPools {
    /// How many servers have a pool.
    pub fn len(&self) -> usize {
        self.pools.lock().expect("never poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pool for `opts`, built lazily (no connection until the first statement). Small, and
    /// quick to let idle connections go, since they sit on someone else's database.
    fn pool(&self, url: &str, opts: &PgConnectOptions) -> PgPool {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.fingerprint_key)
            .expect("any key length");
        mac.update(url.as_bytes());
        let fingerprint: Fingerprint = mac.finalize().into_bytes().into();
        let server = Server {
            host: opts.get_host().to_string(),
            port: opts.get_port(),
            socket: opts.get_socket().cloned(),
            user: opts.get_username().to_string(),
            database: opts.get_database().map(str::to_string),
        };
        let mut pools = self.pools.lock().expect("never poisoned");
        if let Some((seen, pool)) = pools.get(&server)
            && *seen == fingerprint
        {
            return pool.clone();
        }
        let pool = PgPoolOptions::new()
            .max_connections(ADMIN_CONNECTIONS)
            .min_connections(0)
            .idle_timeout(Some(Duration::from_secs(60)))
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(opts.clone());
        // A replaced pool (the admin URL changed) says goodbye to the server once its last
        // borrower is done.
        if let Some((_, old)) = pools.insert(server, (fingerprint, pool.clone()))
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move { old.close().await });
        }
        pool
    }
}

fn db_error(what: &str, e: sqlx::Error) -> AdapterError {
    // Connection trouble is worth retrying; a refused statement is not.
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => {
            AdapterError::retryable(format!("{what}: {e}"))
        }
        sqlx::Error::Database(d) => AdapterError::permanent(format!("{what}: {}", d.message())),
        other => AdapterError::retryable(format!("{what}: {other}")),
    }
}

impl PostgresRole {
    /// A role rotated over `admin_url`, its admin connections taken from `pools`.
    pub fn new(admin_url: &str, strategy: PgStrategy, pools: &AdminPools) -> Result<Self> {
        let admin = PgConnectOptions::from_str(admin_url)
            .map_err(|_| AdapterError::permanent("the admin URL is not a valid PostgreSQL URL"))?
            .disable_statement_logging();
        Ok(Self {
            pool: pools.pool(admin_url, &admin),
            admin,
            strategy,
        })
    }

    /// Runs `sql` as the admin over a pooled connection: a rotation should not pay for a new
    /// backend and a SCRAM handshake each time it changes a password.
    async fn as_admin(&self, sql: String, what: &str) -> Result<()> {
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, self.pool.acquire())
            .await
            .map_err(|_| AdapterError::retryable("connecting to PostgreSQL as admin timed out"))?
            .map_err(|e| db_error("connecting to PostgreSQL as admin", e))?;
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error(what, e))?;
        Ok(())
    }

    async fn set_password(&self, role: &str, password: &str) -> Result<()> {
        let sql = format!(
            "ALTER ROLE {} WITH LOGIN PASSWORD '{}'",
            ident(role),
            scram_verifier(password)
        );
        self.as_admin(sql, &format!("setting the password of role {role}"))
            .await
    }

    /// The role a new value goes to.
    fn next_role(&self, previous: Option<&SecretValue>) -> String {
        match &self.strategy {
            PgStrategy::Single { role } => role.clone(),
            PgStrategy::Alternating { roles } => super::idle_of(roles, previous),
        }
    }
}

/// Logs in as `role`, runs a query, and says goodbye properly (a dropped socket makes the
/// server log an unexpected EOF).
async fn login(opts: PgConnectOptions, role: &str) -> Result<()> {
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, opts.connect())
        .await
        .map_err(|_| AdapterError::retryable(format!("logging in as {role} timed out")))?
        .map_err(|e| match e {
            sqlx::Error::Database(d) => {
                AdapterError::permanent(format!("logging in as {role} failed: {}", d.message()))
            }
            other => db_error(&format!("logging in as {role}"), other),
        })?;
    sqlx::query("SELECT 1")
        .execute(&mut conn)
        .await
        .map_err(|e| db_error("querying as the new role", e))?;
    let _ = conn.close().await;
    Ok(())
}

#[async_trait]
impl Source for PostgresRole {
    fn generate(&self, previous: Option<&SecretValue>) -> Result<SecretValue> {
        Ok(credential_value(
            &self.next_role(previous),
            crate::random_password(PASSWORD_LEN),
        ))
    }

    async fn activate(&self, new: &SecretValue, _: Option<&SecretValue>) -> Result<()> {
        let (role, password) = credentials(new)?;
        self.set_password(role, password).await
    }

    async fn verify(&self, new: &SecretValue) -> Result<()> {
        let (role, password) = credentials(new)?;
        let role = role.to_string();
        let opts = self.admin.clone().username(&role).password(password);
        login(opts, &role).await
    }

    async fn revoke(&self, current: &SecretValue, previous: Option<&SecretValue>) -> Result<()> {
        let (current_role, _) = credentials(current)?;
        let retired = match (&self.strategy, previous) {
            // The old password died at activation.
            (PgStrategy::Single { .. }, _) => return Ok(()),
            (PgStrategy::Alternating { .. }, Some(p)) => credentials(p)?.0.to_string(),
            // A first rotation: the role not just minted holds whatever password it had
            // before Velvet, which must die too.
            (PgStrategy::Alternating { roles }, None) => {
                match roles.iter().find(|r| r.as_str() != current_role) {
                    Some(r) => r.clone(),
                    None => return Ok(()),
                }
            }
        };
        if retired == current_role {
            return Ok(());
        }
        // A password nobody knows, never stored: the retired role cannot log in.
        self.set_password(&retired, &crate::random_password(PASSWORD_LEN))
            .await
    }

    async fn probe(&self) -> Result<String> {
        let roles: Vec<String> = match &self.strategy {
            PgStrategy::Single { role } => vec![role.clone()],
            PgStrategy::Alternating { roles } => roles.to_vec(),
        };
        let pool = &self.pool;
        let found: Vec<String> =
            sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)")
                .bind(&roles)
                .fetch_all(pool)
                .await
                .map_err(|e| db_error("connecting to PostgreSQL as admin", e))?;
        if let Some(missing) = roles.iter().find(|r| !found.contains(r)) {
            return Err(AdapterError::permanent(format!(
                "role {missing} does not exist; create it (with LOGIN and its grants) first"
            )));
        }
        // Minting is ALTER ROLE … PASSWORD: a superuser, or CREATEROLE on roles that are not
        // superusers (and from PostgreSQL 16 on, ADMIN OPTION on each of them).
        let (admin, superuser, createrole, version): (String, bool, bool, i32) = sqlx::query_as(
            "SELECT current_user::text, rolsuper, rolcreaterole, current_setting('server_version_num')::int
             FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(pool)
        .await
        .map_err(|e| db_error("reading the admin's privileges", e))?;
        if !superuser {
            if !createrole {
                return Err(AdapterError::permanent(format!(
                    "the admin role {admin} has neither SUPERUSER nor CREATEROLE, so it cannot set \
                     passwords: ALTER ROLE {admin} CREATEROLE"
                )));
            }
            let rows: Vec<(String, bool, bool)> = sqlx::query_as(
                "SELECT rolname::text, rolsuper, pg_has_role(current_user, oid, 'USAGE WITH ADMIN OPTION') OR $2 < 160000
                 FROM pg_roles WHERE rolname = ANY($1)",
            )
            .bind(&roles)
            .bind(version)
            .fetch_all(pool)
            .await
            .map_err(|e| db_error("reading the roles' attributes", e))?;
            for (role, role_super, admin_option) in rows {
                if role_super {
                    return Err(AdapterError::permanent(format!(
                        "role {role} is a superuser; only a superuser admin may change its password"
                    )));
                }
                if !admin_option {
                    return Err(AdapterError::permanent(format!(
                        "the admin role {admin} lacks ADMIN OPTION on {role} (PostgreSQL 16+): \
                         GRANT {role} TO {admin} WITH ADMIN OPTION"
                    )));
                }
            }
        }
        Ok(format!(
            "admin login works as {admin} ({}); role(s) {} exist",
            if superuser { "superuser" } else { "CREATEROLE" },
            roles.join(", ")
        ))
    }

    async fn revert(&self, new: &SecretValue, previous: Option<&SecretValue>) -> Result<()> {
        let (new_role, _) = credentials(new)?;
        match (&self.strategy, previous) {
            (PgStrategy::Single { .. }, Some(prev)) => {
                let (role, password) = credentials(prev)?;
                self.set_password(role, password).await
            }
            // No earlier value to restore, or the new role was the idle one: lock it again.
            _ => {
                self.set_password(new_role, &crate::random_password(PASSWORD_LEN))
                    .await
            }
        }
    }
}
