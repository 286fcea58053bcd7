//! `random`: bytes from the OS CSPRNG in the declared encoding. Nothing outside Velvet holds it
//! until consumers do, so activate, verify, revoke and revert have no external effect.

use super::Source;
use crate::Result;
use async_trait::async_trait;
use base64::Engine as _;
use velvet_core::config::Encoding;
use velvet_core::secret::SecretValue;
use zeroize::Zeroizing;

#[derive(Debug)]
pub struct Random {
    bytes: usize,
    encoding: Encoding,
}

impl Random {
    pub fn new(bytes: usize, encoding: Encoding) -> Self {
        Self { bytes, encoding }
    }
}

#[async_trait]
impl Source for Random {
    fn generate(&self, _: Option<&SecretValue>) -> Result<SecretValue> {
        let mut raw = Zeroizing::new(vec![0u8; self.bytes]);
        crate::random_bytes(&mut raw);
        let text = match self.encoding {
            Encoding::Hex => hex::encode(&*raw),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(&*raw),
            Encoding::Base64url => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*raw),
            // As many characters as carry the same entropy: log2(62) ≈ 5.95 bits each.
            Encoding::Alnum => crate::random_alnum((self.bytes * 8).div_ceil(5)),
        };
        Ok(SecretValue::single(text))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_have_the_declared_size_and_alphabet() {
        let cases = [
            (Encoding::Hex, 64, "0123456789abcdef"),
            (
                Encoding::Base64,
                44,
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
            ),
            (
                Encoding::Base64url,
                43,
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
            ),
            (
                Encoding::Alnum,
                52,
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            ),
        ];
        for (enc, len, alphabet) in cases {
            let r = Random::new(32, enc);
            let a = r.generate(None).unwrap();
            let b = r.generate(None).unwrap();
            let v = a.get("value").unwrap().expose();
            assert_eq!(v.len(), len, "{enc:?}");
            assert!(v.chars().all(|c| alphabet.contains(c)), "{enc:?} {v}");
            assert_ne!(a, b, "fresh every time");
        }
    }
}
