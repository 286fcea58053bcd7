//! The `heroku_config_var` consumer against the Heroku fake (real paths, Accept header, bearer
//! key, error envelopes, `RateLimit-Remaining`, a release per write).

use crate::delivery;
use std::time::{Duration, Instant};
use velvet_adapters::AdapterError;
use velvet_adapters::consumer::{self, Consumer};
use velvet_core::config::{ConsumerKind, ConsumerSpec};
use velvet_core::secret::SecretValue;
use velvet_fakes::heroku::Heroku;

const KEY: &str = "heroku-api-key-0123456789";

fn heroku(
    fake: &Heroku,
    app: &str,
    previous_key: Option<&str>,
    api_key: &str,
) -> Box<dyn Consumer> {
    let spec = ConsumerSpec {
        name: "h".into(),
        lock_key: None,
        verify_probe: None,
        kind: ConsumerKind::HerokuConfigVar {
            app: app.into(),
            key: "API_TOKEN".into(),
            previous_key: previous_key.map(str::to_string),
            api_key_env: "HEROKU_API_KEY".into(),
            api_url: fake.url(),
            template: None,
        },
    };
    let api_key = api_key.to_string();
    consumer::build(&spec, &move |n: &str| {
        (n == "HEROKU_API_KEY").then(|| api_key.clone())
    })
    .unwrap()
}

fn vars(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn writes_only_its_keys_once_per_step_and_rolls_back() {
    let fake = Heroku::start(KEY).await;
    fake.add_app(
        "console-prod",
        &[("API_TOKEN", "old"), ("OTHER", "keep-me")],
    );
    fake.add_app("console-staging", &[("API_TOKEN", "staging")]);
    let c = heroku(&fake, "console-prod", Some("API_TOKEN_PREVIOUS"), KEY);
    assert_eq!(c.default_lock_key(), "heroku:app:console-prod");
    let found = c.probe().await.unwrap();
    assert!(
        found.contains("HEROKU_API_KEY") && found.contains("console-prod"),
        "{found}"
    );
    assert_eq!(fake.releases("console-prod"), 0, "a probe writes nothing");

    let (old, new) = (
        SecretValue::single("old".into()),
        SecretValue::single("new-from-velvet".into()),
    );
    let d = delivery(&new, Some(&old));
    c.apply(&d).await.unwrap();
    c.apply(&d).await.unwrap(); // repeated after a crash
    assert_eq!(
        fake.releases("console-prod"),
        1,
        "one release for the step, not two"
    );
    c.verify(&d).await.unwrap();
    assert_eq!(
        fake.vars("console-prod"),
        vars(&[
            ("API_TOKEN", "new-from-velvet"),
            ("API_TOKEN_PREVIOUS", "old"),
            ("OTHER", "keep-me")
        ])
    );
    c.revoke_previous(&d).await.unwrap();
    c.revoke_previous(&d).await.unwrap();
    assert_eq!(fake.releases("console-prod"), 2);
    assert_eq!(
        fake.vars("console-prod"),
        vars(&[("API_TOKEN", "new-from-velvet"), ("OTHER", "keep-me")])
    );
    // I7: another app is untouched.
    assert_eq!(
        fake.vars("console-staging"),
        vars(&[("API_TOKEN", "staging")])
    );
    assert_eq!(fake.releases("console-staging"), 0);

    // A rollback puts the previous value back and drops the previous key.
    let newer = SecretValue::single("newer".into());
    let d2 = delivery(&newer, Some(&new));
    c.apply(&d2).await.unwrap();
    c.rollback(&d2).await.unwrap();
    c.rollback(&d2).await.unwrap();
    assert_eq!(
        fake.vars("console-prod"),
        vars(&[("API_TOKEN", "new-from-velvet"), ("OTHER", "keep-me")])
    );
    assert!(
        c.verify(&d2).await.is_err(),
        "verify fails for a value the app does not hold"
    );
}

#[tokio::test]
async fn refusals_name_the_key_variable_or_the_app_and_never_a_value() {
    let fake = Heroku::start(KEY).await;
    fake.add_app("console-prod", &[("API_TOKEN", "old")]);
    let new = SecretValue::single("new-from-velvet".into());
    let d = delivery(&new, None);

    let wrong = heroku(&fake, "console-prod", None, "not-the-key");
    let e = wrong.apply(&d).await.unwrap_err();
    assert!(!e.is_retryable(), "a wrong key is permanent");
    let m = e.to_string();
    assert!(
        m.contains("401") && m.contains("`HEROKU_API_KEY`") && m.contains("expired"),
        "{m}"
    );
    assert!(
        !m.contains("not-the-key") && !m.contains("new-from-velvet"),
        "{m}"
    );
    assert!(
        wrong
            .probe()
            .await
            .unwrap_err()
            .to_string()
            .contains("HEROKU_API_KEY")
    );

    let missing = heroku(&fake, "no-such-app", None, KEY);
    let e = missing.apply(&d).await.unwrap_err();
    assert!(!e.is_retryable());
    assert!(
        e.to_string().contains("`no-such-app` not found (404"),
        "{e}"
    );

    // A key that expires between steps.
    let c = heroku(&fake, "console-prod", None, KEY);
    c.apply(&d).await.unwrap();
    fake.expire_key();
    let e = c.verify(&d).await.unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    assert_eq!(
        fake.vars("console-prod"),
        vars(&[("API_TOKEN", "new-from-velvet")])
    );
}

#[tokio::test]
async fn rate_limits_and_outages_are_retryable_and_a_retry_succeeds() {
    let fake = Heroku::start(KEY).await;
    fake.add_app("console-prod", &[("API_TOKEN", "old")]);
    let c = heroku(&fake, "console-prod", None, KEY);
    let new = SecretValue::single("new-from-velvet".into());
    let d = delivery(&new, None);
    for status in [429u16, 503] {
        fake.fail_next(&[status]);
        let e = c.apply(&d).await.unwrap_err();
        assert!(
            matches!(&e, AdapterError::Retryable { message, .. } if message.contains(&status.to_string())),
            "{e:?}"
        );
    }
    c.apply(&d).await.unwrap();
    assert_eq!(fake.releases("console-prod"), 1);

    // A small budget (4, refilled at 5 a second): Velvet slows down before it is empty, by
    // `RateLimit-Remaining`, and never takes a 429.
    fake.set_budget(4, 5.0);
    let start = Instant::now();
    for _ in 0..8 {
        c.verify(&d).await.unwrap();
    }
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(fake.requests().1, 0, "no 429 for an empty budget");

    // A provider that does not answer in time is retryable too (a 1 s timeout here).
    fake.set_budget(100, 10.0);
    fake.set_delay(Duration::from_secs(30));
    let quick = consumer::HerokuConfigVar::new(
        &fake.url(),
        "console-prod",
        "API_TOKEN",
        None,
        velvet_core::secret::SecretString::new(KEY.into()),
        "HEROKU_API_KEY",
        consumer::Renderer::new(None).unwrap(),
    )
    .with_timeout(Duration::from_secs(1));
    let start = Instant::now();
    let e = quick.verify(&d).await.unwrap_err();
    assert!(
        e.is_retryable() && e.to_string().contains("timed out"),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// Two consumers of one token on one app: each step makes one PATCH (one release, one restart),
/// whichever sibling runs first; other apps' consumers are not merged in.
#[tokio::test]
async fn consumers_of_one_app_are_merged_into_one_patch_per_step() {
    let fake = Heroku::start(KEY).await;
    fake.add_app("console-prod", &[("OTHER", "keep-me")]);
    fake.add_app("console-staging", &[]);
    let spec =
        |name: &str, app: &str, key: &str, previous_key: Option<&str>, template: Option<&str>| {
            ConsumerSpec {
                name: name.into(),
                lock_key: None,
                verify_probe: None,
                kind: ConsumerKind::HerokuConfigVar {
                    app: app.into(),
                    key: key.into(),
                    previous_key: previous_key.map(str::to_string),
                    api_key_env: "HEROKU_API_KEY".into(),
                    api_url: fake.url(),
                    template: template.map(str::to_string),
                },
            }
        };
    let all = [
        spec(
            "token",
            "console-prod",
            "API_TOKEN",
            Some("API_TOKEN_PREVIOUS"),
            None,
        ),
        spec(
            "header",
            "console-prod",
            "API_AUTH_HEADER",
            None,
            Some("Bearer {{value}}"),
        ),
        spec("staging", "console-staging", "API_TOKEN", None, None),
    ];
    let env = |n: &str| (n == "HEROKU_API_KEY").then(|| KEY.to_string());
    let built: Vec<_> = all
        .iter()
        .map(|s| consumer::build_among(s, &all, &env).unwrap())
        .collect();
    let (old, new) = (
        SecretValue::single("old".into()),
        SecretValue::single("new-from-velvet".into()),
    );
    let d = delivery(&new, Some(&old));
    // The second consumer runs first this time.
    for c in [&built[1], &built[0]] {
        c.apply(&d).await.unwrap();
    }
    assert_eq!(fake.releases("console-prod"), 1, "one PATCH for both keys");
    assert_eq!(
        fake.vars("console-prod"),
        vars(&[
            ("API_AUTH_HEADER", "Bearer new-from-velvet"),
            ("API_TOKEN", "new-from-velvet"),
            ("API_TOKEN_PREVIOUS", "old"),
            ("OTHER", "keep-me")
        ])
    );
    assert!(
        fake.vars("console-staging").is_empty(),
        "another app is not merged in"
    );
    for c in &built[..2] {
        c.verify(&d).await.unwrap();
    }
    for c in &built[..2] {
        c.revoke_previous(&d).await.unwrap();
    }
    assert_eq!(fake.releases("console-prod"), 2);
    assert!(!fake.vars("console-prod").contains_key("API_TOKEN_PREVIOUS"));
    for c in &built[..2] {
        c.rollback(&d).await.unwrap();
    }
    assert_eq!(fake.releases("console-prod"), 3, "one PATCH restores both");
    assert_eq!(
        fake.vars("console-prod"),
        vars(&[
            ("API_AUTH_HEADER", "Bearer old"),
            ("API_TOKEN", "old"),
            ("OTHER", "keep-me")
        ])
    );
}
