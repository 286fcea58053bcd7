//! Wake-ups across replicas: a job another replica kicks off is claimed here at once, heard by
//! LISTEN/NOTIFY, though this engine's own poll would not come for an hour.

use crate::harness::*;
use std::time::{Duration, Instant};
use velvet_core::config::FlowType;
use velvet_core::rotation::{JobStatus, Stage};
use velvet_store::{Dialect, NewJob};
use velvet_testkit::RawDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kickoff_on_another_replica_is_claimed_here_without_polling() {
    let h = harness_polling(Dialect::Postgres, "", "auto", Duration::from_secs(3600)).await;
    let RawDb::Postgres(raw) = &h.f.raw else {
        unreachable!()
    };
    // Ready once this engine LISTENs.
    let start = Instant::now();
    loop {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query = 'LISTEN \"velvet_jobs\"'",
        )
        .fetch_one(raw)
        .await
        .unwrap();
        if listening > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the engine never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut heard = h.engine.subscribe();
    // Another replica's store handle: nothing here is nudged in process.
    let other = h.f.another_handle().await;
    let job = other
        .create_job(&NewJob {
            token: "api",
            flow: FlowType::Auto,
            requested_by: "replica-b",
            requested_role: Some(velvet_core::identity::Role::Admin),
            reason: None,
            idempotency: None,
            schedule_slot: None,
            given: None,
        })
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), heard.recv())
        .await
        .expect("the change was announced")
        .unwrap();
    assert_eq!(
        first, job.job_id,
        "event streams hear of the other replica's change"
    );
    h.until(
        &job.job_id,
        "succeeded",
        is(Stage::Done, JobStatus::Succeeded),
    )
    .await;
}
