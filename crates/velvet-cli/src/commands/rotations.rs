//! `velvet rotate` and `velvet rotations list|show|stage|watch`: rotations through the API, with
//! live progress from the job's event stream.

use super::Context;
use super::client::{Client, SseEvent};
use crate::Output;
use crate::exit::{Code, Failure};
use crate::output::{emit, table};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;

fn checked_id(id: &str) -> Result<(), Failure> {
    if id.starts_with("rot_") && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "`{id}` is not a rotation job id such as rot_…"
        )))
    }
}

fn job_line(j: &Value) -> String {
    let awaiting = j["awaiting"]
        .as_str()
        .map(|a| format!(", awaiting {a}"))
        .unwrap_or_default();
    let error = j["error"]
        .as_str()
        .map(|e| format!(" — {e}"))
        .unwrap_or_default();
    format!(
        "{} {}: {} {}{awaiting}{error}",
        j["job_id"].as_str().unwrap_or(""),
        j["token"].as_str().unwrap_or(""),
        j["stage"].as_str().unwrap_or(""),
        j["status"].as_str().unwrap_or(""),
    )
}

pub async fn rotate(
    ctx: &Context,
    name: &str,
    flow: Option<&str>,
    reason: Option<&str>,
    follow: bool,
    yes: bool,
) -> Result<(), Failure> {
    let client = Client::from_env()?;
    let mut body = json!({});
    if let Some(f) = flow {
        body["flow_type"] = json!(f);
    }
    if let Some(r) = reason {
        body["reason"] = json!(r);
    }
    let path = format!("/api/v1/tokens/{}/rotate", urlencode(name));
    let job = client.call(Method::POST, &path, Some(body)).await?;
    let id = job["job_id"].as_str().unwrap_or("").to_string();
    if !follow {
        emit(ctx.output, &job, |j| {
            println!("{}", j["job_id"].as_str().unwrap_or(""));
            eprintln!(
                "rotation started ({} flow); follow it with: velvet rotations watch {}",
                j["flow_type"].as_str().unwrap_or(""),
                j["job_id"].as_str().unwrap_or("")
            );
        });
        return Ok(());
    }
    follow_job(ctx, &client, &id, Some(yes)).await
}

pub async fn list(
    ctx: &Context,
    token: Option<&str>,
    status: Option<&str>,
    limit: u32,
) -> Result<(), Failure> {
    let mut query = vec![format!("limit={limit}")];
    if let Some(t) = token {
        query.push(format!("token={}", urlencode(t)));
    }
    if let Some(s) = status {
        query.push(format!("status={}", urlencode(s)));
    }
    let answer = Client::from_env()?
        .call(
            Method::GET,
            &format!("/api/v1/rotations?{}", query.join("&")),
            None,
        )
        .await?;
    emit(ctx.output, &answer, |a| {
        let rows: Vec<Vec<String>> = a["rotations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|j| {
                let s = |k: &str| j[k].as_str().unwrap_or("-").to_string();
                vec![
                    s("job_id"),
                    s("token"),
                    s("flow_type"),
                    s("stage"),
                    s("status"),
                    s("awaiting"),
                    s("created_at"),
                ]
            })
            .collect();
        table(
            &[
                "job", "token", "flow", "stage", "status", "awaiting", "created",
            ],
            &rows,
        );
    });
    Ok(())
}

pub async fn show(ctx: &Context, id: &str) -> Result<(), Failure> {
    checked_id(id)?;
    let job = Client::from_env()?
        .call(Method::GET, &format!("/api/v1/rotations/{id}"), None)
        .await?;
    emit(ctx.output, &job, |j| {
        println!("{}", job_line(j));
        let rows: Vec<Vec<String>> = j["consumers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                vec![
                    c["consumer"].as_str().unwrap_or("").into(),
                    c["kind"].as_str().unwrap_or("").into(),
                    c["status"].as_str().unwrap_or("").into(),
                    c["attempts"].to_string(),
                    c["last_error"].as_str().unwrap_or("-").into(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            table(
                &["consumer", "kind", "status", "attempts", "last error"],
                &rows,
            );
        }
    });
    Ok(())
}

pub async fn stage(
    ctx: &Context,
    id: &str,
    action: &str,
    totp: Option<&str>,
    reason: Option<&str>,
) -> Result<(), Failure> {
    checked_id(id)?;
    let mut body = json!({"action": action});
    if let Some(t) = totp {
        body["totp"] = json!(t);
    }
    if let Some(r) = reason {
        body["reason"] = json!(r);
    }
    let job = Client::from_env()?
        .call(
            Method::POST,
            &format!("/api/v1/rotations/{id}/stage"),
            Some(body),
        )
        .await?;
    emit(ctx.output, &job, |j| println!("{}", job_line(j)));
    Ok(())
}

pub async fn watch(ctx: &Context, id: &str) -> Result<(), Failure> {
    checked_id(id)?;
    follow_job(ctx, &Client::from_env()?, id, None).await
}

/// Renders a job's events until it ends. With `confirm` (a staged `rotate --follow`), each
/// awaited stage is asked for (or, with `Some(true)`, granted) before it runs.
async fn follow_job(
    ctx: &Context,
    client: &Client,
    id: &str,
    confirm: Option<bool>,
) -> Result<(), Failure> {
    let live = ctx.output == Output::Text && std::io::stderr().is_terminal();
    let mut view = View::new(live, ctx.output == Output::Json);
    let mut last_id = None;
    let mut acted: HashSet<String> = HashSet::new();
    let mut job = Value::Null;
    // Reconnects resume after the last event seen, so nothing is missed or shown twice.
    for _attempt in 0..5 {
        let mut stream = client.events(id, last_id).await?;
        while let Some(e) = stream.next().await {
            if e.id.is_some() {
                last_id = e.id;
            }
            if ctx.output == Output::Json {
                println!("{}", json!({"event": e.event, "id": e.id, "data": e.data}));
            }
            match e.event.as_str() {
                "end" => {
                    view.finish(&job);
                    return match job["status"].as_str() {
                        Some("succeeded") => Ok(()),
                        other => Err(Failure::failed(format!(
                            "the rotation ended {}{}",
                            other.unwrap_or("unknown"),
                            job["error"]
                                .as_str()
                                .map(|e| format!(": {e}"))
                                .unwrap_or_default()
                        ))),
                    };
                }
                "job" => {
                    job = e.data.clone();
                    view.job(&job);
                    if let (Some(confirm), Some(awaiting)) = (confirm, job["awaiting"].as_str())
                        && matches!(awaiting, "proceed_distribute" | "proceed_revoke")
                        && acted.insert(awaiting.to_string())
                    {
                        if !(confirm || ask(&view, awaiting).await?) {
                            view.finish(&job);
                            eprintln!(
                                "left {id} awaiting {awaiting}; go on with: velvet rotations stage {id} {awaiting}"
                            );
                            return Ok(());
                        }
                        client
                            .call(
                                Method::POST,
                                &format!("/api/v1/rotations/{id}/stage"),
                                Some(json!({"action": awaiting})),
                            )
                            .await?;
                    }
                }
                "consumer" => view.consumer(&e),
                _ => {}
            }
        }
    }
    Err(Failure::failed(
        "the event stream kept closing; see velvet rotations show",
    ))
}

/// Asks on the terminal whether to run the awaited stage; anything but yes is no, and without
/// a terminal the answer is no (scripts pass --yes).
async fn ask(view: &View, awaiting: &str) -> Result<bool, Failure> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    let question = match awaiting {
        "proceed_distribute" => "Distribute the new value to every consumer?",
        _ => "Revoke the previous value now?",
    };
    view.suspend(|| eprint!("{question} [y/N] "));
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(Failure::failed)?
    .map_err(|e| Failure::new(Code::Failed, e))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Progress: a bar of verified consumers on a terminal, one line per event otherwise, nothing
/// with `--output json` (the events themselves are printed).
struct View {
    bar: Option<ProgressBar>,
    quiet: bool,
    consumers: BTreeMap<String, String>,
}

impl View {
    fn new(live: bool, quiet: bool) -> Self {
        let bar = live.then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} [{bar:30}] {pos}/{len} verified {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        });
        Self {
            bar,
            quiet,
            consumers: BTreeMap::new(),
        }
    }

    fn job(&mut self, j: &Value) {
        if let Some(cs) = j["consumers"].as_array() {
            for c in cs {
                self.consumers.insert(
                    c["consumer"].as_str().unwrap_or("").into(),
                    c["status"].as_str().unwrap_or("").into(),
                );
            }
        }
        match &self.bar {
            Some(b) => {
                b.set_prefix(format!(
                    "{} {}",
                    j["stage"].as_str().unwrap_or(""),
                    j["status"].as_str().unwrap_or("")
                ));
                self.redraw();
            }
            None if self.quiet => {}
            None => println!("job {}", job_line(j)),
        }
    }

    fn consumer(&mut self, e: &SseEvent) {
        let name = e.data["consumer"].as_str().unwrap_or("").to_string();
        let status = e.data["status"].as_str().unwrap_or("").to_string();
        match &self.bar {
            Some(b) => {
                if status == "failed" {
                    b.println(format!(
                        "consumer {name} failed: {}",
                        e.data["last_error"].as_str().unwrap_or("")
                    ));
                }
                self.consumers.insert(name, status);
                self.redraw();
            }
            None if self.quiet => {
                self.consumers.insert(name, status);
            }
            None => {
                let error = e.data["last_error"]
                    .as_str()
                    .map(|m| format!(" — {m}"))
                    .unwrap_or_default();
                println!(
                    "consumer {name}: {status} (attempt {}){error}",
                    e.data["attempts"]
                );
                self.consumers.insert(name, status);
            }
        }
    }

    fn redraw(&self) {
        if let Some(b) = &self.bar {
            b.set_length(self.consumers.len() as u64);
            b.set_position(self.consumers.values().filter(|s| *s == "verified").count() as u64);
            let busy = self
                .consumers
                .values()
                .filter(|s| *s == "in_progress")
                .count();
            b.set_message(if busy > 0 {
                format!("({busy} in progress)")
            } else {
                String::new()
            });
        }
    }

    fn suspend(&self, f: impl FnOnce()) {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    fn finish(&self, j: &Value) {
        match &self.bar {
            Some(b) => b.finish_with_message(format!("— {}", j["status"].as_str().unwrap_or(""))),
            None if self.quiet => {}
            None => println!("end: {}", j["status"].as_str().unwrap_or("")),
        }
    }
}

/// Percent-encodes a path segment or query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
