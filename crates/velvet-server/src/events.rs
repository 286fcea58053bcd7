//! `GET /api/v1/rotations/{job_id}/events`: a job's changes as Server-Sent Events (design §5).
//! A new client first gets the current state (one `job` event, one `consumer` event per
//! consumer), then every change; a client reconnecting with `Last-Event-ID` gets exactly the
//! events after it.
//!
//! One feed per followed job reads the store's event table (so a job driven by another replica
//! streams the same) and broadcasts each event, serialised once, to every client of that job:
//! a thousand clients cost one read per change, not a thousand. A client that falls behind the
//! broadcast, or sees a gap, catches up from the table itself; a slow client only ever waits on
//! its own buffer, never holding up the engine or the others.

use crate::auth::{Can, TokensRead};
use crate::error::{Unauthorized, Unavailable};
use crate::{ApiError, AppState};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::broadcast;
use utoipa::openapi::{Ref, RefOr, Schema};
use velvet_core::job::is_job_id;
use velvet_core::job_view::{ConsumerEvent, RotationJobView};
use velvet_core::rotation::JobStatus;
use velvet_core::rotation::Word as _;
use velvet_store::JobEvent;

/// How often a feed looks at the store unasked: a safety net, since this replica's engine
/// announces every change, with those of other replicas heard by LISTEN/NOTIFY.
const POLL: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(15);
const PAGE: i64 = 500;
/// Batches a feed holds for its slowest client before that client must catch up from the store.
const FEED_BUFFER: usize = 256;
/// How long a feed lets a burst of changes gather after its engine's first nudge, per client
/// following it, and at most: one batch wakes each client once instead of once per change.
/// Sending a batch to N clients costs N writes, so the more clients, the more a wait pays; a
/// lone follower waits 10 µs, 2,000 wait 20 ms.
const GATHER_PER_CLIENT: Duration = Duration::from_micros(10);
const GATHER_MAX: Duration = Duration::from_millis(25);

/// One stored event, encoded once as SSE bytes that every client shares.
#[derive(Debug)]
struct Item {
    seq: i64,
    bytes: Bytes,
    /// A `job` event whose job has finished.
    terminal: bool,
}

/// The events of one store read, in seq order, with their bytes joined once for the clients
/// that are exactly in step (nearly all of them).
#[derive(Debug)]
struct Batch {
    items: Vec<Item>,
    joined: Bytes,
}

impl Batch {
    fn new(items: Vec<Item>) -> Self {
        let mut joined = Vec::with_capacity(items.iter().map(|i| i.bytes.len()).sum());
        for i in &items {
            joined.extend_from_slice(&i.bytes);
            // Nothing after the end goes out.
            if i.terminal {
                break;
            }
        }
        Self {
            items,
            joined: Bytes::from(joined),
        }
    }
}

/// One event of the stream, as OpenAPI 3.1 describes an event-stream item: its `event` name,
/// `id` (the sequence number) and `data`, a JSON document whose schema depends on the name.
#[derive(Debug)]
pub struct StreamEvent;

impl utoipa::PartialSchema for StreamEvent {
    fn schema() -> RefOr<Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let event = |name: &str, data: RefOr<Schema>| {
            ObjectBuilder::new()
                .property(
                    "event",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some([name])),
                )
                .required("event")
                .property(
                    "id",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some("^[0-9]+$")),
                )
                .required("id")
                .property(
                    "data",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .content_media_type("application/json")
                        .content_schema(Some(data)),
                )
                .required("data")
        };
        let null = ObjectBuilder::new().schema_type(Type::Null).build();
        OneOfBuilder::new()
            .item(event("job", Ref::from_schema_name("RotationJob").into()))
            .item(event(
                "consumer",
                Ref::from_schema_name("ConsumerEvent").into(),
            ))
            .item(event("end", Schema::Object(null).into()))
            .into()
    }
}

impl utoipa::ToSchema for StreamEvent {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        use utoipa::PartialSchema;
        schemas.push(("RotationJob".into(), RotationJobView::schema()));
        RotationJobView::schemas(schemas);
        schemas.push(("ConsumerEvent".into(), ConsumerEvent::schema()));
        ConsumerEvent::schemas(schemas);
    }
}

/// An SSE event: JSON has no raw newlines, so `data` is always one line.
fn encode(name: &str, seq: i64, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\nid: {seq}\ndata: {data}\n\n"))
}

impl Item {
    fn from_event(e: &JobEvent) -> Self {
        Self {
            seq: e.seq,
            terminal: e.event == "job"
                && e.data["status"]
                    .as_str()
                    .and_then(JobStatus::parse)
                    .is_some_and(JobStatus::is_terminal),
            bytes: encode(&e.event, e.seq, &e.data.to_string()),
        }
    }
}

/// The live feeds, one per followed job; a feed lives while someone follows it.
#[derive(Debug, Default)]
pub struct Feeds {
    feeds: Mutex<HashMap<String, Weak<Feed>>>,
}

#[derive(Debug)]
struct Feed {
    tx: broadcast::Sender<Arc<Batch>>,
}

impl Feeds {
    /// Subscribes to `job_id`'s feed, starting one at `start` (a seq the caller read before
    /// this call) if there is none.
    fn follow(
        &self,
        state: &AppState,
        job_id: &str,
        start: i64,
    ) -> (Arc<Feed>, broadcast::Receiver<Arc<Batch>>) {
        let mut feeds = self.feeds.lock().expect("never poisoned");
        if let Some(feed) = feeds.get(job_id).and_then(Weak::upgrade) {
            let rx = feed.tx.subscribe();
            return (feed, rx);
        }
        feeds.retain(|_, f| f.strong_count() > 0);
        let (tx, rx) = broadcast::channel(FEED_BUFFER);
        let feed = Arc::new(Feed { tx });
        feeds.insert(job_id.to_string(), Arc::downgrade(&feed));
        tokio::spawn(run_feed(
            state.clone(),
            job_id.to_string(),
            Arc::downgrade(&feed),
            start,
        ));
        (feed, rx)
    }
}

/// Reads a job's new events from the store and broadcasts them, until nobody follows.
async fn run_feed(state: AppState, job_id: String, feed: Weak<Feed>, start: i64) {
    // From where the first follower stood before it subscribed: a feed that read its own start
    // later would take what changed in between for history, and a follower whose job ended in
    // that gap would wait for an `end` that no one sends.
    let mut after = start;
    let mut bus = state.engine.as_ref().map(|e| e.subscribe());
    loop {
        let Some(f) = feed.upgrade() else { return };
        match state.store.job_events(&job_id, after, PAGE).await {
            Ok(events) => {
                let full = events.len() as i64 == PAGE;
                if let Some(last) = events.last() {
                    after = last.seq;
                    let _ = f.tx.send(Arc::new(Batch::new(
                        events.iter().map(Item::from_event).collect(),
                    )));
                }
                if full {
                    continue;
                }
            }
            Err(e) => tracing::warn!(job_id = %job_id, error = %e, "reading job events failed"),
        }
        let clients = f.tx.receiver_count() as u32;
        drop(f);
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            changed = changed(&mut bus, &job_id) => {
                if changed {
                    tokio::time::sleep((GATHER_PER_CLIENT * clients).min(GATHER_MAX)).await;
                } else {
                    bus = None;
                }
            }
        }
    }
}

/// Waits until this replica's engine says `job_id` changed (false: the bus is gone).
async fn changed(bus: &mut Option<broadcast::Receiver<String>>, job_id: &str) -> bool {
    let Some(b) = bus.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match b.recv().await {
            Ok(id) if id == job_id => return true,
            Ok(_) => {}
            // Missed some: look now rather than risk waiting a poll.
            Err(broadcast::error::RecvError::Lagged(_)) => return true,
            Err(broadcast::error::RecvError::Closed) => return false,
        }
    }
}

/// The job's changes as Server-Sent Events: first its current state (one `job` event, one
/// `consumer` event per consumer), then each change, then `end` once the job is terminal.
/// Each event's `id` is its sequence number; reconnect with `Last-Event-ID` to resume.
#[utoipa::path(get, path = "/api/v1/rotations/{job_id}/events", operation_id = "streamRotationEvents", tag = "rotations", security(("bearer" = [])),
    params(
        ("job_id" = String, Path, description = "`rot_` and 26 base32 characters"),
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, description = "Resume after this event"),
    ),
    responses(
        (status = 200, description = "Events `job` (data: the job), `consumer` (data: the consumer's state and `job_id`) and `end` (data: null), each with its `id`", content_type = "text/event-stream", body = StreamEvent),
        Unauthorized,
        Unavailable,
        (status = 403, description = "`forbidden`: the role lacks tokens.read", body = crate::error::ErrorBody),
        (status = 404, description = "`not_found`: no such job", body = crate::error::ErrorBody),
        (status = 422, description = "`validation_failed`: Last-Event-ID is not an id this stream gave out", body = crate::error::ErrorBody),
        (status = 429, description = "`rate_limited`: too many failed authentications, or this address has `server.max_streams_per_client` streams open", body = crate::error::ErrorBody,
            headers(("Retry-After" = u16, description = "Seconds until this address may try again"))),
    ))]
pub async fn stream(
    Can(caller, ..): Can<TokensRead>,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
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
    if state.store.get_job(&job_id).await?.is_none() {
        return Err(missing());
    }
    let max = state.config().server.max_streams_per_client;
    let slot = state
        .limits
        .streams
        .take(&caller.client, max)
        .ok_or_else(|| {
            ApiError::rate_limited(
                format!(
                    "this address has {max} event streams open (server.max_streams_per_client); \
                     close some or raise the limit"
                ),
                5,
            )
        })?;
    // Follow first, then read the state: whatever happens in between arrives twice at worst
    // (and is skipped by its seq), never not at all.
    let start = state.store.last_event_seq(&job_id).await?;
    let (feed, rx) = state.feeds.follow(&state, &job_id, start);
    let client = Client {
        _slot: slot,
        state,
        job_id,
        rx,
        _feed: feed,
        resume,
        started: false,
        done: false,
        last: 0,
        queue: VecDeque::new(),
    };
    // The body pulls from the client only as fast as the connection drains: a slow client
    // falls behind the feed's buffer and catches up from the store, holding up nobody.
    let body = futures_util::stream::unfold(client, |mut c| async move {
        c.next().await.map(|b| (Ok::<_, Infallible>(b), c))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// One client's stream.
struct Client {
    /// Frees this address's stream slot when the stream ends.
    _slot: crate::limits::StreamSlot,
    state: AppState,
    job_id: String,
    rx: broadcast::Receiver<Arc<Batch>>,
    /// Keeps the job's feed alive while this client follows it.
    _feed: Arc<Feed>,
    resume: Option<i64>,
    started: bool,
    done: bool,
    /// The seq of the last event queued.
    last: i64,
    queue: VecDeque<Bytes>,
}

impl Client {
    /// The next bytes to send, or `None` once `end` went out (or the store failed).
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            // Everything queued goes out as one write: a burst of changes costs each client one
            // wake-up and one system call, not one per event.
            match self.queue.len() {
                0 => {}
                1 => return self.queue.pop_front(),
                _ => {
                    let mut all = Vec::with_capacity(self.queue.iter().map(Bytes::len).sum());
                    self.queue.drain(..).for_each(|b| all.extend_from_slice(&b));
                    return Some(Bytes::from(all));
                }
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fill().await {
                tracing::warn!(job_id = %self.job_id, error = %e, "an event stream stopped");
                return None;
            }
        }
    }

    fn push(&mut self, seq: i64, bytes: Bytes) {
        self.last = seq;
        self.queue.push_back(bytes);
    }

    fn end(&mut self) {
        self.queue.push_back(encode("end", self.last, "null"));
        self.done = true;
    }

    /// Queues what comes next: the start, then each change, a keep-alive when idle.
    async fn fill(&mut self) -> Result<(), velvet_store::StoreError> {
        if !self.started {
            self.started = true;
            let finished = match self.resume {
                Some(n) => {
                    self.last = n;
                    if self.catch_up(i64::MAX).await? {
                        true
                    } else if matches!(self.state.store.get_job(&self.job_id).await?,
                        Some(j) if j.state.status.is_terminal())
                    {
                        // Finished: either we resumed at its very end, or it finished since the
                        // catch-up; its last events commit with that state, so send them first.
                        self.catch_up(i64::MAX).await?;
                        true
                    } else {
                        false
                    }
                }
                None => self.snapshot().await?,
            };
            if finished {
                self.end();
            }
            return Ok(());
        }
        let batch = match tokio::time::timeout(KEEP_ALIVE, self.rx.recv()).await {
            Err(_) => {
                self.queue
                    .push_back(Bytes::from_static(b": keep-alive\n\n"));
                return Ok(());
            }
            Ok(Ok(batch)) => batch,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                // Too slow for the feed's buffer: the table has everything.
                if self.catch_up(i64::MAX).await? {
                    self.end();
                }
                return Ok(());
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                self.done = true;
                return Ok(());
            }
        };
        let mut next = Some(batch);
        while let Some(batch) = next.take() {
            if self.take(&batch).await? {
                self.end();
                return Ok(());
            }
            // Take whatever else the feed already holds, to send it together.
            next = self.rx.try_recv().ok();
        }
        Ok(())
    }

    /// Queues what `batch` holds after `last`; true once the job's end is queued.
    async fn take(&mut self, batch: &Batch) -> Result<bool, velvet_store::StoreError> {
        let (Some(first), Some(last)) = (batch.items.first(), batch.items.last()) else {
            return Ok(false);
        };
        // In step: the whole batch, as joined once for everybody.
        if first.seq == self.last + 1 {
            let end = batch.items.iter().find(|i| i.terminal);
            self.push(end.unwrap_or(last).seq, batch.joined.clone());
            return Ok(end.is_some());
        }
        for item in &batch.items {
            if item.seq <= self.last {
                continue;
            }
            if item.seq > self.last + 1 && self.catch_up(item.seq - 1).await? {
                return Ok(true);
            }
            self.push(item.seq, item.bytes.clone());
            if item.terminal {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The current state, all at the current seq; true if the job has already finished.
    async fn snapshot(&mut self) -> Result<bool, velvet_store::StoreError> {
        // The seq first, then the state: a change racing the snapshot is sent again (it carries
        // its full state) rather than lost.
        let seq = self.state.store.last_event_seq(&self.job_id).await?;
        let Some(job) = self.state.store.get_job(&self.job_id).await? else {
            return Ok(true);
        };
        let view = RotationJobView::from(&job);
        let data = serde_json::to_string(&view).expect("jobs serialise");
        self.push(seq, encode("job", seq, &data));
        for c in view.consumers {
            let v = ConsumerEvent {
                job_id: view.job_id.clone(),
                consumer: c,
            };
            let data = serde_json::to_string(&v).expect("consumers serialise");
            self.push(seq, encode("consumer", seq, &data));
        }
        Ok(job.state.status.is_terminal())
    }

    /// Queues stored events after `last` up to `until`; true once the job's end is queued.
    async fn catch_up(&mut self, until: i64) -> Result<bool, velvet_store::StoreError> {
        loop {
            let events = self
                .state
                .store
                .job_events(&self.job_id, self.last, PAGE)
                .await?;
            for e in events.iter().filter(|e| e.seq <= until) {
                let item = Item::from_event(e);
                self.push(item.seq, item.bytes);
                if item.terminal {
                    return Ok(true);
                }
            }
            if (events.len() as i64) < PAGE || self.last >= until {
                return Ok(false);
            }
        }
    }
}
