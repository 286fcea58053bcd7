//! `velvet auth create-token|list|revoke`: service tokens through the API.

use super::Context;
use super::client::Client;
use crate::exit::Failure;
use crate::output::{emit, table};
use reqwest::Method;
use serde_json::{Value, json};

pub async fn create_token(
    ctx: &Context,
    name: &str,
    role: &str,
    expires: Option<&str>,
    operator: Option<&str>,
) -> Result<(), Failure> {
    let mut body = json!({"name": name, "role": role});
    if let Some(e) = expires {
        body["expires_in"] = json!(e);
    }
    if let Some(o) = operator {
        body["operator"] = json!(o);
    }
    let created = Client::from_env()?
        .call(Method::POST, "/api/v1/auth/tokens", Some(body))
        .await?;
    emit(ctx.output, &created, |c| {
        println!("{}", c["token"].as_str().unwrap_or(""));
        eprintln!(
            "created {} ({}, role {}, expires {}); the token above is shown only this once",
            c["id"].as_str().unwrap_or(""),
            c["name"].as_str().unwrap_or(""),
            c["role"].as_str().unwrap_or(""),
            c["expires_at"].as_str().unwrap_or("never"),
        );
    });
    Ok(())
}

pub async fn list(ctx: &Context) -> Result<(), Failure> {
    let answer = Client::from_env()?
        .call(Method::GET, "/api/v1/auth/tokens", None)
        .await?;
    emit(ctx.output, &answer, |a| {
        let cell = |t: &Value, k: &str| t[k].as_str().unwrap_or("-").to_string();
        let rows: Vec<Vec<String>> = a["tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let state = if t["revoked_at"].is_string() {
                    "revoked".to_string()
                } else {
                    "active".to_string()
                };
                vec![
                    cell(t, "id"),
                    cell(t, "name"),
                    cell(t, "role"),
                    cell(t, "prefix"),
                    state,
                    cell(t, "expires_at"),
                    cell(t, "last_used_at"),
                ]
            })
            .collect();
        table(
            &[
                "id",
                "name",
                "role",
                "prefix",
                "state",
                "expires",
                "last used",
            ],
            &rows,
        );
    });
    Ok(())
}

pub async fn revoke(ctx: &Context, id: &str) -> Result<(), Failure> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Failure::usage(format!(
            "`{id}` is not a token id such as st_0123456789abcdef (see velvet auth list)"
        )));
    }
    Client::from_env()?
        .call(Method::DELETE, &format!("/api/v1/auth/tokens/{id}"), None)
        .await?;
    emit(ctx.output, &json!({"id": id, "revoked": true}), |_| {
        println!("revoked {id}");
    });
    Ok(())
}
