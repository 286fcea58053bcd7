//! The scheduler against a real store, its clock injected: a due token starts once per slot,
//! on every dialect and with two replicas passing at the same instant; missed slots are
//! recorded once; the lease has one holder; a scheduled job never passes a gate that needs a
//! person.

use crate::harness::{is, parse};
use chrono::{DateTime, Duration as Delta, DurationRound, Utc};
use std::sync::Arc;
use std::time::{Duration, Instant};
use velvet_core::job::RotationJob;
use velvet_core::rotation::{Awaiting, JobStatus, Stage};
use velvet_engine::{Engine, EngineOptions, SCHEDULER};
use velvet_store::{Dialect, JobQuery, Store};
use velvet_testkit::Fixture;

struct Scheduled {
    f: Fixture,
    engine: Arc<Engine>,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// An engine that runs jobs but whose scheduler passes only when the test says, at its time.
async fn scheduled(dialect: Dialect, tokens: &str) -> Scheduled {
    let f = Fixture::new(dialect).await;
    let yaml = format!(
        "defaults: {{retry: {{attempts: 2, initial_backoff: 10ms, max_backoff: 20ms}}, grace_period: 0s}}\n{tokens}"
    );
    let config = parse(f.dir.path(), &yaml);
    f.store.reconcile(&config.tokens, Utc::now()).await.unwrap();
    let engine = engine_on(f.store.clone(), &f, config);
    let (stop, rx) = tokio::sync::watch::channel(false);
    engine.start(rx);
    Scheduled {
        f,
        engine,
        _stop: stop,
    }
}

fn engine_on(
    store: Arc<dyn Store>,
    f: &Fixture,
    config: velvet_core::config::Config,
) -> Arc<Engine> {
    let mut opts = EngineOptions::for_this_process();
    opts.poll_interval = Duration::from_millis(20);
    opts.lead_scheduler = false;
    Engine::new(
        store,
        f.keyring.clone(),
        velvet_core::config::live(config),
        opts,
    )
}

async fn jobs(store: &dyn Store, token: &str) -> Vec<RotationJob> {
    store
        .list_jobs(&JobQuery {
            token: Some(token),
            limit: 100,
            ..JobQuery::default()
        })
        .await
        .unwrap()
}

async fn until(store: &dyn Store, id: &str, done: impl Fn(&RotationJob) -> bool) -> RotationJob {
    let start = Instant::now();
    loop {
        let job = store.get_job(id).await.unwrap().unwrap();
        if done(&job) {
            return job;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tomorrow's 03:00 UTC, the slot of `0 3 * * *`.
fn tomorrow_at_3() -> DateTime<Utc> {
    Utc::now().duration_trunc(Delta::days(1)).unwrap() + Delta::days(1) + Delta::hours(3)
}

fn token(name: &str, schedule: &str, dir: &std::path::Path) -> String {
    format!(
        "  - name: {name}\n    flow: auto\n    {schedule}\n    source: {{kind: random, bytes: 16}}\n    consumers:\n      - {{name: env, kind: file, path: {}/{name}.env, format: dotenv, key: TOKEN}}\n",
        dir.display()
    )
}

async fn a_slot_starts_one_job_and_moves_next_rotation_at(dialect: Dialect) {
    let dir = tempfile::tempdir().unwrap();
    let s = scheduled(
        dialect,
        &format!(
            "tokens:\n{}",
            token(
                "nightly",
                "schedule: {cron: \"0 3 * * *\", window: 1h}",
                dir.path()
            )
        ),
    )
    .await;
    let (store, slot) = (&*s.f.store, tomorrow_at_3());
    let before = s
        .engine
        .schedule_pass(slot - Delta::hours(2))
        .await
        .unwrap();
    assert!(before.started.is_empty(), "{before:?}");
    let t = store.get_token("nightly").await.unwrap().unwrap();
    assert_eq!(t.next_rotation_at, Some(slot), "the real next start");

    let at = s
        .engine
        .schedule_pass(slot + Delta::minutes(1))
        .await
        .unwrap();
    assert_eq!(at.started, vec!["nightly".to_string()]);
    let again = s
        .engine
        .schedule_pass(slot + Delta::minutes(2))
        .await
        .unwrap();
    assert!(again.started.is_empty(), "one job per slot: {again:?}");
    let all = jobs(store, "nightly").await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].requested_by, SCHEDULER);
    let done = until(store, &all[0].job_id, is(Stage::Done, JobStatus::Succeeded)).await;
    assert!(
        std::fs::read_to_string(dir.path().join("nightly.env"))
            .unwrap()
            .starts_with("TOKEN=")
    );

    // The job finished: the slot stays used, and the next start is tomorrow's slot.
    let after = s
        .engine
        .schedule_pass(slot + Delta::minutes(30))
        .await
        .unwrap();
    assert!(after.started.is_empty(), "{after:?}");
    let t = store.get_token("nightly").await.unwrap().unwrap();
    assert_eq!(t.next_rotation_at, Some(slot + Delta::days(1)));
    assert!(
        t.last_rotated_at.is_some()
            && t.last_rotated_at >= done.finished_at.map(|f| f - Delta::seconds(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_starts_one_job_on_sqlite() {
    a_slot_starts_one_job_and_moves_next_rotation_at(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_starts_one_job_on_postgres() {
    a_slot_starts_one_job_and_moves_next_rotation_at(Dialect::Postgres).await;
}

/// Two replicas that both believe they lead pass at the same instant: every slot still runs
/// once, because it is taken in the kickoff's own transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_passing_at_once_start_each_slot_once() {
    let dir = tempfile::tempdir().unwrap();
    let tokens: String = (0..20)
        .map(|i| {
            token(
                &format!("t{i}"),
                "schedule: {cron: \"0 3 * * *\"}",
                dir.path(),
            )
        })
        .collect();
    let s = scheduled(Dialect::Postgres, &format!("tokens:\n{tokens}")).await;
    let other = engine_on(
        s.f.another_handle().await,
        &s.f,
        parse(
            s.f.dir.path(),
            &format!("defaults: {{grace_period: 0s}}\ntokens:\n{tokens}"),
        ),
    );
    let at = tomorrow_at_3() + Delta::minutes(5);
    let (a, b) = tokio::join!(s.engine.schedule_pass(at), other.schedule_pass(at));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.started.len() + b.started.len(), 20, "{a:?} {b:?}");
    for i in 0..20 {
        let all = jobs(&*s.f.store, &format!("t{i}")).await;
        assert_eq!(all.len(), 1, "t{i}");
        until(
            &*s.f.store,
            &all[0].job_id,
            is(Stage::Done, JobStatus::Succeeded),
        )
        .await;
    }
    // Every job finished, so only the used slot stops a second start (not I3).
    let (a, b) = tokio::join!(s.engine.schedule_pass(at), other.schedule_pass(at));
    assert!(a.unwrap().started.is_empty() && b.unwrap().started.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_has_one_holder_until_it_expires_or_is_given_up() {
    for dialect in [Dialect::Sqlite, Dialect::Postgres] {
        let f = Fixture::new(dialect).await;
        let (s, ttl, t0) = (&*f.store, Duration::from_secs(20), Utc::now());
        assert!(s.hold_lease("scheduler", "a", ttl, t0).await.unwrap());
        assert!(
            !s.hold_lease("scheduler", "b", ttl, t0 + Delta::seconds(5))
                .await
                .unwrap()
        );
        assert!(
            s.hold_lease("scheduler", "a", ttl, t0 + Delta::seconds(10))
                .await
                .unwrap(),
            "renewed"
        );
        assert!(
            !s.hold_lease("scheduler", "b", ttl, t0 + Delta::seconds(25))
                .await
                .unwrap(),
            "the renewal counts from t0 + 10s"
        );
        assert!(
            s.hold_lease("scheduler", "b", ttl, t0 + Delta::seconds(31))
                .await
                .unwrap(),
            "expired: taken over"
        );
        assert!(
            !s.hold_lease("scheduler", "a", ttl, t0 + Delta::seconds(32))
                .await
                .unwrap()
        );
        s.give_up_lease("scheduler", "b").await.unwrap();
        assert!(
            s.hold_lease("scheduler", "a", ttl, t0 + Delta::seconds(33))
                .await
                .unwrap(),
            "given up: free at once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_slots_are_recorded_once_and_the_open_slot_used() {
    let dir = tempfile::tempdir().unwrap();
    let s = scheduled(
        Dialect::Sqlite,
        &format!(
            "tokens:\n{}",
            token(
                "hourly",
                "schedule: {cron: \"0 * * * *\", window: 10m}",
                dir.path()
            )
        ),
    )
    .await;
    // Four hours later, five minutes into a slot: three or four slots closed unseen.
    let now =
        Utc::now().duration_trunc(Delta::hours(1)).unwrap() + Delta::hours(4) + Delta::minutes(5);
    let r = s.engine.schedule_pass(now).await.unwrap();
    assert_eq!(r.missed, vec!["hourly".to_string()]);
    assert_eq!(r.started, vec!["hourly".to_string()]);
    let r = s
        .engine
        .schedule_pass(now + Delta::seconds(1))
        .await
        .unwrap();
    assert!(r.missed.is_empty() && r.started.is_empty(), "{r:?}");
    let audit = s.f.store.audit_page(0, 1000).await.unwrap();
    let missed: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "schedule_missed")
        .collect();
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(
        (missed[0].actor.as_str(), missed[0].target.as_str()),
        ("scheduler", "hourly")
    );
    let detail: serde_json::Value = serde_json::from_str(&missed[0].detail).unwrap();
    assert!(detail["slots_missed"].as_u64().unwrap() >= 3, "{detail}");
    assert!(
        detail["reason"].as_str().unwrap().contains("not running"),
        "{detail}"
    );
    assert!(
        s.f.store.verify_audit(&s.f.keyring, None).await.unwrap().ok,
        "the chain holds"
    );
}

/// §10: a schedule never skips a gate. An `auto` token whose gate wants a TOTP code starts on
/// time, distributes, and then waits at proceed_revoke for a person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_waits_for_a_person_at_its_gate() {
    let dir = tempfile::tempdir().unwrap();
    let s = scheduled(
        Dialect::Sqlite,
        &format!(
            "revocation_gates:\n  - {{name: prod, match: {{tokens: [gated]}}, require: {{totp: true}}}}\ntokens:\n{}{}",
            token("gated", "rotate_every: 1h", dir.path()),
            token("open", "rotate_every: 1h", dir.path()),
        ),
    )
    .await;
    let r = s
        .engine
        .schedule_pass(Utc::now() + Delta::minutes(61))
        .await
        .unwrap();
    assert_eq!(r.started.len(), 2, "{r:?}");
    let gated = &jobs(&*s.f.store, "gated").await[0];
    let job = until(&*s.f.store, &gated.job_id, |j| {
        j.state.awaiting == Some(Awaiting::ProceedRevoke)
    })
    .await;
    assert_eq!(job.state.stage, Stage::Revoke);
    let open = &jobs(&*s.f.store, "open").await[0];
    until(
        &*s.f.store,
        &open.job_id,
        is(Stage::Done, JobStatus::Succeeded),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = s.f.store.get_job(&gated.job_id).await.unwrap().unwrap();
    assert_eq!(
        still.state.awaiting,
        Some(Awaiting::ProceedRevoke),
        "still waits"
    );
}

/// A manual token's due time is a reminder: the scheduler never starts a job it could not
/// mint, and `next_rotation_at` stays at the due time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_never_starts_a_manual_token() {
    let s = scheduled(
        Dialect::Sqlite,
        "tokens:\n  - {name: vendor, flow: auto, rotate_every: 1h, source: {kind: manual}}\n",
    )
    .await;
    let r = s
        .engine
        .schedule_pass(Utc::now() + Delta::hours(2))
        .await
        .unwrap();
    assert!(r.started.is_empty(), "{r:?}");
    assert!(jobs(&*s.f.store, "vendor").await.is_empty());
    let t = s.f.store.get_token("vendor").await.unwrap().unwrap();
    let due = t.next_rotation_at.unwrap();
    assert!(
        (due - (t.created_at + Delta::hours(1))).num_seconds().abs() < 1,
        "{t:?}"
    );
}

/// A schedule added to a token declared long ago counts its slots from when it was added: the
/// month of hourly slots before it is not reported missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_added_later_reports_no_slots_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::new(Dialect::Sqlite).await;
    let plain = parse(
        f.dir.path(),
        &format!(
            "tokens:\n{}",
            token("legacy", "description: old", dir.path())
        ),
    );
    let month_ago = Utc::now() - Delta::days(30);
    f.store.reconcile(&plain.tokens, month_ago).await.unwrap();
    let hourly = parse(
        f.dir.path(),
        &format!(
            "tokens:\n{}",
            token(
                "legacy",
                "schedule: {cron: \"0 * * * *\", window: 10m}",
                dir.path()
            )
        ),
    );
    f.store.reconcile(&hourly.tokens, Utc::now()).await.unwrap();
    let t = f.store.get_token("legacy").await.unwrap().unwrap();
    let next_hour = Utc::now().duration_trunc(Delta::hours(1)).unwrap() + Delta::hours(1);
    assert_eq!(
        t.next_rotation_at,
        Some(next_hour),
        "reconcile uses the scheduler's rule"
    );
    let engine = engine_on(f.store.clone(), &f, hourly);
    let r = engine
        .schedule_pass(next_hour + Delta::minutes(5))
        .await
        .unwrap();
    assert!(r.missed.is_empty(), "{r:?}");
    assert_eq!(r.started, vec!["legacy".to_string()]);
}
