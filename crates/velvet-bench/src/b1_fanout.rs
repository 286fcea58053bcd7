//! B1: one token, N webhook consumers answering after 50 ms, `engine.concurrency` 64. The lower
//! bound for distribute is `ceil(N / 64) × 50 ms`; the ratio is bound ÷ measured.

use crate::Row;
use axum::routing::post;
use chrono::Utc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use velvet_core::config::{Config, FlowType, LoadOptions};
use velvet_core::rotation::{JobStatus, Stage};
use velvet_engine::{Engine, EngineOptions};
use velvet_store::{Dialect, NewJob};
use velvet_testkit::Fixture;

const LATENCY: Duration = Duration::from_millis(50);
const CONCURRENCY: usize = 64;

async fn receiver() -> String {
    let app = axum::Router::new().route(
        "/hook/{i}",
        post(|| async {
            tokio::time::sleep(LATENCY).await;
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Seconds from the job entering distribute to leaving it, for `n` consumers.
async fn distribute_seconds(n: usize, base: &str) -> f64 {
    let f = Fixture::new(Dialect::Sqlite).await;
    let mut yaml = format!(
        "engine: {{concurrency: {CONCURRENCY}}}\ntokens:\n  - name: fan\n    flow: emergency\n    source: {{kind: random}}\n    consumers:\n"
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "      - {{name: c{i}, kind: webhook, url: '{base}/hook/{i}', signing_secret_env: S}}\n"
        ));
    }
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
    opts.poll_interval = Duration::from_millis(10);
    opts.env = Arc::new(|_| Some("bench-secret".into()));
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
            token: "fan",
            flow: FlowType::Emergency,
            requested_by: "bench",
            requested_role: Some(velvet_core::identity::Role::Admin),
            reason: None,
            idempotency: None,
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
            "B1 did not finish"
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

pub async fn run(n: usize) -> Vec<Row> {
    let base = receiver().await;
    let bound = |n: usize| n.div_ceil(CONCURRENCY) as f64 * LATENCY.as_secs_f64();
    eprintln!("B1: distributing to {n} consumers…");
    let t1 = distribute_seconds(n, &base).await;
    eprintln!(
        "B1: {n} consumers in {t1:.3}s (bound {:.3}s); now {}×…",
        bound(n),
        10
    );
    let t10 = distribute_seconds(n * 10, &base).await;
    eprintln!(
        "B1: {} consumers in {t10:.3}s (bound {:.3}s)",
        n * 10,
        bound(n * 10)
    );
    vec![
        Row {
            id: "B1",
            measure: format!("fan-out bound ÷ distribute time, {n} webhooks @50ms, conc 64"),
            velvet: bound(n),
            reference: t1,
            unit: "s / s",
            target: 0.9,
        },
        Row {
            id: "B1×10",
            measure: format!("10× size: 10 ÷ (time {}  ÷ time {n})", n * 10),
            velvet: 10.0,
            reference: t10 / t1,
            unit: "ratio",
            target: 0.9,
        },
    ]
}
