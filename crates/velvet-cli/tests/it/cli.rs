//! The `velvet` binary end to end: init, validate, migrate, import, audit, keys, serve, demo,
//! and the clear error each kind of bad input must get.

use crate::common::*;
use std::time::Duration;

const TOKENS: &str = "
store: {url: sqlite://velvet.db}
tokens:
  - name: api-token
    tags: [prod]
    source: {kind: random}
    consumers:
      - {name: env, kind: file, path: app.env, format: dotenv, key: API_TOKEN}
  - name: other-token
    source: {kind: random}
";

#[test]
fn init_writes_private_keyring_and_refuses_to_overwrite() {
    let w = Workdir::new();
    assert_eq!(mode_of(&w.path("velvet-keys.json")), 0o600);
    assert!(
        std::fs::read_to_string(w.path("velvet.yaml"))
            .unwrap()
            .contains("kind: file")
    );
    let dir = w.dir.path().to_str().unwrap();
    let again = w.run(&["init", "--dir", dir], &[], None);
    assert_eq!(again.code, 2);
    assert!(
        again.stderr.contains("already exists") && again.stderr.contains("--force"),
        "{}",
        again.stderr
    );
    let keys_before = std::fs::read(w.path("velvet-keys.json")).unwrap();
    let forced = w.run(&["init", "--dir", dir, "--force"], &[], None);
    assert_eq!(forced.code, 0, "{}", forced.all());
    let backup = std::fs::read_dir(w.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("velvet-keys.json.bak-")
        })
        .expect("old keyring kept");
    assert_eq!(std::fs::read(backup.path()).unwrap(), keys_before);
    assert_eq!(
        w.run(&["validate"], &[], None).code,
        0,
        "the starter config is valid"
    );
}

#[test]
fn validate_reports_every_problem_with_path_and_line() {
    let w = Workdir::new();
    w.write_config("tokens:\n  - name: a\n    source: {kind: random}\n    grace_period: 10 minutes\n    consumers:\n      - {name: w, kind: webhook, url: 'https://x', signing_secret_env: HOOK_SECRET_UNSET}\n  - name: a\n    colour: red\n    source: {kind: random}\n");
    let out = w.run(&["validate"], &[], None);
    assert_eq!(out.code, 2, "{}", out.all());
    for expected in [
        "tokens[0].grace_period: `10 minutes` is not a duration",
        "(line 4",
        "tokens[0].consumers[0].signing_secret_env: environment variable `HOOK_SECRET_UNSET` is not set",
        "tokens[1].name: token `a` is declared twice",
        "tokens[1].colour: unknown key `colour`",
    ] {
        assert!(
            out.stderr.contains(expected),
            "missing `{expected}` in:\n{}",
            out.stderr
        );
    }
    let skip = w.run(&["validate", "--skip-env"], &[], None);
    assert!(
        !skip.stderr.contains("HOOK_SECRET_UNSET"),
        "{}",
        skip.stderr
    );
    let json = w.run(&["--output", "json", "validate"], &[], None);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"].as_array().unwrap().len(), 4);
    w.write_config("tokens: [\n");
    let out = w.run(&["validate"], &[], None);
    assert!(
        out.code == 2 && out.stderr.contains("invalid YAML") && out.stderr.contains("line"),
        "{}",
        out.stderr
    );
    let missing = std::process::Command::new(BIN)
        .args(["--config", "/nonexistent/velvet.yaml", "validate"])
        .output()
        .unwrap();
    let missing = Out {
        code: missing.status.code().unwrap(),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&missing.stderr).into(),
    };
    assert!(
        missing.code == 2 && missing.stderr.contains("velvet init"),
        "{}",
        missing.stderr
    );
}

#[test]
fn import_adopts_a_value_once_encrypted_and_audited() {
    let w = Workdir::new();
    w.write_config(TOKENS);
    let secret = "adopted-secret-0123456789abcdef";
    let out = w.run(
        &["tokens", "import", "api-token"],
        &[],
        Some(&format!("{secret}\n")),
    );
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("version 1") && !out.all().contains(secret),
        "{}",
        out.all()
    );
    let again = w.run(&["tokens", "import", "api-token"], &[], Some("x"));
    assert_eq!(again.code, 4, "{}", again.all());
    let missing = w.run(&["tokens", "import", "nope"], &[], Some("x"));
    assert_eq!(missing.code, 3, "{}", missing.all());
    let empty = w.run(&["tokens", "import", "other-token"], &[], Some(""));
    assert_eq!(empty.code, 2, "{}", empty.all());
    // The value is nowhere in the store's files in plaintext.
    for f in ["velvet.db", "velvet.db-wal"] {
        if let Ok(bytes) = std::fs::read(w.path(f)) {
            assert!(
                !bytes.windows(secret.len()).any(|x| x == secret.as_bytes()),
                "plaintext in {f}"
            );
        }
    }
    let verify = w.run(&["--output", "json", "audit", "verify"], &[], None);
    let v: serde_json::Value = serde_json::from_str(&verify.stdout).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["entries"].as_u64()),
        (Some(true), Some(3)),
        "declared ×2 + imported"
    );
}

fn sqlite(w: &Workdir, sql: &str) {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()", w.path("velvet.db").to_str().unwrap(), sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn audit_verify_detects_tampering_and_truncation() {
    let w = Workdir::new();
    w.write_config(TOKENS);
    assert_eq!(
        w.run(&["tokens", "import", "api-token"], &[], Some("v"))
            .code,
        0
    );
    let head = w.run(&["audit", "verify", "--export-head"], &[], None);
    assert_eq!(head.code, 0);
    let head = head.stdout.trim().to_string();
    assert!(head.starts_with("3:") && head.len() == 66, "{head}");
    sqlite(
        &w,
        "UPDATE audit_events SET actor = 'someone-else' WHERE seq = 2",
    );
    let out = w.run(&["audit", "verify"], &[], None);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stdout.contains("first bad seq: 2"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("(empty chain)") && out.stdout.contains("the chain is broken"),
        "a broken chain is not an empty one: {}",
        out.stdout
    );
    let w2 = Workdir::new();
    w2.write_config(TOKENS);
    assert_eq!(
        w2.run(&["tokens", "import", "api-token"], &[], Some("v"))
            .code,
        0
    );
    let head = w2
        .run(&["audit", "verify", "--export-head"], &[], None)
        .stdout
        .trim()
        .to_string();
    sqlite(&w2, "DELETE FROM audit_events WHERE seq = 3");
    assert_eq!(
        w2.run(&["audit", "verify"], &[], None).code,
        0,
        "a clean truncation needs the exported head"
    );
    let out = w2.run(&["audit", "verify", "--expect-head", &head], &[], None);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout.contains("removed from the end"),
        "{}",
        out.stdout
    );
}

#[test]
fn keys_rotate_reseals_and_resumes_after_an_interruption() {
    let w = Workdir::new();
    w.write_config(TOKENS);
    assert_eq!(
        w.run(&["tokens", "import", "api-token"], &[], Some("one"))
            .code,
        0
    );
    assert_eq!(
        w.run(&["tokens", "import", "other-token"], &[], Some("two"))
            .code,
        0
    );
    let out = w.run(
        &["--output", "json", "keys", "rotate", "--batch", "1"],
        &[],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (v["resealed"].as_u64(), v["resumed"].as_bool()),
        (Some(2), Some(false))
    );
    assert_eq!(
        w.run(&["audit", "verify"], &[], None).code,
        0,
        "older records still verify"
    );

    // An interruption after the new key was saved but before re-sealing finished looks like a
    // keyring whose newest key seals nothing yet. Simulate it by adding a key by hand.
    let path = w.path("velvet-keys.json");
    let mut kr = velvet_core::keyring::Keyring::load(&path).unwrap();
    kr.add_key(chrono::Utc::now()).unwrap();
    kr.save().unwrap();
    let status = w.run(&["--output", "json", "keys", "status"], &[], None);
    let s: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(s["values_under_older_keys"], 2);
    let out = w.run(&["--output", "json", "keys", "rotate"], &[], None);
    assert_eq!(out.code, 0, "{}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (v["resealed"].as_u64(), v["resumed"].as_bool()),
        (Some(2), Some(true)),
        "{}",
        out.all()
    );
    assert_eq!(
        velvet_core::keyring::Keyring::load(&path)
            .unwrap()
            .keys()
            .len(),
        3,
        "no extra key on resume"
    );
    assert_eq!(w.run(&["audit", "verify"], &[], None).code, 0);
}

#[test]
fn bad_keyrings_and_stores_get_clear_errors() {
    let w = Workdir::new();
    w.write_config(TOKENS);
    assert_eq!(
        w.run(&["tokens", "import", "api-token"], &[], Some("v"))
            .code,
        0
    );
    let keys = w.path("velvet-keys.json");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = w.run(&["audit", "verify"], &[], None);
    assert!(
        out.code == 2 && out.stderr.contains("chmod 600"),
        "{}",
        out.all()
    );
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();

    let good = std::fs::read(&keys).unwrap();
    std::fs::write(&keys, b"{\"format\": \"velvet-keyring/v1\", \"keys\": [").unwrap();
    let mut s = w.serve(&[], &[]);
    assert_eq!(s.wait(Duration::from_secs(30)), 2);
    assert!(
        s.logs().contains("not a valid Velvet keyring"),
        "{}",
        s.logs()
    );
    std::fs::remove_file(&keys).unwrap();
    let out = w.run(&["audit", "verify"], &[], None);
    assert!(
        out.code == 2 && out.stderr.contains("cannot read keyring"),
        "{}",
        out.all()
    );
    std::fs::write(&keys, &good).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A different key for existing data.
    let other = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
    let mut s = w.serve(&[], &[("VELVET_MASTER_KEY", other)]);
    assert_eq!(s.wait(Duration::from_secs(30)), 1);
    assert!(s.logs().contains("holds no key with id"), "{}", s.logs());
    let out = w.run(
        &["audit", "verify"],
        &[("VELVET_MASTER_KEY", "short")],
        None,
    );
    assert!(
        out.code == 2 && out.stderr.contains("base64 of exactly 32 bytes"),
        "{}",
        out.all()
    );

    // A SQLite path in a missing directory.
    let mut s = w.serve(
        &[],
        &[("VELVET_DATABASE_URL", "sqlite:///nonexistent/dir/velvet.db")],
    );
    assert_eq!(s.wait(Duration::from_secs(30)), 1);
    assert!(
        s.logs()
            .contains("directory /nonexistent/dir does not exist"),
        "{}",
        s.logs()
    );

    // An unreachable PostgreSQL: retried with backoff, then a clear error without the password.
    let started = std::time::Instant::now();
    let mut s = w.serve(
        &[],
        &[
            (
                "VELVET_DATABASE_URL",
                "postgres://velvet:pa55word@127.0.0.1:1/velvet",
            ),
            ("VELVET_STORE_CONNECT_TIMEOUT", "2s"),
        ],
    );
    assert_eq!(s.wait(Duration::from_secs(60)), 1);
    let logs = s.logs();
    assert!(
        logs.contains("cannot reach PostgreSQL at postgres://velvet:***@127.0.0.1:1/velvet after"),
        "{logs}"
    );
    assert!(
        logs.contains("not reachable yet"),
        "retries are logged: {logs}"
    );
    assert!(!logs.contains("pa55word"), "{logs}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "it retried for the budget"
    );
}

#[test]
fn an_edited_migration_stops_the_server() {
    let w = Workdir::new();
    assert_eq!(w.run(&["migrate"], &[], None).code, 0);
    sqlite(
        &w,
        "UPDATE velvet_schema_migrations SET checksum = 'deadbeefdeadbeef' WHERE version = 1",
    );
    let mut s = w.serve(&[], &[]);
    assert_eq!(s.wait(Duration::from_secs(30)), 1);
    assert!(
        s.logs().contains("edited after it was applied"),
        "{}",
        s.logs()
    );
    let out = w.run(&["migrate", "--list"], &[], None);
    assert!(
        out.code == 1 && out.stderr.contains("edited after it was applied"),
        "{}",
        out.all()
    );
}

#[test]
fn serve_answers_health_readiness_metrics_and_reloads_on_sighup() {
    let w = Workdir::new();
    w.write_config(TOKENS);
    let mut fresh = w.serve(&["--no-migrate"], &[]);
    assert_eq!(fresh.wait(Duration::from_secs(30)), 1);
    assert!(
        fresh.logs().contains("migration(s) are pending"),
        "{}",
        fresh.logs()
    );

    let mut s = w.serve(&[], &[]);
    assert_eq!(
        s.get("/healthz"),
        (200, r#"{"service":"velvet","status":"ok"}"#.to_string())
    );
    let (code, body) = s.get("/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(r#""store":"ok""#) && body.contains(r#""migrations":"ok""#),
        "{body}"
    );
    let (code, body) = s.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        body.contains("velvet_tokens{status=\"active\"} 2")
            && body.contains(
                "velvet_http_requests_total{method=\"GET\",route=\"/readyz\",status=\"200\"} 1"
            ),
        "{body}"
    );
    let (code, body) = s.get("/no/such/route");
    assert_eq!((code, body.contains(r#""error":"not_found""#)), (404, true));

    w.write_config(&TOKENS.replace("  - name: other-token\n    source: {kind: random}\n", ""));
    s.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = s.get("/metrics");
        if m.contains("velvet_tokens{status=\"retired\"} 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not retire the token: {m}\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    w.write_config("tokens: [broken\n");
    s.signal("HUP");
    assert!(
        s.wait_for("the new configuration is invalid", Duration::from_secs(10))
            .is_some(),
        "{}",
        s.logs()
    );
    assert_eq!(
        s.get("/healthz").0,
        200,
        "an invalid reload keeps the server running"
    );
    s.signal("TERM");
    assert_eq!(s.wait(Duration::from_secs(30)), 0);
    assert!(s.logs().contains("shutting down"), "{}", s.logs());
    // Logs are JSON lines when stdout is not a terminal.
    let first = s
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.starts_with('{'))
        .cloned()
        .unwrap();
    assert!(serde_json::from_str::<serde_json::Value>(&first).is_ok());
}

#[test]
fn demo_serves_from_a_throwaway_directory_and_stops_cleanly() {
    let w = Workdir::new();
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("demo")
        .env("VELVET_LISTEN", "127.0.0.1:0")
        .env("VELVET_DEMO_LATENCY", "20ms")
        .env_remove("VELVET_DATABASE_URL")
        .current_dir(w.dir.path());
    let mut s = Server::spawn(cmd);
    assert_eq!(s.get("/healthz").0, 200);
    let banner = s.wait_for(
        "Velvet demo is running at http://127.0.0.1:",
        Duration::from_secs(10),
    );
    assert!(banner.is_some(), "{}", s.logs());
    let dir_line = s.wait_for("Its files", Duration::from_secs(5)).unwrap();
    let dir = dir_line
        .split(" are in ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    assert!(std::path::Path::new(&dir).join("velvet.db").exists());

    // The demo operator logs in with the printed password and a code from the printed secret,
    // and rotates the sample token to the built-in webhooks.
    let mut field = |label: &str| {
        s.wait_for(label, Duration::from_secs(5))
            .unwrap()
            .split(label)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let password = field("password:");
    let secret = field("TOTP secret:");
    let now = chrono::Utc::now().timestamp() as u64;
    let code = velvet_core::operator::totp_code(&secret, now).unwrap();
    let _ = http();
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = console_login(&s, "demo", &password, &code);
    assert_eq!(r.status(), 303, "{:?}", r.text());
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = client
        .get(s.url("/console"))
        .header("cookie", &cookie)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        page.contains("example-api-token")
            && page.contains("payments-api-key")
            && page.contains("console-cross-env-read-token")
    );
    let csrf = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let mut req = client
            .request(method, s.url(path))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().unwrap())
    };
    // Each token to its proceed_revoke pause: the sample to the built-in webhooks, the runbook
    // to the Infisical, Heroku and Cloudflare fakes and its probe.
    for (token, places) in [
        ("example-api-token", 7),
        ("console-cross-env-read-token", 5),
    ] {
        let (code, job) = call(
            reqwest::Method::POST,
            &format!("/api/v1/tokens/{token}/rotate"),
            None,
        );
        assert_eq!(code, 202, "{job}");
        let job = format!("/api/v1/rotations/{}", job["job_id"].as_str().unwrap());
        let wait = |awaiting: &str| {
            let start = std::time::Instant::now();
            loop {
                let (_, j) = call(reqwest::Method::GET, &job, None);
                if j["awaiting"] == awaiting {
                    return j;
                }
                assert!(start.elapsed() < Duration::from_secs(30), "{j}");
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        wait("proceed_distribute");
        let (code, _) = call(
            reqwest::Method::POST,
            &format!("{job}/stage"),
            Some(serde_json::json!({"action": "proceed_distribute"})),
        );
        assert_eq!(code, 200);
        let j = wait("proceed_revoke");
        let consumers = j["consumers"].as_array().unwrap();
        assert_eq!(consumers.len(), places, "{j}");
        assert!(consumers.iter().all(|c| c["status"] == "verified"), "{j}");
    }

    // The banner gives the CLI what it needs: the address and two service tokens.
    assert!(
        s.logs()
            .contains(&format!("export VELVET_ADDR={}", s.url("")))
    );
    let tokens: Vec<String> = s
        .logs()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("export VELVET_TOKEN="))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(tokens.len(), 2, "{}", s.logs());
    let status = |token: &str, method: &str, path: &str| s.call(method, path, Some(token), None).0;
    assert_eq!(
        status(&tokens[0], "GET", "/api/v1/tokens"),
        200,
        "the viewer reads"
    );
    assert_eq!(
        status(&tokens[0], "POST", "/api/v1/tokens/payments-api-key/rotate"),
        403,
        "and only reads"
    );
    assert_eq!(
        status(&tokens[1], "POST", "/api/v1/tokens/payments-api-key/rotate"),
        202,
        "the operator's token rotates"
    );

    s.signal("INT");
    assert_eq!(s.wait(Duration::from_secs(30)), 0);
    assert!(
        !std::path::Path::new(&dir).exists(),
        "the throwaway directory is removed"
    );
}
