//! One server in this process, on a loopback port, over a fresh SQLite store in a temp dir.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use velvet_core::config::{Config, LoadOptions};
use velvet_server::{ServeOptions, StartError};

/// The bootstrap admin key the servers here accept.
pub const KEY: &str = "in-process-bootstrap-key-0123456789abcdef";

pub struct Running {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), StartError>>,
}

/// Starts a server for the `tokens:` block `tokens` (`{dir}` is the temp dir).
pub async fn start(tokens: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    velvet_testkit::keyring_in(dir.path());
    let file = dir.path().join("velvet.yaml");
    let text = format!(
        "defaults: {{grace_period: 0s}}\n{}",
        tokens.replace("{dir}", &dir.path().display().to_string())
    );
    std::fs::write(&file, text).unwrap();
    let env = |name: &str| (name == "VELVET_API_KEY").then(|| KEY.to_string());
    let config = Config::load(
        &file,
        LoadOptions {
            env: &env,
            check_env: true,
        },
    )
    .unwrap();
    let opts = ServeOptions {
        no_migrate: false,
        store: Default::default(),
        env: Some(std::sync::Arc::new(|_: &str| None)),
    };
    let prepared = velvet_server::prepare(config, &opts).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(velvet_server::serve_on(prepared, listener, async move {
        let _ = stopped.await;
    }));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    Running {
        addr,
        dir,
        http,
        stop: Some(stop),
        done,
    }
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request as the bootstrap admin.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(KEY)
    }

    /// Sends `req` and reads its whole body.
    pub async fn text(&self, req: reqwest::RequestBuilder) -> String {
        req.send().await.unwrap().text().await.unwrap()
    }

    /// Asks the server to stop and waits until it has, engine drained.
    pub async fn stop(mut self) -> Result<(), StartError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.done).await.unwrap()
    }
}
