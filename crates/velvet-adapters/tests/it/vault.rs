//! The `vault_kv` consumer against a real OpenBao dev server.

use velvet_adapters::Delivery;
use velvet_adapters::consumer::{self, Consumer};
use velvet_core::config::{ConsumerKind, ConsumerSpec};
use velvet_core::secret::SecretValue;
use velvet_testkit::servers::OpenBao;

fn vault(bao: &OpenBao, mount: &str, previous_field: Option<&str>) -> Box<dyn Consumer> {
    let spec = ConsumerSpec {
        name: "v".into(),
        lock_key: None,
        verify_probe: None,
        kind: ConsumerKind::VaultKv {
            address: bao.address.clone(),
            token_env: "VAULT_TOKEN".into(),
            mount: mount.into(),
            path: "console/prod".into(),
            field: "API_TOKEN".into(),
            previous_field: previous_field.map(str::to_string),
        },
    };
    let token = bao.token.clone();
    consumer::build(&spec, &move |n: &str| {
        (n == "VAULT_TOKEN").then(|| token.clone())
    })
    .unwrap()
}

fn read(bao: &OpenBao) -> serde_json::Value {
    let out = bao.cli(&["kv", "get", "-format=json", "-mount=secret", "console/prod"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()["data"]["data"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_v2_writes_only_its_fields_with_check_and_set() {
    let bao = tokio::task::spawn_blocking(OpenBao::start).await.unwrap();
    let out = bao.cli(&[
        "kv",
        "put",
        "-mount=secret",
        "console/prod",
        "OTHER=keep-me",
        "API_TOKEN=old",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = vault(&bao, "secret", Some("API_TOKEN_PREVIOUS"));
    let (old, new) = (
        SecretValue::single("old".into()),
        SecretValue::single("new-from-velvet".into()),
    );
    let d = Delivery {
        token: "t",
        job_id: "rot_1",
        version: 2,
        new: &new,
        new_fingerprint: "f",
        previous: Some(&old),
        previous_version: Some(1),
        previous_fingerprint: Some("p"),
    };
    c.apply(&d).await.unwrap();
    c.apply(&d).await.unwrap();
    c.verify(&d).await.unwrap();
    let data = read(&bao);
    assert_eq!(
        data,
        serde_json::json!({"OTHER": "keep-me", "API_TOKEN": "new-from-velvet", "API_TOKEN_PREVIOUS": "old"}),
        "I7: other fields kept"
    );
    c.revoke_previous(&d).await.unwrap();
    assert_eq!(
        read(&bao),
        serde_json::json!({"OTHER": "keep-me", "API_TOKEN": "new-from-velvet"})
    );
    c.rollback(&d).await.unwrap();
    assert_eq!(
        read(&bao),
        serde_json::json!({"OTHER": "keep-me", "API_TOKEN": "old"})
    );
    assert!(!c.verify(&d).await.unwrap_err().is_retryable());

    // A KV v1 mount accepts the write with no version: the "200 with a warning" class of
    // mistake must fail, not pass.
    assert!(
        bao.cli(&["secrets", "enable", "-path=kv1", "-version=1", "kv"])
            .status
            .success()
    );
    let e = vault(&bao, "kv1", None).apply(&d).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");

    let bad_token = ConsumerSpec {
        name: "v".into(),
        lock_key: None,
        verify_probe: None,
        kind: ConsumerKind::VaultKv {
            address: bao.address.clone(),
            token_env: "T".into(),
            mount: "secret".into(),
            path: "console/prod".into(),
            field: "A".into(),
            previous_field: None,
        },
    };
    let bad = consumer::build(&bad_token, &|_: &str| Some("not-a-token".into())).unwrap();
    let e = bad.apply(&d).await.unwrap_err();
    assert!(!e.is_retryable() && e.to_string().contains("403"), "{e}");
    // The doctor's probe reads, changing nothing: it tells a refused token from a missing path.
    let e = bad.probe().await.unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    let found = vault(&bao, "secret", None).probe().await.unwrap();
    assert_eq!(found, "the secret is readable");
}
