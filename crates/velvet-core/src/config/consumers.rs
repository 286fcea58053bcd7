//! Decoding the `consumers` of a token: the keys each kind allows, and the checks that name the
//! field and the fix.

use super::decode::{Cx, Map, valid_name};
use super::providers::{
    decode_aws, decode_cloudflare, decode_github, decode_heroku, decode_infisical, decode_k8s,
};
use super::spec::*;
use crate::template::Template;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The consumer kinds this version builds, for error messages.
const AVAILABLE: &str = "file, exec, webhook, vault_kv, heroku_config_var, cloudflare_worker_secret, infisical_secret, github_actions_secret, k8s_secret, aws_secrets_manager";

pub(super) fn decode_consumers(
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
            Some("webhook") => &["url", "signing_secret_env", "timeout"],
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
            Some("cloudflare_worker_secret") => &[
                "account_id",
                "script",
                "secret_name",
                "api_token_env",
                "api_url",
                "template",
            ],
            Some("infisical_secret") => &[
                "project_id",
                "environment",
                "secret_path",
                "key",
                "token_env",
                "client_id_env",
                "client_secret_env",
                "api_url",
                "template",
            ],
            Some("github_actions_secret") => &[
                "repository",
                "environment",
                "organization",
                "visibility",
                "secret_name",
                "token_env",
                "api_url",
                "template",
            ],
            Some("k8s_secret") => &[
                "namespace",
                "secret",
                "key",
                "token_env",
                "ca_file",
                "restart",
                "rollout_timeout",
                "api_url",
                "template",
            ],
            Some("aws_secrets_manager") => &[
                "region",
                "secret_id",
                "field",
                "access_key_id_env",
                "secret_access_key_env",
                "session_token_env",
                "api_url",
                "template",
            ],
            Some(k) if LATER_CONSUMERS.contains(&k) => {
                cx.err(&format!("{path}.kind"), node.span(), format!("consumer kind `{k}` is not available in this version; available: {AVAILABLE}"));
                continue;
            }
            Some(k) => {
                cx.err(
                    &format!("{path}.kind"),
                    node.span(),
                    format!("unknown consumer kind `{k}`; available: {AVAILABLE}"),
                );
                continue;
            }
            None => {
                cx.err(
                    &format!("{path}.kind"),
                    node.span(),
                    format!("missing required key `kind` (one of: {AVAILABLE})"),
                );
                continue;
            }
        };
        let allowed: Vec<&str> = ["name", "kind", "lock_key", "verify"]
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
        let verify_probe = decode_verify_probe(cx, &c, fields);
        let decoded = match kind.as_deref() {
            Some("file") => decode_file(cx, &c, fields, base_dir),
            Some("exec") => decode_exec(cx, &c, fields),
            Some("webhook") => decode_webhook(cx, &c),
            Some("vault_kv") => decode_vault(cx, &c),
            Some("heroku_config_var") => decode_heroku(cx, &c, fields),
            Some("cloudflare_worker_secret") => decode_cloudflare(cx, &c, fields),
            Some("infisical_secret") => decode_infisical(cx, &c, fields),
            Some("github_actions_secret") => decode_github(cx, &c, fields),
            Some("k8s_secret") => decode_k8s(cx, &c, fields, base_dir),
            Some("aws_secrets_manager") => decode_aws(cx, &c, fields),
            _ => None,
        };
        if let (Some(name), Some(kind)) = (name, decoded) {
            out.push(ConsumerSpec {
                name,
                lock_key,
                verify_probe,
                kind,
            });
        }
    }
    out
}

/// The consumer's `template`, checked, and required when the source's value has several fields
/// (a consumer that stores one text must be told how to write them).
pub(super) fn template_for(cx: &mut Cx, c: &Map, fields: &[&str]) -> Option<String> {
    let template = check_template(cx, c, "template", fields);
    if template.is_none() && fields.len() > 1 {
        cx.err(&c.path_of("template"), c.span(), format!("this source's value has several fields ({}); say how to write them with `template`, e.g. \"{{{{username}}}}:{{{{password}}}}\"", fields.join(", ")));
    }
    template
}

pub(super) fn check_template(cx: &mut Cx, c: &Map, key: &str, fields: &[&str]) -> Option<String> {
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

pub(super) fn check_http_url(cx: &mut Cx, c: &Map, key: &str, url: &str) -> bool {
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
    Some(ConsumerKind::Webhook {
        url: url?,
        signing_secret_env: signing_secret_env?,
        timeout,
    })
}

/// `verify: {probe: {url, header?, expect_status, reject_status?}}`, on any consumer: a request
/// that must succeed with the new value (and, with `reject_status`, fail with a wrong one).
fn decode_verify_probe(cx: &mut Cx, c: &Map, fields: &[&str]) -> Option<ProbeSpec> {
    let node = c.get("verify")?;
    let v = Map::new(cx, node, &c.path_of("verify"), &["probe"])?;
    let Some(pnode) = v.get("probe") else {
        cx.err(
            &v.path_of("probe"),
            v.span(),
            "missing required key `probe`: {url, header, expect_status, reject_status}",
        );
        return None;
    };
    let p = Map::new(
        cx,
        pnode,
        &v.path_of("probe"),
        &["url", "header", "expect_status", "reject_status"],
    )?;
    let url = p
        .req_str(cx, "url")
        .filter(|u| check_http_url(cx, &p, "url", u));
    let header = p.str(cx, "header");
    if let Some(h) = &header {
        match h.split_once(':') {
            Some((name, _)) if !name.trim().is_empty() && !name.contains(' ') => {
                check_template(cx, &p, "header", fields);
            }
            _ => cx.err(
                &p.path_of("header"),
                p.span(),
                "expected `Name: value`, e.g. \"Authorization: Bearer {{value}}\"",
            ),
        }
    }
    let expect_status = p.uint(cx, "expect_status", 100, 599).unwrap_or(200) as u16;
    let reject_status = p.uint(cx, "reject_status", 100, 599).map(|n| n as u16);
    if reject_status == Some(expect_status) {
        cx.err(
            &p.path_of("reject_status"),
            p.span(),
            "must differ from `expect_status`: a wrong value must be answered differently",
        );
    }
    if reject_status.is_some() && header.as_deref().is_none_or(|h| !h.contains("{{")) {
        cx.err(
            &p.path_of("reject_status"),
            p.span(),
            "needs a `header` that sends the value (e.g. \"Authorization: Bearer {{value}}\"): \
             otherwise the wrong value is never sent",
        );
    }
    Some(ProbeSpec {
        url: url?,
        header,
        expect_status,
        reject_status,
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
