//! Start-up and shutdown: open the keyring and store, migrate (or refuse to run unmigrated),
//! check the keyring against stored data, reconcile the file, serve, reconcile again on SIGHUP,
//! and drain on SIGTERM/SIGINT.

use crate::{AppState, Metrics, router};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use velvet_core::config::{Config, KeyringSource, LoadOptions, process_env};
use velvet_core::keyring::{Keyring, KeyringError};
use velvet_store::{MigrationError, MigrationSet, StoreError, StoreOptions};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server stopped with an error: {0}")]
    Serve(std::io::Error),
}

#[derive(Clone)]
pub struct ServeOptions {
    /// Refuse to start when migrations are pending instead of applying them.
    pub no_migrate: bool,
    pub store: StoreOptions,
    /// Where adapters look up `*_env` secrets; the process environment when `None`.
    pub env: Option<velvet_engine::EnvLookup>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("no_migrate", &self.no_migrate)
            .field("store", &self.store)
            .field("env", &self.env.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// The keyring named by the config: `VELVET_MASTER_KEY` or the key file.
pub fn open_keyring(config: &Config) -> Result<Keyring, KeyringError> {
    match &config.keyring {
        KeyringSource::MasterKey(k) => Keyring::from_master_key(k.expose()),
        KeyringSource::File(p) => Keyring::load(p),
    }
}

/// A store ready to serve: migrated, keyring checked, file reconciled.
#[derive(Debug)]
pub struct Prepared {
    pub state: AppState,
}

pub async fn prepare(config: Config, opts: &ServeOptions) -> Result<Prepared, StartError> {
    let keyring = Arc::new(open_keyring(&config)?);
    let store = velvet_store::open(&config.store, Some(keyring.clone()), &opts.store).await?;
    let set = MigrationSet::embedded(store.dialect());
    if opts.no_migrate {
        let pending = store
            .migrations(&set)
            .await?
            .iter()
            .filter(|s| s.status == "pending")
            .count();
        if pending > 0 {
            return Err(StoreError::Migration(MigrationError::Pending { count: pending }).into());
        }
    } else {
        for m in store.migrate(&set, false).await? {
            tracing::info!(version = m.version, name = %m.name, "migration applied");
        }
    }
    velvet_store::check_keyring(&*store, &keyring).await?;
    if config.api_key.is_some() {
        tracing::warn!(
            "VELVET_API_KEY is set: it is a bootstrap admin credential; unset it once service tokens exist"
        );
    }
    let config = velvet_core::config::live(config);
    let mut engine_opts = velvet_engine::EngineOptions::for_this_process();
    if let Some(env) = &opts.env {
        engine_opts.env = env.clone();
    }
    let engine =
        velvet_engine::Engine::new(store.clone(), keyring.clone(), config.clone(), engine_opts);
    let state = AppState {
        store,
        keyring,
        config,
        metrics: Arc::new(Metrics::default()),
        engine: Some(engine),
        limits: Default::default(),
        feeds: Default::default(),
    };
    reconcile(&state).await?;
    Ok(Prepared { state })
}

/// Syncs the current config into the store and refreshes the token gauges.
async fn reconcile(state: &AppState) -> Result<(), StoreError> {
    let config = state.config();
    let result = state
        .store
        .reconcile(&config.tokens, chrono::Utc::now())
        .await;
    state.metrics.reconciled(result.is_ok());
    let report = result?;
    tracing::info!(
        declared = ?report.declared,
        updated = ?report.updated,
        retired = ?report.retired,
        unchanged = report.unchanged,
        "reconciled velvet.yaml into the store"
    );
    let tokens = state.store.list_tokens().await?;
    let active = tokens
        .iter()
        .filter(|t| t.status == velvet_core::model::TokenStatus::Active)
        .count() as i64;
    state
        .metrics
        .set_tokens(active, tokens.len() as i64 - active);
    Ok(())
}

/// Re-reads the file on SIGHUP; an invalid file is reported and the running config kept.
async fn reload_on_hangup(state: AppState, file: PathBuf) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload by restarting");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!(file = %file.display(), "SIGHUP: reloading configuration");
        let loaded = Config::load(
            &file,
            LoadOptions {
                env: &process_env,
                check_env: true,
            },
        );
        match loaded {
            Ok(c) => {
                state.config.store(Arc::new(c));
                if let Some(engine) = &state.engine {
                    engine.resize();
                }
                if let Err(e) = reconcile(&state).await {
                    tracing::error!(error = %e, "reconcile after SIGHUP failed");
                }
            }
            Err(e) => tracing::error!(
                problems = %e,
                "the new configuration is invalid; keeping the running one"
            ),
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Binds and serves until SIGTERM/SIGINT, reloading on SIGHUP. `on_listening` is told the
/// bound address.
pub async fn serve(
    prepared: Prepared,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), StartError> {
    let config = prepared.state.config();
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(StartError::Serve)?;
    tracing::info!(%addr, store = %config.store, "velvet listening");
    on_listening(addr);
    tokio::spawn(reload_on_hangup(
        prepared.state.clone(),
        config.file.clone(),
    ));
    serve_on(prepared, listener, shutdown_signal()).await
}

/// Serves on `listener`, with the engine running, until `stop` completes; then lets requests
/// in flight finish and each job finish its step and release its lease.
pub async fn serve_on(
    prepared: Prepared,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let state = prepared.state;
    let config = state.config();
    let (stop_engine, engine_stopped) = tokio::sync::watch::channel(false);
    if let Some(engine) = &state.engine {
        engine.start(engine_stopped);
    }
    let engine = state.engine.clone();
    let app = router(state);
    crate::listen::serve(listener, app, &config.server, async move {
        stop.await;
        // Stop claiming work; a job left mid-step resumes from its stored state (I4).
        let _ = stop_engine.send(true);
    })
    .await
    .map_err(StartError::Serve)?;
    // Bounded by the lease: after it, another replica would take the job over anyway.
    if let Some(engine) = engine {
        engine.drain(config.engine.lease).await;
    }
    tracing::info!("stopped");
    Ok(())
}
