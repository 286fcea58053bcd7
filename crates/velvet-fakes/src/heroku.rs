//! The Heroku Platform API's config vars (providers.md §1): `Accept:
//! application/vnd.heroku+json; version=3` and a bearer key are required; `PATCH
//! /apps/{app}/config-vars` sets the keys it names (`null` deletes one), answers the whole map and
//! makes a release; errors are `{"id", "message", "url"}`; every answer carries
//! `RateLimit-Remaining` from a token bucket that answers 429 `rate_limit` when empty.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ACCEPT: &str = "application/vnd.heroku+json; version=3";
const RATE_LIMITED: &str = "Your account reached the API rate limit. Please wait a few minutes before making new requests.";

#[derive(Debug, Default)]
struct App {
    vars: BTreeMap<String, String>,
    releases: u64,
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    refill_per_s: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens
            + now.duration_since(self.last).as_secs_f64() * self.refill_per_s)
            .min(self.capacity);
        self.last = now;
    }
}

#[derive(Debug)]
struct Inner {
    api_key: String,
    apps: BTreeMap<String, App>,
    bucket: Bucket,
    fail_next: VecDeque<u16>,
    delay: Duration,
    requests: u64,
    rate_limited: u64,
}

/// A running fake; clones share it.
#[derive(Debug, Clone)]
pub struct Heroku {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

fn error(status: StatusCode, id: &str, message: &str) -> Response {
    let body = json!({
        "id": id,
        "message": message,
        "url": "https://devcenter.heroku.com/articles/platform-api-reference#error-responses",
    });
    (status, axum::Json(body)).into_response()
}

impl Heroku {
    /// Starts the fake accepting `api_key`, with Heroku's real budget (4,500, ~75 a minute).
    pub async fn start(api_key: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            api_key: api_key.to_string(),
            apps: BTreeMap::new(),
            bucket: Bucket {
                capacity: 4500.0,
                tokens: 4500.0,
                refill_per_s: 75.0 / 60.0,
                last: Instant::now(),
            },
            fail_next: VecDeque::new(),
            delay: Duration::ZERO,
            requests: 0,
            rate_limited: 0,
        }));
        let router = Router::new()
            .route("/account", get(account))
            .route("/account/rate-limits", get(rate_limits))
            .route("/apps/{app}", get(app_info))
            .route("/apps/{app}/config-vars", get(read_vars).patch(patch_vars))
            .with_state(inner.clone());
        let addr = crate::serve(router).await;
        Self { inner, addr }
    }

    /// The `api_url` a consumer points at.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().expect("fake state"))
    }

    pub fn add_app(&self, name: &str, vars: &[(&str, &str)]) {
        self.with(|s| {
            s.apps.insert(
                name.to_string(),
                App {
                    vars: vars
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    releases: 0,
                },
            );
        })
    }

    pub fn vars(&self, app: &str) -> BTreeMap<String, String> {
        self.with(|s| s.apps.get(app).map(|a| a.vars.clone()).unwrap_or_default())
    }

    /// Releases made by config-var writes (each restarts the app at the real Heroku).
    pub fn releases(&self, app: &str) -> u64 {
        self.with(|s| s.apps.get(app).map_or(0, |a| a.releases))
    }

    /// The next answers are these statuses (429 as Heroku's `rate_limit`, 5xx as an outage).
    pub fn fail_next(&self, statuses: &[u16]) {
        self.with(|s| s.fail_next.extend(statuses))
    }

    /// Injected failures not yet answered.
    pub fn faults_left(&self) -> usize {
        self.with(|s| s.fail_next.len())
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, d: Duration) {
        self.with(|s| s.delay = d)
    }

    /// A budget of `capacity` requests refilled at `per_s` a second, starting full.
    pub fn set_budget(&self, capacity: u32, per_s: f64) {
        self.with(|s| {
            s.bucket = Bucket {
                capacity: capacity.into(),
                tokens: capacity.into(),
                refill_per_s: per_s,
                last: Instant::now(),
            }
        })
    }

    /// The key stops working, as an expired or revoked one does.
    pub fn expire_key(&self) {
        self.with(|s| s.api_key = String::new())
    }

    /// Requests answered, and how many of them were 429s for an empty budget.
    pub fn requests(&self) -> (u64, u64) {
        self.with(|s| (s.requests, s.rate_limited))
    }
}

type Shared = Arc<Mutex<Inner>>;

/// What every request goes through: the delay, injected failures, `Accept`, the bearer key and
/// the budget. `Ok(remaining)` lets the request on.
async fn admit(state: &Shared, headers: &HeaderMap, costs: bool) -> Result<u64, Response> {
    let delay = state.lock().expect("fake state").delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut s = state.lock().expect("fake state");
    s.requests += 1;
    s.bucket.refill();
    let remaining = s.bucket.tokens.floor() as u64;
    if let Some(code) = s.fail_next.pop_front() {
        let status = StatusCode::from_u16(code).expect("a status");
        let r = if code == 429 {
            error(status, "rate_limit", RATE_LIMITED)
        } else {
            error(status, "internal_server_error", "Internal server error.")
        };
        return Err(with_remaining(r, remaining));
    }
    if headers.get("accept").and_then(|v| v.to_str().ok()) != Some(ACCEPT) {
        return Err(with_remaining(
            error(
                StatusCode::NOT_ACCEPTABLE,
                "not_acceptable",
                "Accept header must be `application/vnd.heroku+json; version=3`.",
            ),
            remaining,
        ));
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if s.api_key.is_empty() || bearer != Some(s.api_key.as_str()) {
        return Err(with_remaining(
            error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Invalid credentials provided.",
            ),
            remaining,
        ));
    }
    if costs {
        if s.bucket.tokens < 1.0 {
            s.rate_limited += 1;
            return Err(with_remaining(
                error(StatusCode::TOO_MANY_REQUESTS, "rate_limit", RATE_LIMITED),
                0,
            ));
        }
        s.bucket.tokens -= 1.0;
    }
    Ok(s.bucket.tokens.floor() as u64)
}

/// Every answer carries the budget left, as Heroku's do.
fn with_remaining(mut r: Response, remaining: u64) -> Response {
    r.headers_mut()
        .insert("RateLimit-Remaining", HeaderValue::from(remaining));
    r
}

fn answer(status: StatusCode, body: Value, remaining: u64) -> Response {
    with_remaining((status, axum::Json(body)).into_response(), remaining)
}

fn not_found(remaining: u64) -> Response {
    let r = error(
        StatusCode::NOT_FOUND,
        "not_found",
        "Couldn't find that app.",
    );
    with_remaining(r, remaining)
}

async fn account(State(s): State<Shared>, headers: HeaderMap) -> Response {
    match admit(&s, &headers, true).await {
        Ok(n) => answer(
            StatusCode::OK,
            json!({"email": "velvet@example.com", "id": "01234567-89ab-cdef-0123-456789abcdef"}),
            n,
        ),
        Err(r) => r,
    }
}

async fn rate_limits(State(s): State<Shared>, headers: HeaderMap) -> Response {
    match admit(&s, &headers, false).await {
        Ok(n) => answer(StatusCode::OK, json!({"remaining": n}), n),
        Err(r) => r,
    }
}

/// Admits a request about `app` and answers `f` of it with 200, or 404 when there is none.
async fn on_app(
    s: &Shared,
    app: &str,
    headers: &HeaderMap,
    f: impl FnOnce(&App) -> Value,
) -> Response {
    let n = match admit(s, headers, true).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    match s.lock().expect("fake state").apps.get(app) {
        Some(a) => answer(StatusCode::OK, f(a), n),
        None => not_found(n),
    }
}

async fn app_info(
    State(s): State<Shared>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Response {
    let info = json!({"name": app, "id": format!("app-{app}")});
    on_app(&s, &app, &headers, |_| info).await
}

async fn read_vars(
    State(s): State<Shared>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Response {
    on_app(&s, &app, &headers, |a| json!(a.vars)).await
}

/// Keys match `^\w+$`; values are strings or `null` (delete). Anything else is 422.
async fn patch_vars(
    State(s): State<Shared>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let n = match admit(&s, &headers, true).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let invalid = |m: &str| {
        with_remaining(
            error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_params", m),
            n,
        )
    };
    let Ok(Value::Object(changes)) = serde_json::from_str::<Value>(&body) else {
        return invalid("Request body must be a JSON object.");
    };
    let ok_key =
        |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if let Some((k, _)) = changes
        .iter()
        .find(|(k, v)| !ok_key(k) || !(v.is_string() || v.is_null()))
    {
        return invalid(&format!(
            "Invalid config var `{k}`: keys match ^\\w+$ and values are strings or null."
        ));
    }
    let mut guard = s.lock().expect("fake state");
    let Some(a) = guard.apps.get_mut(&app) else {
        return not_found(n);
    };
    apply(&mut a.vars, &changes);
    a.releases += 1;
    answer(StatusCode::OK, json!(a.vars), n)
}

fn apply(vars: &mut BTreeMap<String, String>, changes: &Map<String, Value>) {
    for (k, v) in changes {
        match v.as_str() {
            Some(v) => vars.insert(k.clone(), v.to_string()),
            None => vars.remove(k),
        };
    }
}
