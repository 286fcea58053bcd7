//! What the scheduler keeps in the store (design §11): the lease that makes one replica its
//! leader, each token's standing (last success, latest slot used, an unfinished job), missed
//! slots recorded with their audit record, and `next_rotation_at` as the scheduler computed it.
//! Starting a job for a slot is part of the kickoff's own transaction (`NewJob::schedule_slot`),
//! so a slot is used once even when two replicas both think they lead.

use crate::StoreError;
use crate::db::{Backend, Conn, DbError, Driver, FromRow, Row, audit_keyring, write_one};
use crate::jobs::at;
use crate::migrate::Dialect;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;
use velvet_core::audit::AuditDraft;
use velvet_core::schedule::{Missed, Standing};

/// A token's standing as the scheduler reads it.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub token: String,
    pub standing: Standing,
    pub next_rotation_at: Option<DateTime<Utc>>,
}

impl FromRow for ScheduleRow {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(ScheduleRow {
            token: r.text()?,
            standing: Standing {
                first_seen: r.time()?,
                last_rotated_at: r.opt_time()?,
                slot_taken: r.opt_time()?,
                busy: r.bool()?,
                last_finished: r.opt_time()?,
            },
            next_rotation_at: r.opt_time()?,
        })
    }
}

// One pass over tokens and one grouped pass over jobs (no per-token subqueries, no sort: the
// scheduler does not care about order).
const STANDING: &str = "SELECT t.name, t.created_at, t.last_rotated_at, t.schedule_slot_at,
        COALESCE(j.busy, 0), j.last_finished, t.next_rotation_at
     FROM tokens t LEFT JOIN (
         SELECT token_id,
                MAX(CASE WHEN status NOT IN ('succeeded', 'aborted', 'rolled_back') THEN 1 ELSE 0 END) AS busy,
                MAX(finished_at) AS last_finished
         FROM rotation_jobs GROUP BY token_id) j ON j.token_id = t.id
     WHERE t.status = 'active'";

/// `schedule_slot_at` moves forward only: the condition that makes each slot used once.
fn slot_is_free(dialect: Dialect) -> String {
    format!(
        "(schedule_slot_at IS NULL OR {})",
        at(dialect, "schedule_slot_at", "<", "$2")
    )
}

/// Takes `slot` for the token with id `token_id`; false when it (or a later one) was taken.
pub(crate) async fn take_slot<C: Conn>(
    c: &mut C,
    token_id: i64,
    slot: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let sql = format!(
        "UPDATE tokens SET schedule_slot_at = $2 WHERE id = $1 AND {}",
        slot_is_free(c.dialect())
    );
    Ok(c.run(
        "taking a schedule slot",
        &sql,
        &[token_id.into(), slot.into()],
    )
    .await?
        == 1)
}

#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Takes or renews the lease `name` for `holder` until `now + ttl`; false while another
    /// holder's lease is unexpired.
    async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Gives the lease up (on a clean stop), so another replica leads at once.
    async fn give_up_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Every active token's standing, in one read.
    async fn schedule_standing(&self) -> Result<Vec<ScheduleRow>, StoreError>;

    /// Records missed slots (a `schedule_missed` audit record) and takes the latest of them;
    /// false when that slot was already taken, so nothing was recorded twice.
    async fn record_missed(&self, token: &str, missed: &Missed) -> Result<bool, StoreError>;

    /// Sets `next_rotation_at` of each named token.
    async fn set_next_rotations(
        &self,
        next: &[(String, Option<DateTime<Utc>>)],
    ) -> Result<(), StoreError>;
}

#[async_trait]
impl<B: Backend> ScheduleStore for B {
    async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(30));
        let (name, holder) = (name.to_string(), holder.to_string());
        self.driver()
            .write("holding a lease", move |c| {
                Box::pin(async move {
                    let expired = at(c.dialect(), "leases.expires_at", "<", "$4");
                    let sql = format!(
                        "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
                         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
                         WHERE leases.holder = excluded.holder OR {expired}"
                    );
                    let n = c
                        .run(
                            "holding a lease",
                            &sql,
                            &[
                                name.as_str().into(),
                                holder.as_str().into(),
                                until.into(),
                                now.into(),
                            ],
                        )
                        .await?;
                    Ok(n == 1)
                })
            })
            .await
    }

    async fn give_up_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        write_one(
            self,
            "releasing a lease",
            "DELETE FROM leases WHERE name = $1 AND holder = $2",
            vec![name.into(), holder.into()],
        )
        .await
        .map(drop)
    }

    async fn schedule_standing(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        crate::db::read_all(self, "reading schedules", STANDING, vec![]).await
    }

    async fn record_missed(&self, token: &str, missed: &Missed) -> Result<bool, StoreError> {
        let keyring = audit_keyring(self.keyring())?;
        let (token, missed) = (token.to_string(), missed.clone());
        self.driver()
            .write("recording a missed slot", move |c| {
                Box::pin(async move {
                    let Some(id) = c
                        .opt::<i64>(
                            "finding a token",
                            "SELECT id FROM tokens WHERE name = $1 AND status = 'active'",
                            &[token.as_str().into()],
                        )
                        .await?
                    else {
                        return Ok(false);
                    };
                    if !take_slot(c, id, missed.slot).await? {
                        return Ok(false);
                    }
                    let draft = AuditDraft::new("scheduler", "schedule_missed", &token, "missed")
                        .detail(serde_json::json!({
                            "slot": missed.slot,
                            "slots_missed": missed.count,
                            "reason": missed.reason,
                        }));
                    crate::audit::record(c, &keyring, &draft).await?;
                    crate::notifications::record(c, "schedule_missed", &token, None, &draft.detail)
                        .await?;
                    Ok(true)
                })
            })
            .await
    }

    async fn set_next_rotations(
        &self,
        next: &[(String, Option<DateTime<Utc>>)],
    ) -> Result<(), StoreError> {
        if next.is_empty() {
            return Ok(());
        }
        let next = next.to_vec();
        self.driver()
            .write("setting next rotations", move |c| {
                Box::pin(async move {
                    for (token, at) in &next {
                        c.run(
                            "setting a next rotation",
                            "UPDATE tokens SET next_rotation_at = $2 WHERE name = $1",
                            &[token.as_str().into(), (*at).into()],
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .await
    }
}
