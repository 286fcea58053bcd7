//! Infisical's v4 secrets API (providers.md §5): `POST /api/v1/auth/universal-auth/login` trades a
//! client id and secret for a bearer access token; `GET|POST|PATCH|DELETE /api/v4/secrets/{name}`
//! with `projectId`, `environment`, `secretPath` (query for GET, JSON body otherwise) answer
//! `{"secret": {…}}`, or `{"approval": {…}}` when a change policy holds the write. The server trims
//! `secretValue`. Errors are `{reqId, statusCode, message, error}`; an expired token is 403
//! `TokenError`; answers carry `x-ratelimit-*`, and a 429 `retry-after`.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a secret lives: project, environment, path and key.
type Key = (String, String, String, String);

#[derive(Debug, Clone)]
struct Secret {
    value: String,
    version: u64,
}

#[derive(Debug)]
struct Inner {
    /// client id → client secret, for universal auth.
    clients: HashMap<String, String>,
    /// Access tokens accepted now; `expired` ones answer `TokenError`.
    tokens: BTreeSet<String>,
    expired: BTreeSet<String>,
    issued: u64,
    /// project → its environments' slugs.
    projects: BTreeMap<String, BTreeSet<String>>,
    secrets: BTreeMap<Key, Secret>,
    /// (project, environment) whose writes a change policy holds for approval.
    approval: BTreeSet<(String, String)>,
    hide_values: bool,
    faults: VecDeque<u16>,
    delay: Duration,
    limit: crate::Window,
    requests: u64,
    rate_limited: u64,
}

/// A running fake; clones share it.
#[derive(Debug, Clone)]
pub struct Infisical {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

type Shared = Arc<Mutex<Inner>>;

fn error(status: StatusCode, error: &str, message: Value) -> Response {
    let body = json!({
        "reqId": "req-fake0123456789",
        "statusCode": status.as_u16(),
        "message": message,
        "error": error,
    });
    (status, axum::Json(body)).into_response()
}

/// Infisical's trimming: whitespace off both ends, one trailing newline kept if there was one.
fn trimmed(v: &str) -> String {
    let t = v.trim();
    if v.trim_end_matches([' ', '\t', '\r']).ends_with('\n') && !t.is_empty() {
        format!("{t}\n")
    } else {
        t.to_string()
    }
}

impl Infisical {
    /// Starts the fake accepting the access token `token` (a service or machine identity token).
    pub async fn start(token: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            clients: HashMap::new(),
            tokens: [token.to_string()].into(),
            expired: BTreeSet::new(),
            issued: 0,
            projects: BTreeMap::new(),
            secrets: BTreeMap::new(),
            approval: BTreeSet::new(),
            hide_values: false,
            faults: VecDeque::new(),
            delay: Duration::ZERO,
            limit: crate::Window::new(600, Duration::from_secs(60)),
            requests: 0,
            rate_limited: 0,
        }));
        let router = Router::new()
            .route("/api/v1/auth/universal-auth/login", post(login))
            .route(
                "/api/v4/secrets/{name}",
                get(read).post(create).patch(update).delete(delete),
            )
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

    /// A machine identity that may log in with universal auth.
    pub fn add_client(&self, id: &str, secret: &str) {
        self.with(|s| s.clients.insert(id.into(), secret.into()));
    }

    pub fn add_project(&self, project: &str, environments: &[&str]) {
        self.with(|s| {
            s.projects.insert(
                project.into(),
                environments.iter().map(|e| e.to_string()).collect(),
            )
        });
    }

    /// Sets a secret directly, as a person in the dashboard would.
    pub fn put(&self, project: &str, env: &str, path: &str, key: &str, value: &str) {
        let k = (project.into(), env.into(), path.into(), key.into());
        self.with(|s| {
            let version = s.secrets.get(&k).map_or(1, |x| x.version + 1);
            s.secrets.insert(
                k,
                Secret {
                    value: value.into(),
                    version,
                },
            );
        })
    }

    /// A secret's value and version.
    pub fn get(&self, project: &str, env: &str, path: &str, key: &str) -> Option<(String, u64)> {
        let k = (project.into(), env.into(), path.into(), key.into());
        self.with(|s| s.secrets.get(&k).map(|x| (x.value.clone(), x.version)))
    }

    /// Every secret of one environment and path: key → value.
    pub fn secrets(&self, project: &str, env: &str, path: &str) -> BTreeMap<String, String> {
        self.with(|s| {
            s.secrets
                .iter()
                .filter(|((p, e, sp, _), _)| p == project && e == env && sp == path)
                .map(|((_, _, _, k), v)| (k.clone(), v.value.clone()))
                .collect()
        })
    }

    /// Writes to this environment are held by a change policy (answered `{"approval": …}`).
    pub fn require_approval(&self, project: &str, env: &str) {
        self.with(|s| s.approval.insert((project.into(), env.into())));
    }

    /// The identity may see secrets but not their values (`secretValueHidden`).
    pub fn hide_values(&self) {
        self.with(|s| s.hide_values = true)
    }

    /// Every access token issued or accepted so far expires.
    pub fn expire_tokens(&self) {
        self.with(|s| {
            let all = std::mem::take(&mut s.tokens);
            s.expired.extend(all);
        })
    }

    /// The next answers are these statuses (429 with `retry-after`, 5xx as an outage).
    pub fn fail_next(&self, statuses: &[u16]) {
        self.with(|s| s.faults.extend(statuses))
    }

    pub fn set_delay(&self, d: Duration) {
        self.with(|s| s.delay = d)
    }

    pub fn set_budget(&self, quota: u32, window: Duration) {
        self.with(|s| {
            s.limit = crate::Window::new(quota, window);
        })
    }

    /// Requests answered, logins, and 429s for an empty budget.
    pub fn requests(&self) -> (u64, u64, u64) {
        self.with(|s| (s.requests, s.issued, s.rate_limited))
    }
}

fn limited(mut r: Response, s: &Inner) -> Response {
    let reset = s.limit.reset_secs();
    let h = r.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(s.limit.quota));
    h.insert("x-ratelimit-remaining", HeaderValue::from(s.limit.left()));
    h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    r
}

fn too_many(s: &Inner, wait: u64) -> Response {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        format!("Rate limit exceeded. Please try again in {wait} seconds").into(),
    );
    r.headers_mut()
        .insert("retry-after", HeaderValue::from(wait));
    limited(r, s)
}

/// The delay, injected faults and the budget; `authed` also checks the bearer token.
async fn admit<'a>(
    state: &'a Shared,
    headers: &HeaderMap,
    authed: bool,
) -> Result<std::sync::MutexGuard<'a, Inner>, Response> {
    let delay = state.lock().expect("fake state").delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut s = state.lock().expect("fake state");
    s.requests += 1;
    s.limit.roll();
    if let Some(code) = s.faults.pop_front() {
        let r = if code == 429 {
            too_many(&s, 1)
        } else {
            let st = StatusCode::from_u16(code).expect("a status");
            limited(
                error(st, "InternalServerError", "Something went wrong".into()),
                &s,
            )
        };
        return Err(r);
    }
    if !s.limit.take() {
        s.rate_limited += 1;
        let wait = s.limit.reset_secs();
        return Err(too_many(&s, wait));
    }
    if authed {
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let refused = match bearer {
            None => Some((
                StatusCode::UNAUTHORIZED,
                "UnauthorizedError",
                "Missing Authorization header",
            )),
            Some(t) if s.tokens.contains(t) => None,
            // Expired and malformed tokens are both 403 TokenError at Infisical, not 401.
            Some(_) => Some((
                StatusCode::FORBIDDEN,
                "TokenError",
                "Your token has expired. Please re-authenticate.",
            )),
        };
        if let Some((st, e, m)) = refused {
            return Err(limited(error(st, e, m.into()), &s));
        }
    }
    Ok(s)
}

async fn login(State(st): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let mut s = match admit(&st, &headers, false).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let (id, secret) = (body["clientId"].as_str(), body["clientSecret"].as_str());
    let ok = matches!((id, secret), (Some(i), Some(c)) if s.clients.get(i).is_some_and(|x| x == c));
    if !ok {
        return limited(
            error(
                StatusCode::UNAUTHORIZED,
                "UnauthorizedError",
                "Invalid credentials".into(),
            ),
            &s,
        );
    }
    s.issued += 1;
    let token = format!("ua-access-token-{}-{}", s.issued, std::process::id());
    s.tokens.insert(token.clone());
    let r = json!({"accessToken": token, "expiresIn": 2592000, "accessTokenMaxTTL": 2592000, "tokenType": "Bearer"});
    limited((StatusCode::OK, axum::Json(r)).into_response(), &s)
}

/// Checks the project, environment and path of a request; `Err` is Infisical's 404 or 422.
#[expect(clippy::result_large_err, reason = "the error is the answer to send")]
fn locate(s: &Inner, p: &Value, name: &str) -> Result<Key, Response> {
    let field = |k: &str| p[k].as_str().map(str::to_string);
    let (Some(project), Some(env)) = (field("projectId"), field("environment")) else {
        let issues = json!([{"code": "invalid_type", "expected": "string", "received": "undefined", "path": ["projectId"], "message": "Required"}]);
        return Err(limited(
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ValidationFailure",
                issues,
            ),
            s,
        ));
    };
    let path = field("secretPath").unwrap_or_else(|| "/".into());
    let Some(envs) = s.projects.get(&project) else {
        let m = format!("Project with ID '{project}' not found");
        return Err(limited(
            error(StatusCode::NOT_FOUND, "NotFound", m.into()),
            s,
        ));
    };
    if !envs.contains(&env) {
        let m = format!("Environment with slug '{env}' in project with ID '{project}' not found");
        return Err(limited(
            error(StatusCode::NOT_FOUND, "NotFound", m.into()),
            s,
        ));
    }
    Ok((project, env, path, name.to_string()))
}

fn secret_json(s: &Inner, k: &Key, x: &Secret, show: bool) -> Value {
    let hidden = s.hide_values || !show;
    json!({"secret": {
        "id": format!("sec-{}", k.3), "_id": format!("sec-{}", k.3),
        "workspace": k.0, "environment": k.1, "secretPath": k.2,
        "version": x.version, "type": "shared", "secretKey": k.3,
        "secretValue": if hidden { "<hidden-by-infisical>".to_string() } else { x.value.clone() },
        "secretValueHidden": hidden, "secretComment": "",
        "createdAt": "2026-12-01T00:00:00.000Z", "updatedAt": "2026-12-01T00:00:00.000Z",
        "tags": [], "secretMetadata": [],
    }})
}

fn not_found(s: &Inner, name: &str) -> Response {
    let m = format!("Secret with name '{name}' not found");
    limited(error(StatusCode::NOT_FOUND, "NotFound", m.into()), s)
}

async fn read(
    State(st): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let s = match admit(&st, &headers, true).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let p = json!(q);
    let k = match locate(&s, &p, &name) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let show = q.get("viewSecretValue").map(String::as_str) == Some("true");
    match s.secrets.get(&k) {
        Some(x) => limited(axum::Json(secret_json(&s, &k, x, show)).into_response(), &s),
        None => not_found(&s, &name),
    }
}

/// POST creates (400 if it exists), PATCH updates (404 if it does not); both may be held.
async fn write(
    st: Shared,
    name: String,
    headers: HeaderMap,
    body: String,
    create: bool,
) -> Response {
    let mut s = match admit(&st, &headers, true).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let p: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let k = match locate(&s, &p, &name) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let Some(value) = p["secretValue"].as_str() else {
        let issues = json!([{"code": "invalid_type", "expected": "string", "received": "undefined", "path": ["secretValue"], "message": "Required"}]);
        return limited(
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ValidationFailure",
                issues,
            ),
            &s,
        );
    };
    match (s.secrets.contains_key(&k), create) {
        (true, true) => {
            let m = format!("Secret with name '{name}' already exists");
            return limited(error(StatusCode::BAD_REQUEST, "BadRequest", m.into()), &s);
        }
        (false, false) => return not_found(&s, &name),
        _ => {}
    }
    if s.approval.contains(&(k.0.clone(), k.1.clone())) {
        let a = json!({"approval": {"id": "apr-0001", "status": "open", "slug": "change-policy"}});
        return limited(axum::Json(a).into_response(), &s);
    }
    let version = s.secrets.get(&k).map_or(1, |x| x.version + 1);
    let x = Secret {
        value: trimmed(value),
        version,
    };
    s.secrets.insert(k.clone(), x.clone());
    limited(
        axum::Json(secret_json(&s, &k, &x, true)).into_response(),
        &s,
    )
}

async fn create(
    State(st): State<Shared>,
    Path(n): Path<String>,
    h: HeaderMap,
    b: String,
) -> Response {
    write(st, n, h, b, true).await
}

async fn update(
    State(st): State<Shared>,
    Path(n): Path<String>,
    h: HeaderMap,
    b: String,
) -> Response {
    write(st, n, h, b, false).await
}

async fn delete(
    State(st): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut s = match admit(&st, &headers, true).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let p: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let k = match locate(&s, &p, &name) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match s.secrets.remove(&k) {
        Some(x) => limited(
            axum::Json(secret_json(&s, &k, &x, false)).into_response(),
            &s,
        ),
        None => not_found(&s, &name),
    }
}
