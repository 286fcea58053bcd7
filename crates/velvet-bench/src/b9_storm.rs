//! B9: a notification storm (issue 13): 1,000 events at once drain through a webhook channel
//! that answers in 20 ms, at most 16 sends at a time (the limit Velvet keeps per pass), and a
//! B1 fan-out running meanwhile is not slowed: its distribute time beside the drain ÷ alone.

use crate::Row;
use chrono::Utc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use velvet_engine::{Engine, EngineOptions};
use velvet_store::Dialect;
use velvet_testkit::Fixture;

const LATENCY: Duration = Duration::from_millis(20);
const AT_ONCE: f64 = 16.0;

async fn receiver() -> String {
    let app = axum::Router::new().route(
        "/storm",
        axum::routing::post(|| async {
            tokio::time::sleep(LATENCY).await;
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/storm")
}

/// An engine whose outbox holds `n` events for one webhook channel; drains it and returns
/// the seconds it took.
async fn storm(n: usize, url: &str) -> f64 {
    let f = Fixture::new(Dialect::Sqlite).await;
    let yaml = format!(
        "notifications:\n  - {{name: pager, kind: webhook, url: '{url}', signing_secret_env: S, on: [overdue]}}\ntokens: []\n"
    );
    let config = crate::job::parse(&yaml, &f);
    let mut opts = EngineOptions::for_this_process();
    opts.lead_scheduler = false;
    opts.env = Arc::new(|_| Some("bench-secret".into()));
    let engine = Engine::new(
        f.store.clone(),
        f.keyring.clone(),
        velvet_core::config::live(config),
        opts,
    );
    let data = serde_json::json!({"detail": "past max_age"});
    for i in 0..n {
        f.store
            .record_standing(
                "overdue",
                &format!("t{i}"),
                &data,
                Duration::from_secs(86400),
                Utc::now(),
            )
            .await
            .unwrap();
    }
    let start = Instant::now();
    let mut delivered = 0;
    while delivered < n {
        engine.route_notifications().await.unwrap();
        delivered += engine.deliver_notifications(Utc::now()).await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let failed = f.store.failed_deliveries().await.unwrap();
    assert!(
        failed.is_empty(),
        "every notification delivered: {failed:?}"
    );
    secs
}

pub async fn run(events: usize, consumers: usize) -> Vec<Row> {
    let (url, base) = (receiver().await, crate::b1_fanout::receiver().await);
    eprintln!("B9: draining {events} notifications alone…");
    let drain = storm(events, &url).await;
    let bound = events as f64 * LATENCY.as_secs_f64() / AT_ONCE;
    eprintln!(
        "B9: {events} in {drain:.2}s (bound {bound:.2}s); B1 with {consumers} consumers alone…"
    );
    let alone = crate::b1_fanout::distribute_seconds(consumers, &base).await;
    eprintln!("B9: B1 alone {alone:.3}s; again beside a storm…");
    let url2 = url.clone();
    let storming = tokio::spawn(async move { storm(events, &url2).await });
    // Let the storm begin before the fan-out starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let beside = crate::b1_fanout::distribute_seconds(consumers, &base).await;
    let drained = storming.await.unwrap();
    eprintln!("B9: B1 beside the storm {beside:.3}s (the storm drained in {drained:.2}s)");
    vec![
        Row {
            id: "B9",
            measure: format!("{events} notifications: bound (16 × 20 ms) ÷ drain time"),
            velvet: bound,
            reference: drain,
            unit: "s",
            target: 0.5,
        },
        Row {
            id: "B9b1",
            measure: format!("B1 ({consumers} webhooks) alone ÷ beside the storm"),
            velvet: alone,
            reference: beside,
            unit: "s",
            target: 0.9,
        },
    ]
}
