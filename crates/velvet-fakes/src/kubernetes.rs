//! The Kubernetes API (providers.md §6), enough for Secrets and rollouts, spoken well enough that
//! `kubectl` reads from it: discovery (`/api`, `/apis`, `/api/v1`, `/apis/apps/v1`), `GET|PATCH`
//! of `/api/v1/namespaces/{ns}/secrets/{name}` (merge or strategic-merge patches; values base64 in
//! `data`), `POST` to create one, and `GET|PATCH` of Deployments, StatefulSets and DaemonSets,
//! whose template change rolls out after a set delay. Errors are `Status` objects.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Secret {
    /// Key → base64 value, as the API holds it.
    data: BTreeMap<String, String>,
    resource_version: u64,
}

#[derive(Debug, Clone)]
struct Workload {
    replicas: u64,
    generation: u64,
    annotations: Map<String, Value>,
    /// When the template last changed: the rollout completes `rollout` later.
    changed_at: Option<Instant>,
    paused: bool,
    restarts: u64,
}

#[derive(Debug)]
struct Inner {
    token: String,
    secrets: BTreeMap<(String, String), Secret>,
    /// (resource, namespace, name), resource being `deployments`, `statefulsets` or `daemonsets`.
    workloads: BTreeMap<(String, String, String), Workload>,
    rollout: Duration,
    /// Every answer waits this long first.
    delay: Duration,
    faults: VecDeque<u16>,
    next_version: u64,
    /// GETs without credentials are let in (as `system:anonymous` on a cluster whose RBAC grants
    /// it reads): kubectl sends no token over plain HTTP.
    anonymous_reads: bool,
}

/// A running fake API server; clones share it.
#[derive(Debug, Clone)]
pub struct Kubernetes {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

type Shared = Arc<Mutex<Inner>>;

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    (code, axum::Json(body)).into_response()
}

const WORKLOADS: [(&str, &str); 3] = [
    ("deployments", "Deployment"),
    ("statefulsets", "StatefulSet"),
    ("daemonsets", "DaemonSet"),
];

impl Kubernetes {
    /// Starts the fake accepting the bearer `token`; rollouts take `rollout` to complete.
    pub async fn start(token: &str, rollout: Duration) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            token: token.into(),
            secrets: BTreeMap::new(),
            workloads: BTreeMap::new(),
            rollout,
            delay: Duration::ZERO,
            faults: VecDeque::new(),
            next_version: 1000,
            anonymous_reads: false,
        }));
        let router = Router::new()
            .route("/api", get(api_versions))
            .route("/apis", get(api_groups))
            .route("/api/v1", get(core_resources))
            .route("/apis/apps/v1", get(apps_resources))
            .route(
                "/api/v1/namespaces/{ns}/secrets",
                axum::routing::post(create_secret),
            )
            .route(
                "/api/v1/namespaces/{ns}/secrets/{name}",
                get(get_secret).patch(patch_secret),
            )
            .route(
                "/apis/apps/v1/namespaces/{ns}/{resource}/{name}",
                get(get_workload).patch(patch_workload),
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

    /// A Secret with these plaintext values (stored base64, as the API does).
    pub fn add_secret(&self, ns: &str, name: &str, values: &[(&str, &str)]) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        self.with(|s| {
            s.next_version += 1;
            let data = values
                .iter()
                .map(|(k, v)| (k.to_string(), b64.encode(v)))
                .collect();
            let secret = Secret {
                data,
                resource_version: s.next_version,
            };
            s.secrets.insert((ns.into(), name.into()), secret);
        })
    }

    /// A Secret's values, decoded.
    pub fn secret(&self, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        self.with(|s| {
            s.secrets.get(&(ns.into(), name.into())).map(|x| {
                x.data
                    .iter()
                    .map(|(k, v)| {
                        let plain = b64.decode(v).unwrap_or_default();
                        (k.clone(), String::from_utf8_lossy(&plain).into_owned())
                    })
                    .collect()
            })
        })
    }

    /// A Deployment (`deployments`), StatefulSet or DaemonSet with `replicas`.
    pub fn add_workload(&self, resource: &str, ns: &str, name: &str, replicas: u64) {
        self.with(|s| {
            let w = Workload {
                replicas,
                generation: 1,
                annotations: Map::new(),
                changed_at: None,
                paused: false,
                restarts: 0,
            };
            s.workloads
                .insert((resource.into(), ns.into(), name.into()), w);
        })
    }

    /// How many times a workload's template was changed (restarted).
    pub fn restarts(&self, resource: &str, ns: &str, name: &str) -> u64 {
        self.with(|s| {
            s.workloads
                .get(&(resource.into(), ns.into(), name.into()))
                .map_or(0, |w| w.restarts)
        })
    }

    pub fn pause(&self, resource: &str, ns: &str, name: &str) {
        self.with(|s| {
            if let Some(w) = s
                .workloads
                .get_mut(&(resource.into(), ns.into(), name.into()))
            {
                w.paused = true;
            }
        })
    }

    pub fn set_delay(&self, d: Duration) {
        self.with(|s| s.delay = d)
    }

    pub fn fail_next(&self, statuses: &[u16]) {
        self.with(|s| s.faults.extend(statuses))
    }

    /// Lets GETs without a token in, for `kubectl` (which sends none over plain HTTP).
    pub fn allow_anonymous_reads(&self) {
        self.with(|s| s.anonymous_reads = true)
    }

    pub fn expire_token(&self) {
        self.with(|s| s.token = String::new())
    }

    /// A kubeconfig for `kubectl --kubeconfig` pointing at this fake with `token`.
    pub fn kubeconfig(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: '{}'}}\nusers:\n- name: velvet\n  user: {{token: '{token}'}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: velvet}}\ncurrent-context: fake\n",
            self.url()
        )
    }
}

async fn admit<'a>(
    st: &'a Shared,
    headers: &HeaderMap,
    read: bool,
) -> Result<std::sync::MutexGuard<'a, Inner>, Response> {
    let delay = st.lock().expect("fake state").delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut s = st.lock().expect("fake state");
    if let Some(code) = s.faults.pop_front() {
        let c = StatusCode::from_u16(code).expect("a status");
        let mut r = status(c, "TooManyRequests", "the server is busy");
        if code == 429 {
            r.headers_mut().insert("retry-after", 1.into());
        }
        return Err(r);
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let anonymous = read && s.anonymous_reads && !headers.contains_key("authorization");
    if !anonymous && (s.token.is_empty() || bearer != Some(s.token.as_str())) {
        return Err(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
        ));
    }
    Ok(s)
}

async fn api_versions() -> Response {
    axum::Json(json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}))
    .into_response()
}

async fn api_groups() -> Response {
    let v = json!({"groupVersion": "apps/v1", "version": "v1"});
    axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1",
        "groups": [{"name": "apps", "versions": [v], "preferredVersion": v}]}))
    .into_response()
}

fn resource(name: &str, kind: &str, verbs: &[&str]) -> Value {
    json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": true, "kind": kind, "verbs": verbs})
}

async fn core_resources() -> Response {
    let verbs = [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ];
    axum::Json(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
        "resources": [resource("secrets", "Secret", &verbs)]}),
    )
    .into_response()
}

async fn apps_resources() -> Response {
    let verbs = ["get", "list", "patch", "update"];
    let list: Vec<Value> = WORKLOADS
        .iter()
        .map(|(n, k)| resource(n, k, &verbs))
        .collect();
    axum::Json(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1",
        "resources": list}),
    )
    .into_response()
}

fn secret_json(ns: &str, name: &str, x: &Secret) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": x.resource_version.to_string()},
        "data": x.data})
}

fn not_found(kind: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
    )
}

async fn get_secret(
    State(st): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    let s = match admit(&st, &h, true).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match s.secrets.get(&(ns.clone(), name.clone())) {
        Some(x) => axum::Json(secret_json(&ns, &name, x)).into_response(),
        None => not_found("secrets", &name),
    }
}

fn merge_types(h: &HeaderMap) -> bool {
    matches!(
        h.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/merge-patch+json" | "application/strategic-merge-patch+json")
    )
}

async fn patch_secret(
    State(st): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    h: HeaderMap,
    body: String,
) -> Response {
    let mut s = match admit(&st, &h, false).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !merge_types(&h) {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        );
    }
    let patch: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    s.next_version += 1;
    let version = s.next_version;
    let Some(x) = s.secrets.get_mut(&(ns.clone(), name.clone())) else {
        return not_found("secrets", &name);
    };
    if let Some(data) = patch["data"].as_object() {
        for (k, v) in data {
            match v.as_str() {
                Some(v) => x.data.insert(k.clone(), v.to_string()),
                None => x.data.remove(k),
            };
        }
    }
    x.resource_version = version;
    axum::Json(secret_json(&ns, &name, x)).into_response()
}

async fn create_secret(
    State(st): State<Shared>,
    Path(ns): Path<String>,
    h: HeaderMap,
    body: String,
) -> Response {
    let mut s = match admit(&st, &h, false).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let Some(name) = v["metadata"]["name"].as_str().map(str::to_string) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "Secret \"\" is invalid: metadata.name: Required value",
        );
    };
    if s.secrets.contains_key(&(ns.clone(), name.clone())) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("secrets \"{name}\" already exists"),
        );
    }
    s.next_version += 1;
    let data = v["data"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let x = Secret {
        data,
        resource_version: s.next_version,
    };
    let out = secret_json(&ns, &name, &x);
    s.secrets.insert((ns, name), x);
    (StatusCode::CREATED, axum::Json(out)).into_response()
}

fn workload_json(resource: &str, ns: &str, name: &str, w: &Workload, rollout: Duration) -> Value {
    let kind = WORKLOADS
        .iter()
        .find(|(r, _)| *r == resource)
        .map_or("Deployment", |(_, k)| k);
    let done = w.changed_at.is_none_or(|t| t.elapsed() >= rollout);
    let (observed, updated) = if done {
        (w.generation, w.replicas)
    } else {
        (w.generation - 1, 0)
    };
    json!({"apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": name, "namespace": ns, "generation": w.generation},
        "spec": {"replicas": w.replicas, "paused": w.paused,
            "template": {"metadata": {"annotations": w.annotations}}},
        "status": {"observedGeneration": observed, "replicas": w.replicas,
            "updatedReplicas": updated, "readyReplicas": w.replicas, "availableReplicas": w.replicas,
            "updatedNumberScheduled": updated, "numberAvailable": w.replicas,
            "desiredNumberScheduled": w.replicas, "currentReplicas": w.replicas}})
}

async fn get_workload(
    State(st): State<Shared>,
    Path((ns, resource, name)): Path<(String, String, String)>,
    h: HeaderMap,
) -> Response {
    let s = match admit(&st, &h, true).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match s
        .workloads
        .get(&(resource.clone(), ns.clone(), name.clone()))
    {
        Some(w) => axum::Json(workload_json(&resource, &ns, &name, w, s.rollout)).into_response(),
        None => not_found(&format!("{resource}.apps"), &name),
    }
}

async fn patch_workload(
    State(st): State<Shared>,
    Path((ns, resource, name)): Path<(String, String, String)>,
    h: HeaderMap,
    body: String,
) -> Response {
    let mut s = match admit(&st, &h, false).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !merge_types(&h) {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "unsupported patch type",
        );
    }
    let rollout = s.rollout;
    let Some(w) = s
        .workloads
        .get_mut(&(resource.clone(), ns.clone(), name.clone()))
    else {
        return not_found(&format!("{resource}.apps"), &name);
    };
    let patch: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if let Some(a) = patch["spec"]["template"]["metadata"]["annotations"].as_object() {
        let mut changed = false;
        for (k, v) in a {
            if w.annotations.get(k) != Some(v) {
                w.annotations.insert(k.clone(), v.clone());
                changed = true;
            }
        }
        if changed {
            w.generation += 1;
            w.changed_at = Some(Instant::now());
            w.restarts += 1;
        }
    }
    axum::Json(workload_json(&resource, &ns, &name, w, rollout)).into_response()
}
