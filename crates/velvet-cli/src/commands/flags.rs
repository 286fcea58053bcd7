//! `velvet flags list|set NAME on|off` through the API.

use super::Context;
use super::client::Client;
use crate::exit::Failure;
use crate::output::{emit, table};
use reqwest::Method;
use serde_json::json;

pub async fn list(ctx: &Context) -> Result<(), Failure> {
    let answer: velvet_server::FlagList = Client::from_env()?
        .call_as(Method::GET, "/api/v1/flags", None)
        .await?;
    emit(ctx.output, &answer, |a| {
        let rows: Vec<Vec<String>> = a
            .flags
            .iter()
            .map(|f| {
                vec![
                    f.name.clone(),
                    if f.enabled { "on" } else { "off" }.to_string(),
                    f.source.clone(),
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
    let answer: velvet_server::Flag = Client::from_env()?
        .call_as(
            Method::PUT,
            &format!("/api/v1/flags/{name}"),
            Some(json!({"enabled": enabled})),
        )
        .await?;
    emit(ctx.output, &answer, |a| {
        println!(
            "{} is now {} (override)",
            a.name,
            if a.enabled { "on" } else { "off" }
        );
    });
    Ok(())
}
