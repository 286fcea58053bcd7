//! `vault_kv`: one field of a Vault / OpenBao KV v2 secret. KV v2 replaces the whole map on each
//! write, so every write reads the current version, changes only this consumer's fields and
//! writes back with check-and-set on that version (I7). A 200 carrying warnings and no version
//! (the path without `data/`) is a failure, not a success.

use super::Consumer;
use crate::http::{client, status_error, transport_error};
use crate::{AdapterError, Delivery, Result, same_secret};
use async_trait::async_trait;
use serde_json::{Map, Value, json};
use velvet_core::secret::SecretString;

pub struct VaultKv {
    data_url: String,
    token: SecretString,
    field: String,
    previous_field: Option<String>,
}

impl std::fmt::Debug for VaultKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKv")
            .field("url", &self.data_url)
            .field("field", &self.field)
            .finish_non_exhaustive()
    }
}

/// The current map and its version (0 when the secret does not exist yet).
struct Current {
    data: Map<String, Value>,
    version: u64,
}

impl VaultKv {
    pub fn new(
        address: &str,
        token: SecretString,
        mount: &str,
        path: &str,
        field: &str,
        previous_field: Option<String>,
    ) -> Self {
        let data_url = format!(
            "{}/v1/{}/data/{}",
            address.trim_end_matches('/'),
            mount.trim_matches('/'),
            path.trim_matches('/')
        );
        Self {
            data_url,
            token,
            field: field.to_string(),
            previous_field,
        }
    }

    async fn read(&self) -> Result<Current> {
        let resp = client()
            .get(&self.data_url)
            .header("X-Vault-Token", self.token.expose())
            .send()
            .await
            .map_err(|e| transport_error("Vault", &e))?;
        let status = resp.status();
        if status.as_u16() == 404 {
            // Missing, or its latest version deleted: metadata tells which version to CAS on.
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let version = body
                .pointer("/data/metadata/version")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            return Ok(Current {
                data: Map::new(),
                version,
            });
        }
        if !status.is_success() {
            return Err(status_error("Vault read", status, resp.headers()));
        }
        let body: Value = resp
            .json()
            .await
            .map_err(|_| AdapterError::retryable("Vault read returned a body that is not JSON"))?;
        let version = body.pointer("/data/metadata/version").and_then(Value::as_u64).ok_or_else(|| {
            AdapterError::permanent("Vault answered without a KV v2 version: is the mount KV v2 and the path right?")
        })?;
        let data = body
            .pointer("/data/data")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Ok(Current { data, version })
    }

    async fn write(&self, current: Current, set: &[(&str, Option<&str>)]) -> Result<()> {
        let mut data = current.data.clone();
        for (k, v) in set {
            match v {
                Some(v) => data.insert(k.to_string(), Value::String(v.to_string())),
                None => data.remove(*k),
            };
        }
        if data == current.data && current.version > 0 {
            return Ok(()); // idempotent: already as wanted
        }
        let resp = client()
            .post(&self.data_url)
            .header("X-Vault-Token", self.token.expose())
            .json(&json!({"data": data, "options": {"cas": current.version}}))
            .send()
            .await
            .map_err(|e| transport_error("Vault", &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.as_u16() == 400
            && body
                .to_string()
                .contains("check-and-set parameter did not match")
        {
            return Err(AdapterError::retryable(
                "Vault secret changed during the write (check-and-set); will re-read",
            ));
        }
        if !status.is_success() {
            let errors = body.get("errors").map(Value::to_string).unwrap_or_default();
            let e = status_error("Vault write", status, &headers);
            return Err(match e {
                AdapterError::Permanent { message } => {
                    AdapterError::permanent(format!("{message} {errors}"))
                }
                other => other,
            });
        }
        if body
            .pointer("/data/version")
            .and_then(Value::as_u64)
            .is_none()
        {
            let warnings = body
                .get("warnings")
                .map(Value::to_string)
                .unwrap_or_default();
            return Err(AdapterError::permanent(format!(
                "Vault accepted the write but created no version {warnings}"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Consumer for VaultKv {
    async fn probe(&self) -> Result<String> {
        // Reading the secret needs the token and changes nothing: it proves address, token
        // and mount together.
        let r = crate::http::client()
            .get(&self.data_url)
            .header("X-Vault-Token", self.token.expose())
            .send()
            .await
            .map_err(|e| {
                AdapterError::retryable(format!("cannot reach Vault: {}", e.without_url()))
            })?;
        match r.status().as_u16() {
            200 => Ok("the secret is readable".into()),
            404 => Ok("reachable; the secret will be created".into()),
            403 => Err(AdapterError::permanent("Vault refused the token (403)")),
            s => Err(AdapterError::retryable(format!("Vault answered {s}"))),
        }
    }

    async fn apply(&self, d: &Delivery<'_>) -> Result<()> {
        let current = self.read().await?;
        let new = super::value_text(d.new);
        let prev = d.previous.map(super::value_text);
        let mut set = vec![(self.field.as_str(), Some(new.as_str()))];
        if let Some(pf) = &self.previous_field {
            set.push((pf, prev.as_deref().map(|s| s.as_str())));
        }
        self.write(current, &set).await
    }

    async fn verify(&self, d: &Delivery<'_>) -> Result<()> {
        let current = self.read().await?;
        let want = super::value_text(d.new);
        match current.data.get(&self.field).and_then(Value::as_str) {
            Some(got) if same_secret(got.as_bytes(), want.as_bytes()) => Ok(()),
            Some(_) => Err(AdapterError::permanent(format!(
                "Vault holds a different value in `{}`",
                self.field
            ))),
            None => Err(AdapterError::permanent(format!(
                "Vault has no `{}`",
                self.field
            ))),
        }
    }

    async fn revoke_previous(&self, _: &Delivery<'_>) -> Result<()> {
        match &self.previous_field {
            Some(pf) => {
                let current = self.read().await?;
                self.write(current, &[(pf, None)]).await
            }
            None => Ok(()),
        }
    }

    async fn rollback(&self, d: &Delivery<'_>) -> Result<()> {
        let current = self.read().await?;
        let prev = d.previous.map(super::value_text);
        let mut set = vec![(self.field.as_str(), prev.as_deref().map(|s| s.as_str()))];
        if let Some(pf) = &self.previous_field {
            set.push((pf, None));
        }
        self.write(current, &set).await
    }

    fn default_lock_key(&self) -> String {
        format!("vault:{}", self.data_url)
    }
}
