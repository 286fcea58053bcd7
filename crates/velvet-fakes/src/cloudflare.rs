//! Cloudflare's Workers secrets API (providers.md §2): a bearer API token; `PUT
//! /accounts/{account}/workers/scripts/{script}/secrets` with `{name, text, type: "secret_text"}`
//! creates or replaces a secret and deploys a new Worker version; `GET …/secrets` lists names and
//! types only (no value is ever returned); `DELETE …/secrets/{name}`. Every answer is the envelope
//! `{success, errors: [{code, message}], messages, result}`, and carries `Ratelimit` and
//! `Ratelimit-Policy`; a 429 also carries `Retry-After`.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The answers a test can make the next request get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// This status, in Cloudflare's envelope (429 with `Retry-After: 1`).
    Status(u16),
    /// A 200 whose envelope says `success: false`.
    SuccessFalse,
}

#[derive(Debug, Default)]
struct Script {
    /// Name → (type, text). The fake keeps the text so tests can check it; the API never shows it.
    secrets: BTreeMap<String, (String, String)>,
    versions: u64,
}

#[derive(Debug)]
struct Inner {
    api_token: String,
    scripts: BTreeMap<(String, String), Script>,
    faults: VecDeque<Fault>,
    delay: Duration,
    limit: crate::Window,
    requests: u64,
    rate_limited: u64,
}

/// A running fake; clones share it.
#[derive(Debug, Clone)]
pub struct Cloudflare {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

type Shared = Arc<Mutex<Inner>>;

fn envelope(status: StatusCode, success: bool, errors: Value, result: Value) -> Response {
    let body = json!({"success": success, "errors": errors, "messages": [], "result": result});
    (status, axum::Json(body)).into_response()
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    envelope(
        status,
        false,
        json!([{"code": code, "message": message}]),
        Value::Null,
    )
}

impl Cloudflare {
    /// Starts the fake accepting `api_token`, with Cloudflare's per-token budget (1,200 per
    /// five minutes).
    pub async fn start(api_token: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            api_token: api_token.to_string(),
            scripts: BTreeMap::new(),
            faults: VecDeque::new(),
            delay: Duration::ZERO,
            limit: crate::Window::new(1200, Duration::from_secs(300)),
            requests: 0,
            rate_limited: 0,
        }));
        let secrets = "/accounts/{account}/workers/scripts/{script}/secrets";
        let api = Router::new()
            .route(secrets, get(list).put(put))
            .route(&format!("{secrets}/{{name}}"), get(one).delete(delete))
            .with_state(inner.clone());
        let router = Router::new().nest("/client/v4", api);
        let addr = crate::serve(router).await;
        Self { inner, addr }
    }

    /// The `api_url` a consumer points at.
    pub fn url(&self) -> String {
        format!("http://{}/client/v4", self.addr)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().expect("fake state"))
    }

    /// A Worker script with these `secret_text` secrets.
    pub fn add_script(&self, account: &str, script: &str, secrets: &[(&str, &str)]) {
        self.with(|s| {
            let secrets = secrets
                .iter()
                .map(|(n, t)| (n.to_string(), ("secret_text".into(), t.to_string())))
                .collect();
            s.scripts.insert(
                (account.into(), script.into()),
                Script {
                    secrets,
                    versions: 1,
                },
            );
        })
    }

    /// The text of a secret, which only the fake can show.
    pub fn secret(&self, account: &str, script: &str, name: &str) -> Option<String> {
        self.with(|s| {
            s.scripts
                .get(&(account.into(), script.into()))
                .and_then(|sc| sc.secrets.get(name))
                .map(|(_, t)| t.clone())
        })
    }

    /// Every secret of a script: name → text.
    pub fn secrets(&self, account: &str, script: &str) -> BTreeMap<String, String> {
        self.with(|s| {
            s.scripts
                .get(&(account.into(), script.into()))
                .map(|sc| {
                    sc.secrets
                        .iter()
                        .map(|(n, (_, t))| (n.clone(), t.clone()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Worker versions deployed (each secret change deploys one).
    pub fn versions(&self, account: &str, script: &str) -> u64 {
        self.with(|s| {
            s.scripts
                .get(&(account.into(), script.into()))
                .map_or(0, |sc| sc.versions)
        })
    }

    pub fn fail_next(&self, faults: &[Fault]) {
        self.with(|s| s.faults.extend(faults))
    }

    /// Injected faults not yet answered.
    pub fn faults_left(&self) -> usize {
        self.with(|s| s.faults.len())
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, d: Duration) {
        self.with(|s| s.delay = d)
    }

    /// The token stops working, as an expired or rolled one does.
    pub fn expire_token(&self) {
        self.with(|s| s.api_token = String::new())
    }

    /// A budget of `quota` requests per `window`, starting now.
    pub fn set_budget(&self, quota: u32, window: Duration) {
        self.with(|s| {
            s.limit = crate::Window::new(quota, window);
        })
    }

    /// Requests answered, and how many were 429s for an empty budget.
    pub fn requests(&self) -> (u64, u64) {
        self.with(|s| (s.requests, s.rate_limited))
    }
}

/// Adds `Ratelimit: "default";r=<left>;t=<secs to reset>` and its policy, as every answer has.
fn with_limits(mut r: Response, s: &Inner) -> Response {
    let (left, reset) = (s.limit.left(), s.limit.reset_secs());
    let h = r.headers_mut();
    let v = |t: String| HeaderValue::from_str(&t).expect("ASCII");
    h.insert("Ratelimit", v(format!("\"default\";r={left};t={reset}")));
    h.insert(
        "Ratelimit-Policy",
        v(format!(
            "\"default\";q={};w={}",
            s.limit.quota,
            s.limit.length.as_secs()
        )),
    );
    r
}

/// The delay, injected faults, the bearer token, the budget, and the script: `Ok` lets the
/// request on with the state locked.
async fn admit<'a>(
    state: &'a Shared,
    headers: &HeaderMap,
    account: &str,
    script: &str,
) -> Result<std::sync::MutexGuard<'a, Inner>, Response> {
    let delay = state.lock().expect("fake state").delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut s = state.lock().expect("fake state");
    s.requests += 1;
    s.limit.roll();
    if let Some(f) = s.faults.pop_front() {
        let r = match f {
            Fault::SuccessFalse => envelope(
                StatusCode::OK,
                false,
                json!([{"code": 10013, "message": "An unknown error has occurred"}]),
                Value::Null,
            ),
            Fault::Status(429) => {
                let mut r = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    971,
                    "Please wait and consider throttling your request speed",
                );
                r.headers_mut()
                    .insert("Retry-After", HeaderValue::from_static("1"));
                r
            }
            Fault::Status(code) => error(
                StatusCode::from_u16(code).expect("a status"),
                10013,
                "An unknown error has occurred",
            ),
        };
        return Err(with_limits(r, &s));
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if s.api_token.is_empty() || bearer != Some(s.api_token.as_str()) {
        let r = error(StatusCode::FORBIDDEN, 10000, "Authentication error");
        return Err(with_limits(r, &s));
    }
    if !s.limit.take() {
        s.rate_limited += 1;
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            971,
            "Please wait and consider throttling your request speed",
        );
        let wait = s.limit.reset_secs();
        r.headers_mut()
            .insert("Retry-After", HeaderValue::from(wait));
        return Err(with_limits(r, &s));
    }
    if !s.scripts.contains_key(&(account.into(), script.into())) {
        let r = error(
            StatusCode::NOT_FOUND,
            10007,
            "workers.api.error.script_not_found",
        );
        return Err(with_limits(r, &s));
    }
    Ok(s)
}

fn ok(s: &Inner, result: Value) -> Response {
    with_limits(envelope(StatusCode::OK, true, json!([]), result), s)
}

fn script<'a>(s: &'a mut Inner, account: &str, script: &str) -> &'a mut Script {
    s.scripts
        .get_mut(&(account.into(), script.into()))
        .expect("admitted")
}

async fn list(
    State(st): State<Shared>,
    Path((account, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut s = match admit(&st, &headers, &account, &name).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let listed: Vec<Value> = script(&mut s, &account, &name)
        .secrets
        .iter()
        .map(|(n, (t, _))| json!({"name": n, "type": t}))
        .collect();
    ok(&s, Value::Array(listed))
}

async fn one(
    State(st): State<Shared>,
    Path((account, name, secret)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut s = match admit(&st, &headers, &account, &name).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    // The error code for a missing secret is not in the reference; 10056 is a stand-in.
    let found = script(&mut s, &account, &name)
        .secrets
        .get(&secret)
        .map(|(t, _)| json!({"name": secret, "type": t}));
    match found {
        Some(v) => ok(&s, v),
        None => with_limits(
            error(
                StatusCode::NOT_FOUND,
                10056,
                "workers.api.error.secret_not_found",
            ),
            &s,
        ),
    }
}

async fn put(
    State(st): State<Shared>,
    Path((account, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut s = match admit(&st, &headers, &account, &name).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let (Some(n), Some(text), Some("secret_text")) = (
        body["name"].as_str(),
        body["text"].as_str(),
        body["type"].as_str(),
    ) else {
        return with_limits(
            error(
                StatusCode::BAD_REQUEST,
                10021,
                "a secret_text binding needs `name`, `text` and `type: secret_text`",
            ),
            &s,
        );
    };
    let sc = script(&mut s, &account, &name);
    sc.secrets
        .insert(n.to_string(), ("secret_text".into(), text.to_string()));
    sc.versions += 1;
    let result = json!({"name": n, "type": "secret_text"});
    ok(&s, result)
}

async fn delete(
    State(st): State<Shared>,
    Path((account, name, secret)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut s = match admit(&st, &headers, &account, &name).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let sc = script(&mut s, &account, &name);
    if sc.secrets.remove(&secret).is_none() {
        return with_limits(
            error(
                StatusCode::NOT_FOUND,
                10056,
                "workers.api.error.secret_not_found",
            ),
            &s,
        );
    }
    sc.versions += 1;
    ok(&s, Value::Null)
}
