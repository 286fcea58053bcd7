//! The SQLite driver, on rusqlite: writes on one writer thread with group commit
//! (`sqlite_writer`, docs/adr/0007-sqlite-writer-thread.md), reads on a small pool of read-only
//! connections used on the calling thread, each read one snapshot (docs/adr/0008). A query's
//! body is the same async code PostgreSQL runs; here every step completes at once, so it is
//! polled to its end where it stands.

use super::{Arg, BoxFuture, Conn, DbError, DbErrorKind, Driver, Row, Value};
use crate::StoreError;
use crate::migrate::Dialect;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

pub(crate) use super::sqlite_writer::Writer;

/// A time as stored in SQLite (and as sqlx wrote it before), so stored times compare as text.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// Runs a body whose every await is a SQLite step, which never waits.
pub(crate) fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a SQLite transaction body awaited something other than SQLite"),
    }
}

/// A rusqlite connection inside a transaction the driver opened.
#[derive(Debug)]
pub(crate) struct SqliteConn {
    conn: Connection,
}

impl SqliteConn {
    pub(crate) fn new(conn: Connection) -> Self {
        Self { conn }
    }

    /// The connection itself, for what reads columns in place (the audit scan).
    pub(crate) fn raw(&self) -> &Connection {
        &self.conn
    }

    fn prepare(
        &self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> rusqlite::Result<rusqlite::CachedStatement<'_>> {
        let mut st = self.conn.prepare_cached(sql)?;
        let mut name = String::with_capacity(4);
        for (i, arg) in args.iter().enumerate() {
            name.clear();
            use std::fmt::Write as _;
            let _ = write!(name, "${}", i + 1);
            let Some(at) = st.parameter_index(&name)? else {
                continue;
            };
            match *arg {
                Arg::Int(v) => st.raw_bind_parameter(at, v)?,
                Arg::Text(v) => st.raw_bind_parameter(at, v)?,
                Arg::Blob(v) => st.raw_bind_parameter(at, v)?,
                Arg::Bool(v) => st.raw_bind_parameter(at, v.map(i64::from))?,
                Arg::Time(v) => st.raw_bind_parameter(at, v.map(ts))?,
            }
        }
        Ok(st)
    }

    fn exec_now(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, DbError> {
        let mut st = self.prepare(sql, args).map_err(db_error)?;
        st.raw_execute().map(|n| n as u64).map_err(db_error)
    }

    fn rows_now(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, DbError> {
        let mut st = self.prepare(sql, args).map_err(db_error)?;
        let width = st.column_count();
        let mut rows = st.raw_query();
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(db_error)? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(match r.get_ref(i).map_err(db_error)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Real(v),
                    ValueRef::Text(t) => Value::Text(
                        std::str::from_utf8(t)
                            .map_err(|e| DbError::decode(i, e))?
                            .to_owned(),
                    ),
                    ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                });
            }
            out.push(Row::new(values));
        }
        Ok(out)
    }
}

pub(crate) fn db_error(e: rusqlite::Error) -> DbError {
    use rusqlite::ErrorCode;
    let kind = match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::ConstraintViolation
                if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                DbErrorKind::Unique
            }
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => DbErrorKind::Retryable,
            _ => DbErrorKind::Other,
        },
        _ => DbErrorKind::Other,
    };
    DbError {
        kind,
        source: Box::new(e),
    }
}

impl Conn for SqliteConn {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn exec(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<u64, DbError>> + Send {
        std::future::ready(self.exec_now(sql, args))
    }

    fn rows(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Vec<Row>, DbError>> + Send {
        std::future::ready(self.rows_now(sql, args))
    }
}

/// Idle read connections kept; more may be open at once under load, and are closed after use.
const KEEP: usize = 8;

/// Read-only connections, each read one `BEGIN … COMMIT` snapshot on the calling thread: the
/// reads are indexed lookups of microseconds in WAL mode, where readers never wait on the writer.
#[derive(Debug)]
pub(crate) struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<SqliteConn>>,
}

impl Readers {
    pub(crate) fn new(path: &Path, busy_timeout: Duration) -> Self {
        Self {
            path: path.to_path_buf(),
            busy_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn connect(&self) -> rusqlite::Result<SqliteConn> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(SqliteConn::new(conn))
    }

    /// Runs `f` in one read transaction (one consistent snapshot) on a pooled connection.
    pub(crate) fn read<R>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut SqliteConn) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        use super::Ctx;
        let pooled = self.idle.lock().expect("never poisoned").pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect().map_err(db_error).ctx(what)?,
        };
        conn.conn
            .execute_batch("BEGIN")
            .map_err(db_error)
            .ctx(what)?;
        let out = f(&mut conn);
        // A read transaction has nothing to keep; ending it cannot lose anything.
        if conn.conn.execute_batch("COMMIT").is_ok() {
            let mut idle = self.idle.lock().expect("never poisoned");
            if idle.len() < KEEP {
                idle.push(conn);
            }
        }
        out
    }
}

/// The SQLite driver: the writer thread and the readers of one database file.
#[derive(Debug)]
pub(crate) struct SqliteDb {
    pub(crate) writer: Writer,
    pub(crate) readers: Readers,
}

impl Driver for SqliteDb {
    type Conn = SqliteConn;

    fn write<R, F>(
        &self,
        what: &'static str,
        body: F,
    ) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConn) -> BoxFuture<'c, Result<R, StoreError>>
            + Send
            + 'static,
    {
        self.writer.write(what, Box::new(body))
    }

    fn read<R, F>(
        &self,
        what: &'static str,
        body: F,
    ) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConn) -> BoxFuture<'c, Result<R, StoreError>>
            + Send
            + 'static,
    {
        std::future::ready(self.readers.read(what, move |c| now(body(c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Ctx;

    #[test]
    fn placeholders_bind_by_number_whatever_their_order_and_values_come_back_typed() {
        let mut c = SqliteConn::new(Connection::open_in_memory().unwrap());
        let t = DateTime::parse_from_rfc3339("2026-12-02T08:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut rows = now(c.rows(
            "SELECT $2, $1, $2, $3, $4, $5",
            &[
                "one".into(),
                7i64.into(),
                true.into(),
                t.into(),
                Arg::Text(None),
            ],
        ))
        .ctx("selecting")
        .unwrap();
        let r = &mut rows[0];
        assert_eq!(r.int().unwrap(), 7);
        assert_eq!(r.text().unwrap(), "one");
        assert_eq!(r.int().unwrap(), 7);
        assert!(r.bool().unwrap());
        assert_eq!(r.time().unwrap(), t);
        assert_eq!(r.opt_text().unwrap(), None);
    }

    #[test]
    fn a_unique_violation_is_told_apart() {
        let mut c = SqliteConn::new(Connection::open_in_memory().unwrap());
        now(c.exec("CREATE TABLE t (x INTEGER PRIMARY KEY)", &[])).unwrap();
        now(c.exec("INSERT INTO t VALUES ($1)", &[1i64.into()])).unwrap();
        let e = now(c.exec("INSERT INTO t VALUES ($1)", &[1i64.into()])).unwrap_err();
        assert_eq!(e.kind, DbErrorKind::Unique);
    }
}
