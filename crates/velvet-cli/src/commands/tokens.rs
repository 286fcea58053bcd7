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
