//! `GET /api/v1/rotations/{job_id}/events`: a job's changes as Server-Sent Events (design §5).
//! A new client first gets the current state (one `job` event, one `consumer` event per
//! consumer), then every change; a client reconnecting with `Last-Event-ID` gets exactly the
//! events after it. The store's event table is the source, so a job driven by another replica
//! streams the same; this replica's engine only wakes the stream early. Each stream has its own
//! task and a small buffer: a slow client waits alone and never holds up the engine.

use crate::auth::{Can, TokensRead};
use crate::{ApiError, AppState};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::Value;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use velvet_core::job::{Job, is_job_id};
use velvet_core::rotation::JobStatus;

/// How often a stream looks for events written by other replicas.
const POLL: Duration = Duration::from_millis(250);
const KEEP_ALIVE: Duration = Duration::from_secs(15);
const PAGE: i64 = 500;
/// Events a stream holds for a slow client before its reader waits.
const BUFFER: usize = 64;

pub async fn stream(
    _: Can<TokensRead>,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let missing = || ApiError::not_found(format!("rotation job `{job_id}` not found"));
    if !is_job_id(&job_id) {
        return Err(missing());
    }
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    ApiError::validation("Last-Event-ID: not an event id this stream gave out")
                })?,
        ),
    };
    let job = state.store.get_job(&job_id).await?.ok_or_else(missing)?;
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(pump(state, job, resume, tx));
    let body =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Ok(Sse::new(body).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn event(name: &str, seq: i64, data: &Value) -> Event {
    Event::default()
        .event(name)
        .id(seq.to_string())
        .data(data.to_string())
}

fn consumer_data(job: &Job) -> Vec<Value> {
    job.consumers
        .iter()
        .map(|c| {
            let mut v = serde_json::to_value(c).expect("consumers serialise");
            v["job_id"] = Value::String(job.job_id.clone());
            v
        })
        .collect()
}

fn is_terminal_job_event(name: &str, data: &Value) -> bool {
    name == "job"
        && data["status"]
            .as_str()
            .and_then(JobStatus::parse)
            .is_some_and(JobStatus::is_terminal)
}

/// Feeds one client until the job ends or the client goes away.
async fn pump(state: AppState, job: Job, resume: Option<i64>, tx: mpsc::Sender<Event>) {
    let send = |e: Event| {
        let tx = tx.clone();
        async move { tx.send(e).await.is_ok() }
    };
    let mut bus = state.engine.as_ref().map(|e| e.subscribe());
    let mut after = match resume {
        Some(n) => n,
        None => {
            // The seq first, then the state: a change racing the snapshot is sent again
            // (harmless, it carries its full state) rather than lost.
            let Ok(seq) = state.store.last_event_seq(&job.job_id).await else {
                return;
            };
            let job = match state.store.get_job(&job.job_id).await {
                Ok(Some(j)) => j,
                _ => return,
            };
            let data = serde_json::to_value(&job).expect("jobs serialise");
            if !send(event("job", seq, &data)).await {
                return;
            }
            for c in consumer_data(&job) {
                if !send(event("consumer", seq, &c)).await {
                    return;
                }
            }
            if job.state.status.is_terminal() {
                let _ = send(event("end", seq, &Value::Null)).await;
                return;
            }
            seq
        }
    };
    let mut checked_finished = false;
    loop {
        let events = match state.store.job_events(&job.job_id, after, PAGE).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(job_id = %job.job_id, error = %e, "reading job events failed; closing the stream");
                return;
            }
        };
        let mut ended = false;
        for e in &events {
            after = e.seq;
            ended |= is_terminal_job_event(&e.event, &e.data);
            if !send(event(&e.event, e.seq, &e.data)).await {
                return;
            }
        }
        if events.len() as i64 == PAGE {
            continue;
        }
        // A client resuming after the last event of a finished job is told it ended.
        if events.is_empty() && !checked_finished {
            checked_finished = true;
            ended = matches!(state.store.get_job(&job.job_id).await, Ok(Some(j)) if j.state.status.is_terminal());
        }
        if ended {
            let _ = send(event("end", after, &Value::Null)).await;
            return;
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(POLL) => {}
            changed = async {
                match bus.as_mut() {
                    Some(b) => loop {
                        match b.recv().await {
                            Ok(id) if id == job.job_id => break true,
                            Ok(_) => {}
                            // Missed some: look now rather than risk waiting a poll.
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break true,
                            Err(_) => break false,
                        }
                    },
                    None => std::future::pending().await,
                }
            } => if !changed { bus = None; }
        }
    }
}
