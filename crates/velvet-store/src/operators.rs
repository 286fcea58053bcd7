//! Operators, their backup codes, TOTP watermarks and revoke approvals: the trait and its one
//! body for both dialects.

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use velvet_core::keyring::Sealed;

/// An operator as stored: the password only as its argon2id hash, the TOTP secret sealed.
#[derive(Debug, Clone)]
pub struct OperatorRecord {
    pub name: String,
    pub role: String,
    pub password_hash: String,
    pub totp: Sealed,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// Backup codes not used yet.
    pub backup_codes_left: i64,
}

#[derive(Debug)]
pub struct NewOperator<'a> {
    pub name: &'a str,
    pub role: &'a str,
    pub password_hash: &'a str,
    pub totp: &'a Sealed,
    /// SHA-256 of each backup code.
    pub backup_code_hashes: &'a [String],
    pub created_by: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Approval {
    pub operator: String,
    pub approved_at: DateTime<Utc>,
}

#[async_trait]
pub trait OperatorStore: Send + Sync {
    /// Adds an operator with their backup codes (audited); `Conflict` if the name is taken.
    async fn create_operator(&self, op: &NewOperator<'_>) -> Result<(), StoreError>;

    async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError>;

    async fn list_operators(&self) -> Result<Vec<OperatorRecord>, StoreError>;

    /// Replaces the TOTP secret and every backup code (audited).
    async fn reset_totp(
        &self,
        name: &str,
        totp: &Sealed,
        backup_code_hashes: &[String],
        actor: &str,
    ) -> Result<(), StoreError>;

    /// Accepts TOTP time step `step` for `name` if it is past the last one accepted, moving the
    /// watermark in the same statement: of concurrent callers with one code, exactly one wins.
    async fn accept_totp_step(&self, name: &str, step: i64) -> Result<bool, StoreError>;

    /// Marks a backup code used; false if it is unknown or was used.
    async fn use_backup_code(&self, name: &str, code_hash: &str) -> Result<bool, StoreError>;

    /// Records `operator`'s approval of `job_id`'s revoke (audited; a repeat changes nothing).
    async fn approve_revoke(
        &self,
        job_id: &str,
        operator: &str,
        actor: &str,
    ) -> Result<(), StoreError>;

    async fn approvals(&self, job_id: &str) -> Result<Vec<Approval>, StoreError>;

    /// Operators whose TOTP secret is sealed under a key other than `key_id`.
    async fn operators_not_under(&self, key_id: &str) -> Result<Vec<OperatorRecord>, StoreError>;

    /// Writes a re-sealed TOTP secret if it is still under `old_key_id`; true if it changed.
    async fn reseal_totp(
        &self,
        name: &str,
        old_key_id: &str,
        sealed: &Sealed,
    ) -> Result<bool, StoreError>;
}

#[derive(sqlx::FromRow)]
struct Row {
    name: String,
    role: String,
    password_hash: String,
    totp_key_id: String,
    totp_sealed: Vec<u8>,
    created_by: String,
    created_at: DateTime<Utc>,
    disabled_at: Option<DateTime<Utc>>,
    backup_codes_left: i64,
}

impl From<Row> for OperatorRecord {
    fn from(r: Row) -> Self {
        Self {
            name: r.name,
            role: r.role,
            password_hash: r.password_hash,
            totp: Sealed {
                key_id: r.totp_key_id,
                ciphertext: r.totp_sealed,
            },
            created_by: r.created_by,
            created_at: r.created_at,
            disabled_at: r.disabled_at,
            backup_codes_left: r.backup_codes_left,
        }
    }
}

const SELECT: &str = "SELECT o.name, o.role, o.password_hash, o.totp_key_id, o.totp_sealed, o.created_by,
        o.created_at, o.disabled_at,
        (SELECT COUNT(*) FROM backup_codes b WHERE b.operator = o.name AND b.used_at IS NULL) AS backup_codes_left
     FROM operators o";
const INSERT: &str = "INSERT INTO operators (name, role, password_hash, totp_key_id, totp_sealed, created_by, created_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING";
const INSERT_CODE: &str = "INSERT INTO backup_codes (operator, code_hash) VALUES ($1, $2)";
const WATERMARK: &str = "INSERT INTO nonce_watermarks (operator, last_step) VALUES ($1, $2)
     ON CONFLICT (operator) DO UPDATE SET last_step = excluded.last_step
     WHERE nonce_watermarks.last_step < excluded.last_step";
const USE_CODE: &str = "UPDATE backup_codes SET used_at = $3
     WHERE operator = $1 AND code_hash = $2 AND used_at IS NULL";
const APPROVE: &str =
    "INSERT INTO rotation_approvals (job_id, operator, approved_at) VALUES ($1, $2, $3)
     ON CONFLICT (job_id, operator) DO NOTHING";
const APPROVALS: &str = "SELECT operator, approved_at FROM rotation_approvals WHERE job_id = $1 ORDER BY approved_at, operator";

#[derive(sqlx::FromRow)]
struct ApprovalRow {
    operator: String,
    approved_at: DateTime<Utc>,
}

macro_rules! impl_operator_store {
    ($store:ty, $reader:ident, $writer:ident) => {
        #[async_trait]
        impl OperatorStore for $store {
            async fn create_operator(&self, op: &NewOperator<'_>) -> Result<(), StoreError> {
                use crate::Context;
                let mut tx = self.begin().await?;
                self.audit_in(
                    &mut tx,
                    &velvet_core::audit::AuditDraft::operator_added(
                        op.created_by,
                        op.name,
                        op.role,
                    ),
                )
                .await?;
                let added = sqlx::query(INSERT)
                    .bind(op.name)
                    .bind(op.role)
                    .bind(op.password_hash)
                    .bind(&op.totp.key_id)
                    .bind(&op.totp.ciphertext)
                    .bind(op.created_by)
                    .bind(velvet_core::audit::now_micros())
                    .execute(&mut *tx)
                    .await
                    .ctx("adding an operator")?;
                if added.rows_affected() == 0 {
                    return Err(StoreError::Conflict(format!(
                        "operator `{}` already exists",
                        op.name
                    )));
                }
                for h in op.backup_code_hashes {
                    sqlx::query(INSERT_CODE)
                        .bind(op.name)
                        .bind(h)
                        .execute(&mut *tx)
                        .await
                        .ctx("storing a backup code")?;
                }
                tx.commit().await.ctx("committing an operator")
            }

            async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
                use crate::Context;
                let row: Option<Row> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE o.name = $1")))
                        .bind(name)
                        .fetch_optional(&self.$reader)
                        .await
                        .ctx("reading an operator")?;
                Ok(row.map(Into::into))
            }

            async fn list_operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
                use crate::Context;
                let rows: Vec<Row> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY o.name")))
                        .fetch_all(&self.$reader)
                        .await
                        .ctx("listing operators")?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn reset_totp(
                &self,
                name: &str,
                totp: &Sealed,
                backup_code_hashes: &[String],
                actor: &str,
            ) -> Result<(), StoreError> {
                use crate::Context;
                let mut tx = self.begin().await?;
                self.audit_in(
                    &mut tx,
                    &velvet_core::audit::AuditDraft::operator_totp_reset(actor, name),
                )
                .await?;
                let changed = sqlx::query(
                    "UPDATE operators SET totp_key_id = $2, totp_sealed = $3 WHERE name = $1",
                )
                .bind(name)
                .bind(&totp.key_id)
                .bind(&totp.ciphertext)
                .execute(&mut *tx)
                .await
                .ctx("resetting an operator's TOTP")?;
                if changed.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("operator `{name}`")));
                }
                sqlx::query("DELETE FROM backup_codes WHERE operator = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .ctx("dropping old backup codes")?;
                for h in backup_code_hashes {
                    sqlx::query(INSERT_CODE)
                        .bind(name)
                        .bind(h)
                        .execute(&mut *tx)
                        .await
                        .ctx("storing a backup code")?;
                }
                tx.commit().await.ctx("committing a TOTP reset")
            }

            async fn accept_totp_step(&self, name: &str, step: i64) -> Result<bool, StoreError> {
                use crate::Context;
                let r = sqlx::query(WATERMARK)
                    .bind(name)
                    .bind(step)
                    .execute(&self.$writer)
                    .await
                    .ctx("advancing a TOTP watermark")?;
                Ok(r.rows_affected() == 1)
            }

            async fn use_backup_code(
                &self,
                name: &str,
                code_hash: &str,
            ) -> Result<bool, StoreError> {
                use crate::Context;
                let r = sqlx::query(USE_CODE)
                    .bind(name)
                    .bind(code_hash)
                    .bind(velvet_core::audit::now_micros())
                    .execute(&self.$writer)
                    .await
                    .ctx("using a backup code")?;
                Ok(r.rows_affected() == 1)
            }

            async fn approve_revoke(
                &self,
                job_id: &str,
                operator: &str,
                actor: &str,
            ) -> Result<(), StoreError> {
                use crate::Context;
                let mut tx = self.begin().await?;
                self.audit_in(
                    &mut tx,
                    &velvet_core::audit::AuditDraft::revoke_approved(actor, job_id, operator),
                )
                .await?;
                sqlx::query(APPROVE)
                    .bind(job_id)
                    .bind(operator)
                    .bind(velvet_core::audit::now_micros())
                    .execute(&mut *tx)
                    .await
                    .ctx("recording an approval")?;
                tx.commit().await.ctx("committing an approval")
            }

            async fn operators_not_under(
                &self,
                key_id: &str,
            ) -> Result<Vec<OperatorRecord>, StoreError> {
                use crate::Context;
                let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{SELECT} WHERE o.totp_key_id <> $1 ORDER BY o.name"
                )))
                .bind(key_id)
                .fetch_all(&self.$reader)
                .await
                .ctx("listing operators to re-seal")?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn reseal_totp(
                &self,
                name: &str,
                old_key_id: &str,
                sealed: &Sealed,
            ) -> Result<bool, StoreError> {
                use crate::Context;
                let r = sqlx::query(
                    "UPDATE operators SET totp_key_id = $3, totp_sealed = $4
                     WHERE name = $1 AND totp_key_id = $2",
                )
                .bind(name)
                .bind(old_key_id)
                .bind(&sealed.key_id)
                .bind(&sealed.ciphertext)
                .execute(&self.$writer)
                .await
                .ctx("re-sealing a TOTP secret")?;
                Ok(r.rows_affected() == 1)
            }

            async fn approvals(&self, job_id: &str) -> Result<Vec<Approval>, StoreError> {
                use crate::Context;
                let rows: Vec<ApprovalRow> = sqlx::query_as(APPROVALS)
                    .bind(job_id)
                    .fetch_all(&self.$reader)
                    .await
                    .ctx("listing approvals")?;
                Ok(rows
                    .into_iter()
                    .map(|r| Approval {
                        operator: r.operator,
                        approved_at: r.approved_at,
                    })
                    .collect())
            }
        }
    };
}

impl_operator_store!(crate::sqlite::SqliteStore, reader, writer);
impl_operator_store!(crate::postgres::PostgresStore, pool, pool);
