//! Reading a job's versions back out of the store, decrypted, for sources and consumers.

use std::sync::Arc;
use velvet_core::keyring::{Keyring, version_aad};
use velvet_core::secret::SecretValue;
use velvet_store::Store;

/// The decrypted value of `token`'s `version`.
pub async fn open(
    store: &dyn Store,
    keyring: &Keyring,
    token: &str,
    version: i64,
) -> Result<SecretValue, String> {
    let sealed = store
        .sealed_version(token, version)
        .await
        .map_err(|e| e.to_string())?;
    keyring
        .open(&sealed, &version_aad(token, version))
        .map_err(|e| format!("version {version}: {e}"))
}

/// The job's new and previous values.
pub struct JobValues {
    pub new: Option<SecretValue>,
    pub previous: Option<SecretValue>,
}

pub async fn of_job(
    store: &Arc<dyn Store>,
    keyring: &Keyring,
    job: &velvet_core::job::Job,
) -> Result<JobValues, String> {
    let new = match job.new_version {
        Some(v) => Some(open(&**store, keyring, &job.token, v).await?),
        None => None,
    };
    let previous = match job.previous_version {
        Some(v) => Some(open(&**store, keyring, &job.token, v).await?),
        None => None,
    };
    Ok(JobValues { new, previous })
}
