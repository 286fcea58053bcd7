//! `manual`: a value only a person can issue (a vendor's API key, a partner's shared secret).
//! The person gives it at kickoff (`velvet rotate NAME --value-stdin`), so Velvet never mints
//! one; there is nothing to activate, log into or revoke at a source Velvet cannot reach. The
//! person retires the old value where it was issued, once every consumer holds the new one.

use crate::{AdapterError, Result};
use async_trait::async_trait;
use velvet_core::secret::SecretValue;

use super::Source;

#[derive(Debug)]
pub struct Manual;

#[async_trait]
impl Source for Manual {
    fn generate(&self, _: Option<&SecretValue>) -> Result<SecretValue> {
        Err(AdapterError::permanent(
            "a manual token's value comes from a person: start its rotation with \
             `velvet rotate NAME --value-stdin` (or the console), not from a schedule",
        ))
    }

    async fn activate(&self, _: &SecretValue, _: Option<&SecretValue>) -> Result<()> {
        Ok(())
    }

    async fn verify(&self, _: &SecretValue) -> Result<()> {
        Ok(())
    }

    async fn revoke(&self, _: &SecretValue, _: Option<&SecretValue>) -> Result<()> {
        Ok(())
    }

    async fn revert(&self, _: &SecretValue, _: Option<&SecretValue>) -> Result<()> {
        Ok(())
    }

    async fn probe(&self) -> Result<String> {
        Ok("a person gives each value; nothing to reach".into())
    }
}
