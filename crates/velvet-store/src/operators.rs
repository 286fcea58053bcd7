//! Operators, their backup codes, TOTP watermarks and revoke approvals: the trait and its one
//! body for both dialects.

use crate::StoreError;
use crate::audit;
use crate::db::{
    Backend, Conn, DbError, Driver, FromRow, Owned, Row, audit_keyring, read_all, read_opt,
    write_one,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use velvet_core::audit::{AuditDraft, now_micros};
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

/// One operator's approval of a job's revoke, as the job object shows it.
pub use velvet_core::job_view::ApprovalView as Approval;

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

impl FromRow for OperatorRecord {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(OperatorRecord {
            name: r.text()?,
            role: r.text()?,
            password_hash: r.text()?,
            totp: Sealed {
                key_id: r.text()?,
                ciphertext: r.blob()?,
            },
            created_by: r.text()?,
            created_at: r.time()?,
            disabled_at: r.opt_time()?,
            backup_codes_left: r.int()?,
        })
    }
}

impl FromRow for Approval {
    fn from_row(r: &mut Row) -> Result<Self, DbError> {
        Ok(Approval {
            operator: r.text()?,
            approved_at: r.time()?,
        })
    }
}

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

const BY_NAME: &str = "SELECT o.name, o.role, o.password_hash, o.totp_key_id, o.totp_sealed, o.created_by,
        o.created_at, o.disabled_at,
        (SELECT COUNT(*) FROM backup_codes b WHERE b.operator = o.name AND b.used_at IS NULL) AS backup_codes_left
     FROM operators o WHERE o.name = $1";
const ALL: &str = "SELECT o.name, o.role, o.password_hash, o.totp_key_id, o.totp_sealed, o.created_by,
        o.created_at, o.disabled_at,
        (SELECT COUNT(*) FROM backup_codes b WHERE b.operator = o.name AND b.used_at IS NULL) AS backup_codes_left
     FROM operators o ORDER BY o.name";
const NOT_UNDER: &str = "SELECT o.name, o.role, o.password_hash, o.totp_key_id, o.totp_sealed, o.created_by,
        o.created_at, o.disabled_at,
        (SELECT COUNT(*) FROM backup_codes b WHERE b.operator = o.name AND b.used_at IS NULL) AS backup_codes_left
     FROM operators o WHERE o.totp_key_id <> $1 ORDER BY o.name";

#[async_trait]
impl<B: Backend> OperatorStore for B {
    async fn create_operator(&self, op: &NewOperator<'_>) -> Result<(), StoreError> {
        const WHAT: &str = "adding an operator";
        let keyring = audit_keyring(self.keyring())?;
        let draft = AuditDraft::operator_added(op.created_by, op.name, op.role);
        let (name, role, password_hash, totp, codes, created_by) = (
            op.name.to_owned(),
            op.role.to_owned(),
            op.password_hash.to_owned(),
            op.totp.clone(),
            op.backup_code_hashes.to_vec(),
            op.created_by.to_owned(),
        );
        self.driver()
            .write(WHAT, move |c| {
                Box::pin(async move {
                    audit::record(c, &keyring, &draft).await?;
                    let added = c
                        .run(
                            WHAT,
                            INSERT,
                            &[
                                (&name).into(),
                                (&role).into(),
                                (&password_hash).into(),
                                (&totp.key_id).into(),
                                (&totp.ciphertext).into(),
                                (&created_by).into(),
                                now_micros().into(),
                            ],
                        )
                        .await?;
                    if added == 0 {
                        return Err(StoreError::Conflict(format!(
                            "operator `{name}` already exists"
                        )));
                    }
                    for h in &codes {
                        c.run(
                            "storing a backup code",
                            INSERT_CODE,
                            &[(&name).into(), h.into()],
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        read_opt(self, "reading an operator", BY_NAME, vec![name.into()]).await
    }

    async fn list_operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        read_all(self, "listing operators", ALL, vec![]).await
    }

    async fn reset_totp(
        &self,
        name: &str,
        totp: &Sealed,
        backup_code_hashes: &[String],
        actor: &str,
    ) -> Result<(), StoreError> {
        const WHAT: &str = "resetting an operator's TOTP";
        let keyring = audit_keyring(self.keyring())?;
        let draft = AuditDraft::operator_totp_reset(actor, name);
        let (name, totp, codes) = (name.to_owned(), totp.clone(), backup_code_hashes.to_vec());
        self.driver()
            .write(WHAT, move |c| {
                Box::pin(async move {
                    audit::record(c, &keyring, &draft).await?;
                    let changed = c
                        .run(
                            WHAT,
                            "UPDATE operators SET totp_key_id = $2, totp_sealed = $3 WHERE name = $1",
                            &[(&name).into(), (&totp.key_id).into(), (&totp.ciphertext).into()],
                        )
                        .await?;
                    if changed == 0 {
                        return Err(StoreError::NotFound(format!("operator `{name}`")));
                    }
                    c.run(
                        "dropping old backup codes",
                        "DELETE FROM backup_codes WHERE operator = $1",
                        &[(&name).into()],
                    )
                    .await?;
                    for h in &codes {
                        c.run("storing a backup code", INSERT_CODE, &[(&name).into(), h.into()])
                            .await?;
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn accept_totp_step(&self, name: &str, step: i64) -> Result<bool, StoreError> {
        let n = write_one(
            self,
            "advancing a TOTP watermark",
            WATERMARK,
            vec![name.into(), step.into()],
        )
        .await?;
        Ok(n == 1)
    }

    async fn use_backup_code(&self, name: &str, code_hash: &str) -> Result<bool, StoreError> {
        let n = write_one(
            self,
            "using a backup code",
            USE_CODE,
            vec![name.into(), code_hash.into(), now_micros().into()],
        )
        .await?;
        Ok(n == 1)
    }

    async fn approve_revoke(
        &self,
        job_id: &str,
        operator: &str,
        actor: &str,
    ) -> Result<(), StoreError> {
        const WHAT: &str = "recording an approval";
        let keyring = audit_keyring(self.keyring())?;
        let draft = AuditDraft::revoke_approved(actor, job_id, operator);
        let (job_id, operator) = (job_id.to_owned(), operator.to_owned());
        self.driver()
            .write(WHAT, move |c| {
                Box::pin(async move {
                    audit::record(c, &keyring, &draft).await?;
                    c.run(
                        WHAT,
                        APPROVE,
                        &[(&job_id).into(), (&operator).into(), now_micros().into()],
                    )
                    .await
                    .map(drop)
                })
            })
            .await
    }

    async fn approvals(&self, job_id: &str) -> Result<Vec<Approval>, StoreError> {
        read_all(self, "listing approvals", APPROVALS, vec![job_id.into()]).await
    }

    async fn operators_not_under(&self, key_id: &str) -> Result<Vec<OperatorRecord>, StoreError> {
        read_all(
            self,
            "listing operators to re-seal",
            NOT_UNDER,
            vec![key_id.into()],
        )
        .await
    }

    async fn reseal_totp(
        &self,
        name: &str,
        old_key_id: &str,
        sealed: &Sealed,
    ) -> Result<bool, StoreError> {
        let n = write_one(
            self,
            "re-sealing a TOTP secret",
            "UPDATE operators SET totp_key_id = $3, totp_sealed = $4 WHERE name = $1 AND totp_key_id = $2",
            vec![
                name.into(),
                old_key_id.into(),
                sealed.key_id.as_str().into(),
                Owned::Blob(sealed.ciphertext.clone()),
            ],
        )
        .await?;
        Ok(n == 1)
    }
}
