//! Decoding a token's `source:` block: one kind each, with the checks that keep names safe to
//! splice into the database statements that take no bind parameters.

use super::decode::{Cx, Map};
use super::spec::*;

pub(super) fn decode_source(
    cx: &mut Cx,
    node: &marked_yaml::Node,
    path: &str,
) -> Option<SourceSpec> {
    let Some(map) = node.as_mapping() else {
        cx.err(path, node.span(), "expected a mapping with `kind`");
        return None;
    };
    let kind = map.get_scalar("kind").map(|s| s.as_str().to_string());
    let allowed: &[&str] = match kind.as_deref() {
        Some("random") => &["kind", "bytes", "encoding"],
        Some("postgres_role") => &["kind", "admin_url_env", "strategy", "role", "roles"],
        Some("redis_acl") => &["kind", "admin_url_env", "user"],
        Some("mysql_user") => &["kind", "admin_url_env", "strategy", "user", "users", "host"],
        Some("manual") => &["kind"],
        Some(other) => {
            cx.err(
                &format!("{path}.kind"),
                node.span(),
                format!(
                    "unknown source kind `{other}`; available: random, postgres_role, redis_acl, mysql_user, manual"
                ),
            );
            return None;
        }
        None => {
            cx.err(
                &format!("{path}.kind"),
                node.span(),
                "missing required key `kind` (random, postgres_role, redis_acl, mysql_user or manual)",
            );
            return None;
        }
    };
    let s = Map::new(cx, node, path, allowed)?;
    match kind.as_deref()? {
        "manual" => Some(SourceSpec::Manual),
        "random" => Some(SourceSpec::Random {
            bytes: s.uint(cx, "bytes", 16, 1024).unwrap_or(32) as usize,
            encoding: s
                .choice(
                    cx,
                    "encoding",
                    &[
                        ("hex", Encoding::Hex),
                        ("base64", Encoding::Base64),
                        ("base64url", Encoding::Base64url),
                        ("alnum", Encoding::Alnum),
                    ],
                )
                .unwrap_or(Encoding::Hex),
        }),
        "postgres_role" => {
            let admin_url_env = s.env_name(cx, "admin_url_env", true);
            let strategy = s
                .choice(cx, "strategy", &[("single", true), ("alternating", false)])
                .unwrap_or(true);
            let strategy = if strategy {
                if s.get("roles").is_some() {
                    cx.err(
                        &s.path_of("roles"),
                        s.span(),
                        "`roles` goes with strategy alternating; strategy single takes `role`",
                    );
                }
                let role = s
                    .req_str(cx, "role")
                    .filter(|r| check_pg_role(cx, &s, "role", r))?;
                PgStrategy::Single { role }
            } else {
                if s.get("role").is_some() {
                    cx.err(
                        &s.path_of("role"),
                        s.span(),
                        "strategy alternating takes `roles: [a, b]`, not `role`",
                    );
                }
                let roles = s.str_list(cx, "roles").unwrap_or_default();
                if roles.len() != 2 || roles[0] == roles[1] {
                    cx.err(&s.path_of("roles"), s.span(), "strategy alternating needs exactly two different roles with the same grants");
                    return None;
                }
                if !roles.iter().all(|r| check_pg_role(cx, &s, "roles", r)) {
                    return None;
                }
                PgStrategy::Alternating {
                    roles: [roles[0].clone(), roles[1].clone()],
                }
            };
            Some(SourceSpec::PostgresRole {
                admin_url_env: admin_url_env?,
                strategy,
            })
        }
        "redis_acl" => {
            let admin_url_env = s.env_name(cx, "admin_url_env", true);
            let user = s.req_str(cx, "user");
            if let Some(u) = &user
                && (u.is_empty() || u.contains(char::is_whitespace) || u == "default")
            {
                cx.err(&s.path_of("user"), s.span(), format!("`{u}` cannot be managed: name a dedicated ACL user (not `default`, no spaces)"));
            }
            Some(SourceSpec::RedisAcl {
                admin_url_env: admin_url_env?,
                user: user?,
            })
        }
        "mysql_user" => decode_mysql_user(cx, &s),
        _ => None,
    }
}

fn decode_mysql_user(cx: &mut Cx, s: &Map) -> Option<SourceSpec> {
    let admin_url_env = s.env_name(cx, "admin_url_env", true);
    let single = s
        .choice(cx, "strategy", &[("single", true), ("alternating", false)])
        .unwrap_or(true);
    let host = s.str(cx, "host").unwrap_or_else(|| "%".into());
    // Host patterns as MySQL writes them: names, addresses, `%` and `_` wildcards, netmasks.
    if host.is_empty()
        || host.len() > 255
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_%:/".contains(c))
    {
        cx.err(
            &s.path_of("host"),
            s.span(),
            format!("`{host}` is not a MySQL host pattern such as %, localhost or 10.0.%"),
        );
        return None;
    }
    let strategy = if single {
        if s.get("users").is_some() {
            cx.err(
                &s.path_of("users"),
                s.span(),
                "`users` goes with strategy alternating; strategy single takes `user`",
            );
        }
        let user = s
            .req_str(cx, "user")
            .filter(|u| check_mysql_user(cx, s, "user", u))?;
        MysqlStrategy::Single { user }
    } else {
        if s.get("user").is_some() {
            cx.err(
                &s.path_of("user"),
                s.span(),
                "strategy alternating takes `users: [a, b]`, not `user`",
            );
        }
        let users = s.str_list(cx, "users").unwrap_or_default();
        if users.len() != 2 || users[0] == users[1] {
            cx.err(
                &s.path_of("users"),
                s.span(),
                "strategy alternating needs exactly two different users with the same grants",
            );
            return None;
        }
        if !users.iter().all(|u| check_mysql_user(cx, s, "users", u)) {
            return None;
        }
        MysqlStrategy::Alternating {
            users: [users[0].clone(), users[1].clone()],
        }
    };
    Some(SourceSpec::MysqlUser {
        admin_url_env: admin_url_env?,
        strategy,
        host,
    })
}

/// User names are spliced into `ALTER USER` (which takes no bind parameters), so only plain
/// names pass: letters, digits, `_`, `-` and `.`, at most 80 (MariaDB's limit; MySQL's is 32).
fn check_mysql_user(cx: &mut Cx, s: &Map, key: &str, user: &str) -> bool {
    let ok = !user.is_empty()
        && user.len() <= 80
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !ok {
        cx.err(
            &s.path_of(key),
            s.span(),
            format!("`{user}` is not a plain MySQL user name (letters, digits, _ - .; at most 80)"),
        );
    }
    ok
}

fn check_pg_role(cx: &mut Cx, s: &Map, key: &str, role: &str) -> bool {
    let ok = !role.is_empty()
        && role.len() <= 63
        && role.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        cx.err(&s.path_of(key), s.span(), format!("`{role}` is not a plain PostgreSQL role name (lowercase letters, digits, _; at most 63)"));
    }
    ok
}
