//! Sending one notification to one channel (design §11): `email` over SMTP (lettre), `slack` as
//! a Slack-compatible `{"text", "blocks"}` POST, `webhook` as a CloudEvents 1.0 JSON event
//! signed like the webhook consumer. A notice carries names, states and reasons, never a value.

use crate::AdapterError;
use crate::http::{client, status_error, transport_error};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;
use velvet_core::config::{ChannelKind, ChannelSpec, SmtpTls};

const TIMEOUT: Duration = Duration::from_secs(15);

/// What a notification says.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    /// The stable id receivers deduplicate on.
    pub id: &'a str,
    pub event: &'a str,
    pub token: &'a str,
    pub job_id: Option<&'a str>,
    pub at: chrono::DateTime<chrono::Utc>,
    /// One line for people: what happened and what to do.
    pub summary: &'a str,
    /// The facts, as JSON (no value, no fingerprint key).
    pub data: &'a serde_json::Value,
}

/// Looks up a `*_env` variable.
pub type Env<'a> = &'a (dyn Fn(&str) -> Option<String> + Send + Sync);

fn secret(env: Env, name: &str) -> Result<String, AdapterError> {
    env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
        AdapterError::permanent(format!(
            "environment variable `{name}` is not set; export it and restart Velvet"
        ))
    })
}

/// Sends `n` on `channel`.
pub async fn send(channel: &ChannelSpec, n: &Notice<'_>, env: Env<'_>) -> Result<(), AdapterError> {
    match &channel.kind {
        ChannelKind::Webhook {
            url,
            signing_secret_env,
        } => webhook(url, &secret(env, signing_secret_env)?, n).await,
        ChannelKind::Slack { url_env } => slack(&secret(env, url_env)?, n).await,
        ChannelKind::Email { smtp, from, to } => {
            let credentials = match (&smtp.username_env, &smtp.password_env) {
                (Some(u), Some(p)) => Some(Credentials::new(secret(env, u)?, secret(env, p)?)),
                _ => None,
            };
            email(&smtp.host, smtp.port, smtp.tls, credentials, from, to, n).await
        }
    }
}

/// The CloudEvents 1.0 structured form of `n`.
pub fn cloud_event(n: &Notice) -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0",
        "id": n.id,
        "source": "velvet",
        "type": format!("dev.velvet.{}", n.event),
        "subject": n.token,
        "time": n.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "datacontenttype": "application/json",
        "data": {
            "token": n.token,
            "job_id": n.job_id,
            "summary": n.summary,
            "details": n.data,
        },
    })
}

async fn post(what: &str, url: &str, req: reqwest::RequestBuilder) -> Result<(), AdapterError> {
    // The URL may carry a secret (Slack's does): errors name only its host.
    let host = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let resp = req
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| transport_error(&format!("{what} at {host}"), &e))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(status_error(what, resp.status(), resp.headers()))
    }
}

async fn webhook(url: &str, secret: &str, n: &Notice<'_>) -> Result<(), AdapterError> {
    let body = serde_json::to_vec(&cloud_event(n)).expect("JSON serialises");
    let t = chrono::Utc::now().timestamp();
    let req = client()
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .header(
            "Velvet-Signature",
            crate::consumer::webhook::signature(secret, t, &body),
        )
        .body(body);
    post("the notification webhook", url, req).await
}

async fn slack(url: &str, n: &Notice<'_>) -> Result<(), AdapterError> {
    let title = format!("Velvet: {} — {}", n.event.replace('_', " "), n.token);
    let mut fields = vec![format!("*Token* `{}`", n.token)];
    if let Some(j) = n.job_id {
        fields.push(format!("*Job* `{j}`"));
    }
    let body = serde_json::json!({
        "text": format!("{title}: {}", n.summary),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {"type": "section", "text": {"type": "mrkdwn", "text": n.summary}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": fields.join(" · ")}]},
        ],
    });
    post("the Slack webhook", url, client().post(url).json(&body)).await
}

async fn email(
    host: &str,
    port: u16,
    tls: SmtpTls,
    credentials: Option<Credentials>,
    from: &str,
    to: &[String],
    n: &Notice<'_>,
) -> Result<(), AdapterError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        AdapterError::permanent(format!("the mail {what} is not valid: {e}"))
    };
    let mut m = Message::builder()
        .from(from.parse().map_err(|e| bad("sender", &e))?)
        .message_id(Some(format!("<{}@velvet>", n.id)))
        .subject(format!(
            "[velvet] {} — {}",
            n.event.replace('_', " "),
            n.token
        ));
    for a in to {
        m = m.to(a.parse().map_err(|e| bad("recipient", &e))?);
    }
    let mut text = format!("{}\n\nToken: {}\n", n.summary, n.token);
    if let Some(j) = n.job_id {
        text.push_str(&format!("Job: {j}\n"));
    }
    text.push_str(&format!(
        "Event: {} ({})\nAt: {}\n",
        n.event,
        n.id,
        n.at.to_rfc3339()
    ));
    let message = m
        .header(ContentType::TEXT_PLAIN)
        .body(text)
        .map_err(|e| bad("message", &e))?;
    let builder = match tls {
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
        SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            host,
        )),
    }
    .map_err(|e| AdapterError::permanent(format!("SMTP server {host}: {e}")))?;
    let mut builder = builder.port(port).timeout(Some(TIMEOUT));
    if let Some(c) = credentials {
        builder = builder.credentials(c);
    }
    match builder.build().send(message).await {
        Ok(_) => Ok(()),
        // 5xx (a refused login, a refused recipient) will not change by trying again.
        Err(e) if e.is_permanent() => Err(AdapterError::permanent(format!(
            "SMTP server {host}:{port} refused: {e}"
        ))),
        Err(e) => Err(AdapterError::retryable(format!(
            "SMTP server {host}:{port}: {e}"
        ))),
    }
}
