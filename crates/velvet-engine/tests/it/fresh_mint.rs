//! A mint that keeps failing stops in `failed` with a readable reason, and `retry_failed` mints a
//! fresh value instead of retrying the same one (the failure peers' users reported).

use crate::harness::OPERATOR;
use chrono::Utc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use velvet_core::config::{Config, FlowType, LoadOptions};
use velvet_core::rotation::{Action, JobStatus, Stage};
use velvet_engine::{Engine, EngineOptions, StageRequest};

use velvet_store::{Dialect, NewJob};
use velvet_testkit::Fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_a_failed_mint_uses_a_fresh_value() {
    let redis_url =
        std::env::var("VELVET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let user = velvet_testkit::unique_name("velvet_m");
    let f = Fixture::new(Dialect::Sqlite).await;
    let yaml = format!(
        "defaults: {{retry: {{attempts: 2, initial_backoff: 10ms, max_backoff: 20ms}}, grace_period: 0s}}\ntokens:\n  - name: cache\n    flow: auto\n    source: {{kind: redis_acl, admin_url_env: REDIS_ADMIN, user: {user}}}\n"
    );
    let env = |_: &str| None;
    let config = Config::parse(
        &yaml,
        &f.dir.path().join("v.yaml"),
        LoadOptions {
            env: &env,
            check_env: false,
        },
    )
    .unwrap();
    f.store.reconcile(&config.tokens, Utc::now()).await.unwrap();
    let mut opts = EngineOptions::for_this_process();
    opts.poll_interval = Duration::from_millis(20);
    let url = redis_url.clone();
    opts.env = Arc::new(move |n| (n == "REDIS_ADMIN").then(|| url.clone()));
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
            requested_by: "t",
            requested_role: Some(velvet_core::identity::Role::Admin),
            reason: None,
            idempotency: None,
            schedule_slot: None,
            given: None,
        })
        .await
        .unwrap();
    engine.nudge();
    let until = |stage: Stage, status: JobStatus| {
        let (store, id) = (f.store.clone(), job.job_id.clone());
        async move {
            let start = Instant::now();
            loop {
                let j = store.get_job(&id).await.unwrap().unwrap();
                if j.state.stage == stage && j.state.status == status {
                    return j;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "{:?}/{:?} {:?}",
                    j.state.stage,
                    j.state.status,
                    j.error
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let failed = until(Stage::Mint, JobStatus::Failed).await;
    let reason = failed.error.unwrap();
    assert!(
        reason.contains(&format!("Redis ACL user `{user}` does not exist")),
        "a readable reason: {reason}"
    );
    assert_eq!(failed.new_version, Some(1));

    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg("~*")
        .arg("+@all")
        .query_async(&mut conn)
        .await
        .unwrap();
    engine
        .stage(
            &OPERATOR,
            &job.job_id,
            StageRequest::new(Action::RetryFailed),
        )
        .await
        .unwrap();
    let done = until(Stage::Done, JobStatus::Succeeded).await;
    assert_eq!(
        done.new_version,
        Some(2),
        "a fresh value, not the one that failed"
    );
    let labels: Vec<_> = f
        .store
        .list_versions("cache")
        .await
        .unwrap()
        .iter()
        .map(|v| (v.version, v.label.as_str()))
        .collect();
    assert_eq!(labels, [(2, "current"), (1, "discarded")]);
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut conn)
        .await
        .unwrap();
}
