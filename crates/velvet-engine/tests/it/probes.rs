//! Probes against a real store and file: a consumer holding the current version is in sync; one
//! edited by hand is drifted (a `drift` notification, once) until `resync` puts the current
//! version back on it, and only on it; a consumer that cannot be read back is not probed.

use crate::harness::{OPERATOR, harness, is};
use velvet_adapters::AdapterError;
use velvet_core::model::HealthState;
use velvet_core::rotation::{JobStatus, Stage};
use velvet_engine::ServiceError;
use velvet_store::StoreError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_found_evented_once_and_resynced_on_the_drifted_consumer_only() {
    let h = harness("", "staged").await;
    let store = &*h.f.store;
    let first = h.engine.probe_pass().await.unwrap();
    assert_eq!(first.tokens, 1);
    let states: Vec<_> = first
        .changed
        .iter()
        .map(|(_, of, s)| (of.as_str(), *s))
        .collect();
    assert_eq!(
        states,
        [
            ("source", HealthState::InSync),
            ("env", HealthState::InSync)
        ],
        "the exec hook has no verify_command, so nothing probes it"
    );

    // Someone edits the file by hand.
    let env = h.f.dir.path().join("app.env");
    std::fs::write(&env, "OTHER=kept\nAPI_TOKEN=edited-by-hand\n").unwrap();
    let second = h.engine.probe_pass().await.unwrap();
    assert_eq!(
        second.changed,
        vec![("api".into(), "env".into(), HealthState::Drifted)]
    );
    let health = store.consumer_health().await.unwrap();
    assert_eq!(health[0].health.state, HealthState::Drifted);
    assert!(
        health[0].health.detail.contains("holds a different value"),
        "{:?}",
        health[0]
    );
    // Drift is told once, not at every probe.
    h.engine.probe_pass().await.unwrap();
    let drift: Vec<_> = store
        .unrouted(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event == "drift")
        .collect();
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0].token, "api");
    assert!(
        !drift[0].data.to_string().contains("edited-by-hand"),
        "no value in an event"
    );

    let hook_before = std::fs::metadata(h.f.dir.path().join("hook.out"))
        .ok()
        .map(|m| m.len());
    let r = h.engine.resync("api", "operator:alice").await.unwrap();
    assert_eq!(
        (r.version, r.repaired.as_slice()),
        (1, ["env".to_string()].as_slice())
    );
    assert!(r.failed.is_empty());
    assert_eq!(h.env_file(), "OTHER=kept\nAPI_TOKEN=version-one\n");
    assert_eq!(
        std::fs::metadata(h.f.dir.path().join("hook.out"))
            .ok()
            .map(|m| m.len()),
        hook_before,
        "the consumer that had not drifted was not written"
    );
    assert_eq!(
        store.consumer_health().await.unwrap()[0].health.state,
        HealthState::InSync
    );
    let audit = store.audit_page(0, 1000).await.unwrap();
    let e = audit.iter().find(|e| e.action == "token.resynced").unwrap();
    assert_eq!(
        (e.actor.as_str(), e.outcome.as_str()),
        ("operator:alice", "success")
    );
    assert!(e.detail.contains("\"repaired\":[\"env\"]"), "{}", e.detail);
    assert!(
        h.engine.probe_pass().await.unwrap().changed.is_empty(),
        "in sync after resync"
    );
    // Nothing drifted: resync changes nothing.
    assert!(
        h.engine
            .resync("api", "operator:alice")
            .await
            .unwrap()
            .repaired
            .is_empty()
    );

    // An unfinished rotation owns the consumers: resync is refused, and probes skip the token.
    let job = h.kickoff(velvet_core::config::FlowType::Staged).await;
    h.until(
        &job.job_id,
        "minted",
        is(Stage::Distribute, JobStatus::AwaitingConfirmation),
    )
    .await;
    match h.engine.resync("api", OPERATOR.actor).await {
        Err(ServiceError::Store(StoreError::JobActive(id))) => assert_eq!(id, job.job_id),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.engine.probe_pass().await.unwrap().tokens, 0);
}

#[test]
fn a_refused_credential_is_stale_a_timeout_unreachable_another_value_drift() {
    use velvet_engine::classify_probe as c;
    assert_eq!(
        c(&AdapterError::permanent("Heroku answered 401 Unauthorized")),
        HealthState::Stale
    );
    assert_eq!(
        c(&AdapterError::permanent("the API answered 403 Forbidden")),
        HealthState::Stale
    );
    assert_eq!(
        c(&AdapterError::retryable("the webhook timed out")),
        HealthState::Unreachable
    );
    assert_eq!(
        c(&AdapterError::permanent(
            "/etc/app.env holds a different value under `K`"
        )),
        HealthState::Drifted
    );
}
