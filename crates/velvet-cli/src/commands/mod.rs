//! One module per command group; `Context` carries the global options.

pub mod audit_tail;
pub mod auth;
pub mod client;
pub mod demo;
pub mod doctor;
pub mod flags;
pub mod init;
pub mod operators;
pub mod rotations;
pub mod serve;
pub mod status;
pub mod store;
pub mod tokens;
pub mod validate;

use crate::Output;
use crate::exit::Failure;
use std::path::PathBuf;
use velvet_core::config::{Config, LoadOptions, process_env, resolve_path};

#[derive(Debug)]
pub struct Context {
    pub config_flag: Option<PathBuf>,
    pub output: Output,
}

/// Store options from the environment: `VELVET_STORE_CONNECT_TIMEOUT` (a duration, default 30s)
/// bounds how long an unreachable PostgreSQL is retried at start.
pub fn store_options() -> Result<velvet_store::StoreOptions, Failure> {
    let mut opts = velvet_store::StoreOptions::default();
    if let Ok(v) = std::env::var("VELVET_STORE_CONNECT_TIMEOUT") {
        opts.connect_budget = velvet_core::duration::parse(&v)
            .map_err(|e| Failure::usage(format!("VELVET_STORE_CONNECT_TIMEOUT: {e}")))?;
    }
    Ok(opts)
}

impl Context {
    pub fn config_path(&self) -> PathBuf {
        resolve_path(self.config_flag.as_deref(), &process_env)
    }

    /// Loads and validates the config, requiring `*_env` variables to be set.
    pub fn load_config(&self) -> Result<Config, Failure> {
        Ok(Config::load(
            &self.config_path(),
            LoadOptions {
                env: &process_env,
                check_env: true,
            },
        )?)
    }

    /// Loads the config for offline store commands, which never read `*_env` secrets.
    pub fn load_config_for_store(&self) -> Result<Config, Failure> {
        Ok(Config::load(
            &self.config_path(),
            LoadOptions {
                env: &process_env,
                check_env: false,
            },
        )?)
    }
}
