//! Several `velvet serve` replicas on one PostgreSQL database.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const KEY: &str = "replica-test-key-0123456789abcdef";
const TOKENS: usize = 10;
const ROUNDS: usize = 5;

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn config(hook: &str) -> String {
    let mut c = String::from(
        "defaults: {retry: {attempts: 4, initial_backoff: 50ms, max_backoff: 200ms}, grace_period: 0s}\nengine: {lease: 5s}\ntokens:\n",
    );
    for i in 0..TOKENS {
        c.push_str(&format!(
            "  - name: t{i}\n    flow: auto\n    source: {{kind: random}}\n    consumers:\n      - {{name: hook, kind: webhook, url: '{hook}', signing_secret_env: HOOK_SECRET}}\n"
        ));
    }
    c
}

fn wait_done(s: &Server, job: &str) -> Value {
    let start = Instant::now();
    loop {
        let (_, j) = s.call("GET", &format!("/api/v1/rotations/{job}"), Some(KEY), None);
        if j["status"] == "succeeded" {
            return j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "job {job} did not finish: {j}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_replicas_share_the_work_and_each_version_is_delivered_once() {
    let url = block(velvet_testkit::fresh_postgres_db());
    let (hook, hook_url) = receiver::start(Duration::from_millis(20));
    let w = Workdir::new();
    w.write_config(&config(&hook_url));
    let env = [
        ("VELVET_DATABASE_URL", url.as_str()),
        ("VELVET_API_KEY", KEY),
        ("HOOK_SECRET", "s"),
    ];
    let a = w.serve(&[], &env);
    let b = w.serve(&[], &env);
    for round in 0..ROUNDS {
        let mut jobs = Vec::new();
        for i in 0..TOKENS {
            let via = if (i + round) % 2 == 0 { &a } else { &b };
            let (code, body) = via.call(
                "POST",
                &format!("/api/v1/tokens/t{i}/rotate"),
                Some(KEY),
                None,
            );
            assert_eq!(code, 202, "{body}");
            jobs.push(body["job_id"].as_str().unwrap().to_string());
        }
        for job in &jobs {
            wait_done(&a, job);
        }
    }
    let counts = hook.count();
    assert_eq!(
        counts.len(),
        TOKENS * ROUNDS,
        "every version of every token was delivered"
    );
    assert!(
        counts.values().all(|n| *n == 1),
        "exactly once per version: {counts:?}"
    );
    let claims = |s: &Server| s.logs().matches("claimed job").count();
    assert!(
        claims(&a) > 0 && claims(&b) > 0,
        "both replicas drove jobs: {} and {}",
        claims(&a),
        claims(&b)
    );
    assert_eq!(
        w.run(&["audit", "verify"], &env, None).code,
        0,
        "one audit chain across replicas"
    );
}

#[test]
fn a_replica_killed_mid_distribute_is_taken_over_after_its_lease() {
    let url = block(velvet_testkit::fresh_postgres_db());
    let (hook, hook_url) = receiver::start(Duration::from_millis(3000));
    let w = Workdir::new();
    w.write_config(&config(&hook_url).replace("flow: auto", "flow: emergency"));
    let env = [
        ("VELVET_DATABASE_URL", url.as_str()),
        ("VELVET_API_KEY", KEY),
        ("HOOK_SECRET", "s"),
    ];
    let mut a = w.serve(&[], &env);
    let (_, body) = a.call("POST", "/api/v1/tokens/t0/rotate", Some(KEY), None);
    let job = body["job_id"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let (_, j) = a.call("GET", &format!("/api/v1/rotations/{job}"), Some(KEY), None);
        if j["consumers"][0]["status"] == "in_progress" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{j}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // B starts only now, so A surely held the job; then A dies mid-delivery.
    let b = w.serve(&[], &env);
    a.signal("KILL");
    a.wait(Duration::from_secs(10));
    *hook.delay_ms.lock().unwrap() = 0;
    let killed_at = Instant::now();
    let j = wait_done(&b, &job);
    assert!(
        killed_at.elapsed() >= Duration::from_secs(2),
        "taken over only after the lease expired"
    );
    assert_eq!(j["consumers"][0]["status"], "verified");
    assert!(
        hook.count().contains_key(&("t0".to_string(), 1)),
        "the surviving replica delivered"
    );
}
