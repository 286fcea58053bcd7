//! `velvet doctor`: every check in one table, nothing changed, the exit code telling whether
//! rotation can work.

use crate::common::*;
use serde_json::Value;

fn results(out: &Out) -> Vec<(String, String, String)> {
    let rows: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("{}", out.all()));
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["check"].as_str().unwrap().to_string(),
                r["target"].as_str().unwrap().to_string(),
                format!(
                    "{}: {}",
                    r["result"].as_str().unwrap(),
                    r["detail"].as_str().unwrap()
                ),
            )
        })
        .collect()
}

fn find<'a>(rows: &'a [(String, String, String)], check: &str, target: &str) -> &'a str {
    rows.iter()
        .find(|(c, t, _)| c == check && t == target)
        .map(|(_, _, r)| r.as_str())
        .unwrap_or_else(|| panic!("no {check} {target} in {rows:?}"))
}

#[test]
fn doctor_names_what_cannot_be_reached_and_changes_nothing() {
    let w = Workdir::new();
    let missing_role = velvet_testkit::unique_name("doctor_missing");
    w.write_config(&format!(
        "
tokens:
  - name: api
    source: {{kind: random}}
    consumers:
      - {{name: env, kind: file, path: app.env, format: dotenv, key: TOKEN}}
      - {{name: hook, kind: exec, command: [no-such-program-velvet]}}
      - {{name: web, kind: webhook, url: 'http://127.0.0.1:9/hook', signing_secret_env: HOOK_SECRET}}
  - name: db
    source: {{kind: postgres_role, admin_url_env: PG_ADMIN, role: {missing_role}}}
"
    ));
    let admin = velvet_testkit::admin_url();
    let env = [
        ("PG_ADMIN", admin.as_str()),
        ("HOOK_SECRET", "s3cret-hook-signing"),
    ];
    let out = w.run(&["doctor", "--output", "json"], &env, None);
    assert_eq!(out.code, 1, "{}", out.all());
    let rows = results(&out);
    assert!(find(&rows, "config", &w.config()).starts_with("ok"));
    assert!(find(&rows, "keyring", "").starts_with("ok"));
    assert!(
        find(
            &rows,
            "store",
            &format!("sqlite://{}", w.path("velvet.db").display())
        )
        .starts_with("warn"),
        "{rows:?}"
    );
    assert!(find(&rows, "source random", "api").starts_with("ok"));
    assert!(find(&rows, "consumer file", "api/env").starts_with("ok: "));
    assert!(find(&rows, "consumer exec", "api/hook").starts_with("fail"));
    assert!(find(&rows, "consumer webhook", "api/web").starts_with("fail"));
    let db = find(&rows, "source postgres_role", "db");
    assert!(
        db.starts_with("fail") && db.contains("does not exist"),
        "{db}"
    );
    assert!(!w.path("velvet.db").exists(), "doctor created no store");
    assert!(!w.path("app.env").exists(), "nor any consumer file");
    assert!(!out.all().contains("s3cret-hook-signing"));

    // Text output is a table; a broken file is a usage error.
    let out = w.run(&["doctor"], &env, None);
    assert!(
        out.stdout.contains("RESULT") && out.stdout.contains("consumer exec"),
        "{}",
        out.stdout
    );
    w.write_config("tokens: [{name: x}]");
    assert_eq!(w.run(&["doctor"], &env, None).code, 2);
}

#[test]
fn doctor_passes_on_a_working_setup() {
    let w = Workdir::new();
    w.write_config(
        "
tokens:
  - name: api
    source: {kind: random}
    consumers:
      - {name: env, kind: file, path: app.env, format: dotenv, key: TOKEN}
      - {name: hook, kind: exec, command: [cat]}
",
    );
    let s = w.serve(&[], &[]);
    s.url("/");
    drop(s);
    let out = w.run(&["doctor", "--output", "json"], &[], None);
    assert_eq!(out.code, 0, "{}", out.all());
    let rows = results(&out);
    let store = format!("sqlite://{}", w.path("velvet.db").display());
    assert!(find(&rows, "store", &store).starts_with("ok"), "{rows:?}");
    assert!(find(&rows, "keyring opens stored values", "").starts_with("ok"));
    assert!(find(&rows, "consumer exec", "api/hook").starts_with("ok: runs /"));
}

/// A PostgreSQL admin that cannot set passwords, and a Redis admin that may not run
/// ACL SETUSER, fail the check before a rotation would.
#[test]
fn doctor_checks_the_privileges_minting_needs() {
    let admin = velvet_testkit::admin_url();
    let weak = velvet_testkit::unique_name("doctor_weak");
    let target = velvet_testkit::unique_name("doctor_target");
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql")
            .arg(&admin)
            .args(["-qc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    psql(&format!(
        "CREATE ROLE {weak} LOGIN NOSUPERUSER NOCREATEROLE; CREATE ROLE {target} LOGIN"
    ));
    // The local server trusts logins: the same URL as another user.
    let weak_url = admin
        .replacen("postgres@", &format!("{weak}@"), 1)
        .replacen("user=postgres", &format!("user={weak}"), 1);
    assert_ne!(weak_url, admin);
    let redis_url =
        std::env::var("VELVET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = redis::Client::open(redis_url.as_str()).unwrap();
    let mut rc = redis.get_connection().unwrap();
    let (user, limited) = (
        velvet_testkit::unique_name("velvet_u"),
        velvet_testkit::unique_name("velvet_admin"),
    );
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">x")
        .exec(&mut rc)
        .unwrap();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&limited)
        .arg("on")
        .arg(">limited-pw")
        .arg("+@all")
        .arg("-acl|setuser")
        .exec(&mut rc)
        .unwrap();
    let limited_url = redis_url.replacen("redis://", &format!("redis://{limited}:limited-pw@"), 1);
    let w = Workdir::new();
    w.write_config(&format!(
        "
tokens:
  - name: db
    source: {{kind: postgres_role, admin_url_env: PG_WEAK, role: {target}}}
  - name: db-ok
    source: {{kind: postgres_role, admin_url_env: PG_ADMIN, role: {target}}}
  - name: cache
    source: {{kind: redis_acl, admin_url_env: REDIS_LIMITED, user: {user}}}
  - name: cache-ok
    source: {{kind: redis_acl, admin_url_env: REDIS_ADMIN, user: {user}}}
"
    ));
    let env = [
        ("PG_WEAK", weak_url.as_str()),
        ("PG_ADMIN", admin.as_str()),
        ("REDIS_LIMITED", limited_url.as_str()),
        ("REDIS_ADMIN", redis_url.as_str()),
    ];
    let out = w.run(&["doctor", "--output", "json"], &env, None);
    assert_eq!(out.code, 1, "{}", out.all());
    let rows = results(&out);
    let db = find(&rows, "source postgres_role", "db");
    assert!(db.starts_with("fail") && db.contains("CREATEROLE"), "{db}");
    assert!(
        find(&rows, "source postgres_role", "db-ok").starts_with("ok"),
        "{rows:?}"
    );
    let cache = find(&rows, "source redis_acl", "cache");
    assert!(
        cache.starts_with("fail") && cache.contains("ACL SETUSER"),
        "{cache}"
    );
    assert!(
        find(&rows, "source redis_acl", "cache-ok").starts_with("ok"),
        "{rows:?}"
    );
    psql(&format!("DROP ROLE {weak}; DROP ROLE {target}"));
    for u in [&user, &limited] {
        redis::cmd("ACL")
            .arg("DELUSER")
            .arg(u)
            .exec(&mut rc)
            .unwrap();
    }
}

#[test]
fn doctor_checks_a_mysql_admin_and_account_without_changing_them() {
    let maria = velvet_testkit::servers::mariadb_root;
    let (weak, admin, app) = (
        velvet_testkit::unique_name("vdweak"),
        velvet_testkit::unique_name("vdadm"),
        velvet_testkit::unique_name("vdapp"),
    );
    maria(&format!(
        "CREATE USER '{weak}'@'127.0.0.1' IDENTIFIED BY 'weak-pw';
         GRANT SELECT ON mysql.global_priv TO '{weak}'@'127.0.0.1';
         CREATE USER '{admin}'@'127.0.0.1' IDENTIFIED BY 'admin-pw';
         GRANT CREATE USER ON *.* TO '{admin}'@'127.0.0.1';
         GRANT SELECT ON mysql.global_priv TO '{admin}'@'127.0.0.1';
         CREATE USER '{app}'@'%' IDENTIFIED BY 'app-pw'"
    ));
    let priv_of = |u: &str| {
        maria(&format!(
            "SELECT Priv FROM mysql.global_priv WHERE User = '{u}'"
        ))
    };
    let before = priv_of(&app);
    let w = Workdir::new();
    w.write_config(&format!(
        "
tokens:
  - name: my
    source: {{kind: mysql_user, admin_url_env: MY_WEAK, user: {app}}}
  - name: my-ok
    source: {{kind: mysql_user, admin_url_env: MY_ADMIN, user: {app}}}
  - name: my-missing
    source: {{kind: mysql_user, admin_url_env: MY_ADMIN, user: {app}x}}
"
    ));
    let env = [
        ("MY_WEAK", format!("mysql://{weak}:weak-pw@127.0.0.1:3306")),
        (
            "MY_ADMIN",
            format!("mysql://{admin}:admin-pw@127.0.0.1:3306"),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = w.run(&["doctor", "--output", "json"], &env, None);
    assert_eq!(out.code, 1, "{}", out.all());
    let rows = results(&out);
    let my = find(&rows, "source mysql_user", "my");
    assert!(
        my.starts_with("fail") && my.contains("GRANT CREATE USER ON *.*"),
        "{my}"
    );
    let ok = find(&rows, "source mysql_user", "my-ok");
    assert!(ok.starts_with("ok") && ok.contains(&app), "{ok}");
    let missing = find(&rows, "source mysql_user", "my-missing");
    assert!(
        missing.starts_with("fail") && missing.contains("does not exist"),
        "{missing}"
    );
    assert!(!out.all().contains("admin-pw") && !out.all().contains("weak-pw"));
    assert_eq!(priv_of(&app), before, "doctor changed the account");
    maria(&format!(
        "DROP USER '{weak}'@'127.0.0.1'; DROP USER '{admin}'@'127.0.0.1'; DROP USER '{app}'@'%'"
    ));
}

#[test]
fn doctor_checks_a_heroku_key_and_app_without_writing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let heroku = rt.block_on(velvet_fakes::heroku::Heroku::start("good-heroku-key"));
    heroku.add_app("console-prod", &[("OTHER", "kept")]);
    let w = Workdir::new();
    w.write_config(&format!(
        "
tokens:
  - name: api
    source: {{kind: random}}
    consumers:
      - {{name: ok, kind: heroku_config_var, app: console-prod, key: API_TOKEN, api_key_env: GOOD_KEY, api_url: '{url}'}}
      - {{name: expired, kind: heroku_config_var, app: console-prod, key: API_TOKEN, api_key_env: OLD_KEY, api_url: '{url}'}}
      - {{name: missing, kind: heroku_config_var, app: console-gone, key: API_TOKEN, api_key_env: GOOD_KEY, api_url: '{url}'}}
",
        url = heroku.url()
    ));
    let env = [
        ("GOOD_KEY", "good-heroku-key"),
        ("OLD_KEY", "expired-heroku-key"),
    ];
    let out = w.run(&["doctor", "--output", "json"], &env, None);
    assert_eq!(out.code, 1, "{}", out.all());
    let rows = results(&out);
    let ok = find(&rows, "consumer heroku_config_var", "api/ok");
    assert!(ok.starts_with("ok") && ok.contains("console-prod"), "{ok}");
    let expired = find(&rows, "consumer heroku_config_var", "api/expired");
    assert!(
        expired.starts_with("fail") && expired.contains("`OLD_KEY`"),
        "{expired}"
    );
    let missing = find(&rows, "consumer heroku_config_var", "api/missing");
    assert!(
        missing.starts_with("fail") && missing.contains("`console-gone` not found"),
        "{missing}"
    );
    assert!(!out.all().contains("good-heroku-key") && !out.all().contains("expired-heroku-key"));
    assert_eq!(heroku.releases("console-prod"), 0, "doctor wrote");
}

#[test]
fn doctor_checks_cloudflare_infisical_and_github_credentials_and_targets_without_writing() {
    use velvet_fakes::runbook::{ACCOUNT, PROJECT, Runbook, SCRIPT};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rb = rt.block_on(Runbook::start("current-value"));
    let github = rt.block_on(velvet_fakes::github::GitHub::start(
        "github-token-for-doctor",
    ));
    github.add_repo("acme/console");
    let gh = |name: &str, repo: &str, token_env: &str| {
        format!(
            "      - {{name: {name}, kind: github_actions_secret, repository: {repo}, secret_name: CONSOLE_READ_TOKEN, token_env: {token_env}, api_url: '{}'}}\n",
            github.url()
        )
    };
    let w = Workdir::new();
    let cf = |name: &str, script: &str, token_env: &str| {
        format!(
            "      - {{name: {name}, kind: cloudflare_worker_secret, account_id: {ACCOUNT}, script: {script}, secret_name: CONSOLE_READ_TOKEN, api_token_env: {token_env}, api_url: '{}'}}\n",
            rb.cloudflare.url()
        )
    };
    let inf = |name: &str, env: &str, secret_env: &str| {
        format!(
            "      - {{name: {name}, kind: infisical_secret, project_id: {PROJECT}, environment: {env}, secret_path: /console, key: CONSOLE_READ_TOKEN, client_id_env: INFISICAL_CLIENT_ID, client_secret_env: {secret_env}, api_url: '{}'}}\n",
            rb.infisical.url()
        )
    };
    w.write_config(&format!(
        "tokens:\n  - name: api\n    source: {{kind: random}}\n    consumers:\n{}{}{}{}{}{}{}{}{}",
        cf("cf-ok", SCRIPT, "CLOUDFLARE_API_TOKEN"),
        cf("cf-expired", SCRIPT, "OLD_CF_TOKEN"),
        cf("cf-missing", "console-gone", "CLOUDFLARE_API_TOKEN"),
        inf("inf-ok", "prod", "INFISICAL_CLIENT_SECRET"),
        inf("inf-wrong-secret", "prod", "OLD_INF_SECRET"),
        inf("inf-missing", "production", "INFISICAL_CLIENT_SECRET"),
        gh("gh-ok", "acme/console", "GH_TOKEN"),
        gh("gh-expired", "acme/console", "OLD_CF_TOKEN"),
        gh("gh-missing", "acme/gone", "GH_TOKEN"),
    ));
    let mut env = rb.env();
    env.extend([
        ("OLD_CF_TOKEN", "revoked-cf-token"),
        ("OLD_INF_SECRET", "rotated-inf-secret"),
        ("GH_TOKEN", "github-token-for-doctor"),
    ]);
    let out = w.run(&["doctor", "--output", "json"], &env, None);
    assert_eq!(out.code, 1, "{}", out.all());
    let rows = results(&out);
    let cf_check = "consumer cloudflare_worker_secret";
    let inf_check = "consumer infisical_secret";
    let gh_check = "consumer github_actions_secret";
    for (check, target, want, says) in [
        (cf_check, "api/cf-ok", "ok", "console-edge"),
        (cf_check, "api/cf-expired", "fail", "`OLD_CF_TOKEN`"),
        (
            cf_check,
            "api/cf-missing",
            "fail",
            "no Worker `console-gone`",
        ),
        (inf_check, "api/inf-ok", "ok", "it exists"),
        (
            inf_check,
            "api/inf-wrong-secret",
            "fail",
            "`OLD_INF_SECRET`",
        ),
        (
            inf_check,
            "api/inf-missing",
            "fail",
            "Environment with slug 'production'",
        ),
        (gh_check, "api/gh-ok", "ok", "will be created"),
        (gh_check, "api/gh-expired", "fail", "`OLD_CF_TOKEN`"),
        (gh_check, "api/gh-missing", "fail", "repository `acme/gone`"),
    ] {
        let r = find(&rows, check, target);
        assert!(r.starts_with(want) && r.contains(says), "{target}: {r}");
    }
    assert!(!out.all().contains("revoked-cf-token") && !out.all().contains("rotated-inf-secret"));
    assert!(!out.all().contains("github-token-for-doctor"));
    assert!(
        github.repo_secrets("acme/console").is_empty(),
        "doctor wrote"
    );
    assert_eq!(rb.cloudflare.versions(ACCOUNT, SCRIPT), 1, "doctor wrote");
    assert_eq!(
        rb.infisical
            .get(PROJECT, "prod", "/console", "CONSOLE_READ_TOKEN")
            .unwrap()
            .1,
        1
    );
}

#[test]
fn doctor_checks_kubernetes_and_aws_credentials_and_targets_without_writing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let k8s = rt.block_on(velvet_fakes::kubernetes::Kubernetes::start(
        "k8s-token-for-doctor",
        std::time::Duration::ZERO,
    ));
    k8s.add_secret("console", "api", &[("READ_TOKEN", "current")]);
    k8s.add_workload("deployments", "console", "web", 1);
    let moto = velvet_testkit::servers::Moto::start(&["console/read=current"]);
    let kube = |name: &str, env: &str, workload: &str| {
        format!(
            "      - {{name: {name}, kind: k8s_secret, namespace: console, secret: api, key: READ_TOKEN, token_env: {env}, restart: [{{kind: Deployment, name: {workload}}}], api_url: '{}'}}\n",
            k8s.url()
        )
    };
    let aws = |name: &str, secret_env: &str, id: &str| {
        format!(
            "      - {{name: {name}, kind: aws_secrets_manager, region: eu-west-1, secret_id: {id}, access_key_id_env: AWS_KEY_ID, secret_access_key_env: {secret_env}, api_url: '{}'}}\n",
            moto.endpoint
        )
    };
    let w = Workdir::new();
    w.write_config(&format!(
        "tokens:\n  - name: api\n    source: {{kind: random}}\n    consumers:\n{}{}{}{}{}{}",
        kube("k8s-ok", "K8S_TOKEN", "web"),
        kube("k8s-expired", "OLD_K8S_TOKEN", "web"),
        kube("k8s-missing", "K8S_TOKEN", "worker"),
        aws("aws-ok", "AWS_SECRET", "console/read"),
        aws("aws-wrong-key", "OLD_AWS_SECRET", "console/read"),
        aws("aws-missing", "AWS_SECRET", "console/gone"),
    ));
    let env = [
        ("K8S_TOKEN", "k8s-token-for-doctor"),
        ("OLD_K8S_TOKEN", "revoked-k8s-token"),
        ("AWS_KEY_ID", moto.access_key_id.as_str()),
        ("AWS_SECRET", moto.secret_access_key.as_str()),
        ("OLD_AWS_SECRET", "rotated-aws-secret-key"),
    ];
    let out = w.run(&["doctor", "--output", "json"], &env, None);
    assert_eq!(out.code, 1, "{}", out.all());
    let rows = results(&out);
    let (k, a) = ("consumer k8s_secret", "consumer aws_secrets_manager");
    for (check, target, want, says) in [
        (k, "api/k8s-ok", "ok", "holds `READ_TOKEN`"),
        (k, "api/k8s-expired", "fail", "`OLD_K8S_TOKEN`"),
        (
            k,
            "api/k8s-missing",
            "fail",
            "Deployment `worker` not found",
        ),
        (a, "api/aws-ok", "ok", "console/read"),
        (a, "api/aws-wrong-key", "fail", "`OLD_AWS_SECRET`"),
        (a, "api/aws-missing", "fail", "no secret `console/gone`"),
    ] {
        let r = find(&rows, check, target);
        assert!(r.starts_with(want) && r.contains(says), "{target}: {r}");
    }
    for secret in [
        "k8s-token-for-doctor",
        "revoked-k8s-token",
        "rotated-aws-secret-key",
        &moto.secret_access_key,
    ] {
        assert!(
            !out.all().contains(secret),
            "a credential reached doctor's output"
        );
    }
    assert_eq!(
        k8s.restarts("deployments", "console", "web"),
        0,
        "doctor restarted"
    );
    assert_eq!(
        k8s.secret("console", "api").unwrap()["READ_TOKEN"],
        "current"
    );
}
