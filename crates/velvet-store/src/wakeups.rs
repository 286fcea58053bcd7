//! Wake-ups across replicas (design §4): on PostgreSQL every job event is announced with
//! NOTIFY (migration 008), and each replica LISTENs, so a kickoff on one replica is claimed by
//! another at once and event streams hear of changes without polling. Notifications missed
//! while the connection is re-made are caught by the engine's slow safety poll. SQLite serves
//! one process, whose engine wakes itself.

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use std::time::Duration;

/// The channel migration 008 announces job events on.
const CHANNEL: &str = "velvet_jobs";

/// A job changed: its id, and whether the job row itself changed (a `job` event: a kickoff, a
/// transition, an operator's action), which may give a replica work to claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobChanged {
    pub job_id: String,
    pub job_row: bool,
}

/// What hears of job changes.
pub type OnJobChange = Box<dyn Fn(JobChanged) + Send + Sync>;

/// Listens on its own connection (not one of the pool's) until the store is dropped.
pub(crate) fn listen(
    options: PgConnectOptions,
    on_change: OnJobChange,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options);
        let mut delay = Duration::from_millis(200);
        loop {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "listening for job changes failed; the engine polls meanwhile");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %e, "LISTEN velvet_jobs failed; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                continue;
            }
            delay = Duration::from_millis(200);
            // `recv` makes the connection again by itself when it breaks.
            loop {
                match listener.recv().await {
                    Ok(n) => {
                        if let Some(change) = parse(n.payload()) {
                            on_change(change);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "receiving job changes failed; listening again");
                        break;
                    }
                }
            }
            tokio::time::sleep(delay).await;
        }
    })
}

fn parse(payload: &str) -> Option<JobChanged> {
    let (job_id, event) = payload.split_once(' ')?;
    Some(JobChanged {
        job_id: job_id.to_string(),
        job_row: event == "job",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_the_job_and_whether_its_row_changed() {
        let p = |s| parse(s).unwrap();
        assert_eq!(
            p("rot_1 job"),
            JobChanged {
                job_id: "rot_1".into(),
                job_row: true
            }
        );
        assert_eq!(
            p("rot_1 consumer"),
            JobChanged {
                job_id: "rot_1".into(),
                job_row: false
            }
        );
        assert_eq!(parse("garbage"), None);
    }
}
