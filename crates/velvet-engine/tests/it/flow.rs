//! The engine end to end on the embedded store: real files and processes as consumers.

use crate::harness::*;
use chrono::Utc;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use velvet_core::config::FlowType;
use velvet_core::job::ConsumerStatus;
use velvet_core::keyring::version_aad;
use velvet_core::rotation::{Action, JobStatus, Stage};
use velvet_core::secret::SecretValue;
use velvet_engine::{Engine, EngineOptions, ServiceError, StageRequest};
use velvet_store::{Dialect, NewJob};
use velvet_testkit::Fixture;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_flow_pauses_twice_and_revokes_only_after_every_consumer_is_verified() {
    let h = harness("", "staged").await;
    let job = h.kickoff(FlowType::Staged).await;
    h.until(
        &job.job_id,
        "proceed_distribute",
        is(Stage::Distribute, JobStatus::AwaitingConfirmation),
    )
    .await;
    assert_eq!(
        h.labels().await,
        [(2, "pending"), (1, "current")],
        "I1: the new value is stored before distribution"
    );
    assert!(
        h.env_file().contains("API_TOKEN=version-one"),
        "nothing distributed before confirmation"
    );
    h.act(&job.job_id, Action::ProceedDistribute).await.unwrap();
    let j = h
        .until(
            &job.job_id,
            "proceed_revoke",
            is(Stage::Revoke, JobStatus::AwaitingConfirmation),
        )
        .await;
    assert!(
        j.consumers
            .iter()
            .all(|c| c.status == ConsumerStatus::Verified && c.fingerprint.is_some()),
        "{:?}",
        j.consumers
    );
    let new = h.value(2).await;
    assert_eq!(
        h.env_file(),
        format!("OTHER=kept\nAPI_TOKEN={new}\nAPI_TOKEN_PREVIOUS=version-one\n"),
        "dual acceptance until revoke"
    );
    assert_eq!(
        std::fs::read_to_string(h.f.dir.path().join("hook.out")).unwrap(),
        new
    );
    assert_eq!(h.labels().await, [(2, "current"), (1, "previous")]);
    h.act(&job.job_id, Action::ProceedRevoke).await.unwrap();
    let j = h
        .until(
            &job.job_id,
            "succeeded",
            is(Stage::Done, JobStatus::Succeeded),
        )
        .await;
    assert!(j.finished_at.is_some());
    assert_eq!(h.env_file(), format!("OTHER=kept\nAPI_TOKEN={new}\n"));
    assert_eq!(h.labels().await, [(2, "current"), (1, "revoked")]);
    let events = h.f.store.job_events(&job.job_id, 0, 1000).await.unwrap();
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(events.last().unwrap().data["status"], "succeeded");
    assert!(h.f.store.verify_audit(&h.f.keyring, None).await.unwrap().ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_consumer_blocks_revoke_then_rollback_restores_everything() {
    let h = harness(
        "      - {name: broken, kind: exec, command: [sh, -c, 'echo nope >&2; exit 3']}\n",
        "auto",
    )
    .await;
    let job = h.kickoff(FlowType::Auto).await;
    let j = h
        .until(
            &job.job_id,
            "failed",
            is(Stage::Distribute, JobStatus::Failed),
        )
        .await;
    let broken = j.consumers.iter().find(|c| c.consumer == "broken").unwrap();
    assert_eq!(
        (
            broken.status,
            broken.last_error.as_deref().map(|e| e.contains("nope"))
        ),
        (ConsumerStatus::Failed, Some(true))
    );
    assert!(
        j.error
            .as_deref()
            .unwrap()
            .contains("1 of 3 consumer(s) failed: broken"),
        "{:?}",
        j.error
    );
    assert!(
        j.consumers
            .iter()
            .filter(|c| c.consumer != "broken")
            .all(|c| c.status == ConsumerStatus::Verified),
        "one bad target does not stop the others"
    );
    // I2: no revoke while a consumer is not verified.
    let e = h.act(&job.job_id, Action::ProceedRevoke).await.unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
    assert_eq!(
        h.labels().await,
        [(2, "pending"), (1, "current")],
        "the previous value was never revoked"
    );
    h.act(&job.job_id, Action::Rollback).await.unwrap();
    let j = h
        .until(
            &job.job_id,
            "rolled back",
            is(Stage::Done, JobStatus::RolledBack),
        )
        .await;
    assert_eq!(
        h.env_file(),
        "OTHER=kept\nAPI_TOKEN=version-one\n",
        "the previous value is back"
    );
    assert_eq!(
        std::fs::read_to_string(h.f.dir.path().join("hook.out")).unwrap(),
        "version-one"
    );
    assert_eq!(h.labels().await, [(2, "discarded"), (1, "current")]);
    let previous_fp =
        h.f.keyring
            .fingerprint(&SecretValue::single("version-one".into()), Utc::now())
            .unwrap();
    assert_eq!(
        std::fs::read_to_string(h.f.dir.path().join("hook.meta")).unwrap(),
        format!("rollback {previous_fp}\n"),
        "the rollback step names the value it restores"
    );
    assert!(
        j.consumers
            .iter()
            .any(|c| c.status == ConsumerStatus::RolledBack)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_and_emergency_flows_run_to_the_end_unattended() {
    for flow in [FlowType::Auto, FlowType::Emergency] {
        let h = harness("", flow.as_str()).await;
        let job = h.kickoff(flow).await;
        h.until(
            &job.job_id,
            "succeeded",
            is(Stage::Done, JobStatus::Succeeded),
        )
        .await;
        assert_eq!(
            h.labels().await,
            [(2, "current"), (1, "revoked")],
            "{flow:?}"
        );
        let again = h.kickoff(flow).await;
        h.until(
            &again.job_id,
            "second rotation",
            is(Stage::Done, JobStatus::Succeeded),
        )
        .await;
        assert_eq!(
            h.labels().await,
            [(3, "current"), (2, "revoked"), (1, "revoked")]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_before_distribution_discards_the_new_value() {
    let h = harness("", "staged").await;
    let job = h.kickoff(FlowType::Staged).await;
    h.until(
        &job.job_id,
        "proceed_distribute",
        is(Stage::Distribute, JobStatus::AwaitingConfirmation),
    )
    .await;
    h.engine
        .stage(
            &OPERATOR,
            &job.job_id,
            StageRequest {
                reason: Some("wrong moment"),
                ..StageRequest::new(Action::Abort)
            },
        )
        .await
        .unwrap();
    h.until(&job.job_id, "aborted", is(Stage::Done, JobStatus::Aborted))
        .await;
    assert_eq!(h.labels().await, [(2, "discarded"), (1, "current")]);
    assert_eq!(h.env_file(), "OTHER=kept\nAPI_TOKEN=version-one\n");
    let e = h.act(&job.job_id, Action::Abort).await.unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)));
    assert!(matches!(
        h.act("rot_aaaaaaaaaaaaaaaaaaaaaaaaaa", Action::Abort).await,
        Err(ServiceError::NotFound(_))
    ));
}

#[tokio::test]
async fn the_claim_loop_stops_when_its_stop_channel_goes_away() {
    let f = Fixture::new(Dialect::Sqlite).await;
    let config = config(f.dir.path(), "", "auto");
    let engine = Engine::new(
        f.store.clone(),
        f.keyring.clone(),
        velvet_core::config::live(config),
        EngineOptions::for_this_process(),
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let claims = engine.start(rx);
    drop(stop);
    // It used to spin on the closed channel forever, claiming in a hot loop.
    tokio::time::timeout(Duration::from_secs(5), claims)
        .await
        .expect("the claim loop ends")
        .unwrap();
}

/// Design §4, the first-rotation rule: a token with no version in the store still runs the
/// source's revoke, so the password its Redis user had before Velvet managed it dies too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_rotation_retires_what_the_source_held_before_velvet() {
    let url =
        std::env::var("VELVET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis is required at {url} ({e})"));
    let user = velvet_testkit::unique_name("velvet_first");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">set-by-hand-before-velvet")
        .arg("~*")
        .arg("+@all")
        .query_async(&mut conn)
        .await
        .unwrap();
    let f = Fixture::new(Dialect::Sqlite).await;
    let yaml = format!(
        "
defaults: {{grace_period: 0s}}
tokens:
  - {{name: cache, flow: auto, source: {{kind: redis_acl, admin_url_env: REDIS_ADMIN, user: {user}}}}}
"
    );
    let config = parse(f.dir.path(), &yaml);
    f.store.reconcile(&config.tokens, Utc::now()).await.unwrap();
    let mut opts = EngineOptions::for_this_process();
    opts.poll_interval = Duration::from_millis(20);
    let admin = url.clone();
    opts.env = Arc::new(move |n| (n == "REDIS_ADMIN").then(|| admin.clone()));
    let engine = Engine::new(
        f.store.clone(),
        f.keyring.clone(),
        velvet_core::config::live(config),
        opts,
    );
    let (_stop, rx) = tokio::sync::watch::channel(false);
    engine.start(rx);
    let job = f
        .store
        .create_job(&NewJob {
            token: "cache",
            flow: FlowType::Auto,
            requested_by: "test",
            requested_role: Some(velvet_core::identity::Role::Admin),
            reason: None,
            idempotency: None,
            schedule_slot: None,
            given: None,
        })
        .await
        .unwrap();
    assert_eq!(job.previous_version, None, "a first rotation");
    engine.nudge();
    let start = Instant::now();
    loop {
        let j = f.store.get_job(&job.job_id).await.unwrap().unwrap();
        if j.state.status == JobStatus::Succeeded {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20) && j.state.status != JobStatus::Failed,
            "{:?} {:?}",
            j.state,
            j.error
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let auth = |p: &str| {
        let (client, user, p) = (client.clone(), user.clone(), p.to_string());
        async move {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            redis::cmd("AUTH")
                .arg(&user)
                .arg(&p)
                .query_async::<String>(&mut c)
                .await
                .is_ok()
        }
    };
    assert!(
        !auth("set-by-hand-before-velvet").await,
        "the pre-Velvet password still works after the first rotation"
    );
    let sealed = f.store.sealed_version("cache", 1).await.unwrap();
    let v1 = f.keyring.open(&sealed, &version_aad("cache", 1)).unwrap();
    assert!(auth(v1.get("password").unwrap().expose()).await);
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// The README lists exactly the crash points the code has.
#[test]
fn the_readme_lists_every_crash_point_and_no_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../../README.md")).unwrap();
    let sentence = readme
        .split("VELVET_CRASH_AT=<point>")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("the README names the crash points");
    let mut listed: Vec<&str> = sentence.split('`').skip(2).step_by(2).collect();
    listed.sort();
    let mut used = vec![];
    for file in ["src/runner.rs", "src/distribute.rs", "src/notifier.rs"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for part in text.split("crash_point(\"").skip(1) {
            used.push(part.split('"').next().unwrap().to_string());
        }
    }
    used.sort();
    let mut declared = velvet_engine::CRASH_POINTS.to_vec();
    declared.sort();
    assert_eq!(listed, declared, "README vs CRASH_POINTS");
    assert_eq!(used, declared, "calls vs CRASH_POINTS");
}

/// A consumer that took the new value and then failed its verify still gets the previous
/// value back on rollback; and neither a rollback nor an abort moves `last_rotated_at`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_reverts_a_failed_consumer_and_leaves_last_rotated_at() {
    let out = tempfile::tempdir().unwrap();
    let flaky = out.path().join("flaky.out");
    let extra = format!(
        "      - {{name: flaky, kind: exec, command: [sh, -c, 'cat > {}'], verify_command: [sh, -c, 'exit 3']}}\n",
        flaky.display()
    );
    let h = harness(&extra, "auto").await;
    let imported =
        h.f.store
            .token_view("api")
            .await
            .unwrap()
            .unwrap()
            .token
            .last_rotated_at;
    let job = h.kickoff(FlowType::Auto).await;
    let j = h
        .until(
            &job.job_id,
            "failed",
            is(Stage::Distribute, JobStatus::Failed),
        )
        .await;
    assert_eq!(std::fs::read_to_string(&flaky).unwrap(), h.value(2).await);
    assert!(
        j.consumers
            .iter()
            .any(|c| c.consumer == "flaky" && c.status == ConsumerStatus::Failed)
    );
    h.act(&job.job_id, Action::Rollback).await.unwrap();
    h.until(
        &job.job_id,
        "rolled back",
        is(Stage::Done, JobStatus::RolledBack),
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&flaky).unwrap(),
        "version-one",
        "the failed consumer holds the previous value again"
    );
    let last = |h: &Harness| {
        let store = h.f.store.clone();
        async move {
            store
                .token_view("api")
                .await
                .unwrap()
                .unwrap()
                .token
                .last_rotated_at
        }
    };
    assert_eq!(last(&h).await, imported, "a rolled-back job is no rotation");
}

/// A staged job rolled back at its revoke pause (the new version was promoted by then) does
/// not move `last_rotated_at`; one that succeeds does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_succeeded_rotation_moves_last_rotated_at() {
    let h = harness("", "staged").await;
    let last = || async {
        h.f.store
            .token_view("api")
            .await
            .unwrap()
            .unwrap()
            .token
            .last_rotated_at
    };
    let imported = last().await;
    let job = h.kickoff(FlowType::Staged).await;
    h.until(
        &job.job_id,
        "proceed_distribute",
        is(Stage::Distribute, JobStatus::AwaitingConfirmation),
    )
    .await;
    h.act(&job.job_id, Action::ProceedDistribute).await.unwrap();
    h.until(
        &job.job_id,
        "proceed_revoke",
        is(Stage::Revoke, JobStatus::AwaitingConfirmation),
    )
    .await;
    assert_eq!(last().await, imported, "promoted is not rotated yet");
    h.act(&job.job_id, Action::Rollback).await.unwrap();
    h.until(
        &job.job_id,
        "rolled back",
        is(Stage::Done, JobStatus::RolledBack),
    )
    .await;
    assert_eq!(last().await, imported);
    let job = h.kickoff(FlowType::Emergency).await;
    h.until(
        &job.job_id,
        "succeeded",
        is(Stage::Done, JobStatus::Succeeded),
    )
    .await;
    assert!(last().await > imported);
}

/// A failed mint can be aborted; a job whose token left velvet.yaml refuses to go on but can
/// be ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unfinished_job_has_a_way_to_end() {
    let h = harness("", "staged").await;
    let job = h.kickoff(FlowType::Staged).await;
    h.until(
        &job.job_id,
        "proceed_distribute",
        is(Stage::Distribute, JobStatus::AwaitingConfirmation),
    )
    .await;
    let dir = h.f.dir.path().to_path_buf();
    let parse = |yaml: &str| parse(&dir, yaml);
    // The token leaves the file (as a SIGHUP with it removed would do).
    h.config.store(Arc::new(parse("tokens: []\n")));
    let e = h
        .act(&job.job_id, Action::ProceedDistribute)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ServiceError::Conflict { message, .. } if message.contains("abort")),
        "{e}"
    );
    h.act(&job.job_id, Action::Abort).await.unwrap();
    let j = h
        .until(&job.job_id, "aborted", is(Stage::Done, JobStatus::Aborted))
        .await;
    assert!(
        j.error.as_deref().unwrap().contains("nothing was reverted"),
        "{:?}",
        j.error
    );
    assert_eq!(h.labels().await, [(2, "discarded"), (1, "current")]);

    // A mint that fails (its source cannot be built: the admin URL is not set) can be aborted.
    h.config.store(Arc::new(parse(
        "tokens: [{name: api, flow: staged, source: {kind: redis_acl, admin_url_env: NOT_SET_ANYWHERE, user: u}}]\n",
    )));
    let job = h.kickoff(FlowType::Staged).await;
    h.until(
        &job.job_id,
        "mint failed",
        is(Stage::Mint, JobStatus::Failed),
    )
    .await;
    h.act(&job.job_id, Action::Abort).await.unwrap();
    h.until(&job.job_id, "aborted", is(Stage::Done, JobStatus::Aborted))
        .await;
}

/// SIGHUP's reload resizes the engine's concurrency: down to one consumer at a time, then up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_resizes_the_concurrency_limit() {
    let h = harness("", "auto").await;
    let dir = h.f.dir.path().to_path_buf();
    let running = dir.join("running");
    std::fs::create_dir(&running).unwrap();
    let counts = dir.join("counts");
    // Each consumer notes how many consumers run at once, from inside its own run.
    let probe = format!(
        "touch {r}/$$; sleep 0.3; ls {r} | wc -l >> {c}; rm {r}/$$",
        r = running.display(),
        c = counts.display()
    );
    let with = |concurrency: usize| {
        let consumers: String = (0..4)
            // Distinct arguments, so distinct lock keys: only the global limit applies.
            .map(|i| {
                format!("      - {{name: c{i}, kind: exec, command: [sh, -c, '{probe}', c{i}]}}\n")
            })
            .collect();
        let yaml = format!(
            "engine: {{concurrency: {concurrency}}}\ndefaults: {{grace_period: 0s}}\ntokens:\n  - name: api\n    flow: auto\n    source: {{kind: random}}\n    consumers:\n{consumers}"
        );
        parse(&dir, &yaml)
    };
    let most_at_once = || {
        let n = std::fs::read_to_string(&counts)
            .unwrap()
            .lines()
            .map(|l| l.trim().parse::<usize>().unwrap())
            .max()
            .unwrap();
        std::fs::remove_file(&counts).unwrap();
        n
    };
    h.config.store(Arc::new(with(1)));
    h.engine.resize();
    rotate_declared(&h).await;
    assert_eq!(most_at_once(), 1, "concurrency 1 after the reload");
    h.config.store(Arc::new(with(4)));
    h.engine.resize();
    rotate_declared(&h).await;
    assert!(most_at_once() >= 2, "more at once after raising it");
}

/// Reconciles the configuration in force and runs one auto rotation to its end.
async fn rotate_declared(h: &Harness) {
    h.f.store
        .reconcile(&h.engine_config().tokens, Utc::now())
        .await
        .unwrap();
    let job = h.kickoff(FlowType::Auto).await;
    h.until(
        &job.job_id,
        "succeeded",
        is(Stage::Done, JobStatus::Succeeded),
    )
    .await;
}
