//! The API and event stream of a server in this process.

use crate::harness::{KEY, start};
use reqwest::Method;
use serde_json::Value;
use velvet_core::job_view::RotationJobView;
use velvet_core::rotation::JobStatus;
use velvet_server::KickoffAccepted;

const AUTO_FILE: &str = "tokens:
  - name: api
    flow: auto
    source: {kind: random}
    consumers:
      - {name: env, kind: file, path: '{dir}/app.env', format: dotenv, key: API_TOKEN}
";

/// One Server-Sent Event: its id, name and JSON data.
#[derive(Debug)]
struct Sse {
    id: Option<i64>,
    event: String,
    data: Value,
}

fn parse_sse(text: &str) -> Vec<Sse> {
    text.split("\n\n")
        .filter(|block| block.lines().any(|l| l.starts_with("event:")))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            Sse {
                id: field("id:").and_then(|v| v.parse().ok()),
                event: field("event:").unwrap(),
                data: field("data:")
                    .and_then(|d| serde_json::from_str(&d).ok())
                    .unwrap_or(Value::Null),
            }
        })
        .collect()
}

#[tokio::test]
async fn every_answer_is_hardened_and_the_api_wants_a_credential() {
    let s = start(AUTO_FILE).await;
    let health = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.headers()["x-content-type-options"], "nosniff");
    assert_eq!(health.headers()["referrer-policy"], "same-origin");

    let bare = s.http.get(s.url("/api/v1/tokens")).send().await.unwrap();
    assert_eq!(bare.status(), 401);
    assert_eq!(bare.headers()["x-content-type-options"], "nosniff");
    let body: Value = bare.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized", "{body}");
    assert!(!body["message"].as_str().unwrap().is_empty(), "{body}");

    let wrong = s
        .http
        .get(s.url("/api/v1/tokens"))
        .bearer_auth(format!("{KEY}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let listed: Value =
        serde_json::from_str(&s.text(s.admin(Method::GET, "/api/v1/tokens")).await).unwrap();
    assert_eq!(listed["tokens"][0]["name"], "api", "{listed}");
    let missing = s
        .admin(Method::GET, "/api/v1/nothing-here")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    s.stop().await.unwrap();
}

/// A kickoff is driven by the engine in this process; its event stream replays the job from the
/// start, follows it to the end and closes, and a follower resuming with `Last-Event-ID` gets
/// exactly what came after.
#[tokio::test]
async fn a_kickoff_runs_to_its_end_and_its_event_stream_follows_and_resumes() {
    let s = start(AUTO_FILE).await;
    let r = s
        .admin(Method::POST, "/api/v1/tokens/api/rotate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let kicked: KickoffAccepted = r.json().await.unwrap();
    let events_path = format!("/api/v1/rotations/{}/events", kicked.job_id);

    // The stream ends by itself once the job is terminal, so reading it to the end is the wait.
    let text = s.text(s.admin(Method::GET, &events_path)).await;
    let events = parse_sse(&text);
    assert_eq!(
        events.first().map(|e| e.event.as_str()),
        Some("job"),
        "{text}"
    );
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("end"),
        "{text}"
    );
    let last_job = events.iter().rev().find(|e| e.event == "job").unwrap();
    assert_eq!(last_job.data["status"], "succeeded", "{text}");
    assert!(
        events
            .iter()
            .any(|e| e.event == "consumer" && e.data["status"] == "verified"),
        "{text}"
    );

    let job: RotationJobView = serde_json::from_str(
        &s.text(s.admin(Method::GET, &format!("/api/v1/rotations/{}", kicked.job_id)))
            .await,
    )
    .unwrap();
    assert_eq!(job.state.status, JobStatus::Succeeded);
    let fingerprint = job.consumers[0].fingerprint.clone().unwrap();
    let file = std::fs::read_to_string(s.dir.path().join("app.env")).unwrap();
    assert!(file.starts_with("API_TOKEN="), "{file}");
    assert!(
        !text.contains(file.trim().trim_start_matches("API_TOKEN=")),
        "no value in events"
    );
    assert!(!fingerprint.is_empty());

    // The opening snapshot carries the seq it was read at, `end` the last one; changes count
    // up. Resuming after a change gives every later event, nothing before it or twice.
    let ids: Vec<i64> = events.iter().filter_map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] <= w[1]), "{ids:?}");
    let from = *ids
        .iter()
        .find(|&&i| i > ids[0])
        .expect("changes after the snapshot");
    let after = |evs: &[Sse]| -> Vec<(i64, String)> {
        evs.iter()
            .filter_map(|e| e.id.filter(|&i| i > from).map(|i| (i, e.event.clone())))
            .collect()
    };
    let resumed = s
        .text(
            s.admin(Method::GET, &events_path)
                .header("Last-Event-ID", from.to_string()),
        )
        .await;
    let resumed_events = parse_sse(&resumed);
    assert!(
        resumed_events.iter().all(|e| e.id.is_none_or(|i| i > from)),
        "{resumed}"
    );
    assert_eq!(after(&resumed_events), after(&events), "{resumed}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_stop_ends_serving_and_closes_the_port() {
    let s = start(AUTO_FILE).await;
    let addr = s.addr;
    s.stop().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens once stopped"
    );
}
