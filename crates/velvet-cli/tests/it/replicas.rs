//! Several `velvet serve` replicas on one PostgreSQL database.

use crate::common::*;
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

#[test]
fn two_replicas_never_write_one_lock_key_at_once() {
    let url = block(velvet_testkit::fresh_postgres_db());
    let w = Workdir::new();
    let log = w.path("writes.log");
    // Each write logs its replica (the shell's parent) and when it began and ended.
    let write = format!(
        "cat > /dev/null; echo \"$PPID start $(date +%s%N)\" >> {log}; sleep 0.4; echo \"$PPID end $(date +%s%N)\" >> {log}",
        log = log.display()
    );
    let mut c = String::from(
        "defaults: {grace_period: 0s}\nengine: {lease: 30s, per_lock_key: 1}\ntokens:\n",
    );
    for i in 0..4 {
        c.push_str(&format!(
            "  - name: t{i}\n    flow: auto\n    source: {{kind: random}}\n    consumers:\n      - {{name: slow, kind: exec, lock_key: 'slow-target', command: [sh, -c, '{write}']}}\n"
        ));
    }
    w.write_config(&c);
    let env = [
        ("VELVET_DATABASE_URL", url.as_str()),
        ("VELVET_API_KEY", KEY),
    ];
    let a = w.serve(&[], &env);
    let b = w.serve(&[], &env);
    // Which replica claims a job is a race (each hears the other's kickoffs by NOTIFY), so
    // rounds go on until both have written; every round's writes are checked.
    for _round in 0..5 {
        let mut jobs = Vec::new();
        for i in 0..4 {
            let via = if i % 2 == 0 { &a } else { &b };
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
        let text = std::fs::read_to_string(&log).unwrap();
        let writers: std::collections::HashSet<&str> =
            text.lines().filter_map(|l| l.split(' ').next()).collect();
        if writers.len() == 2 {
            break;
        }
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let mut spans: Vec<(String, u128, u128)> = Vec::new();
    let mut open: std::collections::HashMap<String, u128> = Default::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let at: u128 = f[2].parse().unwrap();
        match f[1] {
            "start" => assert!(open.insert(f[0].to_string(), at).is_none(), "{text}"),
            _ => spans.push((f[0].to_string(), open.remove(f[0]).unwrap(), at)),
        }
    }
    assert!(spans.len() >= 4, "{text}");
    let replicas: std::collections::HashSet<_> = spans.iter().map(|s| s.0.clone()).collect();
    assert_eq!(replicas.len(), 2, "both replicas wrote: {text}");
    spans.sort_by_key(|s| s.1);
    for pair in spans.windows(2) {
        assert!(
            pair[1].1 >= pair[0].2,
            "two writes to one lock key overlapped: {pair:?}\n{text}"
        );
    }
}
