//! `velvet serve` and `velvet demo`.

use super::Context;
use crate::exit::Failure;
use chrono::Utc;
use velvet_core::config::{Config, LoadOptions};
use velvet_core::keyring::version_aad;
use velvet_core::secret::SecretValue;
use velvet_server::ServeOptions;

pub async fn serve(ctx: &Context, no_migrate: bool) -> Result<(), Failure> {
    let config = ctx.load_config()?;
    let opts = ServeOptions {
        no_migrate,
        store: super::store_options()?,
    };
    let prepared = velvet_server::prepare(config, &opts).await?;
    velvet_server::serve(prepared, |_| {}).await?;
    Ok(())
}

/// A throwaway directory with the starter config, the embedded store and a sample value, served
/// until Ctrl-C, then removed.
pub async fn demo(_ctx: &Context) -> Result<(), Failure> {
    let dir = tempfile::Builder::new().prefix("velvet-demo-").tempdir()?;
    super::init::write_starter(dir.path(), false)?;
    // The demo is self-contained: only the listen address may come from the environment.
    let env = |name: &str| match name {
        "VELVET_LISTEN" => std::env::var(name).ok(),
        _ => None,
    };
    let config = Config::load(
        &dir.path().join("velvet.yaml"),
        LoadOptions {
            env: &env,
            check_env: true,
        },
    )?;
    let prepared = velvet_server::prepare(
        config,
        &ServeOptions {
            no_migrate: false,
            store: super::store_options()?,
        },
    )
    .await?;
    let state = &prepared.state;
    let sample = "example-api-token";
    if state.store.list_versions(sample).await?.is_empty() {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| Failure::failed(format!("no OS randomness: {e}")))?;
        let value = SecretValue::single(hex::encode(raw));
        let sealed = state
            .keyring
            .seal(&value, &version_aad(sample, 1), Utc::now())?;
        let fp = state.keyring.fingerprint(&value, Utc::now())?;
        state
            .store
            .import_version(sample, &sealed, &fp, "demo")
            .await?;
    }
    let dir_shown = dir.path().display().to_string();
    velvet_server::serve(prepared, |addr| {
        println!();
        println!("  Velvet demo is running at http://{addr}");
        println!("    health:    curl http://{addr}/healthz");
        println!("    readiness: curl http://{addr}/readyz");
        println!("    metrics:   curl http://{addr}/metrics");
        println!("  Its files (config, keyring, SQLite store) are in {dir_shown}");
        println!("  Inspect them: velvet --config {dir_shown}/velvet.yaml audit verify");
        println!("  Press Ctrl-C to stop; the directory is removed on exit.");
        println!();
    })
    .await?;
    Ok(())
}
