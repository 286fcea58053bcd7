//! B1: one token, N webhook consumers answering after 50 ms, `engine.concurrency` 64. The lower
//! bound for distribute is `ceil(N / 64) × 50 ms`; the ratio is bound ÷ measured.

use crate::Row;
use axum::routing::post;
use std::sync::Arc;
use std::time::Duration;

const LATENCY: Duration = Duration::from_millis(50);
const CONCURRENCY: usize = 64;

pub(crate) async fn receiver() -> String {
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
pub(crate) async fn distribute_seconds(n: usize, base: &str) -> f64 {
    let mut yaml = format!(
        "engine: {{concurrency: {CONCURRENCY}}}\ntokens:\n  - name: fan\n    flow: emergency\n    source: {{kind: random}}\n    consumers:\n"
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "      - {{name: c{i}, kind: webhook, url: '{base}/hook/{i}', signing_secret_env: S}}\n"
        ));
    }
    crate::job::distribute_seconds(&yaml, "fan", Arc::new(|_| Some("bench-secret".into()))).await
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
