//! Operators and the revocation gate through the binary: `operator add` enrols a TOTP secret;
//! a gate with `totp`, `approvals` and `roles` refuses a revoke without a code
//! (`gate_required`), with a wrong or replayed one (`gate_denied`), and without another
//! operator's approval; the same valid code fired concurrently passes exactly once.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use velvet_core::operator::totp_code;

const KEY: &str = "test-bootstrap-key-0123456789";

fn now() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

struct Op {
    secret: String,
    token: String,
}

fn add_operator(w: &Workdir, s: &Server, name: &str) -> Op {
    let out = w.run(
        &[
            "--output", "json", "operator", "add", name, "--role", "revoker",
        ],
        &[],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let secret = v["totp_secret"].as_str().unwrap().to_string();
    assert_eq!(v["backup_codes"].as_array().unwrap().len(), 10);
    assert!(
        v["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/Velvet:")
    );
    let (code, body) = s.call(
        "POST",
        "/api/v1/auth/tokens",
        Some(KEY),
        Some(json!({"name": name, "role": "revoker", "operator": name})),
    );
    assert_eq!(code, 201, "{body}");
    Op {
        secret,
        token: body["token"].as_str().unwrap().to_string(),
    }
}

fn wait_for(s: &Server, job: &str, awaiting: &str) -> Value {
    let start = Instant::now();
    loop {
        let (_, j) = s.call("GET", &format!("/api/v1/rotations/{job}"), Some(KEY), None);
        if j["awaiting"] == awaiting || (awaiting.is_empty() && j["status"] == "succeeded") {
            return j;
        }
        assert!(j["status"] != "failed", "{j}");
        assert!(start.elapsed() < Duration::from_secs(30), "{j}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

#[test]
fn the_gate_wants_a_fresh_code_and_another_operators_approval() {
    let w = Workdir::new();
    w.write_config(
        "
defaults: {grace_period: 0s}
tokens:
  - name: prod-api
    tags: [prod]
    flow: staged
    source: {kind: random}
    consumers:
      - {name: env, kind: file, path: prod.env, format: dotenv, key: API_TOKEN}
revocation_gates:
  - name: production
    match: {tags: [prod]}
    require: {totp: true, approvals: 1, roles: [revoker, admin]}
",
    );
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let alice = add_operator(&w, &s, "alice");
    let bob = add_operator(&w, &s, "bob");
    let (code, plain) = s.call(
        "POST",
        "/api/v1/auth/tokens",
        Some(KEY),
        Some(json!({"name": "ci", "role": "revoker"})),
    );
    assert_eq!(code, 201, "{plain}");
    let plain = plain["token"].as_str().unwrap().to_string();

    let (code, kicked) = s.call(
        "POST",
        "/api/v1/tokens/prod-api/rotate",
        Some(&alice.token),
        None,
    );
    assert_eq!(code, 202, "{kicked}");
    let job = kicked["job_id"].as_str().unwrap().to_string();
    let stage = format!("/api/v1/rotations/{job}/stage");
    let approve = format!("/api/v1/rotations/{job}/approvals");
    wait_for(&s, &job, "proceed_distribute");
    // Approvals wait for the revoke stage.
    let (code, early) = s.call(
        "POST",
        &approve,
        Some(&bob.token),
        Some(json!({"totp": totp_code(&bob.secret, now()).unwrap()})),
    );
    assert_eq!(
        (code, early["error"].as_str()),
        (409, Some("invalid_transition")),
        "{early}"
    );
    let (code, _) = s.call(
        "POST",
        &stage,
        Some(&alice.token),
        Some(json!({"action": "proceed_distribute"})),
    );
    assert_eq!(code, 200);
    let j = wait_for(&s, &job, "proceed_revoke");
    assert_eq!(j["gate"]["name"], "production", "{j}");
    assert_eq!(j["gate"]["requires"]["approvals"], 1);

    let revoke = |token: &str, totp: Option<String>| {
        let mut body = json!({"action": "proceed_revoke"});
        if let Some(t) = totp {
            body["totp"] = json!(t);
        }
        s.call("POST", &stage, Some(token), Some(body))
    };
    // No approval yet: refused before any code is spent.
    let (code, r) = revoke(&alice.token, Some(totp_code(&alice.secret, now()).unwrap()));
    assert_eq!(
        (code, r["error"].as_str()),
        (403, Some("gate_required")),
        "{r}"
    );
    assert!(r["message"].as_str().unwrap().contains("approval"), "{r}");

    // Bob approves with his code; the same code again is a replay.
    let bob_code = totp_code(&bob.secret, now()).unwrap();
    let (code, approved) = s.call(
        "POST",
        &approve,
        Some(&bob.token),
        Some(json!({"totp": bob_code})),
    );
    assert_eq!(code, 200, "{approved}");
    assert_eq!(
        approved["gate"]["approvals"][0]["operator"], "bob",
        "{approved}"
    );
    let (code, again) = s.call(
        "POST",
        &approve,
        Some(&bob.token),
        Some(json!({"totp": bob_code})),
    );
    assert_eq!(
        (code, again["error"].as_str()),
        (403, Some("gate_denied")),
        "{again}"
    );
    // A token no operator owns cannot answer TOTP.
    let (code, r) = s.call(
        "POST",
        &approve,
        Some(&plain),
        Some(json!({"totp": "123456"})),
    );
    assert_eq!(
        (code, r["error"].as_str()),
        (403, Some("gate_required")),
        "{r}"
    );

    // Alice: no code, then a wrong one.
    let (code, r) = revoke(&alice.token, None);
    assert_eq!(
        (code, r["error"].as_str()),
        (403, Some("gate_required")),
        "{r}"
    );
    let right = totp_code(&alice.secret, now()).unwrap();
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000);
    let (code, r) = revoke(&alice.token, Some(wrong));
    assert_eq!(
        (code, r["error"].as_str()),
        (403, Some("gate_denied")),
        "{r}"
    );
    let (code, r) = revoke(&plain, Some(right.clone()));
    assert_eq!(
        (code, r["error"].as_str()),
        (403, Some("gate_required")),
        "{r}"
    );

    // The right code, fired by eight requests at once: exactly one passes.
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| revoke(&alice.token, Some(right.clone()))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let passed = answers.iter().filter(|(c, _)| *c == 200).count();
    assert_eq!(passed, 1, "{answers:?}");
    for (c, body) in &answers {
        assert!(
            *c == 200
                || (*c == 403 && body["error"] == "gate_denied")
                || (*c == 409 && body["error"] == "invalid_transition"),
            "{c} {body}"
        );
    }
    wait_for(&s, &job, "");

    // Every refusal is a security event; the replays are named as such; the pass is a decision.
    let (_, events) = s.call(
        "GET",
        "/api/v1/audit/security-events?limit=1000",
        Some(KEY),
        None,
    );
    let kinds: Vec<&str> = events["security_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"totp_replayed") && kinds.contains(&"gate_denied"),
        "{kinds:?}"
    );
    let (_, decisions) = s.call(
        "GET",
        "/api/v1/audit/decisions?subject=token:alice&limit=1000",
        Some(KEY),
        None,
    );
    let gate_pass = decisions["decisions"].as_array().unwrap().iter().any(|d| {
        d["decision"] == "allow"
            && d["steps"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["rule"] == "gate")
    });
    assert!(gate_pass, "{decisions}");
    let (_, audit) = s.call("GET", "/api/v1/audit?limit=1000", Some(KEY), None);
    assert!(audit.to_string().contains("rotation.revoke_approved"));
    // The secrets never left the operator command.
    let logs = s.logs();
    for secret in [&alice.secret, &bob.secret] {
        assert!(!logs.contains(secret.as_str()));
        assert!(!events.to_string().contains(secret.as_str()));
    }
}
