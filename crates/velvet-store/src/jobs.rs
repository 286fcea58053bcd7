//! Rotation jobs, written once for both dialects over the driver interface. Every change
//! updates the job row first (on PostgreSQL its row lock orders the job's events; on SQLite the
//! single writer orders everything), then appends its audit record and event in the same
//! transaction. What differs per dialect is said where it differs: the claim (`FOR UPDATE SKIP
//! LOCKED` on PostgreSQL), time comparisons (SQLite keeps RFC 3339 text), and page order.

use crate::db::{Backend, Conn, DbError, DbErrorKind, Driver, FromRow, Owned, Row, read_opt};
use crate::db::{audit_keyring, write_one};
use crate::migrate::Dialect;
use crate::rows::{JOB_COLUMNS, JOB_CONSUMERS_SQL, JobConsumerRow, JobRow};
use crate::{ConsumerChange, Context, JobEvent, JobQuery, JobStore, NewJob, StoreError, audit};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use velvet_core::audit::{AuditDraft, now_micros};
use velvet_core::job::{JobChanges, RotationJob, new_job_id};
use velvet_core::job_view::RotationJobView;
use velvet_core::keyring::Sealed;
use velvet_core::rotation::JobState;

const UNFINISHED: &str = "status NOT IN ('succeeded', 'aborted', 'rolled_back')";

fn lease_until(lease: std::time::Duration) -> DateTime<Utc> {
    now_micros() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30))
}

/// `column < $n` (or another comparison) as instants: SQLite keeps times as text whose digits
/// vary, so it compares them through `julianday`.
pub(crate) fn at(dialect: Dialect, column: &str, op: &str, param: &str) -> String {
    match dialect {
        Dialect::Postgres => format!("{column} {op} {param}"),
        Dialect::Sqlite => format!("julianday({column}) {op} julianday({param})"),
    }
}

impl FromRow for JobRow {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        // In the order of JOB_COLUMNS.
        Ok(JobRow {
            id: r.text()?,
            token: r.text()?,
            flow_type: r.text()?,
            stage: r.text()?,
            status: r.text()?,
            awaiting: r.opt_text()?,
            revoke_started: r.bool()?,
            reverting: r.opt_text()?,
            new_version: r.opt_int()?,
            previous_version: r.opt_int()?,
            requested_by: r.text()?,
            reason: r.opt_text()?,
            error: r.opt_text()?,
            lease_owner: r.opt_text()?,
            lease_expires_at: r.opt_time()?,
            wake_at: r.opt_time()?,
            created_at: r.time()?,
            updated_at: r.time()?,
            finished_at: r.opt_time()?,
            requested_role: r.opt_text()?,
        })
    }
}

impl FromRow for JobConsumerRow {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(JobConsumerRow {
            name: r.text()?,
            kind: r.text()?,
            lock_key: r.opt_text()?,
            status: r.text()?,
            attempts: r.int()?,
            last_error: r.opt_text()?,
            fingerprint: r.opt_text()?,
            next_attempt_at: r.opt_time()?,
            started_at: r.opt_time()?,
            updated_at: r.time()?,
        })
    }
}

impl FromRow for JobEvent {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(JobEvent {
            seq: r.int()?,
            at: r.time()?,
            event: r.text()?,
            data: serde_json::from_str(&r.text()?).unwrap_or(serde_json::Value::Null),
        })
    }
}

/// The job as it stands in this transaction or snapshot.
async fn load<C: Conn>(c: &mut C, job_id: &str) -> Result<Option<RotationJob>, StoreError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM rotation_jobs j JOIN tokens t ON t.id = j.token_id WHERE j.id = $1"
    );
    let Some(row) = c
        .opt::<JobRow>("reading a job", &sql, &[job_id.into()])
        .await?
    else {
        return Ok(None);
    };
    let consumers = c
        .all::<JobConsumerRow>(
            "reading a job's consumers",
            JOB_CONSUMERS_SQL,
            &[job_id.into()],
        )
        .await?;
    row.into_job(consumers).map(Some)
}

async fn event<C: Conn>(
    c: &mut C,
    job_id: &str,
    kind: &str,
    job: &RotationJob,
) -> Result<(), StoreError> {
    let data = serde_json::to_string(&RotationJobView::from(job)).expect("jobs serialise");
    c.run(
        "appending a job event",
        "INSERT INTO rotation_events (job_id, seq, at, event, data)
         VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM rotation_events WHERE job_id = $1), $2, $3, $4)",
        &[job_id.into(), now_micros().into(), kind.into(), data.as_str().into()],
    )
    .await?;
    Ok(())
}

/// The request of a kickoff, owned so the transaction body can take it.
#[derive(Clone)]
struct Kickoff {
    token: String,
    flow: velvet_core::config::FlowType,
    requested_by: String,
    role: Option<&'static str>,
    reason: Option<String>,
    /// Scope, key, request hash.
    idempotency: Option<(String, String, String)>,
    schedule_slot: Option<DateTime<Utc>>,
    given: Option<crate::GivenValue>,
}

/// The job an unexpired `Idempotency-Key` already made, if the request matches;
/// `IdempotencyMismatch` if it does not.
async fn replayed<C: Conn>(c: &mut C, k: &Kickoff) -> Result<Option<RotationJob>, StoreError> {
    let Some((scope, key, hash)) = &k.idempotency else {
        return Ok(None);
    };
    let sql = format!(
        "SELECT job_id, request_hash FROM idempotency_keys WHERE scope = $1 AND key = $2 AND {}",
        at(c.dialect(), "created_at", ">", "$3")
    );
    let cutoff = now_micros() - crate::IDEMPOTENCY_WINDOW;
    let seen: Option<(String, String)> = c
        .opt(
            "reading an idempotency key",
            &sql,
            &[scope.into(), key.into(), cutoff.into()],
        )
        .await?;
    match seen {
        None => Ok(None),
        Some((_, seen_hash)) if &seen_hash != hash => Err(StoreError::IdempotencyMismatch),
        Some((job_id, _)) => load(c, &job_id).await,
    }
}

/// The job a kickoff makes, or `None` when the token's slot is taken (I3, by the partial unique
/// index): the transaction is then rolled back and the caller looks up who holds it.
async fn insert_job<C: Conn>(
    c: &mut C,
    k: &Kickoff,
    keyring: &velvet_core::keyring::Keyring,
) -> Result<Option<RotationJob>, StoreError> {
    let token_id: i64 = c
        .opt(
            "finding a token",
            "SELECT id FROM tokens WHERE name = $1 AND status = 'active'",
            &[k.token.as_str().into()],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("token `{}`", k.token)))?;
    let previous: Option<i64> = c
        .opt(
            "finding the current version",
            "SELECT version FROM secret_versions WHERE token_id = $1 AND label = 'current'",
            &[token_id.into()],
        )
        .await?;
    let id = new_job_id();
    let now = now_micros();
    let inserted = c
        .exec(
            "INSERT INTO rotation_jobs (id, token_id, flow_type, stage, status, previous_version, requested_by, reason, created_at, updated_at, requested_role)
             VALUES ($1, $2, $3, 'mint', 'pending', $4, $5, $6, $7, $7, $8)",
            &[
                id.as_str().into(),
                token_id.into(),
                k.flow.as_str().into(),
                previous.into(),
                k.requested_by.as_str().into(),
                k.reason.as_deref().into(),
                now.into(),
                k.role.into(),
            ],
        )
        .await;
    match inserted {
        Err(DbError {
            kind: DbErrorKind::Unique,
            ..
        }) => return Ok(None),
        other => other.ctx("creating a job")?,
    };
    // After the insert, so a refused insert leaves the slot free (SQLite would commit it).
    if let Some(slot) = k.schedule_slot
        && !crate::schedules::take_slot(c, token_id, slot).await?
    {
        return Err(StoreError::SlotTaken(slot));
    }
    c.run(
        "creating a job's consumers",
        "INSERT INTO rotation_job_consumers (job_id, consumer_id, status, attempts, updated_at)
         SELECT $1, id, 'pending', 0, $2 FROM consumers WHERE token_id = $3 AND status = 'active'",
        &[id.as_str().into(), now.into(), token_id.into()],
    )
    .await?;
    if let Some(g) = &k.given {
        c.run(
            "storing the given version",
            "INSERT INTO secret_versions (token_id, version, label, key_id, ciphertext, fingerprint, job_id, created_at)
             VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7)",
            &[
                token_id.into(),
                g.version.into(),
                g.sealed.key_id.as_str().into(),
                g.sealed.ciphertext.as_slice().into(),
                g.fingerprint.as_str().into(),
                id.as_str().into(),
                now.into(),
            ],
        )
        .await?;
        c.run(
            "recording the given version on the job",
            "UPDATE rotation_jobs SET new_version = $2 WHERE id = $1",
            &[id.as_str().into(), g.version.into()],
        )
        .await?;
    }
    if let Some((scope, key, hash)) = &k.idempotency {
        c.run(
            "recording an idempotency key",
            "INSERT INTO idempotency_keys (scope, key, request_hash, job_id, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (scope, key) DO UPDATE SET request_hash = excluded.request_hash,
                 job_id = excluded.job_id, created_at = excluded.created_at",
            &[scope.into(), key.into(), hash.into(), id.as_str().into(), now.into()],
        )
        .await?;
    }
    let draft = AuditDraft::rotation_requested(
        &k.requested_by,
        &k.token,
        &id,
        k.flow.as_str(),
        k.reason.as_deref(),
    );
    audit::append(c, keyring, &[&draft]).await?;
    if let Some(g) = &k.given {
        let given = AuditDraft::new(&k.requested_by, "version.given", &k.token, "success").detail(
            serde_json::json!({"job_id": id, "version": g.version, "fingerprint": g.fingerprint}),
        );
        audit::append(c, keyring, &[&given]).await?;
    }
    let job = load(c, &id).await?.expect("just inserted");
    event(c, &id, "job", &job).await?;
    Ok(Some(job))
}

/// Why the unique index refused a kickoff: the job that holds the token's slot, unless a
/// concurrent request with our `Idempotency-Key` made it (it committed before the index let
/// us fail), in which case it is our job too. `None`: the holder finished meanwhile, so the
/// slot is free and the kickoff may be tried again.
async fn slot_holder<C: Conn>(c: &mut C, k: &Kickoff) -> Result<Option<RotationJob>, StoreError> {
    if let Some(job) = replayed(c, k).await? {
        return Ok(Some(job));
    }
    let sql = format!(
        "SELECT j.id FROM rotation_jobs j JOIN tokens t ON t.id = j.token_id
         WHERE t.name = $1 AND j.{UNFINISHED}"
    );
    let active: Option<String> = c
        .opt("finding the active job", &sql, &[k.token.as_str().into()])
        .await?;
    match active {
        Some(id) => Err(StoreError::JobActive(id)),
        None => Ok(None),
    }
}

/// How often a kickoff is tried when the job holding its token's slot keeps finishing between
/// the refused insert and the look-up (each try is one short write and one read).
const KICKOFF_TRIES: usize = 3;

#[async_trait]
impl<B: Backend> JobStore for B {
    async fn create_job(&self, new: &NewJob<'_>) -> Result<RotationJob, StoreError> {
        let keyring = audit_keyring(self.keyring())?;
        let k = Kickoff {
            token: new.token.to_string(),
            flow: new.flow,
            requested_by: new.requested_by.to_string(),
            role: new.requested_role.map(|r| r.as_str()),
            reason: new.reason.map(str::to_string),
            idempotency: new.idempotency.as_ref().map(|i| {
                (
                    i.scope.to_string(),
                    i.key.to_string(),
                    i.request_hash.to_string(),
                )
            }),
            schedule_slot: new.schedule_slot,
            given: new.given.clone(),
        };
        for _ in 0..KICKOFF_TRIES {
            let (kickoff, keyring) = (k.clone(), keyring.clone());
            let made = self
                .driver()
                .write("creating a job", move |c| {
                    Box::pin(async move {
                        if let Some(job) = replayed(c, &kickoff).await? {
                            return Ok(Some(job));
                        }
                        insert_job(c, &kickoff, &keyring).await
                    })
                })
                .await?;
            if let Some(job) = made {
                return Ok(job);
            }
            let k = k.clone();
            let holder = self
                .driver()
                .read("finding the active job", move |c| {
                    Box::pin(async move { slot_holder(c, &k).await })
                })
                .await?;
            if let Some(job) = holder {
                return Ok(job);
            }
        }
        // Still racing after every try: the same request may succeed in a moment.
        Err(StoreError::Unavailable(format!(
            "kickoffs of token `{}` keep racing jobs that finish at the same moment; try again",
            k.token
        )))
    }

    async fn job_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        crate::db::read_all(
            self,
            "counting jobs",
            "SELECT t.name, j.status, COUNT(*) FROM rotation_jobs j JOIN tokens t ON t.id = j.token_id
             GROUP BY t.name, j.status ORDER BY t.name, j.status",
            vec![],
        )
        .await
    }

    async fn get_job(&self, job_id: &str) -> Result<Option<RotationJob>, StoreError> {
        let job_id = job_id.to_string();
        self.driver()
            .read("reading a job", move |c| {
                Box::pin(async move { load(c, &job_id).await })
            })
            .await
    }

    async fn list_jobs(&self, q: &JobQuery<'_>) -> Result<Vec<RotationJob>, StoreError> {
        let (token, status) = (q.token.map(str::to_string), q.status.map(str::to_string));
        let (after_at, after_id) = (
            q.after.map(|(at, _)| at),
            q.after.map(|(_, id)| id.to_string()),
        );
        let limit = q.limit;
        let (by, since, until) = (q.requested_by.map(str::to_string), q.since, q.until);
        self.driver()
            .read("listing jobs", move |c| {
                Box::pin(async move {
                    let args = [
                        token.as_deref().into(),
                        status.as_deref().into(),
                        after_at.into(),
                        after_id.as_deref().into(),
                        limit.into(),
                        by.as_deref().into(),
                        since.into(),
                        until.into(),
                    ];
                    let sql = match c.dialect() {
                        Dialect::Postgres => {
                            "SELECT j.id FROM rotation_jobs j JOIN tokens t ON t.id = j.token_id
                             WHERE ($1::text IS NULL OR t.name = $1) AND ($2::text IS NULL OR j.status = $2)
                               AND ($3::timestamptz IS NULL OR (j.created_at, j.id) < ($3, $4))
                             AND ($6::text IS NULL OR j.requested_by = $6)
                             AND ($7::timestamptz IS NULL OR j.created_at >= $7)
                             AND ($8::timestamptz IS NULL OR j.created_at < $8)
                             ORDER BY j.created_at DESC, j.id DESC LIMIT $5"
                        }
                        // The single writer inserts jobs in creation order, so the rowid is that
                        // order exactly (text times compare only to the millisecond in SQL); the
                        // cursor's id marks the spot.
                        Dialect::Sqlite => {
                            "SELECT j.id FROM rotation_jobs j JOIN tokens t ON t.id = j.token_id
                             WHERE ($1 IS NULL OR t.name = $1) AND ($2 IS NULL OR j.status = $2)
                               AND ($3 IS NULL OR $4 IS NULL OR j.rowid < (SELECT rowid FROM rotation_jobs WHERE id = $4))
                               AND ($6 IS NULL OR j.requested_by = $6)
                               AND ($7 IS NULL OR julianday(j.created_at) >= julianday($7))
                               AND ($8 IS NULL OR julianday(j.created_at) < julianday($8))
                             ORDER BY j.rowid DESC LIMIT $5"
                        }
                    };
                    let ids: Vec<String> = c.all("listing jobs", sql, &args).await?;
                    let mut jobs = Vec::with_capacity(ids.len());
                    for id in ids {
                        jobs.extend(load(c, &id).await?);
                    }
                    Ok(jobs)
                })
            })
            .await
    }

    async fn claim_job(
        &self,
        owner: &str,
        lease: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<RotationJob>, StoreError> {
        let owner = owner.to_string();
        self.driver()
            .write("claiming a job", move |c| {
                Box::pin(async move {
                    let until = lease_until(lease);
                    let id: Option<String> = match c.dialect() {
                        // Replicas skip the rows another one is claiming.
                        Dialect::Postgres => {
                            c.opt(
                                "claiming a job",
                                "UPDATE rotation_jobs SET lease_owner = $2, lease_expires_at = $3
                                 WHERE id = (SELECT id FROM rotation_jobs
                                             WHERE status IN ('pending', 'running', 'waiting')
                                               AND (status <> 'waiting' OR wake_at <= $1)
                                               AND (lease_expires_at IS NULL OR lease_expires_at < $1)
                                             ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                                 RETURNING id",
                                &[now.into(), owner.as_str().into(), until.into()],
                            )
                            .await?
                        }
                        // The single writer serialises claims. The status list comes first so
                        // the index narrows the scan to unfinished jobs.
                        Dialect::Sqlite => {
                            let id: Option<String> = c
                                .opt(
                                    "finding a job to claim",
                                    "SELECT id FROM rotation_jobs
                                     WHERE status IN ('pending', 'running', 'waiting')
                                       AND (status <> 'waiting' OR julianday(wake_at) <= julianday($1))
                                       AND (lease_expires_at IS NULL OR julianday(lease_expires_at) < julianday($1))
                                     ORDER BY created_at LIMIT 1",
                                    &[now.into()],
                                )
                                .await?;
                            if let Some(id) = &id {
                                c.run(
                                    "claiming a job",
                                    "UPDATE rotation_jobs SET lease_owner = $2, lease_expires_at = $3 WHERE id = $1",
                                    &[id.as_str().into(), owner.as_str().into(), until.into()],
                                )
                                .await?;
                            }
                            id
                        }
                    };
                    match id {
                        Some(id) => load(c, &id).await,
                        None => Ok(None),
                    }
                })
            })
            .await
    }

    async fn renew_lease(
        &self,
        job_id: &str,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let n = write_one(
            self,
            "renewing a lease",
            "UPDATE rotation_jobs SET lease_expires_at = $3 WHERE id = $1 AND lease_owner = $2",
            vec![job_id.into(), owner.into(), lease_until(lease).into()],
        )
        .await?;
        Ok(n == 1)
    }

    async fn release_lease(&self, job_id: &str, owner: &str) -> Result<(), StoreError> {
        write_one(
            self,
            "releasing a lease",
            "UPDATE rotation_jobs SET lease_owner = NULL, lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2",
            vec![job_id.into(), owner.into()],
        )
        .await?;
        Ok(())
    }

    async fn transition_job(
        &self,
        job_id: &str,
        from: JobState,
        to: JobState,
        changes: &JobChanges,
        owner: Option<&str>,
        audit: &AuditDraft,
    ) -> Result<RotationJob, StoreError> {
        let keyring = audit_keyring(self.keyring())?;
        let (job_id, changes, owner, draft) = (
            job_id.to_string(),
            changes.clone(),
            owner.map(str::to_string),
            audit.clone(),
        );
        self.driver()
            .write("moving a job on", move |c| {
                Box::pin(async move {
                    crate::job_changes::apply(c, &job_id, from, to, &changes, owner.as_deref())
                        .await?;
                    audit::append(c, &keyring, &[&draft]).await?;
                    let job = load(c, &job_id).await?.expect("updated above");
                    event(c, &job_id, "job", &job).await?;
                    Ok(job)
                })
            })
            .await
    }

    async fn next_version(&self, token: &str) -> Result<i64, StoreError> {
        let v: Option<i64> = read_opt(
            self,
            "numbering a new version",
            "SELECT COALESCE(MAX(v.version), 0) + 1 FROM secret_versions v JOIN tokens t ON t.id = v.token_id WHERE t.name = $1",
            vec![token.into()],
        )
        .await?;
        Ok(v.unwrap_or(1))
    }

    async fn store_new_version(
        &self,
        job_id: &str,
        version: i64,
        sealed: &Sealed,
        fingerprint: &str,
    ) -> Result<i64, StoreError> {
        let keyring = audit_keyring(self.keyring())?;
        let (job_id, sealed, fingerprint) =
            (job_id.to_string(), sealed.clone(), fingerprint.to_string());
        self.driver()
            .write("storing the new version", move |c| {
                Box::pin(async move {
                    let row: Option<(Option<i64>, i64, String)> = c
                        .opt(
                            "reading a job",
                            "SELECT j.new_version, j.token_id, t.name FROM rotation_jobs j JOIN tokens t ON t.id = j.token_id WHERE j.id = $1",
                            &[job_id.as_str().into()],
                        )
                        .await?;
                    let (existing, token_id, token) =
                        row.ok_or_else(|| StoreError::NotFound(format!("job `{job_id}`")))?;
                    if let Some(v) = existing {
                        return Ok(v); // already stored before a crash: the same value goes on
                    }
                    let now = now_micros();
                    c.run(
                        "storing the new version",
                        "INSERT INTO secret_versions (token_id, version, label, key_id, ciphertext, fingerprint, job_id, created_at)
                         VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7)",
                        &[
                            token_id.into(),
                            version.into(),
                            sealed.key_id.as_str().into(),
                            sealed.ciphertext.as_slice().into(),
                            fingerprint.as_str().into(),
                            job_id.as_str().into(),
                            now.into(),
                        ],
                    )
                    .await?;
                    c.run(
                        "recording the new version on the job",
                        "UPDATE rotation_jobs SET new_version = $2, updated_at = $3 WHERE id = $1",
                        &[job_id.as_str().into(), version.into(), now.into()],
                    )
                    .await?;
                    let draft = AuditDraft::version_minted(&token, &job_id, version, &fingerprint);
                    audit::append(c, &keyring, &[&draft]).await?;
                    let job = load(c, &job_id).await?.expect("exists");
                    event(c, &job_id, "job", &job).await?;
                    Ok(version)
                })
            })
            .await
    }

    async fn update_job_consumers(
        &self,
        job_id: &str,
        changes: &[ConsumerChange],
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let keyring = audit_keyring(self.keyring())?;
        let (job_id, changes) = (job_id.to_string(), changes.to_vec());
        self.driver()
            .write("updating a job's consumers", move |c| {
                Box::pin(async move {
                    crate::job_changes::consumers(c, &job_id, &changes).await?;
                    let audits: Vec<&AuditDraft> =
                        changes.iter().filter_map(|c| c.audit.as_ref()).collect();
                    audit::append(c, &keyring, &audits).await?;
                    Ok(())
                })
            })
            .await
    }

    async fn last_event_seq(&self, job_id: &str) -> Result<i64, StoreError> {
        let seq: Option<i64> = read_opt(
            self,
            "reading a job's last event",
            "SELECT COALESCE(MAX(seq), 0) FROM rotation_events WHERE job_id = $1",
            vec![job_id.into()],
        )
        .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn job_events(
        &self,
        job_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<JobEvent>, StoreError> {
        crate::db::read_all(
            self,
            "reading job events",
            "SELECT seq, at, event, data FROM rotation_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            vec![Owned::from(job_id), after_seq.into(), limit.into()],
        )
        .await
    }
}
