//! Reading a job's versions back out of the store, decrypted, for sources and consumers.

use crate::step_error::StepError;
use velvet_core::keyring::{Keyring, version_aad};
use velvet_core::secret::SecretValue;
use velvet_store::Store;

/// The decrypted value of `token`'s `version`.
pub async fn open(
    store: &dyn Store,
    keyring: &Keyring,
    token: &str,
    version: i64,
) -> Result<SecretValue, StepError> {
    let sealed = store.sealed_version(token, version).await?;
    keyring
        .open(&sealed, &version_aad(token, version))
        .map_err(|e| StepError::Failed(format!("version {version}: {e}")))
}

/// The job's new and previous values, with their fingerprints under the current key.
pub struct JobValues {
    pub new: Option<SecretValue>,
    pub new_fingerprint: String,
    pub previous: Option<SecretValue>,
    pub previous_fingerprint: Option<String>,
}

pub async fn of_job(
    store: &dyn Store,
    keyring: &Keyring,
    job: &velvet_core::job::RotationJob,
) -> Result<JobValues, StepError> {
    let mut out = JobValues {
        new: None,
        new_fingerprint: String::new(),
        previous: None,
        previous_fingerprint: None,
    };
    let now = chrono::Utc::now();
    if let Some(v) = job.new_version {
        let value = open(store, keyring, &job.token, v).await?;
        out.new_fingerprint = keyring.fingerprint(&value, now)?;
        out.new = Some(value);
    }
    if let Some(v) = job.previous_version {
        let value = open(store, keyring, &job.token, v).await?;
        out.previous_fingerprint = Some(keyring.fingerprint(&value, now)?);
        out.previous = Some(value);
    }
    Ok(out)
}
