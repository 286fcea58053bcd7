//! B8: the scheduler's pass over every token with a schedule (design §11, issue 13): at 10,000
//! tokens it must cost at most 50 ms, and ten times the tokens must cost at most ten times the
//! time. Half the tokens use `rotate_every`, half a cron in Europe/Berlin with window and
//! jitter, under two blackouts; nothing is due, as in the steady state between rotations.

use crate::Row;
use chrono::Utc;
use std::time::{Duration, Instant};
use velvet_engine::{Engine, EngineOptions};
use velvet_store::Dialect;
use velvet_testkit::Fixture;

fn yaml(n: usize) -> String {
    let mut y = String::from(
        "blackouts:\n  - {name: freeze, from: \"2030-12-20T00:00:00Z\", to: \"2031-01-04T00:00:00Z\"}\n  - {name: weekends, cron: \"0 0 * * SAT\", timezone: UTC, duration: 48h}\ntokens:\n",
    );
    for i in 0..n {
        let cadence = if i % 2 == 0 {
            "rotate_every: 30d".to_string()
        } else {
            "schedule: {cron: \"0 3 * * MON\", timezone: Europe/Berlin, window: 2h, jitter: 10m}"
                .to_string()
        };
        y.push_str(&format!(
            "  - {{name: t{i:05}, {cadence}, source: {{kind: random}}}}\n"
        ));
    }
    y
}

/// The median of `runs` steady passes over `n` tokens, after a first pass that compiles the
/// cadences and writes every `next_rotation_at`.
async fn pass_ms(n: usize, runs: usize) -> (f64, f64) {
    let f = Fixture::new(Dialect::Sqlite).await;
    let config = crate::job::parse(&yaml(n), &f);
    f.store.reconcile(&config.tokens, Utc::now()).await.unwrap();
    let mut opts = EngineOptions::for_this_process();
    opts.lead_scheduler = false;
    let engine = Engine::new(
        f.store.clone(),
        f.keyring.clone(),
        velvet_core::config::live(config),
        opts,
    );
    let now = Utc::now();
    let t = Instant::now();
    let first = engine.schedule_pass(now).await.unwrap();
    let cold = t.elapsed();
    assert_eq!(first.tokens, n);
    assert!(first.started.is_empty(), "nothing is due in the benchmark");
    let t = Instant::now();
    f.store.schedule_standing().await.unwrap();
    eprintln!(
        "B8: {n} tokens: reading their standing alone takes {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let r = engine.schedule_pass(now).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(r.moved, 0, "a steady pass writes nothing");
    }
    times.sort();
    (
        times[runs / 2].as_secs_f64() * 1000.0,
        cold.as_secs_f64() * 1000.0,
    )
}

pub async fn run(tokens: usize) -> Vec<Row> {
    let small = tokens / 10;
    eprintln!("B8: scheduler passes over {small} and {tokens} tokens…");
    let (small_ms, _) = pass_ms(small, 7).await;
    let (ms, cold_ms) = pass_ms(tokens, 7).await;
    eprintln!(
        "B8: first pass over {tokens} tokens (compiles, writes every next_rotation_at): {cold_ms:.1} ms"
    );
    vec![
        Row {
            id: "B8",
            measure: format!("scheduler passes/s over {tokens} tokens ÷ 20/s (50 ms)"),
            velvet: 1000.0 / ms,
            reference: 20.0,
            unit: "passes/s",
            target: 1.0,
        },
        Row {
            id: "B8x10",
            measure: format!("10 × pass({small}) ÷ pass({tokens}) (linear or better)"),
            velvet: small_ms * 10.0,
            reference: ms,
            unit: "ms",
            target: 1.0,
        },
    ]
}
