//! Sources against real servers: PostgreSQL with password authentication, and Redis ACLs.

use sqlx::{AssertSqlSafe, Connection};
use velvet_adapters::source;
use velvet_core::config::{PgStrategy, SourceSpec};
use velvet_core::secret::SecretValue;
use velvet_testkit::servers::PasswordPostgres;

fn env_of(name: &'static str, value: String) -> impl Fn(&str) -> Option<String> {
    move |n| (n == name).then(|| value.clone())
}

/// Logs in over TCP with a password, as an application would.
async fn login(port: u16, user: &str, password: &str) -> bool {
    let url = format!(
        "postgres://{user}:{}@127.0.0.1:{port}/postgres",
        urlencode(password)
    );
    sqlx::PgConnection::connect(&url).await.is_ok()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn admin_exec(url: &str, sql: &str) {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(&mut c)
        .await
        .unwrap();
}

fn creds(v: &SecretValue) -> (String, String) {
    (
        v.get("username").unwrap().expose().to_string(),
        v.get("password").unwrap().expose().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_single_changes_the_password_in_place() {
    let pg = tokio::task::spawn_blocking(PasswordPostgres::start)
        .await
        .unwrap();
    admin_exec(
        &pg.admin_url,
        "CREATE ROLE app_single LOGIN PASSWORD 'initial-pw'",
    )
    .await;
    assert!(login(pg.port, "app_single", "initial-pw").await);
    assert!(
        !login(pg.port, "app_single", "wrong").await,
        "the cluster really checks passwords"
    );
    let spec = SourceSpec::PostgresRole {
        admin_url_env: "PG_ADMIN".into(),
        strategy: PgStrategy::Single {
            role: "app_single".into(),
        },
    };
    let s = source::Sources::default()
        .build(&spec, &env_of("PG_ADMIN", pg.admin_url.clone()))
        .unwrap();
    let previous = velvet_adapters_credential("app_single", "initial-pw");
    let new = s.generate(Some(&previous)).unwrap();
    let (user, pw) = creds(&new);
    assert_eq!(user, "app_single");
    s.activate(&new, Some(&previous)).await.unwrap();
    s.activate(&new, Some(&previous)).await.unwrap();
    s.verify(&new).await.unwrap();
    assert!(login(pg.port, &user, &pw).await);
    assert!(
        !login(pg.port, "app_single", "initial-pw").await,
        "single: the old password dies at mint"
    );
    s.revert(&new, Some(&previous)).await.unwrap();
    assert!(
        login(pg.port, "app_single", "initial-pw").await,
        "revert restores the previous password"
    );
    assert!(!login(pg.port, &user, &pw).await);
    let e = s.verify(&new).await.unwrap_err();
    assert!(!e.is_retryable() && !e.to_string().contains(&pw), "{e}");
    // The statement log never saw the plaintext: the server stored our SCRAM verifier.
    let log = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("velvet_pgpw"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("log")).ok())
        .collect::<String>();
    assert!(!log.contains(&pw));
}

/// The verifier is made from the SASLprep'd password, as PostgreSQL's own `ALTER ROLE … PASSWORD`
/// makes it: a soft hyphen maps to nothing, so the password logs in without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verifiers_are_made_from_the_saslprepped_password() {
    let pg = tokio::task::spawn_blocking(PasswordPostgres::start)
        .await
        .unwrap();
    let verifier = velvet_adapters::source::postgres::scram_verifier("pre\u{00AD}pared-pw");
    admin_exec(
        &pg.admin_url,
        &format!("CREATE ROLE app_prep LOGIN PASSWORD '{verifier}'"),
    )
    .await;
    assert!(login(pg.port, "app_prep", "prepared-pw").await);
    assert!(!login(pg.port, "app_prep", "other-pw").await);
}

/// Sources built by one owner share one admin pool per server; an admin URL with another
/// password replaces it, so no source ever runs on connections another password opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_admin_pools_are_shared_per_server_and_follow_the_admin_password() {
    let pg = tokio::task::spawn_blocking(PasswordPostgres::start)
        .await
        .unwrap();
    admin_exec(
        &pg.admin_url,
        "CREATE ROLE pool_admin SUPERUSER LOGIN PASSWORD 'first-admin-pw'; \
         CREATE ROLE app_pooled LOGIN PASSWORD 'x'",
    )
    .await;
    let url = |pw: &str| format!("postgres://pool_admin:{pw}@127.0.0.1:{}/postgres", pg.port);
    let spec = SourceSpec::PostgresRole {
        admin_url_env: "PG_ADMIN".into(),
        strategy: PgStrategy::Single {
            role: "app_pooled".into(),
        },
    };
    let sources = source::Sources::default();
    let rotate = async |admin_url: String| {
        let s = sources
            .build(&spec, &env_of("PG_ADMIN", admin_url))
            .unwrap();
        let v = s.generate(None).unwrap();
        s.activate(&v, None).await.map(|()| v)
    };
    let v = rotate(url("first-admin-pw")).await.unwrap();
    let (_, pw) = creds(&v);
    assert!(login(pg.port, "app_pooled", &pw).await);
    rotate(url("first-admin-pw")).await.unwrap();
    assert_eq!(sources.postgres_pools().len(), 1, "one pool per server");
    assert!(
        source::Sources::default().postgres_pools().is_empty(),
        "pools belong to their owner, not the process"
    );

    admin_exec(
        &pg.admin_url,
        "ALTER ROLE pool_admin PASSWORD 'second-admin-pw'",
    )
    .await;
    rotate(url("second-admin-pw")).await.unwrap();
    assert_eq!(
        sources.postgres_pools().len(),
        1,
        "the new password replaced the pool"
    );
    // Back to the old URL: its pool is built afresh and its login refused, rather than running
    // on connections the new password opened.
    let e = rotate(url("first-admin-pw")).await.unwrap_err();
    assert!(
        e.to_string().contains("password authentication failed"),
        "{e}"
    );
    let shown = format!("{sources:?}");
    assert!(
        !shown.contains("admin-pw") && !shown.contains("pool_admin"),
        "{shown}"
    );
}

/// The credential value a database source produces.
fn velvet_adapters_credential(user: &str, pw: &str) -> SecretValue {
    use velvet_core::secret::SecretString;
    let mut m = std::collections::BTreeMap::new();
    m.insert("username".to_string(), SecretString::new(user.into()));
    m.insert("password".to_string(), SecretString::new(pw.into()));
    SecretValue::from_fields(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_alternating_keeps_the_previous_role_until_revoke() {
    let pg = tokio::task::spawn_blocking(PasswordPostgres::start)
        .await
        .unwrap();
    admin_exec(&pg.admin_url, "CREATE ROLE app_a LOGIN PASSWORD 'a-initial'; CREATE ROLE app_b LOGIN PASSWORD 'b-unknown'").await;
    let spec = SourceSpec::PostgresRole {
        admin_url_env: "PG_ADMIN".into(),
        strategy: PgStrategy::Alternating {
            roles: ["app_a".into(), "app_b".into()],
        },
    };
    let s = source::Sources::default()
        .build(&spec, &env_of("PG_ADMIN", pg.admin_url.clone()))
        .unwrap();
    let v1 = velvet_adapters_credential("app_a", "a-initial");
    let v2 = s.generate(Some(&v1)).unwrap();
    let (u2, p2) = creds(&v2);
    assert_eq!(u2, "app_b", "the role not in use");
    s.activate(&v2, Some(&v1)).await.unwrap();
    s.verify(&v2).await.unwrap();
    assert!(
        login(pg.port, "app_a", "a-initial").await,
        "the previous credential still works before revoke"
    );
    assert!(login(pg.port, &u2, &p2).await);
    s.revoke(&v2, Some(&v1)).await.unwrap();
    assert!(
        !login(pg.port, "app_a", "a-initial").await,
        "after revoke the retired role cannot log in"
    );
    assert!(login(pg.port, &u2, &p2).await);
    let v3 = s.generate(Some(&v2)).unwrap();
    assert_eq!(
        creds(&v3).0,
        "app_a",
        "and the next rotation goes back to it"
    );

    // A first rotation (nothing in the store before it): revoke still retires the password
    // the other role had before Velvet managed it (design §4).
    admin_exec(
        &pg.admin_url,
        "CREATE ROLE app_c LOGIN PASSWORD 'c-before'; CREATE ROLE app_d LOGIN PASSWORD 'd-before'",
    )
    .await;
    let first = SourceSpec::PostgresRole {
        admin_url_env: "PG_ADMIN".into(),
        strategy: PgStrategy::Alternating {
            roles: ["app_c".into(), "app_d".into()],
        },
    };
    let s = source::Sources::default()
        .build(&first, &env_of("PG_ADMIN", pg.admin_url.clone()))
        .unwrap();
    let v1 = s.generate(None).unwrap();
    let (u1, p1) = creds(&v1);
    assert_eq!(u1, "app_c");
    s.activate(&v1, None).await.unwrap();
    assert!(login(pg.port, "app_d", "d-before").await);
    s.revoke(&v1, None).await.unwrap();
    assert!(
        !login(pg.port, "app_d", "d-before").await,
        "the pre-Velvet credential of the other role dies at the first revoke"
    );
    assert!(!login(pg.port, "app_c", "c-before").await);
    assert!(login(pg.port, &u1, &p1).await);
}

#[tokio::test]
async fn redis_acl_overlaps_until_revoke() {
    let url =
        std::env::var("VELVET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!("Redis is required at {url} ({e}); start it or set VELVET_TEST_REDIS_URL")
        });
    let user = velvet_testkit::unique_name("velvet_u");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">before-velvet")
        .arg("~*")
        .arg("+@all")
        .query_async(&mut conn)
        .await
        .unwrap();
    let spec = SourceSpec::RedisAcl {
        admin_url_env: "REDIS_ADMIN".into(),
        user: user.clone(),
    };
    let s = source::Sources::default()
        .build(&spec, &env_of("REDIS_ADMIN", url.clone()))
        .unwrap();
    assert!(s.probe().await.unwrap().contains(&user));
    let nobody = SourceSpec::RedisAcl {
        admin_url_env: "REDIS_ADMIN".into(),
        user: velvet_testkit::unique_name("velvet_nobody"),
    };
    let e = source::Sources::default()
        .build(&nobody, &env_of("REDIS_ADMIN", url.clone()))
        .unwrap()
        .probe()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let old = velvet_adapters_credential(&user, "before-velvet");
    let new = s.generate(Some(&old)).unwrap();
    let (_, pw) = creds(&new);
    let auth = |p: String| {
        let client = client.clone();
        let user = user.clone();
        async move {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            redis::cmd("AUTH")
                .arg(&user)
                .arg(&p)
                .query_async::<String>(&mut c)
                .await
                .is_ok()
        }
    };
    s.activate(&new, Some(&old)).await.unwrap();
    s.activate(&new, Some(&old)).await.unwrap();
    s.verify(&new).await.unwrap();
    assert!(
        auth(pw.clone()).await && auth("before-velvet".into()).await,
        "both work between mint and revoke"
    );
    s.revoke(&new, Some(&old)).await.unwrap();
    assert!(auth(pw.clone()).await);
    assert!(
        !auth("before-velvet".into()).await,
        "only the new one after revoke"
    );
    s.revert(&new, Some(&old)).await.unwrap();
    assert!(!auth(pw.clone()).await, "revert removes the new password");
    s.revert(&new, Some(&old)).await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut conn)
        .await
        .unwrap();
    let e = s.activate(&new, None).await.unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("does not exist"),
        "{e}"
    );
    // The ACL log and rules never held the plaintext: only its SHA-256.
    let rules: Vec<String> = redis::cmd("ACL")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(rules.iter().all(|r| !r.contains(&pw)));
}
