//! The keyring: the keys that seal version values at rest, and the HKDF-derived keys for
//! fingerprints and the audit chain. Keys carry validity windows so they can rotate while older
//! ciphertexts and audit records stay readable.

use crate::secret::SecretValue;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// The on-disk format tag; bump it when the file layout changes.
const FILE_FORMAT: &str = "velvet-keyring/v1";
const NONCE_LEN: usize = 24;
const INFO_SEAL: &[u8] = b"velvet/v1/seal";
const INFO_FINGERPRINT: &[u8] = b"velvet/v1/fingerprint";
const INFO_AUDIT: &[u8] = b"velvet/v1/audit";
const INFO_KEY_ID: &[u8] = b"velvet/v1/key-id";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("cannot read keyring {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write keyring {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keyring {path} is not a valid Velvet keyring ({reason}); restore it from backup")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "keyring {path} has mode {mode:04o}: group or others can read it; run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "VELVET_MASTER_KEY must be the base64 of exactly 32 bytes (try `openssl rand -base64 32`)"
    )]
    BadMasterKey,
    #[error("no key in the keyring is valid now; add one with `velvet keys rotate`")]
    NoValidKey,
    #[error("the keyring holds no key with id `{0}`; restore the keyring that sealed this data")]
    UnknownKey(String),
    #[error(
        "decryption failed: the ciphertext was altered, moved to another row, or sealed by another key"
    )]
    Decrypt,
    #[error("the keyring comes from VELVET_MASTER_KEY and cannot be changed; use a keyring file")]
    NotAFile,
}

/// One key with its derived subkeys. `Debug` never prints material.
pub struct Key {
    pub id: String,
    pub not_before: DateTime<Utc>,
    pub not_after: Option<DateTime<Utc>>,
    material: Zeroizing<[u8; 32]>,
    seal: XChaCha20Poly1305,
    fingerprint: HmacSha256,
    audit: HmacSha256,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("material", &"***")
            .finish()
    }
}

fn derive(material: &[u8; 32], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut okm = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<Sha256>::new(None, material)
        .expand(info, &mut *okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

impl Key {
    fn new(
        id: String,
        not_before: DateTime<Utc>,
        not_after: Option<DateTime<Utc>>,
        material: Zeroizing<[u8; 32]>,
    ) -> Self {
        let seal =
            XChaCha20Poly1305::new_from_slice(&*derive(&material, INFO_SEAL)).expect("32-byte key");
        let fingerprint = HmacSha256::new_from_slice(&*derive(&material, INFO_FINGERPRINT))
            .expect("HMAC takes any key length");
        let audit = HmacSha256::new_from_slice(&*derive(&material, INFO_AUDIT))
            .expect("HMAC takes any key length");
        Self {
            id,
            not_before,
            not_after,
            material,
            seal,
            fingerprint,
            audit,
        }
    }

    /// A stable id for key material that arrives without one (`VELVET_MASTER_KEY`), so that
    /// data sealed under it stays addressable across restarts.
    fn id_for(material: &[u8; 32]) -> String {
        format!(
            "m-{}",
            &hex::encode(&derive(material, INFO_KEY_ID)[..])[..12]
        )
    }

    fn valid_at(&self, now: DateTime<Utc>) -> bool {
        self.not_before <= now && self.not_after.is_none_or(|end| now < end)
    }

    /// A keyed HMAC state for the audit chain; cloning it skips re-keying on every record.
    pub fn audit_mac(&self) -> &HmacSha256 {
        &self.audit
    }
}

/// A sealed version value: which key sealed it and `nonce || ciphertext || tag`.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sealed(key={}, {} bytes)",
            self.key_id,
            self.ciphertext.len()
        )
    }
}

/// Associated data binding a ciphertext to its row, so a value copied to another token or
/// version does not decrypt.
pub fn version_aad(token: &str, version: i64) -> Vec<u8> {
    format!("velvet/v1/secret_version\0{token}\0{version}").into_bytes()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    format: String,
    keys: Vec<KeyFileEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileEntry {
    id: String,
    not_before: DateTime<Utc>,
    #[serde(default)]
    not_after: Option<DateTime<Utc>>,
    material: String,
}

/// Where the keyring came from, which decides whether it can be rotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyringOrigin {
    File(PathBuf),
    MasterKeyEnv,
}

#[derive(Debug)]
pub struct Keyring {
    keys: Vec<Key>,
    origin: KeyringOrigin,
}

fn random_material() -> Zeroizing<[u8; 32]> {
    let mut m = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *m).expect("the OS random generator is available");
    m
}

fn new_key_id(now: DateTime<Utc>) -> String {
    let mut suffix = [0u8; 3];
    getrandom::fill(&mut suffix).expect("the OS random generator is available");
    format!("k{}-{}", now.format("%Y%m%d"), hex::encode(suffix))
}

impl Keyring {
    /// A new keyring with one fresh key, not yet written anywhere.
    pub fn generate(path: &Path, now: DateTime<Utc>) -> Self {
        Self {
            keys: vec![Key::new(new_key_id(now), now, None, random_material())],
            origin: KeyringOrigin::File(path.to_path_buf()),
        }
    }

    /// A one-key keyring from `VELVET_MASTER_KEY` (base64 of 32 bytes).
    pub fn from_master_key(b64: &str) -> Result<Self, KeyringError> {
        let raw = Zeroizing::new(
            B64.decode(b64.trim())
                .map_err(|_| KeyringError::BadMasterKey)?,
        );
        let material: [u8; 32] = raw[..].try_into().map_err(|_| KeyringError::BadMasterKey)?;
        let material = Zeroizing::new(material);
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        Ok(Self {
            keys: vec![Key::new(Key::id_for(&material), epoch, None, material)],
            origin: KeyringOrigin::MasterKeyEnv,
        })
    }

    /// Loads a keyring file, refusing one that group or others can read: a readable keyring
    /// is a leaked keyring.
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        let read_err = |source| KeyringError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        check_mode(path, &meta)?;
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(read_err)?);
        let corrupt = |reason: String| KeyringError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let file: KeyringFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if file.format != FILE_FORMAT {
            return Err(corrupt(format!(
                "format `{}`, expected `{FILE_FORMAT}`",
                file.format
            )));
        }
        if file.keys.is_empty() {
            return Err(corrupt("it holds no key".into()));
        }
        let mut keys = Vec::with_capacity(file.keys.len());
        for entry in file.keys {
            let material = Zeroizing::new(entry.material);
            let raw = Zeroizing::new(
                B64.decode(material.as_bytes())
                    .map_err(|_| corrupt(format!("key `{}` is not base64", entry.id)))?,
            );
            let bytes: [u8; 32] = raw[..]
                .try_into()
                .map_err(|_| corrupt(format!("key `{}` is not 32 bytes", entry.id)))?;
            if keys.iter().any(|k: &Key| k.id == entry.id) {
                return Err(corrupt(format!("key id `{}` appears twice", entry.id)));
            }
            keys.push(Key::new(
                entry.id,
                entry.not_before,
                entry.not_after,
                Zeroizing::new(bytes),
            ));
        }
        Ok(Self {
            keys,
            origin: KeyringOrigin::File(path.to_path_buf()),
        })
    }

    /// Writes the keyring atomically (temp file, fsync, rename) with mode 0600.
    pub fn save(&self) -> Result<(), KeyringError> {
        let KeyringOrigin::File(path) = &self.origin else {
            return Err(KeyringError::NotAFile);
        };
        let file = KeyringFile {
            format: FILE_FORMAT.into(),
            keys: self
                .keys
                .iter()
                .map(|k| KeyFileEntry {
                    id: k.id.clone(),
                    not_before: k.not_before,
                    not_after: k.not_after,
                    material: B64.encode(k.material.as_slice()),
                })
                .collect(),
        };
        let text =
            Zeroizing::new(serde_json::to_string_pretty(&file).expect("keyring serialises") + "\n");
        for k in file.keys {
            drop(Zeroizing::new(k.material));
        }
        write_private_file(path, text.as_bytes()).map_err(|source| KeyringError::Write {
            path: path.clone(),
            source,
        })
    }

    pub fn origin(&self) -> &KeyringOrigin {
        &self.origin
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The newest key valid at `now`: the one new values are sealed under.
    pub fn current(&self, now: DateTime<Utc>) -> Result<&Key, KeyringError> {
        self.keys
            .iter()
            .filter(|k| k.valid_at(now))
            .max_by_key(|k| k.not_before)
            .ok_or(KeyringError::NoValidKey)
    }

    /// Any retained key by id, valid now or not: old ciphertexts and audit records need them.
    pub fn lookup(&self, id: &str) -> Result<&Key, KeyringError> {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| KeyringError::UnknownKey(id.to_string()))
    }

    /// Adds a new key valid from `now`, which becomes current. Old keys are kept for reading.
    pub fn add_key(&mut self, now: DateTime<Utc>) -> Result<&Key, KeyringError> {
        if self.origin == KeyringOrigin::MasterKeyEnv {
            return Err(KeyringError::NotAFile);
        }
        let mut id = new_key_id(now);
        while self.keys.iter().any(|k| k.id == id) {
            id = new_key_id(now);
        }
        self.keys.push(Key::new(id, now, None, random_material()));
        Ok(self.keys.last().expect("just pushed"))
    }

    /// Seals `value` under the current key, bound to `aad`.
    pub fn seal(
        &self,
        value: &SecretValue,
        aad: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Sealed, KeyringError> {
        let key = self.current(now)?;
        Ok(seal_with(key, value, aad))
    }

    /// Opens a sealed value; fails if it was altered, moved to another row or the key is gone.
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<SecretValue, KeyringError> {
        let key = self.lookup(&sealed.key_id)?;
        if sealed.ciphertext.len() < NONCE_LEN {
            return Err(KeyringError::Decrypt);
        }
        let (nonce, body) = sealed.ciphertext.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| KeyringError::Decrypt)?;
        let plain = Zeroizing::new(
            key.seal
                .decrypt(&nonce, Payload { msg: body, aad })
                .map_err(|_| KeyringError::Decrypt)?,
        );
        SecretValue::from_bytes(&plain).map_err(|_| KeyringError::Decrypt)
    }

    /// `HMAC-SHA256(fingerprint_key, value)`, first 16 hex chars, under the current key.
    pub fn fingerprint(
        &self,
        value: &SecretValue,
        now: DateTime<Utc>,
    ) -> Result<String, KeyringError> {
        let mut mac = self.current(now)?.fingerprint.clone();
        mac.update(&value.fingerprint_input());
        Ok(hex::encode(&mac.finalize().into_bytes()[..8]))
    }
}

fn seal_with(key: &Key, value: &SecretValue, aad: &[u8]) -> Sealed {
    let mut nonce_bytes = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce_bytes).expect("the OS random generator is available");
    let nonce = XNonce::from(nonce_bytes);
    let plain = value.to_bytes();
    let body = key
        .seal
        .encrypt(&nonce, Payload { msg: &plain, aad })
        .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
    let mut ciphertext = Vec::with_capacity(NONCE_LEN + body.len());
    ciphertext.extend_from_slice(&nonce_bytes);
    ciphertext.extend_from_slice(&body);
    Sealed {
        key_id: key.id.clone(),
        ciphertext,
    }
}

#[cfg(unix)]
fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyringError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyringError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &Path, _: &std::fs::Metadata) -> Result<(), KeyringError> {
    Ok(())
}

/// Writes `bytes` to `path` atomically with mode 0600.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::fs::write_atomic(path, bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn ring(dir: &Path) -> Keyring {
        Keyring::generate(&dir.join("keys.json"), Utc::now())
    }

    #[test]
    fn seal_open_round_trip_and_rows_are_bound() {
        let dir = tempfile::tempdir().unwrap();
        let kr = ring(dir.path());
        let now = Utc::now();
        let v = SecretValue::single("s3cr3t".into());
        let sealed = kr.seal(&v, &version_aad("a", 1), now).unwrap();
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"s3cr3t"));
        assert_eq!(kr.open(&sealed, &version_aad("a", 1)).unwrap(), v);
        assert!(matches!(
            kr.open(&sealed, &version_aad("a", 2)),
            Err(KeyringError::Decrypt)
        ));
        assert!(matches!(
            kr.open(&sealed, &version_aad("b", 1)),
            Err(KeyringError::Decrypt)
        ));
        let mut tampered = sealed.clone();
        *tampered.ciphertext.last_mut().unwrap() ^= 1;
        assert!(matches!(
            kr.open(&tampered, &version_aad("a", 1)),
            Err(KeyringError::Decrypt)
        ));
    }

    #[test]
    fn save_load_keeps_keys_and_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let mut kr = Keyring::generate(&path, Utc::now());
        kr.add_key(Utc::now() + Duration::seconds(1)).unwrap();
        kr.save().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = Keyring::load(&path).unwrap();
        assert_eq!(back.keys().len(), 2);
        let v = SecretValue::single("x".into());
        let sealed = kr.seal(&v, b"aad", Utc::now()).unwrap();
        assert_eq!(back.open(&sealed, b"aad").unwrap(), v);
        assert!(!format!("{back:?}").contains(&B64.encode(back.keys[0].material.as_slice())));
    }

    #[test]
    fn current_is_the_newest_valid_key_and_windows_may_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Utc::now() - Duration::days(10);
        let mut kr = Keyring::generate(&dir.path().join("k.json"), t0);
        let first = kr.keys[0].id.clone();
        kr.add_key(t0 + Duration::days(5)).unwrap();
        let second = kr.keys[1].id.clone();
        kr.keys[1].not_after = Some(t0 + Duration::days(8));
        assert_eq!(kr.current(t0 + Duration::days(1)).unwrap().id, first);
        assert_eq!(kr.current(t0 + Duration::days(6)).unwrap().id, second);
        // After the second expires the first, still open-ended, is current again.
        assert_eq!(kr.current(t0 + Duration::days(9)).unwrap().id, first);
        kr.keys[0].not_after = Some(t0 + Duration::days(9));
        assert!(matches!(
            kr.current(t0 + Duration::days(9)),
            Err(KeyringError::NoValidKey)
        ));
        assert!(kr.lookup(&first).is_ok());
        assert!(matches!(
            kr.lookup("nope"),
            Err(KeyringError::UnknownKey(_))
        ));
    }

    #[test]
    fn refuses_group_readable_and_corrupt_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        Keyring::generate(&path, Utc::now()).save().unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Keyring::load(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "{not json").unwrap();
        let e = Keyring::load(&path).unwrap_err();
        assert!(matches!(e, KeyringError::Corrupt { .. }), "{e}");
        let e = Keyring::load(&dir.path().join("missing.json")).unwrap_err();
        assert!(matches!(e, KeyringError::Read { .. }), "{e}");
    }

    #[test]
    fn master_key_has_a_stable_id_and_rejects_bad_input() {
        let b64 = B64.encode([7u8; 32]);
        let a = Keyring::from_master_key(&b64).unwrap();
        let b = Keyring::from_master_key(&b64).unwrap();
        assert_eq!(a.keys[0].id, b.keys[0].id);
        assert!(Keyring::from_master_key("short").is_err());
        assert!(Keyring::from_master_key(&B64.encode([1u8; 16])).is_err());
    }

    #[test]
    fn fingerprint_is_16_hex_and_keyed() {
        let dir = tempfile::tempdir().unwrap();
        let a = ring(dir.path());
        let b = ring(dir.path());
        let v = SecretValue::single("same".into());
        let fa = a.fingerprint(&v, Utc::now()).unwrap();
        assert_eq!(fa.len(), 16);
        assert!(fa.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(fa, b.fingerprint(&v, Utc::now()).unwrap());
    }
}
