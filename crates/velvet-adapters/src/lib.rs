//! Sources mint and revoke versions; consumers hold copies. Each adapter is one file; the engine
//! drives them through the traits here and never sees how they talk to the outside.
//!
//! Every operation is idempotent for a given (job, version): the engine may repeat any step
//! after a crash. Failures are classified so the engine knows whether to retry.

pub mod consumer;
mod error;
pub mod http;
pub mod notify;
pub mod pace;
pub mod source;

pub use error::{AdapterError, Result};

use velvet_core::secret::SecretValue;

/// What a consumer step works with. Values arrive already decrypted; adapters must not log,
/// echo or persist them anywhere but their destination.
pub struct Delivery<'a> {
    pub token: &'a str,
    pub job_id: &'a str,
    pub version: i64,
    pub new: &'a SecretValue,
    pub new_fingerprint: &'a str,
    /// The value being replaced, if the token had one.
    pub previous: Option<&'a SecretValue>,
    pub previous_version: Option<i64>,
    pub previous_fingerprint: Option<&'a str>,
}

impl std::fmt::Debug for Delivery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("token", &self.token)
            .field("job_id", &self.job_id)
            .field("version", &self.version)
            .field("new_fingerprint", &self.new_fingerprint)
            .finish_non_exhaustive()
    }
}

/// Fills `buf` from the OS CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the OS random generator is available");
}

/// A random password of letters and digits, safe in URLs, dotenv files and SQL literals.
pub(crate) fn random_password(len: usize) -> String {
    random_alnum(len)
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

pub(crate) fn random_alnum(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        random_bytes(&mut buf);
        // Rejection sampling: 248 = 4 × 62 keeps every character equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == len {
                break;
            }
            out.push(ALNUM[(*b % 62) as usize] as char);
        }
    }
    zeroize::Zeroize::zeroize(&mut buf);
    out
}

/// Constant-time equality of two secrets.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
