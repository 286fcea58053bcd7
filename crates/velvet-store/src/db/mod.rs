//! The two database drivers behind one small interface, so each query is written once.
//!
//! A query is SQL text with `$1`-style placeholders (both dialects read them), typed [`Arg`]s
//! and [`Row`]s of driver-neutral [`Value`]s. A [`Driver`] runs a closure in one write
//! transaction or one read snapshot on a [`Conn`]; the table-group modules (`flags`, `auth`,
//! `operators`, …) hold the SQL and the row mapping, once. What truly differs per dialect
//! (claims, locks, migrations, the audit scan) asks [`Conn::dialect`] in that one place
//! (docs/adr/0011-one-store.md).

pub(crate) mod postgres;
pub(crate) mod sqlite;
mod sqlite_writer;

use crate::StoreError;
use crate::migrate::Dialect;
use chrono::{DateTime, Utc};
use std::future::Future;
use std::sync::Arc;
use velvet_core::keyring::Keyring;

/// A bound parameter. Nulls are typed, so PostgreSQL knows each placeholder's type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
    Blob(Option<&'a [u8]>),
    Bool(Option<bool>),
    Time(Option<DateTime<Utc>>),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}
impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Some(v))
    }
}
impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::Text(v)
    }
}
impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(Some(v))
    }
}
impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Arg::Text(v.as_deref())
    }
}
impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Blob(Some(v))
    }
}
impl<'a> From<&'a Vec<u8>> for Arg<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Arg::Blob(Some(v))
    }
}
impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Bool(Some(v))
    }
}
impl From<DateTime<Utc>> for Arg<'_> {
    fn from(v: DateTime<Utc>) -> Self {
        Arg::Time(Some(v))
    }
}
impl From<Option<DateTime<Utc>>> for Arg<'_> {
    fn from(v: Option<DateTime<Utc>>) -> Self {
        Arg::Time(v)
    }
}

/// A column's value as read, whatever the driver.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Bool(bool),
    Time(DateTime<Utc>),
}

/// Why a statement failed, without the driver's type: what callers decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DbErrorKind {
    /// A unique index refused the row.
    Unique,
    /// Busy, a lost connection, a serialization failure: trying again may succeed.
    Retryable,
    Other,
}

#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub(crate) struct DbError {
    pub kind: DbErrorKind,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl DbError {
    pub(crate) fn decode(column: usize, what: impl std::fmt::Display) -> Self {
        Self {
            kind: DbErrorKind::Other,
            source: format!("column {column}: {what}").into(),
        }
    }
}

/// Attaches what the store was doing to a database error.
pub(crate) trait Ctx<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Ctx<T> for Result<T, DbError> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Database {
            context,
            retryable: e.kind == DbErrorKind::Retryable,
            source: e.source,
        })
    }
}

/// One result row, read left to right: each getter takes the next column.
#[derive(Debug)]
pub(crate) struct Row {
    values: std::vec::IntoIter<Value>,
    at: usize,
}

impl Row {
    pub(crate) fn new(values: Vec<Value>) -> Self {
        Self {
            values: values.into_iter(),
            at: 0,
        }
    }

    fn next(&mut self) -> Result<Value, DbError> {
        self.at += 1;
        self.values
            .next()
            .ok_or_else(|| DbError::decode(self.at - 1, "the query returned fewer columns"))
    }

    fn wrong(&self, want: &str, got: &Value) -> DbError {
        DbError::decode(self.at - 1, format!("expected {want}, found {got:?}"))
    }

    pub(crate) fn opt_int(&mut self) -> Result<Option<i64>, DbError> {
        match self.next()? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(v)),
            Value::Bool(b) => Ok(Some(i64::from(b))),
            v => Err(self.wrong("an integer", &v)),
        }
    }

    pub(crate) fn int(&mut self) -> Result<i64, DbError> {
        self.opt_int()?
            .ok_or_else(|| self.wrong("an integer", &Value::Null))
    }

    pub(crate) fn opt_text(&mut self) -> Result<Option<String>, DbError> {
        match self.next()? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s)),
            v => Err(self.wrong("text", &v)),
        }
    }

    pub(crate) fn text(&mut self) -> Result<String, DbError> {
        self.opt_text()?
            .ok_or_else(|| self.wrong("text", &Value::Null))
    }

    pub(crate) fn blob(&mut self) -> Result<Vec<u8>, DbError> {
        match self.next()? {
            Value::Blob(b) => Ok(b),
            Value::Text(s) => Ok(s.into_bytes()),
            v => Err(self.wrong("bytes", &v)),
        }
    }

    pub(crate) fn bool(&mut self) -> Result<bool, DbError> {
        match self.next()? {
            Value::Bool(b) => Ok(b),
            Value::Int(i) => Ok(i != 0),
            v => Err(self.wrong("a boolean", &v)),
        }
    }

    /// SQLite keeps times as RFC 3339 text; PostgreSQL as `timestamptz`.
    pub(crate) fn opt_time(&mut self) -> Result<Option<DateTime<Utc>>, DbError> {
        match self.next()? {
            Value::Null => Ok(None),
            Value::Time(t) => Ok(Some(t)),
            Value::Text(s) => DateTime::parse_from_rfc3339(&s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|e| DbError::decode(self.at - 1, format!("time `{s}`: {e}"))),
            v => Err(self.wrong("a time", &v)),
        }
    }

    pub(crate) fn time(&mut self) -> Result<DateTime<Utc>, DbError> {
        self.opt_time()?
            .ok_or_else(|| self.wrong("a time", &Value::Null))
    }
}

/// A type read from one row.
pub(crate) trait FromRow: Sized + Send {
    fn from_row(row: &mut Row) -> Result<Self, DbError>;
}

impl FromRow for i64 {
    fn from_row(row: &mut Row) -> Result<Self, DbError> {
        row.int()
    }
}
impl FromRow for Option<String> {
    fn from_row(row: &mut Row) -> Result<Self, DbError> {
        row.opt_text()
    }
}
impl FromRow for Option<i64> {
    fn from_row(row: &mut Row) -> Result<Self, DbError> {
        row.opt_int()
    }
}
impl FromRow for String {
    fn from_row(row: &mut Row) -> Result<Self, DbError> {
        row.text()
    }
}
impl FromRow for (i64, String) {
    fn from_row(row: &mut Row) -> Result<Self, DbError> {
        Ok((row.int()?, row.text()?))
    }
}
impl FromRow for (String, String) {
    fn from_row(row: &mut Row) -> Result<Self, DbError> {
        Ok((row.text()?, row.text()?))
    }
}
impl FromRow for (String, String, i64) {
    fn from_row(row: &mut Row) -> Result<Self, DbError> {
        Ok((row.text()?, row.text()?, row.int()?))
    }
}
impl FromRow for (String, i64) {
    fn from_row(row: &mut Row) -> Result<Self, DbError> {
        Ok((row.text()?, row.int()?))
    }
}

/// A connection inside one transaction (or read snapshot).
pub(crate) trait Conn: Send {
    fn dialect(&self) -> Dialect;

    /// Runs a statement; how many rows it changed.
    fn exec(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<u64, DbError>> + Send;

    /// Runs a query; its rows.
    fn rows(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Vec<Row>, DbError>> + Send;

    /// A lock held until the transaction ends, across replicas on PostgreSQL; SQLite's single
    /// writer already serialises every write transaction.
    fn xact_lock(&mut self, key: i64) -> impl Future<Output = Result<(), DbError>> + Send {
        async move {
            if self.dialect() == Dialect::Postgres {
                self.rows("SELECT pg_advisory_xact_lock($1)", &[key.into()])
                    .await?;
            }
            Ok(())
        }
    }

    fn run(
        &mut self,
        what: &'static str,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        async move { self.exec(sql, args).await.ctx(what) }
    }

    fn all<T: FromRow>(
        &mut self,
        what: &'static str,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Vec<T>, StoreError>> + Send {
        async move {
            let rows = self.rows(sql, args).await.ctx(what)?;
            rows.into_iter()
                .map(|mut r| T::from_row(&mut r))
                .collect::<Result<_, _>>()
                .ctx(what)
        }
    }

    fn opt<T: FromRow>(
        &mut self,
        what: &'static str,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Option<T>, StoreError>> + Send {
        async move {
            let mut rows = self.rows(sql, args).await.ctx(what)?;
            match rows.first_mut() {
                None => Ok(None),
                Some(r) => T::from_row(r).map(Some).ctx(what),
            }
        }
    }

    fn one<T: FromRow>(
        &mut self,
        what: &'static str,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<T, StoreError>> + Send {
        async move {
            self.opt(what, sql, args)
                .await?
                .ok_or_else(|| StoreError::Database {
                    context: what,
                    retryable: false,
                    source: "the query returned no row".into(),
                })
        }
    }
}

/// A boxed future, as a transaction body returns.
pub(crate) type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A closure run on a connection: the body of one transaction.
pub(crate) type Body<C, R> =
    Box<dyn for<'c> FnOnce(&'c mut C) -> BoxFuture<'c, Result<R, StoreError>> + Send>;

/// Runs transactions: each write commits only if its body succeeds; a read sees one snapshot.
/// A body is `move |c| Box::pin(async move { … })` and owns what it uses, since SQLite runs it
/// on another thread.
pub(crate) trait Driver: Send + Sync + std::fmt::Debug + 'static {
    type Conn: Conn;

    fn write<R, F>(
        &self,
        what: &'static str,
        body: F,
    ) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: for<'c> FnOnce(&'c mut Self::Conn) -> BoxFuture<'c, Result<R, StoreError>>
            + Send
            + 'static;

    fn read<R, F>(
        &self,
        what: &'static str,
        body: F,
    ) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: for<'c> FnOnce(&'c mut Self::Conn) -> BoxFuture<'c, Result<R, StoreError>>
            + Send
            + 'static;
}

/// What the table groups need of a store: its driver and the keyring that signs audit records.
pub(crate) trait Backend: Send + Sync {
    type Driver: Driver;
    fn driver(&self) -> &Self::Driver;
    fn keyring(&self) -> Option<&Arc<Keyring>>;
}

/// The keyring for an audited write, or why the write is refused (I6).
pub(crate) fn audit_keyring(k: Option<&Arc<Keyring>>) -> Result<Arc<Keyring>, StoreError> {
    k.cloned().ok_or_else(|| {
        StoreError::AuditUnavailable("the store was opened without a keyring".into())
    })
}

/// An owned parameter, for one-statement calls whose body outlives the caller's borrows.
#[derive(Debug, Clone)]
pub(crate) enum Owned {
    Text(Option<String>),
    Int(i64),
    Blob(Vec<u8>),
    Time(DateTime<Utc>),
}

impl Owned {
    fn arg(&self) -> Arg<'_> {
        match self {
            Owned::Text(s) => Arg::Text(s.as_deref()),
            Owned::Int(i) => (*i).into(),
            Owned::Blob(b) => b.into(),
            Owned::Time(t) => (*t).into(),
        }
    }
}

impl From<&str> for Owned {
    fn from(v: &str) -> Self {
        Owned::Text(Some(v.to_owned()))
    }
}
impl From<Option<&str>> for Owned {
    fn from(v: Option<&str>) -> Self {
        Owned::Text(v.map(str::to_owned))
    }
}
impl From<i64> for Owned {
    fn from(v: i64) -> Self {
        Owned::Int(v)
    }
}
impl From<DateTime<Utc>> for Owned {
    fn from(v: DateTime<Utc>) -> Self {
        Owned::Time(v)
    }
}

/// One query's rows, in one read.
pub(crate) async fn read_all<B: Backend, T: FromRow + 'static>(
    b: &B,
    what: &'static str,
    sql: &'static str,
    args: Vec<Owned>,
) -> Result<Vec<T>, StoreError> {
    b.driver()
        .read(what, move |c| {
            Box::pin(async move {
                let args: Vec<_> = args.iter().map(Owned::arg).collect();
                c.all(what, sql, &args).await
            })
        })
        .await
}

/// One query's first row, if any, in one read.
pub(crate) async fn read_opt<B: Backend, T: FromRow + 'static>(
    b: &B,
    what: &'static str,
    sql: &'static str,
    args: Vec<Owned>,
) -> Result<Option<T>, StoreError> {
    b.driver()
        .read(what, move |c| {
            Box::pin(async move {
                let args: Vec<_> = args.iter().map(Owned::arg).collect();
                c.opt(what, sql, &args).await
            })
        })
        .await
}

/// One statement in its own write transaction; how many rows it changed.
pub(crate) async fn write_one<B: Backend>(
    b: &B,
    what: &'static str,
    sql: &'static str,
    args: Vec<Owned>,
) -> Result<u64, StoreError> {
    b.driver()
        .write(what, move |c| {
            Box::pin(async move {
                let args: Vec<_> = args.iter().map(Owned::arg).collect();
                c.run(what, sql, &args).await
            })
        })
        .await
}
