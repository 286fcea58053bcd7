//! A webhook receiver on loopback that records every delivery, optionally slow.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
pub struct Deliveries {
    /// (token, version, value) of every delivery answered 2xx, in arrival order.
    pub received: Arc<Mutex<Vec<(String, i64, String)>>>,
    pub delay_ms: Arc<Mutex<u64>>,
}

impl Deliveries {
    pub fn count(&self) -> HashMap<(String, i64), usize> {
        let mut m = HashMap::new();
        for (t, v, _) in self.received.lock().unwrap().iter() {
            *m.entry((t.clone(), *v)).or_insert(0) += 1;
        }
        m
    }

    pub fn last_value(&self, token: &str) -> Option<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(t, _, _)| t == token)
            .map(|(_, _, v)| v.clone())
    }
}

async fn hook(State(d): State<Deliveries>, body: axum::body::Bytes) -> StatusCode {
    let delay = *d.delay_ms.lock().unwrap();
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    d.received.lock().unwrap().push((
        v["token"].as_str().unwrap().into(),
        v["version"].as_i64().unwrap(),
        v["value"].as_str().unwrap_or_default().into(),
    ));
    StatusCode::OK
}

/// Serves `app` on a loopback port from its own runtime thread; returns the address.
pub fn serve_on_loopback(app: axum::Router) -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// Starts the receiver on its own runtime thread; returns its URL.
pub fn start(delay: Duration) -> (Deliveries, String) {
    let d = Deliveries::default();
    *d.delay_ms.lock().unwrap() = delay.as_millis() as u64;
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(d.clone());
    let addr = serve_on_loopback(app);
    (d, format!("http://{addr}/hook"))
}
