//! Velvet's HTTP server: routes, shared state, start-up (keyring, store, migrations, reconcile)
//! and shutdown. Each resource has its own file with its own `router()`.

mod assets;
mod audit;
mod auth;
mod body;
mod console;
mod console_history;
mod console_pages;
mod error;
mod events;
mod flags;
mod gate;
mod health;
mod limits;
mod listen;
mod metrics;
mod notifications;
mod openapi;
mod resync;
mod rotations;
mod service_tokens;
mod session;
mod startup;
mod status;
mod tokens;

/// The answers the CLI decodes, as the server sends them.
pub use audit::AuditPage;
pub use error::ApiError;
pub use flags::{Flag, FlagList};
pub use metrics::Metrics;
pub use openapi::document_json as openapi_json;
pub use service_tokens::{CreatedServiceToken, ServiceTokenList, ServiceTokenView};
pub use startup::{Prepared, ServeOptions, StartError, open_keyring, prepare, serve, serve_on};
pub use tokens::KickoffAccepted;
pub use velvet_engine::EnvLookup;

use std::sync::Arc;
use velvet_core::config::Config;
use velvet_core::keyring::Keyring;
use velvet_store::Store;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
    /// Replaced on SIGHUP when the file is valid; handlers clone the `Arc` they need.
    pub config: velvet_core::config::LiveConfig,
    pub metrics: Arc<Metrics>,
    /// The rotation engine, when this process runs one.
    pub engine: Option<Arc<velvet_engine::Engine>>,
    /// Failed authentications, logins and step-up codes.
    pub limits: Arc<limits::Limiters>,
    /// One event feed per job followed over SSE.
    pub feeds: Arc<events::Feeds>,
}

impl AppState {
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }
}

/// Request bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The full router.
pub fn router(state: AppState) -> axum::Router {
    let (routes, _) = openapi::routes().split_for_parts();
    routes
        .merge(console::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(console::security_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}
