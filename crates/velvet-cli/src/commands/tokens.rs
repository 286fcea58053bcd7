//! `velvet tokens list|show` through the API.

use super::Context;
use super::client::Client;
use super::rotations::urlencode;
use crate::exit::Failure;
use crate::output::{emit, table};
use reqwest::Method;
use serde_json::Value;

fn cell(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn list(ctx: &Context) -> Result<(), Failure> {
    let answer = Client::from_env()?
        .call(Method::GET, "/api/v1/tokens", None)
        .await?;
    emit(ctx.output, &answer, |a| {
        let rows: Vec<Vec<String>> = a["tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                [
                    "name",
                    "source_kind",
                    "current_version",
                    "last_rotated_at",
                    "consumer_count",
                    "active_job_id",
                ]
                .iter()
                .map(|k| cell(t, k))
                .collect()
            })
            .collect();
        table(
            &[
                "name",
                "source",
                "version",
                "last rotated",
                "consumers",
                "active job",
            ],
            &rows,
        );
    });
    Ok(())
}

pub async fn show(ctx: &Context, name: &str) -> Result<(), Failure> {
    let t = Client::from_env()?
        .call(
            Method::GET,
            &format!("/api/v1/tokens/{}", urlencode(name)),
            None,
        )
        .await?;
    emit(ctx.output, &t, |t| {
        for k in [
            "name",
            "description",
            "source_kind",
            "current_version",
            "last_rotated_at",
            "next_rotation_at",
            "active_job_id",
        ] {
            println!("{:<18}{}", format!("{k}:"), cell(t, k));
        }
        let consumers: Vec<Vec<String>> = t["consumers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| vec![cell(c, "name"), cell(c, "kind"), cell(c, "lock_key")])
            .collect();
        if !consumers.is_empty() {
            println!();
            table(&["consumer", "kind", "lock key"], &consumers);
        }
        let versions: Vec<Vec<String>> = t["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                [
                    "version",
                    "label",
                    "fingerprint",
                    "created_at",
                    "revoked_at",
                ]
                .iter()
                .map(|k| cell(v, k))
                .collect()
            })
            .collect();
        if !versions.is_empty() {
            println!();
            table(
                &["version", "label", "fingerprint", "created", "revoked"],
                &versions,
            );
        }
    });
    Ok(())
}

pub async fn resync(ctx: &Context, name: &str) -> Result<(), Failure> {
    let r = Client::from_env()?
        .call(
            Method::POST,
            &format!("/api/v1/tokens/{}/resync", urlencode(name)),
            None,
        )
        .await?;
    emit(ctx.output, &r, |r| {
        let repaired: Vec<&str> = r["repaired"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if repaired.is_empty() && r["failed"].as_array().is_none_or(Vec::is_empty) {
            println!(
                "nothing had drifted: every probed consumer of {name} holds v{}",
                r["version"]
            );
        }
        for c in &repaired {
            println!("{c}: holds v{} again", r["version"]);
        }
        for f in r["failed"].as_array().into_iter().flatten() {
            println!(
                "{}: still drifted: {}",
                cell(f, "consumer"),
                cell(f, "error")
            );
        }
    });
    if r["failed"].as_array().is_some_and(|f| !f.is_empty()) {
        return Err(Failure::new(
            crate::exit::Code::Failed,
            "some drifted consumers could not be repaired; see each error above",
        ));
    }
    Ok(())
}
