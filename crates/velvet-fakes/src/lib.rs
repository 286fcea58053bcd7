//! Faithful fakes of provider APIs on loopback, built from `shared/reference/providers.md`:
//! the real paths, required headers, bodies, status codes, error envelopes and rate-limit
//! headers, with switches to inject 429s, 5xx, slow answers and expired credentials. One place,
//! shared by the adapter tests, the end-to-end tests and `velvet demo`.

pub mod app;
pub mod cloudflare;
pub mod github;
pub mod heroku;
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
