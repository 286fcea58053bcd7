//! `github_actions_secret`: one Actions secret of a repository, an environment or an
//! organisation. The value is sealed (libsodium `crypto_box_seal`) to the target's public key,
//! fetched once per consumer and cached by `key_id` (a 422 for a rotated key fetches it again).
//! GitHub never shows a secret's value: verify proves the secret's `updated_at` is not older than
//! the write GitHub answered, and `verify.probe` proves the value works.

use super::{Consumer, Renderer};
use crate::http::{client, status_error_saying, transport_error};
use crate::{AdapterError, Delivery, Result};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Mutex;
use velvet_core::config::GithubScope;
use velvet_core::secret::SecretString;

const ACCEPT: &str = "application/vnd.github+json";
const API_VERSION: &str = "2022-11-28";
/// How long one call may take before it counts as a (retryable) timeout.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct GithubActionsSecret {
    api_url: String,
    scope: GithubScope,
    secret_name: String,
    token: SecretString,
    token_env: String,
    render: Renderer,
    /// The target's public key: `key_id` and the key.
    key: Mutex<Option<(String, crypto_box::PublicKey)>>,
    /// When GitHub answered this consumer's last write (its `Date`), for verify.
    written_at: Mutex<Option<DateTime<Utc>>>,
    timeout: std::time::Duration,
    budget: std::sync::Arc<crate::pace::Budget>,
}

impl std::fmt::Debug for GithubActionsSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubActionsSecret")
            .field("scope", &self.scope)
            .field("secret_name", &self.secret_name)
            .finish_non_exhaustive()
    }
}

/// What came back: the status, the `Date` header, and the JSON body (`Null` when empty).
struct Answer {
    status: StatusCode,
    date: Option<DateTime<Utc>>,
    body: Value,
}

impl GithubActionsSecret {
    pub fn new(
        api_url: &str,
        scope: GithubScope,
        secret_name: &str,
        token: SecretString,
        token_env: &str,
        render: Renderer,
    ) -> Self {
        let api_url = api_url.trim_end_matches('/').to_string();
        let budget = crate::pace::budget_for("github", &api_url, token.expose(), 1.0);
        Self {
            api_url,
            scope,
            secret_name: secret_name.to_string(),
            token,
            token_env: token_env.to_string(),
            render,
            key: Mutex::new(None),
            written_at: Mutex::new(None),
            timeout: REQUEST_TIMEOUT,
            budget,
        }
    }

    /// Another per-call timeout than [`REQUEST_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn target(&self) -> String {
        match &self.scope {
            GithubScope::Repository {
                repository,
                environment: Some(e),
            } => format!("environment `{e}` of `{repository}`"),
            GithubScope::Repository { repository, .. } => format!("repository `{repository}`"),
            GithubScope::Organization { organization, .. } => {
                format!("organisation `{organization}`")
            }
        }
    }

    /// Sends; a 2xx, 404 or 422 comes back (callers read those), anything else is an error that
    /// says what to do.
    async fn send(
        &self,
        what: &str,
        method: Method,
        suffix: &str,
        body: Option<&Value>,
    ) -> Result<Answer> {
        let url = format!("{}{}{suffix}", self.api_url, self.scope.secrets_path());
        let mut req = client()
            .request(method, url)
            .header(reqwest::header::ACCEPT, ACCEPT)
            .header("X-GitHub-Api-Version", API_VERSION)
            .bearer_auth(self.token.expose())
            .timeout(self.timeout);
        if let Some(b) = body {
            req = req.json(b);
        }
        let permit = self.budget.acquire().await;
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(&format!("GitHub {what}"), &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let num = |k: &str| headers.get(k)?.to_str().ok()?.trim().parse::<i64>().ok();
        let (left, reset_at) = (num("x-ratelimit-remaining"), num("x-ratelimit-reset"));
        let reset = reset_at
            .map(|at| std::time::Duration::from_secs((at - Utc::now().timestamp()).max(0) as u64));
        permit.window(left.map(|l| l.max(0) as u64), reset);
        let date = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.with_timezone(&Utc));
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success()
            || status == StatusCode::NOT_FOUND
            || status == StatusCode::UNPROCESSABLE_ENTITY
        {
            return Ok(Answer { status, date, body });
        }
        // `{message, documentation_url, status}`: GitHub's words, which never hold a value.
        let said = body["message"].as_str().unwrap_or("no message").to_string();
        let limited = left == Some(0) || headers.contains_key(reqwest::header::RETRY_AFTER);
        Err(match status {
            StatusCode::UNAUTHORIZED => AdapterError::permanent(format!(
                "GitHub refused the token in `{}` for {what} (401: {said}); it is wrong, expired \
                 or revoked: put a valid one there",
                self.token_env
            )),
            // A rate limit, primary (remaining 0: until the reset) or secondary (retry-after).
            StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS if limited => {
                let retry_after = crate::http::retry_after(&headers).or(reset.map(|r| {
                    r.min(crate::http::MAX_RETRY_AFTER)
                        .max(std::time::Duration::from_secs(1))
                }));
                AdapterError::Retryable {
                    message: format!("GitHub rate-limited {what} ({}: {said})", status.as_u16()),
                    retry_after: retry_after.or(Some(std::time::Duration::from_secs(60))),
                }
            }
            StatusCode::FORBIDDEN => AdapterError::permanent(format!(
                "GitHub forbids {what} on {} with the token in `{}` (403: {said}); give it the \
                 `Secrets: Read and write` permission there",
                self.target(),
                self.token_env
            )),
            s => status_error_saying(&format!("GitHub {what}"), s, &headers, &said),
        })
    }

    fn not_found(&self, what: &str) -> AdapterError {
        AdapterError::permanent(format!(
            "GitHub has no {} for {what}, or the token in `{}` cannot see it (404); check the \
             name and the token's access",
            self.target(),
            self.token_env
        ))
    }

    /// The target's public key, fetched once (or again after GitHub rotated it).
    async fn public_key(&self, fresh: bool) -> Result<(String, crypto_box::PublicKey)> {
        if !fresh && let Some(k) = self.key.lock().expect("key cache").clone() {
            return Ok(k);
        }
        let a = self
            .send("reading the public key", Method::GET, "/public-key", None)
            .await?;
        if a.status != StatusCode::OK {
            return Err(self.not_found("reading the public key"));
        }
        let (Some(id), Some(key)) = (a.body["key_id"].as_str(), a.body["key"].as_str()) else {
            return Err(AdapterError::permanent(
                "GitHub answered a public key without `key_id` and `key`",
            ));
        };
        let bytes = STANDARD
            .decode(key)
            .map_err(|_| AdapterError::permanent("GitHub's public key is not standard base64"))?;
        let pk = crypto_box::PublicKey::from_slice(&bytes)
            .map_err(|_| AdapterError::permanent("GitHub's public key is not 32 bytes"))?;
        let k = (id.to_string(), pk);
        *self.key.lock().expect("key cache") = Some(k.clone());
        Ok(k)
    }

    /// Seals `text` to the target's key and PUTs it; a 422 (a key rotated since it was
    /// fetched) fetches the key again once.
    async fn put(&self, text: &str) -> Result<()> {
        let mut fresh = false;
        loop {
            let (key_id, pk) = self.public_key(fresh).await?;
            let sealed = pk
                .seal(&mut crypto_box::aead::OsRng, text.as_bytes())
                .map_err(|_| AdapterError::permanent("sealing the value failed"))?;
            let mut body = json!({"encrypted_value": STANDARD.encode(sealed), "key_id": key_id});
            if let GithubScope::Organization { visibility, .. } = &self.scope {
                body["visibility"] = visibility.clone().into();
            }
            let path = format!("/{}", self.secret_name);
            let a = self
                .send("writing the secret", Method::PUT, &path, Some(&body))
                .await?;
            match a.status {
                StatusCode::NOT_FOUND => return Err(self.not_found("writing the secret")),
                StatusCode::UNPROCESSABLE_ENTITY if !fresh => {
                    // Most likely a key GitHub rotated since it was fetched.
                    fresh = true;
                }
                StatusCode::UNPROCESSABLE_ENTITY => {
                    return Err(AdapterError::permanent(format!(
                        "GitHub refused the sealed secret (422: {})",
                        a.body["message"].as_str().unwrap_or("no message")
                    )));
                }
                _ => {
                    let at = a.date.unwrap_or_else(Utc::now);
                    *self.written_at.lock().expect("write time") = Some(at);
                    return Ok(());
                }
            }
        }
    }

    /// The secret's `updated_at`, or `None` when it is not there.
    async fn updated_at(&self) -> Result<Option<DateTime<Utc>>> {
        let path = format!("/{}", self.secret_name);
        let a = self
            .send("reading the secret's metadata", Method::GET, &path, None)
            .await?;
        if a.status != StatusCode::OK {
            return Ok(None);
        }
        a.body["updated_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| Some(t.with_timezone(&Utc)))
            .ok_or_else(|| AdapterError::permanent("GitHub answered a secret without `updated_at`"))
    }
}

#[async_trait]
impl Consumer for GithubActionsSecret {
    /// A PUT replaces the secret whole; one repeated after a crash writes the same value again.
    async fn apply(&self, d: &Delivery<'_>) -> Result<()> {
        self.put(&self.render.render(d.new)?).await
    }

    async fn verify(&self, _: &Delivery<'_>) -> Result<()> {
        let written = *self.written_at.lock().expect("write time");
        let Some(updated) = self.updated_at().await? else {
            return Err(AdapterError::permanent(format!(
                "{} has no secret `{}` after it was written",
                self.target(),
                self.secret_name
            )));
        };
        // `updated_at` has whole seconds; the write's `Date` too.
        match written {
            Some(w) if updated < w - chrono::Duration::seconds(1) => {
                Err(AdapterError::retryable(format!(
                    "secret `{}` was last updated at {updated}, before the write GitHub answered at {w}",
                    self.secret_name
                )))
            }
            _ => Ok(()),
        }
    }

    /// An Actions secret has one value; the previous one is gone once the new one is written.
    async fn revoke_previous(&self, _: &Delivery<'_>) -> Result<()> {
        Ok(())
    }

    async fn rollback(&self, d: &Delivery<'_>) -> Result<()> {
        if let Some(prev) = d.previous {
            return self.put(&self.render.render(prev)?).await;
        }
        // A 404 is a secret already gone: what the rollback wanted.
        let path = format!("/{}", self.secret_name);
        self.send("deleting the secret", Method::DELETE, &path, None)
            .await
            .map(drop)
    }

    fn default_lock_key(&self) -> String {
        format!("github:{}", self.scope.owner())
    }

    /// The token can read the target's public key (valid, permitted, target there); nothing
    /// written.
    async fn probe(&self) -> Result<String> {
        let (key_id, _) = self.public_key(true).await?;
        let has = self.updated_at().await?.is_some();
        Ok(format!(
            "the token in `{}` can read {}'s public key ({key_id}); secret `{}` {}",
            self.token_env,
            self.target(),
            self.secret_name,
            if has { "exists" } else { "will be created" }
        ))
    }
}
