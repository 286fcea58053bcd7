//! Decoding the consumers that write to a provider's API: each takes `api_url` (the public API
//! unless pointed elsewhere), a credential by `*_env`, and checks its names the way the provider
//! does, so a typo fails at load rather than at the provider.

use super::consumers::{check_http_url, template_for};
use super::decode::{Cx, Map};
use super::spec::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `api_url`, defaulting to the provider's public API, without a trailing `/`.
fn api_url(cx: &mut Cx, c: &Map, default: &str) -> String {
    let url = c.str(cx, "api_url").unwrap_or_else(|| default.into());
    check_http_url(cx, c, "api_url", &url);
    url.trim_end_matches('/').to_string()
}

/// Whether `v` is non-empty, at most `max` long, and every character passes `ok`; else names
/// the key and what it must be.
fn check_name(
    cx: &mut Cx,
    c: &Map,
    key: &str,
    v: &str,
    max: usize,
    ok: fn(char) -> bool,
    what: &str,
) -> bool {
    let good = !v.is_empty() && v.len() <= max && v.chars().all(ok);
    if !good {
        cx.err(&c.path_of(key), c.span(), format!("`{v}` is not {what}"));
    }
    good
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

pub(super) fn decode_heroku(cx: &mut Cx, c: &Map, fields: &[&str]) -> Option<ConsumerKind> {
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
    let api_url = api_url(cx, c, "https://api.heroku.com");
    let template = template_for(cx, c, fields);
    Some(ConsumerKind::HerokuConfigVar {
        app: app?,
        key: key?,
        previous_key,
        api_key_env: api_key_env?,
        api_url,
        template,
    })
}

pub(super) fn decode_cloudflare(cx: &mut Cx, c: &Map, fields: &[&str]) -> Option<ConsumerKind> {
    let account_id = c.req_str(cx, "account_id").filter(|a| {
        check_name(
            cx,
            c,
            "account_id",
            a,
            64,
            |ch| ch.is_ascii_hexdigit(),
            "a Cloudflare account id (the hex string in the dashboard's URL)",
        )
    });
    let script = c.req_str(cx, "script").filter(|s| {
        check_name(
            cx,
            c,
            "script",
            s,
            63,
            |ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_',
            "a Worker name (lowercase letters, digits, - and _)",
        )
    });
    let secret_name = c.req_str(cx, "secret_name").filter(|s| {
        check_name(
            cx,
            c,
            "secret_name",
            s,
            256,
            |ch| ch.is_ascii_alphanumeric() || ch == '_',
            "a Worker secret name (letters, digits and _, as it is read from `env`)",
        )
    });
    let api_token_env = c.env_name(cx, "api_token_env", true);
    let api_url = api_url(cx, c, "https://api.cloudflare.com/client/v4");
    let template = template_for(cx, c, fields);
    Some(ConsumerKind::CloudflareWorkerSecret {
        account_id: account_id?,
        script: script?,
        secret_name: secret_name?,
        api_token_env: api_token_env?,
        api_url,
        template,
    })
}

/// Infisical's secret keys and folder names: letters, digits, `_`, `-` and `.`.
fn infisical_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || ch == '.'
}

pub(super) fn decode_infisical(cx: &mut Cx, c: &Map, fields: &[&str]) -> Option<ConsumerKind> {
    let project_id = c.req_str(cx, "project_id").filter(|p| {
        check_name(
            cx,
            c,
            "project_id",
            p,
            64,
            |ch| ch.is_ascii_alphanumeric() || ch == '-',
            "an Infisical project id (Project Settings → Project ID)",
        )
    });
    let environment = c.req_str(cx, "environment").filter(|e| {
        check_name(
            cx,
            c,
            "environment",
            e,
            64,
            |ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_',
            "an environment slug such as `prod` or `staging`",
        )
    });
    let secret_path = c.str(cx, "secret_path").unwrap_or_else(|| "/".into());
    let path_ok = secret_path == "/"
        || (secret_path.starts_with('/')
            && !secret_path.ends_with('/')
            && secret_path[1..]
                .split('/')
                .all(|seg| !seg.is_empty() && seg.chars().all(infisical_char)));
    if !path_ok {
        cx.err(
            &c.path_of("secret_path"),
            c.span(),
            format!(
                "`{secret_path}` is not an Infisical folder path such as `/` or `/console/read`"
            ),
        );
    }
    let key = c.req_str(cx, "key").filter(|k| {
        check_name(
            cx,
            c,
            "key",
            k,
            256,
            infisical_char,
            "an Infisical secret key (letters, digits, _, - and .)",
        )
    });
    let has = |k: &str| c.get(k).is_some();
    let auth = match (
        has("token_env"),
        has("client_id_env") || has("client_secret_env"),
    ) {
        (true, false) => c
            .env_name(cx, "token_env", true)
            .map(|token_env| InfisicalAuth::Token { token_env }),
        (false, true) => {
            let id = c.env_name(cx, "client_id_env", true);
            let secret = c.env_name(cx, "client_secret_env", true);
            Some(InfisicalAuth::UniversalAuth {
                client_id_env: id?,
                client_secret_env: secret?,
            })
        }
        (true, true) => {
            cx.err(&c.path_of("token_env"), c.span(), "give `token_env` or `client_id_env` + `client_secret_env` (universal auth), not both");
            None
        }
        (false, false) => {
            cx.err(&c.path_of("token_env"), c.span(), "missing credential: `token_env` (an access token), or `client_id_env` + `client_secret_env` (a machine identity's universal auth)");
            None
        }
    };
    let api_url = api_url(cx, c, "https://us.infisical.com");
    let template = template_for(cx, c, fields);
    Some(ConsumerKind::InfisicalSecret {
        project_id: project_id?,
        environment: environment?,
        secret_path,
        key: key?,
        auth: auth?,
        api_url,
        template,
    })
}

/// GitHub's owner and repository names: letters, digits, `-`, `_` and `.`.
fn github_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.'
}

pub(super) fn decode_github(cx: &mut Cx, c: &Map, fields: &[&str]) -> Option<ConsumerKind> {
    let scope = match (
        c.get("repository").is_some(),
        c.get("organization").is_some(),
    ) {
        (true, false) => {
            let repository = c.req_str(cx, "repository").filter(|r| {
                let ok = matches!(r.split_once('/'), Some((o, n)) if !o.is_empty() && !n.is_empty() && o.chars().all(github_char) && n.chars().all(github_char));
                if !ok {
                    cx.err(&c.path_of("repository"), c.span(), format!("`{r}` is not a repository as `owner/name`"));
                }
                ok
            });
            let environment = c.str(cx, "environment").filter(|e| {
                check_name(
                    cx,
                    c,
                    "environment",
                    e,
                    255,
                    |ch| ch != '/' && !ch.is_control(),
                    "a GitHub environment name",
                )
            });
            if c.get("visibility").is_some() {
                cx.err(
                    &c.path_of("visibility"),
                    c.span(),
                    "`visibility` is for an organisation's secret; a repository's has none",
                );
            }
            repository.map(|repository| GithubScope::Repository {
                repository,
                environment,
            })
        }
        (false, true) => {
            let organization = c.req_str(cx, "organization").filter(|o| {
                check_name(
                    cx,
                    c,
                    "organization",
                    o,
                    39,
                    github_char,
                    "a GitHub organisation name",
                )
            });
            let visibility = c.str(cx, "visibility").unwrap_or_else(|| "private".into());
            if !["all", "private", "selected"].contains(&visibility.as_str()) {
                cx.err(
                    &c.path_of("visibility"),
                    c.span(),
                    format!("`{visibility}` is not one of all, private, selected"),
                );
            }
            if c.get("environment").is_some() {
                cx.err(
                    &c.path_of("environment"),
                    c.span(),
                    "an environment belongs to a repository: give `repository` with it",
                );
            }
            organization.map(|organization| GithubScope::Organization {
                organization,
                visibility,
            })
        }
        (true, true) => {
            cx.err(
                &c.path_of("repository"),
                c.span(),
                "give `repository` or `organization`, not both",
            );
            None
        }
        (false, false) => {
            cx.err(
                &c.path_of("repository"),
                c.span(),
                "missing `repository` (owner/name) or `organization`: where the secret lives",
            );
            None
        }
    };
    let secret_name = c.req_str(cx, "secret_name").filter(|s| {
        let ok = !s.is_empty()
            && s.len() <= 255
            && s.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            && !s.starts_with(|ch: char| ch.is_ascii_digit())
            && !s.to_ascii_uppercase().starts_with("GITHUB_");
        if !ok {
            cx.err(&c.path_of("secret_name"), c.span(), format!("`{s}` is not a GitHub secret name (letters, digits and _, not starting with a digit or GITHUB_)"));
        }
        ok
    });
    let token_env = c.env_name(cx, "token_env", true);
    let api_url = api_url(cx, c, "https://api.github.com");
    let template = template_for(cx, c, fields);
    Some(ConsumerKind::GithubActionsSecret {
        scope: scope?,
        secret_name: secret_name?,
        token_env: token_env?,
        api_url,
        template,
    })
}

/// Kubernetes object names: lowercase letters, digits, `-` and `.` (RFC 1123).
fn k8s_char(ch: char) -> bool {
    ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '.'
}

pub(super) fn decode_k8s(
    cx: &mut Cx,
    c: &Map,
    fields: &[&str],
    base_dir: &Path,
) -> Option<ConsumerKind> {
    let name = |cx: &mut Cx, k: &str| {
        c.req_str(cx, k).filter(|v| {
            check_name(
                cx,
                c,
                k,
                v,
                253,
                k8s_char,
                "a Kubernetes name (lowercase letters, digits, - and .)",
            )
        })
    };
    let namespace = name(cx, "namespace");
    let secret = name(cx, "secret");
    let key = c.req_str(cx, "key").filter(|k| {
        check_name(
            cx,
            c,
            "key",
            k,
            253,
            |ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch),
            "a Secret data key (letters, digits, -, _ and .)",
        )
    });
    let token_env = if c.get("token_env").is_some() {
        c.env_name(cx, "token_env", true)
    } else {
        None
    };
    let ca_file = c.str(cx, "ca_file").map(|p| {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { base_dir.join(p) }
    });
    let mut restart = vec![];
    for (path, node) in c.seq(cx, "restart") {
        let Some(r) = Map::new(cx, node, &path, &["kind", "name"]) else {
            continue;
        };
        let kind = r.req_str(cx, "kind");
        if let Some(k) = &kind
            && !["Deployment", "StatefulSet", "DaemonSet"].contains(&k.as_str())
        {
            cx.err(
                &r.path_of("kind"),
                r.span(),
                format!("`{k}` cannot be restarted; one of Deployment, StatefulSet, DaemonSet"),
            );
            continue;
        }
        let n = r.req_str(cx, "name").filter(|v| {
            check_name(
                cx,
                &r,
                "name",
                v,
                253,
                k8s_char,
                "a Kubernetes name (lowercase letters, digits, - and .)",
            )
        });
        if let (Some(kind), Some(name)) = (kind, n) {
            restart.push(RestartTarget { kind, name });
        }
    }
    let rollout_timeout = c
        .duration(cx, "rollout_timeout")
        .unwrap_or(Duration::from_secs(300));
    let api_url = api_url(cx, c, "https://kubernetes.default.svc");
    let template = template_for(cx, c, fields);
    Some(ConsumerKind::K8sSecret {
        namespace: namespace?,
        secret: secret?,
        key: key?,
        token_env,
        ca_file,
        restart,
        rollout_timeout,
        api_url,
        template,
    })
}

pub(super) fn decode_aws(cx: &mut Cx, c: &Map, fields: &[&str]) -> Option<ConsumerKind> {
    let region = c.req_str(cx, "region").filter(|r| {
        check_name(
            cx,
            c,
            "region",
            r,
            32,
            |ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-',
            "an AWS region such as eu-west-1",
        )
    });
    let secret_id = c.req_str(cx, "secret_id").filter(|s| {
        check_name(
            cx,
            c,
            "secret_id",
            s,
            2048,
            |ch| ch.is_ascii_alphanumeric() || "/_+=.@-:".contains(ch),
            "a secret name or ARN (letters, digits and /_+=.@-)",
        )
    });
    let field = c.str(cx, "field");
    let access_key_id_env = c.env_name(cx, "access_key_id_env", true);
    let secret_access_key_env = c.env_name(cx, "secret_access_key_env", true);
    let session_token_env = if c.get("session_token_env").is_some() {
        c.env_name(cx, "session_token_env", true)
    } else {
        None
    };
    let default = format!(
        "https://secretsmanager.{}.amazonaws.com",
        region.as_deref().unwrap_or("us-east-1")
    );
    let api_url = api_url(cx, c, &default);
    let template = template_for(cx, c, fields);
    Some(ConsumerKind::AwsSecretsManager {
        region: region?,
        secret_id: secret_id?,
        field,
        access_key_id_env: access_key_id_env?,
        secret_access_key_env: secret_access_key_env?,
        session_token_env,
        api_url,
        template,
    })
}
