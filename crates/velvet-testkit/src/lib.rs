//! Test support shared by every crate's tests: a fresh PostgreSQL database per test, keyrings,
//! and stores of either dialect with raw SQL access for tampering tests.

pub mod servers;
pub mod smtp;

use chrono::Utc;
use sqlx::{AssertSqlSafe, Connection};
use std::path::PathBuf;
use std::sync::Arc;
use velvet_core::keyring::Keyring;
use velvet_store::{Dialect, Store, StoreOptions};

/// The server tests create databases on: `VELVET_TEST_DATABASE_URL`, else the local server.
/// `scripts/test` sets the variable after finding or starting a server.
pub fn admin_url() -> String {
    std::env::var("VELVET_TEST_DATABASE_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A unique lowercase name with `prefix`, also carrying the run prefix `scripts/test` sets so
/// it can drop leftovers of its own run.
pub fn unique_name(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("OS randomness");
    let run = std::env::var("VELVET_TEST_RUN").unwrap_or_else(|_| "dev".into());
    format!("{prefix}_{run}_{}", hex::encode(b))
}

/// Creates an empty database and returns its URL. Panics, with how to fix it, when no
/// PostgreSQL answers: these tests never skip silently.
pub async fn fresh_postgres_db() -> String {
    let admin = admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required for these tests and {admin} did not answer ({e}). \
             Run scripts/test (it finds or starts a server), or set VELVET_TEST_DATABASE_URL."
            )
        });
    let name = unique_name("velvet_t");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    replace_db(&admin, &name)
}

/// `admin` with its database replaced by `db`.
pub fn replace_db(admin: &str, db: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{base}/{db}{query}")
}

/// A keyring file in `dir`, saved with mode 0600.
pub fn keyring_in(dir: &std::path::Path) -> Arc<Keyring> {
    let kr = Keyring::generate(&dir.join("velvet-keys.json"), Utc::now());
    kr.save().expect("save keyring");
    Arc::new(kr)
}

/// Raw access to a test store's database, for tampering tests.
#[derive(Debug)]
pub enum RawDb {
    /// A path: each statement opens its own connection, so none is held across the store's use.
    Sqlite(PathBuf),
    Postgres(sqlx::PgPool),
}

impl RawDb {
    pub async fn exec(&self, sql: &str) {
        self.try_exec(sql)
            .await
            .unwrap_or_else(|e| panic!("raw SQL failed: {e}"));
    }

    /// Runs `sql`; the error is the database's own message.
    pub async fn try_exec(&self, sql: &str) -> Result<(), String> {
        match self {
            Self::Sqlite(path) => {
                let path = path.clone();
                let sql = sql.to_string();
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(&path)?;
                    conn.busy_timeout(std::time::Duration::from_secs(10))?;
                    conn.execute_batch(&sql)
                })
                .await
                .expect("raw SQLite thread")
                .map_err(|e| e.to_string())
            }
            Self::Postgres(p) => sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                .execute(p)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }
}

/// A migrated store of one dialect, its keyring, and raw access to its database.
#[derive(Debug)]
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
    pub raw: RawDb,
    pub url: velvet_core::config::StoreUrl,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// A fresh, migrated store.
    pub async fn new(dialect: Dialect) -> Self {
        let f = Self::unmigrated(dialect).await;
        f.store
            .migrate(&velvet_store::MigrationSet::embedded(dialect), false)
            .await
            .expect("migrate");
        f
    }

    /// A fresh store with no schema yet.
    pub async fn unmigrated(dialect: Dialect) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let keyring = keyring_in(dir.path());
        let url = match dialect {
            Dialect::Sqlite => velvet_core::config::StoreUrl::Sqlite(dir.path().join("velvet.db")),
            Dialect::Postgres => velvet_core::config::StoreUrl::Postgres(fresh_postgres_db().await),
        };
        Self::open(url, keyring, dir).await
    }

    /// Opens a store at `url` with `keyring`.
    pub async fn open(
        url: velvet_core::config::StoreUrl,
        keyring: Arc<Keyring>,
        dir: tempfile::TempDir,
    ) -> Self {
        let store = velvet_store::open(&url, Some(keyring.clone()), &StoreOptions::default())
            .await
            .expect("open store");
        let raw = match &url {
            velvet_core::config::StoreUrl::Sqlite(p) => RawDb::Sqlite(p.clone()),
            velvet_core::config::StoreUrl::Postgres(u) => {
                RawDb::Postgres(sqlx::PgPool::connect(u).await.expect("raw postgres"))
            }
        };
        Self {
            store,
            keyring,
            raw,
            url,
            dir,
        }
    }

    /// A second store handle on the same database (another replica or process).
    pub async fn another_handle(&self) -> Arc<dyn Store> {
        velvet_store::open(
            &self.url,
            Some(self.keyring.clone()),
            &StoreOptions::default(),
        )
        .await
        .expect("open second handle")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Runs each named async case (`async fn case(f: Fixture)`) against SQLite and PostgreSQL alike,
/// as `case::sqlite` and `case::postgres`.
#[macro_export]
macro_rules! both_dialects {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::Fixture::new(velvet_store::Dialect::Sqlite).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::Fixture::new(velvet_store::Dialect::Postgres).await).await
            }
        }
    )*};
}
