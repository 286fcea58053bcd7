//! Decoding the provider consumers and `verify.probe`: what each accepts and how each mistake is
//! named.

use super::tests::parse_with;
use super::*;

const ENV: &[(&str, &str)] = &[
    ("CF_TOKEN", "c"),
    ("INFISICAL_TOKEN", "i"),
    ("INFISICAL_ID", "id"),
    ("INFISICAL_SECRET", "s"),
    ("HEROKU_API_KEY", "k"),
    ("GH_TOKEN", "g"),
    ("PG", "postgres://x"),
];

fn parse(consumer: &str, source: &str) -> Result<Config, ConfigError> {
    let text = format!(
        "tokens:\n  - name: api\n    source: {source}\n    consumers:\n      - {consumer}\n"
    );
    // `parse_with` wants 'static vars; ENV is.
    parse_with(&text, ENV)
}

fn consumer(text: &str) -> ConsumerSpec {
    match parse(text, "{kind: random}") {
        Ok(c) => c.tokens[0].consumers[0].clone(),
        Err(e) => panic!("{text}: {e}"),
    }
}

/// Every problem `text` has, one per line; panics if it is accepted.
fn bad_with(text: &str, source: &str) -> String {
    match parse(text, source) {
        Ok(_) => panic!("{text} was accepted"),
        Err(e) => e
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn bad(text: &str) -> String {
    bad_with(text, "{kind: random}")
}

const HEROKU: &str =
    "name: h, kind: heroku_config_var, app: a, key: K, api_key_env: HEROKU_API_KEY";

#[test]
fn any_consumer_takes_a_verify_probe_with_a_reject_status() {
    let c = consumer(&format!(
        "{{{HEROKU}, verify: {{probe: {{url: 'https://console.internal/me', header: 'Authorization: Bearer {{{{value}}}}', expect_status: 200, reject_status: 401}}}}}}"
    ));
    assert_eq!(
        c.verify_probe,
        Some(ProbeSpec {
            url: "https://console.internal/me".into(),
            header: Some("Authorization: Bearer {{value}}".into()),
            expect_status: 200,
            reject_status: Some(401),
        })
    );
    assert_eq!(consumer(&format!("{{{HEROKU}}}")).verify_probe, None);

    let p = bad(&format!(
        "{{{HEROKU}, verify: {{probe: {{url: 'https://x.internal/', header: 'Authorization: Bearer {{{{value}}}}', expect_status: 200, reject_status: 200}}}}}}"
    ));
    assert!(
        p.contains("verify.probe.reject_status") && p.contains("must differ"),
        "{p}"
    );
    let p = bad(&format!(
        "{{{HEROKU}, verify: {{probe: {{url: 'https://x.internal/', expect_status: 200, reject_status: 401}}}}}}"
    ));
    assert!(
        p.contains("reject_status") && p.contains("needs a `header`"),
        "{p}"
    );
    let p = bad(&format!("{{{HEROKU}, verify: {{}}}}"));
    assert!(p.contains("verify.probe") && p.contains("missing"), "{p}");
    let p = bad(&format!(
        "{{{HEROKU}, verify: {{probe: {{url: 'https://x.internal/', expect_status: 200, status: 401}}}}}}"
    ));
    assert!(p.contains("`status`"), "{p}");
    let p = bad(&format!(
        "{{{HEROKU}, verify: {{probe: {{url: 'https://x.internal/', header: 'Bearer {{{{value}}}}'}}}}}}"
    ));
    assert!(p.contains("`Name: value`"), "{p}");
    // The header may use the fields of the source's value, and only those.
    let pg = "{kind: postgres_role, admin_url_env: PG, role: app}";
    let probed = format!(
        "{{{HEROKU}, template: '{{{{password}}}}', verify: {{probe: {{url: 'https://x.internal/', header: 'X-Password: {{{{password}}}}', reject_status: 401}}}}}}"
    );
    let c = parse(&probed, pg).unwrap();
    assert_eq!(
        c.tokens[0].consumers[0]
            .verify_probe
            .as_ref()
            .map(|p| p.expect_status),
        Some(200),
        "expect_status defaults to 200"
    );
    let p = bad_with(
        &probed.replace("X-Password: {{password}}", "X-Token: {{value}}"),
        pg,
    );
    assert!(p.contains("`{{value}}` is not a field"), "{p}");
}

const CF: &str = "name: cf, kind: cloudflare_worker_secret, account_id: 0123456789abcdef0123456789abcdef, script: console-edge, secret_name: READ_TOKEN, api_token_env: CF_TOKEN";

#[test]
fn cloudflare_worker_secret_takes_its_keys_and_names_what_is_wrong() {
    assert_eq!(
        consumer(&format!("{{{CF}}}")).kind,
        ConsumerKind::CloudflareWorkerSecret {
            account_id: "0123456789abcdef0123456789abcdef".into(),
            script: "console-edge".into(),
            secret_name: "READ_TOKEN".into(),
            api_token_env: "CF_TOKEN".into(),
            api_url: "https://api.cloudflare.com/client/v4".into(),
            template: None,
        }
    );
    for (change, key, says) in [
        (
            (
                "account_id: 0123456789abcdef0123456789abcdef",
                "account_id: my-account",
            ),
            ".account_id",
            "not a Cloudflare account id",
        ),
        (
            ("script: console-edge", "script: Console Edge"),
            ".script",
            "not a Worker name",
        ),
        (
            ("secret_name: READ_TOKEN", "secret_name: read-token"),
            ".secret_name",
            "not a Worker secret name",
        ),
        (
            ("api_token_env: CF_TOKEN", "api_token_env: CF_UNSET"),
            "api_token_env",
            "`CF_UNSET` is not set",
        ),
        (
            (
                "kind: cloudflare_worker_secret",
                "kind: cloudflare_worker_secret, api_url: 'ftp://x'",
            ),
            ".api_url",
            "not an http",
        ),
        (
            ("script: console-edge, ", ""),
            ".script",
            "missing required key `script`",
        ),
    ] {
        let p = bad(&format!("{{{}}}", CF.replace(change.0, change.1)));
        assert!(p.contains(key) && p.contains(says), "{change:?}: {p}");
    }
    let p = bad_with(
        &format!("{{{CF}}}"),
        "{kind: postgres_role, admin_url_env: PG, role: app}",
    );
    assert!(
        p.contains(".template") && p.contains("several fields"),
        "{p}"
    );
}

const INF: &str = "name: inf, kind: infisical_secret, project_id: 6f1c2b3a-console, environment: prod, key: READ_TOKEN";

#[test]
fn infisical_secret_takes_a_token_or_universal_auth_and_names_what_is_wrong() {
    assert_eq!(
        consumer(&format!("{{{INF}, token_env: INFISICAL_TOKEN}}")).kind,
        ConsumerKind::InfisicalSecret {
            project_id: "6f1c2b3a-console".into(),
            environment: "prod".into(),
            secret_path: "/".into(),
            key: "READ_TOKEN".into(),
            auth: InfisicalAuth::Token {
                token_env: "INFISICAL_TOKEN".into()
            },
            api_url: "https://us.infisical.com".into(),
            template: None,
        }
    );
    let ua = consumer(&format!(
        "{{{INF}, secret_path: /console/read, client_id_env: INFISICAL_ID, client_secret_env: INFISICAL_SECRET, api_url: 'https://eu.infisical.com/'}}"
    ));
    assert!(
        matches!(&ua.kind, ConsumerKind::InfisicalSecret { secret_path, auth: InfisicalAuth::UniversalAuth { client_id_env, .. }, api_url, .. }
            if secret_path == "/console/read" && client_id_env == "INFISICAL_ID" && api_url == "https://eu.infisical.com"),
        "{ua:?}"
    );
    for (text, key, says) in [
        (format!("{{{INF}}}"), ".token_env", "missing credential"),
        (
            format!("{{{INF}, token_env: INFISICAL_TOKEN, client_id_env: INFISICAL_ID}}"),
            ".token_env",
            "not both",
        ),
        (
            format!("{{{INF}, client_id_env: INFISICAL_ID}}"),
            ".client_secret_env",
            "missing required key",
        ),
        (
            format!("{{{INF}, token_env: NOT_SET}}"),
            "token_env",
            "`NOT_SET` is not set",
        ),
        (
            format!("{{{INF}, token_env: INFISICAL_TOKEN, secret_path: console}}"),
            ".secret_path",
            "not an Infisical folder path",
        ),
        (
            format!("{{{INF}, token_env: INFISICAL_TOKEN, secret_path: /console/}}"),
            ".secret_path",
            "not an Infisical folder path",
        ),
        (
            format!(
                "{{{}, token_env: INFISICAL_TOKEN}}",
                INF.replace("environment: prod", "environment: Prod Env")
            ),
            ".environment",
            "environment slug",
        ),
        (
            format!(
                "{{{}, token_env: INFISICAL_TOKEN}}",
                INF.replace("key: READ_TOKEN", "key: 'READ TOKEN'")
            ),
            ".key",
            "not an Infisical secret key",
        ),
    ] {
        let p = bad(&text);
        assert!(p.contains(key) && p.contains(says), "{text}: {p}");
    }
}

const GH: &str =
    "name: gh, kind: github_actions_secret, secret_name: READ_TOKEN, token_env: GH_TOKEN";

#[test]
fn github_actions_secret_takes_a_repository_environment_or_organisation() {
    let c = consumer(&format!("{{{GH}, repository: acme/console}}"));
    assert_eq!(
        c.kind,
        ConsumerKind::GithubActionsSecret {
            scope: GithubScope::Repository {
                repository: "acme/console".into(),
                environment: None
            },
            secret_name: "READ_TOKEN".into(),
            token_env: "GH_TOKEN".into(),
            api_url: "https://api.github.com".into(),
            template: None,
        }
    );
    let env = consumer(&format!(
        "{{{GH}, repository: acme/console, environment: production}}"
    ));
    assert!(
        matches!(&env.kind, ConsumerKind::GithubActionsSecret { scope, .. }
        if scope.secrets_path() == "/repos/acme/console/environments/production/secrets")
    );
    let org = consumer(&format!("{{{GH}, organization: acme}}"));
    assert!(
        matches!(&org.kind, ConsumerKind::GithubActionsSecret { scope: GithubScope::Organization { visibility, .. }, .. }
        if visibility == "private"),
        "visibility defaults to private"
    );
    for (text, key, says) in [
        (format!("{{{GH}}}"), ".repository", "missing `repository`"),
        (
            format!("{{{GH}, repository: acme/console, organization: acme}}"),
            ".repository",
            "not both",
        ),
        (
            format!("{{{GH}, repository: acme}}"),
            ".repository",
            "owner/name",
        ),
        (
            format!("{{{GH}, organization: acme, visibility: public}}"),
            ".visibility",
            "not one of all, private, selected",
        ),
        (
            format!("{{{GH}, organization: acme, environment: prod}}"),
            ".environment",
            "belongs to a repository",
        ),
        (
            format!("{{{GH}, repository: acme/console, visibility: all}}"),
            ".visibility",
            "organisation's secret",
        ),
        (
            format!(
                "{{{}, repository: acme/console}}",
                GH.replace("READ_TOKEN", "GITHUB_TOKEN")
            ),
            ".secret_name",
            "not a GitHub secret name",
        ),
        (
            format!(
                "{{{}, repository: acme/console}}",
                GH.replace("READ_TOKEN", "1TOKEN")
            ),
            ".secret_name",
            "not a GitHub secret name",
        ),
    ] {
        let p = bad(&text);
        assert!(p.contains(key) && p.contains(says), "{text}: {p}");
    }
}

const K8S: &str = "name: k, kind: k8s_secret, namespace: console, secret: api, key: READ_TOKEN";

#[test]
fn k8s_secret_takes_its_keys_restarts_and_names_what_is_wrong() {
    let c = consumer(&format!(
        "{{{K8S}, token_env: GH_TOKEN, ca_file: ca.pem, restart: [{{kind: Deployment, name: web}}], rollout_timeout: 2m}}"
    ));
    assert_eq!(
        c.kind,
        ConsumerKind::K8sSecret {
            namespace: "console".into(),
            secret: "api".into(),
            key: "READ_TOKEN".into(),
            token_env: Some("GH_TOKEN".into()),
            ca_file: Some("/etc/velvet/ca.pem".into()),
            restart: vec![RestartTarget {
                kind: "Deployment".into(),
                name: "web".into()
            }],
            rollout_timeout: std::time::Duration::from_secs(120),
            api_url: "https://kubernetes.default.svc".into(),
            template: None,
        }
    );
    let in_cluster = consumer(&format!("{{{K8S}}}"));
    assert!(
        matches!(&in_cluster.kind, ConsumerKind::K8sSecret { token_env: None, rollout_timeout, .. }
        if *rollout_timeout == std::time::Duration::from_secs(300)),
        "the pod's service account, 5m"
    );
    for (text, key, says) in [
        (
            format!(
                "{{{}}}",
                K8S.replace("namespace: console", "namespace: Console")
            ),
            ".namespace",
            "not a Kubernetes name",
        ),
        (
            format!("{{{K8S}, restart: [{{kind: Pod, name: web}}]}}"),
            ".restart[0].kind",
            "cannot be restarted",
        ),
        (
            format!("{{{K8S}, restart: [{{kind: Deployment}}]}}"),
            ".restart[0].name",
            "missing required key",
        ),
        (
            format!("{{{K8S}, token_env: NOT_SET}}"),
            "token_env",
            "`NOT_SET` is not set",
        ),
    ] {
        let p = bad(&text);
        assert!(p.contains(key) && p.contains(says), "{text}: {p}");
    }
}

#[test]
fn aws_secrets_manager_takes_its_keys_and_names_what_is_wrong() {
    let c = consumer(
        "{name: a, kind: aws_secrets_manager, region: eu-west-1, secret_id: console/read, field: READ_TOKEN, access_key_id_env: GH_TOKEN, secret_access_key_env: CF_TOKEN}",
    );
    assert!(
        matches!(&c.kind, ConsumerKind::AwsSecretsManager { api_url, field: Some(f), session_token_env: None, .. }
        if api_url == "https://secretsmanager.eu-west-1.amazonaws.com" && f == "READ_TOKEN"),
        "{c:?}"
    );
    let p = bad(
        "{name: a, kind: aws_secrets_manager, region: EU West, secret_id: x, access_key_id_env: GH_TOKEN, secret_access_key_env: CF_TOKEN}",
    );
    assert!(p.contains(".region") && p.contains("AWS region"), "{p}");
    let p = bad(
        "{name: a, kind: aws_secrets_manager, region: eu-west-1, secret_id: x, access_key_id_env: GH_TOKEN}",
    );
    assert!(p.contains("secret_access_key_env"), "{p}");
}
