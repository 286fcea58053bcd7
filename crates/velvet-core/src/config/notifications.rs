//! `notifications` (design §11): channels that tell people what needs them, each mistake named.
//! Secrets (SMTP password, Slack URL, signing secret) are `*_env` names, as everywhere.

use super::consumers::check_http_url;
use super::decode::{Cx, Map, valid_name};
use super::spec::{GateMatch, TokenSpec};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;

/// Events a channel can be told of.
pub const EVENTS: &[&str] = &[
    "failed",
    "awaiting_confirmation",
    "awaiting_approval",
    "succeeded",
    "overdue",
    "due_soon",
    "drift",
    "stale",
    "schedule_missed",
];

/// How often a standing state (`overdue`, `due_soon`, `drift`, `stale`) is told again.
pub const NOTIFY_REPEAT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (the default; port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a loopback host.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpSpec {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username_env: Option<String>,
    pub password_env: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChannelKind {
    Email {
        smtp: SmtpSpec,
        from: String,
        to: Vec<String>,
    },
    Slack {
        url_env: String,
    },
    Webhook {
        url: String,
        signing_secret_env: String,
    },
}

impl ChannelKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Email { .. } => "email",
            Self::Slack { .. } => "slack",
            Self::Webhook { .. } => "webhook",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSpec {
    pub name: String,
    pub on: Vec<String>,
    /// Only these tokens (none: every token).
    pub matches: Option<GateMatch>,
    pub kind: ChannelKind,
}

impl ChannelSpec {
    /// Whether this channel wants `event` about `token` (`None`: a token no longer declared).
    pub fn wants(&self, event: &str, token: Option<&TokenSpec>) -> bool {
        self.on.iter().any(|e| e == event)
            && match (&self.matches, token) {
                (None, _) => true,
                (Some(m), Some(t)) => m.matches(t),
                (Some(_), None) => false,
            }
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A plausible mail address: one `@` with something on both sides, no spaces or angle brackets.
fn is_address(a: &str) -> bool {
    let Some((local, domain)) = a.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !a
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '<' | '>' | ',' | ';'))
}

fn decode_smtp(cx: &mut Cx, c: &Map) -> Option<SmtpSpec> {
    let Some(node) = c.get("smtp") else {
        cx.err(
            &c.path_of("smtp"),
            c.span(),
            "missing required key `smtp` ({host, port, tls, username_env, password_env})",
        );
        return None;
    };
    let s = Map::new(
        cx,
        node,
        &c.path_of("smtp"),
        &["host", "port", "tls", "username_env", "password_env"],
    )?;
    let host = s.req_str(cx, "host");
    let tls = s
        .choice(
            cx,
            "tls",
            &[
                ("starttls", SmtpTls::Starttls),
                ("tls", SmtpTls::Tls),
                ("none", SmtpTls::None),
            ],
        )
        .unwrap_or(SmtpTls::Starttls);
    let port = s
        .uint(cx, "port", 1, 65535)
        .map(|p| p as u16)
        .unwrap_or(match tls {
            SmtpTls::Tls => 465,
            _ => 587,
        });
    if let Some(h) = &host
        && tls == SmtpTls::None
        && !is_loopback(h)
    {
        cx.err(
            &s.path_of("tls"),
            s.span(),
            format!("`none` sends mail (and the SMTP password) unencrypted, so it is allowed only for a loopback host, not `{h}`; use starttls or tls"),
        );
    }
    let username_env = s.env_name(cx, "username_env", false);
    let password_env = s.env_name(cx, "password_env", false);
    if username_env.is_some() != password_env.is_some() {
        cx.err(
            &s.path,
            s.span(),
            "give both `username_env` and `password_env`, or neither",
        );
    }
    Some(SmtpSpec {
        host: host?,
        port,
        tls,
        username_env,
        password_env,
    })
}

fn decode_email(cx: &mut Cx, c: &Map) -> Option<ChannelKind> {
    let smtp = decode_smtp(cx, c);
    let from = c.req_str(cx, "from");
    if let Some(f) = &from
        && !is_address(f)
    {
        cx.err(
            &c.path_of("from"),
            c.span(),
            format!("`{f}` is not a mail address"),
        );
    }
    let to = c.str_list(cx, "to").unwrap_or_default();
    if to.is_empty() {
        cx.err(
            &c.path_of("to"),
            c.span(),
            "give at least one address to send to",
        );
    }
    for a in &to {
        if a == "approvers" {
            cx.err(&c.path_of("to"), c.span(), "`approvers` needs operators' confirmed email addresses, which Velvet does not keep yet; list the addresses");
        } else if !is_address(a) {
            cx.err(
                &c.path_of("to"),
                c.span(),
                format!("`{a}` is not a mail address"),
            );
        }
    }
    Some(ChannelKind::Email {
        smtp: smtp?,
        from: from?,
        to,
    })
}

/// `notifications`: the channels, each with the events it is told of.
pub(super) fn decode_notifications(cx: &mut Cx, root: &Map) -> Vec<ChannelSpec> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (path, node) in root.seq(cx, "notifications") {
        let kind = node
            .as_mapping()
            .and_then(|m| m.get("kind"))
            .and_then(|k| k.as_scalar())
            .map(|s| s.as_str().to_string());
        let extra: &[&str] = match kind.as_deref() {
            Some("email") => &["smtp", "from", "to"],
            Some("slack") => &["url_env"],
            Some("webhook") => &["url", "signing_secret_env"],
            _ => &[],
        };
        let allowed: Vec<&str> = ["name", "kind", "on", "match"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let Some(c) = Map::new(cx, node, &path, &allowed) else {
            continue;
        };
        let name = c.req_str(cx, "name");
        if let Some(n) = &name {
            if !valid_name(n) {
                cx.err(
                    &c.path_of("name"),
                    c.span(),
                    format!("`{n}` is not a valid channel name"),
                );
            } else if !seen.insert(n.clone()) {
                cx.err(
                    &c.path_of("name"),
                    c.span(),
                    format!("channel `{n}` is declared twice"),
                );
            }
        }
        let on = c.str_list(cx, "on").unwrap_or_default();
        if on.is_empty() {
            cx.err(
                &c.path_of("on"),
                c.span(),
                format!("list the events to send: {}", EVENTS.join(", ")),
            );
        }
        for e in &on {
            if !EVENTS.contains(&e.as_str()) {
                cx.err(
                    &c.path_of("on"),
                    c.span(),
                    format!("unknown event `{e}`; events: {}", EVENTS.join(", ")),
                );
            }
        }
        let matches = c.get("match").and_then(|m| {
            let m = Map::new(cx, m, &c.path_of("match"), &["tags", "tokens"])?;
            Some(GateMatch {
                tags: m.str_list(cx, "tags").unwrap_or_default(),
                tokens: m.str_list(cx, "tokens").unwrap_or_default(),
            })
        });
        let kind = match kind.as_deref() {
            Some("email") => decode_email(cx, &c),
            Some("slack") => c
                .env_name(cx, "url_env", true)
                .map(|url_env| ChannelKind::Slack { url_env }),
            Some("webhook") => {
                let url = c
                    .req_str(cx, "url")
                    .filter(|u| check_http_url(cx, &c, "url", u));
                let secret = c.env_name(cx, "signing_secret_env", true);
                url.zip(secret)
                    .map(|(url, signing_secret_env)| ChannelKind::Webhook {
                        url,
                        signing_secret_env,
                    })
            }
            Some(k) => {
                cx.err(
                    &c.path_of("kind"),
                    c.span(),
                    format!("unknown channel kind `{k}`; kinds: email, slack, webhook"),
                );
                None
            }
            None => {
                cx.err(
                    &c.path_of("kind"),
                    c.span(),
                    "missing required key `kind` (email, slack or webhook)",
                );
                None
            }
        };
        if let (Some(name), Some(kind)) = (name, kind) {
            out.push(ChannelSpec {
                name,
                on,
                matches,
                kind,
            });
        }
    }
    out
}
