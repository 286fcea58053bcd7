//! Every gate shape against every role, operator, code state, approval set and attempt.

use super::*;
use crate::config::{GateMatch, GateRequire};

fn gate(totp: bool, approvals: u32, roles: &[&str], allow_force: bool) -> GateSpec {
    GateSpec {
        name: "g".into(),
        matches: GateMatch {
            tags: vec![],
            tokens: vec!["*".into()],
        },
        require: GateRequire {
            totp,
            approvals,
            roles: roles.iter().map(|r| r.to_string()).collect(),
        },
        allow_force,
    }
}

fn shapes() -> Vec<GateSpec> {
    let mut v = vec![];
    for totp in [false, true] {
        for approvals in [0, 1, 2] {
            for roles in [&[][..], &["admin"][..], &["revoker", "admin"][..]] {
                for force in [false, true] {
                    v.push(gate(totp, approvals, roles, force));
                }
            }
        }
    }
    v
}

const CODES: [Code; 5] = [
    Code::Missing,
    Code::Unchecked,
    Code::Fresh,
    Code::Wrong,
    Code::Replayed { step: 7 },
];

fn approval_sets() -> Vec<Vec<Approver<'static>>> {
    let a = |operator, role| Approver { operator, role };
    vec![
        vec![],
        vec![a("me", Some("admin"))],
        vec![a("bob", Some("admin"))],
        vec![a("bob", Some("operator"))],
        vec![a("bob", None)],
        vec![a("bob", Some("revoker")), a("carol", Some("admin"))],
        vec![a("bob", Some("admin")), a("me", Some("admin"))],
    ]
}

/// What the gate must say, written from the design's rules rather than from the code.
fn expected(
    g: &GateSpec,
    asker: Asker<'_>,
    approvals: &[Approver<'_>],
    code: Code,
) -> &'static str {
    let fits = |role: &str| g.require.roles.is_empty() || g.require.roles.iter().any(|r| r == role);
    if !fits(asker.role.as_str()) {
        return "refuse";
    }
    let others = approvals
        .iter()
        .filter(|a| Some(a.operator) != asker.operator && a.role.is_some_and(fits))
        .count() as u32;
    if others < g.require.approvals {
        return "refuse";
    }
    if g.require.totp {
        return match (asker.operator, code) {
            (Some(_), Code::Fresh) => "pass",
            (Some(_), Code::Unchecked) => "check",
            _ => "refuse",
        };
    }
    "pass"
}

#[test]
fn proceed_revoke_against_every_gate_asker_code_and_approval_set() {
    let mut cases = 0;
    for g in shapes() {
        for role in Role::ALL {
            for operator in [None, Some("me")] {
                for approvals in approval_sets() {
                    for code in CODES {
                        let asker = Asker { role, operator };
                        let d =
                            proceed_revoke(&g, "rot_1", asker, &approvals, Attempt::Pass { code });
                        let want = expected(&g, asker, &approvals, code);
                        let got = match &d.verdict {
                            Verdict::Pass => "pass",
                            Verdict::CheckCode => "check",
                            Verdict::Refuse { .. } => "refuse",
                            Verdict::Invalid(_) => "invalid",
                        };
                        assert_eq!(
                            got, want,
                            "{g:?} {asker:?} {approvals:?} {code:?}: {:?}",
                            d.steps
                        );
                        // The trace agrees with the verdict: a pass is all passes, a refusal
                        // ends on the failing step.
                        match &d.verdict {
                            Verdict::Pass => {
                                assert!(d.steps.iter().all(|s| s.passed()));
                                assert_eq!(d.steps.last().unwrap().rule, "gate");
                            }
                            Verdict::Refuse { error, .. } => {
                                assert!(!d.steps.last().unwrap().passed());
                                assert!(d.steps[..d.steps.len() - 1].iter().all(|s| s.passed()));
                                assert!(["gate_required", "gate_denied"].contains(error));
                            }
                            _ => {}
                        }
                        assert!(d.alert.is_none(), "only force raises force_revoke");
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 36 * 5 * 2 * 7 * 5);
}

#[test]
fn a_code_is_checked_only_once_everything_else_holds() {
    // Checking spends the code, so a request the gate refuses for another reason keeps it.
    for g in shapes().into_iter().filter(|g| g.require.totp) {
        for role in Role::ALL {
            for approvals in approval_sets() {
                let asker = Asker {
                    role,
                    operator: Some("me"),
                };
                let unchecked = proceed_revoke(
                    &g,
                    "rot_1",
                    asker,
                    &approvals,
                    Attempt::Pass {
                        code: Code::Unchecked,
                    },
                );
                let fresh = proceed_revoke(
                    &g,
                    "rot_1",
                    asker,
                    &approvals,
                    Attempt::Pass { code: Code::Fresh },
                );
                assert_eq!(
                    unchecked.verdict == Verdict::CheckCode,
                    fresh.verdict == Verdict::Pass,
                    "{g:?} {role:?} {approvals:?}"
                );
            }
        }
    }
}

#[test]
fn refusals_name_the_fix() {
    let asker = Asker {
        role: Role::Revoker,
        operator: Some("me"),
    };
    let two = gate(false, 2, &[], false);
    let d = proceed_revoke(
        &two,
        "rot_9",
        asker,
        &[],
        Attempt::Pass {
            code: Code::Missing,
        },
    );
    let Verdict::Refuse { error, message, .. } = d.verdict else {
        panic!("{d:?}")
    };
    assert_eq!(error, "gate_required");
    assert!(
        message.contains("velvet rotations approve rot_9 --totp CODE"),
        "{message}"
    );

    let totp = gate(true, 0, &[], false);
    let d = proceed_revoke(
        &totp,
        "rot_9",
        asker,
        &[],
        Attempt::Pass {
            code: Code::Missing,
        },
    );
    let Verdict::Refuse { message, .. } = d.verdict else {
        panic!("{d:?}")
    };
    assert!(
        message.contains("velvet rotations stage rot_9 proceed_revoke --totp CODE"),
        "{message}"
    );

    let robot = Asker {
        role: Role::Admin,
        operator: None,
    };
    let d = proceed_revoke(
        &totp,
        "rot_9",
        robot,
        &[],
        Attempt::Pass {
            code: Code::Unchecked,
        },
    );
    let Verdict::Refuse { error, message, .. } = d.verdict else {
        panic!("{d:?}")
    };
    assert_eq!(error, "gate_required");
    assert!(message.contains("--operator NAME"), "{message}");

    let d = proceed_revoke(
        &totp,
        "rot_9",
        asker,
        &[],
        Attempt::Pass {
            code: Code::Replayed { step: 3 },
        },
    );
    let Verdict::Refuse { event, .. } = d.verdict else {
        panic!("{d:?}")
    };
    assert_eq!(event, "totp_replayed");
}

#[test]
fn force_needs_a_gate_that_allows_it_an_admin_and_a_reason() {
    for g in shapes() {
        for role in Role::ALL {
            for reason in [None, Some("  "), Some("pager: db breach")] {
                let asker = Asker {
                    role,
                    operator: None,
                };
                let d = proceed_revoke(&g, "rot_1", asker, &[], Attempt::Force { reason });
                match (&d.verdict, g.allow_force, role == Role::Admin, reason) {
                    (Verdict::Refuse { error, .. }, false, _, _) => {
                        assert_eq!(*error, "gate_denied")
                    }
                    (Verdict::Refuse { error, .. }, true, false, _) => {
                        assert_eq!(*error, "forbidden")
                    }
                    (Verdict::Invalid(m), true, true, None | Some("  ")) => {
                        assert!(m.starts_with("reason:"))
                    }
                    (Verdict::Pass, true, true, Some(r)) => {
                        assert_eq!(r, "pager: db breach");
                        assert!(d.alert.as_deref().unwrap().contains(r));
                        assert!(d.resource.contains("force gate g"));
                    }
                    other => panic!("{g:?} {role:?} {reason:?}: {other:?}"),
                }
                if d.verdict != Verdict::Pass {
                    assert!(d.alert.is_none());
                }
            }
        }
    }
}

#[test]
fn approvals_need_an_operator_of_the_gates_roles_and_a_fresh_code() {
    for g in shapes() {
        for role in [None, Some("operator"), Some("revoker"), Some("admin")] {
            for operator in [None, Some("bob")] {
                for code in CODES {
                    let d = approve(&g, "rot_1", operator, role, code);
                    let fits = role.is_some_and(|r| role_fits(&g, r));
                    let role_refused = operator.is_some() && role.is_some() && !fits;
                    let want = match (operator, code) {
                        _ if role_refused => "refuse",
                        (Some(_), Code::Unchecked) => "check",
                        (Some(_), Code::Fresh) if role.is_some() => "pass",
                        _ => "refuse",
                    };
                    let got = match &d.verdict {
                        Verdict::Pass => "pass",
                        Verdict::CheckCode => "check",
                        Verdict::Refuse { .. } => "refuse",
                        Verdict::Invalid(_) => "invalid",
                    };
                    assert_eq!(
                        got, want,
                        "{g:?} {operator:?} {role:?} {code:?}: {:?}",
                        d.steps
                    );
                    if got == "pass" {
                        assert!(d.steps.iter().all(|s| s.passed()));
                        assert!(d.steps.last().unwrap().detail.contains("bob approves"));
                    }
                }
            }
        }
    }
}
