//! `velvet serve` on PostgreSQL: several replicas share one database.

use crate::common::*;
use std::time::Duration;

/// The blocking HTTP client cannot run inside an async test, so database set-up runs here.
fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn admin_sql(statements: &[String]) {
    block(async {
        let admin = sqlx::PgPool::connect(&velvet_testkit::admin_url())
            .await
            .unwrap();
        for sql in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&admin)
                .await
                .unwrap();
        }
    })
}

const CONFIG: &str = "
tokens:
  - name: shared-token
    source: {kind: random}
";

#[test]
fn two_replicas_migrate_one_fresh_database_and_both_serve() {
    let url = block(velvet_testkit::fresh_postgres_db());
    let w = Workdir::new();
    w.write_config(CONFIG);
    let env = [("VELVET_DATABASE_URL", url.as_str())];
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| w.serve(&[], &env));
        let b = s.spawn(|| w.serve(&[], &env));
        (a.join().unwrap(), b.join().unwrap())
    });
    for s in [&a, &b] {
        assert_eq!(s.get("/readyz").0, 200, "{}", s.logs());
    }
    let (by_a, by_b) = (
        a.logs().matches("migration applied").count(),
        b.logs().matches("migration applied").count(),
    );
    let expected = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../velvet-store/migrations/postgres"
    ))
    .unwrap()
    .count();
    assert!(
        (by_a, by_b) == (expected, 0) || (by_a, by_b) == (0, expected),
        "the migration lock let exactly one replica apply all {expected}: {by_a} and {by_b}"
    );
    let verify = w.run(&["--output", "json", "audit", "verify"], &env, None);
    let v: serde_json::Value = serde_json::from_str(&verify.stdout).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["entries"].as_u64()),
        (Some(true), Some(1)),
        "one declaration, reconciled once"
    );
}

#[test]
fn readiness_fails_when_the_store_goes_away() {
    let url = block(velvet_testkit::fresh_postgres_db());
    let db = url
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let w = Workdir::new();
    w.write_config(CONFIG);
    let s = w.serve(&[], &[("VELVET_DATABASE_URL", url.as_str())]);
    assert_eq!(s.get("/readyz").0, 200, "{}", s.logs());
    admin_sql(&[
        format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"),
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"),
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (code, body) = s.get("/readyz");
        if code == 503 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz stayed {code}: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains(r#""store":"unreachable""#), "{body}");
    assert_eq!(
        s.get("/healthz").0,
        200,
        "liveness does not depend on the store"
    );
    admin_sql(&[format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true")]);
}

/// Runs statements on the test's own database.
fn db_sql(url: &str, sql: &str) -> Vec<i64> {
    block(async {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let out: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        out
    })
}

const KEY: &str = "test-bootstrap-key-0123456789abcdef";

/// A server on its own fresh PostgreSQL database, ready.
fn serve_on_a_fresh_database() -> (String, Workdir, Server) {
    let url = block(velvet_testkit::fresh_postgres_db());
    let w = Workdir::new();
    w.write_config(CONFIG);
    let s = w.serve(
        &[],
        &[
            ("VELVET_DATABASE_URL", url.as_str()),
            ("VELVET_API_KEY", KEY),
        ],
    );
    assert_eq!(s.get("/readyz").0, 200, "{}", s.logs());
    (url, w, s)
}

/// Makes `table` refuse inserts, as a full disk or a revoked grant would.
fn refuse_inserts(url: &str, table: &str) {
    db_sql(
        url,
        &format!(
            "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION '{table} is read-only'; END $$"
        ),
    );
    db_sql(
        url,
        &format!(
            "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table}
                 FOR EACH ROW EXECUTE FUNCTION refuse_{table}()"
        ),
    );
}

#[test]
fn i6_when_the_audit_log_cannot_be_written_nothing_happens() {
    let (url, _w, s) = serve_on_a_fresh_database();
    let before = db_sql(&url, "SELECT COUNT(*) FROM audit_events")[0];
    // The audit table turns unwritable.
    refuse_inserts(&url, "audit_events");

    let attempts = [
        ("POST", "/api/v1/tokens/shared-token/rotate", None),
        (
            "POST",
            "/api/v1/auth/tokens",
            Some(serde_json::json!({"name": "ci", "role": "viewer"})),
        ),
        (
            "PUT",
            "/api/v1/flags/velvet_v2_rotation",
            Some(serde_json::json!({"enabled": false})),
        ),
    ];
    for (method, path, body) in attempts {
        let (code, answer) = s.call(method, path, Some(KEY), body);
        assert_eq!(code, 503, "{method} {path}: {answer}");
        assert_eq!(answer["error"], "audit_unavailable");
    }
    assert_eq!(
        db_sql(
            &url,
            "SELECT (SELECT COUNT(*) FROM rotation_jobs) + (SELECT COUNT(*) FROM service_tokens)
                 + (SELECT COUNT(*) FROM feature_flags)"
        ),
        vec![0],
        "no job, no token, no flag: the actions did not happen"
    );
    assert_eq!(db_sql(&url, "SELECT COUNT(*) FROM audit_events")[0], before);
    assert!(s.logs().contains("audit_write_failed"), "{}", s.logs());
}

#[test]
fn an_allow_that_cannot_be_recorded_does_not_proceed() {
    let (url, _w, s) = serve_on_a_fresh_database();
    // Decisions turn unwritable; the audit log itself still works.
    refuse_inserts(&url, "policy_decisions");
    for (method, path, body) in [
        ("POST", "/api/v1/tokens/shared-token/rotate", None),
        (
            "POST",
            "/api/v1/auth/tokens",
            Some(serde_json::json!({"name": "ci", "role": "viewer"})),
        ),
    ] {
        let (code, answer) = s.call(method, path, Some(KEY), body);
        assert_eq!(code, 503, "{method} {path}: {answer}");
        assert_eq!(answer["error"], "audit_unavailable");
    }
    assert_eq!(
        db_sql(
            &url,
            "SELECT (SELECT COUNT(*) FROM rotation_jobs) + (SELECT COUNT(*) FROM service_tokens)"
        ),
        vec![0],
        "neither ran"
    );
    // Reads record no decision, so they still answer.
    assert_eq!(s.call("GET", "/api/v1/tokens", Some(KEY), None).0, 200);
}

#[test]
fn a_job_streams_the_same_from_every_replica() {
    const KEY: &str = "test-bootstrap-key-0123456789abcdef";
    let url = block(velvet_testkit::fresh_postgres_db());
    let w = Workdir::new();
    w.write_config(
        "
defaults: {grace_period: 0s}
tokens:
  - name: shared-token
    flow: staged
    source: {kind: random}
    consumers:
      - {name: env, kind: file, path: app.env, format: dotenv, key: TOKEN}
",
    );
    let env = [
        ("VELVET_DATABASE_URL", url.as_str()),
        ("VELVET_API_KEY", KEY),
    ];
    let a = w.serve(&[], &env);
    let b = w.serve(&[], &env);
    let (code, job) = a.call(
        "POST",
        "/api/v1/tokens/shared-token/rotate",
        Some(KEY),
        None,
    );
    assert_eq!(code, 202, "{job}");
    let id = job["job_id"].as_str().unwrap().to_string();
    let awaiting = |what: &str| {
        let start = std::time::Instant::now();
        while a
            .call("GET", &format!("/api/v1/rotations/{id}"), Some(KEY), None)
            .1["awaiting"]
            != what
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "waited for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    awaiting("proceed_distribute");
    // Both replicas stream the job, whichever of them drives it.
    let streams: Vec<_> = [&a, &b]
        .iter()
        .map(|s| {
            let url = s.url(&format!("/api/v1/rotations/{id}/events"));
            // The answer's headers come once the stream follows the job, so every change made
            // after this returns reaches it: no pause needed.
            let r = http()
                .get(url)
                .bearer_auth(KEY)
                .timeout(Duration::from_secs(30))
                .send()
                .unwrap();
            std::thread::spawn(move || r.text().unwrap())
        })
        .collect();
    let stage = format!("/api/v1/rotations/{id}/stage");
    let body = serde_json::json!({"action": "proceed_distribute"});
    assert_eq!(b.call("POST", &stage, Some(KEY), Some(body)).0, 200);
    awaiting("proceed_revoke");
    let body = serde_json::json!({"action": "proceed_revoke"});
    assert_eq!(b.call("POST", &stage, Some(KEY), Some(body)).0, 200);
    let texts: Vec<String> = streams.into_iter().map(|t| t.join().unwrap()).collect();
    let ids = |t: &str| -> Vec<String> {
        t.lines()
            .filter_map(|l| l.strip_prefix("id:"))
            .map(|s| s.trim().to_string())
            .collect()
    };
    for t in &texts {
        assert!(t.contains("event: end") || t.contains("event:end"), "{t}");
        assert!(t.contains("\"succeeded\""), "{t}");
    }
    assert_eq!(
        ids(&texts[0]),
        ids(&texts[1]),
        "the same events, numbered alike"
    );
}
