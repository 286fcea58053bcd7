//! GitHub's Actions secrets API (providers.md §3) for repositories, organisations and
//! environments: `Accept: application/vnd.github+json`, a bearer token, and `X-GitHub-Api-Version:
//! 2022-11-28` when sent; `GET …/secrets/public-key` answers `{key_id, key}` (an X25519 key the fake
//! holds the private half of); `PUT …/secrets/{name}` takes `{encrypted_value, key_id}` (a sealed
//! box in standard base64), answers 201 when created and 204 when updated; `GET` gives metadata
//! only; errors are `{message, documentation_url, status}`; answers carry `x-ratelimit-*`.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use crypto_box::SecretKey;
use crypto_box::aead::OsRng;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

const DOCS: &str = "https://docs.github.com/rest/actions/secrets";

/// An injected answer for the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// This status with GitHub's envelope (5xx as an outage).
    Status(u16),
    /// A secondary rate limit: 403 with `retry-after: 1`.
    Secondary,
    /// The primary limit: 429 with `x-ratelimit-remaining: 0` and a reset a second away.
    Primary,
}

#[derive(Debug, Clone)]
pub struct Secret {
    /// What the sealed box held: the fake opens it, the real API never shows it.
    pub value: String,
    pub created_at: String,
    pub updated_at: String,
    pub visibility: Option<String>,
}

#[derive(Debug)]
struct Target {
    key: SecretKey,
    key_id: String,
    secrets: BTreeMap<String, Secret>,
    /// The last `encrypted_value` received, as sent.
    last_sealed: Option<String>,
}

#[derive(Debug)]
struct Inner {
    token: String,
    targets: BTreeMap<String, Target>,
    faults: VecDeque<Fault>,
    delay: std::time::Duration,
    remaining: u32,
    next_key_id: u64,
}

/// A running fake; clones share it.
#[derive(Debug, Clone)]
pub struct GitHub {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

type Shared = Arc<Mutex<Inner>>;

fn repo_target(repo: &str) -> String {
    format!("repos/{repo}")
}

fn env_target(repo: &str, env: &str) -> String {
    format!("repos/{repo}/environments/{env}")
}

fn org_target(org: &str) -> String {
    format!("orgs/{org}")
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"message": message, "documentation_url": DOCS, "status": status.as_u16().to_string()});
    (status, axum::Json(body)).into_response()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl GitHub {
    /// Starts the fake accepting `token` (a fine-grained or classic token, or an app's).
    pub async fn start(token: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            token: token.into(),
            targets: BTreeMap::new(),
            faults: VecDeque::new(),
            delay: std::time::Duration::ZERO,
            remaining: 5000,
            next_key_id: 568250167242549743,
        }));
        let repo = "/repos/{owner}/{repo}/actions/secrets";
        let env = "/repos/{owner}/{repo}/environments/{env}/secrets";
        let org = "/orgs/{org}/actions/secrets";
        let router = Router::new()
            .route(&format!("{repo}/public-key"), get(repo_key))
            .route(
                &format!("{repo}/{{name}}"),
                get(repo_get).put(repo_put).delete(repo_delete),
            )
            .route(&format!("{env}/public-key"), get(env_key))
            .route(
                &format!("{env}/{{name}}"),
                get(env_get).put(env_put).delete(env_delete),
            )
            .route(&format!("{org}/public-key"), get(org_key))
            .route(
                &format!("{org}/{{name}}"),
                get(org_get).put(org_put).delete(org_delete),
            )
            .with_state(inner.clone());
        let addr = crate::serve(router).await;
        Self { inner, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().expect("fake state"))
    }

    fn add(&self, target: String) {
        self.with(|s| {
            s.next_key_id += 1;
            let t = Target {
                key: SecretKey::generate(&mut OsRng),
                key_id: s.next_key_id.to_string(),
                secrets: BTreeMap::new(),
                last_sealed: None,
            };
            s.targets.insert(target, t);
        })
    }

    /// A repository, `owner/name`.
    pub fn add_repo(&self, repo: &str) {
        self.add(repo_target(repo))
    }

    pub fn add_environment(&self, repo: &str, env: &str) {
        self.add(env_target(repo, env))
    }

    pub fn add_org(&self, org: &str) {
        self.add(org_target(org))
    }

    /// Sets a secret directly (as someone in the web UI would).
    pub fn put_repo_secret(&self, repo: &str, name: &str, value: &str) {
        self.with(|s| {
            let t = s.targets.get_mut(&repo_target(repo)).expect("a repository");
            t.secrets.insert(
                name.into(),
                Secret {
                    value: value.into(),
                    created_at: now(),
                    updated_at: "2026-01-01T00:00:00Z".into(),
                    visibility: None,
                },
            );
        })
    }

    fn secrets_of(&self, target: &str) -> BTreeMap<String, Secret> {
        self.with(|s| {
            s.targets
                .get(target)
                .map(|t| t.secrets.clone())
                .unwrap_or_default()
        })
    }

    pub fn repo_secrets(&self, repo: &str) -> BTreeMap<String, Secret> {
        self.secrets_of(&repo_target(repo))
    }

    pub fn environment_secrets(&self, repo: &str, env: &str) -> BTreeMap<String, Secret> {
        self.secrets_of(&env_target(repo, env))
    }

    pub fn org_secrets(&self, org: &str) -> BTreeMap<String, Secret> {
        self.secrets_of(&org_target(org))
    }

    /// The last sealed box a repository received and its private key, both standard base64: for
    /// opening it with another implementation (PyNaCl).
    pub fn last_sealed(&self, repo: &str) -> Option<(String, String)> {
        self.with(|s| {
            let t = s.targets.get(&repo_target(repo))?;
            Some((t.last_sealed.clone()?, STANDARD.encode(t.key.to_bytes())))
        })
    }

    /// GitHub rotates a repository's key: the old `key_id` is refused from now on.
    pub fn rotate_key(&self, repo: &str) {
        self.add(repo_target(repo));
    }

    pub fn fail_next(&self, faults: &[Fault]) {
        self.with(|s| s.faults.extend(faults))
    }

    pub fn set_delay(&self, d: std::time::Duration) {
        self.with(|s| s.delay = d)
    }

    /// The token is revoked or expired.
    pub fn expire_token(&self) {
        self.with(|s| s.token = String::new())
    }
}

fn limits(mut r: Response, remaining: u32) -> Response {
    let reset = chrono::Utc::now().timestamp() + 3600;
    let h = r.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(5000));
    h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    h.insert("x-ratelimit-used", HeaderValue::from(5000 - remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    h.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
    r
}

/// The delay, injected faults, required headers, the token and the budget; `Ok` holds the state.
async fn admit<'a>(
    st: &'a Shared,
    headers: &HeaderMap,
) -> Result<std::sync::MutexGuard<'a, Inner>, Response> {
    let delay = st.lock().expect("fake state").delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut s = st.lock().expect("fake state");
    let left = s.remaining;
    if let Some(f) = s.faults.pop_front() {
        let r = match f {
            Fault::Secondary => {
                let mut r = error(
                    StatusCode::FORBIDDEN,
                    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                );
                r.headers_mut().insert("retry-after", HeaderValue::from(1));
                limits(r, left)
            }
            Fault::Primary => {
                let mut r = limits(
                    error(StatusCode::TOO_MANY_REQUESTS, "API rate limit exceeded"),
                    0,
                );
                let reset = chrono::Utc::now().timestamp() + 1;
                r.headers_mut()
                    .insert("x-ratelimit-reset", HeaderValue::from(reset));
                r
            }
            Fault::Status(c) => limits(
                error(StatusCode::from_u16(c).expect("a status"), "Server Error"),
                left,
            ),
        };
        return Err(r);
    }
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    if header("accept") != Some("application/vnd.github+json") {
        return Err(limits(
            error(
                StatusCode::NOT_ACCEPTABLE,
                "Must accept 'application/vnd.github+json'",
            ),
            left,
        ));
    }
    if let Some(v) = header("x-github-api-version")
        && v != "2022-11-28"
        && v != "2026-03-10"
    {
        return Err(limits(
            error(
                StatusCode::BAD_REQUEST,
                &format!("Unsupported 'X-GitHub-Api-Version' header: '{v}'"),
            ),
            left,
        ));
    }
    let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
    if s.token.is_empty() || bearer != Some(s.token.as_str()) {
        return Err(limits(
            error(StatusCode::UNAUTHORIZED, "Bad credentials"),
            left,
        ));
    }
    s.remaining = s.remaining.saturating_sub(1);
    Ok(s)
}

async fn key_of(st: Shared, target: String, headers: HeaderMap) -> Response {
    let s = match admit(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match s.targets.get(&target) {
        Some(t) => {
            let key = STANDARD.encode(t.key.public_key().as_bytes());
            limits(
                axum::Json(json!({"key_id": t.key_id, "key": key})).into_response(),
                s.remaining,
            )
        }
        None => limits(error(StatusCode::NOT_FOUND, "Not Found"), s.remaining),
    }
}

async fn get_of(st: Shared, target: String, name: String, headers: HeaderMap) -> Response {
    let s = match admit(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let found = s.targets.get(&target).and_then(|t| t.secrets.get(&name));
    match found {
        Some(x) => {
            let mut body =
                json!({"name": name, "created_at": x.created_at, "updated_at": x.updated_at});
            if let Some(v) = &x.visibility {
                body["visibility"] = v.clone().into();
            }
            limits(axum::Json(body).into_response(), s.remaining)
        }
        None => limits(error(StatusCode::NOT_FOUND, "Not Found"), s.remaining),
    }
}

async fn put_of(
    st: Shared,
    target: String,
    name: String,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut s = match admit(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let left = s.remaining;
    let org = target.starts_with("orgs/");
    let Some(t) = s.targets.get_mut(&target) else {
        return limits(error(StatusCode::NOT_FOUND, "Not Found"), left);
    };
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let invalid = |m: &str| limits(error(StatusCode::UNPROCESSABLE_ENTITY, m), left);
    let Some(key_id) = body["key_id"].as_str() else {
        return invalid("Invalid request.\n\n\"key_id\" wasn't supplied.");
    };
    let Some(sealed) = body["encrypted_value"].as_str() else {
        return invalid("Invalid request.\n\n\"encrypted_value\" wasn't supplied.");
    };
    if key_id != t.key_id {
        return invalid("Bad request: key_id does not match the current public key");
    }
    let opened = STANDARD
        .decode(sealed)
        .ok()
        .and_then(|ct| t.key.unseal(&ct).ok())
        .and_then(|p| String::from_utf8(p).ok());
    let Some(value) = opened else {
        return invalid("Bad request: encrypted_value is not a sealed box for this key");
    };
    let visibility = if org {
        match body["visibility"].as_str() {
            Some(v @ ("all" | "private" | "selected")) => Some(v.to_string()),
            _ => return invalid("Invalid request.\n\n\"visibility\" wasn't supplied."),
        }
    } else {
        None
    };
    t.last_sealed = Some(sealed.to_string());
    let created = !t.secrets.contains_key(&name);
    let created_at = t
        .secrets
        .get(&name)
        .map_or_else(now, |x| x.created_at.clone());
    t.secrets.insert(
        name,
        Secret {
            value,
            created_at,
            updated_at: now(),
            visibility,
        },
    );
    if created {
        limits(
            (StatusCode::CREATED, axum::Json(json!({}))).into_response(),
            left,
        )
    } else {
        limits(StatusCode::NO_CONTENT.into_response(), left)
    }
}

async fn delete_of(st: Shared, target: String, name: String, headers: HeaderMap) -> Response {
    let mut s = match admit(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let left = s.remaining;
    match s
        .targets
        .get_mut(&target)
        .and_then(|t| t.secrets.remove(&name))
    {
        Some(_) => limits(StatusCode::NO_CONTENT.into_response(), left),
        None => limits(error(StatusCode::NOT_FOUND, "Not Found"), left),
    }
}

type RepoPath = Path<(String, String)>;
type RepoNamePath = Path<(String, String, String)>;
type EnvNamePath = Path<(String, String, String, String)>;

async fn repo_key(State(s): State<Shared>, Path((o, r)): RepoPath, h: HeaderMap) -> Response {
    key_of(s, repo_target(&format!("{o}/{r}")), h).await
}
async fn repo_get(
    State(s): State<Shared>,
    Path((o, r, n)): RepoNamePath,
    h: HeaderMap,
) -> Response {
    get_of(s, repo_target(&format!("{o}/{r}")), n, h).await
}
async fn repo_put(
    State(s): State<Shared>,
    Path((o, r, n)): RepoNamePath,
    h: HeaderMap,
    b: String,
) -> Response {
    put_of(s, repo_target(&format!("{o}/{r}")), n, h, b).await
}
async fn repo_delete(
    State(s): State<Shared>,
    Path((o, r, n)): RepoNamePath,
    h: HeaderMap,
) -> Response {
    delete_of(s, repo_target(&format!("{o}/{r}")), n, h).await
}
async fn env_key(State(s): State<Shared>, Path((o, r, e)): RepoNamePath, h: HeaderMap) -> Response {
    key_of(s, env_target(&format!("{o}/{r}"), &e), h).await
}
async fn env_get(
    State(s): State<Shared>,
    Path((o, r, e, n)): EnvNamePath,
    h: HeaderMap,
) -> Response {
    get_of(s, env_target(&format!("{o}/{r}"), &e), n, h).await
}
async fn env_put(
    State(s): State<Shared>,
    Path((o, r, e, n)): EnvNamePath,
    h: HeaderMap,
    b: String,
) -> Response {
    put_of(s, env_target(&format!("{o}/{r}"), &e), n, h, b).await
}
async fn env_delete(
    State(s): State<Shared>,
    Path((o, r, e, n)): EnvNamePath,
    h: HeaderMap,
) -> Response {
    delete_of(s, env_target(&format!("{o}/{r}"), &e), n, h).await
}
async fn org_key(State(s): State<Shared>, Path(o): Path<String>, h: HeaderMap) -> Response {
    key_of(s, org_target(&o), h).await
}
async fn org_get(State(s): State<Shared>, Path((o, n)): RepoPath, h: HeaderMap) -> Response {
    get_of(s, org_target(&o), n, h).await
}
async fn org_put(
    State(s): State<Shared>,
    Path((o, n)): RepoPath,
    h: HeaderMap,
    b: String,
) -> Response {
    put_of(s, org_target(&o), n, h, b).await
}
async fn org_delete(State(s): State<Shared>, Path((o, n)): RepoPath, h: HeaderMap) -> Response {
    delete_of(s, org_target(&o), n, h).await
}
