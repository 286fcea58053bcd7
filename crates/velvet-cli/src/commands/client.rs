//! Talking to a running server, as `vault` does: `VELVET_ADDR` (default
//! `http://127.0.0.1:8700`) and `VELVET_TOKEN`. API errors map onto the exit codes of §6.

use crate::exit::{Code, Failure};
use reqwest::Method;
use serde_json::Value;
use velvet_core::secret::SecretString;

const DEFAULT_ADDR: &str = "http://127.0.0.1:8700";

#[derive(Debug)]
pub struct Client {
    base: String,
    token: SecretString,
    http: reqwest::Client,
}

/// The CLI's own HTTP client, not the consumers' shared one: it talks to one Velvet server and,
/// like every Velvet client, never follows a redirect (the token would go along).
fn http() -> Result<reqwest::Client, Failure> {
    velvet_adapters::http::builder("velvet-cli")
        .build()
        .map_err(|e| Failure::failed(format!("building the HTTP client: {e}")))
}

impl Client {
    pub fn from_env() -> Result<Self, Failure> {
        let base = std::env::var("VELVET_ADDR")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ADDR.into());
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::usage(format!(
                "VELVET_ADDR: `{base}` is not a URL such as {DEFAULT_ADDR}"
            )));
        }
        let token = std::env::var("VELVET_TOKEN")
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Failure::usage(
                    "VELVET_TOKEN is not set: export a service token (velvet auth create-token) or the bootstrap key",
                )
            })?;
        Ok(Self {
            base,
            token: SecretString::new(token),
            http: http()?,
        })
    }

    /// Opens a job's event stream, resuming after `last_id` when given.
    pub async fn events(&self, job_id: &str, last_id: Option<i64>) -> Result<EventStream, Failure> {
        let mut req = self
            .http
            .get(format!("{}/api/v1/rotations/{job_id}/events", self.base))
            .bearer_auth(self.token.expose());
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let res = req.send().await.map_err(|e| {
            Failure::failed(format!(
                "cannot reach the server at {}: {}",
                self.base,
                e.without_url()
            ))
        })?;
        if !res.status().is_success() {
            let code = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            let exit = if code == 404 {
                Code::NotFound
            } else {
                Code::Failed
            };
            return Err(Failure::new(
                exit,
                format!(
                    "{} ({code})",
                    body["message"].as_str().unwrap_or("the stream was refused")
                ),
            ));
        }
        Ok(EventStream {
            res,
            buf: String::new(),
        })
    }

    /// Sends a request and decodes its answer as `T`, the server's own response type; an answer
    /// of another shape fails, naming what did not fit, rather than printing blanks.
    pub async fn call_as<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, Failure> {
        let what = format!("the answer to {method} {path}");
        let json = self.call(method, path, body).await?;
        decode(&what, json)
    }

    /// Sends a request and returns the JSON answer (`Null` for 204), or a failure whose exit
    /// code follows the API error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.map_err(|e| {
            Failure::failed(format!(
                "cannot reach the server at {}: {}; is `velvet serve` running there (VELVET_ADDR)?",
                self.base,
                e.without_url()
            ))
        })?;
        let status = res.status();
        let text = res
            .text()
            .await
            .map_err(|e| Failure::failed(format!("reading the answer: {}", e.without_url())))?;
        let json: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(json);
        }
        let code = json["error"].as_str().unwrap_or("");
        let message = json["message"].as_str().unwrap_or(code);
        let exit = match (status.as_u16(), code) {
            (404, _) => Code::NotFound,
            (409, _) => Code::Conflict,
            (422, _) => Code::Usage,
            (403, "gate_required" | "gate_denied") => Code::GateDenied,
            _ => Code::Failed,
        };
        Err(Failure::new(exit, format!("{message} ({} {code})", status.as_u16())).with_error(code))
    }
}

/// Decodes an answer or event (`what`, for the error) as the server's type for it.
pub fn decode<T: serde::de::DeserializeOwned>(what: &str, json: Value) -> Result<T, Failure> {
    serde_json::from_value(json).map_err(|e| {
        Failure::failed(format!(
            "{what} is not in the shape this velvet knows ({e}); \
             are the CLI and the server the same version (velvet --version)?"
        ))
    })
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

/// Events as they arrive; `None` once the server closes the stream.
#[derive(Debug)]
pub struct EventStream {
    res: reqwest::Response,
    buf: String,
}

impl EventStream {
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut e = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut any = false;
                for line in block.lines() {
                    // Lines starting with ':' are keep-alive comments.
                    if let Some(v) = line.strip_prefix("id:") {
                        e.id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        e.event = v.trim().to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        e.data = serde_json::from_str(v.trim()).unwrap_or(Value::Null);
                        any = true;
                    }
                }
                if any {
                    return Some(e);
                }
                continue;
            }
            match self.res.chunk().await {
                Ok(Some(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }
}
