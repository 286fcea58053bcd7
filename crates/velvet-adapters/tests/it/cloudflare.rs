//! The `cloudflare_worker_secret` consumer against the Cloudflare fake (real paths, bearer token,
//! the `{success, errors, result}` envelope, `Ratelimit` headers, a Worker version per write).

use crate::delivery;
use std::time::{Duration, Instant};
use velvet_adapters::AdapterError;
use velvet_adapters::consumer::{self, CloudflareTarget, Consumer};
use velvet_core::config::{ConsumerKind, ConsumerSpec};
use velvet_core::secret::{SecretString, SecretValue};
use velvet_fakes::cloudflare::{Cloudflare, Fault};

const TOKEN: &str = "cf-api-token-0123456789abcdef";
const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";

fn worker(fake: &Cloudflare, script: &str, api_token: &str) -> Box<dyn Consumer> {
    let spec = ConsumerSpec {
        name: "cf".into(),
        lock_key: None,
        verify_probe: None,
        kind: ConsumerKind::CloudflareWorkerSecret {
            account_id: ACCOUNT.into(),
            script: script.into(),
            secret_name: "READ_TOKEN".into(),
            api_token_env: "CF_API_TOKEN".into(),
            api_url: fake.url(),
            template: None,
        },
    };
    let api_token = api_token.to_string();
    consumer::build(&spec, &move |n: &str| {
        (n == "CF_API_TOKEN").then(|| api_token.clone())
    })
    .unwrap()
}

fn map(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn writes_only_its_secret_verifies_the_listing_and_rolls_back() {
    let fake = Cloudflare::start(TOKEN).await;
    fake.add_script(
        ACCOUNT,
        "console-edge",
        &[("READ_TOKEN", "old"), ("OTHER", "keep")],
    );
    fake.add_script(ACCOUNT, "console-staging", &[("READ_TOKEN", "staging")]);
    let c = worker(&fake, "console-edge", TOKEN);
    assert_eq!(
        c.default_lock_key(),
        format!("cloudflare:script:{ACCOUNT}/console-edge")
    );
    let found = c.probe().await.unwrap();
    assert!(
        found.contains("CF_API_TOKEN") && found.contains("console-edge") && found.contains("has"),
        "{found}"
    );
    assert_eq!(
        fake.versions(ACCOUNT, "console-edge"),
        1,
        "a probe writes nothing"
    );

    let (old, new) = (
        SecretValue::single("old".into()),
        SecretValue::single("new-from-velvet".into()),
    );
    let d = delivery(&new, Some(&old));
    c.apply(&d).await.unwrap();
    c.verify(&d).await.unwrap();
    assert_eq!(
        fake.secrets(ACCOUNT, "console-edge"),
        map(&[("OTHER", "keep"), ("READ_TOKEN", "new-from-velvet")])
    );
    c.revoke_previous(&d).await.unwrap();
    // I7: another script is untouched.
    assert_eq!(
        fake.secrets(ACCOUNT, "console-staging"),
        map(&[("READ_TOKEN", "staging")])
    );
    assert_eq!(fake.versions(ACCOUNT, "console-staging"), 1);

    // Rollback puts the previous value back...
    c.rollback(&d).await.unwrap();
    assert_eq!(
        fake.secret(ACCOUNT, "console-edge", "READ_TOKEN")
            .as_deref(),
        Some("old")
    );
    // ...or, when the token had none, removes the secret (twice is fine).
    let first = delivery(&new, None);
    c.apply(&first).await.unwrap();
    c.rollback(&first).await.unwrap();
    c.rollback(&first).await.unwrap();
    assert_eq!(
        fake.secrets(ACCOUNT, "console-edge"),
        map(&[("OTHER", "keep")])
    );
    let e = c.verify(&first).await.unwrap_err();
    assert!(
        e.to_string().contains("does not list secret `READ_TOKEN`"),
        "{e}"
    );
}

#[tokio::test]
async fn refusals_name_the_token_variable_or_the_script_and_never_a_value() {
    let fake = Cloudflare::start(TOKEN).await;
    fake.add_script(ACCOUNT, "console-edge", &[]);
    let new = SecretValue::single("new-from-velvet".into());
    let d = delivery(&new, None);

    let wrong = worker(&fake, "console-edge", "not-the-token");
    let e = wrong.apply(&d).await.unwrap_err();
    let m = e.to_string();
    assert!(!e.is_retryable(), "a wrong token is permanent");
    assert!(
        m.contains("403")
            && m.contains("`CF_API_TOKEN`")
            && m.contains("Authentication error [10000]"),
        "{m}"
    );
    assert!(
        !m.contains("not-the-token") && !m.contains("new-from-velvet"),
        "{m}"
    );
    assert!(
        wrong
            .probe()
            .await
            .unwrap_err()
            .to_string()
            .contains("CF_API_TOKEN")
    );

    let missing = worker(&fake, "no-such-worker", TOKEN);
    let e = missing.apply(&d).await.unwrap_err();
    assert!(!e.is_retryable());
    assert!(
        e.to_string().contains("no Worker `no-such-worker`")
            && e.to_string().contains("script_not_found [10007]"),
        "{e}"
    );

    // A token that expires between steps.
    let c = worker(&fake, "console-edge", TOKEN);
    c.apply(&d).await.unwrap();
    fake.expire_token();
    assert!(c.verify(&d).await.unwrap_err().to_string().contains("403"));
}

#[tokio::test]
async fn a_failed_envelope_rate_limits_and_outages_are_classified() {
    let fake = Cloudflare::start(TOKEN).await;
    fake.add_script(ACCOUNT, "console-edge", &[]);
    let c = worker(&fake, "console-edge", TOKEN);
    let new = SecretValue::single("new-from-velvet".into());
    let d = delivery(&new, None);

    // 200 with `success: false` is a failure, not a success.
    fake.fail_next(&[Fault::SuccessFalse]);
    let e = c.apply(&d).await.unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("envelope says it failed"),
        "{e}"
    );
    assert_eq!(fake.secret(ACCOUNT, "console-edge", "READ_TOKEN"), None);

    fake.fail_next(&[Fault::Status(429)]);
    let e = c.apply(&d).await.unwrap_err();
    assert!(
        matches!(&e, AdapterError::Retryable { retry_after: Some(r), message } if *r == Duration::from_secs(1) && message.contains("429")),
        "{e:?}"
    );
    fake.fail_next(&[Fault::Status(502)]);
    assert!(c.apply(&d).await.unwrap_err().is_retryable());
    c.apply(&d).await.unwrap();
    c.verify(&d).await.unwrap();

    // A budget about to run out: Velvet waits for the window to reset instead of taking a 429.
    fake.set_budget(5, Duration::from_secs(2));
    let start = Instant::now();
    // 5 a window, 2 kept back: three go, the fourth waits.
    for _ in 0..4 {
        c.verify(&d).await.unwrap();
    }
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(fake.requests().1, 0, "no 429 for an empty budget");

    // A provider that does not answer in time is retryable.
    fake.set_budget(100, Duration::from_secs(60));
    fake.set_delay(Duration::from_secs(30));
    let quick = consumer::CloudflareWorkerSecret::new(
        &fake.url(),
        CloudflareTarget {
            account_id: ACCOUNT,
            script: "console-edge",
            secret_name: "READ_TOKEN",
        },
        SecretString::new(TOKEN.into()),
        "CF_API_TOKEN",
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
