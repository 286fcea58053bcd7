//! The `infisical_secret` consumer against the Infisical fake (v4 paths, bearer tokens, universal
//! auth, `{reqId, statusCode, message, error}` errors, trimming, change policies, rate limits).

use crate::delivery;
use std::time::{Duration, Instant};
use velvet_adapters::AdapterError;
use velvet_adapters::consumer::{self, Consumer};
use velvet_core::config::{ConsumerKind, ConsumerSpec, InfisicalAuth};
use velvet_core::secret::SecretValue;
use velvet_fakes::infisical::Infisical;

const TOKEN: &str = "infisical-access-token-0123456789";
const PROJECT: &str = "6f1c2b3a-console";

fn spec(
    fake: &Infisical,
    env: &str,
    path: &str,
    auth: InfisicalAuth,
    template: Option<&str>,
) -> ConsumerSpec {
    ConsumerSpec {
        name: "inf".into(),
        lock_key: None,
        verify_probe: None,
        kind: ConsumerKind::InfisicalSecret {
            project_id: PROJECT.into(),
            environment: env.into(),
            secret_path: path.into(),
            key: "READ_TOKEN".into(),
            auth,
            api_url: fake.url(),
            template: template.map(str::to_string),
        },
    }
}

fn token_auth() -> InfisicalAuth {
    InfisicalAuth::Token {
        token_env: "INFISICAL_TOKEN".into(),
    }
}

fn build(spec: &ConsumerSpec, vars: &[(&'static str, &str)]) -> Box<dyn Consumer> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    consumer::build(spec, &move |n: &str| {
        vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
    })
    .unwrap()
}

fn infisical(fake: &Infisical, env: &str, path: &str) -> Box<dyn Consumer> {
    build(
        &spec(fake, env, path, token_auth(), None),
        &[("INFISICAL_TOKEN", TOKEN)],
    )
}

async fn fake() -> Infisical {
    let f = Infisical::start(TOKEN).await;
    f.add_project(PROJECT, &["prod", "staging"]);
    f
}

#[tokio::test]
async fn creates_updates_once_reads_back_trimmed_and_touches_only_its_key() {
    let f = fake().await;
    f.put(PROJECT, "prod", "/console", "OTHER", "keep");
    f.put(PROJECT, "staging", "/console", "READ_TOKEN", "staging");
    f.put(PROJECT, "prod", "/", "READ_TOKEN", "root-path");
    let c = infisical(&f, "prod", "/console");
    assert_eq!(c.default_lock_key(), format!("infisical:{PROJECT}/prod"));
    let found = c.probe().await.unwrap();
    assert!(
        found.contains("INFISICAL_TOKEN") && found.contains("will be created"),
        "{found}"
    );

    let new = SecretValue::single("new-from-velvet".into());
    let d = delivery(&new, None);
    c.apply(&d).await.unwrap();
    c.apply(&d).await.unwrap(); // repeated after a crash
    assert_eq!(
        f.get(PROJECT, "prod", "/console", "READ_TOKEN"),
        Some(("new-from-velvet".into(), 1)),
        "created once, no second version"
    );
    c.verify(&d).await.unwrap();
    assert!(c.probe().await.unwrap().contains("it exists"));
    // I7: other keys, environments and paths are untouched.
    assert_eq!(
        f.get(PROJECT, "prod", "/console", "OTHER"),
        Some(("keep".into(), 1))
    );
    assert_eq!(
        f.get(PROJECT, "staging", "/console", "READ_TOKEN"),
        Some(("staging".into(), 1))
    );
    assert_eq!(
        f.get(PROJECT, "prod", "/", "READ_TOKEN"),
        Some(("root-path".into(), 1))
    );

    // The server trims; a template with surrounding whitespace still verifies and rewrites nothing.
    let padded = build(
        &spec(&f, "prod", "/console", token_auth(), Some("  {{value}}  ")),
        &[("INFISICAL_TOKEN", TOKEN)],
    );
    let newer = SecretValue::single("newer".into());
    let d2 = delivery(&newer, Some(&new));
    padded.apply(&d2).await.unwrap();
    assert_eq!(
        f.get(PROJECT, "prod", "/console", "READ_TOKEN"),
        Some(("newer".into(), 2))
    );
    padded.apply(&d2).await.unwrap();
    padded.verify(&d2).await.unwrap();
    assert_eq!(
        f.get(PROJECT, "prod", "/console", "READ_TOKEN").unwrap().1,
        2
    );

    // Rollback puts the previous value back, or deletes a secret the token never had.
    c.rollback(&d2).await.unwrap();
    assert_eq!(
        f.get(PROJECT, "prod", "/console", "READ_TOKEN").unwrap().0,
        "new-from-velvet"
    );
    c.rollback(&d).await.unwrap();
    c.rollback(&d).await.unwrap();
    assert_eq!(f.get(PROJECT, "prod", "/console", "READ_TOKEN"), None);
    let e = c.verify(&d).await.unwrap_err();
    assert!(e.to_string().contains("is not there"), "{e}");
}

#[tokio::test]
async fn universal_auth_logs_in_once_and_again_when_the_token_expires() {
    let f = fake().await;
    f.add_client("client-id-1", "client-secret-1");
    let ua = InfisicalAuth::UniversalAuth {
        client_id_env: "INF_ID".into(),
        client_secret_env: "INF_SECRET".into(),
    };
    let s = spec(&f, "prod", "/", ua, None);
    let c = build(
        &s,
        &[("INF_ID", "client-id-1"), ("INF_SECRET", "client-secret-1")],
    );
    let new = SecretValue::single("new-from-velvet".into());
    let d = delivery(&new, None);
    c.apply(&d).await.unwrap();
    c.verify(&d).await.unwrap();
    assert_eq!(f.requests().1, 1, "one login for the step");
    f.expire_tokens();
    c.verify(&d).await.unwrap();
    assert_eq!(
        f.requests().1,
        2,
        "logged in again after the 403 TokenError"
    );

    let wrong = build(
        &s,
        &[("INF_ID", "client-id-1"), ("INF_SECRET", "not-the-secret")],
    );
    let e = wrong.verify(&d).await.unwrap_err();
    let m = e.to_string();
    assert!(
        !e.is_retryable() && m.contains("`INF_ID` + `INF_SECRET`") && m.contains("401"),
        "{m}"
    );
    assert!(
        !m.contains("not-the-secret") && !m.contains("new-from-velvet"),
        "{m}"
    );
}

#[tokio::test]
async fn refusals_name_the_credential_the_place_or_the_policy() {
    let f = fake().await;
    let new = SecretValue::single("new-from-velvet".into());
    let d = delivery(&new, None);

    // A static token that expired: Infisical answers 403 TokenError, not 401.
    let c = infisical(&f, "prod", "/");
    c.apply(&d).await.unwrap();
    f.expire_tokens();
    let e = c.verify(&d).await.unwrap_err();
    assert!(
        !e.is_retryable()
            && e.to_string().contains("`INFISICAL_TOKEN`")
            && e.to_string().contains("expired"),
        "{e}"
    );

    let f = fake().await;
    let e = infisical(&f, "production", "/")
        .apply(&d)
        .await
        .unwrap_err();
    assert!(
        !e.is_retryable()
            && e.to_string().contains("Environment with slug 'production'")
            && e.to_string().contains("`environment`"),
        "{e}"
    );
    assert!(
        infisical(&f, "production", "/").probe().await.is_err(),
        "doctor names a wrong environment"
    );

    f.require_approval(PROJECT, "prod");
    let e = infisical(&f, "prod", "/").apply(&d).await.unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("change policy"),
        "{e}"
    );
    assert_eq!(f.get(PROJECT, "prod", "/", "READ_TOKEN"), None);

    f.put(PROJECT, "staging", "/", "READ_TOKEN", "x");
    f.hide_values();
    let e = infisical(&f, "staging", "/").verify(&d).await.unwrap_err();
    assert!(e.to_string().contains("read-value permission"), "{e}");
}

#[tokio::test]
async fn rate_limits_and_outages_are_retryable_and_a_retry_succeeds() {
    let f = fake().await;
    let c = infisical(&f, "prod", "/");
    let new = SecretValue::single("new-from-velvet".into());
    let d = delivery(&new, None);
    f.fail_next(&[429]);
    let e = c.apply(&d).await.unwrap_err();
    assert!(
        matches!(&e, AdapterError::Retryable { retry_after: Some(r), message } if *r == Duration::from_secs(1) && message.contains("Rate limit exceeded")),
        "{e:?}"
    );
    f.fail_next(&[503]);
    assert!(c.apply(&d).await.unwrap_err().is_retryable());
    c.apply(&d).await.unwrap();
    c.verify(&d).await.unwrap();

    // A budget about to run out: Velvet waits for the window to reset instead of taking a 429.
    f.set_budget(5, Duration::from_secs(2));
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
    assert_eq!(f.requests().2, 0, "no 429 for an empty budget");

    f.set_budget(100, Duration::from_secs(60));
    f.set_delay(Duration::from_secs(30));
    let quick = consumer::InfisicalSecret::new(
        &f.url(),
        consumer::InfisicalTarget {
            project_id: PROJECT.into(),
            environment: "prod".into(),
            secret_path: "/".into(),
            key: "READ_TOKEN".into(),
        },
        consumer::InfisicalCredential::Token {
            token: velvet_core::secret::SecretString::new(TOKEN.into()),
            env: "INFISICAL_TOKEN".into(),
        },
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
