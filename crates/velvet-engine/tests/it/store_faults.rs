//! A store that fails for a moment never fails a rotation: the step keeps its lease, backs off,
//! and runs again when the lease expires.

use crate::harness::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use velvet_core::config::FlowType;
use velvet_core::rotation::{JobStatus, Stage};
use velvet_store::Dialect;
use velvet_testkit::RawDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failing_for_now_during_mint_delays_the_job_instead_of_failing_it() {
    let h = harness_on(Dialect::Postgres, "", "auto").await;
    // A short lease, below what velvet.yaml accepts, so the retry comes quickly.
    let mut c = (*h.engine_config()).clone();
    c.engine.lease = Duration::from_millis(600);
    h.config.store(Arc::new(c));
    let RawDb::Postgres(raw) = &h.f.raw else {
        unreachable!()
    };
    // A real serialization failure (SQLSTATE 40001) for every new version while the trigger
    // stands; the sequence counts the tries (it is not rolled back with them).
    sqlx::raw_sql(
        "CREATE SEQUENCE fault_hits;
         CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM nextval('fault_hits'); RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$;
         CREATE TRIGGER fault BEFORE INSERT ON secret_versions FOR EACH ROW EXECUTE FUNCTION fault();",
    )
    .execute(raw)
    .await
    .unwrap();
    let job = h.kickoff(FlowType::Auto).await;
    let hits = || async {
        sqlx::query_scalar::<_, i64>("SELECT last_value FROM fault_hits WHERE is_called")
            .fetch_optional(raw)
            .await
            .unwrap()
            .unwrap_or(0)
    };
    let start = Instant::now();
    while hits().await < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the mint was not tried again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let j = h.f.store.get_job(&job.job_id).await.unwrap().unwrap();
    assert_eq!(
        (j.state.stage, j.state.status, j.error.as_deref()),
        (Stage::Mint, JobStatus::Running, None),
        "a transient store error must not fail the job"
    );
    sqlx::raw_sql("DROP TRIGGER fault ON secret_versions")
        .execute(raw)
        .await
        .unwrap();
    let j = h
        .until(
            &job.job_id,
            "succeeded",
            is(Stage::Done, JobStatus::Succeeded),
        )
        .await;
    assert_eq!(j.new_version, Some(2));
}
