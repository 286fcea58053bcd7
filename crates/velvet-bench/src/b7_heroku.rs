//! B7: one token with N `heroku_config_var` consumers (one app each) behind the Heroku fake,
//! answering after 100 ms and enforcing Heroku's token bucket on a faster clock: 100 requests,
//! refilled at 10 a second, `RateLimit-Remaining` on every answer, 429 when empty. Velvet must
//! keep to the budget (zero 429s) and finish within 1.1× of the time the budget allows for the
//! requests it makes: (requests − 100) ÷ 10 s, plus one answer's latency.

use crate::Row;
use std::sync::Arc;
use std::time::Duration;
use velvet_fakes::heroku::Heroku;

const LATENCY: Duration = Duration::from_millis(100);
const BUCKET: u32 = 100;
const REFILL_PER_S: f64 = 10.0;
const KEY: &str = "bench-heroku-api-key-0123456789";

pub async fn run(apps: usize) -> Vec<Row> {
    let fake = Heroku::start(KEY).await;
    let mut yaml = String::from(
        "engine: {concurrency: 64}\ntokens:\n  - name: fleet\n    flow: emergency\n    source: {kind: random}\n    consumers:\n",
    );
    for i in 0..apps {
        fake.add_app(&format!("app-{i}"), &[("OTHER", "kept")]);
        yaml.push_str(&format!(
            "      - {{name: a{i}, kind: heroku_config_var, app: app-{i}, key: API_TOKEN, api_key_env: HEROKU_API_KEY, api_url: '{}'}}\n",
            fake.url()
        ));
    }
    fake.set_delay(LATENCY);
    fake.set_budget(BUCKET, REFILL_PER_S);
    eprintln!(
        "B7: distributing to {apps} Heroku apps through a {BUCKET}-request bucket refilled at {REFILL_PER_S}/s…"
    );
    let took =
        crate::job::distribute_seconds(&yaml, "fleet", Arc::new(|_| Some(KEY.to_string()))).await;
    let (requests, limited) = fake.requests();
    let allowed =
        (requests as f64 - f64::from(BUCKET)).max(0.0) / REFILL_PER_S + LATENCY.as_secs_f64();
    eprintln!(
        "B7: {requests} requests in {took:.1}s (the budget allows {allowed:.1}s), {limited} answered 429"
    );
    for i in 0..apps {
        assert_eq!(fake.releases(&format!("app-{i}")), 1, "app-{i}");
    }
    vec![
        Row {
            id: "B7",
            measure: format!(
                "budget time ÷ distribute time, {apps} Heroku apps, {requests} requests"
            ),
            velvet: allowed,
            reference: took,
            unit: "s / s",
            target: 1.0 / 1.1,
        },
        Row {
            id: "B7-429",
            measure: "answers that were 429 (must be 0): 1 ÷ (1 + 429s)".into(),
            velvet: 1.0,
            reference: 1.0 + limited as f64,
            unit: "ratio",
            target: 1.0,
        },
    ]
}
