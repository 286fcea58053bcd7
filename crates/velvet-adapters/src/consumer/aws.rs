//! `aws_secrets_manager`: one secret's `SecretString` (or one JSON key in it) in AWS Secrets
//! Manager, through its JSON 1.1 API signed with SigV4. `PutSecretValue` carries a
//! `ClientRequestToken` derived from the job and version, so a write repeated after a crash makes
//! no second version; verify reads the value back with `GetSecretValue`. AWS moves the
//! `AWSCURRENT` and `AWSPREVIOUS` labels itself, so revoking the previous copy is nothing.

use super::{Consumer, Renderer};
use crate::http::{client, status_error_saying, transport_error};
use crate::{AdapterError, Delivery, Result, same_secret};
use async_trait::async_trait;
use serde_json::{Value, json};
use sha2::Digest;
use velvet_core::secret::SecretString;
use zeroize::Zeroizing;

const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The credential: a key pair and, for temporary credentials, a session token.
#[derive(Debug)]
pub struct Keys {
    pub access_key_id: SecretString,
    pub secret_access_key: SecretString,
    pub session_token: Option<SecretString>,
    /// The variables they came from, named in errors.
    pub envs: String,
}

/// Where the value lives.
#[derive(Debug, Clone)]
pub struct Target {
    pub region: String,
    pub secret_id: String,
    /// A key of the JSON object in `SecretString`; `None`: the whole string.
    pub field: Option<String>,
}

pub struct AwsSecretsManager {
    api_url: String,
    target: Target,
    keys: Keys,
    render: Renderer,
}

impl std::fmt::Debug for AwsSecretsManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSecretsManager")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// A `ClientRequestToken` for this job, version and step: 32 hex characters (AWS wants 32–64),
/// the same every time the step is repeated.
fn request_token(d: &Delivery<'_>, step: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{}:{}:{step}", d.job_id, d.version));
    hex::encode(&digest[..16])
}

impl AwsSecretsManager {
    pub fn new(api_url: &str, target: Target, keys: Keys, render: Renderer) -> Self {
        Self {
            api_url: api_url.trim_end_matches('/').to_string(),
            target,
            keys,
            render,
        }
    }

    /// Calls `action` with `body`, signed; AWS's answer, or an error that says what to do.
    /// `Ok(None)`: `ResourceNotFoundException`.
    async fn call(&self, action: &str, body: &Value) -> Result<Option<Value>> {
        let body = Zeroizing::new(serde_json::to_vec(body).expect("JSON serialises"));
        let url = format!("{}/", self.api_url);
        let host = reqwest::Url::parse(&url)
            .ok()
            .and_then(|u| {
                let h = u.host_str()?.to_string();
                Some(match u.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h,
                })
            })
            .ok_or_else(|| AdapterError::permanent("api_url has no host"))?;
        let target = format!("secretsmanager.{action}");
        let headers = [
            ("host", host.as_str()),
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", target.as_str()),
        ];
        // The body's hash, not the body: the signer logs what it signs at trace level.
        let hash = hex::encode(sha2::Sha256::digest(&*body));
        let signed = self.sign(&url, &headers, &hash)?;
        let mut req = client()
            .post(&url)
            .timeout(REQUEST_TIMEOUT)
            .body(body.to_vec());
        for (k, v) in headers.iter().skip(1) {
            req = req.header(*k, *v);
        }
        for (k, v) in signed {
            req = req.header(k, v);
        }
        let what = format!("AWS {action}");
        let resp = req.send().await.map_err(|e| transport_error(&what, &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = Zeroizing::new(resp.text().await.unwrap_or_default());
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Some(answer));
        }
        // `{"__type": "…Exception", "message"|"Message": …}`, or the query protocol's XML
        // `<Code>`/`<Message>` (moto answers refused credentials so): AWS's words, never a value.
        let tag = |t: &str| {
            let open = format!("<{t}>");
            let start = text.find(&open)? + open.len();
            let end = text[start..].find(&format!("</{t}>"))? + start;
            Some(text[start..end].to_string())
        };
        let kind = answer["__type"]
            .as_str()
            .map(|t| t.rsplit('#').next().unwrap_or("").to_string())
            .or_else(|| tag("Code"))
            .unwrap_or_default();
        let message = answer["message"]
            .as_str()
            .or(answer["Message"].as_str())
            .map(str::to_string)
            .or_else(|| tag("Message"))
            .unwrap_or_else(|| "no message".into());
        let said = format!("{kind}: {message}");
        let t = &self.target;
        Err(match kind.as_str() {
            "ResourceNotFoundException" => return Ok(None),
            "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "InvalidSignatureException"
            | "ExpiredTokenException"
            | "SignatureDoesNotMatch" => AdapterError::permanent(format!(
                "AWS refused the credential in {} for {action} ({said}); it is wrong, expired or \
                 revoked: put a valid one there",
                self.keys.envs
            )),
            "AccessDeniedException" => AdapterError::permanent(format!(
                "AWS denies {action} on secret `{}` in {} to the credential in {} ({said}); \
                 allow secretsmanager:{action} on it",
                t.secret_id, t.region, self.keys.envs
            )),
            "ThrottlingException" | "InternalServiceError" | "ServiceUnavailable" => {
                AdapterError::Retryable {
                    message: format!("{what} was throttled or failed ({said})"),
                    retry_after: crate::http::retry_after(&headers),
                }
            }
            _ => status_error_saying(&what, status, &headers, &said),
        })
    }

    /// The SigV4 headers for a POST of a body hashing to `hash`.
    fn sign(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        hash: &str,
    ) -> Result<Vec<(String, String)>> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let creds = aws_credential_types::Credentials::new(
            self.keys.access_key_id.expose(),
            self.keys.secret_access_key.expose(),
            self.keys
                .session_token
                .as_ref()
                .map(|t| t.expose().to_string()),
            None,
            "velvet",
        );
        let identity = creds.into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.target.region)
            .name("secretsmanager")
            .time(std::time::SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| AdapterError::permanent(format!("signing: {e}")))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            url,
            headers.iter().copied(),
            SignableBody::Precomputed(hash.to_string()),
        )
        .map_err(|e| AdapterError::permanent(format!("signing: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| AdapterError::permanent(format!("signing: {e}")))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// The current `SecretString`; `None` when the secret has no value or does not exist.
    async fn current(&self) -> Result<Option<Zeroizing<String>>> {
        let got = self
            .call(
                "GetSecretValue",
                &json!({"SecretId": self.target.secret_id}),
            )
            .await?;
        Ok(got
            .and_then(|v| v["SecretString"].as_str().map(str::to_string))
            .map(Zeroizing::new))
    }

    /// What this consumer owns in `whole`: the field's value, or the whole string.
    fn owned(&self, whole: &str) -> Result<Option<Zeroizing<String>>> {
        let Some(field) = &self.target.field else {
            return Ok(Some(Zeroizing::new(whole.to_string())));
        };
        let v: Value = serde_json::from_str(whole).map_err(|_| {
            AdapterError::permanent(format!(
                "secret `{}` does not hold a JSON object, so it has no field `{field}`",
                self.target.secret_id
            ))
        })?;
        Ok(v[field].as_str().map(|s| Zeroizing::new(s.to_string())))
    }

    /// Writes `text` where this consumer owns it (keeping the other JSON keys), once per `token`.
    async fn put(&self, text: &str, token: &str) -> Result<()> {
        let current = self.current().await?;
        if let Some(c) = &current
            && let Some(held) = self.owned(c)?
            && same_secret(held.as_bytes(), text.as_bytes())
        {
            return Ok(());
        }
        let whole = match &self.target.field {
            None => Zeroizing::new(text.to_string()),
            Some(field) => {
                let mut obj = match &current {
                    Some(c) => serde_json::from_str::<Value>(c).unwrap_or_else(|_| json!({})),
                    None => json!({}),
                };
                obj[field] = text.into();
                Zeroizing::new(obj.to_string())
            }
        };
        let body = json!({"SecretId": self.target.secret_id, "SecretString": &*whole,
            "ClientRequestToken": token});
        match self.call("PutSecretValue", &body).await? {
            Some(_) => Ok(()),
            None => Err(AdapterError::permanent(format!(
                "AWS has no secret `{}` in {} (ResourceNotFoundException); create it first, or \
                 check `secret_id` and `region`",
                self.target.secret_id, self.target.region
            ))),
        }
    }
}

#[async_trait]
impl Consumer for AwsSecretsManager {
    async fn apply(&self, d: &Delivery<'_>) -> Result<()> {
        self.put(&self.render.render(d.new)?, &request_token(d, "apply"))
            .await
    }

    async fn verify(&self, d: &Delivery<'_>) -> Result<()> {
        let want = self.render.render(d.new)?;
        let t = &self.target;
        let held = match self.current().await? {
            Some(c) => self.owned(&c)?,
            None => None,
        };
        match held {
            Some(h) if same_secret(h.as_bytes(), want.as_bytes()) => Ok(()),
            Some(_) => Err(AdapterError::permanent(format!(
                "secret `{}` holds a different value",
                t.secret_id
            ))),
            None => Err(AdapterError::permanent(format!(
                "secret `{}` holds no value{}",
                t.secret_id,
                t.field
                    .as_ref()
                    .map(|f| format!(" in `{f}`"))
                    .unwrap_or_default()
            ))),
        }
    }

    /// AWS keeps the previous version as `AWSPREVIOUS` and drops it on the next write.
    async fn revoke_previous(&self, _: &Delivery<'_>) -> Result<()> {
        Ok(())
    }

    /// Writes the previous value back as a new version (there is no "delete this version only").
    async fn rollback(&self, d: &Delivery<'_>) -> Result<()> {
        match d.previous {
            Some(prev) => {
                self.put(&self.render.render(prev)?, &request_token(d, "rollback"))
                    .await
            }
            None => Ok(()),
        }
    }

    fn default_lock_key(&self) -> String {
        format!("aws:{}/{}", self.target.region, self.target.secret_id)
    }

    /// `DescribeSecret`: the credential works, may see the secret, and it exists; nothing written.
    async fn probe(&self) -> Result<String> {
        let t = &self.target;
        match self
            .call("DescribeSecret", &json!({"SecretId": t.secret_id}))
            .await?
        {
            Some(v) => Ok(format!(
                "the credential in {} can describe secret `{}` in {} ({})",
                self.keys.envs,
                t.secret_id,
                t.region,
                v["ARN"].as_str().unwrap_or("no ARN")
            )),
            None => Err(AdapterError::permanent(format!(
                "AWS has no secret `{}` in {}; create it first, or check `secret_id` and `region`",
                t.secret_id, t.region
            ))),
        }
    }
}
