//! `file`: a raw, dotenv or JSON file. Writes are atomic (temp file, fsync, rename) with the
//! declared mode; only `key` and `previous_key` are ever written or removed, and every other
//! line (dotenv) or entry (JSON) is kept byte for byte.

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
    ) -> Self {
        Self {
            path,
            format,
            key,
            previous_key,
            renderer,
            mode,
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
        match std::fs::read_to_string(&self.path) {
            Ok(s) => Ok(Some(Zeroizing::new(s))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error("reading", e)),
        }
    }

    fn write(&self, text: &str) -> Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(AdapterError::permanent(format!(
                "directory {} does not exist",
                dir.display()
            )));
        }
        velvet_core::fs::write_atomic(&self.path, text.as_bytes(), self.mode)
            .map_err(|e| self.io_error("writing", e))
    }

    /// Applies `edit` to the file's current text.
    fn edit(&self, edit: &Edit) -> Result<()> {
        let current = self.read()?;
        let current = current.as_deref().map(|s| s.as_str()).unwrap_or("");
        let next = match self.format {
            FileFormat::Raw => match edit.set.first() {
                Some((_, Some(v))) => Zeroizing::new(v.to_string()),
                _ => {
                    return match std::fs::remove_file(&self.path) {
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
        if next.as_str() == current && self.path.exists() {
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
        let escaped = value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('$', "\\$")
            .replace('\n', "\\n");
        format!("{key}=\"{escaped}\"")
    }
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
            Some(inner) => inner
                .replace("\\n", "\n")
                .replace("\\$", "$")
                .replace("\\\"", "\"")
                .replace("\\\\", "\\"),
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
