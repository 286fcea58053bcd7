//! A small walker over the span-carrying YAML tree that collects every problem (with its path
//! and line) instead of stopping at the first, which is what `velvet validate` promises.

use super::Problem;
use marked_yaml::Span;
use marked_yaml::types::{MarkedMappingNode, Node};
use std::time::Duration;

/// Looks up environment variables; injected so tests need not touch the process environment.
pub type EnvLookup<'e> = &'e dyn Fn(&str) -> Option<String>;

pub(crate) struct Cx<'e> {
    pub problems: Vec<Problem>,
    pub env: EnvLookup<'e>,
    pub check_env: bool,
}

impl Cx<'_> {
    pub fn err(&mut self, path: &str, span: &Span, message: impl Into<String>) {
        let (line, column) = span
            .start()
            .map(|m| (Some(m.line()), Some(m.column())))
            .unwrap_or((None, None));
        self.problems.push(Problem {
            path: path.to_string(),
            line,
            column,
            message: message.into(),
        });
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn is_null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

/// A mapping whose keys were checked against the allowed set.
pub(crate) struct Map<'n> {
    pub node: &'n MarkedMappingNode,
    pub path: String,
}

impl<'n> Map<'n> {
    /// `None` (with a problem recorded) when `node` is not a mapping. Unknown keys are reported
    /// together with the keys that are allowed here.
    pub fn new(cx: &mut Cx, node: &'n Node, path: &str, allowed: &[&str]) -> Option<Self> {
        let Some(map) = node.as_mapping() else {
            cx.err(path, node.span(), "expected a mapping (key: value pairs)");
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                cx.err(
                    &join(path, key.as_str()),
                    key.span(),
                    format!(
                        "unknown key `{}`; allowed here: {}",
                        key.as_str(),
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(Self {
            node: map,
            path: path.to_string(),
        })
    }

    pub fn span(&self) -> &Span {
        self.node.span()
    }

    pub fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The node under `key`, treating YAML null as absent.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        let node = self.node.get_node(key)?;
        match node.as_scalar() {
            Some(s) if is_null(s.as_str()) => None,
            _ => Some(node),
        }
    }

    pub fn str(&self, cx: &mut Cx, key: &str) -> Option<String> {
        let node = self.get(key)?;
        match node.as_scalar() {
            Some(s) => Some(s.as_str().to_string()),
            None => {
                cx.err(
                    &self.path_of(key),
                    node.span(),
                    "expected a single value, not a list or mapping",
                );
                None
            }
        }
    }

    pub fn req_str(&self, cx: &mut Cx, key: &str) -> Option<String> {
        if self.get(key).is_none() {
            cx.err(
                &self.path_of(key),
                self.span(),
                format!("missing required key `{key}`"),
            );
            return None;
        }
        self.str(cx, key)
    }

    pub fn bool(&self, cx: &mut Cx, key: &str) -> Option<bool> {
        let s = self.str(cx, key)?;
        match s.as_str() {
            "true" | "yes" | "on" => Some(true),
            "false" | "no" | "off" => Some(false),
            _ => {
                let span = *self.get(key).expect("str returned Some").span();
                cx.err(
                    &self.path_of(key),
                    &span,
                    format!("`{s}` is not true or false"),
                );
                None
            }
        }
    }

    pub fn uint(&self, cx: &mut Cx, key: &str, min: u64, max: u64) -> Option<u64> {
        let s = self.str(cx, key)?;
        let span = *self.get(key).expect("str returned Some").span();
        match s.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                cx.err(
                    &self.path_of(key),
                    &span,
                    format!("`{s}` must be a whole number from {min} to {max}"),
                );
                None
            }
        }
    }

    pub fn duration(&self, cx: &mut Cx, key: &str) -> Option<Duration> {
        let s = self.str(cx, key)?;
        let span = *self.get(key).expect("str returned Some").span();
        match crate::duration::parse(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                cx.err(&self.path_of(key), &span, e.to_string());
                None
            }
        }
    }

    /// A list of strings; a single scalar is accepted as a one-item list.
    pub fn str_list(&self, cx: &mut Cx, key: &str) -> Option<Vec<String>> {
        let node = self.get(key)?;
        if let Some(s) = node.as_scalar() {
            return Some(vec![s.as_str().to_string()]);
        }
        let Some(seq) = node.as_sequence() else {
            cx.err(&self.path_of(key), node.span(), "expected a list of values");
            return None;
        };
        let mut out = Vec::with_capacity(seq.len());
        for (i, item) in seq.iter().enumerate() {
            match item.as_scalar() {
                Some(s) => out.push(s.as_str().to_string()),
                None => cx.err(
                    &format!("{}[{i}]", self.path_of(key)),
                    item.span(),
                    "expected a single value",
                ),
            }
        }
        Some(out)
    }

    /// The items of a list under `key`, each with its path.
    pub fn seq(&self, cx: &mut Cx, key: &str) -> Vec<(String, &'n Node)> {
        let Some(node) = self.get(key) else {
            return Vec::new();
        };
        let Some(seq) = node.as_sequence() else {
            cx.err(&self.path_of(key), node.span(), "expected a list");
            return Vec::new();
        };
        seq.iter()
            .enumerate()
            .map(|(i, n)| (format!("{}[{i}]", self.path_of(key)), n))
            .collect()
    }

    /// A `*_env` field: the name of an environment variable that must hold a secret. The
    /// variable's value is never read into the config, only its presence checked.
    pub fn env_name(&self, cx: &mut Cx, key: &str, required: bool) -> Option<String> {
        let name = if required {
            self.req_str(cx, key)?
        } else {
            self.str(cx, key)?
        };
        let span = *self.get(key).expect("present").span();
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            cx.err(
                &self.path_of(key),
                &span,
                format!("`{name}` is not an environment variable name (letters, digits, _)"),
            );
            return None;
        }
        if cx.check_env && (cx.env)(&name).is_none_or(|v| v.is_empty()) {
            cx.err(
                &self.path_of(key),
                &span,
                format!(
                    "environment variable `{name}` is not set; export it before starting Velvet"
                ),
            );
        }
        Some(name)
    }

    /// One of a fixed set of words.
    pub fn choice<T: Copy>(&self, cx: &mut Cx, key: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.str(cx, key)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == s) {
            return Some(*v);
        }
        let span = *self.get(key).expect("present").span();
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        cx.err(
            &self.path_of(key),
            &span,
            format!("`{s}` is not one of: {}", names.join(", ")),
        );
        None
    }
}

/// Token and consumer names: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}
