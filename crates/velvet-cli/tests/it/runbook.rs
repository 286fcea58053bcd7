//! The runbook of design §1 end to end: `examples/console-cross-env-read-token.yaml` against the
//! Infisical, Heroku and Cloudflare fakes and the console that reads its token from Heroku. The
//! process dies between a write and its verify and resumes; every copy ends with the new value's
//! fingerprint, one Heroku release per app; and a console that accepts anything is caught by the
//! negative probe and rolled back everywhere.

use crate::common::*;
use serde_json::{Value, json};
use std::time::Duration;
use velvet_fakes::runbook::{self, ACCOUNT, APPS, ENVIRONMENTS, EXAMPLE, PROJECT, Runbook, SCRIPT};

const KEY: &str = "runbook-test-key-0123456789abcdef-01";
const OLD: &str = "the-old-console-read-token-0123456789";

fn workdir(rb: &Runbook) -> (Workdir, Vec<(&'static str, &'static str)>) {
    let w = Workdir::new();
    // Quick retries and lease for the suite; the example otherwise as shipped.
    let example = EXAMPLE.replace(
        "retry: {attempts: 5, initial_backoff: 2s, max_backoff: 1m}",
        "retry: {attempts: 3, initial_backoff: 50ms, max_backoff: 200ms}",
    );
    assert_ne!(example, EXAMPLE, "the example's retry line moved");
    w.write_config(&format!("{}engine: {{lease: 5s}}\n", rb.config(&example)));
    let mut env = rb.env();
    env.push(("VELVET_API_KEY", KEY));
    let out = w.run(&["tokens", "import", runbook::TOKEN], &env, Some(OLD));
    assert_eq!(out.code, 0, "{}", out.all());
    (w, env)
}

fn stage(s: &Server, job: &str, action: &str) -> Value {
    let (code, j) = s.call(
        "POST",
        &format!("/api/v1/rotations/{job}/stage"),
        Some(KEY),
        Some(json!({"action": action})),
    );
    assert_eq!(code, 200, "{action}: {j}");
    j
}

fn kickoff(s: &Server) -> String {
    let path = format!("/api/v1/tokens/{}/rotate", runbook::TOKEN);
    let (code, body) = s.call("POST", &path, Some(KEY), None);
    assert_eq!(code, 202, "{body}");
    body["job_id"].as_str().unwrap().to_string()
}

#[test]
fn the_runbook_runs_end_to_end_through_a_crash_and_every_copy_matches() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rb = rt.block_on(Runbook::start(OLD));
    let (w, env) = workdir(&rb);
    let out = w.run(&["validate"], &env, None);
    assert_eq!(out.code, 0, "{}", out.all());
    // Doctor reaches all five places, writing nothing.
    let out = w.run(&["doctor", "--output", "json"], &env, None);
    assert_eq!(out.code, 0, "{}", out.all());
    let rows: Value = serde_json::from_str(&out.stdout).unwrap();
    for kind in [
        "infisical_secret",
        "heroku_config_var",
        "cloudflare_worker_secret",
    ] {
        let n = rows
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["check"] == format!("consumer {kind}") && r["result"] == "ok")
            .count();
        assert!(n >= 1, "doctor checked no {kind}: {rows}");
    }
    assert_eq!(rb.heroku.releases(APPS[0]) + rb.heroku.releases(APPS[1]), 0);
    assert_eq!(rb.cloudflare.versions(ACCOUNT, SCRIPT), 1);

    // A rate limit and an outage mid-fan-out: each retried after its time, the others unaffected.
    rb.cloudflare
        .fail_next(&[velvet_fakes::cloudflare::Fault::Status(429)]);
    rb.heroku.fail_next(&[503]);
    let mut crashing = env.clone();
    crashing.push(("VELVET_CRASH_AT", "after_consumer_applied"));
    let mut s = w.serve(&[], &crashing);
    let job = kickoff(&s);
    wait_job(
        &s,
        KEY,
        &job,
        "proceed_distribute",
        at("distribute", "awaiting_confirmation"),
    );
    stage(&s, &job, "proceed_distribute");
    s.wait(Duration::from_secs(30));
    let landed = rb
        .copies()
        .iter()
        .filter(|(_, v)| v.as_deref() != Some(OLD))
        .count();
    assert!(
        landed >= 1,
        "a write landed before the crash: {:?}",
        rb.copies()
    );

    let s = w.serve(&[], &env);
    let j = wait_job(
        &s,
        KEY,
        &job,
        "proceed_revoke",
        at("revoke", "awaiting_confirmation"),
    );
    let consumers = j["consumers"].as_array().unwrap();
    assert_eq!(consumers.len(), 5, "{j}");
    assert!(consumers.iter().all(|c| c["status"] == "verified"), "{j}");
    assert_eq!(
        (rb.cloudflare.faults_left(), rb.heroku.faults_left()),
        (0, 0),
        "the 429 and the 503 were answered, and retried past"
    );
    stage(&s, &job, "proceed_revoke");
    wait_job(&s, KEY, &job, "succeeded", at("done", "succeeded"));

    // Every copy holds the new value, whose fingerprint is the current version's.
    let copies = rb.copies();
    let new = copies[0].1.clone().unwrap();
    assert!(new.len() == 64 && new != OLD, "{copies:?}");
    assert!(
        copies
            .iter()
            .all(|(_, v)| v.as_deref() == Some(new.as_str())),
        "{copies:?}"
    );
    let keyring = velvet_core::keyring::Keyring::load(&w.path("velvet-keys.json")).unwrap();
    let fp = keyring
        .fingerprint(
            &velvet_core::secret::SecretValue::single(new.clone()),
            chrono::Utc::now(),
        )
        .unwrap();
    let (_, t) = s.call(
        "GET",
        &format!("/api/v1/tokens/{}", runbook::TOKEN),
        Some(KEY),
        None,
    );
    let current = t["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["label"] == "current")
        .unwrap_or_else(|| panic!("{t}"));
    assert_eq!(current["fingerprint"], fp.as_str(), "{t}");
    for c in consumers {
        assert_eq!(c["fingerprint"], fp.as_str(), "{c}");
    }
    // One release per app despite the crash; one new secret version per Infisical environment.
    for app in APPS {
        assert_eq!(rb.heroku.releases(app), 1, "{app}");
        assert_eq!(rb.heroku.vars(app)["DATABASE_URL"], "postgres://kept");
    }
    for env in ENVIRONMENTS {
        assert_eq!(
            rb.infisical
                .get(PROJECT, env, "/console", runbook::KEY)
                .unwrap()
                .1,
            2
        );
        assert_eq!(
            rb.infisical.secrets(PROJECT, env, "/console")["OTHER"],
            "kept"
        );
    }
    assert_eq!(
        rb.cloudflare.secrets(ACCOUNT, SCRIPT)["OTHER_SECRET"],
        "kept"
    );
    // The console was asked with the new token (200) and with a wrong one (401).
    let (accepted, refused) = rb.console.answers();
    assert!(accepted >= 1 && refused >= 1, "{accepted} {refused}");
    let logs = s.logs();
    for secret in [
        new.as_str(),
        OLD,
        "fake-infisical-client-secret-for-the-runbook",
    ] {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
}

#[test]
fn a_console_that_accepts_anything_fails_the_probe_and_rollback_restores_every_copy() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rb = rt.block_on(Runbook::start(OLD));
    rb.console.accept_anything();
    let (w, env) = workdir(&rb);
    let s = w.serve(&[], &env);
    let job = kickoff(&s);
    wait_job(
        &s,
        KEY,
        &job,
        "proceed_distribute",
        at("distribute", "awaiting_confirmation"),
    );
    stage(&s, &job, "proceed_distribute");
    let j = wait_job(&s, KEY, &job, "failed", at("distribute", "failed"));
    let probed = j["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["consumer"] == "heroku-console-prod")
        .unwrap();
    assert_eq!(probed["status"], "failed", "{j}");
    assert!(
        probed["last_error"]
            .as_str()
            .unwrap()
            .contains("does not check the value"),
        "{probed}"
    );
    stage(&s, &job, "rollback");
    wait_job(&s, KEY, &job, "rolled back", at("done", "rolled_back"));
    let copies = rb.copies();
    assert!(
        copies.iter().all(|(_, v)| v.as_deref() == Some(OLD)),
        "{copies:?}"
    );
}
