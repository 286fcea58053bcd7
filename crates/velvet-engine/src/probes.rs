//! Probes (design §11): every `engine.probe_every`, on the scheduler's leader, each consumer's
//! read-only check runs against the current version and each source logs in with it; the
//! result (`in_sync`, `drifted`, `stale`, `unreachable`) is stored, and a change is an event.
//! `resync` re-applies the current version to the drifted consumers of one token, audited.

use crate::runner::Engine;
use chrono::Utc;
use std::time::Duration;
use velvet_adapters::consumer::{self, Consumer};
use velvet_adapters::{AdapterError, Delivery};
use velvet_core::audit::AuditDraft;
use velvet_core::config::TokenSpec;
use velvet_core::model::{Health, HealthState, TokenStatus, VersionLabel};
use velvet_core::secret::SecretValue;
use velvet_store::{Probed, StoreError};

/// How long one check may take before it counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// What a failed check says about the copy: a refused credential is stale; a retryable
/// failure leaves it unreachable; any other permanent answer (another value, no value) is
/// drift.
pub fn classify(e: &AdapterError) -> HealthState {
    let m = e.to_string();
    let refused = [
        "401",
        "403",
        "Unauthorized",
        "Forbidden",
        "authentication failed",
    ]
    .iter()
    .any(|w| m.contains(w));
    match e {
        _ if refused => HealthState::Stale,
        AdapterError::Retryable { .. } => HealthState::Unreachable,
        AdapterError::Permanent { .. } => HealthState::Drifted,
    }
}

fn health(result: Result<Result<(), AdapterError>, tokio::time::error::Elapsed>) -> Health {
    let (state, detail) = match result {
        Ok(Ok(())) => (HealthState::InSync, "holds the current version".to_string()),
        Ok(Err(e)) => (classify(&e), e.to_string()),
        Err(_) => (
            HealthState::Unreachable,
            format!("no answer within {}s", CHECK_TIMEOUT.as_secs()),
        ),
    };
    Health {
        state,
        checked_at: Utc::now(),
        detail,
    }
}

/// A consumer as built for a check, or why it could not be.
type Built = Result<Box<dyn Consumer>, String>;

/// What one probe pass found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub tokens: usize,
    pub checks: usize,
    /// `(token, consumer or "source", state)` for every state that changed.
    pub changed: Vec<(String, String, HealthState)>,
}

/// What resync did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Resynced {
    pub token: String,
    pub version: i64,
    /// The drifted consumers that hold the current version again.
    pub repaired: Vec<String>,
    /// Drifted consumers that could not be repaired, with why.
    pub failed: Vec<(String, String)>,
}

impl Engine {
    /// The current version of `token`: its number, fingerprint and value.
    async fn current(&self, token: &str) -> Result<Option<(i64, String, SecretValue)>, String> {
        let versions = self
            .store
            .list_versions(token)
            .await
            .map_err(|e| e.to_string())?;
        let Some(v) = versions.iter().find(|v| v.label == VersionLabel::Current) else {
            return Ok(None);
        };
        let value = crate::values::open(&*self.store, &self.keyring, token, v.version)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Some((v.version, v.fingerprint.clone(), value)))
    }

    fn consumers_of(&self, spec: &TokenSpec) -> Vec<(String, Built)> {
        let env = self.opts.env.clone();
        spec.consumers
            .iter()
            .map(|c| {
                let built = consumer::build_among(c, &spec.consumers, &|n| env(n))
                    .map_err(|e| e.to_string());
                (c.name.clone(), built)
            })
            .collect()
    }

    /// Checks every token without an unfinished job, changing nothing.
    pub async fn probe_pass(&self) -> Result<ProbeReport, StoreError> {
        let config = self.config();
        let mut report = ProbeReport::default();
        for t in self.store.list_tokens().await? {
            if t.status != TokenStatus::Active || t.active_job_id.is_some() {
                continue;
            }
            let Some(spec) = config.token(&t.name) else {
                continue;
            };
            let Ok(Some((version, fp, value))) = self.current(&t.name).await else {
                continue;
            };
            report.tokens += 1;
            let mut results: Vec<(Probed, Health)> = Vec::new();
            if let Ok(source) = self.source(spec) {
                let h = health(tokio::time::timeout(CHECK_TIMEOUT, source.verify(&value)).await);
                results.push((Probed::Source, h));
            }
            let built = self.consumers_of(spec);
            let d = Delivery {
                token: &t.name,
                job_id: "probe",
                version,
                new: &value,
                new_fingerprint: &fp,
                previous: None,
                previous_version: None,
                previous_fingerprint: None,
            };
            for (name, c) in &built {
                let h = match c {
                    // A consumer that cannot be read back has nothing to probe.
                    Ok(c) if !c.checkable() => continue,
                    Ok(c) => health(tokio::time::timeout(CHECK_TIMEOUT, c.verify(&d)).await),
                    Err(e) => Health {
                        state: HealthState::Unreachable,
                        checked_at: Utc::now(),
                        detail: e.clone(),
                    },
                };
                results.push((Probed::Consumer(name), h));
            }
            for (of, h) in results {
                report.checks += 1;
                let before = self.store.set_health(&t.name, of, &h).await?;
                if before != Some(h.state) {
                    let who = match of {
                        Probed::Consumer(n) => n.to_string(),
                        Probed::Source => "source".into(),
                    };
                    tracing::info!(token = %t.name, of = %who, state = h.state.as_str(), detail = %h.detail, "probe state changed");
                    report.changed.push((t.name.clone(), who, h.state));
                }
            }
        }
        Ok(report)
    }

    /// Every `engine.probe_every` (0 turns probes off), while this replica leads.
    pub(crate) async fn probe_loop(
        self: std::sync::Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let every = self.config().engine.probe_every;
            let wait = if every.is_zero() {
                Duration::from_secs(60)
            } else {
                every
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { break; },
            }
            if every.is_zero() || !self.leads_scheduler() {
                continue;
            }
            match self.probe_pass().await {
                Ok(r) => tracing::info!(
                    tokens = r.tokens,
                    checks = r.checks,
                    changed = r.changed.len(),
                    "probe pass"
                ),
                Err(e) => tracing::warn!(error = %e, "probe pass failed; the next one tries again"),
            }
        }
    }

    /// Re-applies the current version to `token`'s drifted consumers only, then verifies each;
    /// refused while the token has an unfinished job (it owns the consumers then).
    pub async fn resync(&self, token: &str, actor: &str) -> Result<Resynced, crate::ServiceError> {
        use crate::ServiceError as E;
        let config = self.config();
        let spec = config
            .token(token)
            .ok_or_else(|| E::NotFound(format!("token `{token}`")))?;
        let view = self
            .store
            .token_view(token)
            .await?
            .ok_or_else(|| E::NotFound(format!("token `{token}`")))?;
        if let Some(job) = &view.token.active_job_id {
            // Its unfinished rotation owns the consumers: finish or abort it first.
            return Err(E::Store(StoreError::JobActive(job.clone())));
        }
        let drifted: Vec<String> = view
            .consumers
            .iter()
            .filter(|c| {
                c.health
                    .as_ref()
                    .is_some_and(|h| h.state == HealthState::Drifted)
            })
            .map(|c| c.name.clone())
            .collect();
        let (version, fp, value) = self
            .current(token)
            .await
            .map_err(E::Internal)?
            .ok_or_else(|| E::Validation(format!("token `{token}` has no current version")))?;
        let mut out = Resynced {
            token: token.into(),
            version,
            ..Resynced::default()
        };
        let d = Delivery {
            token,
            job_id: "resync",
            version,
            new: &value,
            new_fingerprint: &fp,
            previous: None,
            previous_version: None,
            previous_fingerprint: None,
        };
        for (name, c) in self.consumers_of(spec) {
            if !drifted.contains(&name) {
                continue;
            }
            let lock_key = spec
                .consumers
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.lock_key.clone());
            let done = match c {
                Ok(c) => {
                    // A write like any other: never at once with another on its lock key.
                    let key = lock_key.unwrap_or_else(|| c.default_lock_key());
                    let (_permit, held) = self.hold(&key).await;
                    let done = match c.apply(&d).await {
                        Ok(()) => c.verify(&d).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    held.release().await;
                    done
                }
                Err(e) => Err(e),
            };
            let h = Health {
                state: if done.is_ok() {
                    HealthState::InSync
                } else {
                    HealthState::Drifted
                },
                checked_at: Utc::now(),
                detail: match &done {
                    Ok(()) => format!("resynced to v{version} by {actor}"),
                    Err(e) => e.clone(),
                },
            };
            self.store
                .set_health(token, Probed::Consumer(&name), &h)
                .await?;
            match done {
                Ok(()) => out.repaired.push(name),
                Err(e) => out.failed.push((name, e)),
            }
        }
        let draft = AuditDraft::new(
            actor,
            "token.resynced",
            token,
            if out.failed.is_empty() {
                "success"
            } else {
                "failure"
            },
        )
        .detail(serde_json::json!({
            "version": version,
            "fingerprint": fp,
            "repaired": out.repaired,
            "failed": out.failed.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        }));
        self.store.append_audit(&draft).await?;
        Ok(out)
    }
}
