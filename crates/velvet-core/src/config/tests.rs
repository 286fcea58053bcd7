use super::*;

pub(super) fn env_with(
    vars: &'static [(&'static str, &'static str)],
) -> impl Fn(&str) -> Option<String> {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

pub(super) fn parse_with(
    text: &str,
    vars: &'static [(&'static str, &'static str)],
) -> Result<Config, ConfigError> {
    let env = env_with(vars);
    Config::parse(
        text,
        Path::new("/etc/velvet/velvet.yaml"),
        LoadOptions {
            env: &env,
            check_env: true,
        },
    )
}

pub(super) fn problems(text: &str) -> Vec<String> {
    match parse_with(
        text,
        &[
            ("VAULT_TOKEN", "x"),
            ("DEPLOY_HOOK_SECRET", "y"),
            ("PG_ADMIN_URL", "z"),
        ],
    ) {
        Ok(_) => vec![],
        Err(e) => e.problems.iter().map(ToString::to_string).collect(),
    }
}

/// The full example of design §3.
const DESIGN_EXAMPLE: &str = r#"
server:
  listen: 127.0.0.1:8700
store:
  url: sqlite://velvet.db
keyring: velvet-keys.json
flags:
  velvet_v2_rotation: true
  velvet_v2_rotation_ui: true
defaults:
  flow: staged
  grace_period: 15m
  retry: {attempts: 5, initial_backoff: 2s, max_backoff: 5m}
engine:
  concurrency: 64
  per_lock_key: 1
  lease: 30s
tokens:
  - name: console-cross-env-read-token
    description: Service token between the console apps and the deploy worker
    tags: [prod]
    flow: staged
    source: {kind: random, bytes: 32, encoding: hex}
    rotate_every: 90d
    consumers:
      - name: console-env
        kind: file
        path: /etc/console/console.env
        format: dotenv
        key: CONSOLE_CROSS_ENV_READ_TOKEN
        previous_key: CONSOLE_CROSS_ENV_READ_TOKEN_PREVIOUS
      - name: vault-prod
        kind: vault_kv
        address: http://127.0.0.1:8200
        token_env: VAULT_TOKEN
        mount: secret
        path: console/prod
        field: CONSOLE_CROSS_ENV_READ_TOKEN
      - name: deploy-hook
        kind: webhook
        url: https://deploy.internal/velvet
        signing_secret_env: DEPLOY_HOOK_SECRET
        verify: {probe: {url: https://deploy.internal/healthz-auth, header: "Authorization: Bearer {{value}}", expect_status: 200}}
  - name: app-db
    source: {kind: postgres_role, admin_url_env: PG_ADMIN_URL, strategy: alternating, roles: [app_a, app_b]}
    consumers:
      - name: app-env
        kind: file
        path: /etc/app/app.env
        format: dotenv
        key: DATABASE_URL
        template: "postgres://{{username}}:{{password | urlencode}}@db.internal:5432/app"
revocation_gates:
  - name: production
    match: {tags: [prod]}
    require: {totp: true, approvals: 1, roles: [revoker, admin]}
    allow_force: false
"#;

#[test]
fn the_design_example_parses() {
    let c = parse_with(
        DESIGN_EXAMPLE,
        &[
            ("VAULT_TOKEN", "x"),
            ("DEPLOY_HOOK_SECRET", "y"),
            ("PG_ADMIN_URL", "z"),
        ],
    )
    .unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8700");
    assert_eq!(
        c.store,
        StoreUrl::Sqlite(PathBuf::from("/etc/velvet/velvet.db"))
    );
    assert!(
        matches!(&c.keyring, KeyringSource::File(p) if p == Path::new("/etc/velvet/velvet-keys.json"))
    );
    assert_eq!(c.tokens.len(), 2);
    let t = &c.tokens[0];
    assert_eq!(t.rotate_every, Some(Duration::from_secs(90 * 86400)));
    assert_eq!(t.consumers.len(), 3);
    assert!(
        matches!(&t.consumers[2].verify_probe, Some(p) if p.expect_status == 200 && p.reject_status.is_none())
    );
    let db = &c.tokens[1];
    assert_eq!(db.flow, FlowType::Staged, "inherits defaults.flow");
    assert_eq!(db.grace_period, Duration::from_secs(900));
    assert!(
        matches!(&db.source, SourceSpec::PostgresRole { strategy: PgStrategy::Alternating { roles }, .. } if roles[1] == "app_b")
    );
    assert_eq!(
        gate_for(&c.revocation_gates, t).map(|g| g.name.as_str()),
        Some("production")
    );
    assert!(gate_for(&c.revocation_gates, db).is_none());
    // The spec survives a JSON round trip (the store keeps it that way).
    let json = serde_json::to_value(t).unwrap();
    assert_eq!(serde_json::from_value::<TokenSpec>(json).unwrap(), *t);
}

#[test]
fn every_problem_is_reported_at_once_with_path_and_line() {
    let text = "
server:
  listen: nowhere
  colour: blue
tokens:
  - name: ok-token
    source: {kind: random, bytes: 8}
    grace_period: soon
    consumers:
      - name: f
        kind: file
        path: /tmp/x
        format: dotenv
  - name: ok-token
    source: {kind: random}
";
    let p = problems(text);
    assert!(
        p.iter().any(|s| s.starts_with("server.listen: `nowhere`")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|s| s.starts_with("server.colour: unknown key `colour`") && s.contains("(line 4")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|s| s.starts_with("tokens[0].source.bytes") && s.contains("from 16 to 1024")),
        "{p:#?}"
    );
    assert!(
        p.iter().any(
            |s| s.starts_with("tokens[0].grace_period: `soon` is not a duration")
                && s.contains("line 8")
        ),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|s| s.starts_with("tokens[0].consumers[0].key: missing required key")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|s| s.starts_with("tokens[1].name: token `ok-token` is declared twice")),
        "{p:#?}"
    );
    assert_eq!(p.len(), 6, "{p:#?}");
}

#[test]
fn invalid_yaml_names_line_and_column() {
    let p = problems("tokens:\n  - name: [unclosed\n");
    assert_eq!(p.len(), 1);
    assert!(
        p[0].contains("invalid YAML") && p[0].contains("line"),
        "{p:?}"
    );
    let p = problems("store:\n  url: a\nstore:\n  url: b\n");
    assert!(
        p[0].contains("appears twice") && p[0].contains("line 3"),
        "{p:?}"
    );
    let p = problems("   \n");
    assert!(p[0].contains("empty"), "{p:?}");
}

#[test]
fn missing_env_var_is_named_and_can_be_skipped() {
    let text = "tokens:\n  - name: db\n    source: {kind: redis_acl, admin_url_env: REDIS_ADMIN_URL, user: app}\n";
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("environment variable `REDIS_ADMIN_URL` is not set"),
        "{p:?}"
    );
    let env = env_with(&[]);
    let ok = Config::parse(
        text,
        Path::new("v.yaml"),
        LoadOptions {
            env: &env,
            check_env: false,
        },
    );
    assert!(ok.is_ok());
}

#[test]
fn environment_overrides_the_file() {
    let c = parse_with(
        "server: {listen: 127.0.0.1:1}\nstore: {url: sqlite://a.db}\n",
        &[
            ("VELVET_LISTEN", "0.0.0.0:9000"),
            ("VELVET_DATABASE_URL", "postgres://velvet:pw@db/velvet"),
            ("VELVET_MASTER_KEY", "AAAA"),
            ("VELVET_API_KEY", "bootstrap-key-of-at-least-32-chars"),
        ],
    )
    .unwrap();
    assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(c.store.to_string(), "postgres://velvet:***@db/velvet");
    assert!(matches!(c.keyring, KeyringSource::MasterKey(_)));
    assert_eq!(
        c.api_key.unwrap().expose(),
        "bootstrap-key-of-at-least-32-chars"
    );
    let e = parse_with("flags: {}\n", &[("VELVET_API_KEY", "x")]).unwrap_err();
    assert!(
        e.problems[0]
            .to_string()
            .starts_with("VELVET_API_KEY: is 1 characters")
            && e.problems[0].message.contains("at least 32"),
        "{e}"
    );
    let e = parse_with("", &[("VELVET_LISTEN", "bad")]).unwrap_err();
    assert!(e.to_string().contains("empty"));
    let e = parse_with("flags: {}\n", &[("VELVET_LISTEN", "bad")]).unwrap_err();
    assert!(
        e.problems[0]
            .to_string()
            .starts_with("VELVET_LISTEN: `bad`"),
        "{e}"
    );
}

#[test]
fn store_urls_are_checked() {
    let p = problems("store: {url: 'postgres://velvet:hunter2@db/velvet'}\n");
    assert!(
        p[0].contains("holds a password") && !p[0].contains("hunter2"),
        "{p:?}"
    );
    let p = problems("store: {url: 'mysql://db/velvet'}\n");
    assert!(p[0].contains("unsupported scheme"), "{p:?}");
    let c = parse_with("store: {url: 'sqlite:///var/lib/velvet/v.db'}\n", &[]).unwrap();
    assert_eq!(
        c.store,
        StoreUrl::Sqlite(PathBuf::from("/var/lib/velvet/v.db"))
    );
}

#[test]
fn sources_consumers_and_gates_are_validated() {
    let cases: &[(&str, &str)] = &[
        (
            "tokens:\n  - name: 'bad name'\n    source: {kind: random}\n",
            "not a valid token name",
        ),
        (
            "tokens:\n  - name: t\n    source: {kind: magic}\n",
            "unknown source kind `magic`",
        ),
        (
            "tokens:\n  - name: t\n    source: {kind: postgres_role, admin_url_env: PG_ADMIN_URL, strategy: alternating, roles: [a]}\n",
            "exactly two different roles",
        ),
        (
            "tokens:\n  - name: t\n    source: {kind: postgres_role, admin_url_env: PG_ADMIN_URL, role: 'Robert; DROP'}\n",
            "not a plain PostgreSQL role name",
        ),
        (
            "tokens:\n  - name: t\n    source: {kind: postgres_role, admin_url_env: PG_ADMIN_URL, role: app}\n    consumers:\n      - {name: f, kind: file, path: /x}\n",
            "several fields",
        ),
        (
            "tokens:\n  - name: t\n    source: {kind: random}\n    consumers:\n      - {name: f, kind: file, path: /x, template: '{{password}}'}\n",
            "not a field of this source",
        ),
        (
            "tokens:\n  - name: t\n    source: {kind: random}\n    consumers:\n      - {name: f, kind: s3_object}\n",
            "unknown consumer kind `s3_object`",
        ),
        (
            "tokens:\n  - name: t\n    source: {kind: random}\n    consumers:\n      - {name: f, kind: file, path: /x, mode: '0644'}\n",
            "no access for others",
        ),
        (
            "tokens:\n  - name: t\n    source: {kind: random}\n    consumers:\n      - {name: w, kind: webhook, url: 'ftp://x', signing_secret_env: DEPLOY_HOOK_SECRET}\n",
            "not an http",
        ),
        (
            "tokens:\n  - name: t\n    source: {kind: random}\n    consumers:\n      - {name: e, kind: exec, command: []}\n",
            "command is empty",
        ),
        (
            "tokens:\n  - name: t\n    source: {kind: random}\n    consumers:\n      - {name: a, kind: exec, command: [true]}\n      - {name: a, kind: exec, command: [true]}\n",
            "declared twice in this token",
        ),
        (
            "revocation_gates:\n  - name: g\n    match: {tags: [prod]}\n    require: {roles: [viewer]}\n",
            "could never pass",
        ),
        (
            "revocation_gates:\n  - name: g\n    match: {}\n",
            "must match some",
        ),
        (
            "defaults: {flow: sometimes}\n",
            "not one of: staged, auto, emergency",
        ),
        (
            "defaults: {retry: {initial_backoff: 10m, max_backoff: 1m}}\n",
            "longer than max_backoff",
        ),
        ("engine: {lease: 1s}\n", "at least 5s"),
        ("flags: {velvet_v3: true}\n", "unknown key `velvet_v3`"),
    ];
    for (text, expected) in cases {
        let p = problems(text);
        assert!(
            p.iter().any(|s| s.contains(expected)),
            "{text}\nexpected `{expected}` in {p:#?}"
        );
    }
}

#[test]
fn server_limits_and_trusted_proxies() {
    let c = parse_with(
        "server: {listen: 127.0.0.1:1, trusted_proxies: [10.0.0.0/8, 127.0.0.1], header_timeout: 2s, max_connections: 100, max_streams_per_client: 3}\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.server.header_timeout, std::time::Duration::from_secs(2));
    assert_eq!(
        (c.server.max_connections, c.server.max_streams_per_client),
        (100, 3)
    );
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    // An untrusted peer cannot name another address.
    assert_eq!(
        c.server.client_ip(ip("203.0.113.9"), Some("1.2.3.4")),
        ip("203.0.113.9")
    );
    // A trusted one can; the rightmost hop that is not a trusted proxy is the client.
    assert_eq!(
        c.server
            .client_ip(ip("127.0.0.1"), Some("6.6.6.6, 198.51.100.7, 10.1.2.3")),
        ip("198.51.100.7")
    );
    assert_eq!(c.server.client_ip(ip("10.9.9.9"), None), ip("10.9.9.9"));
    assert_eq!(
        c.server
            .client_ip(ip("10.9.9.9"), Some("garbage, 10.0.0.1")),
        ip("10.0.0.1")
    );
    let d = parse_with("flags: {}\n", &[]).unwrap().server;
    assert_eq!(
        (
            d.header_timeout.as_secs(),
            d.max_connections,
            d.max_streams_per_client,
            d.trusted_proxies.len()
        ),
        (10, 4096, 64, 0)
    );
    let e = parse_with(
        "server: {trusted_proxies: [nope], header_timeout: 1h}\n",
        &[],
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("server.trusted_proxies[0]: `nope` is not an address or CIDR"),
        "{text}"
    );
    assert!(
        text.contains("server.header_timeout: must be between"),
        "{text}"
    );
}

#[test]
fn exec_env_and_file_links_are_checked() {
    let c = parse_with(
        "tokens:\n  - name: db\n    source: {kind: postgres_role, admin_url_env: PG, role: app}\n    consumers:\n      - {name: e, kind: exec, command: [true], env: {PGPASSWORD: '{{password}}', MODE: plain}}\n      - {name: f, kind: file, path: x.env, format: dotenv, key: K, template: '{{password}}', follow_symlinks: true}\n",
        &[("PG", "postgres://a@b/c")],
    )
    .unwrap();
    match &c.tokens[0].consumers[0].kind {
        ConsumerKind::Exec { env, .. } => assert_eq!(
            env,
            &vec![
                ("PGPASSWORD".to_string(), "{{password}}".to_string()),
                ("MODE".to_string(), "plain".to_string())
            ]
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.tokens[0].consumers[1].kind,
        ConsumerKind::File {
            follow_symlinks: true,
            ..
        }
    ));
    for (yaml, expected) in [
        ("env: {'1X': a}", "`1X` is not an environment variable name"),
        ("env: {A-B: a}", "`A-B` is not an environment variable name"),
        ("env: {A: '{{secret}}'}", "`{{secret}}` is not a field"),
        ("env: {A: [1]}", "expected a single value"),
        ("env: [A]", "expected a mapping of variable names"),
    ] {
        let text = format!(
            "tokens:\n  - name: t\n    source: {{kind: random}}\n    consumers:\n      - {{name: e, kind: exec, command: [true], {yaml}}}\n"
        );
        let found = problems(&text);
        assert!(
            found
                .iter()
                .any(|p| p.contains(expected) && p.contains("consumers[0].env")),
            "{yaml}: {found:?}"
        );
    }
}

#[test]
fn mysql_user_takes_single_or_alternating_and_names_what_is_wrong() {
    let ok = |src: &str| {
        parse_with(
            &format!("tokens:\n  - name: db\n    source: {src}\n"),
            &[("MY_ADMIN", "mysql://root@127.0.0.1/mysql")],
        )
        .map(|c| c.tokens[0].source.clone())
    };
    let s = ok("{kind: mysql_user, admin_url_env: MY_ADMIN, user: app}").unwrap();
    assert_eq!(
        s,
        SourceSpec::MysqlUser {
            admin_url_env: "MY_ADMIN".into(),
            strategy: MysqlStrategy::Single { user: "app".into() },
            host: "%".into(),
        },
        "single and host % by default"
    );
    assert_eq!(s.fields(), ["username", "password"]);
    let s = ok("{kind: mysql_user, admin_url_env: MY_ADMIN, strategy: alternating, users: [app_a, app_b], host: 10.0.%}").unwrap();
    assert!(
        matches!(&s, SourceSpec::MysqlUser { strategy: MysqlStrategy::Alternating { users }, host, .. } if users[1] == "app_b" && host == "10.0.%")
    );
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(serde_json::from_value::<SourceSpec>(json).unwrap(), s);

    let bad = |src: &str| match ok(src) {
        Ok(s) => panic!("{src} was accepted as {s:?}"),
        Err(e) => e
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let p = bad("{kind: mysql_user, admin_url_env: MY_ADMIN, users: [a, b]}");
    assert!(
        p.contains("source.users") && p.contains("strategy single takes `user`"),
        "{p}"
    );
    let p =
        bad("{kind: mysql_user, admin_url_env: MY_ADMIN, strategy: alternating, users: [a, a]}");
    assert!(p.contains("exactly two different users"), "{p}");
    let p = bad("{kind: mysql_user, admin_url_env: MY_ADMIN, user: \"app'; DROP USER root; --\"}");
    assert!(
        p.contains("source.user") && p.contains("not a plain MySQL user name"),
        "{p}"
    );
    let p = bad("{kind: mysql_user, admin_url_env: MY_ADMIN, user: app, host: \"%' OR '1\"}");
    assert!(
        p.contains("source.host") && p.contains("host pattern"),
        "{p}"
    );
    let p = bad("{kind: mysql_user, admin_url_env: MY_ADMIN, user: app, role: app}");
    assert!(p.contains("role"), "{p}");
    let p = bad("{kind: mysql_user, admin_url_env: NOT_SET, user: app}");
    assert!(p.contains("`NOT_SET` is not set"), "{p}");
}

#[test]
fn heroku_config_var_takes_its_keys_and_names_what_is_wrong() {
    let parse = |consumer: &str, source: &str| {
        parse_with(
            &format!(
                "tokens:\n  - name: api\n    source: {source}\n    consumers:\n      - {consumer}\n"
            ),
            &[("HEROKU_API_KEY", "k"), ("PG", "postgres://x")],
        )
    };
    let c = parse(
        "{name: prod, kind: heroku_config_var, app: console-prod, key: API_TOKEN, previous_key: API_TOKEN_OLD, api_key_env: HEROKU_API_KEY}",
        "{kind: random}",
    )
    .unwrap();
    assert_eq!(
        c.tokens[0].consumers[0].kind,
        ConsumerKind::HerokuConfigVar {
            app: "console-prod".into(),
            key: "API_TOKEN".into(),
            previous_key: Some("API_TOKEN_OLD".into()),
            api_key_env: "HEROKU_API_KEY".into(),
            api_url: "https://api.heroku.com".into(),
            template: None,
        }
    );
    let bad = |consumer: &str, source: &str| match parse(consumer, source) {
        Ok(_) => panic!("{consumer} was accepted"),
        Err(e) => e
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let r = "{kind: random}";
    let p = bad(
        "{name: h, kind: heroku_config_var, app: Console_Prod, key: API_TOKEN, api_key_env: HEROKU_API_KEY}",
        r,
    );
    assert!(
        p.contains(".app") && p.contains("not a Heroku app name"),
        "{p}"
    );
    let p = bad(
        "{name: h, kind: heroku_config_var, app: a, key: HEROKU_TOKEN, api_key_env: HEROKU_API_KEY}",
        r,
    );
    assert!(
        p.contains(".key") && p.contains("not a Heroku config var name"),
        "{p}"
    );
    let p = bad(
        "{name: h, kind: heroku_config_var, app: a, key: K, previous_key: K, api_key_env: HEROKU_API_KEY}",
        r,
    );
    assert!(
        p.contains(".previous_key") && p.contains("must differ"),
        "{p}"
    );
    let p = bad(
        "{name: h, kind: heroku_config_var, app: a, key: K, api_key_env: NOT_SET_HERE}",
        r,
    );
    assert!(p.contains("`NOT_SET_HERE` is not set"), "{p}");
    let p = bad(
        "{name: h, kind: heroku_config_var, app: a, key: K, api_key_env: HEROKU_API_KEY, api_url: ftp://x}",
        r,
    );
    assert!(p.contains(".api_url"), "{p}");
    let p = bad(
        "{name: h, kind: heroku_config_var, app: a, key: K, api_key_env: HEROKU_API_KEY}",
        "{kind: postgres_role, admin_url_env: PG, role: app}",
    );
    assert!(
        p.contains(".template") && p.contains("several fields"),
        "{p}"
    );
}
