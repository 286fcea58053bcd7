use super::*;
use crate::config::LoadOptions;
use crate::rotation::{JobState, Stage};
use std::path::Path;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn config() -> Config {
    let yaml = "
defaults: {max_age: 90d, remind_before: 10d}
revocation_gates:
  - {name: prod, match: {tags: [prod]}, require: {totp: true, approvals: 1}}
tokens:
  - {name: old, flow: auto, source: {kind: random}}
  - {name: nearing, flow: auto, source: {kind: random}}
  - {name: covered, flow: auto, rotate_every: 80d, source: {kind: random}}
  - {name: staged, flow: staged, rotate_every: 30d, max_age: 365d, source: {kind: random}}
  - {name: auto-soon, flow: auto, rotate_every: 30d, max_age: 365d, source: {kind: random}}
  - {name: gated, tags: [prod], source: {kind: random}}
";
    let env = |_: &str| None;
    Config::parse(
        yaml,
        Path::new("/tmp/velvet.yaml"),
        LoadOptions {
            env: &env,
            check_env: false,
        },
    )
    .unwrap()
}

fn token(name: &str, last: &str, next: Option<&str>) -> TokenRecord {
    TokenRecord {
        name: name.into(),
        description: String::new(),
        tags: vec![],
        source_kind: "random".into(),
        status: crate::model::TokenStatus::Active,
        spec: serde_json::Value::Null,
        current_version: Some(1),
        last_rotated_at: Some(t(last)),
        next_rotation_at: next.map(t),
        consumer_count: 0,
        active_job_id: None,
        created_at: t("2025-01-01T00:00:00Z"),
        updated_at: t("2025-01-01T00:00:00Z"),
    }
}

fn job(token: &str, status: JobStatus, awaiting: Option<Awaiting>) -> RotationJob {
    let at = t("2026-06-01T00:00:00Z");
    RotationJob {
        job_id: format!("rot_{token}"),
        token: token.into(),
        flow_type: FlowType::Staged,
        state: JobState {
            stage: Stage::Revoke,
            status,
            awaiting,
            ..JobState::NEW
        },
        new_version: Some(2),
        previous_version: Some(1),
        requested_by: "scheduler".into(),
        requested_role: None,
        reason: None,
        created_at: at,
        updated_at: at,
        finished_at: None,
        error: Some("consumer env: permission denied".into()),
        consumers: vec![],
        lease_owner: None,
        lease_expires_at: None,
        wake_at: None,
    }
}

fn names(items: &[Item]) -> Vec<&str> {
    items.iter().map(|i| i.token.as_str()).collect()
}

#[test]
fn the_summary_names_what_needs_a_person_and_why() {
    let now = t("2026-06-01T00:00:00Z");
    let tokens = [
        token("old", "2026-01-01T00:00:00Z", None),
        token("nearing", "2026-03-08T00:00:00Z", None),
        token(
            "covered",
            "2026-03-08T00:00:00Z",
            Some("2026-05-27T00:00:00Z"),
        ),
        token(
            "staged",
            "2026-05-05T00:00:00Z",
            Some("2026-06-04T00:00:00Z"),
        ),
        token(
            "auto-soon",
            "2026-05-05T00:00:00Z",
            Some("2026-06-04T00:00:00Z"),
        ),
        token("gated", "2026-05-30T00:00:00Z", None),
    ];
    let jobs = [
        job(
            "gated",
            JobStatus::AwaitingConfirmation,
            Some(Awaiting::ProceedRevoke),
        ),
        job("old", JobStatus::Failed, None),
    ];
    let s = status(&config(), &tokens, &jobs, &[], now);
    assert!(s.needs_attention);
    assert_eq!(names(&s.failed), ["old"]);
    assert!(
        s.failed[0].detail.contains("permission denied"),
        "{:?}",
        s.failed
    );
    assert_eq!(names(&s.awaiting), ["gated"]);
    let a = &s.awaiting[0].detail;
    assert!(
        a.contains("gate `prod`") && a.contains("TOTP") && a.contains("1 approval"),
        "{a}"
    );
    assert_eq!(names(&s.overdue), ["old"]);
    assert!(
        s.overdue[0].detail.contains("151d old, past max_age 90d"),
        "{:?}",
        s.overdue
    );
    // nearing: max_age in 6 days and nothing scheduled; covered: its rotation comes first;
    // staged: a rotation that waits for a person in 3 days; auto-soon rotates itself.
    assert_eq!(names(&s.due_soon), ["nearing", "staged"]);
}

#[test]
fn nothing_to_do_is_all_clear() {
    let now = t("2026-06-01T00:00:00Z");
    let tokens = [token("gated", "2026-05-30T00:00:00Z", None)];
    let s = status(&config(), &tokens, &[], &[], now);
    assert_eq!(s, Status::default());
    assert!(!s.needs_attention);
}
