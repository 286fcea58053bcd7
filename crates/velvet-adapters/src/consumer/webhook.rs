//! `webhook`: POSTs `{token, version, fingerprint, value}` signed with
//! `Velvet-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, t + "." + body)>`. 2xx is applied;
//! 429 and 5xx are retried (honouring `Retry-After`), other 4xx are permanent. A 2xx is all it
//! can prove; `verify.probe` (see `probe.rs`) proves the new value is accepted where it matters.

use super::Consumer;
use crate::http::{client, status_error, transport_error};
use crate::{AdapterError, Delivery, Result};
use async_trait::async_trait;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::time::Duration;
use velvet_core::secret::{SecretString, SecretValue};
use zeroize::Zeroizing;

pub struct Webhook {
    url: String,
    secret: SecretString,
    timeout: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The `Velvet-Signature` header for `body` sent at `t`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhook {
    pub fn new(url: String, secret: SecretString, timeout: Duration) -> Self {
        Self {
            url,
            secret,
            timeout,
        }
    }

    async fn post(
        &self,
        d: &Delivery<'_>,
        value: &SecretValue,
        version: i64,
        fingerprint: &str,
        action: &str,
    ) -> Result<()> {
        let single = value.get(velvet_core::secret::VALUE_FIELD);
        let body = Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({
                "token": d.token,
                "version": version,
                "fingerprint": fingerprint,
                "value": match single {
                    Some(v) => serde_json::Value::String(v.expose().to_string()),
                    None => serde_json::from_slice(&value.to_bytes()).expect("values are JSON objects"),
                },
                "action": action,
                "job_id": d.job_id,
            }))
            .expect("JSON serialises"),
        );
        let t = chrono::Utc::now().timestamp();
        let resp = client()
            .post(&self.url)
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .header(
                "Velvet-Signature",
                signature(self.secret.expose(), t, &body),
            )
            .header(
                "Idempotency-Key",
                format!("{}:{version}:{action}", d.job_id),
            )
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| transport_error("the webhook", &e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(status_error("the webhook", resp.status(), resp.headers()))
        }
    }
}

#[async_trait]
impl Consumer for Webhook {
    /// A delivery cannot be read back; only a `verify.probe` around it can check it.
    fn checkable(&self) -> bool {
        false
    }

    async fn probe(&self) -> Result<String> {
        // A TCP connection only: a request could be taken for a delivery.
        let url = reqwest::Url::parse(&self.url)
            .map_err(|_| AdapterError::permanent("the URL does not parse"))?;
        let host = url.host_str().unwrap_or("").to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| AdapterError::retryable(format!("{host}:{port} did not answer in time")))?
        .map_err(|e| AdapterError::retryable(format!("cannot connect to {host}:{port}: {e}")))?;
        Ok(format!("{host}:{port} accepts connections"))
    }

    async fn apply(&self, d: &Delivery<'_>) -> Result<()> {
        self.post(d, d.new, d.version, d.new_fingerprint, "apply")
            .await
    }

    /// A 2xx at apply is all a webhook proves; `verify.probe` adds the rest.
    async fn verify(&self, _: &Delivery<'_>) -> Result<()> {
        Ok(())
    }

    async fn revoke_previous(&self, _: &Delivery<'_>) -> Result<()> {
        Ok(())
    }

    async fn rollback(&self, d: &Delivery<'_>) -> Result<()> {
        match (d.previous, d.previous_version) {
            (Some(prev), Some(v)) => {
                self.post(
                    d,
                    prev,
                    v,
                    d.previous_fingerprint.unwrap_or_default(),
                    "rollback",
                )
                .await
            }
            _ => Ok(()),
        }
    }

    fn default_lock_key(&self) -> String {
        format!("webhook:{}", self.url)
    }
}
