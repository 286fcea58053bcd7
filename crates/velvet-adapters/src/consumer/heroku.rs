//! `heroku_config_var`: one config var of a Heroku app (and optionally the previous value under
//! its own key). Every write makes a release and restarts the app, so a write happens only when
//! the app does not already hold what this step wants: a step repeated after a crash makes no
//! second release. A PATCH names only the token's keys (Heroku leaves the others alone, I7), and
//! the new value is written before the old key is removed.
//!
//! Since every PATCH restarts the app, the consumers of one token that write one app are merged:
//! each knows its siblings' keys, and its apply, revoke and rollback write all of them in one
//! PATCH, so the sibling that runs second finds nothing left to change (one release per step).

use super::{Consumer, Renderer};
use crate::http::{client, status_error_saying, transport_error};
use crate::{AdapterError, Delivery, Result, same_secret};
use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{Map, Value};
use velvet_core::secret::SecretString;
use zeroize::Zeroizing;

const ACCEPT: &str = "application/vnd.heroku+json; version=3";
/// Heroku refills an account's 4,500-request budget at about 75 a minute; answers refine it.
const HEROKU_REFILL_PER_S: f64 = 75.0 / 60.0;
/// How long one call may take before it counts as a (retryable) timeout.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct HerokuConfigVar {
    api_url: String,
    app: String,
    key: String,
    previous_key: Option<String>,
    api_key: SecretString,
    /// The variable the key came from, named in errors about it.
    api_key_env: String,
    render: Renderer,
    /// The token's other consumers of this app (same API and key), written in the same PATCH.
    siblings: Vec<Var>,
    timeout: std::time::Duration,
    /// The key's account budget, shared by every consumer using the key.
    budget: std::sync::Arc<crate::pace::Budget>,
}

impl std::fmt::Debug for HerokuConfigVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HerokuConfigVar")
            .field("app", &self.app)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl HerokuConfigVar {
    pub fn new(
        api_url: &str,
        app: &str,
        key: &str,
        previous_key: Option<String>,
        api_key: SecretString,
        api_key_env: &str,
        render: Renderer,
    ) -> Self {
        let api_url = api_url.trim_end_matches('/').to_string();
        let budget =
            crate::pace::budget_for("heroku", &api_url, api_key.expose(), HEROKU_REFILL_PER_S);
        Self {
            api_url,
            app: app.to_string(),
            key: key.to_string(),
            previous_key,
            api_key,
            api_key_env: api_key_env.to_string(),
            render,
            siblings: vec![],
            timeout: REQUEST_TIMEOUT,
            budget,
        }
    }

    /// The token's other consumers of this app, whose keys this one's writes include.
    pub fn with_siblings(mut self, siblings: Vec<Var>) -> Self {
        self.siblings = siblings;
        self
    }

    /// Another per-call timeout than [`REQUEST_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        client()
            .request(method, format!("{}{path}", self.api_url))
            .header(reqwest::header::ACCEPT, ACCEPT)
            .bearer_auth(self.api_key.expose())
            .timeout(self.timeout)
    }

    /// Sends, and turns Heroku's answer into the JSON body or an error that says what to do.
    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<Value> {
        let permit = self.budget.acquire().await;
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(&format!("Heroku {what}"), &e))?;
        let status = resp.status();
        let remaining = resp
            .headers()
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok()?.trim().parse().ok());
        permit.bucket(remaining, status == StatusCode::TOO_MANY_REQUESTS);
        if status.is_success() {
            return resp.json().await.map_err(|_| {
                AdapterError::retryable(format!("Heroku {what} answered a body that is not JSON"))
            });
        }
        let headers = resp.headers().clone();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        // `{"id": "...", "message": "..."}`: Heroku's words, which never hold a value.
        let said = format!(
            "{} ({})",
            body["message"].as_str().unwrap_or("no message"),
            body["id"].as_str().unwrap_or("no id")
        );
        let app = &self.app;
        Err(match status {
            StatusCode::UNAUTHORIZED => AdapterError::permanent(format!(
                "Heroku refused the API key in `{}` for {what} (401: {said}); it is wrong, \
                 expired or revoked: put a valid key there (heroku authorizations:create)",
                self.api_key_env
            )),
            StatusCode::FORBIDDEN => AdapterError::permanent(format!(
                "Heroku forbids {what} on app `{app}` with the key in `{}` (403: {said}); \
                 give its account access to the app",
                self.api_key_env
            )),
            StatusCode::NOT_FOUND => AdapterError::permanent(format!(
                "Heroku app `{app}` not found (404: {said}); check `app` or the key's account"
            )),
            // The shared rules: 429 and 5xx retryable after `Retry-After`, a redirect named and
            // refused, other 4xx permanent; Heroku's own words added.
            s => status_error_saying(&format!("Heroku {what}"), s, &headers, &said),
        })
    }

    async fn read(&self) -> Result<Map<String, Value>> {
        let path = format!("/apps/{}/config-vars", self.app);
        match self
            .send(
                "reading config vars",
                self.request(reqwest::Method::GET, &path),
            )
            .await?
        {
            Value::Object(m) => Ok(m),
            _ => Err(AdapterError::permanent(
                "Heroku answered config vars that are not an object",
            )),
        }
    }

    /// Sets (or, for `None`, deletes) the keys in `want` that differ from what the app holds;
    /// no PATCH, and no release, when nothing differs.
    async fn write(&self, want: &[(&str, Option<&str>)]) -> Result<()> {
        let held = self.read().await?;
        let mut patch = Map::new();
        for (k, v) in want {
            if !holds(&held, k, *v) {
                patch.insert(k.to_string(), v.map_or(Value::Null, |s| s.into()));
            }
        }
        if patch.is_empty() {
            return Ok(());
        }
        let path = format!("/apps/{}/config-vars", self.app);
        let after = self
            .send(
                "writing config vars",
                self.request(reqwest::Method::PATCH, &path)
                    .json(&Value::Object(patch)),
            )
            .await?;
        // The answer is the whole map after the change: a 200 that does not hold what was
        // written is a failure, not a success.
        let after = after.as_object().cloned().unwrap_or_default();
        for (k, v) in want {
            if !holds(&after, k, *v) {
                return Err(AdapterError::permanent(format!(
                    "Heroku answered 200 but app `{}` does not hold the written `{k}`",
                    self.app
                )));
            }
        }
        Ok(())
    }

    fn text(&self, v: &velvet_core::secret::SecretValue) -> Result<Zeroizing<String>> {
        self.render.render(v)
    }
}

/// A config var one of the token's consumers of an app owns.
#[derive(Debug, Clone)]
pub struct Var {
    pub key: String,
    pub previous_key: Option<String>,
    pub render: Renderer,
}

/// Whether `vars` holds `want` at `key` (`None`: the key is absent), compared in constant time.
fn holds(vars: &Map<String, Value>, key: &str, want: Option<&str>) -> bool {
    match (vars.get(key).and_then(Value::as_str), want) {
        (Some(a), Some(b)) => same_secret(a.as_bytes(), b.as_bytes()),
        (None, None) => true,
        _ => false,
    }
}

/// One of the token's vars on the app, with the new and previous values as it writes them.
struct Rendered<'a> {
    key: &'a str,
    previous_key: Option<&'a str>,
    new: Zeroizing<String>,
    prev: Option<Zeroizing<String>>,
}

impl HerokuConfigVar {
    /// This consumer's var and its siblings', rendered. A sibling whose template cannot render
    /// is left to its own consumer, which reports it.
    fn rendered<'a>(&'a self, d: &Delivery<'_>) -> Result<Vec<Rendered<'a>>> {
        let one = |key: &'a str, pk: &'a Option<String>, r: &Renderer| -> Result<Rendered<'a>> {
            Ok(Rendered {
                key,
                previous_key: pk.as_deref(),
                new: r.render(d.new)?,
                prev: d.previous.map(|p| r.render(p)).transpose()?,
            })
        };
        let mut out = vec![one(&self.key, &self.previous_key, &self.render)?];
        out.extend(
            self.siblings
                .iter()
                .filter_map(|v| one(&v.key, &v.previous_key, &v.render).ok()),
        );
        Ok(out)
    }
}

/// The token's other `heroku_config_var` consumers of the same app, API and key as `spec`.
pub(super) fn siblings(
    spec: &velvet_core::config::ConsumerSpec,
    all: &[velvet_core::config::ConsumerSpec],
) -> Vec<Var> {
    use velvet_core::config::ConsumerKind as K;
    let K::HerokuConfigVar {
        app,
        api_key_env,
        api_url,
        ..
    } = &spec.kind
    else {
        return vec![];
    };
    all.iter()
        .filter(|c| c.name != spec.name)
        .filter_map(|c| match &c.kind {
            K::HerokuConfigVar {
                app: a,
                api_key_env: e,
                api_url: u,
                key,
                previous_key,
                template,
            } if a == app && e == api_key_env && u == api_url => Some(Var {
                key: key.clone(),
                previous_key: previous_key.clone(),
                render: Renderer::new(template.as_deref()).ok()?,
            }),
            _ => None,
        })
        .collect()
}

#[async_trait]
impl Consumer for HerokuConfigVar {
    async fn apply(&self, d: &Delivery<'_>) -> Result<()> {
        let vars = self.rendered(d)?;
        let mut want = vec![];
        for v in &vars {
            want.push((v.key, Some(v.new.as_str())));
            if let (Some(pk), Some(p)) = (v.previous_key, &v.prev) {
                want.push((pk, Some(p.as_str())));
            }
        }
        self.write(&want).await
    }

    async fn verify(&self, d: &Delivery<'_>) -> Result<()> {
        let want = self.text(d.new)?;
        let held = self.read().await?;
        match held.get(&self.key).and_then(Value::as_str) {
            Some(got) if same_secret(got.as_bytes(), want.as_bytes()) => Ok(()),
            Some(_) => Err(AdapterError::permanent(format!(
                "app `{}` holds a different value in `{}`",
                self.app, self.key
            ))),
            None => Err(AdapterError::permanent(format!(
                "app `{}` has no `{}`",
                self.app, self.key
            ))),
        }
    }

    async fn revoke_previous(&self, _: &Delivery<'_>) -> Result<()> {
        let previous = std::iter::once(&self.previous_key)
            .chain(self.siblings.iter().map(|v| &v.previous_key))
            .flatten();
        let want: Vec<_> = previous.map(|pk| (pk.as_str(), None)).collect();
        if want.is_empty() {
            return Ok(());
        }
        self.write(&want).await
    }

    async fn rollback(&self, d: &Delivery<'_>) -> Result<()> {
        let vars = self.rendered(d)?;
        let mut want = vec![];
        for v in &vars {
            want.push((v.key, v.prev.as_deref().map(|s| s.as_str())));
            if let Some(pk) = v.previous_key {
                want.push((pk, None));
            }
        }
        self.write(&want).await
    }

    fn default_lock_key(&self) -> String {
        format!("heroku:app:{}", self.app)
    }

    /// The key is valid (`GET /account`) and can read the app's config vars; nothing written.
    async fn probe(&self) -> Result<String> {
        let me = self
            .send(
                "checking the API key",
                self.request(reqwest::Method::GET, "/account"),
            )
            .await?;
        let held = self.read().await?;
        Ok(format!(
            "the key in `{}` works as {}; app `{}` is readable and {} `{}`",
            self.api_key_env,
            me["email"].as_str().unwrap_or("an account"),
            self.app,
            if held.contains_key(&self.key) {
                "has"
            } else {
                "will get"
            },
            self.key
        ))
    }
}
