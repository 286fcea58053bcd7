//! The job layer of the store, on SQLite and PostgreSQL alike.

use chrono::Utc;
use std::path::Path;
use std::time::Duration;
use velvet_core::audit::AuditDraft;
use velvet_core::config::{Config, FlowType, LoadOptions};
use velvet_core::job::{ConsumerStatus, JobChanges};
use velvet_core::keyring::version_aad;
use velvet_core::rotation::{Action, Event, JobState, JobStatus, Stage, transition};
use velvet_core::secret::SecretValue;
use velvet_store::{ConsumerChange, ConsumerUpdate, Dialect, NewJob, StoreError};
use velvet_testkit::Fixture;

velvet_testkit::both_dialects!(
    a_job_starts_pending_with_its_consumers,
    concurrent_kickoffs_make_exactly_one_job,
    a_lease_is_exclusive_until_it_expires,
    transitions_are_checked_against_the_state_and_the_lease,
    a_full_rotation_moves_the_version_labels,
    rollback_discards_the_new_version,
    concurrent_consumer_updates_number_events_without_gaps,
    an_idempotency_key_returns_the_same_job_even_under_concurrency,
    jobs_list_newest_first_in_pages_with_filters,
    a_lock_key_is_held_across_replicas,
);

const CONFIG: &str = "
tokens:
  - name: api
    source: {kind: random}
    consumers:
      - {name: one, kind: exec, command: [cat]}
      - {name: two, kind: exec, command: [cat], lock_key: shared}
";

async fn setup(f: &Fixture) {
    let env = |_: &str| None;
    let c = Config::parse(
        CONFIG,
        Path::new("/tmp/v.yaml"),
        LoadOptions {
            env: &env,
            check_env: false,
        },
    )
    .unwrap();
    f.store.reconcile(&c.tokens, Utc::now()).await.unwrap();
    let v = SecretValue::single("v1".into());
    let sealed = f
        .keyring
        .seal(&v, &version_aad("api", 1), Utc::now())
        .unwrap();
    f.store
        .import_version("api", &sealed, "fp1", "test")
        .await
        .unwrap();
}

fn new_job(flow: FlowType) -> NewJob<'static> {
    NewJob {
        token: "api",
        flow,
        requested_by: "tester",
        requested_role: Some(velvet_core::identity::Role::Admin),
        reason: Some("scheduled"),
        idempotency: None,
        schedule_slot: None,
        given: None,
    }
}

async fn a_job_starts_pending_with_its_consumers(f: Fixture) {
    setup(&f).await;
    let job = f
        .store
        .create_job(&new_job(FlowType::Staged))
        .await
        .unwrap();
    assert!(velvet_core::job::is_job_id(&job.job_id));
    assert_eq!(
        (
            job.state.stage,
            job.state.status,
            job.previous_version,
            job.new_version
        ),
        (Stage::Mint, JobStatus::Pending, Some(1), None)
    );
    assert_eq!(job.requested_role, Some(velvet_core::identity::Role::Admin));
    assert_eq!(
        job.consumers
            .iter()
            .map(|c| (c.consumer.as_str(), c.status, c.lock_key.as_deref()))
            .collect::<Vec<_>>(),
        [
            ("one", ConsumerStatus::Pending, None),
            ("two", ConsumerStatus::Pending, Some("shared"))
        ]
    );
    let events = f.store.job_events(&job.job_id, 0, 100).await.unwrap();
    assert_eq!(
        (events.len(), events[0].seq, events[0].event.as_str()),
        (1, 1, "job")
    );
    assert_eq!(events[0].data["status"], "pending");
    let audit = f.store.audit_page(0, 100).await.unwrap();
    assert_eq!(audit.last().unwrap().action, "rotation.requested");
    assert_eq!(f.store.get_job(&job.job_id).await.unwrap().unwrap(), job);
    let e = f
        .store
        .create_job(&NewJob {
            token: "nope",
            ..new_job(FlowType::Auto)
        })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e}");
}

async fn concurrent_kickoffs_make_exactly_one_job(f: Fixture) {
    setup(&f).await;
    let other = f.another_handle().await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let s = if i % 2 == 0 {
            f.store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            s.create_job(&new_job(FlowType::Auto)).await
        }));
    }
    let mut created = Vec::new();
    let mut refused = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(job) => created.push(job.job_id),
            Err(StoreError::JobActive(id)) => refused.push(id),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        created.len(),
        1,
        "I3: the database lets exactly one through"
    );
    assert!(
        refused.iter().all(|id| *id == created[0]),
        "the refusal names the active job"
    );
}

async fn a_lease_is_exclusive_until_it_expires(f: Fixture) {
    setup(&f).await;
    let job = f.store.create_job(&new_job(FlowType::Auto)).await.unwrap();
    let other = f.another_handle().await;
    let now = Utc::now();
    let (a, b) = tokio::join!(
        f.store.claim_job("replica-a", Duration::from_secs(30), now),
        other.claim_job("replica-b", Duration::from_secs(30), now)
    );
    let claimed: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(claimed.len(), 1, "one replica gets the job");
    let owner = claimed[0].lease_owner.clone().unwrap();
    assert!(
        f.store
            .renew_lease(&job.job_id, &owner, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        !f.store
            .renew_lease(&job.job_id, "someone-else", Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        f.store
            .claim_job("replica-c", Duration::from_secs(30), Utc::now())
            .await
            .unwrap()
            .is_none()
    );
    let later = Utc::now() + chrono::Duration::seconds(31);
    let taken = f
        .store
        .claim_job("replica-c", Duration::from_secs(30), later)
        .await
        .unwrap()
        .expect("an expired lease is taken over");
    assert_eq!(taken.lease_owner.as_deref(), Some("replica-c"));
    assert!(
        !f.store
            .renew_lease(&job.job_id, &owner, Duration::from_secs(30))
            .await
            .unwrap(),
        "the old owner lost it"
    );
    f.store
        .release_lease(&job.job_id, "replica-c")
        .await
        .unwrap();
    assert!(
        f.store
            .claim_job("replica-d", Duration::from_secs(30), Utc::now())
            .await
            .unwrap()
            .is_some()
    );
}

fn audit() -> AuditDraft {
    AuditDraft::new("system:engine", "rotation.stage", "api", "success")
}

async fn transitions_are_checked_against_the_state_and_the_lease(f: Fixture) {
    setup(&f).await;
    let job = f
        .store
        .create_job(&new_job(FlowType::Staged))
        .await
        .unwrap();
    let claimed = f
        .store
        .claim_job("r1", Duration::from_secs(30), Utc::now())
        .await
        .unwrap()
        .unwrap();
    let from: JobState = claimed.state;
    let running = transition(FlowType::Staged, from, Event::Claimed).unwrap();
    let e = f
        .store
        .transition_job(
            &job.job_id,
            from,
            running,
            &JobChanges::default(),
            Some("r2"),
            &audit(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::StaleJob { .. }),
        "another replica's lease: {e}"
    );
    let j = f
        .store
        .transition_job(
            &job.job_id,
            from,
            running,
            &JobChanges::default(),
            Some("r1"),
            &audit(),
        )
        .await
        .unwrap();
    assert_eq!(j.state.status, JobStatus::Running);
    let e = f
        .store
        .transition_job(
            &job.job_id,
            from,
            running,
            &JobChanges::default(),
            Some("r1"),
            &audit(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::StaleJob { status, .. } if status == "running"),
        "the state moved on: {e}"
    );
    let events = f.store.job_events(&job.job_id, 1, 100).await.unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
}

/// Walks a job through `events` with the state machine, persisting each step.
async fn drive(
    f: &Fixture,
    job_id: &str,
    flow: FlowType,
    steps: &[(Event, JobChanges)],
) -> velvet_core::job::RotationJob {
    let mut job = f.store.get_job(job_id).await.unwrap().unwrap();
    for (event, changes) in steps {
        let from: JobState = job.state;
        let to = transition(flow, from, *event).unwrap_or_else(|e| panic!("{e}"));
        job = f
            .store
            .transition_job(job_id, from, to, changes, None, &audit())
            .await
            .unwrap();
    }
    job
}

async fn mint(f: &Fixture, job_id: &str, value: &str) -> i64 {
    let version = f.store.next_version("api").await.unwrap();
    let v = SecretValue::single(value.into());
    let sealed = f
        .keyring
        .seal(&v, &version_aad("api", version), Utc::now())
        .unwrap();
    let stored = f
        .store
        .store_new_version(job_id, version, &sealed, "fp-new")
        .await
        .unwrap();
    let again = f
        .keyring
        .seal(
            &SecretValue::single("other".into()),
            &version_aad("api", version + 1),
            Utc::now(),
        )
        .unwrap();
    assert_eq!(
        f.store
            .store_new_version(job_id, version + 1, &again, "x")
            .await
            .unwrap(),
        stored,
        "repeating keeps the first value"
    );
    stored
}

fn labels(vs: &[velvet_core::model::VersionRecord]) -> Vec<(i64, &'static str)> {
    vs.iter().map(|v| (v.version, v.label.as_str())).collect()
}

async fn a_full_rotation_moves_the_version_labels(f: Fixture) {
    setup(&f).await;
    let flow = FlowType::Emergency;
    let job = f.store.create_job(&new_job(flow)).await.unwrap();
    drive(
        &f,
        &job.job_id,
        flow,
        &[(Event::Claimed, JobChanges::default())],
    )
    .await;
    let v = mint(&f, &job.job_id, "v2").await;
    assert_eq!(v, 2);
    assert_eq!(
        labels(&f.store.list_versions("api").await.unwrap()),
        [(2, "pending"), (1, "current")],
        "I1: stored before anything else"
    );
    let j = drive(
        &f,
        &job.job_id,
        flow,
        &[
            (Event::Minted, JobChanges::default()),
            (
                Event::AllVerified {
                    unattended_revoke: true,
                },
                JobChanges {
                    promote: true,
                    ..Default::default()
                },
            ),
        ],
    )
    .await;
    assert_eq!(j.new_version, Some(2));
    assert_eq!(
        labels(&f.store.list_versions("api").await.unwrap()),
        [(2, "current"), (1, "previous")]
    );
    let j = drive(
        &f,
        &job.job_id,
        flow,
        &[(
            Event::Revoked,
            JobChanges {
                revoke_previous: true,
                ..Default::default()
            },
        )],
    )
    .await;
    assert_eq!(
        (
            j.state.stage,
            j.state.status,
            j.finished_at.is_some(),
            j.lease_owner
        ),
        (Stage::Done, JobStatus::Succeeded, true, None)
    );
    assert_eq!(
        labels(&f.store.list_versions("api").await.unwrap()),
        [(2, "current"), (1, "revoked")]
    );
    assert_eq!(
        f.store
            .get_token("api")
            .await
            .unwrap()
            .unwrap()
            .current_version,
        Some(2)
    );
    let next = f.store.create_job(&new_job(flow)).await.unwrap();
    assert_eq!(
        next.previous_version,
        Some(2),
        "a finished job frees the token"
    );
}

async fn rollback_discards_the_new_version(f: Fixture) {
    setup(&f).await;
    let flow = FlowType::Staged;
    let job = f.store.create_job(&new_job(flow)).await.unwrap();
    drive(
        &f,
        &job.job_id,
        flow,
        &[(Event::Claimed, JobChanges::default())],
    )
    .await;
    mint(&f, &job.job_id, "v2").await;
    let j = drive(
        &f,
        &job.job_id,
        flow,
        &[
            (Event::Minted, JobChanges::default()),
            (
                Event::Operator {
                    action: Action::ProceedDistribute,
                    gate_passed: false,
                },
                JobChanges::default(),
            ),
            (
                Event::AllVerified {
                    unattended_revoke: true,
                },
                JobChanges {
                    promote: true,
                    ..Default::default()
                },
            ),
            (
                Event::Operator {
                    action: Action::Rollback,
                    gate_passed: false,
                },
                JobChanges::default(),
            ),
            (
                Event::RolledBack,
                JobChanges {
                    discard_new: true,
                    ..Default::default()
                },
            ),
        ],
    )
    .await;
    assert_eq!(j.state.status, JobStatus::RolledBack);
    assert_eq!(
        labels(&f.store.list_versions("api").await.unwrap()),
        [(2, "discarded"), (1, "current")]
    );
}

async fn concurrent_consumer_updates_number_events_without_gaps(f: Fixture) {
    setup(&f).await;
    let job = f.store.create_job(&new_job(FlowType::Auto)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = f.store.clone();
        let id = job.job_id.clone();
        tasks.push(tokio::spawn(async move {
            let consumer = if i % 2 == 0 { "one" } else { "two" };
            let u = ConsumerUpdate {
                status: ConsumerStatus::InProgress,
                attempts: i,
                last_error: None,
                fingerprint: None,
                next_attempt_at: None,
            };
            let change = ConsumerChange {
                consumer: consumer.into(),
                update: u,
                audit: None,
            };
            s.update_job_consumers(&id, &[change]).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let u = ConsumerUpdate {
        status: ConsumerStatus::Verified,
        attempts: 1,
        last_error: None,
        fingerprint: Some("fp".into()),
        next_attempt_at: None,
    };
    let change = |name: &str, audit: Option<AuditDraft>| ConsumerChange {
        consumer: name.into(),
        update: u.clone(),
        audit,
    };
    let verified = AuditDraft::new("system:engine", "consumer.verified", "api", "success");
    // Two changes in one batch: one commit, two events, one audit record.
    f.store
        .update_job_consumers(
            &job.job_id,
            &[change("two", None), change("one", Some(verified))],
        )
        .await
        .unwrap();
    let j = f.store.get_job(&job.job_id).await.unwrap().unwrap();
    assert_eq!(j.consumers[0].status, ConsumerStatus::Verified);
    assert!(j.consumers[0].started_at.is_some());
    let events = f.store.job_events(&job.job_id, 0, 1000).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=23).collect::<Vec<_>>(),
        "gapless, no duplicates"
    );
    let last = events.last().unwrap();
    assert_eq!(
        (
            last.event.as_str(),
            last.data["consumer"].as_str(),
            last.data["job_id"].as_str()
        ),
        ("consumer", Some("one"), Some(job.job_id.as_str()))
    );
    assert!(
        f.store
            .update_job_consumers(&job.job_id, &[change("nope", None)])
            .await
            .is_err()
    );
    let _ = Dialect::Sqlite;
}

async fn an_idempotency_key_returns_the_same_job_even_under_concurrency(f: Fixture) {
    use velvet_store::IdempotencyKey;
    setup(&f).await;
    let other = f.another_handle().await;
    let keyed = |hash: &'static str| NewJob {
        idempotency: Some(IdempotencyKey {
            scope: "token:ci",
            key: "deploy-42",
            request_hash: hash,
        }),
        ..new_job(FlowType::Auto)
    };
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 {
            f.store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(
            async move { s.create_job(&keyed("h1")).await },
        ));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(
            t.await
                .unwrap()
                .expect("a retried kickoff is answered, not refused")
                .job_id,
        );
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every retry got the one job: {ids:?}");
    assert!(matches!(
        f.store.create_job(&keyed("h2")).await,
        Err(StoreError::IdempotencyMismatch)
    ));
    // Past its 24 hours a key means nothing: the request is new (and meets the busy token).
    f.raw
        .exec("UPDATE idempotency_keys SET created_at = '2000-01-01T00:00:00+00:00'")
        .await;
    assert!(matches!(
        f.store.create_job(&keyed("h2")).await,
        Err(StoreError::JobActive(_))
    ));
    // Another caller's key of the same name is its own; the token is busy for it (I3).
    let theirs = NewJob {
        idempotency: Some(IdempotencyKey {
            scope: "token:other",
            key: "deploy-42",
            request_hash: "h1",
        }),
        ..new_job(FlowType::Auto)
    };
    assert!(matches!(
        f.store.create_job(&theirs).await,
        Err(StoreError::JobActive(id)) if id == ids[0]
    ));
    let created = f
        .store
        .audit_page(0, 100)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.action == "rotation.requested")
        .count();
    assert_eq!(created, 1, "a replay creates and audits nothing");
}

async fn jobs_list_newest_first_in_pages_with_filters(f: Fixture) {
    use velvet_store::JobQuery;
    let env = |_: &str| None;
    let yaml: String = (0..5)
        .map(|i| format!("  - {{name: t{i}, source: {{kind: random}}}}\n"))
        .collect();
    let c = Config::parse(
        &format!("tokens:\n{yaml}"),
        Path::new("/tmp/v.yaml"),
        LoadOptions {
            env: &env,
            check_env: false,
        },
    )
    .unwrap();
    f.store.reconcile(&c.tokens, Utc::now()).await.unwrap();
    let mut made = Vec::new();
    for i in 0..5 {
        let token = format!("t{i}");
        let job = f
            .store
            .create_job(&NewJob {
                token: &token,
                ..new_job(FlowType::Auto)
            })
            .await
            .unwrap();
        made.push(job.job_id);
    }
    made.reverse(); // newest first
    let mut seen = Vec::new();
    let mut after: Option<(chrono::DateTime<Utc>, String)> = None;
    loop {
        let page = f
            .store
            .list_jobs(&JobQuery {
                limit: 2,
                after: after.as_ref().map(|(t, id)| (*t, id.as_str())),
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        let last = page.last().unwrap();
        after = Some((last.created_at, last.job_id.clone()));
        seen.extend(page.into_iter().map(|j| j.job_id));
    }
    assert_eq!(seen, made, "every job once, newest first");
    let only = f
        .store
        .list_jobs(&JobQuery {
            token: Some("t3"),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].token, "t3");
    let count = |status: &'static str| {
        let store = f.store.clone();
        async move {
            store
                .list_jobs(&JobQuery {
                    status: Some(status),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!(count("pending").await, 5);
    assert_eq!(count("succeeded").await, 0);
    // By requester and by creation time (the console's history filters).
    let by = |who: &'static str| {
        let store = f.store.clone();
        async move {
            store
                .list_jobs(&JobQuery {
                    requested_by: Some(who),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!((by("tester").await, by("scheduler").await), (5, 0));
    let times = |since, until| {
        let store = f.store.clone();
        async move {
            store
                .list_jobs(&JobQuery {
                    since,
                    until,
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
                .len()
        }
    };
    let hour = chrono::Duration::hours(1);
    assert_eq!(times(Some(Utc::now() - hour), None).await, 5);
    assert_eq!(times(Some(Utc::now() + hour), None).await, 0);
    assert_eq!(times(None, Some(Utc::now() - hour)).await, 0);
    assert_eq!(times(None, Some(Utc::now() + hour)).await, 5);
}

async fn a_lock_key_is_held_across_replicas(f: Fixture) {
    let other = f.another_handle().await;
    let a = f
        .store
        .try_lock_key("target", 1)
        .await
        .unwrap()
        .expect("free");
    if f.store.dialect() == Dialect::Sqlite {
        // One process serves SQLite; its engine orders the writes.
        assert!(other.try_lock_key("target", 1).await.unwrap().is_some());
        return;
    }
    let busy = |s: std::sync::Arc<dyn velvet_store::Store>, slots| async move {
        s.try_lock_key("target", slots).await.unwrap().is_none()
    };
    assert!(busy(other.clone(), 1).await, "held by the first replica");
    // Session locks are reentrant, so the store itself keeps one process off a slot it holds.
    assert!(busy(f.store.clone(), 1).await);
    let elsewhere = other.try_lock_key("elsewhere", 1).await.unwrap();
    assert!(elsewhere.is_some(), "another key is free");
    let second = other.try_lock_key("target", 2).await.unwrap();
    assert!(second.is_some(), "per_lock_key 2: a second slot");
    assert!(busy(f.store.clone(), 2).await, "both slots taken");
    a.release().await;
    let again = other.try_lock_key("target", 1).await.unwrap();
    assert!(again.is_some(), "freed by release");
    // A dropped hold is released in the background.
    drop(again);
    let start = std::time::Instant::now();
    let mut held = None;
    while held.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a dropped hold was never released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        held = f.store.try_lock_key("target", 1).await.unwrap();
    }
    // A replica whose connection dies (as with kill -9) frees its keys at once.
    let velvet_testkit::RawDb::Postgres(raw) = &f.raw else {
        unreachable!()
    };
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM (SELECT DISTINCT l.pid FROM pg_locks l
         JOIN pg_database d ON d.oid = l.database
         WHERE l.locktype = 'advisory' AND d.datname = current_database()) holders",
    )
    .fetch_all(raw)
    .await
    .unwrap();
    assert_eq!(killed, [true, true], "both replicas' lock connections");
    // Wait until the server has let the dead sessions' locks go.
    let start = std::time::Instant::now();
    loop {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
             WHERE l.locktype = 'advisory' AND d.datname = current_database()",
        )
        .fetch_one(raw)
        .await
        .unwrap();
        if held == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{held} locks stay"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The broken connection is reported as retryable and replaced on the next try.
    let mut retaken = f.store.try_lock_key("elsewhere", 1).await;
    if let Err(e) = &retaken {
        assert!(e.retryable(), "{e}");
        retaken = f.store.try_lock_key("elsewhere", 1).await;
    }
    assert!(
        retaken.unwrap().is_some(),
        "the other replica's key is free once its connection is gone"
    );
    drop((held, elsewhere, second));
}
