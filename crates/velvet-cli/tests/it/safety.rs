//! Design §10 through the binary: step-up codes limited per operator, a failure limiter that
//! never refuses a valid token and believes `X-Forwarded-For` only from trusted proxies,
//! connection limits, console headers and CSRF, and names that cannot disguise an actor.

use crate::common::*;
use serde_json::{Value, json};
use std::io::Read;
use std::time::{Duration, Instant};
use velvet_core::operator::totp_code;

const KEY: &str = "test-bootstrap-key-0123456789abcdef";

fn now() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

/// Adds an operator with a service token of the same role; returns its TOTP secret and token.
fn operator(w: &Workdir, s: &Server, name: &str, role: &str) -> (String, String) {
    let out = w.run(
        &["--output", "json", "operator", "add", name, "--role", role],
        &[],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let (code, body) = s.call(
        "POST",
        "/api/v1/auth/tokens",
        Some(KEY),
        Some(json!({"name": name, "role": role, "operator": name})),
    );
    assert_eq!(code, 201, "{body}");
    (
        v["totp_secret"].as_str().unwrap().to_string(),
        body["token"].as_str().unwrap().to_string(),
    )
}

fn wrong(secret: &str) -> String {
    let right: u32 = totp_code(secret, now()).unwrap().parse().unwrap();
    format!("{:06}", (right + 500_000) % 1_000_000)
}

fn until(s: &Server, job: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (_, j) = s.call("GET", &format!("/api/v1/rotations/{job}"), Some(KEY), None);
        if done(&j) {
            return j;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{j}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kicks off a staged rotation of `token` and brings it to `proceed_revoke`.
fn to_revoke(s: &Server, token: &str) -> String {
    let (code, kicked) = s.call(
        "POST",
        &format!("/api/v1/tokens/{token}/rotate"),
        Some(KEY),
        None,
    );
    assert_eq!(code, 202, "{kicked}");
    let job = kicked["job_id"].as_str().unwrap().to_string();
    until(s, &job, |j| j["awaiting"] == "proceed_distribute");
    let (code, r) = s.call(
        "POST",
        &format!("/api/v1/rotations/{job}/stage"),
        Some(KEY),
        Some(json!({"action": "proceed_distribute"})),
    );
    assert_eq!(code, 200, "{r}");
    until(s, &job, |j| j["awaiting"] == "proceed_revoke");
    job
}

fn security_events(s: &Server, kind: &str) -> Vec<Value> {
    let (_, v) = s.call(
        "GET",
        "/api/v1/audit/security-events?limit=500",
        Some(KEY),
        None,
    );
    v["security_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

fn decision_count(s: &Server) -> usize {
    let (_, v) = s.call("GET", "/api/v1/audit/decisions?limit=1000", Some(KEY), None);
    v["decisions"].as_array().unwrap().len()
}

#[test]
fn wrong_step_up_codes_lock_the_operator_for_the_window() {
    let w = Workdir::new();
    w.write_config(
        "
tokens:
  - {name: stepped, tags: [t], flow: staged, source: {kind: random}}
  - {name: approved, tags: [a], flow: staged, source: {kind: random}}
revocation_gates:
  - {name: totp, match: {tags: [t]}, require: {totp: true}}
  - {name: approvals, match: {tags: [a]}, require: {approvals: 1}}
",
    );
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let (alice_secret, alice) = operator(&w, &s, "alice", "revoker");
    let (bob_secret, bob) = operator(&w, &s, "bob", "revoker");
    let stepped = to_revoke(&s, "stepped");
    let approved = to_revoke(&s, "approved");
    let revoke = |totp: String| {
        s.call(
            "POST",
            &format!("/api/v1/rotations/{stepped}/stage"),
            Some(&alice),
            Some(json!({"action": "proceed_revoke", "totp": totp})),
        )
    };
    for i in 0..5 {
        let (code, r) = revoke(wrong(&alice_secret));
        assert_eq!(
            (code, r["error"].as_str()),
            (403, Some("gate_denied")),
            "{i}: {r}"
        );
    }
    let before = decision_count(&s);
    for _ in 0..20 {
        let (code, r) = revoke(wrong(&alice_secret));
        assert_eq!(
            (code, r["error"].as_str()),
            (429, Some("rate_limited")),
            "{r}"
        );
    }
    // Even the right code waits out the window: a guesser cannot tell when it got lucky.
    let (code, r) = revoke(totp_code(&alice_secret, now()).unwrap());
    assert_eq!(code, 429, "{r}");
    assert!(r["message"].as_str().unwrap().contains("alice"), "{r}");
    assert_eq!(decision_count(&s), before, "a flood adds no decision rows");
    let locked = security_events(&s, "totp_locked");
    assert_eq!(locked.len(), 1, "{locked:?}");
    assert_eq!(locked[0]["severity"], "critical");
    assert_eq!(
        until(&s, &stepped, |_| true)["awaiting"],
        "proceed_revoke",
        "nothing was revoked"
    );

    // Approvals draw on the same per-operator budget; another operator is not affected.
    for _ in 0..5 {
        let (code, _) = s.call(
            "POST",
            &format!("/api/v1/rotations/{approved}/approvals"),
            Some(&bob),
            Some(json!({"totp": wrong(&bob_secret)})),
        );
        assert_eq!(code, 403);
    }
    let (code, r) = s.call(
        "POST",
        &format!("/api/v1/rotations/{approved}/approvals"),
        Some(&bob),
        Some(json!({"totp": totp_code(&bob_secret, now()).unwrap()})),
    );
    assert_eq!(code, 429, "{r}");
    let (code, r) = s.call(
        "POST",
        &format!("/api/v1/rotations/{approved}/approvals"),
        Some(&alice),
        Some(json!({"totp": "000000"})),
    );
    assert_eq!(code, 429, "alice is still locked: {r}");
}

#[test]
fn the_failure_limiter_never_refuses_a_valid_token_and_trusts_only_its_proxies() {
    let w = Workdir::new();
    w.write_config("tokens: [{name: api, source: {kind: random}}]\n");
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let (code, t) = s.call(
        "POST",
        "/api/v1/auth/tokens",
        Some(KEY),
        Some(json!({"name": "reader", "role": "viewer"})),
    );
    assert_eq!(code, 201, "{t}");
    let reader = t["token"].as_str().unwrap().to_string();
    let guess = |xff: Option<&str>| {
        let mut r = http()
            .get(s.url("/api/v1/tokens"))
            .bearer_auth(format!("vlt_{}", "0".repeat(43)));
        if let Some(x) = xff {
            r = r.header("x-forwarded-for", x);
        }
        r.send().unwrap().status().as_u16()
    };
    for _ in 0..10 {
        assert_eq!(guess(None), 401);
    }
    assert_eq!(guess(None), 429, "this address spent its budget");
    assert_eq!(
        guess(Some("198.51.100.1")),
        429,
        "an untrusted peer cannot pick another address"
    );
    // Valid credentials pass from the very same address.
    assert_eq!(s.call("GET", "/api/v1/tokens", Some(&reader), None).0, 200);
    assert_eq!(s.call("GET", "/api/v1/tokens", Some(KEY), None).0, 200);
    // The scheme is case-insensitive.
    let r = http()
        .get(s.url("/api/v1/tokens"))
        .header("authorization", format!("bearer {reader}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(s);

    // Behind a trusted proxy, each forwarded client has its own budget.
    w.write_config(
        "server: {trusted_proxies: [127.0.0.1/32]}\ntokens: [{name: api, source: {kind: random}}]\n",
    );
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let guess = |xff: &str| {
        http()
            .get(s.url("/api/v1/tokens"))
            .bearer_auth("not-a-token")
            .header("x-forwarded-for", xff)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    for _ in 0..10 {
        assert_eq!(guess("203.0.113.7"), 401);
    }
    assert_eq!(guess("203.0.113.7"), 429);
    assert_eq!(guess("203.0.113.8"), 401, "another client behind the proxy");
    assert_eq!(
        guess("203.0.113.7, 127.0.0.1"),
        429,
        "the rightmost untrusted hop is the client"
    );
    let limited: Vec<Value> = security_events(&s, "rate_limited")
        .into_iter()
        .filter(|e| e["client"] == "203.0.113.7")
        .collect();
    assert_eq!(limited.len(), 1, "one alarm per spent budget: {limited:?}");
}

#[test]
fn connections_are_capped_headers_time_out_and_streams_are_limited_per_client() {
    let w = Workdir::new();
    w.write_config(
        "
server: {header_timeout: 1s, max_connections: 6, max_streams_per_client: 2}
tokens: [{name: api, flow: staged, source: {kind: random}}]
",
    );
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let addr = s.addr.clone().unwrap();
    // Six connections that never send a byte hold every slot...
    let idle: Vec<std::net::TcpStream> = (0..6)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // No pause needed: the listener takes connections in order, so these six are ahead of
    // the seventh whenever the server gets to them.
    let _ = http();
    let quick = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    assert!(
        quick.get(s.url("/healthz")).send().is_err(),
        "a seventh connection waits while six are open"
    );
    // ...until the header timeout closes them.
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let start = Instant::now();
        let n = c.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        assert!(start.elapsed() < Duration::from_secs(4));
    }
    assert_eq!(s.get("/healthz").0, 200);

    let (_, kicked) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    let job = kicked["job_id"].as_str().unwrap().to_string();
    until(&s, &job, |j| j["awaiting"] == "proceed_distribute");
    let open = || {
        http()
            .get(s.url(&format!("/api/v1/rotations/{job}/events")))
            .bearer_auth(KEY)
            .send()
            .unwrap()
    };
    let first = open();
    let _second = open();
    assert_eq!(
        (first.status().as_u16(), _second.status().as_u16()),
        (200, 200)
    );
    let third = open();
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));
    drop(first);
    let start = Instant::now();
    loop {
        let again = open();
        if again.status() == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a closed stream frees its slot"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn console_pages_send_safety_headers_the_login_form_checks_csrf_and_a_viewer_sees_less() {
    let w = Workdir::new();
    w.write_config("tokens: [{name: api, flow: staged, source: {kind: random}}]\n");
    let out = w.run(
        &[
            "--output", "json", "operator", "add", "vera", "--role", "viewer",
        ],
        &[],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    for path in ["/console/login", "/console", "/api/v1/tokens", "/healthz"] {
        let r = no_redirects().get(s.url(path)).send().unwrap();
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "same-origin", "{path}");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'"),
            "{path}"
        );
    }
    let password = v["password"].as_str().unwrap();
    let code = totp_code(v["totp_secret"].as_str().unwrap(), now()).unwrap();
    // A cross-site form post carries no token of ours.
    let r = no_redirects()
        .post(s.url("/console/login"))
        .form(&[("name", "vera"), ("password", password), ("code", &code)])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let (token, _) = login_form(&s);
    let r = no_redirects()
        .post(s.url("/console/login"))
        .header("cookie", "velvet_login=forged")
        .form(&[
            ("csrf", token.as_str()),
            ("name", "vera"),
            ("password", password),
            ("code", &code),
        ])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "the token must match the form's cookie");
    let r = console_login(&s, "vera", password, &code);
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = |path: &str| {
        let r = no_redirects()
            .get(s.url(path))
            .header("cookie", &cookie)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (code, html) = page("/console/tokens/api");
    assert_eq!(code, 200);
    assert!(
        !html.contains("open-rotation"),
        "no Rotate button for a viewer"
    );
    assert!(
        !html.contains("/console/audit"),
        "no audit link for a viewer"
    );
    assert_eq!(page("/console/audit").0, 403, "as the API answers");
}

#[test]
fn names_bindings_and_approvals_cannot_be_used_to_pass_as_someone_else() {
    let w = Workdir::new();
    w.write_config(
        "
tokens: [{name: api, tags: [p], flow: staged, source: {kind: random}}]
revocation_gates:
  - {name: admins, match: {tags: [p]}, require: {approvals: 1, roles: [admin]}}
",
    );
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let (bob_secret, bob) = operator(&w, &s, "bob", "revoker");
    let create = |body: Value| s.call("POST", "/api/v1/auth/tokens", Some(KEY), Some(body));
    for name in ["admin\u{200b}", "\u{202e}nimda", "a b", ""] {
        let (code, r) = create(json!({"name": name, "role": "viewer"}));
        assert_eq!(code, 422, "{name:?}: {r}");
        assert!(r["message"].as_str().unwrap().starts_with("name:"), "{r}");
    }
    let (code, r) = create(json!({"name": "ghost-token", "role": "viewer", "operator": "ghost"}));
    assert_eq!(code, 422, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("no operator `ghost`"),
        "{r}"
    );
    let (code, r) = create(json!({"name": "bob-admin", "role": "admin", "operator": "bob"}));
    assert_eq!(code, 422, "a token may not exceed its operator: {r}");
    let (code, _) = create(json!({"name": "bob-read", "role": "viewer", "operator": "bob"}));
    assert_eq!(code, 201);
    let out = w.run(
        &["operator", "add", "admin\u{200b}", "--role", "admin"],
        &[],
        None,
    );
    assert_eq!(out.code, 2, "{}", out.all());

    // Bob is a revoker; the gate takes approvals only from admins.
    let job = to_revoke(&s, "api");
    let (code, r) = s.call(
        "POST",
        &format!("/api/v1/rotations/{job}/approvals"),
        Some(&bob),
        Some(json!({"totp": totp_code(&bob_secret, now()).unwrap()})),
    );
    assert_eq!(
        (code, r["error"].as_str()),
        (403, Some("gate_denied")),
        "{r}"
    );
    assert!(
        r["message"].as_str().unwrap().contains("only from admin"),
        "{r}"
    );
    let (_, j) = s.call("GET", &format!("/api/v1/rotations/{job}"), Some(KEY), None);
    assert_eq!(j["gate"]["approvals"], json!([]), "{j}");
}

#[test]
fn a_short_bootstrap_key_is_refused() {
    let w = Workdir::new();
    w.write_config("tokens: []\n");
    let out = w.run(&["validate"], &[("VELVET_API_KEY", "x")], None);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.all().contains("VELVET_API_KEY") && out.all().contains("at least 32"));
}

/// Console logins are limited per operator too: a guesser spread over many addresses (here
/// behind a trusted proxy) is stopped all the same.
#[test]
fn failed_logins_are_limited_per_operator_across_addresses() {
    let w = Workdir::new();
    w.write_config("server: {trusted_proxies: [127.0.0.1/32]}\ntokens: []\n");
    let out = w.run(
        &[
            "--output", "json", "operator", "add", "olga", "--role", "viewer",
        ],
        &[],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let attempt = |from: &str| {
        let (token, cookie) = login_form(&s);
        no_redirects()
            .post(s.url("/console/login"))
            .header("cookie", cookie)
            .header("x-forwarded-for", from)
            .form(&[
                ("csrf", token.as_str()),
                ("name", "olga"),
                ("password", "not-her-password"),
                ("code", "000000"),
            ])
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    for i in 0..10 {
        assert_eq!(attempt(&format!("198.51.100.{i}")), 401);
    }
    assert_eq!(
        attempt("198.51.100.99"),
        429,
        "a new address, the same operator"
    );
    let locked = security_events(&s, "login_locked");
    assert_eq!(locked.len(), 1, "{locked:?}");
    assert_eq!(locked[0]["severity"], "critical");
}
