//! Store-level routines over the keyring: walking the audit chain, re-sealing values under a new
//! key, and checking at start that the keyring really opens the data in the store.

use crate::{Reseal, Store, StoreError};
use chrono::Utc;
use velvet_core::audit::{RangeVerifier, VerifyReport, join_ranges, parse_head};
use velvet_core::keyring::{Keyring, KeyringError, version_aad};

/// Records read per page while verifying.
const VERIFY_PAGE: i64 = 10_000;

/// Walks the whole chain a page at a time on one core; stores with a faster scan override
/// [`Store::verify_audit`](crate::Store::verify_audit).
pub(crate) async fn verify_in_pages(
    store: &(impl Store + ?Sized),
    keyring: &Keyring,
    expected_head: Option<&str>,
) -> Result<VerifyReport, StoreError> {
    let head = expected_head
        .map(parse_head)
        .transpose()
        .map_err(StoreError::Conflict)?;
    let mut verifier = RangeVerifier::new(keyring, 1, head.clone());
    // Records with seq < 1 come first and fail the seq check.
    let mut after = i64::MIN;
    loop {
        let page = store.audit_page(after, VERIFY_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            verifier.push(e.as_record());
        }
        if verifier.failed() || (page.len() as i64) < VERIFY_PAGE {
            break;
        }
    }
    Ok(join_ranges(&[verifier.finish(1)], head.as_ref()))
}

/// Moves every value not sealed under the current key to it, `batch` rows per transaction.
/// Safe to interrupt and repeat. `progress` is told the running total after each batch.
pub async fn reseal_all(
    store: &dyn Store,
    keyring: &Keyring,
    batch: i64,
    mut progress: impl FnMut(u64),
) -> Result<u64, StoreError> {
    let current = keyring.current(Utc::now())?.id.clone();
    let mut total = 0;
    // Operators' TOTP secrets first: a handful, each bound to its operator's name.
    for op in store.operators_not_under(&current).await? {
        let aad = velvet_core::operator::totp_aad(&op.name);
        let value = keyring.open(&op.totp, &aad)?;
        let sealed = keyring.seal(&value, &aad, Utc::now())?;
        total += u64::from(
            store
                .reseal_totp(&op.name, &op.totp.key_id, &sealed)
                .await?,
        );
    }
    loop {
        let rows = store.sealed_not_under(&current, batch).await?;
        if rows.is_empty() {
            return Ok(total);
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let aad = version_aad(&row.token, row.version);
            let value = keyring.open(&row.sealed, &aad)?;
            out.push(Reseal {
                sealed: keyring.seal(&value, &aad, Utc::now())?,
                fingerprint: keyring.fingerprint(&value, Utc::now())?,
                token: row.token,
                version: row.version,
                old_key_id: row.sealed.key_id,
            });
        }
        total += store.reseal(&out).await?;
        progress(total);
    }
}

/// Refuses a keyring that lacks a key the store references, or whose key of that id does not
/// open a sample value (a different key file with the same ids).
pub async fn check_keyring(store: &dyn Store, keyring: &Keyring) -> Result<(), StoreError> {
    for id in store.key_ids_in_use().await? {
        keyring
            .lookup(&id)
            .map_err(|_| StoreError::Keyring(KeyringError::UnknownKey(id.clone())))?;
        if let Some(sample) = store.sample_sealed(&id).await? {
            keyring
                .open(&sample.sealed, &version_aad(&sample.token, sample.version))
                .map_err(|_| {
                    StoreError::Unavailable(format!(
                        "keyring key `{id}` does not open version {} of token `{}`: this is not the keyring that sealed the store's data",
                        sample.version, sample.token
                    ))
                })?;
        }
    }
    Ok(())
}
