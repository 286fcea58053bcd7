//! `velvet doctor`: checks the file, the keyring, the store, and that every source and consumer
//! can be reached, changing nothing, and prints one row per check.

use super::Context;
use crate::exit::{Code, Failure};
use crate::output::{emit, table};
use serde::Serialize;
use std::time::Duration;
use velvet_core::config::process_env;
use velvet_store::MigrationSet;

/// How long one source or consumer gets to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize)]
struct Check {
    check: String,
    target: String,
    /// `ok`, `warn` or `fail`.
    result: &'static str,
    detail: String,
}

fn row(check: &str, target: &str, result: &'static str, detail: impl Into<String>) -> Check {
    Check {
        check: check.into(),
        target: target.into(),
        result,
        detail: detail.into(),
    }
}

async fn probe<F>(what: F) -> (&'static str, String)
where
    F: std::future::Future<Output = velvet_adapters::Result<String>>,
{
    match tokio::time::timeout(PROBE_TIMEOUT, what).await {
        Ok(Ok(found)) => ("ok", found),
        Ok(Err(e)) => ("fail", e.to_string()),
        Err(_) => (
            "fail",
            format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
        ),
    }
}

/// The store answers, its migrations are applied, and the keyring opens what it holds.
async fn store_checks(
    config: &velvet_core::config::Config,
    name: &str,
    keyring: Option<&velvet_core::keyring::Keyring>,
) -> Result<Vec<Check>, Failure> {
    let store = match velvet_store::open(&config.store, None, &super::store_options()?).await {
        Ok(s) => s,
        Err(e) => return Ok(vec![row("store", name, "fail", e.to_string())]),
    };
    let m = match store
        .migrations(&MigrationSet::embedded(store.dialect()))
        .await
    {
        Ok(m) => m,
        Err(e) => return Ok(vec![row("store", name, "fail", e.to_string())]),
    };
    let pending = m.iter().filter(|s| s.status == "pending").count();
    if pending > 0 {
        let detail = format!(
            "{pending} migration(s) pending; `velvet serve` or `velvet migrate` applies them"
        );
        return Ok(vec![row("store", name, "warn", detail)]);
    }
    let mut out = vec![row(
        "store",
        name,
        "ok",
        format!("{} migrations applied", m.len()),
    )];
    if let Some(k) = keyring {
        out.push(match velvet_store::check_keyring(&*store, k).await {
            Ok(()) => row(
                "keyring opens stored values",
                "",
                "ok",
                "every key in use opens a sample",
            ),
            Err(e) => row("keyring opens stored values", "", "fail", e.to_string()),
        });
    }
    Ok(out)
}

pub async fn run(ctx: &Context) -> Result<(), Failure> {
    let mut checks = Vec::new();
    let path = ctx.config_path().display().to_string();
    let config = match ctx.load_config() {
        Ok(c) => {
            let consumers: usize = c.tokens.iter().map(|t| t.consumers.len()).sum();
            checks.push(row(
                "config",
                &path,
                "ok",
                format!("{} tokens, {consumers} consumers", c.tokens.len()),
            ));
            Some(c)
        }
        Err(f) => {
            checks.push(row("config", &path, "fail", f.message));
            None
        }
    };
    if let Some(config) = &config {
        let keyring = match velvet_server::open_keyring(config) {
            Ok(k) => {
                let current = k
                    .current(chrono::Utc::now())
                    .map(|key| key.id.clone())
                    .unwrap_or_else(|_| "none valid now".into());
                checks.push(row(
                    "keyring",
                    "",
                    "ok",
                    format!("{} key(s), current {current}", k.keys().len()),
                ));
                Some(k)
            }
            Err(e) => {
                checks.push(row("keyring", "", "fail", e.to_string()));
                None
            }
        };
        let store_name = config.store.to_string();
        let absent = match &config.store {
            // Opening would create it: say so instead.
            velvet_core::config::StoreUrl::Sqlite(p) => !p.exists(),
            _ => false,
        };
        if absent {
            checks.push(row(
                "store",
                &store_name,
                "warn",
                "not created yet; `velvet serve` creates it",
            ));
        } else {
            checks.extend(store_checks(config, &store_name, keyring.as_ref()).await?);
        }
        let sources = velvet_adapters::source::Sources::default();
        for t in &config.tokens {
            let (result, detail) = match sources.build(&t.source, &process_env) {
                Ok(source) => probe(source.probe()).await,
                Err(e) => ("fail", e.to_string()),
            };
            checks.push(row(
                &format!("source {}", t.source.kind()),
                &t.name,
                result,
                detail,
            ));
            for c in &t.consumers {
                let (result, detail) = match velvet_adapters::consumer::build(c, &process_env) {
                    Ok(consumer) => probe(consumer.probe()).await,
                    Err(e) => ("fail", e.to_string()),
                };
                checks.push(row(
                    &format!("consumer {}", c.kind.as_str()),
                    &format!("{}/{}", t.name, c.name),
                    result,
                    detail,
                ));
            }
        }
    }
    let failed = checks.iter().filter(|c| c.result == "fail").count();
    emit(ctx.output, &checks, |checks| {
        let rows: Vec<Vec<String>> = checks
            .iter()
            .map(|c| {
                vec![
                    c.check.clone(),
                    c.target.clone(),
                    c.result.to_string(),
                    c.detail.clone(),
                ]
            })
            .collect();
        table(&["check", "target", "result", "detail"], &rows);
    });
    match (config.is_none(), failed) {
        (true, _) => Err(Failure::new(Code::Usage, "the configuration has problems")),
        (_, 0) => Ok(()),
        (_, n) => Err(Failure::failed(format!("{n} check(s) failed"))),
    }
}
