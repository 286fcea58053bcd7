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
