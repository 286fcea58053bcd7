//! The SQLite write path of rotation jobs: one thread owns a rusqlite connection and runs each
//! request as a savepoint of a shared `BEGIN IMMEDIATE` transaction. Requests that queue while
//! one batch commits share the next commit (group commit), and a request costs one hop between
//! threads instead of one per statement as through sqlx (docs/adr/0007-sqlite-writer-thread.md).
//! A caller hears back only after the commit that holds its changes.

use super::Body;
use super::sqlite::{SqliteConn, now};
use crate::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc;

/// Tells a caller how its request ended once the batch commits (`None`) or fails (`Some`).
type Done = Box<dyn FnOnce(Option<&str>) + Send>;
/// Runs a request on the writer connection (or refuses it with the error that stopped the
/// batch from starting); says whether it succeeded and how to answer the caller.
type Work = Box<dyn FnOnce(Result<&mut SqliteConn, &str>) -> (bool, Done) + Send>;

/// Requests per commit at most, so one commit never waits on an unbounded batch.
const MAX_BATCH: usize = 256;

#[derive(Debug)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Work>,
}

impl Writer {
    pub(crate) fn open(path: &Path, busy_timeout: std::time::Duration) -> Result<Self, String> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| e.to_string())?;
        conn.busy_timeout(busy_timeout).map_err(|e| e.to_string())?;
        // WAL lets readers run beside the writer; it is a property of the file, set once here.
        // Reading the schema makes a file that is not a database fail now, with its name.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;
             SELECT count(*) FROM sqlite_master;",
        )
        .map_err(|e| e.to_string())?;
        conn.set_prepared_statement_cache_capacity(64);
        let (queue, requests) = mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("velvet-sqlite-writer".into())
            .spawn(move || serve(SqliteConn::new(conn), requests))
            .map_err(|e| e.to_string())?;
        Ok(Self { queue })
    }

    /// Runs `body` in the writer's transaction and answers once it is committed.
    pub(crate) async fn write<R: Send + 'static>(
        &self,
        what: &'static str,
        body: Body<SqliteConn, R>,
    ) -> Result<R, StoreError> {
        self.call(what, move |c| now(body(c))).await
    }

    /// Runs `f` in the writer's transaction and answers once it is committed.
    pub(crate) async fn call<R, F>(&self, what: &'static str, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut SqliteConn) -> Result<R, StoreError> + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let work: Work = Box::new(move |conn| {
            let out = match conn {
                Ok(conn) => std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
                    .unwrap_or_else(|_| Err(stopped(what, "the write panicked"))),
                Err(e) => Err(stopped(what, e)),
            };
            let ok = out.is_ok();
            let done: Done = Box::new(move |failed| {
                let _ = answer.send(match failed {
                    None => out,
                    Some(e) => Err(stopped(what, e)),
                });
            });
            (ok, done)
        });
        self.queue
            .send(work)
            .map_err(|_| stopped(what, "the SQLite writer has stopped"))?;
        answered
            .await
            .map_err(|_| stopped(what, "the SQLite writer has stopped"))?
    }
}

fn stopped(what: &'static str, why: &str) -> StoreError {
    StoreError::Unavailable(format!("{what}: {why}"))
}

fn serve(mut conn: SqliteConn, requests: mpsc::Receiver<Work>) {
    while let Ok(first) = requests.recv() {
        let mut batch = VecDeque::from([first]);
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(w) => batch.push_back(w),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch);
    }
}

fn run_batch(c: &mut SqliteConn, mut batch: VecDeque<Work>) {
    while !batch.is_empty() {
        if let Err(e) = c.raw().execute_batch("BEGIN IMMEDIATE") {
            let why = format!("starting a write transaction: {e}");
            for w in batch.drain(..) {
                let (_, done) = w(Err(&why));
                done(None);
            }
            return;
        }
        let mut dones = Vec::with_capacity(batch.len());
        let mut lost = None;
        while let Some(w) = batch.pop_front() {
            if let Err(e) = c.raw().execute_batch("SAVEPOINT request") {
                let why = format!("opening a savepoint: {e}");
                let (_, done) = w(Err(&why));
                done(None);
                lost = Some(why);
                break;
            }
            let (ok, done) = w(Ok(c));
            dones.push(done);
            // An I/O or full-disk error makes SQLite roll the whole transaction back: every
            // request of it so far is lost, and the rest start again in a new one.
            if c.raw().is_autocommit() {
                lost = Some("SQLite rolled the transaction back".to_string());
                break;
            }
            let end = if ok {
                "RELEASE request"
            } else {
                "ROLLBACK TO request; RELEASE request"
            };
            if let Err(e) = c.raw().execute_batch(end) {
                lost = Some(format!("closing a savepoint: {e}"));
                break;
            }
        }
        let failed = match lost {
            Some(why) => Some(why),
            None => c
                .raw()
                .execute_batch("COMMIT")
                .err()
                .map(|e| format!("committing: {e}")),
        };
        if failed.is_some() && !c.raw().is_autocommit() {
            let _ = c.raw().execute_batch("ROLLBACK");
        }
        for done in dones {
            done(failed.as_deref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;

    fn writer() -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER PRIMARY KEY);")
            .unwrap();
        let w = Writer::open(&path, std::time::Duration::from_secs(1)).unwrap();
        (dir, w)
    }

    fn insert(x: i64) -> impl FnOnce(&mut SqliteConn) -> Result<(), StoreError> + Send + 'static {
        move |c| {
            c.raw()
                .execute("INSERT INTO t (x) VALUES (?1)", [x])
                .ctx("inserting")
                .map(drop)
        }
    }

    fn rows(dir: &tempfile::TempDir) -> Vec<i64> {
        let c = Connection::open(dir.path().join("w.db")).unwrap();
        let mut st = c.prepare("SELECT x FROM t ORDER BY x").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[tokio::test]
    async fn a_failed_or_panicking_request_leaves_the_others_of_its_batch_committed() {
        let (dir, w) = writer();
        w.call("seed", insert(1)).await.unwrap();
        // Queued together, these share one transaction (and most likely one commit).
        let (a, dup, boom, b) = tokio::join!(
            w.call("a", insert(2)),
            w.call("duplicate", |c| {
                c.raw()
                    .execute("INSERT INTO t (x) VALUES (3)", [])
                    .ctx("x")?;
                c.raw()
                    .execute("INSERT INTO t (x) VALUES (1)", [])
                    .ctx("x")
                    .map(drop)
            }),
            w.call("boom", |c: &mut SqliteConn| -> Result<(), StoreError> {
                c.raw()
                    .execute("INSERT INTO t (x) VALUES (4)", [])
                    .ctx("x")?;
                panic!("a bug in a request")
            }),
            w.call("b", insert(5)),
        );
        a.unwrap();
        b.unwrap();
        assert!(dup.is_err(), "the unique key refuses the second 1");
        let boom = boom.unwrap_err().to_string();
        assert!(boom.contains("panicked"), "{boom}");
        // The failed requests left nothing behind, not even their first statements.
        assert_eq!(rows(&dir), vec![1, 2, 5]);
    }

    #[tokio::test]
    async fn an_answer_comes_only_after_its_commit() {
        let (dir, w) = writer();
        for x in 0..20 {
            w.call("insert", insert(x)).await.unwrap();
            // Another connection sees the row as soon as the call returns.
            assert_eq!(rows(&dir).len() as i64, x + 1);
        }
    }
}
