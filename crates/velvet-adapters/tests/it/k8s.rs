//! The `k8s_secret` consumer against the Kubernetes fake (real paths, merge patches, base64 data,
//! `Status` errors, rollouts), with `kubectl` reading back the Secret Velvet wrote.

use crate::delivery;
use std::time::Duration;
use velvet_adapters::consumer::{self, Consumer};
use velvet_core::config::{ConsumerKind, ConsumerSpec, RestartTarget};
use velvet_core::secret::SecretValue;
use velvet_fakes::kubernetes::Kubernetes;

const TOKEN: &str = "k8s-bearer-token-0123456789";

fn k8s(
    fake: &Kubernetes,
    secret: &str,
    restart: &[(&str, &str)],
    timeout: Duration,
    token: &str,
) -> Box<dyn Consumer> {
    let spec = ConsumerSpec {
        name: "k".into(),
        lock_key: None,
        verify_probe: None,
        kind: ConsumerKind::K8sSecret {
            namespace: "console".into(),
            secret: secret.into(),
            key: "READ_TOKEN".into(),
            token_env: Some("K8S_TOKEN".into()),
            ca_file: None,
            restart: restart
                .iter()
                .map(|(k, n)| RestartTarget {
                    kind: k.to_string(),
                    name: n.to_string(),
                })
                .collect(),
            rollout_timeout: timeout,
            api_url: fake.url(),
            template: None,
        },
    };
    let token = token.to_string();
    consumer::build(&spec, &move |n: &str| {
        (n == "K8S_TOKEN").then(|| token.clone())
    })
    .unwrap()
}

/// `kubectl get secret` (its discovery, then the GET), run beside the fake on this runtime. It
/// sends no token over plain HTTP, so the fake lets its reads in anonymously.
async fn kubectl_reads(fake: &Kubernetes, secret: &str) -> String {
    fake.allow_anonymous_reads();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kubeconfig");
    std::fs::write(&config, fake.kubeconfig(TOKEN)).unwrap();
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&config)
        .args([
            "get",
            "secret",
            secret,
            "-n",
            "console",
            "-o",
            "jsonpath={.data.READ_TOKEN}",
        ])
        .output()
        .await
        .expect("kubectl is on the machine");
    assert!(
        out.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    use base64::Engine as _;
    let plain = base64::engine::general_purpose::STANDARD
        .decode(out.stdout.trim_ascii())
        .unwrap();
    String::from_utf8(plain).unwrap()
}

#[tokio::test]
async fn writes_its_key_restarts_once_waits_for_the_rollout_and_kubectl_reads_it() {
    let fake = Kubernetes::start(TOKEN, Duration::from_millis(300)).await;
    fake.add_secret(
        "console",
        "api",
        &[("READ_TOKEN", "old"), ("OTHER", "keep")],
    );
    fake.add_secret("console", "unrelated", &[("READ_TOKEN", "other")]);
    fake.add_workload("deployments", "console", "web", 3);
    fake.add_workload("daemonsets", "console", "agent", 2);
    let c = k8s(
        &fake,
        "api",
        &[("Deployment", "web"), ("DaemonSet", "agent")],
        Duration::from_secs(10),
        TOKEN,
    );
    assert_eq!(c.default_lock_key(), "k8s:console/api");
    let found = c.probe().await.unwrap();
    assert!(
        found.contains("`K8S_TOKEN`") && found.contains("holds"),
        "{found}"
    );

    let (old, new) = (
        SecretValue::single("old".into()),
        SecretValue::single("new-from-velvet".into()),
    );
    let d = delivery(&new, Some(&old));
    c.apply(&d).await.unwrap();
    c.apply(&d).await.unwrap();
    let start = std::time::Instant::now();
    c.verify(&d).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "verify waited for the rollout"
    );
    c.verify(&d).await.unwrap(); // repeated after a crash: no second restart
    assert_eq!(fake.restarts("deployments", "console", "web"), 1);
    assert_eq!(fake.restarts("daemonsets", "console", "agent"), 1);
    let held = fake.secret("console", "api").unwrap();
    assert_eq!(
        (held["READ_TOKEN"].as_str(), held["OTHER"].as_str()),
        ("new-from-velvet", "keep")
    );
    assert_eq!(
        fake.secret("console", "unrelated").unwrap()["READ_TOKEN"],
        "other"
    );
    assert_eq!(kubectl_reads(&fake, "api").await, "new-from-velvet");

    // Rollback puts the old value back and restarts again, so no pod keeps the discarded one.
    c.rollback(&d).await.unwrap();
    assert_eq!(fake.secret("console", "api").unwrap()["READ_TOKEN"], "old");
    assert_eq!(fake.restarts("deployments", "console", "web"), 2);

    // A Secret that does not exist yet is created; a token with no previous value rolls back to
    // no key at all.
    let fresh = k8s(&fake, "created", &[], Duration::from_secs(10), TOKEN);
    let first = delivery(&new, None);
    fresh.apply(&first).await.unwrap();
    fresh.verify(&first).await.unwrap();
    assert_eq!(kubectl_reads(&fake, "created").await, "new-from-velvet");
    fresh.rollback(&first).await.unwrap();
    assert!(
        !fake
            .secret("console", "created")
            .unwrap()
            .contains_key("READ_TOKEN")
    );
}

#[tokio::test]
async fn refusals_missing_workloads_and_slow_rollouts_are_named() {
    let fake = Kubernetes::start(TOKEN, Duration::from_secs(30)).await;
    fake.add_secret("console", "api", &[]);
    fake.add_workload("deployments", "console", "web", 1);
    let new = SecretValue::single("new-from-velvet".into());
    let d = delivery(&new, None);

    let e = k8s(&fake, "api", &[], Duration::from_secs(1), "expired-token")
        .apply(&d)
        .await
        .unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("401") && e.to_string().contains("`K8S_TOKEN`"),
        "{e}"
    );
    assert!(!e.to_string().contains("expired-token") && !e.to_string().contains("new-from-velvet"));

    let missing = k8s(
        &fake,
        "api",
        &[("StatefulSet", "db")],
        Duration::from_secs(1),
        TOKEN,
    );
    assert!(
        missing
            .probe()
            .await
            .unwrap_err()
            .to_string()
            .contains("StatefulSet `db` not found")
    );

    // The rollout takes 30 s here; verify gives up after 1 s, retryably.
    let slow = k8s(
        &fake,
        "api",
        &[("Deployment", "web")],
        Duration::from_secs(1),
        TOKEN,
    );
    slow.apply(&d).await.unwrap();
    let e = slow.verify(&d).await.unwrap_err();
    assert!(
        e.is_retryable() && e.to_string().contains("did not complete"),
        "{e}"
    );

    fake.pause("deployments", "console", "web");
    let e = slow.verify(&delivery(&new, None)).await.unwrap_err();
    assert!(!e.is_retryable() && e.to_string().contains("paused"), "{e}");

    fake.fail_next(&[429]);
    let e = slow.apply(&d).await.unwrap_err();
    assert!(
        e.is_retryable() && e.retry_after() == Some(Duration::from_secs(1)),
        "{e:?}"
    );

    // A token that expires between steps: permanent, and named.
    fake.expire_token();
    let e = slow.apply(&d).await.unwrap_err();
    assert!(!e.is_retryable() && e.to_string().contains("401"), "{e}");

    // An API server that does not answer in time is retryable.
    fake.set_delay(Duration::from_secs(30));
    let quick = consumer::K8sSecret::new(
        &fake.url(),
        consumer::K8sTarget {
            namespace: "console".into(),
            secret: "api".into(),
            key: "READ_TOKEN".into(),
            restart: vec![],
            rollout_timeout: Duration::from_secs(1),
        },
        velvet_core::secret::SecretString::new(TOKEN.into()),
        "`K8S_TOKEN`",
        None,
        consumer::Renderer::new(None).unwrap(),
    )
    .unwrap()
    .with_timeout(Duration::from_secs(1));
    let start = std::time::Instant::now();
    let e = quick.verify(&d).await.unwrap_err();
    assert!(
        e.is_retryable() && e.to_string().contains("timed out"),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}
