//! B6: mixed load. For a fixed time, authenticated API reads at a fixed rate (open loop: a slow
//! answer does not slow the next request) plus rotation kickoffs at a fixed rate, on SQLite and
//! on PostgreSQL. Passes with no errors, a read p99 under 10 ms, and every requested rotation
//! started and succeeded.

use crate::Row;
use crate::b4_sse::{KEY, start_server_env};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tokens the kickoffs go round: each is asked again only after `TOKENS / rotations_per_s`
/// seconds, far longer than one rotation takes.
const TOKENS: usize = 400;

#[derive(Default)]
struct Tally {
    read_ms: Vec<f64>,
    read_errors: u64,
    kickoff_errors: Vec<String>,
    jobs: Vec<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn one_store(
    label: &'static str,
    env: Vec<(String, String)>,
    seconds: u64,
    reads_per_s: u64,
    rotations_per_s: u64,
) -> Vec<Row> {
    let mut yaml = String::from("defaults: {grace_period: 0s}\ntokens:\n");
    for i in 0..TOKENS {
        yaml.push_str(&format!(
            "  - name: t{i}\n    flow: auto\n    source: {{kind: random}}\n    consumers:\n      - {{name: env, kind: file, path: t{i}.env, format: dotenv, key: TOKEN}}\n"
        ));
    }
    let env_refs: Vec<(String, String)> = env.clone();
    let server = tokio::task::spawn_blocking(move || {
        let e: Vec<(&str, &str)> = env_refs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        start_server_env(&yaml, &e)
    })
    .await
    .unwrap();
    let http = velvet_adapters::http::client();
    let base = server.base.clone();
    let created: serde_json::Value = http
        .post(format!("{base}/api/v1/auth/tokens"))
        .bearer_auth(KEY)
        .json(&json!({"name": "b6-reader", "role": "viewer"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reader = created["token"].as_str().unwrap().to_string();
    eprintln!(
        "B6 {label}: {reads_per_s} reads/s and {rotations_per_s} rotations/s for {seconds} s…"
    );
    let tally = Arc::new(Mutex::new(Tally::default()));
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    // Reads: GET one token (a different one each time), with the viewer's service token.
    {
        let (http, base, tally) = (http.clone(), base.clone(), tally.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / reads_per_s));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0usize;
            let mut inflight = tokio::task::JoinSet::new();
            while Instant::now() < end {
                tick.tick().await;
                n += 1;
                let (http, tally, reader) = (http.clone(), tally.clone(), reader.clone());
                let url = format!("{base}/api/v1/tokens/t{}", n % TOKENS);
                inflight.spawn(async move {
                    let started = Instant::now();
                    let ok = match http.get(&url).bearer_auth(&reader).send().await {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    let mut t = tally.lock().unwrap();
                    if ok {
                        t.read_ms.push(ms);
                    } else {
                        t.read_errors += 1;
                    }
                });
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
        });
    }
    // Kickoffs: the next token in turn, as the bootstrap admin.
    {
        let (http, base, tally) = (http.clone(), base.clone(), tally.clone());
        tasks.spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_nanos(1_000_000_000 / rotations_per_s));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0usize;
            let mut inflight = tokio::task::JoinSet::new();
            while Instant::now() < end {
                tick.tick().await;
                let (http, tally) = (http.clone(), tally.clone());
                let url = format!("{base}/api/v1/tokens/t{}/rotate", n % TOKENS);
                n += 1;
                inflight.spawn(async move {
                    let answer = http.post(&url).bearer_auth(KEY).send().await;
                    let mut t = tally.lock().unwrap();
                    match answer {
                        Ok(r) if r.status().as_u16() == 202 => {
                            drop(t);
                            let body: serde_json::Value = r.json().await.unwrap_or_default();
                            let mut t = tally.lock().unwrap();
                            match body["job_id"].as_str() {
                                Some(id) => t.jobs.push(id.to_string()),
                                None => t.kickoff_errors.push(format!("no job id: {body}")),
                            }
                        }
                        Ok(r) => t.kickoff_errors.push(format!("{} for {url}", r.status())),
                        Err(e) => t.kickoff_errors.push(e.to_string()),
                    }
                });
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
        });
    }
    while tasks.join_next().await.is_some() {}
    let (jobs, requested) = {
        let t = tally.lock().unwrap();
        (t.jobs.clone(), t.jobs.len() + t.kickoff_errors.len())
    };
    // Every started rotation must finish; give the tail a little time.
    let settle = Instant::now();
    let mut succeeded = 0usize;
    let mut other = Vec::new();
    for id in &jobs {
        loop {
            let j: serde_json::Value = http
                .get(format!("{base}/api/v1/rotations/{id}"))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or_default();
            match j["status"].as_str() {
                Some("succeeded") => {
                    succeeded += 1;
                    break;
                }
                Some("failed" | "aborted" | "rolled_back") => {
                    other.push(format!("{id}: {}", j["status"]));
                    break;
                }
                _ if settle.elapsed() > Duration::from_secs(60) => {
                    other.push(format!("{id}: still {}", j["status"]));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    let t = tally.lock().unwrap();
    let mut ms = t.read_ms.clone();
    ms.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&ms, 0.50), percentile(&ms, 0.99));
    let reads = ms.len() as u64 + t.read_errors;
    eprintln!(
        "B6 {label}: {reads} reads ({:.0}/s), {} errors, p50 {p50:.2} ms, p99 {p99:.2} ms; \
         {requested} rotations asked ({:.1}/s), {} started, {succeeded} succeeded",
        reads as f64 / seconds as f64,
        t.read_errors,
        requested as f64 / seconds as f64,
        jobs.len(),
    );
    for e in t.kickoff_errors.iter().take(5).chain(other.iter().take(5)) {
        eprintln!("B6 {label}: {e}");
    }
    let id = |sqlite, pg| if label == "SQLite" { sqlite } else { pg };
    vec![
        Row {
            id: id("B6s", "B6p"),
            measure: format!("{label}: 10 ms ÷ read p99 under mixed load"),
            velvet: 10.0,
            reference: p99,
            unit: "ms / ms",
            target: 1.0,
        },
        Row {
            id: id("B6s+", "B6p+"),
            measure: format!("{label}: reads and rotations without error ÷ asked"),
            velvet: (ms.len() + succeeded) as f64,
            reference: (reads as usize + requested) as f64,
            unit: "count",
            target: 1.0,
        },
    ]
}

pub async fn run(seconds: u64, reads_per_s: u64, rotations_per_s: u64) -> Vec<Row> {
    let mut rows = one_store("SQLite", vec![], seconds, reads_per_s, rotations_per_s).await;
    let url = velvet_testkit::fresh_postgres_db().await;
    rows.extend(
        one_store(
            "PostgreSQL",
            vec![("VELVET_DATABASE_URL".into(), url)],
            seconds,
            reads_per_s,
            rotations_per_s,
        )
        .await,
    );
    rows
}
