//! `velvet status`: what needs attention, from `GET /api/v1/status`; exits 1 when anything
//! does, so a cron job or a monitoring check can run it as it is.

use super::Context;
use super::client::Client;
use crate::exit::{Code, Failure};
use crate::output::emit;
use reqwest::Method;
use serde_json::Value;

/// The sections in the order a person reads them, with their heading.
const SECTIONS: &[(&str, &str)] = &[
    ("failed", "Failed rotations"),
    ("awaiting", "Awaiting a person"),
    ("overdue", "Overdue (past max_age)"),
    ("due_soon", "Due soon"),
    ("drifted", "Drifted consumers"),
    ("stale", "Stale consumers"),
];

pub async fn run(ctx: &Context) -> Result<(), Failure> {
    let s = Client::from_env()?
        .call(Method::GET, "/api/v1/status", None)
        .await?;
    emit(ctx.output, &s, |s| {
        let mut any = false;
        for (key, heading) in SECTIONS {
            let items = s[*key].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                continue;
            }
            any = true;
            println!("{heading} ({}):", items.len());
            for i in items {
                let job = i["job_id"]
                    .as_str()
                    .map(|j| format!(" [{j}]"))
                    .unwrap_or_default();
                println!(
                    "  {}{job}: {}",
                    i["token"].as_str().unwrap_or("?"),
                    i["detail"].as_str().unwrap_or("")
                );
            }
        }
        if !any {
            println!("All clear: nothing needs attention.");
        }
    });
    if s["needs_attention"] == Value::Bool(true) {
        let n: usize = SECTIONS
            .iter()
            .map(|(k, _)| s[*k].as_array().map_or(0, Vec::len))
            .sum();
        return Err(
            Failure::new(Code::Failed, format!("{n} thing(s) need attention"))
                .with_error("needs_attention"),
        );
    }
    Ok(())
}
