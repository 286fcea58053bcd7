//! `velvet rotate` and `velvet rotations list|show|stage|watch`: rotations through the API, with
//! live progress from the job's event stream.

use super::Context;
use super::client::{Client, decode};
use crate::Output;
use crate::exit::{Code, Failure};
use crate::output::{emit, table};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use velvet_core::job_view::{ConsumerEvent, RotationJobView, RotationPage};
use velvet_core::rotation::Word as _;
use velvet_core::rotation::{Awaiting, JobStatus, Stage};

fn checked_id(id: &str) -> Result<(), Failure> {
    if id.starts_with("rot_") && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "`{id}` is not a rotation job id such as rot_…"
        )))
    }
}

fn job_line(j: &RotationJobView) -> String {
    let awaiting = j
        .state
        .awaiting
        .map(|a| format!(", awaiting {a}"))
        .unwrap_or_default();
    let error = j
        .error
        .as_deref()
        .map(|e| format!(" — {e}"))
        .unwrap_or_default();
    format!(
        "{} {}: {} {}{awaiting}{error}",
        j.job_id, j.token, j.state.stage, j.state.status,
    )
}

/// What a kickoff asks for.
#[derive(Debug, Clone, Copy)]
pub struct Kickoff<'a> {
    pub flow: Option<&'a str>,
    pub reason: Option<&'a str>,
    /// Read a `manual` token's new value from stdin.
    pub value_stdin: bool,
}

/// The value a person gives for a `manual` token: from a pipe as is (one trailing newline
/// dropped), or asked for without echo on a terminal.
fn given_value(name: &str) -> Result<zeroize::Zeroizing<String>, Failure> {
    use std::io::{IsTerminal, Read};
    let mut v = zeroize::Zeroizing::new(String::new());
    if std::io::stdin().is_terminal() {
        *v = rpassword::prompt_password(format!("new value for {name}: "))
            .map_err(|e| Failure::new(Code::Failed, format!("reading the value: {e}")))?;
    } else {
        std::io::stdin().read_to_string(&mut v).map_err(|e| {
            Failure::new(Code::Failed, format!("reading the value from stdin: {e}"))
        })?;
        if v.ends_with('\n') {
            v.pop();
            if v.ends_with('\r') {
                v.pop();
            }
        }
    }
    if v.is_empty() {
        return Err(Failure::new(
            Code::Usage,
            "--value-stdin: stdin was empty; pipe the new value in (e.g. `pass show vendor/key | velvet rotate NAME --value-stdin`)",
        ));
    }
    Ok(v)
}

pub async fn rotate(
    ctx: &Context,
    name: &str,
    k: Kickoff<'_>,
    follow: bool,
    yes: bool,
) -> Result<(), Failure> {
    let client = Client::from_env()?;
    let mut body = json!({});
    if let Some(f) = k.flow {
        body["flow_type"] = json!(f);
    }
    if let Some(r) = k.reason {
        body["reason"] = json!(r);
    }
    if k.value_stdin {
        body["value"] = json!(given_value(name)?.as_str());
    }
    let path = format!("/api/v1/tokens/{}/rotate", urlencode(name));
    let job: velvet_server::KickoffAccepted =
        client.call_as(Method::POST, &path, Some(body)).await?;
    let id = job.job_id.clone();
    if !follow {
        emit(ctx.output, &job, |j| {
            println!("{}", j.job_id);
            eprintln!(
                "rotation started ({} flow); follow it with: velvet rotations watch {}",
                j.flow_type.as_str(),
                j.job_id
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
    let answer: RotationPage = Client::from_env()?
        .call_as(
            Method::GET,
            &format!("/api/v1/rotations?{}", query.join("&")),
            None,
        )
        .await?;
    emit(ctx.output, &answer, |a| {
        let rows: Vec<Vec<String>> = a
            .rotations
            .iter()
            .map(|j| {
                vec![
                    j.job_id.clone(),
                    j.token.clone(),
                    j.flow_type.as_str().into(),
                    j.state.stage.to_string(),
                    j.state.status.to_string(),
                    j.state.awaiting.map_or("-".into(), |a| a.to_string()),
                    j.created_at.to_rfc3339(),
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
    let job: RotationJobView = Client::from_env()?
        .call_as(Method::GET, &format!("/api/v1/rotations/{id}"), None)
        .await?;
    emit(ctx.output, &job, |j| {
        println!("{}", job_line(j));
        let rows: Vec<Vec<String>> = j
            .consumers
            .iter()
            .map(|c| {
                vec![
                    c.consumer.clone(),
                    c.kind.clone(),
                    c.status.as_str().into(),
                    c.attempts.to_string(),
                    c.last_error.clone().unwrap_or_else(|| "-".into()),
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
    let client = Client::from_env()?;
    let mut body = json!({"action": action});
    let asked = match totp {
        None if action == "proceed_revoke" && std::io::stdin().is_terminal() => {
            gate_code(&client, &View::new(false, true), id).await?
        }
        t => t.map(str::to_string),
    };
    if let Some(t) = asked {
        body["totp"] = json!(t);
    }
    if let Some(r) = reason {
        body["reason"] = json!(r);
    }
    let mut job: RotationJobView = client
        .call_as(
            Method::POST,
            &format!("/api/v1/rotations/{id}/stage"),
            Some(body),
        )
        .await?;
    // Abort and rollback answer while the engine is still undoing: show how it ended.
    if matches!(action, "abort" | "rollback") {
        let start = std::time::Instant::now();
        while job.state.status == JobStatus::Running
            && start.elapsed() < std::time::Duration::from_secs(60)
        {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            job = client
                .call_as(Method::GET, &format!("/api/v1/rotations/{id}"), None)
                .await?;
        }
    }
    emit(ctx.output, &job, |j| println!("{}", job_line(j)));
    if job.state.status == JobStatus::Failed {
        return Err(Failure::failed(failed_with_next_steps(&job)));
    }
    Ok(())
}

/// `velvet rotations approve ID --totp CODE`: an operator approves a gated revoke.
pub async fn approve(ctx: &Context, id: &str, totp: Option<&str>) -> Result<(), Failure> {
    checked_id(id)?;
    let client = Client::from_env()?;
    let code = match totp {
        Some(t) => t.to_string(),
        None if std::io::stdin().is_terminal() => prompt(
            &View::new(false, true),
            "Your current TOTP code: ".into(),
            true,
        )
        .await?
        .trim()
        .to_string(),
        None => {
            return Err(Failure::usage(format!(
                "an approval needs your TOTP code: velvet rotations approve {id} --totp CODE"
            )));
        }
    };
    let job: RotationJobView = client
        .call_as(
            Method::POST,
            &format!("/api/v1/rotations/{id}/approvals"),
            Some(json!({"totp": code})),
        )
        .await?;
    emit(ctx.output, &job, |j| {
        let have = j.gate.as_ref().map_or(0, |g| g.approvals.len());
        let need = j.gate.as_ref().map_or(0, |g| g.requires.approvals);
        println!("{}", job_line(j));
        eprintln!(
            "approved ({have} of {need}); the revoke goes on with: velvet rotations stage {id} proceed_revoke"
        );
    });
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
    let mut job: Option<RotationJobView> = None;
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
                    view.finish(job.as_ref());
                    let status = job.as_ref().map(|j| j.state.status);
                    return match status {
                        Some(JobStatus::Succeeded) => Ok(()),
                        other => Err(Failure::failed(format!(
                            "the rotation ended {}{}",
                            other.map_or("unknown", JobStatus::as_str),
                            job.as_ref()
                                .and_then(|j| j.error.as_deref())
                                .map(|e| format!(": {e}"))
                                .unwrap_or_default()
                        ))),
                    };
                }
                "job" => {
                    let j: RotationJobView = decode("a `job` event", e.data)?;
                    view.job(&j);
                    // A failed job waits for a person and sends no `end`: say what can be done.
                    if j.state.status == JobStatus::Failed {
                        view.finish(Some(&j));
                        return Err(Failure::failed(failed_with_next_steps(&j)));
                    }
                    let awaiting = j.state.awaiting;
                    job = Some(j);
                    if let (Some(confirm), Some(awaiting)) = (confirm, awaiting)
                        && acted.insert(awaiting.as_str().to_string())
                    {
                        let awaiting = awaiting.as_str();
                        if !(confirm || ask(&view, awaiting).await?) {
                            view.finish(job.as_ref());
                            // Not finished is not succeeded: the exit status says so (§6).
                            return Err(Failure::failed(format!(
                                "not finished: {id} awaits {awaiting}; go on with: velvet rotations stage {id} {awaiting}"
                            )));
                        }
                        let mut body = json!({"action": awaiting});
                        if awaiting == Awaiting::ProceedRevoke.as_str()
                            && let Some(code) = gate_code(client, &view, id).await?
                        {
                            body["totp"] = json!(code);
                        }
                        client
                            .call(
                                Method::POST,
                                &format!("/api/v1/rotations/{id}/stage"),
                                Some(body),
                            )
                            .await?;
                    }
                }
                "consumer" => view.consumer(decode("a `consumer` event", e.data)?),
                _ => {}
            }
        }
    }
    Err(Failure::failed(
        "the event stream kept closing; see velvet rotations show",
    ))
}

/// What failed and the commands that go on from there.
fn failed_with_next_steps(job: &RotationJobView) -> String {
    let id = &job.job_id;
    let stage = job.state.stage;
    let mut text = format!(
        "the rotation failed at {stage}{}\nnext, one of:\n  velvet rotations stage {id} retry_failed   # run again what failed\n",
        job.error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    if stage != Stage::Revoke {
        text.push_str(&format!(
            "  velvet rotations stage {id} rollback       # put the previous value back everywhere\n"
        ));
    }
    if stage == Stage::Mint {
        text.push_str(&format!(
            "  velvet rotations stage {id} abort          # discard the new value\n"
        ));
    }
    text.push_str(&format!(
        "  velvet rotations show {id}                 # each consumer's last error"
    ));
    text
}

/// Asks a question on the terminal and reads the answer, with the progress bar out of the way
/// for the whole exchange (its ticks would redraw over the prompt). `hidden` reads without echo.
async fn prompt(view: &View, question: String, hidden: bool) -> Result<String, Failure> {
    let bar = view.bar.clone();
    let read = move || -> std::io::Result<String> {
        eprint!("{question}");
        if hidden {
            rpassword::read_password()
        } else {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        }
    };
    tokio::task::spawn_blocking(move || match bar {
        Some(b) => b.suspend(read),
        None => read(),
    })
    .await
    .map_err(Failure::failed)?
    .map_err(|e| Failure::new(Code::Failed, e))
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
    let answer = prompt(view, format!("{question} [y/N] "), false).await?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// The TOTP code the job's revocation gate asks for, read from the terminal; `None` when the
/// gate asks for none. Without a terminal, the refusal says how to pass one.
async fn gate_code(client: &Client, view: &View, id: &str) -> Result<Option<String>, Failure> {
    let job: RotationJobView = client
        .call_as(Method::GET, &format!("/api/v1/rotations/{id}"), None)
        .await?;
    let Some(gate) = job.gate.filter(|g| g.requires.totp) else {
        return Ok(None);
    };
    let gate = gate.name;
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(
            Code::GateDenied,
            format!(
                "the gate `{gate}` needs a TOTP code: velvet rotations stage {id} proceed_revoke --totp CODE"
            ),
        ));
    }
    let code = prompt(
        view,
        format!(
            "The gate `{gate}` needs your current TOTP code (a code counts once: if you just \
             used it, wait for the next): "
        ),
        true,
    )
    .await?;
    Ok(Some(code.trim().to_string()))
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

    fn job(&mut self, j: &RotationJobView) {
        for c in &j.consumers {
            self.consumers
                .insert(c.consumer.clone(), c.status.as_str().into());
        }
        match &self.bar {
            Some(b) => {
                b.set_prefix(format!("{} {}", j.state.stage, j.state.status));
                self.redraw();
            }
            None if self.quiet => {}
            None => println!("job {}", job_line(j)),
        }
    }

    fn consumer(&mut self, e: ConsumerEvent) {
        let c = e.consumer;
        let status = c.status.as_str().to_string();
        match &self.bar {
            Some(b) => {
                if status == "failed" {
                    b.println(format!(
                        "consumer {} failed: {}",
                        c.consumer,
                        c.last_error.as_deref().unwrap_or("")
                    ));
                }
                self.consumers.insert(c.consumer, status);
                self.redraw();
            }
            None if self.quiet => {
                self.consumers.insert(c.consumer, status);
            }
            None => {
                let error = c
                    .last_error
                    .as_deref()
                    .map(|m| format!(" — {m}"))
                    .unwrap_or_default();
                println!(
                    "consumer {}: {status} (attempt {}){error}",
                    c.consumer, c.attempts
                );
                self.consumers.insert(c.consumer, status);
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

    fn finish(&self, j: Option<&RotationJobView>) {
        let status = j.map_or("unknown", |j| j.state.status.as_str());
        match &self.bar {
            Some(b) => b.finish_with_message(format!("— {status}")),
            None if self.quiet => {}
            None => println!("end: {status}"),
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
