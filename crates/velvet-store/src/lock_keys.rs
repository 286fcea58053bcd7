//! Lock keys held in the store (design §4, glossary "lock key": two writes to one lock key never
//! run at once, on any replica). The engine's per-key semaphore orders writes inside one process;
//! a [`LockKeyHold`] orders them across processes. On PostgreSQL a hold is a session advisory
//! lock on one connection kept for the purpose, so a replica that dies frees its keys the moment
//! its connection closes (no lease to wait out). SQLite serves one process, so its holds are
//! local and cost nothing.

use crate::StoreError;
use sha2::{Digest, Sha256};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// A lock key held until released or dropped (a drop releases in the background).
#[must_use = "the lock key is released when this is dropped"]
pub struct LockKeyHold {
    remote: Option<(Arc<LockSession>, Held)>,
}

impl std::fmt::Debug for LockKeyHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockKeyHold")
            .field("in_store", &self.remote.is_some())
            .finish()
    }
}

impl LockKeyHold {
    /// A hold that needs nothing outside this process.
    pub fn local() -> Self {
        Self { remote: None }
    }

    /// Releases the key now, so a replica waiting for it may go on at once.
    pub async fn release(mut self) {
        if let Some((session, held)) = self.remote.take() {
            session.unlock(held).await;
        }
    }
}

impl Drop for LockKeyHold {
    fn drop(&mut self) {
        if let Some((session, held)) = self.remote.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move { session.unlock(held).await });
                }
                // Without a runtime the process is ending, and its connection with it.
                Err(_) => session.forget(held.id),
            }
        }
    }
}

/// One advisory lock this process holds, and the connection it was taken on.
#[derive(Debug, Clone, Copy)]
struct Held {
    id: i64,
    generation: u64,
}

/// The connection every advisory lock of this process is taken on. Session locks are reentrant
/// per connection, so `held` keeps this process from taking one slot twice.
pub(crate) struct LockSession {
    options: PgConnectOptions,
    conn: tokio::sync::Mutex<(Option<PgConnection>, u64)>,
    held: Mutex<HashSet<i64>>,
}

impl LockSession {
    pub(crate) fn new(options: PgConnectOptions) -> Arc<Self> {
        Arc::new(Self {
            options,
            conn: tokio::sync::Mutex::new((None, 0)),
            held: Mutex::default(),
        })
    }

    /// Takes one of `slots` holds on `key`, or `None` while every slot is held elsewhere.
    pub(crate) async fn try_lock(
        self: &Arc<Self>,
        key: &str,
        slots: u32,
    ) -> Result<Option<LockKeyHold>, StoreError> {
        let mut guard = self.conn.lock().await;
        if guard.0.is_none() {
            let conn = PgConnection::connect_with(&self.options)
                .await
                .map_err(|e| db_error("opening the lock-key connection", e))?;
            guard.0 = Some(conn);
            guard.1 += 1;
        }
        let generation = guard.1;
        for slot in 0..slots.max(1) {
            let id = lock_id(key, slot);
            if self.held().contains(&id) {
                continue;
            }
            let conn = guard.0.as_mut().expect("connected above");
            let taken: Result<bool, _> = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(id)
                .fetch_one(conn)
                .await;
            match taken {
                Ok(true) => {
                    self.held().insert(id);
                    let held = Held { id, generation };
                    return Ok(Some(LockKeyHold {
                        remote: Some((self.clone(), held)),
                    }));
                }
                Ok(false) => {}
                Err(e) => {
                    // A broken connection took every lock of this process with it; the next
                    // try starts a new one.
                    guard.0 = None;
                    return Err(db_error("taking a lock key", e));
                }
            }
        }
        Ok(None)
    }

    async fn unlock(&self, held: Held) {
        let mut guard = self.conn.lock().await;
        self.forget(held.id);
        if guard.1 != held.generation || guard.0.is_none() {
            tracing::warn!(
                "a lock key was held on a connection that broke meanwhile; another replica may \
                 have written its target at the same time"
            );
            return;
        }
        let conn = guard.0.as_mut().expect("checked above");
        let freed: Result<bool, _> = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
            .bind(held.id)
            .fetch_one(conn)
            .await;
        if let Err(e) = freed {
            // Closing the session frees whatever it held.
            tracing::warn!(error = %e, "releasing a lock key failed; its connection is closed instead");
            guard.0 = None;
        }
    }

    fn forget(&self, id: i64) {
        self.held().remove(&id);
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.held.lock().expect("never poisoned")
    }
}

fn db_error(context: &'static str, e: sqlx::Error) -> StoreError {
    StoreError::Database {
        context,
        retryable: true,
        source: Box::new(e),
    }
}

/// The advisory lock id of `slot` of `key`: the same on every replica and every build (a std
/// hasher is neither). Two keys sharing an id would only be written one at a time.
pub(crate) fn lock_id(key: &str, slot: u32) -> i64 {
    let mut h = Sha256::new();
    h.update(b"velvet lock key\0");
    h.update(key.as_bytes());
    h.update(b"\0");
    h.update(slot.to_be_bytes());
    let d = h.finalize();
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::lock_id;

    #[test]
    fn lock_ids_are_stable_and_differ_by_key_and_slot() {
        assert_eq!(
            lock_id("heroku:app:billing", 0),
            lock_id("heroku:app:billing", 0)
        );
        assert_ne!(
            lock_id("heroku:app:billing", 0),
            lock_id("heroku:app:billing", 1)
        );
        assert_ne!(
            lock_id("heroku:app:billing", 0),
            lock_id("heroku:app:billin", 0)
        );
        // Fixed across builds: replicas of different versions must agree.
        assert_eq!(lock_id("k", 0), -6_089_600_565_584_932_426);
    }
}
