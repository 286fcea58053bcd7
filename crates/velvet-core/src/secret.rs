//! Types that hold secret material. None of them prints its contents through `Debug`, and all of
//! them wipe their memory when dropped.

use std::collections::BTreeMap;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// One secret string (a password, a token). `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: String) -> Self {
        Self(s)
    }

    /// The plaintext. Callers must not log, format or persist it unsealed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Read from a request body (a `manual` token's value); the string is moved in, never copied.
impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretString)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(***)")
    }
}

/// The value of one token version: a map of fields (`value`, or `username` + `password`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValue {
    fields: BTreeMap<String, SecretString>,
}

/// The field a single-valued secret (source `random`) keeps its value in.
pub const VALUE_FIELD: &str = "value";

impl SecretValue {
    /// A value with the single field `value`.
    /// One `value` field, moved in without a copy.
    pub fn single_secret(value: SecretString) -> Self {
        let mut fields = BTreeMap::new();
        fields.insert(VALUE_FIELD.to_string(), value);
        Self { fields }
    }

    pub fn single(value: String) -> Self {
        let mut fields = BTreeMap::new();
        fields.insert(VALUE_FIELD.to_string(), SecretString::new(value));
        Self { fields }
    }

    pub fn from_fields(fields: BTreeMap<String, SecretString>) -> Self {
        Self { fields }
    }

    pub fn get(&self, field: &str) -> Option<&SecretString> {
        self.fields.get(field)
    }

    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.keys().map(String::as_str)
    }

    /// `text` with every field of this value, and each of `whole` (forms the value was written
    /// in), replaced by `***`: longest first, so no part of a longer secret survives a shorter
    /// one's replacement.
    pub fn mask(&self, text: &str, whole: &[&str]) -> String {
        let mut secrets: Vec<&str> = self
            .fields
            .values()
            .map(SecretString::expose)
            .chain(whole.iter().copied())
            .filter(|s| !s.is_empty())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = text.to_string();
        for s in secrets {
            if out.contains(s) {
                out = out.replace(s, "***");
            }
        }
        out
    }

    /// Canonical serialisation for sealing: a JSON object with sorted keys.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let len: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.expose().len() * 2 + 8)
            .sum::<usize>()
            + 2;
        // Pre-sized so serde_json never reallocates and leaves partial copies behind.
        let mut buf = Zeroizing::new(Vec::with_capacity(len));
        let view: BTreeMap<&str, &str> = self
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        serde_json::to_writer(&mut *buf, &view).expect("a map of strings always serialises");
        buf
    }

    /// Inverse of [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let map: BTreeMap<String, String> = serde_json::from_slice(bytes)?;
        Ok(Self {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, SecretString::new(v)))
                .collect(),
        })
    }

    /// The bytes a fingerprint is computed over: the raw value for single-valued secrets, else
    /// the canonical JSON, so that `value` fingerprints match `sha256sum`-style checks by hand.
    pub fn fingerprint_input(&self) -> Zeroizing<Vec<u8>> {
        match (self.fields.len(), self.fields.get(VALUE_FIELD)) {
            (1, Some(v)) => Zeroizing::new(v.expose().as_bytes().to_vec()),
            _ => self.to_bytes(),
        }
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.fields.keys().map(|k| (k, "***")))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let v = SecretValue::single("hunter2-very-secret".into());
        let shown = format!("{v:?} {:?}", v.get("value").unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"));
    }

    #[test]
    fn bytes_round_trip_and_are_canonical() {
        let mut m = BTreeMap::new();
        m.insert("username".to_string(), SecretString::new("app_a".into()));
        m.insert("password".to_string(), SecretString::new("p\"w".into()));
        let v = SecretValue::from_fields(m);
        let b = v.to_bytes();
        assert_eq!(&b[..], br#"{"password":"p\"w","username":"app_a"}"#);
        assert_eq!(SecretValue::from_bytes(&b).unwrap(), v);
    }

    #[test]
    fn mask_hides_every_field_and_the_whole_value() {
        let mut m = BTreeMap::new();
        m.insert("username".to_string(), SecretString::new("app_a".into()));
        m.insert(
            "password".to_string(),
            SecretString::new("s3cr3t-pw".into()),
        );
        let v = SecretValue::from_fields(m);
        let whole = r#"{"password":"s3cr3t-pw","username":"app_a"}"#;
        let text = format!("login app_a/s3cr3t-pw failed; input was {whole}; pw=s3cr3t-pw");
        let masked = v.mask(&text, &[whole]);
        assert!(!masked.contains("s3cr3t"), "{masked}");
        assert!(!masked.contains("app_a"), "{masked}");
        assert_eq!(masked, "login ***/*** failed; input was ***; pw=***");
    }

    #[test]
    fn fingerprint_input_of_single_value_is_the_raw_value() {
        let v = SecretValue::single("abc".into());
        assert_eq!(&v.fingerprint_input()[..], b"abc");
    }
}
