//! Operators, the people behind the console and the revocation gate (design §7): a password
//! (argon2id), a TOTP secret (RFC 6238: SHA-1, 6 digits, 30 s, ±1 step; kept sealed under the
//! keyring) and ten single-use backup codes (kept as SHA-256: each carries 80 random bits, so a
//! fast hash is enough).

use crate::secret::SecretString;
use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What an authenticator app is told the codes are for.
pub const ISSUER: &str = "Velvet";
/// Backup codes an operator gets at enrolment.
pub const BACKUP_CODES: usize = 10;
const PASSWORD_LEN: usize = 24;
const TOTP_SECRET_LEN: usize = 20;
const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Whether `name` may name an operator: 1–64 of `a-z 0-9 . _ -`, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// `n` characters drawn uniformly from `alphabet` (at most 256 letters) by the OS generator.
fn random_text(alphabet: &[u8], n: usize) -> String {
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf).expect("OS randomness");
        // Rejection sampling keeps every character equally likely.
        for &b in buf.iter().filter(|&&b| usize::from(b) < limit) {
            if out.len() == n {
                break;
            }
            out.push(alphabet[usize::from(b) % alphabet.len()] as char);
        }
    }
    buf.iter_mut().for_each(|b| *b = 0);
    out
}

/// A fresh login password (24 base62 characters, ~143 bits).
pub fn new_password() -> SecretString {
    SecretString::new(random_text(BASE62, PASSWORD_LEN))
}

/// The argon2id PHC string of `password` (random salt, the crate's default cost).
pub fn hash_password(password: &str) -> String {
    Argon2::default()
        .hash_password(password.as_bytes())
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

/// Whether `password` matches the PHC string `hash` (constant time inside argon2).
pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// A fresh TOTP secret, base32 (as authenticator apps take it): 160 random bits.
pub fn new_totp_secret() -> SecretString {
    let mut raw = [0u8; TOTP_SECRET_LEN];
    getrandom::fill(&mut raw).expect("OS randomness");
    let text = base32(&raw);
    raw.iter_mut().for_each(|b| *b = 0);
    SecretString::new(text)
}

fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(BASE32[((acc >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(BASE32[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn unbase32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !matches!(c, b' ' | b'-' | b'=')) {
        let v = BASE32.iter().position(|&x| x == c.to_ascii_uppercase())? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            out.push((acc >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}

fn totp(secret: &str, account: &str) -> Option<totp_rs::Totp> {
    totp_rs::Builder::new()
        .with_secret(unbase32(secret)?)
        .with_account_name(account)
        .with_issuer(Some(ISSUER))
        .build()
        .ok()
}

/// The `otpauth://` URI an authenticator app enrols from.
pub fn otpauth_uri(secret: &str, operator: &str) -> String {
    totp(secret, operator)
        .and_then(|t| t.to_url().ok())
        .expect("a secret from new_totp_secret makes a valid TOTP")
}

/// The code for `unix_time` (what an authenticator app shows then).
pub fn totp_code(secret: &str, unix_time: u64) -> Option<String> {
    Some(totp(secret, "velvet")?.generate(unix_time).to_string())
}

/// The time step `code` belongs to, if it is valid at `unix_time` (±1 step). A caller accepts
/// the step only if it is past the operator's watermark, so each code works once.
pub fn totp_step(secret: &str, code: &str, unix_time: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(secret, "velvet")?;
    let origin = unix_time / 30;
    // Every candidate is compared, in constant time, so timing tells nothing about which matched.
    let mut found = None;
    for step in origin.saturating_sub(1)..=origin + 1 {
        let expected = t.generate(step * 30).to_string();
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
            found = found.or(Some(step));
        }
    }
    found
}

/// Ten backup codes, `xxxx-xxxx-xxxx-xxxx` in base32 (80 bits each).
pub fn new_backup_codes() -> Vec<SecretString> {
    (0..BACKUP_CODES)
        .map(|_| {
            let raw = random_text(BASE32, 16).to_ascii_lowercase();
            SecretString::new(format!(
                "{}-{}-{}-{}",
                &raw[0..4],
                &raw[4..8],
                &raw[8..12],
                &raw[12..16]
            ))
        })
        .collect()
}

/// What the store keeps of a backup code: SHA-256 of its normalised form.
pub fn hash_backup_code(code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    hex::encode(Sha256::digest(normal.as_bytes()))
}

/// The associated data that binds a sealed TOTP secret to its operator.
pub fn totp_aad(operator: &str) -> Vec<u8> {
    format!("velvet-operator-totp:{operator}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vector() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", T = 59 → 94287082 (8
        // digits); the 6-digit code is its last six.
        let secret = base32(b"12345678901234567890");
        assert_eq!(totp_code(&secret, 59).unwrap(), "287082");
        assert_eq!(totp_step(&secret, "287082", 59), Some(1));
        assert_eq!(
            totp_step(&secret, "287082", 59 + 30),
            Some(1),
            "one step late"
        );
        assert_eq!(
            totp_step(&secret, "287082", 59 + 90),
            None,
            "three steps late"
        );
        assert_eq!(totp_step(&secret, "28708", 59), None);
        assert_eq!(totp_step(&secret, "abcdef", 59), None);
    }

    #[test]
    fn secrets_round_trip_and_uri_names_the_issuer() {
        let s = new_totp_secret();
        assert_eq!(s.expose().len(), 32);
        assert_eq!(unbase32(s.expose()).unwrap().len(), 20);
        let uri = otpauth_uri(s.expose(), "alice");
        assert!(uri.starts_with("otpauth://totp/Velvet:alice?"), "{uri}");
        assert!(uri.contains(&format!("secret={}", s.expose())), "{uri}");
        let now = 1_800_000_000;
        let code = totp_code(s.expose(), now).unwrap();
        assert_eq!(totp_step(s.expose(), &code, now), Some(now / 30));
    }

    #[test]
    fn passwords_and_backup_codes() {
        let p = new_password();
        let h = hash_password(p.expose());
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(p.expose(), &h));
        assert!(!verify_password("wrong", &h));
        let codes = new_backup_codes();
        assert_eq!(codes.len(), 10);
        let c = codes[0].expose();
        assert_eq!(c.len(), 19);
        assert_eq!(
            hash_backup_code(c),
            hash_backup_code(&c.to_uppercase().replace('-', " "))
        );
        assert_ne!(hash_backup_code(c), hash_backup_code(codes[1].expose()));
        assert!(valid_name("alice") && valid_name("ops.bob-2"));
        assert!(!valid_name("Alice") && !valid_name("") && !valid_name("1x") && !valid_name("a b"));
    }
}
