//! `velvet flags list|set NAME on|off` through the API.

use super::Context;
use super::client::Client;
use crate::exit::Failure;
use crate::output::{emit, table};
use reqwest::Method;
use serde_json::json;

pub async fn list(ctx: &Context) -> Result<(), Failure> {
    let answer = Client::from_env()?
        .call(Method::GET, "/api/v1/flags", None)
        .await?;
    emit(ctx.output, &answer, |a| {
        let rows: Vec<Vec<String>> = a["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                vec![
                    f["name"].as_str().unwrap_or("").to_string(),
                    if f["enabled"] == true { "on" } else { "off" }.to_string(),
                    f["source"].as_str().unwrap_or("").to_string(),
                ]
            })
            .collect();
        table(&["flag", "state", "source"], &rows);
    });
    Ok(())
}

pub async fn set(ctx: &Context, name: &str, enabled: bool) -> Result<(), Failure> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Failure::usage(format!(
            "`{name}` is not a flag name (see velvet flags list)"
        )));
    }
    let answer = Client::from_env()?
        .call(
            Method::PUT,
            &format!("/api/v1/flags/{name}"),
            Some(json!({"enabled": enabled})),
        )
        .await?;
    emit(ctx.output, &answer, |a| {
        println!(
            "{} is now {} (override)",
            a["name"].as_str().unwrap_or(name),
            if a["enabled"] == true { "on" } else { "off" }
        );
    });
    Ok(())
}
