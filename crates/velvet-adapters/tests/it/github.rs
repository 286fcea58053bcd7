//! The `github_actions_secret` consumer against the GitHub fake (real paths and headers, sealed
//! boxes the fake opens, 201/204, `{message, documentation_url, status}` errors, primary and
//! secondary rate limits), with PyNaCl opening a sealed box to prove the encryption.

use crate::delivery;
use std::time::{Duration, Instant};
use velvet_adapters::AdapterError;
use velvet_adapters::consumer::{self, Consumer};
use velvet_core::config::{ConsumerKind, ConsumerSpec, GithubScope};
use velvet_core::secret::{SecretString, SecretValue};
use velvet_fakes::github::{Fault, GitHub};

const TOKEN: &str = "github_pat_0123456789abcdefghij";

fn repo(r: &str, environment: Option<&str>) -> GithubScope {
    GithubScope::Repository {
        repository: r.into(),
        environment: environment.map(str::to_string),
    }
}

fn github(fake: &GitHub, scope: GithubScope, token: &str) -> Box<dyn Consumer> {
    let spec = ConsumerSpec {
        name: "gh".into(),
        lock_key: None,
        verify_probe: None,
        kind: ConsumerKind::GithubActionsSecret {
            scope,
            secret_name: "READ_TOKEN".into(),
            token_env: "GITHUB_TOKEN_FOR_VELVET".into(),
            api_url: fake.url(),
            template: None,
        },
    };
    let token = token.to_string();
    consumer::build(&spec, &move |n: &str| {
        (n == "GITHUB_TOKEN_FOR_VELVET").then(|| token.clone())
    })
    .unwrap()
}

fn value(
    s: &std::collections::BTreeMap<String, velvet_fakes::github::Secret>,
    k: &str,
) -> Option<String> {
    s.get(k).map(|x| x.value.clone())
}

#[tokio::test]
async fn seals_to_the_repository_key_touches_only_its_secret_and_rolls_back() {
    let fake = GitHub::start(TOKEN).await;
    fake.add_repo("acme/console");
    fake.add_repo("acme/other");
    fake.put_repo_secret("acme/console", "READ_TOKEN", "old");
    fake.put_repo_secret("acme/console", "DEPLOY_KEY", "keep");
    fake.put_repo_secret("acme/other", "READ_TOKEN", "other");
    let c = github(&fake, repo("acme/console", None), TOKEN);
    assert_eq!(c.default_lock_key(), "github:acme/console");
    let found = c.probe().await.unwrap();
    assert!(
        found.contains("GITHUB_TOKEN_FOR_VELVET") && found.contains("exists"),
        "{found}"
    );

    let (old, new) = (
        SecretValue::single("old".into()),
        SecretValue::single("new-from-velvet".into()),
    );
    let d = delivery(&new, Some(&old));
    c.apply(&d).await.unwrap();
    c.verify(&d).await.unwrap();
    let held = fake.repo_secrets("acme/console");
    assert_eq!(
        value(&held, "READ_TOKEN").as_deref(),
        Some("new-from-velvet")
    );
    assert_eq!(value(&held, "DEPLOY_KEY").as_deref(), Some("keep"));
    assert_eq!(
        value(&fake.repo_secrets("acme/other"), "READ_TOKEN").as_deref(),
        Some("other")
    );

    // GitHub rotates the key: the cached one is refused (422), fetched again, and the write lands.
    fake.rotate_key("acme/console");
    c.apply(&d).await.unwrap();
    c.rollback(&d).await.unwrap();
    assert_eq!(
        value(&fake.repo_secrets("acme/console"), "READ_TOKEN").as_deref(),
        Some("old")
    );
    let first = delivery(&new, None);
    c.apply(&first).await.unwrap();
    c.rollback(&first).await.unwrap();
    c.rollback(&first).await.unwrap();
    assert_eq!(
        value(&fake.repo_secrets("acme/console"), "READ_TOKEN"),
        None
    );
    let e = c.verify(&first).await.unwrap_err();
    assert!(e.to_string().contains("no secret `READ_TOKEN`"), "{e}");
}

/// libsodium's own implementation (PyNaCl) opens what Velvet sealed.
#[tokio::test]
async fn pynacl_opens_the_sealed_box() {
    let fake = GitHub::start(TOKEN).await;
    fake.add_repo("acme/console");
    let c = github(&fake, repo("acme/console", None), TOKEN);
    let new = SecretValue::single("opened-by-libsodium".into());
    c.apply(&delivery(&new, None)).await.unwrap();
    let (sealed, key) = fake.last_sealed("acme/console").unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, base64; from nacl.public import PrivateKey, SealedBox; \
             print(SealedBox(PrivateKey(base64.b64decode(sys.argv[2]))).decrypt(base64.b64decode(sys.argv[1])).decode(), end='')",
            &sealed,
            &key,
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "PyNaCl is needed (scripts/setup installs it: pip install PyNaCl): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "opened-by-libsodium");
}

#[tokio::test]
async fn environments_and_organisations_have_their_own_keys_and_paths() {
    let fake = GitHub::start(TOKEN).await;
    fake.add_repo("acme/console");
    fake.add_environment("acme/console", "production");
    fake.add_org("acme");
    let new = SecretValue::single("new-from-velvet".into());
    let d = delivery(&new, None);
    let env = github(&fake, repo("acme/console", Some("production")), TOKEN);
    env.apply(&d).await.unwrap();
    env.verify(&d).await.unwrap();
    let org = github(
        &fake,
        GithubScope::Organization {
            organization: "acme".into(),
            visibility: "private".into(),
        },
        TOKEN,
    );
    assert_eq!(org.default_lock_key(), "github:acme");
    org.apply(&d).await.unwrap();
    org.verify(&d).await.unwrap();
    assert_eq!(
        value(
            &fake.environment_secrets("acme/console", "production"),
            "READ_TOKEN"
        )
        .as_deref(),
        Some("new-from-velvet")
    );
    let o = fake.org_secrets("acme");
    assert_eq!(o["READ_TOKEN"].visibility.as_deref(), Some("private"));
    assert!(
        fake.repo_secrets("acme/console").is_empty(),
        "the repository's own secrets are untouched"
    );
    let e = github(&fake, repo("acme/console", Some("staging")), TOKEN)
        .apply(&d)
        .await
        .unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("environment `staging`"),
        "{e}"
    );
}

#[tokio::test]
async fn refusals_and_rate_limits_are_classified() {
    let fake = GitHub::start(TOKEN).await;
    fake.add_repo("acme/console");
    let new = SecretValue::single("new-from-velvet".into());
    let d = delivery(&new, None);

    let wrong = github(&fake, repo("acme/console", None), "ghp_revoked0123456789");
    let e = wrong.apply(&d).await.unwrap_err();
    let m = e.to_string();
    assert!(
        !e.is_retryable()
            && m.contains("401")
            && m.contains("`GITHUB_TOKEN_FOR_VELVET`")
            && m.contains("Bad credentials"),
        "{m}"
    );
    assert!(
        !m.contains("ghp_revoked") && !m.contains("new-from-velvet"),
        "{m}"
    );
    let e = github(&fake, repo("acme/gone", None), TOKEN)
        .probe()
        .await
        .unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("repository `acme/gone`"),
        "{e}"
    );

    let c = github(&fake, repo("acme/console", None), TOKEN);
    fake.fail_next(&[Fault::Secondary]);
    let e = c.apply(&d).await.unwrap_err();
    assert!(
        matches!(&e, AdapterError::Retryable { retry_after: Some(r), message } if *r == Duration::from_secs(1) && message.contains("secondary rate limit")),
        "{e:?}"
    );
    fake.fail_next(&[Fault::Primary]);
    let e = c.apply(&d).await.unwrap_err();
    assert!(
        matches!(&e, AdapterError::Retryable { retry_after: Some(r), .. } if *r <= Duration::from_secs(2)),
        "{e:?}"
    );
    fake.fail_next(&[Fault::Status(502)]);
    assert!(c.apply(&d).await.unwrap_err().is_retryable());
    c.apply(&d).await.unwrap();
    c.verify(&d).await.unwrap();
    // A token that expires (or is revoked) between steps.
    fake.expire_token();
    let e = c.verify(&d).await.unwrap_err();
    assert!(!e.is_retryable() && e.to_string().contains("401"), "{e}");

    fake.set_delay(Duration::from_secs(30));
    let quick = consumer::GithubActionsSecret::new(
        &fake.url(),
        repo("acme/console", None),
        "READ_TOKEN",
        SecretString::new(TOKEN.into()),
        "GITHUB_TOKEN_FOR_VELVET",
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
