//! Schedules through the binary, in real time: a `rotate_every: 1m` token rotates by itself;
//! killing the leading replica hands the scheduler to the other within the lease; `velvet
//! status` and `/metrics` tell a monitor what needs attention.

use crate::common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const KEY: &str = "schedule-test-key-0123456789abcdef";

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn every_minute(w: &Workdir, lease: &str) -> String {
    format!(
        "defaults: {{grace_period: 0s}}\nengine: {{lease: {lease}}}\ntokens:\n  - name: minutely\n    flow: auto\n    rotate_every: 1m\n    source: {{kind: random}}\n    consumers:\n      - {{name: env, kind: file, path: {}, format: dotenv, key: TOKEN}}\n",
        w.path("app.env").display()
    )
}

fn scheduled_jobs(s: &Server) -> Vec<Value> {
    let (code, page) = s.call("GET", "/api/v1/rotations?token=minutely", Some(KEY), None);
    assert_eq!(code, 200, "{page}");
    page["rotations"].as_array().cloned().unwrap_or_default()
}

/// The first scheduled job to succeed, waiting at most `limit`.
fn wait_scheduled_success(s: &Server, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let jobs = scheduled_jobs(s);
        if let Some(j) = jobs.iter().find(|j| j["status"] == "succeeded") {
            return j.clone();
        }
        assert!(
            start.elapsed() < limit,
            "no scheduled rotation succeeded in {limit:?}: {jobs:?}\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn metric(s: &Server, line_start: &str) -> Option<f64> {
    let (_, text) = s.get("/metrics");
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_token_with_rotate_every_1m_rotates_by_itself_on_time() {
    let w = Workdir::new();
    w.write_config(&every_minute(&w, "30s"));
    let env = [("VELVET_API_KEY", KEY)];
    let s = w.serve(&[], &env);
    let started = Instant::now();
    let (_, t) = s.call("GET", "/api/v1/tokens/minutely", Some(KEY), None);
    let due: chrono::DateTime<chrono::Utc> =
        t["next_rotation_at"].as_str().unwrap().parse().unwrap();
    assert!(scheduled_jobs(&s).is_empty(), "nothing before it is due");

    let job = wait_scheduled_success(&s, Duration::from_secs(100));
    assert!(
        started.elapsed() >= Duration::from_secs(50),
        "not before it was due"
    );
    assert_eq!(job["requested_by"], "scheduler");
    assert_eq!(job["flow_type"], "auto");
    let created: chrono::DateTime<chrono::Utc> =
        job["created_at"].as_str().unwrap().parse().unwrap();
    assert!(created >= due, "started at {created}, due {due}");
    assert!(
        created - due < chrono::Duration::seconds(15),
        "late: {created} for {due}"
    );
    assert!(
        std::fs::read_to_string(w.path("app.env"))
            .unwrap()
            .starts_with("TOKEN=")
    );
    assert_eq!(scheduled_jobs(&s).len(), 1, "one job for one due time");

    // The next start is a minute after this success; the monitor sees a leader, a success
    // and nothing to do.
    let moved = Instant::now();
    loop {
        let (_, t) = s.call("GET", "/api/v1/tokens/minutely", Some(KEY), None);
        let (last, next): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = (
            t["last_rotated_at"].as_str().unwrap().parse().unwrap(),
            t["next_rotation_at"].as_str().unwrap().parse().unwrap(),
        );
        if next - last == chrono::Duration::seconds(60) {
            break;
        }
        // The finished job wakes the scheduler, which moves it at once.
        assert!(
            moved.elapsed() < Duration::from_secs(2),
            "next_rotation_at stayed: {t}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(&s, "velvet_scheduler_leader "), Some(1.0));
    assert_eq!(
        metric(
            &s,
            "velvet_rotations_total{token=\"minutely\",status=\"succeeded\"}"
        ),
        Some(1.0)
    );
    assert!(metric(&s, "velvet_token_age_seconds{token=\"minutely\"}").is_some());
    let addr = s.url("");
    let client = [("VELVET_ADDR", addr.as_str()), ("VELVET_TOKEN", KEY)];
    let out = w.run(&["status"], &client, None);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("All clear"), "{}", out.all());
}

#[test]
fn killing_the_leader_hands_the_scheduler_over_within_the_lease() {
    let url = block(velvet_testkit::fresh_postgres_db());
    let w = Workdir::new();
    w.write_config(&every_minute(&w, "6s"));
    let env = [
        ("VELVET_DATABASE_URL", url.as_str()),
        ("VELVET_API_KEY", KEY),
    ];
    let a = w.serve(&[], &env);
    let b = w.serve(&[], &env);
    let leads = |s: &Server| metric(s, "velvet_scheduler_leader ") == Some(1.0);
    let start = Instant::now();
    let (leader, other) = loop {
        match (leads(&a), leads(&b)) {
            (true, false) => break (a, b),
            (false, true) => break (b, a),
            (true, true) => panic!("two leaders at once"),
            (false, false) => {
                assert!(start.elapsed() < Duration::from_secs(15), "nobody leads");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    leader.signal("KILL");
    let killed = Instant::now();
    while !leads(&other) {
        assert!(
            killed.elapsed() < Duration::from_secs(6),
            "no takeover within the 6s lease:\n{}",
            other.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("took over {:?} after the kill", killed.elapsed());
    // The survivor schedules: the token rotates once when due.
    let job = wait_scheduled_success(&other, Duration::from_secs(100));
    assert_eq!(job["requested_by"], "scheduler");
    assert_eq!(scheduled_jobs(&other).len(), 1);
}

#[test]
fn velvet_status_exits_1_naming_a_failed_rotation() {
    let w = Workdir::new();
    w.write_config(
        "defaults: {retry: {attempts: 1, initial_backoff: 10ms, max_backoff: 10ms}}\ntokens:\n  - name: broken\n    flow: auto\n    source: {kind: random}\n    consumers:\n      - {name: deploy, kind: exec, command: [sh, -c, 'exit 3']}\n",
    );
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let (code, job) = s.call(
        "POST",
        "/api/v1/tokens/broken/rotate",
        Some(KEY),
        Some(serde_json::json!({})),
    );
    assert_eq!(code, 202, "{job}");
    let id = job["job_id"].as_str().unwrap();
    wait_job(&s, KEY, id, "failed", |j| j["status"] == "failed");
    let addr = s.url("");
    let client = [("VELVET_ADDR", addr.as_str()), ("VELVET_TOKEN", KEY)];
    let out = w.run(&["status"], &client, None);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout.contains("Failed rotations (1)") && out.stdout.contains(id),
        "{}",
        out.all()
    );
    assert!(out.stderr.contains("need attention"), "{}", out.all());
    let out = w.run(&["status", "--output", "json"], &client, None);
    assert_eq!(out.code, 1);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["needs_attention"], true);
    assert_eq!(v["failed"][0]["token"], "broken");
    assert_eq!(v["failed"][0]["job_id"], id);
    assert_eq!(
        metric(
            &s,
            "velvet_rotations_total{token=\"broken\",status=\"failed\"}"
        ),
        Some(1.0)
    );
}

/// Killed right after a notification was sent, before its delivery was stored: the restarted
/// server sends it again with the same id, so a receiver that deduplicates on the id sees
/// exactly the events of record (at-least-once).
#[test]
fn a_kill_between_sending_and_recording_redelivers_with_the_same_id() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (inbox, base) = rt.block_on(velvet_fakes::inbox::Inbox::start());
    let w = Workdir::new();
    w.write_config(&format!(
        "defaults: {{retry: {{attempts: 1, initial_backoff: 10ms, max_backoff: 10ms}}}}\nengine: {{lease: 6s}}\nnotifications:\n  - {{name: pager, kind: webhook, url: \"{base}/pager\", signing_secret_env: PAGER_SECRET, on: [failed]}}\ntokens:\n  - name: broken\n    flow: auto\n    source: {{kind: random}}\n    consumers:\n      - {{name: deploy, kind: exec, command: [sh, -c, 'exit 3']}}\n"
    ));
    let env = [("VELVET_API_KEY", KEY), ("PAGER_SECRET", "p")];
    let mut crashing = env.to_vec();
    crashing.push(("VELVET_CRASH_AT", "after_notification_sent"));
    let mut a = w.serve(&[], &crashing);
    let (code, job) = a.call(
        "POST",
        "/api/v1/tokens/broken/rotate",
        Some(KEY),
        Some(serde_json::json!({})),
    );
    assert_eq!(code, 202, "{job}");
    assert_ne!(
        a.wait(Duration::from_secs(60)),
        0,
        "aborted at the crash point"
    );
    assert_eq!(inbox.received().len(), 1, "sent once before the crash");

    let b = w.serve(&[], &env);
    let start = Instant::now();
    while inbox.received().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not redelivered:\n{}",
            b.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ids: Vec<String> = inbox
        .received()
        .iter()
        .map(|r| r.body["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids[0], ids[1], "the same event, the same id");
    let (_, n) = b.call("GET", "/api/v1/notifications", Some(KEY), None);
    let of_record: Vec<&str> = n["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(of_record, [ids[0].as_str()], "{n}");
    assert_eq!(n["notifications"][0]["status"], "delivered");
    assert_eq!(n["notifications"][0]["event"], "failed");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(inbox.received().len(), 2, "delivered, then never again");
}

/// A `manual` token: the person pipes the new value in; it is distributed like any other and
/// never echoed; kicking one off without a value, or giving a value to a minted token, is
/// refused with what to do; `velvet status` reminds before it is due.
#[test]
fn a_manual_token_takes_its_value_from_stdin_and_is_reminded_of() {
    const GIVEN: &str = "sk_live_given_by_a_person_0042";
    let w = Workdir::new();
    w.write_config(&format!(
        "defaults: {{grace_period: 0s}}\ntokens:\n  - name: vendor-key\n    flow: auto\n    rotate_every: 30d\n    remind_before: 60d\n    source: {{kind: manual}}\n    consumers:\n      - {{name: env, kind: file, path: {}, format: dotenv, key: VENDOR_KEY}}\n  - {{name: minted, flow: auto, source: {{kind: random}}}}\n",
        w.path("vendor.env").display()
    ));
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let addr = s.url("");
    let client = [("VELVET_ADDR", addr.as_str()), ("VELVET_TOKEN", KEY)];

    let out = w.run(&["rotate", "vendor-key"], &client, None);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("--value-stdin"), "{}", out.all());
    let out = w.run(&["rotate", "minted", "--value-stdin"], &client, Some("x\n"));
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("only a manual token takes a value"),
        "{}",
        out.all()
    );
    let out = w.run(
        &["rotate", "vendor-key", "--value-stdin"],
        &client,
        Some(""),
    );
    assert_eq!(out.code, 2, "{}", out.all());

    let out = w.run(
        &["rotate", "vendor-key", "--value-stdin"],
        &client,
        Some(&format!("{GIVEN}\n")),
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let id = out.stdout.trim().to_string();
    let job = wait_job(&s, KEY, &id, "succeeded", |j| j["status"] == "succeeded");
    assert_eq!(
        std::fs::read_to_string(w.path("vendor.env")).unwrap(),
        format!("VENDOR_KEY={GIVEN}\n"),
        "the value as given, its newline dropped"
    );
    let (_, token) = s.call("GET", "/api/v1/tokens/vendor-key", Some(KEY), None);
    let (_, audit) = s.call("GET", "/api/v1/audit?limit=1000", Some(KEY), None);
    for text in [
        job.to_string(),
        token.to_string(),
        audit.to_string(),
        s.logs(),
        out.all(),
    ] {
        assert!(!text.contains(GIVEN), "the value leaked: {text}");
    }
    assert!(audit.to_string().contains("version.given"), "{audit}");

    // Due in 30 days, reminded 60 days ahead: the person is told what to run.
    let out = w.run(&["status", "--output", "json"], &client, None);
    assert_eq!(out.code, 1, "{}", out.all());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["due_soon"][0]["token"], "vendor-key", "{v}");
    assert!(
        v["due_soon"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("velvet rotate vendor-key --value-stdin")
    );
}
