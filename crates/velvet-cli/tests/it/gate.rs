//! Operators and the revocation gate through the binary: `operator add` enrols a TOTP secret;
//! a gate with `totp`, `approvals` and `roles` refuses a revoke without a code
//! (`gate_required`), with a wrong or replayed one (`gate_denied`), and without another
//! operator's approval; the same valid code fired concurrently passes exactly once.

use crate::common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use velvet_core::operator::totp_code;

const KEY: &str = "test-bootstrap-key-0123456789abcdef";

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

    // The right code, fired by four requests at once: exactly one passes. (Each loser that
    // reaches the code check is a replay, which counts against alice's five wrong codes with
    // the one above; four keep her below the lock, which safety.rs tests on its own.)
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
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

#[test]
fn force_passes_only_a_gate_that_allows_it_for_an_admin_with_a_reason() {
    let w = Workdir::new();
    w.write_config(
        "
defaults: {grace_period: 0s}
tokens:
  - name: breakglass
    tags: [bg]
    flow: staged
    source: {kind: random}
  - name: strict
    tags: [strict]
    flow: staged
    source: {kind: random}
  - name: open
    flow: staged
    source: {kind: random}
revocation_gates:
  - name: breakglass
    match: {tags: [bg]}
    require: {totp: true, approvals: 2}
    allow_force: true
  - name: strict
    match: {tags: [strict]}
    require: {totp: true}
",
    );
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let alice = add_operator(&w, &s, "alice");
    let to_revoke = |token: &str| {
        let (code, body) = s.call(
            "POST",
            &format!("/api/v1/tokens/{token}/rotate"),
            Some(KEY),
            None,
        );
        assert_eq!(code, 202, "{body}");
        let job = body["job_id"].as_str().unwrap().to_string();
        wait_for(&s, &job, "proceed_distribute");
        let stage = format!("/api/v1/rotations/{job}/stage");
        assert_eq!(
            s.call(
                "POST",
                &stage,
                Some(KEY),
                Some(json!({"action": "proceed_distribute"}))
            )
            .0,
            200
        );
        wait_for(&s, &job, "proceed_revoke");
        (job, stage)
    };
    let force = |stage: &str, who: &str, reason: Option<&str>| {
        let mut body = json!({"action": "proceed_revoke", "force": true});
        if let Some(r) = reason {
            body["reason"] = json!(r);
        }
        s.call("POST", stage, Some(who), Some(body))
    };
    let (job, stage) = to_revoke("breakglass");
    // An operator's own approval does not count toward their revoke.
    let (code, r) = s.call(
        "POST",
        &format!("/api/v1/rotations/{job}/approvals"),
        Some(&alice.token),
        Some(json!({"totp": totp_code(&alice.secret, now()).unwrap()})),
    );
    assert_eq!(code, 200, "{r}");
    let (code, r) = s.call(
        "POST",
        &stage,
        Some(&alice.token),
        Some(json!({"action": "proceed_revoke"})),
    );
    assert_eq!(
        (code, r["error"].as_str()),
        (403, Some("gate_required")),
        "{r}"
    );
    assert!(r["message"].as_str().unwrap().contains("it has 0"), "{r}");
    let (code, r) = force(&stage, &alice.token, Some("incident"));
    assert_eq!(
        (code, r["error"].as_str()),
        (403, Some("forbidden")),
        "a revoker may not force: {r}"
    );
    let (code, r) = force(&stage, KEY, None);
    assert_eq!(
        (code, r["error"].as_str()),
        (422, Some("validation_failed")),
        "{r}"
    );
    assert!(r["message"].as_str().unwrap().contains("reason"));
    let (code, r) = s.call(
        "POST",
        &stage,
        Some(KEY),
        Some(json!({"action": "abort", "force": true})),
    );
    assert_eq!(code, 422, "force goes only with proceed_revoke: {r}");
    let (code, r) = force(&stage, KEY, Some("INC-42: the key leaked"));
    assert_eq!(code, 200, "{r}");
    wait_for(&s, &job, "");

    let (strict, stage) = to_revoke("strict");
    let (code, r) = force(&stage, KEY, Some("INC-43"));
    assert_eq!(
        (code, r["error"].as_str()),
        (403, Some("gate_denied")),
        "{r}"
    );
    // A gate that asks for no approvals takes none.
    let (code, r) = s.call(
        "POST",
        &format!("/api/v1/rotations/{strict}/approvals"),
        Some(&alice.token),
        Some(json!({"totp": "123456"})),
    );
    assert_eq!(
        (code, r["error"].as_str()),
        (409, Some("invalid_transition")),
        "{r}"
    );
    // Nothing to force where no gate applies.
    let (_, stage) = to_revoke("open");
    let (code, r) = force(&stage, KEY, Some("INC-44"));
    assert_eq!(
        (code, r["error"].as_str()),
        (422, Some("validation_failed")),
        "{r}"
    );
    assert!(r["message"].as_str().unwrap().starts_with("force:"), "{r}");

    let (_, events) = s.call(
        "GET",
        "/api/v1/audit/security-events?limit=1000",
        Some(KEY),
        None,
    );
    let forced: Vec<&Value> = events["security_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "force_revoke")
        .collect();
    assert_eq!(forced.len(), 1, "{events}");
    assert_eq!(forced[0]["severity"], "critical");
    assert_eq!(forced[0]["job_id"], job.as_str());
    assert!(s.logs().contains("force_revoke"));
}

#[test]
fn in_the_auto_flow_a_gate_that_needs_a_person_pauses_before_revoke() {
    let w = Workdir::new();
    w.write_config(
        "
defaults: {grace_period: 0s}
tokens:
  - name: guarded
    tags: [prod]
    flow: auto
    source: {kind: random}
  - name: roles-only
    tags: [internal]
    flow: auto
    source: {kind: random}
revocation_gates:
  - name: production
    match: {tags: [prod]}
    require: {totp: true}
  - name: internal
    match: {tags: [internal]}
    require: {roles: [revoker, admin]}
",
    );
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let alice = add_operator(&w, &s, "alice");
    let kick = |token: &str| {
        let (code, body) = s.call(
            "POST",
            &format!("/api/v1/tokens/{token}/rotate"),
            Some(&alice.token),
            None,
        );
        assert_eq!(code, 202, "{body}");
        body["job_id"].as_str().unwrap().to_string()
    };
    // Nobody needs to answer a roles-only gate: the job runs to the end.
    let free = kick("roles-only");
    wait_for(&s, &free, "");
    // A TOTP gate stops the unattended flow before revoke, and waits for a person.
    let held = kick("guarded");
    let j = wait_for(&s, &held, "proceed_revoke");
    assert_eq!(
        (j["stage"].as_str(), j["status"].as_str()),
        (Some("revoke"), Some("awaiting_confirmation"))
    );
    // Another job run start to end after the hold proves the engine kept working meanwhile,
    // which a pause would only hope for.
    let after = kick("roles-only");
    wait_for(&s, &after, "");
    let (_, j) = s.call("GET", &format!("/api/v1/rotations/{held}"), Some(KEY), None);
    assert_eq!(j["awaiting"], "proceed_revoke", "still waiting: {j}");
    let (code, r) = s.call(
        "POST",
        &format!("/api/v1/rotations/{held}/stage"),
        Some(&alice.token),
        Some(json!({"action": "proceed_revoke", "totp": totp_code(&alice.secret, now()).unwrap()})),
    );
    assert_eq!(code, 200, "{r}");
    wait_for(&s, &held, "");
}

/// I2b through the server: every flow type that revokes unattended, against every gate shape,
/// kicked off by every role that may kick off. A revoke runs only when the gate needs no person
/// and the requester holds rotations.revoke and the gate's roles; it then has a passing
/// decision on record. Otherwise the job pauses at proceed_revoke.
#[test]
fn no_flow_type_revokes_past_a_gate() {
    let w = Workdir::new();
    w.write_config(
        "
defaults: {grace_period: 0s}
tokens:
  - {name: plain, source: {kind: random}, consumers: [{name: f, kind: file, path: plain.env, format: dotenv, key: K}]}
  - {name: roles-only, tags: [r], source: {kind: random}, consumers: [{name: f, kind: file, path: r.env, format: dotenv, key: K}]}
  - {name: open-gate, tags: [o], source: {kind: random}, consumers: [{name: f, kind: file, path: o.env, format: dotenv, key: K}]}
  - {name: totp-gate, tags: [t], source: {kind: random}, consumers: [{name: f, kind: file, path: t.env, format: dotenv, key: K}]}
  - {name: approval-gate, tags: [a], source: {kind: random}, consumers: [{name: f, kind: file, path: a.env, format: dotenv, key: K}]}
  - {name: full-gate, tags: [p], source: {kind: random}, consumers: [{name: f, kind: file, path: p.env, format: dotenv, key: K}]}
revocation_gates:
  - {name: roles, match: {tags: [r]}, require: {roles: [admin]}}
  - {name: open, match: {tags: [o]}, require: {}}
  - {name: totp, match: {tags: [t]}, require: {totp: true}}
  - {name: approval, match: {tags: [a]}, require: {approvals: 1}}
  - {name: full, match: {tags: [p]}, require: {totp: true, approvals: 1, roles: [revoker, admin]}}
",
    );
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let mut tokens = vec![];
    for role in ["operator", "revoker", "admin"] {
        let (code, body) = s.call(
            "POST",
            "/api/v1/auth/tokens",
            Some(KEY),
            Some(json!({"name": format!("as-{role}"), "role": role})),
        );
        assert_eq!(code, 201, "{body}");
        tokens.push((role, body["token"].as_str().unwrap().to_string()));
    }
    for token in [
        "plain",
        "roles-only",
        "open-gate",
        "totp-gate",
        "approval-gate",
        "full-gate",
    ] {
        for (role, bearer) in &tokens {
            for flow in ["auto", "emergency"] {
                let may_revoke = *role != "operator";
                let expect_revoke = match token {
                    "plain" | "open-gate" => may_revoke,
                    "roles-only" => *role == "admin",
                    _ => false,
                };
                let (code, kicked) = s.call(
                    "POST",
                    &format!("/api/v1/tokens/{token}/rotate"),
                    Some(bearer),
                    Some(json!({"flow_type": flow})),
                );
                assert_eq!(code, 202, "{token} {role} {flow}: {kicked}");
                let job = kicked["job_id"].as_str().unwrap().to_string();
                let start = Instant::now();
                let j = loop {
                    let (_, j) =
                        s.call("GET", &format!("/api/v1/rotations/{job}"), Some(KEY), None);
                    if j["status"] == "succeeded" || j["awaiting"] == "proceed_revoke" {
                        break j;
                    }
                    assert!(j["status"] != "failed", "{j}");
                    assert!(start.elapsed() < Duration::from_secs(30), "{j}");
                    std::thread::sleep(Duration::from_millis(20));
                };
                let what = format!("{token} as {role}, {flow}");
                assert_eq!(j["status"] == "succeeded", expect_revoke, "{what}: {j}");
                let (_, d) = s.call(
                    "GET",
                    &format!("/api/v1/audit/decisions?subject=token:as-{role}&limit=500"),
                    Some(KEY),
                    None,
                );
                let mine: Vec<&Value> = d["decisions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|d| {
                        d["resource"]
                            .as_str()
                            .is_some_and(|r| r.starts_with(&format!("unattended revoke of {job}")))
                    })
                    .collect();
                assert_eq!(mine.len(), 1, "{what}: one decision on record: {d}");
                let allowed = mine[0]["decision"] == "allow";
                assert_eq!(allowed, expect_revoke, "{what}: {}", mine[0]);
                if !expect_revoke {
                    // Pausing is not the end: an admin rolls it back so the next case can run.
                    let (code, r) = s.call(
                        "POST",
                        &format!("/api/v1/rotations/{job}/stage"),
                        Some(KEY),
                        Some(json!({"action": "rollback"})),
                    );
                    assert_eq!(code, 200, "{what}: {r}");
                    let start = Instant::now();
                    loop {
                        let (_, j) =
                            s.call("GET", &format!("/api/v1/rotations/{job}"), Some(KEY), None);
                        if j["status"] == "rolled_back" {
                            break;
                        }
                        assert!(start.elapsed() < Duration::from_secs(30), "{j}");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }
}

/// A gate can be passed from the CLI: `rotations approve` and `stage … proceed_revoke`, and a
/// refusal names the command to run, not an API path.
#[test]
fn the_cli_approves_and_passes_a_gate() {
    let w = Workdir::new();
    w.write_config(
        "
tokens:
  - {name: prod-api, tags: [prod], flow: staged, source: {kind: random}}
revocation_gates:
  - {name: production, match: {tags: [prod]}, require: {approvals: 1, totp: true}}
",
    );
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let alice = add_operator(&w, &s, "alice");
    let bob = add_operator(&w, &s, "bob");
    let addr = s.url("");
    let as_ = |token: &str, args: &[&str]| {
        w.run(
            args,
            &[("VELVET_ADDR", addr.as_str()), ("VELVET_TOKEN", token)],
            None,
        )
    };
    let out = as_(&alice.token, &["rotate", "prod-api"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let job = out.stdout.trim().to_string();
    wait_for(&s, &job, "proceed_distribute");
    assert_eq!(
        as_(
            &alice.token,
            &["rotations", "stage", &job, "proceed_distribute"]
        )
        .code,
        0
    );
    wait_for(&s, &job, "proceed_revoke");
    let out = as_(
        &alice.token,
        &["rotations", "stage", &job, "proceed_revoke"],
    );
    assert_eq!(out.code, 5, "{}", out.all());
    assert!(
        out.stderr
            .contains(&format!("velvet rotations approve {job} --totp CODE")),
        "{}",
        out.stderr
    );
    let out = as_(&bob.token, &["rotations", "approve", &job]);
    assert_eq!(out.code, 2, "no code and no terminal: {}", out.all());
    let code = totp_code(&bob.secret, now()).unwrap();
    let out = as_(&bob.token, &["rotations", "approve", &job, "--totp", &code]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stderr.contains("approved (1 of 1)"), "{}", out.stderr);
    // Without a terminal the gate's code cannot be asked for: the refusal says how to pass it.
    let out = as_(
        &alice.token,
        &["rotations", "stage", &job, "proceed_revoke"],
    );
    assert_eq!(out.code, 5, "{}", out.all());
    assert!(out.stderr.contains("--totp CODE"), "{}", out.stderr);
    // On a terminal (`script` gives one) it asks for the code, hidden, and passes the gate.
    let line = format!(
        "{BIN} --config {} rotations stage {job} proceed_revoke",
        w.config()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("VELVET_ADDR", &addr)
        .env("VELVET_TOKEN", &alice.token)
        .env("TERM", "xterm")
        .current_dir(w.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    {
        use std::io::Write;
        let code = totp_code(&alice.secret, now()).unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{code}\n").as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("needs your current TOTP code"), "{text}");
    wait_for(&s, &job, "");
}
