//! Faithful fakes of provider APIs on loopback, built from `shared/reference/providers.md`:
//! the real paths, required headers, bodies, status codes, error envelopes and rate-limit
//! headers, with switches to inject 429s, 5xx, slow answers and expired credentials. One place,
//! shared by the adapter tests, the end-to-end tests and `velvet demo`.

pub mod app;
pub mod cloudflare;
pub mod github;
pub mod heroku;
pub mod inbox;
pub mod infisical;
pub mod kubernetes;
pub mod runbook;

use std::net::SocketAddr;

/// Serves `app` on a free loopback port on the current tokio runtime; the server lives as long
/// as the runtime.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A fixed-window rate limit (Cloudflare's, Infisical's): `quota` requests per `length`.
#[derive(Debug, Clone)]
pub struct Window {
    pub quota: u32,
    pub length: std::time::Duration,
    start: std::time::Instant,
    used: u32,
}

impl Window {
    pub fn new(quota: u32, length: std::time::Duration) -> Self {
        Self {
            quota,
            length,
            start: std::time::Instant::now(),
            used: 0,
        }
    }

    /// Starts a new window when this one is over.
    pub fn roll(&mut self) {
        if self.start.elapsed() >= self.length {
            (self.start, self.used) = (std::time::Instant::now(), 0);
        }
    }

    /// Spends one request; `false` when the window's quota is spent.
    pub fn take(&mut self) -> bool {
        if self.used >= self.quota {
            return false;
        }
        self.used += 1;
        true
    }

    pub fn left(&self) -> u32 {
        self.quota.saturating_sub(self.used)
    }

    /// Whole seconds until the window resets, rounded up (a client waiting that long is safe).
    pub fn reset_secs(&self) -> u64 {
        self.length
            .saturating_sub(self.start.elapsed())
            .as_secs_f64()
            .ceil() as u64
    }
}
