//! Rotations through the real binary and its API: the contract's shapes and errors, the
//! invariants under `kill -9` (I1, I2, I4), and no secret in any output (I5).

use crate::common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const KEY: &str = "test-bootstrap-key-0123456789abcdef";

fn config(hook_url: &str, flow: &str) -> String {
    format!(
        "
defaults: {{retry: {{attempts: 4, initial_backoff: 50ms, max_backoff: 200ms}}, grace_period: 0s}}
engine: {{lease: 5s}}
tokens:
  - name: api
    flow: {flow}
    source: {{kind: random}}
    consumers:
      - {{name: env, kind: file, path: app.env, format: dotenv, key: API_TOKEN, previous_key: API_TOKEN_PREVIOUS}}
      - {{name: hook, kind: webhook, url: '{hook_url}', signing_secret_env: HOOK_SECRET}}
"
    )
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("VELVET_API_KEY", KEY),
        ("HOOK_SECRET", "hook-signing-secret"),
    ]
}

/// A workdir whose token already has a value in use: imported as version 1 and in the file.
fn adopted(config: &str) -> Workdir {
    let w = Workdir::new();
    w.write_config(config);
    std::fs::write(w.path("app.env"), "OTHER=kept\nAPI_TOKEN=initial-value\n").unwrap();
    let out = w.run(&["tokens", "import", "api"], &env(), Some("initial-value"));
    assert_eq!(out.code, 0, "{}", out.all());
    w
}

fn env_file(w: &Workdir) -> String {
    std::fs::read_to_string(w.path("app.env")).unwrap_or_default()
}

fn token_value(w: &Workdir) -> String {
    env_file(w)
        .lines()
        .find_map(|l| l.strip_prefix("API_TOKEN="))
        .unwrap()
        .to_string()
}

#[test]
fn the_api_drives_a_staged_rotation_with_the_contract_shapes() {
    let (hook, url) = receiver::start(Duration::ZERO);
    let w = adopted(&config(&url, "staged"));
    let s = w.serve(&[], &env());
    let mut responses = Vec::new();

    assert_eq!(s.call("GET", "/api/v1/tokens", None, None).0, 401);
    let (code, body) = s.call("GET", "/api/v1/tokens", Some("wrong"), None);
    assert_eq!((code, body["error"].as_str()), (401, Some("unauthorized")));
    let (code, body) = s.call(
        "POST",
        "/api/v1/tokens/nope/rotate",
        Some(KEY),
        Some(json!({})),
    );
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    let (code, body) = s.call(
        "POST",
        "/api/v1/tokens/api/rotate",
        Some(KEY),
        Some(json!({"flow": "auto"})),
    );
    assert_eq!(
        (code, body["error"].as_str()),
        (422, Some("validation_failed")),
        "unknown field: {body}"
    );
    assert!(body["message"].as_str().unwrap().contains("flow"), "{body}");

    let r = http()
        .post(s.url("/api/v1/tokens/api/rotate"))
        .bearer_auth(KEY)
        .json(&json!({"reason": "test"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let body: Value = r.json().unwrap();
    let job = body["job_id"].as_str().unwrap().to_string();
    assert_eq!(
        body,
        json!({"job_id": job, "status": "pending", "stage": "mint", "flow_type": "staged"})
    );
    assert_eq!(location, format!("/api/v1/rotations/{job}"));
    let (code, body) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    assert_eq!(
        (code, body["error"].as_str(), body["job_id"].as_str()),
        (409, Some("job_active"), Some(job.as_str()))
    );

    let j = wait_job(
        &s,
        KEY,
        &job,
        "proceed_distribute",
        at("distribute", "awaiting_confirmation"),
    );
    assert_eq!(j["awaiting"], "proceed_distribute");
    let stage = |action: &str| {
        s.call(
            "POST",
            &format!("/api/v1/rotations/{job}/stage"),
            Some(KEY),
            Some(json!({"action": action})),
        )
    };
    let (code, body) = stage("proceed_revoke");
    assert_eq!(
        (
            code,
            body["error"].as_str(),
            body["stage"].as_str(),
            body["status"].as_str(),
            body["awaiting"].as_str()
        ),
        (
            409,
            Some("invalid_transition"),
            Some("distribute"),
            Some("awaiting_confirmation"),
            Some("proceed_distribute")
        )
    );
    assert_eq!(stage("dance").0, 422);
    let (code, j) = stage("proceed_distribute");
    assert_eq!((code, j["status"].as_str()), (200, Some("running")), "{j}");
    let j = wait_job(
        &s,
        KEY,
        &job,
        "proceed_revoke",
        at("revoke", "awaiting_confirmation"),
    );
    responses.push(j.to_string());
    let value = token_value(&w);
    assert_eq!(
        hook.last_value("api").as_deref(),
        Some(value.as_str()),
        "the webhook got the same value"
    );
    assert!(
        env_file(&w).contains("API_TOKEN_PREVIOUS="),
        "dual acceptance until revoke"
    );
    assert_eq!(stage("proceed_revoke").0, 200);
    let j = wait_job(&s, KEY, &job, "succeeded", at("done", "succeeded"));
    responses.push(j.to_string());
    assert_eq!(
        env_file(&w),
        format!("OTHER=kept\nAPI_TOKEN={value}\n"),
        "other lines kept, previous dropped"
    );

    let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "job_id",
            "token",
            "flow_type",
            "stage",
            "status",
            "awaiting",
            "new_version",
            "previous_version",
            "requested_by",
            "reason",
            "created_at",
            "updated_at",
            "finished_at",
            "error",
            "gate",
            "consumers"
        ]
    );
    let c = &j["consumers"][0];
    assert_eq!(
        c.as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        [
            "consumer",
            "kind",
            "status",
            "attempts",
            "last_error",
            "fingerprint",
            "updated_at",
            "started_at"
        ]
    );
    assert!(
        c["started_at"].is_string(),
        "a consumer that ran has a start: {c}"
    );
    let (code, t) = s.call("GET", "/api/v1/tokens/api", Some(KEY), None);
    assert_eq!(
        (
            code,
            t["current_version"].as_i64(),
            t["versions"][0]["label"].as_str(),
            t["versions"][1]["label"].as_str()
        ),
        (200, Some(2), Some("current"), Some("revoked")),
        "{t}"
    );
    responses.push(t.to_string());
    let (_, list) = s.call("GET", "/api/v1/tokens", Some(KEY), None);
    assert_eq!(list["tokens"][0]["active_job_id"], Value::Null);
    responses.push(list.to_string());

    // I5: the value appears in no response, log line, audit record or the store's file.
    for r in &responses {
        assert!(!r.contains(&value), "a response carried the value");
    }
    assert!(!s.logs().contains(&value), "a log line carried the value");
    let verify = w.run(&["--output", "json", "audit", "verify"], &env(), None);
    assert!(verify.code == 0 && !verify.stdout.contains(&value));
    for f in ["velvet.db", "velvet.db-wal"] {
        if let Ok(bytes) = std::fs::read(w.path(f)) {
            assert!(
                !bytes.windows(value.len()).any(|x| x == value.as_bytes()),
                "plaintext in {f}"
            );
        }
    }
}

#[test]
fn the_rotation_flag_turns_the_endpoints_off() {
    let (_, url) = receiver::start(Duration::ZERO);
    let w = Workdir::new();
    w.write_config(&format!(
        "flags: {{velvet_v2_rotation: false}}\n{}",
        config(&url, "auto")
    ));
    let s = w.serve(&[], &env());
    let (code, body) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    assert_eq!((code, body["error"].as_str()), (501, Some("not_enabled")));
}

/// I1: killed right after the new value is stored, before the source or any consumer saw it.
#[test]
fn a_crash_after_storing_the_value_resumes_with_that_value() {
    let (hook, url) = receiver::start(Duration::ZERO);
    let w = adopted(&config(&url, "auto"));
    let mut crash_env = env();
    crash_env.push(("VELVET_CRASH_AT", "after_version_stored"));
    let mut s = w.serve(&[], &crash_env);
    let (code, body) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    assert_eq!(code, 202);
    let job = body["job_id"].as_str().unwrap().to_string();
    assert_ne!(
        s.wait(Duration::from_secs(30)),
        0,
        "the process died at the crash point"
    );
    assert!(
        hook.received.lock().unwrap().is_empty(),
        "no consumer saw the value"
    );
    let s = w.serve(&[], &env());
    let j = wait_job(
        &s,
        KEY,
        &job,
        "succeeded after restart",
        at("done", "succeeded"),
    );
    assert_eq!(
        j["new_version"], 2,
        "the stored version was used, not a second one"
    );
    assert_eq!(hook.count().get(&("api".into(), 2)), Some(&1));
    assert_eq!(hook.last_value("api"), Some(token_value(&w)));
}

/// I4: killed with SIGKILL mid-distribute (a slow webhook), restarted, the job finishes and the
/// old value is revoked only after every consumer holds the new one.
#[test]
fn kill_9_during_distribute_and_after_revoking_the_source_then_restart_finishes() {
    for point in [
        "during_distribute",
        "after_consumer_applied",
        "after_source_revoked",
    ] {
        let (hook, url) = receiver::start(Duration::from_millis(1500));
        let w = adopted(&config(&url, "auto"));
        let mut first_env = env();
        if point != "during_distribute" {
            first_env.push(("VELVET_CRASH_AT", point));
            *hook.delay_ms.lock().unwrap() = 0;
        }
        let mut s = w.serve(&[], &first_env);
        let (_, body) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
        let job = body["job_id"].as_str().unwrap().to_string();
        if point == "during_distribute" {
            wait_job(&s, KEY, &job, "distribute running", |j| {
                j["stage"] == "distribute"
                    && j["consumers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|c| c["status"] == "verified")
            });
            s.signal("KILL");
        }
        s.wait(Duration::from_secs(30));
        *hook.delay_ms.lock().unwrap() = 0;
        let s = w.serve(&[], &env());
        let j = wait_job(
            &s,
            KEY,
            &job,
            "succeeded after restart",
            at("done", "succeeded"),
        );
        assert!(
            j["consumers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["status"] == "verified"),
            "{point}: {j}"
        );
        let value = token_value(&w);
        assert_eq!(
            hook.last_value("api").as_deref(),
            Some(value.as_str()),
            "{point}"
        );
        assert!(
            !env_file(&w).contains("API_TOKEN_PREVIOUS="),
            "{point}: the previous copy is gone"
        );
        let (_, t) = s.call("GET", "/api/v1/tokens/api", Some(KEY), None);
        let labels: Vec<(i64, String)> = t["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["version"].as_i64().unwrap(),
                    v["label"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            labels,
            [(2, "current".to_string()), (1, "revoked".to_string())],
            "{point}"
        );
        assert_eq!(w.run(&["audit", "verify"], &env(), None).code, 0);
    }
}

/// A gate that needs TOTP cannot be passed with the bootstrap key: 403 `gate_required`, the
/// previous value stays live (I2), and a revoke the job is not awaiting is still a 409.
#[test]
fn a_totp_gate_stops_a_revoke_by_a_caller_who_is_no_operator() {
    let (_, url) = receiver::start(Duration::ZERO);
    let gated = format!(
        "{}revocation_gates:\n  - name: production\n    match: {{tokens: [api]}}\n    require: {{totp: true, roles: [revoker, admin]}}\n",
        config(&url, "staged")
    );
    let w = adopted(&gated);
    let s = w.serve(&[], &env());
    let (_, body) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    let job = body["job_id"].as_str().unwrap().to_string();
    wait_job(
        &s,
        KEY,
        &job,
        "proceed_distribute",
        at("distribute", "awaiting_confirmation"),
    );
    let stage = |action: &str| {
        s.call(
            "POST",
            &format!("/api/v1/rotations/{job}/stage"),
            Some(KEY),
            Some(json!({"action": action})),
        )
    };
    let (code, body) = stage("proceed_revoke");
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("invalid_transition")),
        "not awaiting a revoke yet: {body}"
    );
    assert_eq!(stage("proceed_distribute").0, 200);
    wait_job(
        &s,
        KEY,
        &job,
        "proceed_revoke",
        at("revoke", "awaiting_confirmation"),
    );
    let (code, body) = stage("proceed_revoke");
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("gate_required")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("production"));
    let (_, j) = s.call("GET", &format!("/api/v1/rotations/{job}"), Some(KEY), None);
    assert_eq!(
        (j["stage"].as_str(), j["awaiting"].as_str()),
        (Some("revoke"), Some("proceed_revoke"))
    );
    assert!(
        env_file(&w).contains("API_TOKEN_PREVIOUS=initial-value"),
        "the previous value is still live"
    );
}

/// A step that panics leaves no lease renewed behind it: the lease runs out and the job is
/// claimed again (before, the renewal outlived the step and held the job until a restart).
#[test]
fn a_step_that_panics_releases_its_job_to_be_claimed_again() {
    let (_, url) = receiver::start(Duration::ZERO);
    let w = adopted(&config(&url, "auto"));
    let mut panicking = env();
    panicking.push(("VELVET_PANIC_AT", "after_version_stored"));
    let s = w.serve(&[], &panicking);
    let (code, _) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    assert_eq!(code, 202);
    let start = Instant::now();
    loop {
        let claims = s
            .logs()
            .lines()
            .filter(|l| l.contains("claimed job"))
            .count();
        if claims >= 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the job was never claimed again after its step panicked (lease 5s):\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.get("/healthz").0, 200, "the server lives on");
}

/// SIGTERM mid-distribute: the running step finishes, its lease is released, and the server
/// restarted at once takes the job over without waiting out the 30 s lease.
#[test]
fn a_stop_drains_the_running_step_and_releases_its_lease() {
    let (hook, url) = receiver::start(Duration::from_millis(2500));
    let w = adopted(&config(&url, "auto").replace("lease: 5s", "lease: 30s"));
    let mut s = w.serve(&[], &env());
    let (_, body) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    let job = body["job_id"].as_str().unwrap().to_string();
    wait_job(&s, KEY, &job, "distribute running", |j| {
        j["stage"] == "distribute" && j["status"] == "running"
    });
    s.signal("TERM");
    assert_eq!(s.wait(Duration::from_secs(40)), 0, "{}", s.logs());
    assert!(
        s.logs()
            .contains("every job driver stopped and released its lease"),
        "{}",
        s.logs()
    );
    *hook.delay_ms.lock().unwrap() = 0;
    let start = Instant::now();
    let s = w.serve(&[], &env());
    wait_job(
        &s,
        KEY,
        &job,
        "succeeded after restart",
        at("done", "succeeded"),
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "taken over at once, not after the lease: {:?}",
        start.elapsed()
    );
}

/// Rotates `api`, whose consumers are `consumers` (YAML list items), in the auto flow, with the
/// process aborted after the first consumer's write; `landed` checks the write is there; then
/// restarts it and returns the job once it succeeded, every consumer verified.
fn crash_after_a_write_then_resume(
    consumers: &str,
    env: &[(&str, &str)],
    landed: impl Fn(),
) -> Value {
    let w = Workdir::new();
    w.write_config(&format!(
        "
defaults: {{flow: auto, retry: {{attempts: 4, initial_backoff: 50ms, max_backoff: 200ms}}, grace_period: 0s}}
engine: {{lease: 5s}}
tokens:
  - name: api
    source: {{kind: random}}
    consumers:
{consumers}"
    ));
    let mut env = env.to_vec();
    env.push(("VELVET_API_KEY", KEY));
    let mut crashing = env.clone();
    crashing.push(("VELVET_CRASH_AT", "after_consumer_applied"));
    let mut s = w.serve(&[], &crashing);
    let (code, body) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    assert_eq!(code, 202, "{body}");
    let job = body["job_id"].as_str().unwrap().to_string();
    s.wait(Duration::from_secs(30));
    landed();
    let s = w.serve(&[], &env);
    let j = wait_job(
        &s,
        KEY,
        &job,
        "succeeded after restart",
        at("done", "succeeded"),
    );
    let consumers = j["consumers"].as_array().unwrap();
    assert!(consumers.iter().all(|c| c["status"] == "verified"), "{j}");
    j
}

/// #12: the process dies (abort at the crash point) between a Heroku write and its verify and is
/// restarted: the step is repeated, but the app already holds the value, so the job makes one
/// release (one app restart), not two; and its two consumers of the app share that one PATCH.
#[test]
fn a_crash_between_a_heroku_write_and_its_verify_makes_one_release() {
    const HEROKU_KEY: &str = "heroku-key-for-the-crash-test";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let heroku = rt.block_on(velvet_fakes::heroku::Heroku::start(HEROKU_KEY));
    heroku.add_app("crash-app", &[("OTHER", "kept")]);
    let url = heroku.url();
    crash_after_a_write_then_resume(
        &format!(
            "      - {{name: heroku, kind: heroku_config_var, app: crash-app, key: API_TOKEN, api_key_env: HEROKU_API_KEY, api_url: '{url}'}}
      - {{name: header, kind: heroku_config_var, app: crash-app, key: API_AUTH_HEADER, template: 'Bearer {{{{value}}}}', api_key_env: HEROKU_API_KEY, api_url: '{url}'}}
"
        ),
        &[("HEROKU_API_KEY", HEROKU_KEY)],
        || assert_eq!(heroku.releases("crash-app"), 1, "the write landed before the crash"),
    );
    assert_eq!(
        heroku.releases("crash-app"),
        1,
        "the repeated step and the second consumer wrote nothing"
    );
    let vars = heroku.vars("crash-app");
    assert_eq!(vars["OTHER"], "kept");
    assert_eq!(vars["API_TOKEN"].len(), 64, "a 32-byte hex value: {vars:?}");
    assert_eq!(
        vars["API_AUTH_HEADER"],
        format!("Bearer {}", vars["API_TOKEN"])
    );
}

/// #12: the process dies between an AWS Secrets Manager write and its verify and is restarted:
/// the repeated `PutSecretValue` carries the same `ClientRequestToken` (or finds the value
/// already there), so the job makes one new version, checked with moto's own API.
#[test]
fn a_crash_between_an_aws_write_and_its_verify_makes_one_version() {
    let moto = velvet_testkit::servers::Moto::start(&["crash/api=before"]);
    let versions = || {
        let v = moto.secretsmanager("list_secret_version_ids(SecretId='crash/api')");
        v["Versions"].as_array().unwrap().len()
    };
    crash_after_a_write_then_resume(
        &format!(
            "      - {{name: aws, kind: aws_secrets_manager, region: eu-west-1, secret_id: crash/api, access_key_id_env: AWS_KEY_ID, secret_access_key_env: AWS_SECRET, api_url: '{}'}}\n",
            moto.endpoint
        ),
        &[
            ("AWS_KEY_ID", moto.access_key_id.as_str()),
            ("AWS_SECRET", moto.secret_access_key.as_str()),
        ],
        || assert_eq!(versions(), 2, "the write landed before the crash"),
    );
    assert_eq!(versions(), 2, "the repeated step made no second version");
    let cur = moto.secretsmanager("get_secret_value(SecretId='crash/api')");
    assert_eq!(cur["SecretString"].as_str().unwrap().len(), 64, "{cur}");
}
