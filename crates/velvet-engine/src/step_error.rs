//! Why a step could not finish, which decides what happens to its job: a store that may answer
//! later (busy, connection lost) keeps the lease and retries when it expires, so a blip never
//! fails a rotation; anything else fails the stage with a reason an operator can act on.

use velvet_store::StoreError;

#[derive(Debug)]
pub(crate) enum StepError {
    /// Trying the same step again may succeed: back off, keep the lease.
    Transient(StoreError),
    /// The stage failed; the reason is kept on the job.
    Failed(String),
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        if e.retryable() {
            StepError::Transient(e)
        } else {
            StepError::Failed(e.to_string())
        }
    }
}

impl From<String> for StepError {
    fn from(reason: String) -> Self {
        StepError::Failed(reason)
    }
}

impl From<velvet_core::keyring::KeyringError> for StepError {
    fn from(e: velvet_core::keyring::KeyringError) -> Self {
        StepError::Failed(e.to_string())
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Transient(e) => write!(f, "{e}"),
            StepError::Failed(reason) => f.write_str(reason),
        }
    }
}
