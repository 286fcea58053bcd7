//! Revocation gates: [`attended`] decides for a person who is there (proceed, force, approve);
//! this module holds the rule for a revoke nobody is present for (design §4, I2b): `auto`
//! after its grace period, `emergency` at once, and later schedules and plans. Such a revoke
//! runs only if the gate needs no person (no TOTP, no approvals) and the job's requester holds
//! `rotations.revoke` and one of the gate's roles; otherwise the job pauses at
//! `proceed_revoke`. The flow type never weakens a gate. Pure: the engine records the steps.

mod attended;

pub use attended::{
    Approver, Asker, Attempt, Code, GateDecision, Verdict, approve, proceed_revoke, role_fits,
};

use crate::config::GateSpec;
use crate::decision::DecisionStep;
use crate::identity::{Permission, Role};

/// Whether a revoke may run unattended, with the trace of why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unattended {
    pub allowed: bool,
    pub steps: Vec<DecisionStep>,
}

/// Decides an unattended revoke for a job requested by a caller of `role` (`None`: unknown,
/// as for jobs created before roles were recorded) under `gate` (`None`: no gate matches).
pub fn unattended_revoke(gate: Option<&GateSpec>, role: Option<Role>) -> Unattended {
    let mut steps = vec![];
    let Some(role) = role else {
        steps.push(DecisionStep::new(
            "requester_role",
            false,
            "the requester's role is not known",
        ));
        return Unattended {
            allowed: false,
            steps,
        };
    };
    let may_revoke = role.grants(Permission::RotationsRevoke);
    steps.push(DecisionStep::new(
        "permission",
        may_revoke,
        format!(
            "requester role {} {} velvet.rotations.revoke",
            role.as_str(),
            if may_revoke {
                "grants"
            } else {
                "does not grant"
            }
        ),
    ));
    if let Some(g) = gate {
        let r = &g.require;
        let needs_person = r.totp || r.approvals > 0;
        steps.push(DecisionStep::new(
            "gate_unattended",
            !needs_person,
            if needs_person {
                format!(
                    "gate {} needs a person (totp: {}, approvals: {})",
                    g.name, r.totp, r.approvals
                )
            } else {
                format!("gate {} needs no person", g.name)
            },
        ));
        let role_ok = r.roles.is_empty() || r.roles.iter().any(|x| x == role.as_str());
        steps.push(DecisionStep::new(
            "gate_role",
            role_ok,
            if r.roles.is_empty() {
                format!("gate {} names no roles", g.name)
            } else {
                format!(
                    "requester role {} {} one of {}",
                    role.as_str(),
                    if role_ok { "is" } else { "is not" },
                    r.roles.join(", ")
                )
            },
        ));
    }
    Unattended {
        allowed: steps.iter().all(DecisionStep::passed),
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GateMatch, GateRequire};

    fn gate(totp: bool, approvals: u32, roles: &[&str]) -> GateSpec {
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
            allow_force: false,
        }
    }

    #[test]
    fn every_gate_shape_against_every_role() {
        let shapes: Vec<(Option<GateSpec>, &str)> = vec![
            (None, "none"),
            (Some(gate(false, 0, &[])), "empty"),
            (Some(gate(false, 0, &["admin"])), "roles admin"),
            (
                Some(gate(false, 0, &["revoker", "admin"])),
                "roles revoker admin",
            ),
            (Some(gate(true, 0, &[])), "totp"),
            (Some(gate(false, 1, &[])), "approval"),
            (Some(gate(true, 1, &["revoker", "admin"])), "all"),
        ];
        for (g, label) in &shapes {
            for role in Role::ALL {
                let got = unattended_revoke(g.as_ref(), Some(role));
                let revoke = role.grants(Permission::RotationsRevoke);
                let expected = match *label {
                    "none" | "empty" => revoke,
                    "roles admin" => role == Role::Admin,
                    "roles revoker admin" => matches!(role, Role::Revoker | Role::Admin),
                    _ => false,
                };
                assert_eq!(got.allowed, expected, "{label} × {role:?}: {:?}", got.steps);
                assert_eq!(got.allowed, got.steps.iter().all(DecisionStep::passed));
            }
            assert!(
                !unattended_revoke(g.as_ref(), None).allowed,
                "{label} × unknown"
            );
        }
    }
}
