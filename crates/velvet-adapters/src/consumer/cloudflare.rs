//! `cloudflare_worker_secret`: one `secret_text` secret of a Worker script. Cloudflare never shows
//! a secret's value, so verify proves only that the secret is listed with its type; the proof that
//! the Worker runs with the new value is the consumer's `verify.probe`. Each write deploys a new
//! Worker version, and a PUT names only this secret, so the script's other secrets are untouched
//! (I7). Every answer is an envelope `{success, errors, result}`: a 200 with `success: false` is a
//! failure.

use super::{Consumer, Renderer};
use crate::http::{client, status_error_saying, transport_error};
use crate::{AdapterError, Delivery, Result};
use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use velvet_core::secret::SecretString;

/// How long one call may take before it counts as a (retryable) timeout.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct CloudflareWorkerSecret {
    api_url: String,
    account_id: String,
    script: String,
    secret_name: String,
    api_token: SecretString,
    /// The variable the token came from, named in errors about it.
    api_token_env: String,
    render: Renderer,
    timeout: std::time::Duration,
    /// The token's budget (1,200 per five minutes), shared by every consumer using the token.
    budget: std::sync::Arc<crate::pace::Budget>,
}

impl std::fmt::Debug for CloudflareWorkerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudflareWorkerSecret")
            .field("account_id", &self.account_id)
            .field("script", &self.script)
            .field("secret_name", &self.secret_name)
            .finish_non_exhaustive()
    }
}

/// Where a secret lives: account, script and name.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub account_id: &'a str,
    pub script: &'a str,
    pub secret_name: &'a str,
}

impl CloudflareWorkerSecret {
    pub fn new(
        api_url: &str,
        target: Target<'_>,
        api_token: SecretString,
        api_token_env: &str,
        render: Renderer,
    ) -> Self {
        let api_url = api_url.trim_end_matches('/').to_string();
        // 1,200 requests per five minutes, reported as a window.
        let budget = crate::pace::budget_for("cloudflare", &api_url, api_token.expose(), 4.0);
        Self {
            api_url,
            account_id: target.account_id.to_string(),
            script: target.script.to_string(),
            secret_name: target.secret_name.to_string(),
            api_token,
            api_token_env: api_token_env.to_string(),
            render,
            timeout: REQUEST_TIMEOUT,
            budget,
        }
    }

    /// Another per-call timeout than [`REQUEST_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn request(&self, method: Method, suffix: &str) -> reqwest::RequestBuilder {
        let url = format!(
            "{}/accounts/{}/workers/scripts/{}/secrets{suffix}",
            self.api_url, self.account_id, self.script
        );
        client()
            .request(method, url)
            .bearer_auth(self.api_token.expose())
            .timeout(self.timeout)
    }

    /// Sends, and turns Cloudflare's envelope into its `result` or an error that says what to do.
    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<Value> {
        let permit = self.budget.acquire().await;
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(&format!("Cloudflare {what}"), &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let (left, reset) = ratelimit(&headers);
        permit.window(left, reset);
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        // `errors: [{code, message}]`: Cloudflare's words, which never hold a value.
        let said = match body["errors"].as_array() {
            Some(errs) if !errs.is_empty() => errs
                .iter()
                .map(|e| {
                    format!(
                        "{} [{}]",
                        e["message"].as_str().unwrap_or("no message"),
                        e["code"]
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            _ => "no error given".into(),
        };
        if status.is_success() {
            if body["success"] == Value::Bool(true) {
                return Ok(body["result"].clone());
            }
            return Err(AdapterError::permanent(format!(
                "Cloudflare answered {status} to {what} but its envelope says it failed: {said}"
            )));
        }
        let (account, script) = (&self.account_id, &self.script);
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => AdapterError::permanent(format!(
                "Cloudflare refused the API token in `{}` for {what} ({}: {said}); it is wrong, \
                 expired, or lacks `Workers Scripts: Edit` on account `{account}`: put a valid \
                 token there",
                self.api_token_env,
                status.as_u16()
            )),
            StatusCode::NOT_FOUND => AdapterError::permanent(format!(
                "Cloudflare has no Worker `{script}` in account `{account}` (404: {said}); check \
                 `script` and `account_id`, or deploy the Worker first"
            )),
            s => status_error_saying(&format!("Cloudflare {what}"), s, &headers, &said),
        })
    }

    /// The secrets the script lists: name and type, never a value.
    async fn list(&self) -> Result<Vec<(String, String)>> {
        let listed = self
            .send("listing secrets", self.request(Method::GET, ""))
            .await?;
        let Some(items) = listed.as_array() else {
            return Err(AdapterError::permanent(
                "Cloudflare listed secrets that are not an array",
            ));
        };
        Ok(items
            .iter()
            .map(|s| {
                let f = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                (f("name"), f("type"))
            })
            .collect())
    }

    /// Whether the script does not list this secret (after a refused delete: gone already?).
    async fn absent(&self) -> Result<bool> {
        Ok(!self
            .list()
            .await?
            .iter()
            .any(|(n, _)| *n == self.secret_name))
    }

    async fn put(&self, text: &str) -> Result<()> {
        let body = json!({"name": self.secret_name, "text": text, "type": "secret_text"});
        let result = self
            .send(
                "writing the secret",
                self.request(Method::PUT, "").json(&body),
            )
            .await?;
        if result["name"].as_str() != Some(self.secret_name.as_str()) {
            return Err(AdapterError::permanent(format!(
                "Cloudflare answered success but not for secret `{}`",
                self.secret_name
            )));
        }
        Ok(())
    }
}

/// `Ratelimit: "default";r=<left>;t=<seconds to reset>` (Cloudflare's, since September 2025).
fn ratelimit(headers: &reqwest::header::HeaderMap) -> (Option<u64>, Option<std::time::Duration>) {
    let Some(v) = headers.get("ratelimit").and_then(|v| v.to_str().ok()) else {
        return (None, None);
    };
    let param = |name: &str| {
        v.split(';').find_map(|p| {
            p.trim()
                .strip_prefix(name)?
                .strip_prefix('=')?
                .parse::<u64>()
                .ok()
        })
    };
    (param("r"), param("t").map(std::time::Duration::from_secs))
}

#[async_trait]
impl Consumer for CloudflareWorkerSecret {
    /// A PUT replaces the secret whole; a repeat after a crash writes the same text again (one
    /// more Worker version, which Cloudflare cannot be asked to avoid: it has no read-back).
    async fn apply(&self, d: &Delivery<'_>) -> Result<()> {
        self.put(&self.render.render(d.new)?).await
    }

    async fn verify(&self, _: &Delivery<'_>) -> Result<()> {
        let listed = self.list().await?;
        match listed.iter().find(|(n, _)| *n == self.secret_name) {
            Some((_, t)) if t == "secret_text" => Ok(()),
            Some((_, t)) => Err(AdapterError::permanent(format!(
                "Worker `{}` lists `{}` as a `{t}`, not a `secret_text`",
                self.script, self.secret_name
            ))),
            None => Err(AdapterError::permanent(format!(
                "Worker `{}` does not list secret `{}` after it was written",
                self.script, self.secret_name
            ))),
        }
    }

    /// A Worker secret has one value; the previous one is gone once the new one is written.
    async fn revoke_previous(&self, _: &Delivery<'_>) -> Result<()> {
        Ok(())
    }

    async fn rollback(&self, d: &Delivery<'_>) -> Result<()> {
        match d.previous {
            Some(prev) => self.put(&self.render.render(prev)?).await,
            None => {
                let path = format!("/{}", self.secret_name);
                match self
                    .send("deleting the secret", self.request(Method::DELETE, &path))
                    .await
                {
                    // Already gone: what the rollback wanted.
                    Err(e) if !e.is_retryable() && self.absent().await? => Ok(()),
                    r => r.map(drop),
                }
            }
        }
    }

    fn default_lock_key(&self) -> String {
        format!("cloudflare:script:{}/{}", self.account_id, self.script)
    }

    /// The token can list the script's secrets (valid, permitted, script there); nothing written.
    async fn probe(&self) -> Result<String> {
        let listed = self.list().await?;
        let has = listed.iter().any(|(n, _)| *n == self.secret_name);
        Ok(format!(
            "the token in `{}` can read Worker `{}` of account `{}`, which {} secret `{}` ({} secrets listed)",
            self.api_token_env,
            self.script,
            self.account_id,
            if has { "has" } else { "will get" },
            self.secret_name,
            listed.len()
        ))
    }
}
