//! The integration tests of velvet-adapters, as one binary (one link instead of one per file).

mod aws;
mod cloudflare;
mod consumers;
mod github;
mod heroku;
mod infisical;
mod k8s;
mod mysql;
mod probe;
mod sources;
mod vault;

use velvet_adapters::Delivery;
use velvet_core::secret::SecretValue;

/// Version 2 of token `t` in job `rot_1`, replacing version 1 when `old` is given: what the
/// provider consumers' tests deliver.
pub fn delivery<'a>(new: &'a SecretValue, old: Option<&'a SecretValue>) -> Delivery<'a> {
    Delivery {
        token: "t",
        job_id: "rot_1",
        version: 2,
        new,
        new_fingerprint: "fp-new",
        previous: old,
        previous_version: old.map(|_| 1),
        previous_fingerprint: old.map(|_| "fp-old"),
    }
}
