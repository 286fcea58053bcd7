//! `velvet auth create-token|list|revoke`: service tokens through the API.

use super::Context;
use super::client::Client;
use crate::exit::Failure;
use crate::output::{emit, table};
use reqwest::Method;
use serde_json::json;

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
    let created: velvet_server::CreatedServiceToken = Client::from_env()?
        .call_as(Method::POST, "/api/v1/auth/tokens", Some(body))
        .await?;
    emit(ctx.output, &created, |c| {
        println!("{}", c.token);
        eprintln!(
            "created {} ({}, role {}, expires {}); the token above is shown only this once",
            c.id,
            c.name,
            c.role,
            c.expires_at.map_or("never".into(), |t| t.to_rfc3339()),
        );
    });
    Ok(())
}

pub async fn list(ctx: &Context) -> Result<(), Failure> {
    let answer: velvet_server::ServiceTokenList = Client::from_env()?
        .call_as(Method::GET, "/api/v1/auth/tokens", None)
        .await?;
    emit(ctx.output, &answer, |a| {
        let at =
            |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("-".into(), |t| t.to_rfc3339());
        let rows: Vec<Vec<String>> = a
            .tokens
            .iter()
            .map(|t| {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                vec![
                    t.id.clone(),
                    t.name.clone(),
                    t.role.clone(),
                    t.prefix.clone(),
                    state.to_string(),
                    at(t.expires_at),
                    at(t.last_used_at),
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
