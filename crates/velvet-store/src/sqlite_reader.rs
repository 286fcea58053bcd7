//! Hot SQLite reads (a service token by hash, a token's whole view) on rusqlite connections
//! kept in a small pool and run on the calling thread. Each is a few indexed point lookups that
//! take microseconds in WAL mode, where readers never wait on the writer; through sqlx every
//! statement was a hop to a driver thread and back, which cost more than the lookup itself
//! (docs/adr/0008-hot-reads-on-rusqlite.md).

use crate::StoreError;
use crate::rows::{ConsumerRow, TokenRow, VersionRow};
use crate::sqlite_jobs::{required_time, time_at};
use rusqlite::{Connection, OptionalExtension};

use crate::TokenView;

pub(crate) fn token_view(
    conn: &Connection,
    name: &str,
) -> rusqlite::Result<Option<Result<TokenView, StoreError>>> {
    let token = conn
        .prepare_cached(
            "SELECT t.id, t.name, t.description, t.tags, t.source_kind, t.status, t.spec,
                t.last_rotated_at, t.next_rotation_at, t.created_at, t.updated_at,
                (SELECT v.version FROM secret_versions v WHERE v.token_id = t.id AND v.label = 'current'),
                (SELECT COUNT(*) FROM consumers c WHERE c.token_id = t.id AND c.status = 'active'),
                (SELECT j.id FROM rotation_jobs j WHERE j.token_id = t.id
                   AND j.status NOT IN ('succeeded', 'aborted', 'rolled_back'))
             FROM tokens t WHERE t.name = ?1",
        )?
        .query_row([name], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                TokenRow {
                    name: r.get(1)?,
                    description: r.get(2)?,
                    tags: r.get(3)?,
                    source_kind: r.get(4)?,
                    status: r.get(5)?,
                    spec: r.get(6)?,
                    last_rotated_at: time_at(r, 7)?,
                    next_rotation_at: time_at(r, 8)?,
                    created_at: required_time(r, 9)?,
                    updated_at: required_time(r, 10)?,
                    current_version: r.get(11)?,
                    consumer_count: r.get(12)?,
                    active_job_id: r.get(13)?,
                },
            ))
        })
        .optional()?;
    let Some((id, token)) = token else {
        return Ok(None);
    };
    let consumers: Vec<ConsumerRow> = conn
        .prepare_cached(
            "SELECT name, kind, lock_key, spec FROM consumers
             WHERE token_id = ?1 AND status = 'active' ORDER BY id",
        )?
        .query_map([id], |r| {
            Ok(ConsumerRow {
                name: r.get(0)?,
                kind: r.get(1)?,
                lock_key: r.get(2)?,
                spec: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let versions: Vec<VersionRow> = conn
        .prepare_cached(
            "SELECT version, label, fingerprint, created_at, activated_at, revoked_at
             FROM secret_versions WHERE token_id = ?1 ORDER BY version DESC",
        )?
        .query_map([id], |r| {
            Ok(VersionRow {
                version: r.get(0)?,
                label: r.get(1)?,
                fingerprint: r.get(2)?,
                created_at: required_time(r, 3)?,
                activated_at: time_at(r, 4)?,
                revoked_at: time_at(r, 5)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let view = || -> Result<TokenView, StoreError> {
        Ok(TokenView {
            token: token.try_into()?,
            consumers: consumers
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            versions: versions
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
        })
    };
    Ok(Some(view()))
}
