//! I5: a full rotation of every source kind (PostgreSQL, Redis, MariaDB, random) to every
//! consumer kind through the binary, then every log line, API response, event stream, the audit
//! export, `/metrics` and the store's files are searched for the values (and for the
//! credentials Velvet holds): zero hits.

use crate::common::*;
use std::time::{Duration, Instant};
use velvet_testkit::servers::{OpenBao, PasswordPostgres};

const KEY: &str = "leak-test-key-0123456789abcdef-0123";

#[test]
fn no_value_of_any_source_or_consumer_leaks() {
    let pg = PasswordPostgres::start();
    let bao = OpenBao::start();
    let (hook, hook_url) = receiver::start(Duration::ZERO);
    const HOOK_SECRET: &str = "hook-signing-secret-0123456789";
    let out = std::process::Command::new("psql")
        .arg(&pg.admin_url)
        .args([
            "-qc",
            "CREATE ROLE app_a LOGIN PASSWORD 'a0'; CREATE ROLE app_b LOGIN PASSWORD 'b0'",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let redis_url =
        std::env::var("VELVET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let user = velvet_testkit::unique_name("velvet_l");
    let redis = redis::Client::open(redis_url.as_str()).unwrap();
    let mut rc = redis.get_connection().unwrap();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">r0")
        .arg("~*")
        .arg("+@all")
        .exec(&mut rc)
        .unwrap();

    // MariaDB: an admin with just what mysql_user needs, and an app user set by hand.
    let maria = velvet_testkit::servers::mariadb_root;
    let (my_admin, my_user) = (
        velvet_testkit::unique_name("vladm"),
        velvet_testkit::unique_name("vlapp"),
    );
    let my_admin_pw = format!("admin-{}", velvet_testkit::unique_name("pw"));
    maria(&format!(
        "CREATE USER '{my_admin}'@'127.0.0.1' IDENTIFIED BY '{my_admin_pw}';
         GRANT CREATE USER ON *.* TO '{my_admin}'@'127.0.0.1';
         GRANT SELECT ON mysql.global_priv TO '{my_admin}'@'127.0.0.1';
         CREATE USER '{my_user}'@'%' IDENTIFIED BY 'm0'"
    ));
    let my_admin_url = format!("mysql://{my_admin}:{my_admin_pw}@127.0.0.1:3306");

    // Heroku's fake, on a runtime of its own that lives as long as the test.
    const HEROKU_KEY: &str = "heroku-api-key-for-the-leak-test";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let heroku = rt.block_on(velvet_fakes::heroku::Heroku::start(HEROKU_KEY));
    heroku.add_app("leak-app", &[("OTHER", "keep-me")]);
    // Cloudflare's and Infisical's, as the runbook sets them up.
    let rb = rt.block_on(velvet_fakes::runbook::Runbook::start("leak-initial"));
    const GITHUB_TOKEN: &str = "github_pat_for_the_leak_test_0123456789";
    let github = rt.block_on(velvet_fakes::github::GitHub::start(GITHUB_TOKEN));
    github.add_repo("acme/leak");
    const K8S_TOKEN: &str = "k8s-token-for-the-leak-test-0123456789";
    let k8s = rt.block_on(velvet_fakes::kubernetes::Kubernetes::start(
        K8S_TOKEN,
        std::time::Duration::from_millis(50),
    ));
    k8s.add_workload("deployments", "leak", "web", 1);
    let moto = velvet_testkit::servers::Moto::start(&["leak/api=initial"]);

    let w = Workdir::new();
    w.write_config(&format!(
        "defaults: {{flow: auto, grace_period: 0s, retry: {{attempts: 3, initial_backoff: 50ms, max_backoff: 100ms}}}}
tokens:
  - name: db
    source: {{kind: postgres_role, admin_url_env: PG_ADMIN, strategy: alternating, roles: [app_a, app_b]}}
    consumers:
      - {{name: env, kind: file, path: db.env, format: dotenv, key: DATABASE_URL, template: 'postgres://{{{{username}}}}:{{{{password | urlencode}}}}@127.0.0.1:{port}/postgres'}}
  - name: cache
    source: {{kind: redis_acl, admin_url_env: REDIS_ADMIN, user: {user}}}
    consumers:
      - {{name: env, kind: file, path: cache.env, format: dotenv, key: REDIS_PASSWORD, template: '{{{{password}}}}'}}
  - name: my
    source: {{kind: mysql_user, admin_url_env: MY_ADMIN, user: {my_user}}}
    consumers:
      - {{name: env, kind: file, path: my.env, format: dotenv, key: MYSQL_PASSWORD, template: '{{{{password}}}}'}}
  - name: api
    source: {{kind: random}}
    consumers:
      - {{name: raw, kind: file, path: api.token}}
      - {{name: hook, kind: webhook, url: '{hook_url}', signing_secret_env: HOOK_SECRET}}
      - {{name: kv, kind: vault_kv, address: '{bao}', token_env: BAO_TOKEN, path: leak/api, field: TOKEN, previous_field: TOKEN_PREVIOUS}}
      - {{name: cmd, kind: exec, command: [sh, -c, 'cat > {exec_out}']}}
      - {{name: envdump, kind: exec, command: [sh, -c, 'env > {env_out}']}}
      - {{name: heroku, kind: heroku_config_var, app: leak-app, key: API_TOKEN, previous_key: API_TOKEN_PREVIOUS, api_key_env: HEROKU_API_KEY, api_url: '{heroku_url}'}}
      - {{name: cf, kind: cloudflare_worker_secret, account_id: {cf_account}, script: console-edge, secret_name: API_TOKEN, api_token_env: CLOUDFLARE_API_TOKEN, api_url: '{cf_url}'}}
      - {{name: inf, kind: infisical_secret, project_id: {inf_project}, environment: prod, secret_path: /leak, key: API_TOKEN, client_id_env: INFISICAL_CLIENT_ID, client_secret_env: INFISICAL_CLIENT_SECRET, api_url: '{inf_url}'}}
      - {{name: gh, kind: github_actions_secret, repository: acme/leak, secret_name: API_TOKEN, token_env: GITHUB_TOKEN_FOR_VELVET, api_url: '{gh_url}'}}
      - {{name: k8s, kind: k8s_secret, namespace: leak, secret: api, key: API_TOKEN, token_env: K8S_TOKEN, restart: [{{kind: Deployment, name: web}}], api_url: '{k8s_url}'}}
      - {{name: aws, kind: aws_secrets_manager, region: eu-west-1, secret_id: leak/api, access_key_id_env: AWS_KEY_ID, secret_access_key_env: AWS_SECRET, api_url: '{aws_url}'}}
",
        port = pg.port,
        bao = bao.address,
        exec_out = w.path("api.exec").display(),
        env_out = w.path("exec.env").display(),
        heroku_url = heroku.url(),
        cf_account = velvet_fakes::runbook::ACCOUNT,
        cf_url = rb.cloudflare.url(),
        inf_project = velvet_fakes::runbook::PROJECT,
        inf_url = rb.infisical.url(),
        gh_url = github.url(),
        k8s_url = k8s.url(),
        aws_url = moto.endpoint,
    ));
    let mut env = rb.env();
    env.extend([
        ("VELVET_API_KEY", KEY),
        ("PG_ADMIN", pg.admin_url.as_str()),
        ("REDIS_ADMIN", redis_url.as_str()),
        ("MY_ADMIN", my_admin_url.as_str()),
        ("HOOK_SECRET", HOOK_SECRET),
        ("BAO_TOKEN", bao.token.as_str()),
        ("HEROKU_API_KEY", HEROKU_KEY),
        ("GITHUB_TOKEN_FOR_VELVET", GITHUB_TOKEN),
        ("K8S_TOKEN", K8S_TOKEN),
        ("AWS_KEY_ID", moto.access_key_id.as_str()),
        ("AWS_SECRET", moto.secret_access_key.as_str()),
    ]);
    let s = w.serve(&[], &env);
    let mut responses = Vec::new();
    let mut jobs = Vec::new();
    for token in ["db", "cache", "my", "api", "db", "my", "api"] {
        let (code, body) = s.call(
            "POST",
            &format!("/api/v1/tokens/{token}/rotate"),
            Some(KEY),
            None,
        );
        assert_eq!(code, 202, "{body}");
        let job = body["job_id"].as_str().unwrap().to_string();
        jobs.push(job.clone());
        let start = Instant::now();
        loop {
            let (_, j) = s.call("GET", &format!("/api/v1/rotations/{job}"), Some(KEY), None);
            responses.push(j.to_string());
            if j["status"] == "succeeded" {
                break;
            }
            assert!(j["status"] != "failed", "{j}\n{}", s.logs());
            assert!(start.elapsed() < Duration::from_secs(60), "{j}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let (_, t) = s.call("GET", &format!("/api/v1/tokens/{token}"), Some(KEY), None);
        responses.push(t.to_string());
    }
    let (_, list) = s.call("GET", "/api/v1/tokens", Some(KEY), None);
    responses.push(list.to_string());
    let (_, metrics) = s.get("/metrics");
    responses.push(metrics);
    // Every other view of the same runs: the event streams from their first event, the job
    // list, the audit log, decisions and security events.
    for job in &jobs {
        let stream = http()
            .get(s.url(&format!("/api/v1/rotations/{job}/events")))
            .bearer_auth(KEY)
            .header("Last-Event-ID", "0")
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert!(stream.contains("event: end"), "{stream}");
        responses.push(stream);
    }
    for path in [
        "/api/v1/rotations",
        "/api/v1/audit?limit=1000",
        "/api/v1/audit/decisions",
        "/api/v1/audit/security-events",
    ] {
        let (code, body) = s.call("GET", path, Some(KEY), None);
        assert_eq!(code, 200, "{path}: {body}");
        responses.push(body.to_string());
    }

    let read = |f: &str| std::fs::read_to_string(w.path(f)).unwrap();
    let db_url = read("db.env")
        .trim()
        .strip_prefix("DATABASE_URL=")
        .unwrap()
        .to_string();
    let db_password = db_url
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string();
    let mut secrets = vec![
        db_password,
        read("cache.env")
            .trim()
            .strip_prefix("REDIS_PASSWORD=")
            .unwrap()
            .to_string(),
        read("api.token"),
        read("my.env")
            .trim()
            .strip_prefix("MYSQL_PASSWORD=")
            .unwrap()
            .to_string(),
        my_admin_pw.clone(),
        pg.admin_url
            .split(':')
            .nth(2)
            .unwrap()
            .split('@')
            .next()
            .unwrap()
            .to_string(),
    ];
    // Every consumer of `api` holds the value of its second rotation; the revoke dropped the
    // first from vault's previous field.
    let api = read("api.token");
    assert_eq!(read("api.exec"), api);
    assert_eq!(hook.last_value("api").as_deref(), Some(api.as_str()));
    let first_api = hook.received.lock().unwrap()[0].2.clone();
    assert_ne!(first_api, api);
    let kv = bao.cli(&["kv", "get", "-format=json", "secret/leak/api"]);
    let kv: serde_json::Value = serde_json::from_slice(&kv.stdout).unwrap();
    assert_eq!(kv["data"]["data"]["TOKEN"], api.as_str(), "{kv}");
    assert!(kv["data"]["data"]["TOKEN_PREVIOUS"].is_null(), "{kv}");
    let app = heroku.vars("leak-app");
    assert_eq!(
        app.get("API_TOKEN").map(String::as_str),
        Some(api.as_str()),
        "{app:?}"
    );
    assert!(
        !app.contains_key("API_TOKEN_PREVIOUS") && app["OTHER"] == "keep-me",
        "{app:?}"
    );
    secrets.extend([
        first_api,
        HOOK_SECRET.to_string(),
        bao.token.clone(),
        HEROKU_KEY.to_string(),
    ]);
    secrets.extend(rb.env().iter().map(|(_, v)| v.to_string()));
    secrets.extend([
        GITHUB_TOKEN.to_string(),
        K8S_TOKEN.to_string(),
        moto.secret_access_key.clone(),
    ]);
    assert_eq!(
        moto.secretsmanager("get_secret_value(SecretId='leak/api')")["SecretString"],
        api.as_str()
    );
    assert_eq!(
        k8s.secret("leak", "api")
            .and_then(|s| s.get("API_TOKEN").cloned()),
        Some(api.clone())
    );
    assert_eq!(
        github
            .repo_secrets("acme/leak")
            .get("API_TOKEN")
            .map(|s| s.value.clone()),
        Some(api.clone())
    );
    assert_eq!(
        rb.cloudflare
            .secret(velvet_fakes::runbook::ACCOUNT, "console-edge", "API_TOKEN"),
        Some(api.clone())
    );
    assert_eq!(
        rb.infisical
            .get(velvet_fakes::runbook::PROJECT, "prod", "/leak", "API_TOKEN")
            .map(|x| x.0),
        Some(api.clone())
    );
    assert!(secrets.iter().all(|v| v.len() >= 16), "{secrets:?}");
    // The rotated credential logs in; the second rotation moved to the other role.
    let login = std::process::Command::new("psql")
        .arg(&db_url)
        .args(["-Atc", "SELECT current_user"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&login.stdout).trim(),
        "app_b",
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );

    // The MariaDB password in the file logs in over TCP; the one set by hand does not.
    let my_login = |pw: &str| {
        std::process::Command::new("mariadb")
            .args([
                "-h127.0.0.1",
                "-P3306",
                &format!("-u{my_user}"),
                &format!("-p{pw}"),
                "-e",
                "SELECT 1",
            ])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(my_login(
        read("my.env")
            .trim()
            .strip_prefix("MYSQL_PASSWORD=")
            .unwrap()
    ));
    assert!(
        !my_login("m0"),
        "the password from before Velvet was revoked"
    );

    // An exec command never sees the server's environment (design §10).
    let exec_env = read("exec.env");
    assert!(exec_env.contains("VELVET_ACTION=apply"), "{exec_env}");
    for (name, value) in &env {
        assert!(
            !exec_env.contains(name) && !exec_env.contains(value),
            "exec inherited {name}"
        );
    }
    let logs = s.logs();
    let audit = w
        .run(&["--output", "json", "audit", "verify"], &env, None)
        .stdout;
    let store: Vec<Vec<u8>> = ["velvet.db", "velvet.db-wal"]
        .iter()
        .filter_map(|f| std::fs::read(w.path(f)).ok())
        .collect();
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a log line carried a value"
        );
        assert!(!audit.contains(secret.as_str()));
        for r in &responses {
            assert!(!r.contains(secret.as_str()), "a response carried a value");
        }
        for bytes in &store {
            assert!(
                !bytes.windows(secret.len()).any(|x| x == secret.as_bytes()),
                "plaintext in the store"
            );
        }
    }
    redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .exec(&mut rc)
        .unwrap();
    maria(&format!(
        "DROP USER '{my_admin}'@'127.0.0.1'; DROP USER '{my_user}'@'%'"
    ));
}
