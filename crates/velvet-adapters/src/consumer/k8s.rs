//! `k8s_secret`: one key of a Kubernetes Secret. Apply merge-patches `data.{key}` (creating the
//! Secret when absent) only when it does not already hold the value; verify reads it back, then
//! restarts each declared workload (a template annotation naming the job and version, so a
//! repeated verify restarts nothing twice) and waits for its rollout to complete.

use super::{Consumer, Renderer};
use crate::http::{status_error_saying, transport_error};
use crate::{AdapterError, Delivery, Result, same_secret};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use velvet_core::config::RestartTarget;
use velvet_core::secret::SecretString;

/// The annotation a restart sets: Velvet's own, beside kubectl's `restartedAt`.
const RESTARTED_FOR: &str = "velvet.dev/restarted-for";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a rollout is looked at while waiting.
const ROLLOUT_POLL: Duration = Duration::from_millis(250);

/// Where the Secret lives and what restarts after it changes.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub secret: String,
    pub key: String,
    pub restart: Vec<RestartTarget>,
    pub rollout_timeout: Duration,
}

pub struct K8sSecret {
    api_url: String,
    target: Target,
    token: SecretString,
    /// Where the token came from, named in errors.
    token_from: String,
    client: reqwest::Client,
    render: Renderer,
    timeout: Duration,
}

impl std::fmt::Debug for K8sSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sSecret")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl K8sSecret {
    /// `ca_pem`: the API server's CA, trusted besides the system roots.
    pub fn new(
        api_url: &str,
        target: Target,
        token: SecretString,
        token_from: &str,
        ca_pem: Option<&[u8]>,
        render: Renderer,
    ) -> Result<Self> {
        let mut b = crate::http::builder("velvet");
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|_| AdapterError::permanent("ca_file is not a PEM certificate"))?;
            b = b.add_root_certificate(cert);
        }
        let client = b
            .build()
            .map_err(|e| AdapterError::permanent(format!("the Kubernetes client: {e}")))?;
        Ok(Self {
            api_url: api_url.trim_end_matches('/').to_string(),
            target,
            token,
            token_from: token_from.to_string(),
            client,
            render,
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// Another per-call timeout than 30 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn secret_path(&self) -> String {
        let t = &self.target;
        format!("/api/v1/namespaces/{}/secrets/{}", t.namespace, t.secret)
    }

    /// Sends; 2xx and 404 come back as (status, body), anything else is an error that says what
    /// to do.
    async fn send(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.api_url))
            .bearer_auth(self.token.expose())
            .timeout(self.timeout);
        if let Some(b) = body {
            let kind = if method == Method::PATCH {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            req = req
                .header(reqwest::header::CONTENT_TYPE, kind)
                .body(serde_json::to_vec(b).expect("JSON serialises"));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(&format!("Kubernetes {what}"), &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok((status, body));
        }
        // A `Status` object: `{message, reason, code}`, which never holds a value.
        let said = format!(
            "{} ({})",
            body["message"].as_str().unwrap_or("no message"),
            body["reason"].as_str().unwrap_or("no reason")
        );
        let t = &self.target;
        Err(match status {
            StatusCode::UNAUTHORIZED => AdapterError::permanent(format!(
                "the Kubernetes API refused the token from {} for {what} (401: {said}); it is \
                 wrong or expired",
                self.token_from
            )),
            StatusCode::FORBIDDEN => AdapterError::permanent(format!(
                "RBAC forbids {what} in namespace `{}` (403: {said}); grant get, patch and create \
                 on secrets (and get, patch on the restarted workloads) to the token's account",
                t.namespace
            )),
            s => status_error_saying(&format!("Kubernetes {what}"), s, &headers, &said),
        })
    }

    /// The Secret's `data.{key}`, decoded; `None` when the key or the Secret is absent.
    async fn read(&self) -> Result<Option<Option<Vec<u8>>>> {
        let (status, body) = self
            .send("reading the Secret", Method::GET, &self.secret_path(), None)
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(
            body["data"][&self.target.key]
                .as_str()
                .and_then(|v| STANDARD.decode(v).ok()),
        ))
    }

    /// Sets `data.{key}` to `text` (or removes it for `None`) unless it already is so.
    async fn write(&self, text: Option<&str>) -> Result<()> {
        let held = self.read().await?;
        let same = match (&held, text) {
            (Some(Some(h)), Some(t)) => same_secret(h, t.as_bytes()),
            (Some(None) | None, None) => true,
            _ => false,
        };
        if same {
            return Ok(());
        }
        let t = &self.target;
        let value = text.map_or(Value::Null, |s| STANDARD.encode(s).into());
        if held.is_none() {
            let body = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": t.secret, "namespace": t.namespace},
                "data": {t.key.clone(): value}});
            let path = format!("/api/v1/namespaces/{}/secrets", t.namespace);
            let (status, body) = self
                .send("creating the Secret", Method::POST, &path, Some(&body))
                .await?;
            if status == StatusCode::NOT_FOUND {
                return Err(AdapterError::permanent(format!(
                    "namespace `{}` does not exist (404: {})",
                    t.namespace,
                    body["message"].as_str().unwrap_or("not found")
                )));
            }
            return Ok(());
        }
        let patch = json!({"data": {t.key.clone(): value}});
        self.send(
            "patching the Secret",
            Method::PATCH,
            &self.secret_path(),
            Some(&patch),
        )
        .await
        .map(drop)
    }

    fn workload_path(&self, w: &RestartTarget) -> String {
        format!(
            "/apis/apps/v1/namespaces/{}/{}/{}",
            self.target.namespace,
            w.resource(),
            w.name
        )
    }

    /// Restarts `w` once for `stamp` (the job, version and step), then waits until its rollout
    /// completes.
    async fn restart(&self, w: &RestartTarget, stamp: &str) -> Result<()> {
        let path = self.workload_path(w);
        let (status, body) = self
            .send("reading a workload", Method::GET, &path, None)
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Err(AdapterError::permanent(format!(
                "{} `{}` not found in namespace `{}`",
                w.kind, w.name, self.target.namespace
            )));
        }
        if body["spec"]["paused"] == Value::Bool(true) {
            return Err(AdapterError::permanent(format!(
                "{} `{}` is paused: resume it (kubectl rollout resume) so it can restart",
                w.kind, w.name
            )));
        }
        if body["spec"]["template"]["metadata"]["annotations"][RESTARTED_FOR] != stamp {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let patch = json!({"spec": {"template": {"metadata": {"annotations": {
                RESTARTED_FOR: stamp, "kubectl.kubernetes.io/restartedAt": now}}}}});
            self.send("restarting a workload", Method::PATCH, &path, Some(&patch))
                .await?;
        }
        let deadline = tokio::time::Instant::now() + self.target.rollout_timeout;
        loop {
            let (_, body) = self
                .send("watching a rollout", Method::GET, &path, None)
                .await?;
            if rolled_out(&body) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AdapterError::retryable(format!(
                    "the rollout of {} `{}` did not complete within {:?}",
                    w.kind, w.name, self.target.rollout_timeout
                )));
            }
            tokio::time::sleep(ROLLOUT_POLL).await;
        }
    }
}

/// A rollout is complete when the controller has seen the latest template and every replica is
/// updated and available (`kubectl rollout status`'s test, for the three kinds).
fn rolled_out(w: &Value) -> bool {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let (meta, spec, st) = (&w["metadata"], &w["spec"], &w["status"]);
    if n(&st["observedGeneration"]) < n(&meta["generation"]) {
        return false;
    }
    if w["kind"] == "DaemonSet" {
        let want = n(&st["desiredNumberScheduled"]);
        return n(&st["updatedNumberScheduled"]) >= want && n(&st["numberAvailable"]) >= want;
    }
    let want = spec["replicas"].as_u64().unwrap_or(1);
    n(&st["updatedReplicas"]) >= want && n(&st["availableReplicas"]) >= want
}

/// A pod's service account, where `k8s_secret` finds its credential without `token_env`.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The Kubernetes token (and where it came from, for errors) and the CA to trust.
pub(super) fn credentials(
    token_env: Option<&str>,
    ca_file: Option<&std::path::Path>,
    need: &dyn Fn(&str) -> Result<String>,
) -> Result<(SecretString, String, Option<Vec<u8>>)> {
    let read = |p: &std::path::Path| {
        std::fs::read(p)
            .map_err(|e| AdapterError::permanent(format!("cannot read {}: {e}", p.display())))
    };
    let sa = std::path::Path::new(SERVICE_ACCOUNT);
    let (token, from) = match token_env {
        Some(env) => (need(env)?, format!("`{env}`")),
        None => {
            let t = read(&sa.join("token")).map_err(|e| {
                AdapterError::permanent(format!(
                    "no `token_env` and no service account token ({e}): set `token_env`, or run \
                     Velvet in a pod with a service account"
                ))
            })?;
            let t = String::from_utf8(t)
                .map_err(|_| AdapterError::permanent("the service account token is not text"))?;
            (t.trim().to_string(), "the pod's service account".into())
        }
    };
    let ca = match ca_file {
        Some(p) => Some(read(p)?),
        None if token_env.is_none() => read(&sa.join("ca.crt")).ok(),
        None => None,
    };
    Ok((SecretString::new(token), from, ca))
}

#[async_trait]
impl Consumer for K8sSecret {
    async fn apply(&self, d: &Delivery<'_>) -> Result<()> {
        self.write(Some(&self.render.render(d.new)?)).await
    }

    async fn verify(&self, d: &Delivery<'_>) -> Result<()> {
        let want = self.render.render(d.new)?;
        let t = &self.target;
        match self.read().await? {
            Some(Some(h)) if same_secret(&h, want.as_bytes()) => {}
            Some(Some(_)) => {
                return Err(AdapterError::permanent(format!(
                    "Secret `{}/{}` holds a different value in `{}`",
                    t.namespace, t.secret, t.key
                )));
            }
            _ => {
                return Err(AdapterError::permanent(format!(
                    "Secret `{}/{}` has no `{}`",
                    t.namespace, t.secret, t.key
                )));
            }
        }
        let stamp = format!("{}/{}", d.job_id, d.version);
        for w in &t.restart {
            self.restart(w, &stamp).await?;
        }
        Ok(())
    }

    /// One key holds one value; the previous one is gone once the new one is written.
    async fn revoke_previous(&self, _: &Delivery<'_>) -> Result<()> {
        Ok(())
    }

    /// Puts the previous value back (or removes the key) and restarts the workloads again, so
    /// no pod keeps the discarded value.
    async fn rollback(&self, d: &Delivery<'_>) -> Result<()> {
        let prev = d.previous.map(|p| self.render.render(p)).transpose()?;
        self.write(prev.as_deref().map(|s| s.as_str())).await?;
        let stamp = format!("{}/{}/rollback", d.job_id, d.version);
        for w in &self.target.restart {
            self.restart(w, &stamp).await?;
        }
        Ok(())
    }

    fn default_lock_key(&self) -> String {
        format!("k8s:{}/{}", self.target.namespace, self.target.secret)
    }

    /// The token can read the Secret (and each restarted workload); nothing written.
    async fn probe(&self) -> Result<String> {
        let found = match self.read().await? {
            Some(Some(_)) => "holds",
            Some(None) => "exists without",
            None => "does not exist yet and will be created with",
        };
        for w in &self.target.restart {
            let (status, _) = self
                .send(
                    "reading a workload",
                    Method::GET,
                    &self.workload_path(w),
                    None,
                )
                .await?;
            if status == StatusCode::NOT_FOUND {
                return Err(AdapterError::permanent(format!(
                    "{} `{}` not found in namespace `{}`",
                    w.kind, w.name, self.target.namespace
                )));
            }
        }
        let t = &self.target;
        Ok(format!(
            "the token from {} can read Secret `{}/{}`, which {found} `{}`; {} workloads to restart found",
            self.token_from,
            t.namespace,
            t.secret,
            t.key,
            t.restart.len()
        ))
    }
}
