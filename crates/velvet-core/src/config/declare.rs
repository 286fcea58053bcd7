//! Decoding and checking the declarations of `velvet.yaml`: every problem is recorded with its
//! path and line, and decoding goes on so that all of them are reported at once.

use super::consumers::decode_consumers;
use super::decode::{Cx, Map, valid_name};
use super::sources::decode_source;
use super::spec::*;
use std::collections::HashSet;
use std::path::Path;
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
    let Some(d) = Map::new(
        cx,
        node,
        "defaults",
        &["flow", "grace_period", "retry", "max_age", "remind_before"],
    ) else {
        return builtin;
    };
    Defaults {
        flow: d.choice(cx, "flow", FlowType::ALL).unwrap_or(builtin.flow),
        grace_period: d
            .duration(cx, "grace_period")
            .unwrap_or(builtin.grace_period),
        retry: decode_retry(cx, &d, &builtin.retry),
        max_age: d.duration(cx, "max_age"),
        remind_before: d.duration(cx, "remind_before"),
    }
}

pub(super) fn decode_engine(cx: &mut Cx, root: &Map) -> EngineConfig {
    let mut engine = EngineConfig {
        concurrency: 64,
        per_lock_key: 1,
        lease: Duration::from_secs(30),
        probe_every: Duration::from_secs(3600),
    };
    if let Some(node) = root.get("engine")
        && let Some(e) = Map::new(
            cx,
            node,
            "engine",
            &["concurrency", "per_lock_key", "lease", "probe_every"],
        )
    {
        if let Some(n) = e.uint(cx, "concurrency", 1, 10_000) {
            engine.concurrency = n as usize;
        }
        if let Some(n) = e.uint(cx, "per_lock_key", 1, 1_000) {
            engine.per_lock_key = n as usize;
        }
        if let Some(d) = e.duration(cx, "probe_every") {
            if !d.is_zero() && d < Duration::from_secs(60) {
                cx.err(
                    "engine.probe_every",
                    e.get("probe_every").expect("present").span(),
                    "must be 0s (off) or at least 1m: every probe reads every consumer",
                );
            } else {
                engine.probe_every = d;
            }
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
    "schedule",
    "max_age",
    "remind_before",
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
        let schedule = super::schedules::decode_schedule(cx, &t, rotate_every);
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
            schedule,
            max_age: t.duration(cx, "max_age").or(defaults.max_age),
            remind_before: t.duration(cx, "remind_before").or(defaults.remind_before),
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
