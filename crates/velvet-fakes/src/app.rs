//! An application deployed on the Heroku fake: `GET /api/me` answers 200 to the bearer token its
//! app's config var holds and 401 to anything else, as a real app reading its config does. It is
//! what a `verify.probe` checks: the new value works where it is used, and a wrong one does not.

use crate::heroku::Heroku;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Clone)]
struct Reads {
    heroku: Heroku,
    app: String,
    key: String,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicU64,
    refused: AtomicU64,
    /// A broken app that lets any token in: the one a probe must not take for verified.
    lax: AtomicBool,
}

/// A running app endpoint.
#[derive(Debug, Clone)]
pub struct AppEndpoint {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
}

impl AppEndpoint {
    /// Serves an app that authenticates with the value of `key` in Heroku app `app`.
    pub async fn start(heroku: &Heroku, app: &str, key: &str) -> Self {
        let counts = Arc::new(Counts::default());
        let reads = Reads {
            heroku: heroku.clone(),
            app: app.into(),
            key: key.into(),
            counts: counts.clone(),
        };
        let router = Router::new().route("/api/me", get(me)).with_state(reads);
        Self {
            addr: crate::serve(router).await,
            counts,
        }
    }

    /// From now on the app accepts any token (a bug a negative probe catches).
    pub fn accept_anything(&self) {
        self.counts.lax.store(true, Ordering::SeqCst)
    }

    /// Requests answered 200 and 401.
    pub fn answers(&self) -> (u64, u64) {
        let c = &self.counts;
        (
            c.accepted.load(Ordering::SeqCst),
            c.refused.load(Ordering::SeqCst),
        )
    }

    /// The URL a probe points at.
    pub fn url(&self) -> String {
        format!("http://{}/api/me", self.addr)
    }
}

async fn me(State(r): State<Reads>, headers: HeaderMap) -> (StatusCode, &'static str) {
    let held = r.heroku.vars(&r.app).get(&r.key).cloned();
    let sent = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = r.counts.lax.load(Ordering::SeqCst)
        || matches!((held, sent), (Some(h), Some(s)) if !h.is_empty() && h == s);
    if ok {
        r.counts.accepted.fetch_add(1, Ordering::SeqCst);
        (StatusCode::OK, "{\"ok\":true}")
    } else {
        r.counts.refused.fetch_add(1, Ordering::SeqCst);
        (StatusCode::UNAUTHORIZED, "{\"error\":\"invalid token\"}")
    }
}
