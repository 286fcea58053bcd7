//! An HTTP receiver on loopback that records every POST (path, headers, JSON body) and answers
//! with a status the test sets: the far end of notification webhooks and Slack.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use std::sync::{Arc, Mutex};

/// One request received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub raw: Vec<u8>,
    pub body: serde_json::Value,
}

#[derive(Debug, Clone, Default)]
pub struct Inbox {
    received: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<Option<StatusCode>>>,
}

impl Inbox {
    /// Serves on a loopback port; returns the inbox and its base URL.
    pub async fn start() -> (Self, String) {
        let inbox = Self::default();
        let app = axum::Router::new()
            .fallback(axum::routing::post(take))
            .with_state(inbox.clone());
        let addr = crate::serve(app).await;
        (inbox, format!("http://{addr}"))
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Answers every later request with `status` (and records nothing), or 200 again (`None`).
    pub fn answer(&self, status: Option<StatusCode>) {
        *self.answer.lock().unwrap() = status;
    }
}

async fn take(
    State(inbox): State<Inbox>,
    uri: Uri,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> StatusCode {
    if let Some(s) = *inbox.answer.lock().unwrap() {
        return s;
    }
    inbox.received.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        headers,
        body: serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null),
        raw: raw.to_vec(),
    });
    StatusCode::OK
}
