//! `file`: a raw, dotenv or JSON file. Writes are atomic (temp file, fsync, rename); a new file
//! gets the declared mode, an existing one keeps its owner, group and mode (never with access
//! for others). Only `key` and `previous_key` are ever written or removed, and every other
//! line (dotenv) or entry (JSON) is kept byte for byte. A symbolic link at the path is refused
//! unless `follow_symlinks`, and temp files a crash left behind are removed on the next write.

use super::{Consumer, Renderer};
use crate::{AdapterError, Delivery, Result, same_secret};
use async_trait::async_trait;
use serde_json::value::RawValue;
use std::path::PathBuf;
use velvet_core::config::FileFormat;
use zeroize::Zeroizing;

#[derive(Debug)]
pub struct File {
    path: PathBuf,
    format: FileFormat,
    key: Option<String>,
    previous_key: Option<String>,
    renderer: Renderer,
    mode: u32,
    follow_symlinks: bool,
}

/// The keys this consumer owns, and what to set them to (`None` removes the key).
struct Edit<'a> {
    set: Vec<(&'a str, Option<&'a str>)>,
}

impl File {
    pub fn new(
        path: PathBuf,
        format: FileFormat,
        key: Option<String>,
        previous_key: Option<String>,
        renderer: Renderer,
        mode: u32,
        follow_symlinks: bool,
    ) -> Self {
        Self {
            path,
            format,
            key,
            previous_key,
            renderer,
            mode,
            follow_symlinks,
        }
    }

    /// The file to read and write: the path, or with `follow_symlinks` what a link there
    /// points to. A link is refused otherwise: it could point anywhere (another service's
    /// file, a file an attacker can read).
    fn target(&self) -> Result<PathBuf> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => {
                if !self.follow_symlinks {
                    return Err(AdapterError::permanent(format!(
                        "{} is a symbolic link; Velvet does not write or read through one \
                         unless the consumer sets `follow_symlinks: true`",
                        self.path.display()
                    )));
                }
                std::fs::canonicalize(&self.path)
                    .map_err(|e| self.io_error("following the link at", e))
            }
            _ => Ok(self.path.clone()),
        }
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> AdapterError {
        let message = format!("{what} {}: {e}", self.path.display());
        match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound => {
                AdapterError::permanent(message)
            }
            _ => AdapterError::retryable(message),
        }
    }

    fn read(&self) -> Result<Option<Zeroizing<String>>> {
        match std::fs::read_to_string(self.target()?) {
            Ok(s) => Ok(Some(Zeroizing::new(s))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error("reading", e)),
        }
    }

    fn write(&self, text: &str) -> Result<()> {
        let target = self.target()?;
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(AdapterError::permanent(format!(
                "directory {} does not exist",
                dir.display()
            )));
        }
        velvet_core::fs::replace_keeping_owner(&target, text.as_bytes(), self.mode)
            .map_err(|e| self.io_error("writing", e))
    }

    /// Applies `edit` to the file's current text.
    fn edit(&self, edit: &Edit) -> Result<()> {
        // A crash between a temp file's write and its rename leaves a secret beside the file.
        if let Ok(target) = self.target() {
            match velvet_core::fs::remove_stale_temps(&target) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(file = %target.display(), removed = n, "removed temp files left by an earlier crash")
                }
                Err(e) => tracing::debug!(error = %e, "looking for stale temp files failed"),
            }
        }
        let current = self.read()?;
        let current = current.as_deref().map(|s| s.as_str()).unwrap_or("");
        let next = match self.format {
            FileFormat::Raw => match edit.set.first() {
                Some((_, Some(v))) => Zeroizing::new(v.to_string()),
                _ => {
                    return match std::fs::remove_file(self.target()?) {
                        Ok(()) => Ok(()),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(self.io_error("removing", e)),
                    };
                }
            },
            FileFormat::Dotenv => Zeroizing::new(dotenv_edit(current, &edit.set)),
            FileFormat::Json => Zeroizing::new(json_edit(current, &edit.set).map_err(|e| {
                AdapterError::permanent(format!(
                    "{} is not a JSON object ({e}); fix it or remove it",
                    self.path.display()
                ))
            })?),
        };
        if next.as_str() == current && self.target()?.exists() {
            return Ok(()); // idempotent: nothing to change
        }
        self.write(&next)
    }

    /// The value stored under this consumer's key, if any.
    fn stored(&self) -> Result<Option<Zeroizing<String>>> {
        let Some(text) = self.read()? else {
            return Ok(None);
        };
        Ok(match self.format {
            FileFormat::Raw => Some(text),
            FileFormat::Dotenv => {
                dotenv_get(&text, self.key.as_deref().unwrap_or_default()).map(Zeroizing::new)
            }
            FileFormat::Json => {
                json_get(&text, self.key.as_deref().unwrap_or_default()).map(Zeroizing::new)
            }
        })
    }

    fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("value")
    }
}

#[async_trait]
impl Consumer for File {
    async fn probe(&self) -> Result<String> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let meta = std::fs::metadata(dir).map_err(|e| {
            AdapterError::permanent(format!("directory {} is not there: {e}", dir.display()))
        })?;
        if !meta.is_dir() || meta.permissions().readonly() {
            return Err(AdapterError::permanent(format!(
                "{} is not a writable directory",
                dir.display()
            )));
        }
        match std::fs::metadata(&self.path) {
            Ok(m) if m.is_file() => Ok(format!("{} exists", self.path.display())),
            Ok(_) => Err(AdapterError::permanent(format!(
                "{} is not a regular file",
                self.path.display()
            ))),
            Err(_) => Ok(format!("{} will be created", self.path.display())),
        }
    }

    async fn apply(&self, d: &Delivery<'_>) -> Result<()> {
        let new = self.renderer.render(d.new)?;
        let prev = match (&self.previous_key, d.previous) {
            (Some(_), Some(p)) => Some(self.renderer.render(p)?),
            _ => None,
        };
        let mut set = vec![(self.key(), Some(new.as_str()))];
        if let Some(pk) = &self.previous_key {
            // Dual acceptance: readers that know `previous_key` accept either until revoke.
            // On a repeated apply the previous value stays what it was before this job.
            set.push((pk, prev.as_deref().map(|s| s.as_str())));
        }
        self.edit(&Edit { set })
    }

    async fn verify(&self, d: &Delivery<'_>) -> Result<()> {
        let want = self.renderer.render(d.new)?;
        match self.stored()? {
            Some(got) if same_secret(got.as_bytes(), want.as_bytes()) => Ok(()),
            Some(_) => Err(AdapterError::permanent(format!(
                "{} holds a different value under `{}`",
                self.path.display(),
                self.key()
            ))),
            None => Err(AdapterError::permanent(format!(
                "{} has no `{}`",
                self.path.display(),
                self.key()
            ))),
        }
    }

    async fn revoke_previous(&self, _: &Delivery<'_>) -> Result<()> {
        match &self.previous_key {
            Some(pk) => self.edit(&Edit {
                set: vec![(pk, None)],
            }),
            None => Ok(()),
        }
    }

    async fn rollback(&self, d: &Delivery<'_>) -> Result<()> {
        let prev = d.previous.map(|p| self.renderer.render(p)).transpose()?;
        let mut set = vec![(self.key(), prev.as_deref().map(|s| s.as_str()))];
        if let Some(pk) = &self.previous_key {
            set.push((pk, None));
        }
        self.edit(&Edit { set })
    }

    fn default_lock_key(&self) -> String {
        format!("file:{}", self.path.display())
    }
}

/// `KEY=value`, quoted when the value holds anything a shell or dotenv parser could misread.
fn dotenv_line(key: &str, value: &str) -> String {
    let plain = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-./:@%+=,~".contains(&b));
    if plain {
        format!("{key}={value}")
    } else {
        // Inside double quotes a shell still expands `$`, `` ` `` and `\`: escape all three
        // (and `"`), so sourcing the file runs nothing; newlines become `\n` as dotenv reads.
        let mut escaped = String::with_capacity(value.len() + 8);
        for c in value.chars() {
            match c {
                '\\' | '"' | '$' | '`' => {
                    escaped.push('\\');
                    escaped.push(c);
                }
                '\n' => escaped.push_str("\\n"),
                '\r' => escaped.push_str("\\r"),
                c => escaped.push(c),
            }
        }
        format!("{key}=\"{escaped}\"")
    }
}

/// The inverse of [`dotenv_line`]'s escaping, read in one pass (replacing escape by escape in
/// turn would misread `\\n`).
fn dotenv_unescape(inner: &str) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn dotenv_key(line: &str) -> Option<&str> {
    let l = line.trim_start();
    let l = l.strip_prefix("export ").unwrap_or(l);
    let (k, _) = l.split_once('=')?;
    let k = k.trim_end();
    (!k.is_empty() && !k.starts_with('#')).then_some(k)
}

/// Replaces, appends or removes only the given keys; every other line is kept as it was.
fn dotenv_edit(current: &str, set: &[(&str, Option<&str>)]) -> String {
    let mut out = String::with_capacity(current.len() + 128);
    let mut done: Vec<&str> = Vec::new();
    for line in current.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        match dotenv_key(body).and_then(|k| set.iter().find(|(key, _)| *key == k)) {
            Some((key, value)) => {
                if let Some(v) = value
                    && !done.contains(key)
                {
                    out.push_str(&dotenv_line(key, v));
                    out.push('\n');
                }
                done.push(key);
            }
            None => {
                out.push_str(body);
                out.push('\n');
            }
        }
    }
    if !current.is_empty() && !current.ends_with('\n') {
        out.pop(); // keep a missing final newline missing
        if set.iter().any(|(k, v)| v.is_some() && !done.contains(k)) {
            out.push('\n');
        }
    }
    for (key, value) in set {
        if let (Some(v), false) = (value, done.contains(key)) {
            out.push_str(&dotenv_line(key, v));
            out.push('\n');
        }
    }
    out
}

fn dotenv_get(text: &str, key: &str) -> Option<String> {
    let line = text.lines().rev().find(|l| dotenv_key(l) == Some(key))?;
    let (_, v) = line.split_once('=')?;
    let v = v.trim();
    Some(
        match v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some(inner) => dotenv_unescape(inner),
            None => v.to_string(),
        },
    )
}

/// Sets or removes only the given keys of a JSON object; other entries keep their exact text
/// and order.
fn json_edit(
    current: &str,
    set: &[(&str, Option<&str>)],
) -> std::result::Result<String, serde_json::Error> {
    let raw: Vec<(String, Box<RawValue>)> = if current.trim().is_empty() {
        Vec::new()
    } else {
        let m: indexmap_like::Ordered = serde_json::from_str(current)?;
        m.0
    };
    let mut entries: Vec<(String, String)> = raw
        .into_iter()
        .map(|(k, v)| (k, v.get().to_string()))
        .collect();
    for (key, value) in set {
        let pos = entries.iter().position(|(k, _)| k == key);
        match (value, pos) {
            (Some(v), Some(i)) => entries[i].1 = serde_json::to_string(v)?,
            (Some(v), None) => entries.push((key.to_string(), serde_json::to_string(v)?)),
            (None, Some(i)) => {
                entries.remove(i);
            }
            (None, None) => {}
        }
    }
    let mut out = String::from("{\n");
    for (i, (k, v)) in entries.iter().enumerate() {
        out.push_str("  ");
        out.push_str(&serde_json::to_string(k)?);
        out.push_str(": ");
        out.push_str(v);
        out.push_str(if i + 1 < entries.len() { ",\n" } else { "\n" });
    }
    out.push_str("}\n");
    Ok(out)
}

fn json_get(text: &str, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get(key)?.as_str().map(str::to_string)
}

/// An object read as ordered `(key, raw text)` pairs.
mod indexmap_like {
    use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;

    pub struct Ordered(pub Vec<(String, Box<RawValue>)>);

    impl<'de> Deserialize<'de> for Ordered {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered, A::Error> {
                    let mut out = Vec::new();
                    while let Some((k, v)) = m.next_entry::<String, Box<RawValue>>()? {
                        out.push((k, v));
                    }
                    Ok(Ordered(out))
                }
            }
            d.deserialize_map(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_edits_only_its_keys() {
        let before = "# config\nexport OTHER='x y'\nTOKEN=old\n\nLAST=1";
        let after = dotenv_edit(
            before,
            &[("TOKEN", Some("new")), ("TOKEN_PREVIOUS", Some("old"))],
        );
        assert_eq!(
            after,
            "# config\nexport OTHER='x y'\nTOKEN=new\n\nLAST=1\nTOKEN_PREVIOUS=old\n"
        );
        let removed = dotenv_edit(&after, &[("TOKEN_PREVIOUS", None)]);
        assert_eq!(
            removed,
            "# config\nexport OTHER='x y'\nTOKEN=new\n\nLAST=1\n"
        );
        assert_eq!(
            dotenv_edit("A=1\n", &[("A", Some("1"))]),
            "A=1\n",
            "idempotent"
        );
        assert_eq!(
            dotenv_get("A=1\nB=\"q\\\"uote $x\"\n", "B"),
            Some("q\"uote $x".into())
        );
        let quoted = dotenv_edit("", &[("B", Some("q\"uote $x"))]);
        assert_eq!(dotenv_get(&quoted, "B"), Some("q\"uote $x".into()));
    }

    /// Arbitrary values (every character a shell or dotenv treats specially, and some that
    /// no one does) written with `dotenv_line` read back as themselves, and a shell that
    /// sources the file gets the same value and runs nothing.
    #[test]
    fn dotenv_round_trips_arbitrary_values() {
        const ALPHABET: &[char] = &[
            'a', 'Z', '0', ' ', '\\', '"', '\'', '$', '`', '\n', '\r', '\t', '#', '=', '!', '{',
            '}', '(', ')', ';', '&', '|', '*', '?', 'n', 'r', 'é', '€', '-', '_',
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut values: Vec<String> = vec![
            String::new(),
            "\\n".into(),
            "\\\\n".into(),
            "a\\".into(),
            "`touch /tmp/velvet-pwned`".into(),
            "$(id)".into(),
        ];
        for _ in 0..3000 {
            let len = (next() % 24) as usize;
            values.push(
                (0..len)
                    .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                    .collect(),
            );
        }
        for v in &values {
            let file = dotenv_edit("OTHER=1\n", &[("K", Some(v))]);
            assert_eq!(
                dotenv_get(&file, "K").as_deref(),
                Some(v.as_str()),
                "{file:?}"
            );
            assert_eq!(dotenv_get(&file, "OTHER").as_deref(), Some("1"));
        }
        // What a shell makes of it, for values without line breaks (dotenv's `\n` is not a
        // shell's): one sh process for a few hundred values.
        let dir = tempfile::tempdir().unwrap();
        let sample: Vec<&String> = values
            .iter()
            .filter(|v| !v.contains('\n') && !v.contains('\r'))
            .take(300)
            .collect();
        let mut script = String::new();
        for (i, v) in sample.iter().enumerate() {
            let f = dir.path().join(format!("{i}.env"));
            std::fs::write(&f, dotenv_edit("", &[("K", Some(v))])).unwrap();
            script.push_str(&format!(". '{}'; printf '%s\\0' \"$K\"\n", f.display()));
        }
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split('\0')
            .map(str::to_string)
            .collect();
        for (i, v) in sample.iter().enumerate() {
            assert_eq!(&got[i], *v, "sourced value {i}");
        }
        assert!(!std::path::Path::new("/tmp/velvet-pwned").exists());
    }

    #[test]
    fn json_keeps_other_entries_byte_for_byte() {
        let before = r#"{"z": {"nested" : [1, 2.50, "x"]}, "TOKEN": "old", "a": 1e3}"#;
        let after = json_edit(before, &[("TOKEN", Some("new")), ("PREV", Some("old"))]).unwrap();
        assert!(
            after.contains(r#""z": {"nested" : [1, 2.50, "x"]}"#),
            "{after}"
        );
        assert!(after.contains(r#""a": 1e3"#), "{after}");
        assert_eq!(json_get(&after, "TOKEN"), Some("new".into()));
        let keys: Vec<_> = after
            .lines()
            .filter_map(|l| l.trim().split(':').next())
            .collect();
        assert_eq!(&keys[1..5], ["\"z\"", "\"TOKEN\"", "\"a\"", "\"PREV\""]);
        assert!(json_edit("[1]", &[("A", Some("b"))]).is_err());
    }
}
