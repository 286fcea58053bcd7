//! B3: authenticated reads per second at 64 connections, measured by `wrk`: Velvet's
//! `GET /api/v1/tokens/{name}` with a service token ÷ OpenBao's
//! `GET /v1/database/static-roles/{name}` on the same machine, same run; and Velvet's p99.

use crate::Row;
use crate::b2_postgres::bao_with_static_roles;
use crate::b4_sse::{KEY, start_server_with};
use serde_json::json;
use std::process::Command;
use velvet_testkit::servers::PasswordPostgres;

const SECONDS: u32 = 5;

/// Requests/s and p99 latency (ms) of `wrk -t2 -c64 --latency` against `url`.
fn wrk(url: &str, header: &str) -> (f64, f64) {
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c64",
            &format!("-d{SECONDS}s"),
            "--latency",
            "-H",
            header,
            url,
        ])
        .output()
        .expect("wrk runs (scripts/bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk said:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| {
            let v = v.trim();
            let (n, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
            let n: f64 = n.parse().unwrap_or(f64::NAN);
            match unit {
                "us" => n / 1000.0,
                "s" => n * 1000.0,
                _ => n,
            }
        })
        .unwrap_or(f64::NAN);
    // Errors (non-2xx) would make a fast figure meaningless.
    assert!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    (rps, p99)
}

pub async fn run() -> Vec<Row> {
    eprintln!("B3: OpenBao with one static role…");
    let pg = tokio::task::spawn_blocking(PasswordPostgres::start)
        .await
        .unwrap();
    let b = bao_with_static_roles(&pg, "b3", 1).await;
    let http = velvet_adapters::http::client();
    let bao_url = format!("{}/v1/database/static-roles/b3_0", b.addr);
    let bao_header = format!("X-Vault-Token: {}", b.token);
    let (bao_rps, bao_p99) = tokio::task::spawn_blocking(move || wrk(&bao_url, &bao_header))
        .await
        .unwrap();
    eprintln!("B3: OpenBao {bao_rps:.0} req/s, p99 {bao_p99:.2} ms");
    drop(b);

    let server = tokio::task::spawn_blocking(|| {
        start_server_with(
            "tokens:\n  - name: api\n    source: {kind: random}\n    consumers:\n      - {name: env, kind: file, path: app.env, format: dotenv, key: TOKEN}\n",
        )
    })
    .await
    .unwrap();
    let created: serde_json::Value = http
        .post(format!("{}/api/v1/auth/tokens", server.base))
        .bearer_auth(KEY)
        .json(&json!({"name": "bench", "role": "viewer"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = format!(
        "Authorization: Bearer {}",
        created["token"].as_str().unwrap()
    );
    let url = format!("{}/api/v1/tokens/api", server.base);
    let (rps, p99) = tokio::task::spawn_blocking(move || wrk(&url, &header))
        .await
        .unwrap();
    eprintln!("B3: Velvet {rps:.0} req/s, p99 {p99:.2} ms");
    vec![
        Row {
            id: "B3",
            measure: "GET a token, 64 connections, service token ÷ OpenBao static-role read".into(),
            velvet: rps,
            reference: bao_rps,
            unit: "req/s",
            target: 2.0,
        },
        Row {
            id: "B3p99",
            measure: "10 ms ÷ Velvet's p99 latency in the same run".into(),
            velvet: 10.0,
            reference: p99,
            unit: "ms / ms",
            target: 1.0,
        },
    ]
}
