//! `exec`: runs a command with the value on stdin (never in its arguments or environment, where
//! other processes could read it). Exit 0 means applied; 75 (EX_TEMPFAIL) or a timeout means
//! try again; anything else is permanent. `VELVET_ACTION` tells the command what is asked.
//! The command runs with a cleared environment (design §10): only `PATH`, `HOME`, `LANG`, the
//! `VELVET_*` facts of the delivery and the consumer's own `env` reach it, never the server's
//! (which may hold `VELVET_API_KEY`, signing secrets or the master key).

use super::Consumer;
use crate::{AdapterError, Delivery, Result};
use async_trait::async_trait;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use velvet_core::secret::SecretValue;
use velvet_core::template::Template;

/// sysexits.h: "temporary failure; user is invited to retry".
const EX_TEMPFAIL: i32 = 75;
const STDERR_SHOWN: usize = 400;

/// What a command inherits from the server's environment.
const INHERITED: &[&str] = &["PATH", "HOME", "LANG"];

#[derive(Debug)]
pub struct Exec {
    command: Vec<String>,
    verify_command: Option<Vec<String>>,
    timeout: Duration,
    env: Vec<(String, Template)>,
}

impl Exec {
    /// `env` entries were checked by the config decoder; one that no longer parses is an error.
    pub fn new(
        command: Vec<String>,
        verify_command: Option<Vec<String>>,
        timeout: Duration,
        env: &[(String, String)],
    ) -> Result<Self> {
        let env = env
            .iter()
            .map(|(k, v)| {
                Template::parse(v)
                    .map(|t| (k.clone(), t))
                    .map_err(|e| AdapterError::permanent(format!("env.{k}: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            command,
            verify_command,
            timeout,
            env,
        })
    }

    async fn run(
        &self,
        argv: &[String],
        action: &str,
        d: &Delivery<'_>,
        value: &SecretValue,
        version: i64,
        fingerprint: &str,
    ) -> Result<()> {
        let input = super::value_text(value);
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.env_clear();
        for name in INHERITED {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        for (name, t) in &self.env {
            let rendered = t
                .render(value)
                .map_err(|e| AdapterError::permanent(format!("env.{name}: {e}")))?;
            cmd.env(name, rendered.as_str());
        }
        let mut child = cmd
            .args(&argv[1..])
            .env("VELVET_ACTION", action)
            .env("VELVET_TOKEN", d.token)
            .env("VELVET_JOB_ID", d.job_id)
            .env("VELVET_VERSION", version.to_string())
            .env("VELVET_FINGERPRINT", fingerprint)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| AdapterError::permanent(format!("cannot start `{}`: {e}", argv[0])))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let work = async {
            // A command that exits without reading stdin closes the pipe: not an error here.
            let _ = stdin.write_all(input.as_bytes()).await;
            drop(stdin);
            let mut err = Vec::new();
            let _ = stderr.read_to_end(&mut err).await;
            let status = child.wait().await;
            (status, err)
        };
        let (status, err) = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| {
                AdapterError::retryable(format!(
                    "`{}` did not finish within {}",
                    argv[0],
                    velvet_core::duration::format(self.timeout)
                ))
            })?;
        let status = status
            .map_err(|e| AdapterError::retryable(format!("waiting for `{}`: {e}", argv[0])))?;
        if status.success() {
            return Ok(());
        }
        // The command might echo its input, or one field of it: mask every field and the whole
        // text before any of stderr is kept, then cut (a cut first could split a secret).
        let shown = value.mask(&String::from_utf8_lossy(&err), &[input.as_str()]);
        let shown: String = shown.trim().chars().take(STDERR_SHOWN).collect();
        let message = format!(
            "`{}` exited with {status}{}{shown}",
            argv[0],
            if shown.is_empty() { "" } else { ": " }
        );
        Err(if status.code() == Some(EX_TEMPFAIL) {
            AdapterError::retryable(message)
        } else {
            AdapterError::permanent(message)
        })
    }
}

#[async_trait]
impl Consumer for Exec {
    /// Only a `verify_command` checks what the command did.
    fn checkable(&self) -> bool {
        self.verify_command.is_some()
    }

    async fn probe(&self) -> Result<String> {
        let mut found = Vec::new();
        for cmd in std::iter::once(&self.command).chain(self.verify_command.as_ref()) {
            let program = &cmd[0];
            let path = if program.contains('/') {
                Some(std::path::PathBuf::from(program))
            } else {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join(program))
                        .find(|p| p.is_file())
                })
            };
            use std::os::unix::fs::PermissionsExt;
            match path.and_then(|p| std::fs::metadata(&p).ok().map(|m| (p, m))) {
                Some((p, m)) if m.permissions().mode() & 0o111 != 0 => {
                    found.push(p.display().to_string())
                }
                _ => {
                    return Err(AdapterError::permanent(format!(
                        "`{program}` is not an executable on PATH"
                    )));
                }
            }
        }
        Ok(format!("runs {}", found.join(" and ")))
    }

    async fn apply(&self, d: &Delivery<'_>) -> Result<()> {
        self.run(
            &self.command,
            "apply",
            d,
            d.new,
            d.version,
            d.new_fingerprint,
        )
        .await
    }

    async fn verify(&self, d: &Delivery<'_>) -> Result<()> {
        match &self.verify_command {
            Some(v) => {
                self.run(v, "verify", d, d.new, d.version, d.new_fingerprint)
                    .await
            }
            // Without a verify command, a successful apply is all the evidence there is.
            None => Ok(()),
        }
    }

    async fn revoke_previous(&self, _: &Delivery<'_>) -> Result<()> {
        Ok(())
    }

    async fn rollback(&self, d: &Delivery<'_>) -> Result<()> {
        match (d.previous, d.previous_version) {
            (Some(prev), Some(v)) => {
                let fingerprint = d.previous_fingerprint.unwrap_or_default();
                self.run(&self.command, "rollback", d, prev, v, fingerprint)
                    .await
            }
            _ => Ok(()),
        }
    }

    fn default_lock_key(&self) -> String {
        format!("exec:{}", self.command.join(" "))
    }
}
