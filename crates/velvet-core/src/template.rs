//! Value templates such as `postgres://{{username}}:{{password | urlencode}}@db:5432/app`.

use crate::secret::SecretValue;
use zeroize::Zeroizing;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field { name: String, urlencode: bool },
}

/// A parsed template: literal text and `{{field}}` / `{{field | urlencode}}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| "a `{{` has no matching `}}`".to_string())?;
            let inner = after[..end].trim();
            let (name, filter) = match inner.split_once('|') {
                Some((n, f)) => (n.trim(), Some(f.trim())),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`{{{{{inner}}}}}` does not name a field"));
            }
            let urlencode = match filter {
                None => false,
                Some("urlencode") => true,
                Some(other) => {
                    return Err(format!(
                        "unknown filter `{other}`; the only filter is `urlencode`"
                    ));
                }
            };
            parts.push(Part::Field {
                name: name.to_string(),
                urlencode,
            });
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// The fields the template reads.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field { name, .. } => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Renders with the value's fields; `None` names a field the value lacks.
    pub fn render(&self, value: &SecretValue) -> Result<Zeroizing<String>, String> {
        let mut out = Zeroizing::new(String::new());
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Field { name, urlencode } => {
                    let v = value
                        .get(name)
                        .ok_or_else(|| format!("the value has no field `{name}`"))?;
                    if *urlencode {
                        for b in v.expose().bytes() {
                            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                                out.push(b as char);
                            } else {
                                out.push_str(&format!("%{b:02X}"));
                            }
                        }
                    } else {
                        out.push_str(v.expose());
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;
    use std::collections::BTreeMap;

    #[test]
    fn renders_fields_with_urlencode() {
        let t =
            Template::parse("postgres://{{username}}:{{ password | urlencode }}@db/app").unwrap();
        let mut m = BTreeMap::new();
        m.insert("username".into(), SecretString::new("app_a".into()));
        m.insert("password".into(), SecretString::new("p@ss/w:rd".into()));
        let out = t.render(&SecretValue::from_fields(m)).unwrap();
        assert_eq!(&*out, "postgres://app_a:p%40ss%2Fw%3Ard@db/app");
        assert_eq!(t.fields().collect::<Vec<_>>(), ["username", "password"]);
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(Template::parse("{{value").is_err());
        assert!(Template::parse("{{}}").is_err());
        assert!(
            Template::parse("{{value | upper}}")
                .unwrap_err()
                .contains("urlencode")
        );
        let t = Template::parse("{{nope}}").unwrap();
        assert!(t.render(&SecretValue::single("x".into())).is_err());
    }
}
