//! The PostgreSQL driver, on sqlx: a write runs in one transaction on the pool; a read runs its
//! statements on the pool directly (each a consistent statement; the reads that must agree are
//! single statements or tolerate a rotation between them).

use super::{Arg, BoxFuture, Conn, DbError, DbErrorKind, Driver, Row, Value};
use crate::StoreError;
use crate::migrate::Dialect;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::query::Query;
use sqlx::{
    AssertSqlSafe, Column as _, Postgres, Row as _, Transaction, TypeInfo as _, ValueRef as _,
};
use std::future::Future;

/// A transaction, or the pool for reads.
pub(crate) enum PgConn {
    Tx(Transaction<'static, Postgres>),
    Pool(PgPool),
}

fn bind<'q>(sql: &'q str, args: &[Arg<'_>]) -> Query<'q, Postgres, PgArguments> {
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for arg in args {
        q = match *arg {
            Arg::Int(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::Blob(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Time(v) => q.bind(v),
        };
    }
    q
}

pub(crate) fn db_error(e: sqlx::Error) -> DbError {
    let kind = match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => DbErrorKind::Unique,
        sqlx::Error::Database(d) => match d.code().as_deref() {
            Some(c)
                if c.starts_with("08")
                    || c.starts_with("57P0")
                    || c.starts_with("40")
                    || c == "53300" =>
            {
                DbErrorKind::Retryable
            }
            _ => DbErrorKind::Other,
        },
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            DbErrorKind::Retryable
        }
        _ => DbErrorKind::Other,
    };
    DbError {
        kind,
        source: Box::new(e),
    }
}

fn decode(row: &PgRow) -> Result<Row, DbError> {
    let fail = |i: usize, e: sqlx::Error| DbError::decode(i, e);
    let mut values = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        if row.try_get_raw(i).map_err(|e| fail(i, e))?.is_null() {
            values.push(Value::Null);
            continue;
        }
        let v = match col.type_info().name() {
            "INT8" => Value::Int(row.try_get::<i64, _>(i).map_err(|e| fail(i, e))?),
            "INT4" => Value::Int(row.try_get::<i32, _>(i).map_err(|e| fail(i, e))?.into()),
            "INT2" => Value::Int(row.try_get::<i16, _>(i).map_err(|e| fail(i, e))?.into()),
            "BOOL" => Value::Bool(row.try_get(i).map_err(|e| fail(i, e))?),
            "FLOAT8" => Value::Real(row.try_get(i).map_err(|e| fail(i, e))?),
            "TIMESTAMPTZ" => {
                Value::Time(row.try_get::<DateTime<Utc>, _>(i).map_err(|e| fail(i, e))?)
            }
            "BYTEA" => Value::Blob(row.try_get(i).map_err(|e| fail(i, e))?),
            "VOID" => Value::Null,
            _ => Value::Text(row.try_get(i).map_err(|e| fail(i, e))?),
        };
        values.push(v);
    }
    Ok(Row::new(values))
}

impl Conn for PgConn {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn exec(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<u64, DbError>> + Send {
        let q = bind(sql, args);
        async move {
            let done = match self {
                PgConn::Tx(tx) => q.execute(&mut **tx).await,
                PgConn::Pool(pool) => q.execute(&*pool).await,
            };
            done.map(|r| r.rows_affected()).map_err(db_error)
        }
    }

    fn rows(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Vec<Row>, DbError>> + Send {
        let q = bind(sql, args);
        async move {
            let rows = match self {
                PgConn::Tx(tx) => q.fetch_all(&mut **tx).await,
                PgConn::Pool(pool) => q.fetch_all(&*pool).await,
            }
            .map_err(db_error)?;
            rows.iter().map(decode).collect()
        }
    }
}

/// The PostgreSQL driver: one pool.
#[derive(Debug, Clone)]
pub(crate) struct PgDb {
    pub(crate) pool: PgPool,
}

impl Driver for PgDb {
    type Conn = PgConn;

    fn write<R, F>(
        &self,
        what: &'static str,
        body: F,
    ) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConn) -> BoxFuture<'c, Result<R, StoreError>> + Send + 'static,
    {
        use super::Ctx;
        async move {
            let tx = self.pool.begin().await.map_err(db_error).ctx(what)?;
            let mut conn = PgConn::Tx(tx);
            let out = body(&mut conn).await?;
            let PgConn::Tx(tx) = conn else {
                unreachable!("a write body keeps its transaction")
            };
            tx.commit().await.map_err(db_error).ctx(what)?;
            Ok(out)
        }
    }

    fn read<R, F>(
        &self,
        _what: &'static str,
        body: F,
    ) -> impl Future<Output = Result<R, StoreError>> + Send
    where
        R: Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConn) -> BoxFuture<'c, Result<R, StoreError>> + Send + 'static,
    {
        let mut conn = PgConn::Pool(self.pool.clone());
        async move { body(&mut conn).await }
    }
}
