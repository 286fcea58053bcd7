//! `verify.probe` on a consumer that is not a webhook: the new value must be accepted, and with
//! `reject_status` a random wrong value refused, before the consumer counts as verified.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use std::sync::{Arc, Mutex};
use velvet_adapters::Delivery;
use velvet_adapters::consumer::{self, Consumer};
use velvet_core::config::{ConsumerKind, ConsumerSpec, FileFormat, ProbeSpec};
use velvet_core::secret::SecretValue;

#[derive(Clone, Default)]
struct Endpoint {
    /// The bearer it accepts; `None` accepts anything (the endpoint a probe must not trust).
    accepts: Arc<Mutex<Option<String>>>,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn me(State(e): State<Endpoint>, headers: HeaderMap) -> StatusCode {
    let got = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    e.seen.lock().unwrap().push(got.clone());
    match &*e.accepts.lock().unwrap() {
        None => StatusCode::OK,
        Some(want) if got == format!("Bearer {want}") => StatusCode::OK,
        Some(_) => StatusCode::UNAUTHORIZED,
    }
}

async fn endpoint() -> (Endpoint, String) {
    let e = Endpoint::default();
    let app = axum::Router::new()
        .route("/me", get(me))
        .with_state(e.clone());
    (e, format!("http://{}/me", velvet_fakes::serve(app).await))
}

fn probed_file(path: &std::path::Path, url: &str, reject: Option<u16>) -> Box<dyn Consumer> {
    let spec = ConsumerSpec {
        name: "f".into(),
        lock_key: None,
        verify_probe: Some(ProbeSpec {
            url: url.into(),
            header: Some("Authorization: Bearer {{value}}".into()),
            expect_status: 200,
            reject_status: reject,
        }),
        kind: ConsumerKind::File {
            path: path.to_path_buf(),
            format: FileFormat::Raw,
            key: None,
            previous_key: None,
            template: None,
            mode: 0o600,
            follow_symlinks: false,
        },
    };
    consumer::build(&spec, &|_: &str| None).unwrap()
}

fn delivery(new: &SecretValue) -> Delivery<'_> {
    Delivery {
        token: "t",
        job_id: "rot_p",
        version: 2,
        new,
        new_fingerprint: "fp",
        previous: None,
        previous_version: None,
        previous_fingerprint: None,
    }
}

#[tokio::test]
async fn a_probe_with_reject_status_refuses_an_endpoint_that_accepts_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (e, url) = endpoint().await;
    let new = SecretValue::single("the-new-read-token".into());
    let d = delivery(&new);
    let c = probed_file(&dir.path().join("t"), &url, Some(401));

    // The endpoint does not know the new value yet: retryable, the rollout may be under way.
    *e.accepts.lock().unwrap() = Some("the-old-read-token".into());
    c.apply(&d).await.unwrap();
    let err = c.verify(&d).await.unwrap_err();
    assert!(
        err.is_retryable() && err.to_string().contains("expected 200"),
        "{err}"
    );

    // It knows it: the new value is accepted and a random wrong one refused.
    *e.accepts.lock().unwrap() = Some("the-new-read-token".into());
    e.seen.lock().unwrap().clear();
    c.verify(&d).await.unwrap();
    let seen = e.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "the new value, then a wrong one: {seen:?}");
    assert_eq!(seen[0], "Bearer the-new-read-token");
    assert!(
        seen[1].starts_with("Bearer ") && seen[1].len() > 20 && seen[1] != seen[0],
        "the wrong value is random and as long: {seen:?}"
    );

    // An endpoint that accepts anything proves nothing: permanent, and says so.
    *e.accepts.lock().unwrap() = None;
    let err = c.verify(&d).await.unwrap_err();
    assert!(
        !err.is_retryable() && err.to_string().contains("does not check the value"),
        "{err}"
    );
    assert!(!err.to_string().contains("the-new-read-token"), "{err}");

    // Without reject_status the same endpoint passes: the negative check is what catches it.
    let lax = probed_file(&dir.path().join("t"), &url, None);
    lax.verify(&d).await.unwrap();
    // The file consumer's own verify still runs first.
    std::fs::write(dir.path().join("t"), "something else").unwrap();
    assert!(lax.verify(&d).await.is_err());
}
