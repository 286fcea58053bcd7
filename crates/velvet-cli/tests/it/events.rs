//! The SSE stream of a job through the real server: snapshot, live changes, `end`, and
//! `Last-Event-ID` resumption with no gap and no duplicate.

use crate::common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const KEY: &str = "test-bootstrap-key-0123456789abcdef";

/// One parsed SSE event.
#[derive(Debug, Clone)]
struct Sse {
    id: i64,
    event: String,
    data: Value,
}

fn parse(body: &str) -> Vec<Sse> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut e = Sse {
                id: -1,
                event: String::new(),
                data: Value::Null,
            };
            let mut any = false;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    e.id = v.trim().parse().unwrap();
                    any = true;
                } else if let Some(v) = line.strip_prefix("event:") {
                    e.event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    e.data = serde_json::from_str(v.trim()).unwrap();
                }
            }
            any.then_some(e)
        })
        .collect()
}

/// Reads a whole stream (it closes after `end`), in a thread, with a deadline.
/// Opens a stream and reads it to its end on a thread. It returns once the answer's headers
/// came, which the server sends after the stream follows the job: every later change reaches it.
fn read_stream(url: String, last_event_id: Option<i64>) -> std::thread::JoinHandle<(u16, String)> {
    let mut req = http()
        .get(url)
        .bearer_auth(KEY)
        .timeout(Duration::from_secs(30));
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let r = req.send().unwrap();
    let code = r.status().as_u16();
    std::thread::spawn(move || (code, r.text().unwrap()))
}

fn wait_awaiting(s: &Server, job: &str, awaiting: &str) {
    let start = Instant::now();
    loop {
        let (_, j) = s.call("GET", &format!("/api/v1/rotations/{job}"), Some(KEY), None);
        if j["awaiting"] == awaiting {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "waited for {awaiting}: {j}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stream_shows_the_state_then_every_change_then_ends_and_resumes_exactly() {
    let w = Workdir::new();
    w.write_config(
        "
defaults: {grace_period: 0s}
tokens:
  - name: api
    flow: staged
    source: {kind: random}
    consumers:
      - {name: env, kind: file, path: app.env, format: dotenv, key: API_TOKEN}
      - {name: cfg, kind: file, path: app.json, format: json, key: token}
",
    );
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let (code, job) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    assert_eq!(code, 202, "{job}");
    let id = job["job_id"].as_str().unwrap().to_string();
    wait_awaiting(&s, &id, "proceed_distribute");

    let url = s.url(&format!("/api/v1/rotations/{id}/events"));
    let live = read_stream(url.clone(), None);
    let stage = format!("/api/v1/rotations/{id}/stage");
    let (code, body) = s.call(
        "POST",
        &stage,
        Some(KEY),
        Some(json!({"action": "proceed_distribute"})),
    );
    assert_eq!(code, 200, "{body}");
    wait_awaiting(&s, &id, "proceed_revoke");
    let (code, body) = s.call(
        "POST",
        &stage,
        Some(KEY),
        Some(json!({"action": "proceed_revoke"})),
    );
    assert_eq!(code, 200, "{body}");

    let (code, text) = live.join().unwrap();
    assert_eq!(code, 200);
    let events = parse(&text);
    // The snapshot: the job awaiting distribute, then each consumer, all at one id.
    assert_eq!(events[0].event, "job", "{text}");
    assert_eq!(events[0].data["awaiting"], "proceed_distribute");
    let snapshot_id = events[0].id;
    let consumers: Vec<&Sse> = events[1..3].iter().collect();
    assert!(
        consumers
            .iter()
            .all(|e| e.event == "consumer" && e.id == snapshot_id)
    );
    assert_eq!(consumers[0].data["job_id"], id.as_str());
    assert_eq!(consumers[0].data["status"], "pending");
    // Then live changes, each numbered one after the other, then `end`, then the close.
    let live_events = &events[3..];
    let last = live_events.last().unwrap();
    assert_eq!(last.event, "end", "{text}");
    let changes = &live_events[..live_events.len() - 1];
    for (i, e) in changes.iter().enumerate() {
        assert_eq!(
            e.id,
            snapshot_id + 1 + i as i64,
            "no gap, no duplicate: {text}"
        );
    }
    assert!(
        changes
            .iter()
            .any(|e| e.event == "consumer" && e.data["status"] == "verified")
    );
    let final_job = changes.iter().rev().find(|e| e.event == "job").unwrap();
    assert_eq!(final_job.data["status"], "succeeded");

    // Resuming from any id gives exactly the events after it.
    let (_, all) = read_stream(url.clone(), Some(0)).join().unwrap();
    let all = parse(&all);
    let seqs: Vec<i64> = all
        .iter()
        .filter(|e| e.event != "end")
        .map(|e| e.id)
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let mid = seqs.len() as i64 / 2;
    let (_, tail) = read_stream(url.clone(), Some(mid)).join().unwrap();
    let tail = parse(&tail);
    assert_eq!(tail.first().unwrap().id, mid + 1);
    assert_eq!(
        tail.len() as i64,
        seqs.len() as i64 - mid + 1,
        "the tail plus `end`"
    );
    // A finished job's stream, resumed at its last event, just ends.
    let (_, done) = read_stream(url.clone(), Some(*seqs.last().unwrap()))
        .join()
        .unwrap();
    let done = parse(&done);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].event, "end");

    let r = http().get(&url).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http()
        .get(&url)
        .bearer_auth(KEY)
        .header("Last-Event-ID", "yesterday")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let r = http()
        .get(s.url("/api/v1/rotations/rot_aaaaaaaaaaaaaaaaaaaaaaaaaa/events"))
        .bearer_auth(KEY)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}
