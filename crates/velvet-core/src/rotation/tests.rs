//! Table-driven tests: every row of design §4's table, and every action in every state that the
//! table does not allow.

use super::*;
use Action as A;
use Awaiting::*;
use JobStatus::*;
use Stage::*;

const FLOWS: [FlowType; 3] = [FlowType::Staged, FlowType::Auto, FlowType::Emergency];

fn st(stage: Stage, status: JobStatus, awaiting: Option<Awaiting>) -> JobState {
    JobState {
        stage,
        status,
        awaiting,
        revoke_started: false,
        reverting: None,
    }
}

fn op(action: Action) -> Event {
    Event::Operator {
        action,
        gate_passed: true,
    }
}

#[test]
fn every_row_of_the_design_table() {
    use FlowType::*;
    let rows: Vec<(FlowType, JobState, Event, JobState)> = vec![
        (
            Staged,
            JobState::NEW,
            Event::Claimed,
            st(Mint, Running, None),
        ),
        (
            Staged,
            st(Mint, Running, None),
            Event::Minted,
            st(Distribute, AwaitingConfirmation, Some(ProceedDistribute)),
        ),
        (
            Auto,
            st(Mint, Running, None),
            Event::Minted,
            st(Distribute, Running, None),
        ),
        (
            Emergency,
            st(Mint, Running, None),
            Event::Minted,
            st(Distribute, Running, None),
        ),
        (
            Staged,
            st(Distribute, AwaitingConfirmation, Some(ProceedDistribute)),
            op(A::ProceedDistribute),
            st(Distribute, Running, None),
        ),
        (
            Staged,
            st(Distribute, Running, None),
            Event::AllVerified {
                unattended_revoke: true,
            },
            st(Revoke, AwaitingConfirmation, Some(ProceedRevoke)),
        ),
        (
            Auto,
            st(Distribute, Running, None),
            Event::AllVerified {
                unattended_revoke: true,
            },
            st(Revoke, Waiting, None),
        ),
        (
            Auto,
            st(Revoke, Waiting, None),
            Event::GraceElapsed {
                unattended_revoke: true,
            },
            st(Revoke, Running, None),
        ),
        (
            Auto,
            st(Revoke, Waiting, None),
            Event::GraceElapsed {
                unattended_revoke: false,
            },
            st(Revoke, AwaitingConfirmation, Some(ProceedRevoke)),
        ),
        (
            Emergency,
            st(Distribute, Running, None),
            Event::AllVerified {
                unattended_revoke: true,
            },
            st(Revoke, Running, None),
        ),
        // I2b: an emergency whose revoke needs a person (or a role the requester lacks)
        // pauses for it, like any other flow.
        (
            Emergency,
            st(Distribute, Running, None),
            Event::AllVerified {
                unattended_revoke: false,
            },
            st(Revoke, AwaitingConfirmation, Some(ProceedRevoke)),
        ),
        (
            Auto,
            st(Distribute, Running, None),
            Event::AllVerified {
                unattended_revoke: false,
            },
            st(Revoke, Waiting, None),
        ),
        (
            Staged,
            st(Distribute, Running, None),
            Event::AllVerified {
                unattended_revoke: true,
            },
            st(Revoke, AwaitingConfirmation, Some(ProceedRevoke)),
        ),
        (
            Staged,
            st(Distribute, Running, None),
            Event::StepFailed,
            st(Distribute, Failed, None),
        ),
        (
            Staged,
            st(Revoke, AwaitingConfirmation, Some(ProceedRevoke)),
            op(A::ProceedRevoke),
            st(Revoke, Running, None),
        ),
        (
            Staged,
            st(Revoke, Running, None),
            Event::Revoked,
            JobState {
                revoke_started: true,
                ..st(Done, Succeeded, None)
            },
        ),
        (
            Staged,
            st(Distribute, Failed, None),
            op(A::RetryFailed),
            st(Distribute, Running, None),
        ),
        (
            Staged,
            st(Mint, Failed, None),
            op(A::RetryFailed),
            st(Mint, Running, None),
        ),
        (
            Staged,
            st(Distribute, Failed, None),
            op(A::Rollback),
            JobState {
                reverting: Some(Revert::Rollback),
                ..st(Distribute, Running, None)
            },
        ),
        (
            Staged,
            st(Revoke, AwaitingConfirmation, Some(ProceedRevoke)),
            op(A::Rollback),
            JobState {
                reverting: Some(Revert::Rollback),
                ..st(Revoke, Running, None)
            },
        ),
        (
            Staged,
            JobState::NEW,
            op(A::Abort),
            JobState {
                reverting: Some(Revert::Abort),
                ..st(Mint, Running, None)
            },
        ),
        (
            Staged,
            st(Distribute, AwaitingConfirmation, Some(ProceedDistribute)),
            op(A::Abort),
            JobState {
                reverting: Some(Revert::Abort),
                ..st(Distribute, Running, None)
            },
        ),
    ];
    for (flow, from, event, to) in rows {
        assert_eq!(
            transition(flow, from, event),
            Ok(to),
            "{flow:?} {from:?} {event:?}"
        );
    }
}

#[test]
fn reverts_finish_and_survive_failures() {
    let f = FlowType::Staged;
    let rb = transition(f, st(Distribute, Failed, None), op(A::Rollback)).unwrap();
    assert_eq!(
        transition(
            f,
            rb,
            Event::AllVerified {
                unattended_revoke: true
            }
        )
        .unwrap_err()
        .state,
        rb,
        "no progress while reverting"
    );
    assert!(
        transition(f, rb, Event::Aborted).is_err(),
        "a rollback does not end as an abort"
    );
    let failed = transition(f, rb, Event::StepFailed).unwrap();
    assert_eq!(
        (failed.status, failed.reverting),
        (Failed, Some(Revert::Rollback))
    );
    let again = transition(f, failed, op(A::RetryFailed)).unwrap();
    assert_eq!(
        transition(f, again, Event::RolledBack).unwrap(),
        st(Done, RolledBack, None)
    );
    let ab = transition(f, JobState::NEW, op(A::Abort)).unwrap();
    assert_eq!(
        transition(f, ab, Event::Aborted).unwrap(),
        st(Done, Aborted, None)
    );
    assert!(
        transition(f, ab, Event::Claimed).is_err(),
        "an aborting job is not claimed as new"
    );
}

#[test]
fn revoke_needs_the_gate_and_rollback_is_refused_once_revoke_ran() {
    let f = FlowType::Staged;
    let awaiting = st(Revoke, AwaitingConfirmation, Some(ProceedRevoke));
    let denied = transition(
        f,
        awaiting,
        Event::Operator {
            action: A::ProceedRevoke,
            gate_passed: false,
        },
    );
    assert_eq!(
        denied.unwrap_err().state,
        awaiting,
        "I2: no revoke without the gate"
    );
    let failed_in_revoke = transition(f, st(Revoke, Running, None), Event::StepFailed).unwrap();
    assert!(failed_in_revoke.revoke_started);
    assert!(
        transition(f, failed_in_revoke, op(A::Rollback)).is_err(),
        "the old value may be gone: no rollback"
    );
    let retried = transition(f, failed_in_revoke, op(A::RetryFailed)).unwrap();
    assert_eq!(
        transition(f, retried, Event::Revoked).unwrap().status,
        Succeeded
    );
}

/// Every state the flow can reach, including failed ones and reverts.
fn reachable() -> Vec<(FlowType, JobState)> {
    let events = [
        Event::Claimed,
        Event::Minted,
        Event::AllVerified {
            unattended_revoke: true,
        },
        Event::AllVerified {
            unattended_revoke: false,
        },
        Event::StepFailed,
        Event::GraceElapsed {
            unattended_revoke: true,
        },
        Event::GraceElapsed {
            unattended_revoke: false,
        },
        Event::Revoked,
        Event::RolledBack,
        Event::Aborted,
    ];
    let mut seen = vec![];
    for flow in FLOWS {
        let mut frontier = vec![JobState::NEW];
        while let Some(s) = frontier.pop() {
            if seen.contains(&(flow, s)) {
                continue;
            }
            seen.push((flow, s));
            for e in events
                .iter()
                .copied()
                .chain(Action::ALL.iter().map(|a| op(*a)))
            {
                if let Ok(n) = transition(flow, s, e) {
                    frontier.push(n);
                }
            }
        }
    }
    seen
}

#[test]
fn every_action_not_in_the_table_is_an_invalid_transition() {
    let states = reachable();
    assert!(states.len() > 20, "{}", states.len());
    for (flow, s) in states {
        for &action in Action::ALL {
            let allowed = match action {
                A::ProceedDistribute => {
                    s.reverting.is_none() && s.awaiting == Some(ProceedDistribute)
                }
                A::ProceedRevoke => s.reverting.is_none() && s.awaiting == Some(ProceedRevoke),
                A::RetryFailed => s.status == Failed,
                A::Rollback => {
                    s.reverting.is_none()
                        && !s.revoke_started
                        && matches!(s.status, Failed | AwaitingConfirmation)
                }
                A::Abort => {
                    s.reverting.is_none()
                        && (s == JobState::NEW
                            || s.awaiting == Some(ProceedDistribute)
                            || (s.stage == Mint && s.status == Failed))
                }
            };
            let got = transition(flow, s, op(action));
            assert_eq!(got.is_ok(), allowed, "{flow:?} {s:?} {action:?} -> {got:?}");
            if let Err(e) = got {
                assert_eq!(e.state, s, "the refusal carries the current state");
                assert!(e.to_string().contains(s.status.as_str()));
            }
        }
        if s.status.is_terminal() {
            assert_eq!(s.stage, Done);
        }
    }
}

#[test]
fn words_round_trip() {
    /// Each word parses back, and strum's word is serde's (the store and the API agree).
    fn check<W: Word + std::fmt::Debug + PartialEq + serde::Serialize>() {
        for w in W::ALL {
            assert_eq!(W::parse(w.as_str()), Some(*w));
            assert_eq!(
                serde_json::to_value(w).unwrap(),
                serde_json::Value::from(w.as_str()),
                "{w:?}"
            );
        }
        assert_eq!(W::parse("Not_A_Word"), None);
    }
    check::<Stage>();
    check::<JobStatus>();
    check::<Awaiting>();
    check::<Action>();
    check::<Revert>();
    check::<crate::job::ConsumerStatus>();
    assert_eq!(JobStatus::ALL.len(), 8);
    assert_eq!(
        JobStatus::AwaitingConfirmation.as_str(),
        "awaiting_confirmation"
    );
    assert_eq!(JobStatus::RolledBack.to_string(), "rolled_back");
}
