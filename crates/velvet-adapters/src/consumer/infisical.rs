//! `infisical_secret`: one secret key in one project, environment and folder of Infisical (v4
//! API). Apply writes only when the secret does not already hold the value (a step repeated
//! after a crash makes no second version), creating it when absent; verify reads it back. The
//! server trims values, so values are compared trimmed. A write held by a change policy (an
//! `{"approval": …}` answer) is a failure: the new value is not there.

use super::{Consumer, Renderer};
use crate::http::{client, status_error_saying, transport_error};
use crate::{AdapterError, Delivery, Result, same_secret};
use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Mutex;
use velvet_core::secret::SecretString;
use zeroize::Zeroizing;

/// How long one call may take before it counts as a (retryable) timeout.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The credential: an access token, or a machine identity's universal-auth pair traded for one.
#[derive(Debug)]
pub enum Credential {
    Token {
        token: SecretString,
        env: String,
    },
    UniversalAuth {
        client_id: SecretString,
        client_secret: SecretString,
        /// The variables they came from, named in errors.
        envs: (String, String),
    },
}

impl Credential {
    fn names(&self) -> String {
        match self {
            Self::Token { env, .. } => format!("`{env}`"),
            Self::UniversalAuth { envs, .. } => format!("`{}` + `{}`", envs.0, envs.1),
        }
    }
}

/// Where the secret lives.
#[derive(Debug, Clone)]
pub struct Target {
    pub project_id: String,
    pub environment: String,
    pub secret_path: String,
    pub key: String,
}

pub struct InfisicalSecret {
    api_url: String,
    target: Target,
    credential: Credential,
    /// The access token in use: the configured one, or the last one universal auth gave.
    access: Mutex<Option<SecretString>>,
    render: Renderer,
    timeout: std::time::Duration,
    /// The host's budget (Infisical Cloud limits per IP), shared by every consumer of the host.
    budget: std::sync::Arc<crate::pace::Budget>,
}

impl std::fmt::Debug for InfisicalSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfisicalSecret")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// What a read found.
enum Held {
    Value(Zeroizing<String>),
    /// The identity may not read values (`secretValueHidden`).
    Hidden,
    Absent,
}

/// Equal after Infisical's trimming, compared in constant time.
fn same_trimmed(a: &str, b: &str) -> bool {
    same_secret(a.trim().as_bytes(), b.trim().as_bytes())
}

impl InfisicalSecret {
    pub fn new(api_url: &str, target: Target, credential: Credential, render: Renderer) -> Self {
        let access = match &credential {
            Credential::Token { token, .. } => Some(token.clone()),
            Credential::UniversalAuth { .. } => None,
        };
        let api_url = api_url.trim_end_matches('/').to_string();
        let budget = crate::pace::budget(&format!("infisical:{api_url}"), 1.0);
        Self {
            api_url,
            target,
            credential,
            access: Mutex::new(access),
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

    fn where_(&self) -> String {
        let t = &self.target;
        format!(
            "`{}` at {}{} of project `{}`",
            t.key, t.environment, t.secret_path, t.project_id
        )
    }

    /// Sends one request and reads Infisical's answer: the JSON body, or `(status, error, message,
    /// headers)` of a refusal.
    async fn call(&self, what: &str, req: reqwest::RequestBuilder) -> Result<Answer> {
        let permit = self.budget.acquire().await;
        let resp = req
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| transport_error(&format!("Infisical {what}"), &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        // `x-ratelimit-remaining` and `x-ratelimit-reset` (seconds), @fastify/rate-limit's.
        let num = |k: &str| headers.get(k)?.to_str().ok()?.trim().parse::<u64>().ok();
        permit.window(
            num("x-ratelimit-remaining"),
            num("x-ratelimit-reset").map(std::time::Duration::from_secs),
        );
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Answer::Ok(body));
        }
        // `{reqId, statusCode, message, error}`; a 422's message is a list of issues. Neither
        // holds a value.
        let message = match &body["message"] {
            Value::String(s) => s.clone(),
            Value::Null => "no message".into(),
            other => other.to_string(),
        };
        let error = body["error"].as_str().unwrap_or("").to_string();
        Ok(Answer::Refused {
            status,
            error,
            message,
            headers,
        })
    }

    /// The access token, logging in with universal auth when there is none yet.
    async fn access_token(&self, renew: bool) -> Result<SecretString> {
        if !renew && let Some(t) = self.access.lock().expect("token cache").clone() {
            return Ok(t);
        }
        let Credential::UniversalAuth {
            client_id,
            client_secret,
            ..
        } = &self.credential
        else {
            return Err(self.token_refused(StatusCode::FORBIDDEN, "the token has expired"));
        };
        let body = json!({"clientId": client_id.expose(), "clientSecret": client_secret.expose()});
        let url = format!("{}/api/v1/auth/universal-auth/login", self.api_url);
        let req = client().post(url).json(&body);
        match self.call("login", req).await? {
            Answer::Ok(v) => match v["accessToken"].as_str() {
                Some(t) => {
                    let t = SecretString::new(t.to_string());
                    *self.access.lock().expect("token cache") = Some(t.clone());
                    Ok(t)
                }
                None => Err(AdapterError::permanent(
                    "Infisical's login answered without an accessToken",
                )),
            },
            Answer::Refused {
                status,
                message,
                headers,
                ..
            } => Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST => {
                    AdapterError::permanent(format!(
                        "Infisical refused the universal-auth login with {} ({}: {message}); put \
                         the machine identity's client id and a valid client secret there",
                        self.credential.names(),
                        status.as_u16()
                    ))
                }
                s => self.other("Infisical login", s, &headers, &message),
            }),
        }
    }

    fn token_refused(&self, status: StatusCode, said: &str) -> AdapterError {
        AdapterError::permanent(format!(
            "Infisical refused the credential in {} ({}: {said}); it is wrong, expired or revoked: \
             put a valid one there",
            self.credential.names(),
            status.as_u16()
        ))
    }

    /// The shared classification with Infisical's message, and its "Please try again in N
    /// seconds" when no header says when.
    fn other(
        &self,
        what: &str,
        s: StatusCode,
        headers: &reqwest::header::HeaderMap,
        message: &str,
    ) -> AdapterError {
        match status_error_saying(what, s, headers, message) {
            AdapterError::Retryable {
                message: m,
                retry_after: None,
            } => AdapterError::Retryable {
                retry_after: message
                    .split("try again in ")
                    .nth(1)
                    .and_then(|n| n.split(' ').next()?.parse().ok())
                    .map(std::time::Duration::from_secs),
                message: m,
            },
            e => e,
        }
    }

    /// Sends a secrets call with the access token, renewing it once if universal auth's token
    /// expired; `Ok(None)` is a 404 for the secret itself.
    async fn send(
        &self,
        what: &str,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<Option<Value>> {
        let mut renewed = false;
        loop {
            let token = self.access_token(false).await?;
            let answer = self.call(what, build(token.expose())).await?;
            let (status, error, message, headers) = match answer {
                Answer::Ok(v) => return Ok(Some(v)),
                Answer::Refused {
                    status,
                    error,
                    message,
                    headers,
                } => (status, error, message, headers),
            };
            return Err(match status {
                // An expired access token is 403 TokenError: universal auth logs in again.
                StatusCode::FORBIDDEN
                    if error == "TokenError"
                        && !renewed
                        && matches!(self.credential, Credential::UniversalAuth { .. }) =>
                {
                    renewed = true;
                    self.access_token(true).await?;
                    continue;
                }
                StatusCode::UNAUTHORIZED => self.token_refused(status, &message),
                StatusCode::FORBIDDEN if error == "TokenError" => {
                    self.token_refused(status, &message)
                }
                StatusCode::FORBIDDEN => AdapterError::permanent(format!(
                    "Infisical forbids {what} of {} with {} (403 {error}: {message}); give the \
                     identity read and edit on that environment and path",
                    self.where_(),
                    self.credential.names()
                )),
                StatusCode::NOT_FOUND if message.starts_with("Secret") => return Ok(None),
                StatusCode::NOT_FOUND => AdapterError::permanent(format!(
                    "Infisical cannot find where {} lives (404: {message}); check `project_id`, \
                     `environment` and `secret_path`",
                    self.where_()
                )),
                s => self.other(&format!("Infisical {what}"), s, &headers, &message),
            });
        }
    }

    fn secret_url(&self) -> String {
        format!("{}/api/v4/secrets/{}", self.api_url, self.target.key)
    }

    fn scope(&self) -> Value {
        let t = &self.target;
        json!({"projectId": t.project_id, "environment": t.environment, "secretPath": t.secret_path})
    }

    async fn read(&self) -> Result<Held> {
        let t = &self.target;
        let mut url = reqwest::Url::parse(&self.secret_url())
            .map_err(|_| AdapterError::permanent("api_url does not parse"))?;
        url.query_pairs_mut()
            .append_pair("projectId", &t.project_id)
            .append_pair("environment", &t.environment)
            .append_pair("secretPath", &t.secret_path)
            .append_pair("type", "shared")
            .append_pair("viewSecretValue", "true");
        let got = self
            .send("reading the secret", |tok| {
                client().get(url.clone()).bearer_auth(tok)
            })
            .await?;
        let Some(v) = got else {
            return Ok(Held::Absent);
        };
        let s = &v["secret"];
        if s["secretValueHidden"] == Value::Bool(true) {
            return Ok(Held::Hidden);
        }
        match s["secretValue"].as_str() {
            Some(x) => Ok(Held::Value(Zeroizing::new(x.to_string()))),
            None => Err(AdapterError::permanent(
                "Infisical answered a secret without a secretValue",
            )),
        }
    }

    /// Writes `text` (PATCH, or POST when absent) unless the secret already holds it.
    async fn write(&self, text: &str) -> Result<()> {
        let method = match self.read().await? {
            Held::Value(v) if same_trimmed(&v, text) => return Ok(()),
            Held::Value(_) => Method::PATCH,
            Held::Hidden => return Err(self.hidden()),
            Held::Absent => Method::POST,
        };
        let mut body = self.scope();
        body["secretValue"] = text.into();
        body["type"] = "shared".into();
        let got = self
            .send("writing the secret", |tok| {
                client()
                    .request(method.clone(), self.secret_url())
                    .bearer_auth(tok)
                    .json(&body)
            })
            .await?;
        let Some(v) = got else {
            return Err(AdapterError::retryable(format!(
                "Infisical lost {} while it was written; retrying",
                self.where_()
            )));
        };
        if let Some(a) = v.get("approval") {
            return Err(AdapterError::permanent(format!(
                "a change policy on {} holds the write for approval (request `{}`), so the new \
                 value is not there; exempt Velvet's identity from the policy or approve and \
                 retry",
                self.where_(),
                a["id"].as_str().unwrap_or("?")
            )));
        }
        match v["secret"]["secretValue"].as_str() {
            Some(x) if same_trimmed(x, text) => Ok(()),
            _ if v["secret"]["secretValueHidden"] == Value::Bool(true) => Ok(()),
            _ => Err(AdapterError::permanent(format!(
                "Infisical answered the write but {} does not hold the written value",
                self.where_()
            ))),
        }
    }

    fn hidden(&self) -> AdapterError {
        AdapterError::permanent(format!(
            "the identity in {} cannot read the value of {} (secretValueHidden), so Velvet cannot \
             compare or verify it; give it read-value permission on that environment and path",
            self.credential.names(),
            self.where_()
        ))
    }
}

enum Answer {
    Ok(Value),
    Refused {
        status: StatusCode,
        error: String,
        message: String,
        headers: reqwest::header::HeaderMap,
    },
}

#[async_trait]
impl Consumer for InfisicalSecret {
    async fn apply(&self, d: &Delivery<'_>) -> Result<()> {
        self.write(&self.render.render(d.new)?).await
    }

    async fn verify(&self, d: &Delivery<'_>) -> Result<()> {
        let want = self.render.render(d.new)?;
        match self.read().await? {
            Held::Value(v) if same_trimmed(&v, &want) => Ok(()),
            Held::Value(_) => Err(AdapterError::permanent(format!(
                "{} holds a different value",
                self.where_()
            ))),
            Held::Hidden => Err(self.hidden()),
            Held::Absent => Err(AdapterError::permanent(format!(
                "{} is not there",
                self.where_()
            ))),
        }
    }

    /// One key holds one value; the previous one is gone once the new one is written.
    async fn revoke_previous(&self, _: &Delivery<'_>) -> Result<()> {
        Ok(())
    }

    async fn rollback(&self, d: &Delivery<'_>) -> Result<()> {
        if let Some(prev) = d.previous {
            return self.write(&self.render.render(prev)?).await;
        }
        let mut body = self.scope();
        body["type"] = "shared".into();
        // A 404 for the secret (`None`) means it is already gone: what the rollback wanted.
        self.send("deleting the secret", |tok| {
            client()
                .delete(self.secret_url())
                .bearer_auth(tok)
                .json(&body)
        })
        .await
        .map(drop)
    }

    fn default_lock_key(&self) -> String {
        format!(
            "infisical:{}/{}",
            self.target.project_id, self.target.environment
        )
    }

    /// The credential works (and universal auth logs in), the project, environment and path
    /// exist, and the value can be read; nothing written.
    async fn probe(&self) -> Result<String> {
        let found = match self.read().await? {
            Held::Value(_) => "it exists",
            Held::Hidden => return Err(self.hidden()),
            Held::Absent => "it is absent and will be created",
        };
        Ok(format!(
            "the credential in {} can read {}; {found}",
            self.credential.names(),
            self.where_()
        ))
    }
}
