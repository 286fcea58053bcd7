//! The `aws_secrets_manager` consumer against moto (a local AWS) with its IAM checks on: moto
//! verifies each request's SigV4 signature and the caller's policy, as AWS does.

use crate::delivery;
use velvet_adapters::consumer::{self, Consumer};
use velvet_core::config::{ConsumerKind, ConsumerSpec};
use velvet_core::secret::SecretValue;
use velvet_testkit::servers::Moto;

fn aws(moto: &Moto, secret_id: &str, field: Option<&str>, secret_key: &str) -> Box<dyn Consumer> {
    let spec = ConsumerSpec {
        name: "sm".into(),
        lock_key: None,
        verify_probe: None,
        kind: ConsumerKind::AwsSecretsManager {
            region: "eu-west-1".into(),
            secret_id: secret_id.into(),
            field: field.map(str::to_string),
            access_key_id_env: "AWS_KEY_ID".into(),
            secret_access_key_env: "AWS_SECRET".into(),
            session_token_env: None,
            api_url: moto.endpoint.clone(),
            template: None,
        },
    };
    let (id, secret) = (moto.access_key_id.clone(), secret_key.to_string());
    consumer::build(&spec, &move |n: &str| match n {
        "AWS_KEY_ID" => Some(id.clone()),
        "AWS_SECRET" => Some(secret.clone()),
        _ => None,
    })
    .unwrap()
}

fn versions(moto: &Moto, id: &str) -> usize {
    let v = moto.secretsmanager(&format!("list_secret_version_ids(SecretId='{id}')"));
    v["Versions"].as_array().unwrap().len()
}

#[tokio::test]
async fn writes_one_version_per_step_keeps_other_fields_and_rolls_back() {
    let moto = Moto::start(&[
        "console/read=old",
        r#"console/json={"READ_TOKEN":"old","OTHER":"keep"}"#,
        "other=untouched",
    ]);
    let whole = aws(&moto, "console/read", None, &moto.secret_access_key);
    assert_eq!(whole.default_lock_key(), "aws:eu-west-1/console/read");
    let found = whole.probe().await.unwrap();
    assert!(
        found.contains("`AWS_KEY_ID` + `AWS_SECRET`") && found.contains("arn:aws"),
        "{found}"
    );

    let (old, new) = (
        SecretValue::single("old".into()),
        SecretValue::single("new-from-velvet".into()),
    );
    let d = delivery(&new, Some(&old));
    whole.apply(&d).await.unwrap();
    whole.apply(&d).await.unwrap(); // repeated after a crash
    whole.verify(&d).await.unwrap();
    assert_eq!(
        versions(&moto, "console/read"),
        2,
        "one new version for the job"
    );
    let cur = moto.secretsmanager("get_secret_value(SecretId='console/read')");
    assert_eq!(cur["SecretString"], "new-from-velvet");

    // A field of a JSON secret: the other keys are kept.
    let field = aws(
        &moto,
        "console/json",
        Some("READ_TOKEN"),
        &moto.secret_access_key,
    );
    field.apply(&d).await.unwrap();
    field.verify(&d).await.unwrap();
    let cur = moto.secretsmanager("get_secret_value(SecretId='console/json')");
    let json: serde_json::Value =
        serde_json::from_str(cur["SecretString"].as_str().unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"READ_TOKEN": "new-from-velvet", "OTHER": "keep"})
    );
    let other = moto.secretsmanager("get_secret_value(SecretId='other')");
    assert_eq!(other["SecretString"], "untouched");

    // Rollback writes the previous value back.
    whole.rollback(&d).await.unwrap();
    let cur = moto.secretsmanager("get_secret_value(SecretId='console/read')");
    assert_eq!(cur["SecretString"], "old");
    assert!(
        whole.verify(&d).await.is_err(),
        "verify fails once the value is rolled back"
    );
}

#[tokio::test]
async fn a_wrong_key_and_a_missing_secret_are_named() {
    let moto = Moto::start(&["console/read=old"]);
    let new = SecretValue::single("new-from-velvet".into());
    let d = delivery(&new, None);
    let e = aws(&moto, "console/read", None, "not-the-secret-key")
        .apply(&d)
        .await
        .unwrap_err();
    let m = e.to_string();
    assert!(
        !e.is_retryable() && m.contains("`AWS_KEY_ID` + `AWS_SECRET`"),
        "{m}"
    );
    assert!(
        !m.contains("not-the-secret-key") && !m.contains("new-from-velvet"),
        "{m}"
    );
    let e = aws(&moto, "console/gone", None, &moto.secret_access_key)
        .apply(&d)
        .await
        .unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("no secret `console/gone`"),
        "{e}"
    );
    assert!(
        aws(&moto, "console/gone", None, &moto.secret_access_key)
            .probe()
            .await
            .is_err()
    );
}

/// AWS answers throttling as 400 `ThrottlingException` and outages as 5xx: both retried, as is a
/// Secrets Manager endpoint that cannot be reached. (moto cannot be made to throttle.)
#[tokio::test]
async fn throttling_outages_and_an_unreachable_endpoint_are_retryable() {
    use axum::http::StatusCode;
    let answers = std::sync::Arc::new(std::sync::Mutex::new(vec![
        (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        (StatusCode::BAD_REQUEST, "ThrottlingException"),
    ]));
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move || {
            let answers = answers.clone();
            async move {
                let (status, kind) = answers.lock().unwrap().pop().unwrap();
                let body = serde_json::json!({"__type": kind, "message": "Rate exceeded"});
                (status, axum::Json(body))
            }
        }),
    );
    let addr = velvet_fakes::serve(app).await;
    let spec = |url: String| ConsumerSpec {
        name: "sm".into(),
        lock_key: None,
        verify_probe: None,
        kind: ConsumerKind::AwsSecretsManager {
            region: "eu-west-1".into(),
            secret_id: "x".into(),
            field: None,
            access_key_id_env: "K".into(),
            secret_access_key_env: "S".into(),
            session_token_env: None,
            api_url: url,
            template: None,
        },
    };
    let env = |_: &str| Some("test-access-key-for-the-stub".to_string());
    let new = SecretValue::single("new-from-velvet".into());
    let d = delivery(&new, None);
    let c = consumer::build(&spec(format!("http://{addr}")), &env).unwrap();
    for want in ["ThrottlingException", "ServiceUnavailable"] {
        let e = c.apply(&d).await.unwrap_err();
        assert!(e.is_retryable() && e.to_string().contains(want), "{e}");
    }
    let dead = consumer::build(&spec("http://127.0.0.1:1".into()), &env).unwrap();
    let e = dead.verify(&d).await.unwrap_err();
    assert!(
        e.is_retryable() && e.to_string().contains("could not connect"),
        "{e}"
    );
}
