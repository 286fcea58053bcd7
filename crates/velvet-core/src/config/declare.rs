//! Decoding and checking the declarations of `velvet.yaml`: every problem is recorded with its
//! path and line, and decoding goes on so that all of them are reported at once.

use super::decode::{Cx, Map, valid_name};
use super::sources::decode_source;
use super::spec::*;
use crate::template::Template;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(super) fn decode_retry(cx: &mut Cx, map: &Map, base: &RetryPolicy) -> RetryPolicy {
    let Some(node) = map.get("retry") else {
        return base.clone();
    };
    let path = map.path_of("retry");
    let Some(r) = Map::new(
        cx,
        node,
        &path,
        &["attempts", "initial_backoff", "max_backoff"],
    ) else {
        return base.clone();
    };
    let policy = RetryPolicy {
        attempts: r
            .uint(cx, "attempts", 1, 100)
            .map(|n| n as u32)
            .unwrap_or(base.attempts),
        initial_backoff: r
            .duration(cx, "initial_backoff")
            .unwrap_or(base.initial_backoff),
        max_backoff: r.duration(cx, "max_backoff").unwrap_or(base.max_backoff),
    };
    if policy.initial_backoff > policy.max_backoff {
        cx.err(
            &path,
            r.span(),
            "initial_backoff is longer than max_backoff",
        );
    }
    policy
}

pub(super) fn decode_defaults(cx: &mut Cx, root: &Map) -> Defaults {
    let builtin = Defaults::builtin();
    let Some(node) = root.get("defaults") else {
        return builtin;
    };
    let Some(d) = Map::new(cx, node, "defaults", &["flow", "grace_period", "retry"]) else {
        return builtin;
    };
    Defaults {
        flow: d.choice(cx, "flow", FlowType::ALL).unwrap_or(builtin.flow),
        grace_period: d
            .duration(cx, "grace_period")
            .unwrap_or(builtin.grace_period),
        retry: decode_retry(cx, &d, &builtin.retry),
    }
}

pub(super) fn decode_engine(cx: &mut Cx, root: &Map) -> EngineConfig {
    let mut engine = EngineConfig {
        concurrency: 64,
        per_lock_key: 1,
        lease: Duration::from_secs(30),
    };
    if let Some(node) = root.get("engine")
        && let Some(e) = Map::new(
            cx,
            node,
            "engine",
            &["concurrency", "per_lock_key", "lease"],
        )
    {
        if let Some(n) = e.uint(cx, "concurrency", 1, 10_000) {
            engine.concurrency = n as usize;
        }
        if let Some(n) = e.uint(cx, "per_lock_key", 1, 1_000) {
            engine.per_lock_key = n as usize;
        }
        if let Some(d) = e.duration(cx, "lease") {
            if d < Duration::from_secs(5) {
                cx.err(
                    "engine.lease",
                    e.get("lease").expect("present").span(),
                    "must be at least 5s so a busy replica can renew in time",
                );
            } else {
                engine.lease = d;
            }
        }
    }
    engine
}

const TOKEN_KEYS: &[&str] = &[
    "name",
    "description",
    "tags",
    "flow",
    "grace_period",
    "retry",
    "source",
    "rotate_every",
    "consumers",
];

pub(super) fn decode_tokens(
    cx: &mut Cx,
    root: &Map,
    defaults: &Defaults,
    base_dir: &Path,
) -> Vec<TokenSpec> {
    let mut tokens = Vec::new();
    let mut seen = HashSet::new();
    for (path, node) in root.seq(cx, "tokens") {
        let Some(t) = Map::new(cx, node, &path, TOKEN_KEYS) else {
            continue;
        };
        let name = t.req_str(cx, "name");
        if let Some(n) = &name {
            let span = *t.get("name").expect("present").span();
            if !valid_name(n) {
                cx.err(&t.path_of("name"), &span, format!("`{n}` is not a valid token name: start with a letter or digit, then letters, digits, `_`, `.`, `-` (at most 128)"));
            } else if !seen.insert(n.clone()) {
                cx.err(
                    &t.path_of("name"),
                    &span,
                    format!("token `{n}` is declared twice"),
                );
            }
        }
        let source = match t.get("source") {
            Some(s) => decode_source(cx, s, &t.path_of("source")),
            None => {
                cx.err(
                    &t.path_of("source"),
                    t.span(),
                    "missing required key `source`",
                );
                None
            }
        };
        let rotate_every = t.duration(cx, "rotate_every");
        if let Some(d) = rotate_every
            && d < Duration::from_secs(60)
        {
            cx.err(
                &t.path_of("rotate_every"),
                t.get("rotate_every").expect("present").span(),
                "must be at least 1m",
            );
        }
        let fields = source.as_ref().map(SourceSpec::fields).unwrap_or(&[]);
        let consumers = decode_consumers(cx, &t, fields, base_dir);
        let spec = TokenSpec {
            name: name.unwrap_or_default(),
            description: t.str(cx, "description").unwrap_or_default(),
            tags: t.str_list(cx, "tags").unwrap_or_default(),
            flow: t.choice(cx, "flow", FlowType::ALL).unwrap_or(defaults.flow),
            grace_period: t
                .duration(cx, "grace_period")
                .unwrap_or(defaults.grace_period),
            retry: decode_retry(cx, &t, &defaults.retry),
            rotate_every,
            consumers,
            source: match source {
                Some(s) => s,
                None => continue,
            },
        };
        tokens.push(spec);
    }
    tokens
}

fn decode_consumers(
    cx: &mut Cx,
    token: &Map,
    fields: &[&str],
    base_dir: &Path,
) -> Vec<ConsumerSpec> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (path, node) in token.seq(cx, "consumers") {
        let Some(map) = node.as_mapping() else {
            cx.err(
                &path,
                node.span(),
                "expected a mapping with `name` and `kind`",
            );
            continue;
        };
        let kind = map.get_scalar("kind").map(|s| s.as_str().to_string());
        let specific: &[&str] = match kind.as_deref() {
            Some("file") => &[
                "path",
                "format",
                "key",
                "previous_key",
                "template",
                "mode",
                "follow_symlinks",
            ],
            Some("exec") => &["command", "verify_command", "timeout", "env"],
            Some("webhook") => &["url", "signing_secret_env", "verify", "timeout"],
            Some("vault_kv") => &[
                "address",
                "token_env",
                "mount",
                "path",
                "field",
                "previous_field",
            ],
            Some("heroku_config_var") => &[
                "app",
                "key",
                "previous_key",
                "api_key_env",
                "api_url",
                "template",
            ],
            Some(k) if LATER_CONSUMERS.contains(&k) => {
                cx.err(&format!("{path}.kind"), node.span(), format!("consumer kind `{k}` is not available in this version; available: file, exec, webhook, vault_kv, heroku_config_var"));
                continue;
            }
            Some(k) => {
                cx.err(
                    &format!("{path}.kind"),
                    node.span(),
                    format!(
                        "unknown consumer kind `{k}`; available: file, exec, webhook, vault_kv, heroku_config_var"
                    ),
                );
                continue;
            }
            None => {
                cx.err(
                    &format!("{path}.kind"),
                    node.span(),
                    "missing required key `kind` (file, exec, webhook, vault_kv or heroku_config_var)",
                );
                continue;
            }
        };
        let allowed: Vec<&str> = ["name", "kind", "lock_key"]
            .iter()
            .chain(specific)
            .copied()
            .collect();
        let Some(c) = Map::new(cx, node, &path, &allowed) else {
            continue;
        };
        let name = c.req_str(cx, "name");
        if let Some(n) = &name {
            let span = *c.get("name").expect("present").span();
            if !valid_name(n) {
                cx.err(
                    &c.path_of("name"),
                    &span,
                    format!("`{n}` is not a valid consumer name (letters, digits, `_`, `.`, `-`)"),
                );
            } else if !seen.insert(n.clone()) {
                cx.err(
                    &c.path_of("name"),
                    &span,
                    format!("consumer `{n}` is declared twice in this token"),
                );
            }
        }
        let lock_key = c.str(cx, "lock_key");
        let decoded = match kind.as_deref() {
            Some("file") => decode_file(cx, &c, fields, base_dir),
            Some("exec") => decode_exec(cx, &c, fields),
            Some("webhook") => decode_webhook(cx, &c),
            Some("vault_kv") => decode_vault(cx, &c),
            Some("heroku_config_var") => decode_heroku(cx, &c, fields),
            _ => None,
        };
        if let (Some(name), Some(kind)) = (name, decoded) {
            out.push(ConsumerSpec {
                name,
                lock_key,
                kind,
            });
        }
    }
    out
}

/// The consumer's `template`, checked, and required when the source's value has several fields
/// (a consumer that stores one text must be told how to write them).
fn template_for(cx: &mut Cx, c: &Map, fields: &[&str]) -> Option<String> {
    let template = check_template(cx, c, "template", fields);
    if template.is_none() && fields.len() > 1 {
        cx.err(&c.path_of("template"), c.span(), format!("this source's value has several fields ({}); say how to write them with `template`, e.g. \"{{{{username}}}}:{{{{password}}}}\"", fields.join(", ")));
    }
    template
}

fn check_template(cx: &mut Cx, c: &Map, key: &str, fields: &[&str]) -> Option<String> {
    let t = c.str(cx, key)?;
    match Template::parse(&t) {
        Ok(parsed) => {
            for f in parsed.fields() {
                if !fields.contains(&f) {
                    cx.err(
                        &c.path_of(key),
                        c.get(key).expect("present").span(),
                        format!(
                            "`{{{{{f}}}}}` is not a field of this source's value; available: {}",
                            fields.join(", ")
                        ),
                    );
                }
            }
        }
        Err(e) => cx.err(&c.path_of(key), c.get(key).expect("present").span(), e),
    }
    Some(t)
}

fn decode_file(cx: &mut Cx, c: &Map, fields: &[&str], base_dir: &Path) -> Option<ConsumerKind> {
    let path = c.req_str(cx, "path").map(|p| {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { base_dir.join(p) }
    });
    let format = c
        .choice(
            cx,
            "format",
            &[
                ("raw", FileFormat::Raw),
                ("dotenv", FileFormat::Dotenv),
                ("json", FileFormat::Json),
            ],
        )
        .unwrap_or(FileFormat::Raw);
    let key = c.str(cx, "key");
    let previous_key = c.str(cx, "previous_key");
    match format {
        FileFormat::Raw => {
            for k in ["key", "previous_key"] {
                if c.get(k).is_some() {
                    cx.err(
                        &c.path_of(k),
                        c.span(),
                        format!(
                            "`{k}` needs format dotenv or json; a raw file holds only the value"
                        ),
                    );
                }
            }
        }
        FileFormat::Dotenv | FileFormat::Json => {
            if key.is_none() {
                cx.err(
                    &c.path_of("key"),
                    c.span(),
                    "missing required key `key`: the entry this consumer owns in the file",
                );
            }
            for k in [&key, &previous_key].into_iter().flatten() {
                let bad = if format == FileFormat::Dotenv {
                    k.is_empty() || !k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                } else {
                    k.is_empty()
                };
                if bad {
                    cx.err(
                        &c.path_of("key"),
                        c.span(),
                        format!(
                            "`{k}` is not a valid {} key",
                            if format == FileFormat::Dotenv {
                                "dotenv"
                            } else {
                                "JSON"
                            }
                        ),
                    );
                }
            }
            if key.is_some() && key == previous_key {
                cx.err(
                    &c.path_of("previous_key"),
                    c.span(),
                    "previous_key must differ from key",
                );
            }
        }
    }
    let template = template_for(cx, c, fields);
    let mode = match c.str(cx, "mode") {
        Some(m) => match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
            Ok(v) if v <= 0o777 && v & 0o007 == 0 => v,
            _ => {
                cx.err(&c.path_of("mode"), c.span(), format!("`{m}` must be an octal mode such as 0600 or 0640, with no access for others"));
                0o600
            }
        },
        None => 0o600,
    };
    let follow_symlinks = c.bool(cx, "follow_symlinks").unwrap_or(false);
    Some(ConsumerKind::File {
        path: path?,
        format,
        key,
        previous_key,
        template,
        mode,
        follow_symlinks,
    })
}

fn command(cx: &mut Cx, c: &Map, key: &str, required: bool) -> Option<Vec<String>> {
    let present = c.get(key).is_some();
    if !present {
        if required {
            cx.err(
                &c.path_of(key),
                c.span(),
                format!("missing required key `{key}` (a list: [program, arg, …])"),
            );
        }
        return None;
    }
    let argv = c.str_list(cx, key)?;
    if argv.is_empty() || argv[0].is_empty() {
        cx.err(&c.path_of(key), c.span(), "the command is empty");
        return None;
    }
    Some(argv)
}

fn decode_exec(cx: &mut Cx, c: &Map, fields: &[&str]) -> Option<ConsumerKind> {
    let command = command(cx, c, "command", true);
    let verify_command = command_opt(cx, c);
    let timeout = c.duration(cx, "timeout").unwrap_or(Duration::from_secs(30));
    let env = exec_env(cx, c, fields);
    Some(ConsumerKind::Exec {
        command: command?,
        verify_command,
        timeout,
        env,
    })
}

/// `env: {NAME: "{{field}}" | literal}`: the only variables besides PATH, HOME and LANG that an
/// `exec` command sees (design §10).
fn exec_env(cx: &mut Cx, c: &Map, fields: &[&str]) -> Vec<(String, String)> {
    let Some(node) = c.get("env") else {
        return vec![];
    };
    let path = c.path_of("env");
    let Some(map) = node.as_mapping() else {
        cx.err(
            &path,
            node.span(),
            "expected a mapping of variable names to values, e.g. {PGUSER: \"{{username}}\"}",
        );
        return vec![];
    };
    let mut out = vec![];
    for (k, v) in map.iter() {
        let name = k.as_str();
        let at = super::decode::join(&path, name);
        let valid = !name.is_empty()
            && !name.starts_with(|ch: char| ch.is_ascii_digit())
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !valid {
            cx.err(
                &at,
                k.span(),
                format!("`{name}` is not an environment variable name (letters, digits, `_`)"),
            );
            continue;
        }
        let Some(text) = v.as_scalar().map(|s| s.as_str().to_string()) else {
            cx.err(
                &at,
                v.span(),
                "expected a single value: a literal or a template such as \"{{password}}\"",
            );
            continue;
        };
        match Template::parse(&text) {
            Ok(t) => {
                for f in t.fields() {
                    if !fields.contains(&f) {
                        cx.err(&at, v.span(), format!("`{{{{{f}}}}}` is not a field of this source's value; available: {}", fields.join(", ")));
                    }
                }
                out.push((name.to_string(), text));
            }
            Err(e) => cx.err(&at, v.span(), e),
        }
    }
    out
}

fn command_opt(cx: &mut Cx, c: &Map) -> Option<Vec<String>> {
    command(cx, c, "verify_command", false)
}

fn check_http_url(cx: &mut Cx, c: &Map, key: &str, url: &str) -> bool {
    let ok = (url.starts_with("http://") || url.starts_with("https://")) && url.len() > 8;
    if !ok {
        cx.err(
            &c.path_of(key),
            c.span(),
            format!("`{url}` is not an http:// or https:// URL"),
        );
    }
    ok
}

fn decode_webhook(cx: &mut Cx, c: &Map) -> Option<ConsumerKind> {
    let url = c
        .req_str(cx, "url")
        .filter(|u| check_http_url(cx, c, "url", u));
    let signing_secret_env = c.env_name(cx, "signing_secret_env", true);
    let timeout = c.duration(cx, "timeout").unwrap_or(Duration::from_secs(10));
    let mut probe = None;
    if let Some(node) = c.get("verify")
        && let Some(v) = Map::new(cx, node, &c.path_of("verify"), &["probe"])
        && let Some(pnode) = v.get("probe")
        && let Some(p) = Map::new(
            cx,
            pnode,
            &v.path_of("probe"),
            &["url", "header", "expect_status"],
        )
    {
        let url = p
            .req_str(cx, "url")
            .filter(|u| check_http_url(cx, &p, "url", u));
        let header = p.str(cx, "header");
        if let Some(h) = &header {
            match h.split_once(':') {
                Some((name, _)) if !name.trim().is_empty() && !name.contains(' ') => {
                    check_template(cx, &p, "header", &["value"]);
                }
                _ => cx.err(
                    &p.path_of("header"),
                    p.span(),
                    "expected `Name: value`, e.g. \"Authorization: Bearer {{value}}\"",
                ),
            }
        }
        let expect_status = p.uint(cx, "expect_status", 100, 599).unwrap_or(200) as u16;
        probe = url.map(|url| ProbeSpec {
            url,
            header,
            expect_status,
        });
    }
    Some(ConsumerKind::Webhook {
        url: url?,
        signing_secret_env: signing_secret_env?,
        probe,
        timeout,
    })
}

/// Heroku's keys are `^\w+$` and must not start with `__` or `HEROKU_` (its own).
fn check_heroku_key(cx: &mut Cx, c: &Map, key: &str, k: &str) -> bool {
    let ok = !k.is_empty()
        && k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !k.starts_with("__")
        && !k.starts_with("HEROKU_");
    if !ok {
        cx.err(&c.path_of(key), c.span(), format!("`{k}` is not a Heroku config var name (letters, digits and _, not starting with __ or HEROKU_)"));
    }
    ok
}

fn decode_heroku(cx: &mut Cx, c: &Map, fields: &[&str]) -> Option<ConsumerKind> {
    let app = c.req_str(cx, "app");
    if let Some(a) = &app
        && (a.is_empty()
            || a.len() > 64
            || !a
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-'))
    {
        cx.err(
            &c.path_of("app"),
            c.span(),
            format!("`{a}` is not a Heroku app name or id (lowercase letters, digits and -)"),
        );
    }
    let key = c
        .req_str(cx, "key")
        .filter(|k| check_heroku_key(cx, c, "key", k));
    let previous_key = c
        .str(cx, "previous_key")
        .filter(|k| check_heroku_key(cx, c, "previous_key", k));
    if let (Some(k), Some(p)) = (&key, &previous_key)
        && k == p
    {
        cx.err(
            &c.path_of("previous_key"),
            c.span(),
            "must differ from `key`",
        );
    }
    let api_key_env = c.env_name(cx, "api_key_env", true);
    let api_url = c
        .str(cx, "api_url")
        .unwrap_or_else(|| "https://api.heroku.com".into());
    check_http_url(cx, c, "api_url", &api_url);
    let template = template_for(cx, c, fields);
    Some(ConsumerKind::HerokuConfigVar {
        app: app?,
        key: key?,
        previous_key,
        api_key_env: api_key_env?,
        api_url: api_url.trim_end_matches('/').to_string(),
        template,
    })
}

fn decode_vault(cx: &mut Cx, c: &Map) -> Option<ConsumerKind> {
    let address = c
        .req_str(cx, "address")
        .filter(|u| check_http_url(cx, c, "address", u));
    let token_env = c.env_name(cx, "token_env", true);
    let mount = c.str(cx, "mount").unwrap_or_else(|| "secret".into());
    let path = c.req_str(cx, "path");
    let field = c.req_str(cx, "field");
    let previous_field = c.str(cx, "previous_field");
    if let Some(p) = &path
        && (p.starts_with('/') || p.contains("//") || p.is_empty())
    {
        cx.err(
            &c.path_of("path"),
            c.span(),
            format!("`{p}` must be a relative KV path like `app/prod`"),
        );
    }
    Some(ConsumerKind::VaultKv {
        address: address?,
        token_env: token_env?,
        mount,
        path: path?,
        field: field?,
        previous_field,
    })
}

pub(super) fn decode_gates(cx: &mut Cx, root: &Map) -> Vec<GateSpec> {
    let mut gates = Vec::new();
    let mut seen = HashSet::new();
    for (path, node) in root.seq(cx, "revocation_gates") {
        let Some(g) = Map::new(
            cx,
            node,
            &path,
            &["name", "match", "require", "allow_force"],
        ) else {
            continue;
        };
        let name = g.req_str(cx, "name");
        if let Some(n) = &name
            && !seen.insert(n.clone())
        {
            cx.err(
                &g.path_of("name"),
                g.span(),
                format!("gate `{n}` is declared twice"),
            );
        }
        let mut matches = GateMatch {
            tags: vec![],
            tokens: vec![],
        };
        match g.get("match") {
            Some(m) => {
                if let Some(m) = Map::new(cx, m, &g.path_of("match"), &["tags", "tokens"]) {
                    matches.tags = m.str_list(cx, "tags").unwrap_or_default();
                    matches.tokens = m.str_list(cx, "tokens").unwrap_or_default();
                    if matches.tags.is_empty() && matches.tokens.is_empty() {
                        cx.err(
                            &m.path,
                            m.span(),
                            "a gate must match some `tags` or `tokens` (globs)",
                        );
                    }
                }
            }
            None => cx.err(
                &g.path_of("match"),
                g.span(),
                "missing required key `match`",
            ),
        }
        let mut require = GateRequire {
            totp: false,
            approvals: 0,
            roles: vec![],
        };
        if let Some(r) = g.get("require")
            && let Some(r) = Map::new(
                cx,
                r,
                &g.path_of("require"),
                &["totp", "approvals", "roles"],
            )
        {
            require.totp = r.bool(cx, "totp").unwrap_or(false);
            require.approvals = r.uint(cx, "approvals", 0, 10).unwrap_or(0) as u32;
            require.roles = r.str_list(cx, "roles").unwrap_or_default();
            for role in &require.roles {
                if !ROLES.contains(&role.as_str()) {
                    cx.err(
                        &r.path_of("roles"),
                        r.span(),
                        format!("unknown role `{role}`; roles: {}", ROLES.join(", ")),
                    );
                }
            }
            if !require.roles.is_empty()
                && !require
                    .roles
                    .iter()
                    .any(|r| REVOKE_ROLES.contains(&r.as_str()))
            {
                cx.err(&r.path_of("roles"), r.span(), format!("no listed role can revoke, so this gate could never pass; include one of: {}", REVOKE_ROLES.join(", ")));
            }
        }
        let allow_force = g.bool(cx, "allow_force").unwrap_or(false);
        if let Some(name) = name {
            gates.push(GateSpec {
                name,
                matches,
                require,
                allow_force,
            });
        }
    }
    gates
}
