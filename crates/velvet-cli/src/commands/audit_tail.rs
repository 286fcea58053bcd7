//! `velvet audit tail [-n N] [-f]`: the latest audit records through the API.

use super::Context;
use super::client::Client;
use crate::Output;
use crate::exit::Failure;
use reqwest::Method;
use std::collections::VecDeque;
use std::time::Duration;
use velvet_core::audit::AuditEntry;

const PAGE: usize = 1000;
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

fn print(output: Output, e: &AuditEntry) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string(e).expect("audit records serialise")
        ),
        Output::Text => println!(
            "{:>6}  {}  {:<24} {:<28} {:<30} {}",
            e.seq,
            e.at.to_rfc3339(),
            e.actor,
            e.action,
            e.target,
            e.outcome,
        ),
    }
}

/// Records after `after`, page by page to the end; returns the last seq seen.
async fn read_after(
    client: &Client,
    mut after: i64,
    mut each: impl FnMut(AuditEntry),
) -> Result<i64, Failure> {
    loop {
        let page: velvet_server::AuditPage = client
            .call_as(
                Method::GET,
                &format!("/api/v1/audit?after_seq={after}&limit={PAGE}"),
                None,
            )
            .await?;
        for e in page.events {
            after = e.seq;
            each(e);
        }
        if page.next_after_seq.is_none() {
            return Ok(after);
        }
    }
}

pub async fn run(ctx: &Context, lines: usize, follow: bool) -> Result<(), Failure> {
    let client = Client::from_env()?;
    // The API pages forward from a seq: walk to the end, keeping the last `lines`.
    let mut last = VecDeque::with_capacity(lines + 1);
    let mut after = read_after(&client, 0, |e| {
        last.push_back(e);
        if last.len() > lines {
            last.pop_front();
        }
    })
    .await?;
    last.iter().for_each(|e| print(ctx.output, e));
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        after = read_after(&client, after, |e| print(ctx.output, &e)).await?;
    }
}
