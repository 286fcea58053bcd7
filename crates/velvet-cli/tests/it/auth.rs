//! Service tokens and RBAC through the real server: tokens shown once and stored only as a
//! hash, roles granting exactly their permissions, revocation and expiry holding at once, and
//! failed authentication rate limited per address.

use crate::common::*;
use serde_json::{Value, json};
use std::time::Duration;

const KEY: &str = "test-bootstrap-key-0123456789abcdef";

fn config() -> &'static str {
    "
defaults: {grace_period: 0s}
tokens:
  - name: api
    flow: staged
    source: {kind: random}
"
}

fn serve() -> (Workdir, Server) {
    let w = Workdir::new();
    w.write_config(config());
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    s.url("/");
    (w, s)
}

fn create(s: &Server, body: Value) -> (u16, Value) {
    s.call("POST", "/api/v1/auth/tokens", Some(KEY), Some(body))
}

fn token_for(s: &Server, name: &str, role: &str) -> (String, String) {
    let (code, body) = create(s, json!({"name": name, "role": role}));
    assert_eq!(code, 201, "{body}");
    (
        body["id"].as_str().unwrap().to_string(),
        body["token"].as_str().unwrap().to_string(),
    )
}

/// Every file of the store, as bytes (database, WAL).
fn store_bytes(w: &Workdir) -> Vec<u8> {
    let mut all = std::fs::read(w.path("velvet.db")).expect("the store is velvet.db");
    all.extend(std::fs::read(w.path("velvet.db-wal")).unwrap_or_default());
    all
}

#[test]
fn a_token_is_shown_once_and_only_its_hash_is_stored() {
    let (w, s) = serve();
    let (code, body) = create(
        &s,
        json!({"name": "ci-deploy", "role": "operator", "expires_in": "90d"}),
    );
    assert_eq!(code, 201, "{body}");
    let token = body["token"].as_str().unwrap();
    assert!(token.starts_with("vlt_") && token.len() == 47, "{token}");
    assert!(token.starts_with(body["prefix"].as_str().unwrap()));
    assert_eq!(body["role"], "operator");
    assert!(body["expires_at"].is_string());

    let (code, list) = s.call("GET", "/api/v1/auth/tokens", Some(KEY), None);
    assert_eq!(code, 200);
    let listed = &list["tokens"][0];
    assert_eq!(listed["id"], body["id"]);
    assert_eq!(listed["name"], "ci-deploy");
    for field in [
        "prefix",
        "operator",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ] {
        assert!(listed.get(field).is_some(), "list has {field}: {listed}");
    }
    assert!(!list.to_string().contains(token), "never shown again");
    // The token works, and then shows when it was last used.
    assert_eq!(s.call("GET", "/api/v1/tokens", Some(token), None).0, 200);
    let used = (0..100).any(|_| {
        let (_, list) = s.call("GET", "/api/v1/auth/tokens", Some(KEY), None);
        std::thread::sleep(Duration::from_millis(20));
        list["tokens"][0]["last_used_at"].is_string()
    });
    assert!(used, "last_used_at is recorded");
    let needle = &token.as_bytes()[4..];
    assert!(
        !store_bytes(&w)
            .windows(needle.len())
            .any(|win| win == needle),
        "the token itself is not in the store"
    );
    assert!(!s.logs().contains(&token[4..]), "nor in the log");
}

#[test]
fn roles_grant_exactly_their_permissions() {
    let (_w, s) = serve();
    let (_, viewer) = token_for(&s, "dash", "viewer");
    let (_, operator) = token_for(&s, "bot", "operator");
    let (_, auditor) = token_for(&s, "audit", "auditor");

    assert_eq!(
        s.call("GET", "/api/v1/tokens/api", Some(&viewer), None).0,
        200
    );
    let (code, body) = s.call("POST", "/api/v1/tokens/api/rotate", Some(&viewer), None);
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("velvet.rotations.kickoff")
    );
    // Only admins manage tokens.
    for t in [&viewer, &operator, &auditor] {
        assert_eq!(s.call("GET", "/api/v1/auth/tokens", Some(t), None).0, 403);
    }

    let (code, job) = s.call(
        "POST",
        "/api/v1/tokens/api/rotate",
        Some(&operator),
        Some(json!({"reason": "scheduled"})),
    );
    assert_eq!(code, 202, "{job}");
    let stage = format!(
        "/api/v1/rotations/{}/stage",
        job["job_id"].as_str().unwrap()
    );
    // Retiring the old credential needs rotations.revoke, which an operator lacks: refused
    // before the job is even looked at.
    let (code, body) = s.call(
        "POST",
        &stage,
        Some(&operator),
        Some(json!({"action": "proceed_revoke"})),
    );
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    // An auditor reads tokens but moves nothing.
    let (code, _) = s.call(
        "POST",
        &stage,
        Some(&auditor),
        Some(json!({"action": "abort"})),
    );
    assert_eq!(code, 403);
    let (code, body) = s.call("GET", "/api/v1/tokens", Some("vlt_not-a-token"), None);
    assert_eq!((code, body["error"].as_str()), (401, Some("unauthorized")));
}

#[test]
fn revoked_and_expired_tokens_stop_working_at_once() {
    let (_w, s) = serve();
    let (id, viewer) = token_for(&s, "dash", "viewer");
    assert_eq!(s.call("GET", "/api/v1/tokens", Some(&viewer), None).0, 200);
    let (code, _) = s.call(
        "DELETE",
        &format!("/api/v1/auth/tokens/{id}"),
        Some(KEY),
        None,
    );
    assert_eq!(code, 204);
    let (code, body) = s.call("GET", "/api/v1/tokens", Some(&viewer), None);
    assert_eq!(code, 401, "{body}");
    assert!(body["message"].as_str().unwrap().contains("revoked"));
    let (_, list) = s.call("GET", "/api/v1/auth/tokens", Some(KEY), None);
    assert!(list["tokens"][0]["revoked_at"].is_string());
    assert_eq!(
        s.call(
            "DELETE",
            "/api/v1/auth/tokens/st_0000000000000000",
            Some(KEY),
            None
        )
        .0,
        404
    );

    let (code, body) = create(
        &s,
        json!({"name": "short", "role": "viewer", "expires_in": "1s"}),
    );
    assert_eq!(code, 201);
    let short = body["token"].as_str().unwrap().to_string();
    // It works until its second is up, then never again.
    let start = std::time::Instant::now();
    let (code, body) = loop {
        let (code, body) = s.call("GET", "/api/v1/tokens", Some(&short), None);
        if code != 200 {
            break (code, body);
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never expired");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, 401);
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
}

#[test]
fn bad_token_requests_name_the_field() {
    let (_w, s) = serve();
    for (body, field) in [
        (json!({"name": "x", "role": "superuser"}), "role"),
        (json!({"name": "", "role": "viewer"}), "name"),
        (
            json!({"name": "x", "role": "viewer", "expires_in": "soon"}),
            "expires_in",
        ),
        (
            json!({"name": "x", "role": "viewer", "expires_in": "3651d"}),
            "expires_in",
        ),
        (
            json!({"name": "x", "role": "viewer", "expires_in": "27m325928424s24234089d"}),
            "expires_in",
        ),
        (json!({"name": "\u{7}bell", "role": "viewer"}), "name"),
        (json!({"name": "x".repeat(129), "role": "viewer"}), "name"),
        (
            json!({"name": "x", "role": "viewer", "colour": "red"}),
            "colour",
        ),
    ] {
        let (code, answer) = create(&s, body);
        assert_eq!(code, 422, "{answer}");
        assert_eq!(answer["error"], "validation_failed");
        assert!(
            answer["message"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
}

#[test]
fn failed_authentication_is_rate_limited_per_address() {
    let (_w, s) = serve();
    // A request without a credential guesses nothing: it is refused, never limited.
    for _ in 0..20 {
        assert_eq!(s.call("GET", "/api/v1/tokens", None, None).0, 401);
    }
    assert_eq!(s.call("GET", "/api/v1/tokens", Some(KEY), None).0, 200);
    for _ in 0..10 {
        assert_eq!(s.call("GET", "/api/v1/tokens", Some("wrong"), None).0, 401);
    }
    let r = http()
        .get(s.url("/api/v1/tokens"))
        .bearer_auth("wrong")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 429, "the address spent its budget");
    // A valid credential is never refused by the limiter (design §10).
    assert_eq!(s.call("GET", "/api/v1/tokens", Some(KEY), None).0, 200);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert!(s.logs().contains("rate_limited"));
}

#[test]
fn the_cli_creates_lists_and_revokes_tokens_with_the_contract_exit_codes() {
    let (w, s) = serve();
    let addr = s.url("");
    let admin = [("VELVET_ADDR", addr.as_str()), ("VELVET_TOKEN", KEY)];
    let out = w.run(
        &[
            "auth",
            "create-token",
            "--name",
            "deploy",
            "--role",
            "operator",
            "--expires",
            "30d",
        ],
        &admin,
        None,
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let token = out.stdout.trim().to_string();
    assert!(
        token.starts_with("vlt_"),
        "the token alone on stdout: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("shown only this once"),
        "{}",
        out.stderr
    );

    let out = w.run(&["auth", "list", "--output", "json"], &admin, None);
    assert_eq!(out.code, 0, "{}", out.all());
    let list: Value = serde_json::from_str(&out.stdout).unwrap();
    let id = list["tokens"][0]["id"].as_str().unwrap().to_string();
    assert!(!out.stdout.contains(&token));
    let out = w.run(&["auth", "list"], &admin, None);
    assert!(
        out.stdout.contains("PREFIX") && out.stdout.contains("deploy"),
        "{}",
        out.stdout
    );

    // The new token works as VELVET_TOKEN, and an operator cannot manage tokens.
    let as_op = [
        ("VELVET_ADDR", addr.as_str()),
        ("VELVET_TOKEN", token.as_str()),
    ];
    let out = w.run(&["auth", "list"], &as_op, None);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("403"), "{}", out.stderr);

    let out = w.run(&["auth", "revoke", &id], &admin, None);
    assert_eq!(out.code, 0, "{}", out.all());
    let out = w.run(&["auth", "revoke", "st_0000000000000000"], &admin, None);
    assert_eq!(out.code, 3, "not found: {}", out.all());
    let out = w.run(&["auth", "revoke", "../tokens"], &admin, None);
    assert_eq!(out.code, 2, "{}", out.all());
    let out = w.run(
        &["auth", "create-token", "--name", "x", "--role", "root"],
        &admin,
        None,
    );
    assert_eq!(out.code, 2, "validation is a usage error: {}", out.all());
    assert!(out.stderr.contains("role"), "{}", out.stderr);
    let out = w.run(&["auth", "list"], &[("VELVET_ADDR", addr.as_str())], None);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("VELVET_TOKEN"), "{}", out.stderr);
    let out = w.run(
        &["auth", "list"],
        &[("VELVET_ADDR", "http://127.0.0.1:9"), ("VELVET_TOKEN", KEY)],
        None,
    );
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
    assert!(!out.all().contains(KEY), "the bearer is never printed");
}

#[test]
fn decisions_and_security_events_are_kept_with_their_trace() {
    use velvet_core::decision::{DecisionStep, trace_hash};
    let (_w, s) = serve();
    let (_, viewer) = token_for(&s, "dash", "viewer");
    let (id, operator) = token_for(&s, "bot", "operator");
    assert_eq!(s.call("GET", "/api/v1/tokens", Some(&viewer), None).0, 200);
    assert_eq!(
        s.call("POST", "/api/v1/tokens/api/rotate", Some(&viewer), None)
            .0,
        403
    );
    assert_eq!(
        s.call("POST", "/api/v1/tokens/api/rotate", Some(&operator), None)
            .0,
        202
    );
    assert_eq!(s.call("GET", "/api/v1/tokens", Some("wrong"), None).0, 401);
    let (code, _) = s.call(
        "DELETE",
        &format!("/api/v1/auth/tokens/{id}"),
        Some(KEY),
        None,
    );
    assert_eq!(code, 204);

    let (code, all) = s.call("GET", "/api/v1/audit/decisions", Some(KEY), None);
    assert_eq!(code, 200, "{all}");
    let all = all["decisions"].as_array().unwrap().clone();
    assert!(
        !all.iter()
            .any(|d| d["resource"] == "GET /api/v1/tokens" && d["decision"] == "allow"),
        "allowed reads are not recorded: {all:?}"
    );
    let allow = all
        .iter()
        .find(|d| d["subject"] == "token:bot" && d["permission"] == "velvet.rotations.kickoff")
        .expect("the kickoff's decision");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["resource"], "POST /api/v1/tokens/api/rotate");
    let rules: Vec<&str> = allow["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["token_valid", "not_revoked", "permission"]);
    // The stored hash is the hash of the stored trace.
    let steps: Vec<DecisionStep> = allow["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| DecisionStep {
            rule: s["rule"].as_str().unwrap().into(),
            outcome: s["outcome"].as_str().unwrap().into(),
            detail: s["detail"].as_str().unwrap().into(),
        })
        .collect();
    assert_eq!(
        allow["trace_hash"],
        trace_hash(
            "token:bot",
            "velvet.rotations.kickoff",
            "POST /api/v1/tokens/api/rotate",
            &steps
        )
    );

    let (_, denied) = s.call(
        "GET",
        "/api/v1/audit/decisions?decision=deny",
        Some(KEY),
        None,
    );
    let denied = denied["decisions"].as_array().unwrap().clone();
    assert!(denied.iter().all(|d| d["decision"] == "deny"));
    let viewer_deny = denied
        .iter()
        .find(|d| d["subject"] == "token:dash")
        .unwrap();
    assert_eq!(viewer_deny["steps"][2]["outcome"], "fail");
    assert!(
        denied
            .iter()
            .any(|d| d["subject"] == "anonymous" && d["steps"][0]["rule"] == "token_valid")
    );
    let (_, bots) = s.call(
        "GET",
        "/api/v1/audit/decisions?subject=token:bot",
        Some(KEY),
        None,
    );
    assert!(
        bots["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["subject"] == "token:bot")
    );
    assert_eq!(
        s.call(
            "GET",
            "/api/v1/audit/decisions?decision=maybe",
            Some(KEY),
            None
        )
        .0,
        422
    );

    let (code, events) = s.call("GET", "/api/v1/audit/security-events", Some(KEY), None);
    assert_eq!(code, 200, "{events}");
    let events = events["security_events"].as_array().unwrap().clone();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for k in ["auth_failed", "permission_denied", "token_revoked"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    let failed = events.iter().find(|e| e["kind"] == "auth_failed").unwrap();
    assert_eq!(failed["severity"], "warning");
    let linked = failed["decision_id"].as_str().unwrap();
    assert!(
        denied.iter().any(|d| d["id"] == linked),
        "linked to its decision"
    );
    assert_eq!(
        s.call("GET", "/api/v1/audit/decisions", Some(&viewer), None)
            .0,
        403
    );
}
