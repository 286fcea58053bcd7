//! The accept loop (design §10): at most `server.max_connections` connections are served at
//! once (the rest wait in the kernel's listen queue), a request's headers must arrive within
//! `server.header_timeout`, and every connection gets TCP_NODELAY (event streams write small
//! frames that would otherwise wait on the client's delayed ACK). Stopping stops accepting,
//! lets requests in flight finish for a bounded time, then closes what is left (event streams
//! never finish on their own).

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use velvet_core::config::ServerConfig;

/// How long requests in flight may take to finish once a stop was asked for.
const DRAIN: Duration = Duration::from_secs(10);

pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: &ServerConfig,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(stop);
    loop {
        // Wait for a free slot before accepting: past the cap, new connections queue in the
        // kernel instead of costing memory and file descriptors here.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            _ = &mut stop => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY could not be set");
        }
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!(
            "closing connections still open after {}s (event streams)",
            DRAIN.as_secs()
        );
    }
    Ok(())
}
