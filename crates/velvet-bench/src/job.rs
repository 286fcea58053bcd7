//! Running one rotation job through the real engine on a throwaway SQLite store, and timing its
//! distribute stage from the job's own events.

use chrono::Utc;
use std::time::{Duration, Instant};
use velvet_core::config::{Config, FlowType, LoadOptions};
use velvet_core::rotation::{JobStatus, Stage};
use velvet_engine::{Engine, EngineOptions};
use velvet_store::{Dialect, NewJob};
use velvet_testkit::Fixture;

/// `yaml` as a `velvet.yaml` beside the fixture's store, its `*_env` variables unchecked.
pub fn parse(yaml: &str, f: &Fixture) -> Config {
    let env = |_: &str| None;
    Config::parse(
        yaml,
        &f.dir.path().join("velvet.yaml"),
        LoadOptions {
            env: &env,
            check_env: false,
        },
    )
    .unwrap()
}

/// Seconds from the job of token `token` (declared in `yaml`, run as `emergency`) entering
/// distribute to leaving it; every `*_env` variable reads as `env_value(name)`.
pub async fn distribute_seconds(
    yaml: &str,
    token: &str,
    env_value: velvet_engine::EnvLookup,
) -> f64 {
    let f = Fixture::new(Dialect::Sqlite).await;
    let config = parse(yaml, &f);
    f.store.reconcile(&config.tokens, Utc::now()).await.unwrap();
    let mut opts = EngineOptions::for_this_process();
    opts.poll_interval = Duration::from_millis(10);
    opts.env = env_value;
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
            token,
            flow: FlowType::Emergency,
            requested_by: "bench",
            requested_role: Some(velvet_core::identity::Role::Admin),
            reason: None,
            idempotency: None,
            schedule_slot: None,
            given: None,
        })
        .await
        .unwrap();
    engine.nudge();
    let started = Instant::now();
    loop {
        let j = f.store.get_job(&job.job_id).await.unwrap().unwrap();
        if j.state.stage == Stage::Done && j.state.status == JobStatus::Succeeded {
            break;
        }
        assert!(j.state.status != JobStatus::Failed, "{:?}", j.error);
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the job did not finish"
        );
        // Polling a 10,000-consumer job is itself costly; the timing comes from events anyway.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The job's own events say when distribute began and ended.
    let events = f.store.job_events(&job.job_id, 0, 1_000_000).await.unwrap();
    let jobs: Vec<_> = events.iter().filter(|e| e.event == "job").collect();
    let begin = jobs
        .iter()
        .find(|e| e.data["stage"] == "distribute")
        .expect("distribute began")
        .at;
    let end = jobs
        .iter()
        .find(|e| e.data["stage"] == "revoke")
        .expect("distribute ended")
        .at;
    (end - begin).num_microseconds().unwrap() as f64 / 1e6
}
