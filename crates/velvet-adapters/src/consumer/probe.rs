//! `verify.probe` on any consumer: after the consumer's own verify, a GET to where the value is
//! used must answer `expect_status` with the new value, and, with `reject_status`, that status
//! with a random wrong value in its place, so an endpoint that accepts anything is not taken for
//! verified (design §12). Where a provider cannot be read back (Cloudflare, GitHub) this is the
//! only proof that the new value works.

use super::Consumer;
use crate::http::{client, status_error, transport_error};
use crate::{AdapterError, Delivery, Result};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::time::Duration;
use velvet_core::config::ProbeSpec;
use velvet_core::secret::{SecretString, SecretValue};
use velvet_core::template::Template;

/// How long one probe request may take when the consumer sets no timeout of its own.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer whose verify also runs its `verify.probe`.
pub struct Probed {
    inner: Box<dyn Consumer>,
    url: String,
    header: Option<(String, Template)>,
    expect_status: u16,
    reject_status: Option<u16>,
    timeout: Duration,
}

impl std::fmt::Debug for Probed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probed")
            .field("inner", &self.inner)
            .field("expect_status", &self.expect_status)
            .field("reject_status", &self.reject_status)
            .finish_non_exhaustive()
    }
}

impl Probed {
    pub fn new(inner: Box<dyn Consumer>, spec: &ProbeSpec, timeout: Duration) -> Result<Self> {
        let header = match &spec.header {
            Some(h) => {
                let (name, value) = h.split_once(':').ok_or_else(|| {
                    AdapterError::permanent("verify.probe.header is not `Name: value`")
                })?;
                let t = Template::parse(value.trim()).map_err(AdapterError::permanent)?;
                Some((name.trim().to_string(), t))
            }
            None => None,
        };
        Ok(Self {
            inner,
            url: spec.url.clone(),
            header,
            expect_status: spec.expect_status,
            reject_status: spec.reject_status,
            timeout,
        })
    }

    /// The status the probe answers with `value` in its header.
    async fn send(&self, value: &SecretValue) -> Result<reqwest::Response> {
        let mut req = client().get(&self.url).timeout(self.timeout);
        if let Some((name, t)) = &self.header {
            let rendered = t.render(value).map_err(AdapterError::permanent)?;
            let mut v = reqwest::header::HeaderValue::from_str(&rendered).map_err(|_| {
                AdapterError::permanent("verify.probe.header renders to an invalid header value")
            })?;
            v.set_sensitive(true);
            req = req.header(name.as_str(), v);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error("the probe", &e))?;
        if resp.status().is_redirection() {
            return Err(status_error("the probe", resp.status(), resp.headers()));
        }
        Ok(resp)
    }
}

/// A value with the same fields as `v`, each a fresh random string: one the target cannot know.
fn wrong_value(v: &SecretValue) -> SecretValue {
    SecretValue::from_fields(
        v.field_names()
            .map(|f| (f.to_string(), SecretString::new(crate::random_alnum(32))))
            .collect::<BTreeMap<_, _>>(),
    )
}

#[async_trait]
impl Consumer for Probed {
    async fn apply(&self, d: &Delivery<'_>) -> Result<()> {
        self.inner.apply(d).await
    }

    async fn verify(&self, d: &Delivery<'_>) -> Result<()> {
        self.inner.verify(d).await?;
        let resp = self.send(d.new).await?;
        let got = resp.status();
        if got.as_u16() != self.expect_status {
            // A wrong answer may be a deploy still rolling out: retry until attempts run out.
            let e = status_error("the probe", got, resp.headers());
            return Err(AdapterError::Retryable {
                message: format!("{e} with the new value (expected {})", self.expect_status),
                retry_after: e.retry_after(),
            });
        }
        let Some(reject) = self.reject_status else {
            return Ok(());
        };
        let got = self.send(&wrong_value(d.new)).await?.status();
        if got.as_u16() == reject {
            Ok(())
        } else if got.as_u16() == self.expect_status {
            Err(AdapterError::permanent(format!(
                "the probe answered {got} to a random wrong value too (expected {reject}): the \
                 endpoint does not check the value, so it proves nothing; point verify.probe.url \
                 at an endpoint that refuses a wrong credential"
            )))
        } else {
            Err(AdapterError::retryable(format!(
                "the probe answered {got} to a random wrong value (expected {reject})"
            )))
        }
    }

    async fn revoke_previous(&self, d: &Delivery<'_>) -> Result<()> {
        self.inner.revoke_previous(d).await
    }

    async fn rollback(&self, d: &Delivery<'_>) -> Result<()> {
        self.inner.rollback(d).await
    }

    fn default_lock_key(&self) -> String {
        self.inner.default_lock_key()
    }

    /// The consumer's own probe; the verify probe needs a value, so it runs only at verify.
    async fn probe(&self) -> Result<String> {
        self.inner.probe().await
    }
}
