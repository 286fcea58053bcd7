//! The revocation gate for a person who is there (design §7): an operator proceeding to revoke,
//! forcing the gate, or approving someone else's revoke. Pure: the engine service loads the
//! approvals and checks step-up codes, then records the decision and raises the events the
//! verdict names. A step-up code is spent when checked, so the gate asks for the check
//! ([`Verdict::CheckCode`]) only once everything else holds, and is then asked again.

use crate::config::GateSpec;
use crate::decision::DecisionStep;
use crate::identity::Role;

/// Who asks the gate to let a job's revoke go ahead.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub role: Role,
    /// The operator behind the caller's token or session, if any.
    pub operator: Option<&'a str>,
}

/// An approval on record, with its approver's role as it stands now (`None`: the operator is
/// gone or disabled, so the approval no longer counts).
#[derive(Debug, Clone, Copy)]
pub struct Approver<'a> {
    pub operator: &'a str,
    pub role: Option<&'a str>,
}

/// The asker's step-up code, as far as it was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// No code, or only blanks.
    Missing,
    /// Given, not checked yet.
    Unchecked,
    /// A code of the asker's operator, valid now and not used before (now spent).
    Fresh,
    /// Not valid now for the asker's operator (or the operator cannot step up).
    Wrong,
    /// Valid, but its time step was already used by this operator.
    Replayed { step: u64 },
}

/// How the asker means to get past the gate.
#[derive(Debug, Clone, Copy)]
pub enum Attempt<'a> {
    Pass { code: Code },
    Force { reason: Option<&'a str> },
}

/// What the gate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead; the steps are recorded as an allowed decision first (I6).
    Pass,
    /// All else holds: check the code now and ask again with the result.
    CheckCode,
    /// 403 with `error`; recorded as a denied decision and a security event of kind `event`.
    Refuse {
        error: &'static str,
        event: &'static str,
        message: String,
    },
    /// 422: the request itself is wrong; nothing is recorded.
    Invalid(String),
}

/// The verdict with its trace, the resource it is recorded under, and for a forced gate the
/// critical `force_revoke` event to raise once the decision is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateDecision {
    pub verdict: Verdict,
    pub steps: Vec<DecisionStep>,
    pub resource: String,
    pub alert: Option<String>,
}

impl GateDecision {
    fn new(resource: String) -> Self {
        Self {
            verdict: Verdict::Pass,
            steps: vec![],
            resource,
            alert: None,
        }
    }

    fn pass(&mut self, rule: &str, detail: impl Into<String>) {
        self.steps.push(DecisionStep::new(rule, true, detail));
    }

    fn refuse(
        mut self,
        rule: &str,
        detail: impl Into<String>,
        error: &'static str,
        event: &'static str,
        message: String,
    ) -> Self {
        self.deny(rule, detail, error, event, message);
        self
    }

    fn deny(
        &mut self,
        rule: &str,
        detail: impl Into<String>,
        error: &'static str,
        event: &'static str,
        message: String,
    ) {
        self.steps.push(DecisionStep::new(rule, false, detail));
        self.verdict = Verdict::Refuse {
            error,
            event,
            message,
        };
    }
}

/// Whether an operator of `role` may approve or pass `gate` (its `roles`, when it lists any).
pub fn role_fits(gate: &GateSpec, role: &str) -> bool {
    gate.require.roles.is_empty() || gate.require.roles.iter().any(|r| r == role)
}

/// Decides `proceed_revoke` of job `job_id` under `gate` for `asker`, with the approvals on
/// record. Approvals count only from other operators who hold one of the gate's roles now.
pub fn proceed_revoke(
    gate: &GateSpec,
    job_id: &str,
    asker: Asker<'_>,
    approvals: &[Approver<'_>],
    attempt: Attempt<'_>,
) -> GateDecision {
    match attempt {
        Attempt::Force { reason } => force(gate, job_id, asker, reason),
        Attempt::Pass { code } => pass(gate, job_id, asker, approvals, code),
    }
}

fn pass(
    gate: &GateSpec,
    job_id: &str,
    asker: Asker<'_>,
    approvals: &[Approver<'_>],
    code: Code,
) -> GateDecision {
    let mut d = GateDecision::new(format!(
        "POST /api/v1/rotations/{job_id}/stage proceed_revoke gate {}",
        gate.name
    ));
    let r = &gate.require;
    let role = asker.role.as_str();
    if !role_fits(gate, role) {
        let roles = r.roles.join(", ");
        return d.refuse(
            "gate_role",
            format!("role {role} is not one of {roles}"),
            "gate_denied",
            "gate_denied",
            format!("the gate `{}` accepts only {roles}", gate.name),
        );
    }
    if !r.roles.is_empty() {
        d.pass(
            "gate_role",
            format!("role {role} is one of the gate's roles"),
        );
    }
    let mut passed = vec![];
    if r.approvals > 0 {
        let others = approvals
            .iter()
            .filter(|a| Some(a.operator) != asker.operator)
            .filter(|a| a.role.is_some_and(|role| role_fits(gate, role)))
            .count() as u32;
        if others < r.approvals {
            let holding = if r.roles.is_empty() {
                String::new()
            } else {
                format!(" holding one of {}", r.roles.join(", "))
            };
            return d.refuse(
                "gate_approvals",
                format!("{others} of {} approvals", r.approvals),
                "gate_required",
                "gate_denied",
                format!(
                    "the gate `{}` needs {} approval(s) by other operators{holding}; it has \
                     {others}: each approves with `velvet rotations approve {job_id} --totp \
                     CODE` or in the console",
                    gate.name, r.approvals
                ),
            );
        }
        d.pass(
            "gate_approvals",
            format!("{others} of {} approvals", r.approvals),
        );
        passed.push(format!("{others} approvals"));
    }
    if r.totp {
        if !totp(&mut d, &gate.name, job_id, asker.operator, code) {
            return d;
        }
        passed.push(format!(
            "fresh TOTP of operator {}",
            asker.operator.unwrap_or_default()
        ));
    }
    d.pass("gate", format!("gate {}: {}", gate.name, passed.join(", ")));
    d
}

/// The TOTP requirement: true once `code` is fresh; otherwise `d` holds the verdict to give.
fn totp(
    d: &mut GateDecision,
    gate: &str,
    job_id: &str,
    operator: Option<&str>,
    code: Code,
) -> bool {
    let Some(operator) = operator else {
        d.deny(
            "gate_totp",
            "the caller is not an operator",
            "gate_required",
            "gate_denied",
            format!(
                "the gate `{gate}` needs an operator's TOTP code: use a service token owned by \
                 an operator (velvet auth create-token --name N --role R --operator NAME) or \
                 log in to the console"
            ),
        );
        return false;
    };
    match code {
        Code::Missing => d.deny(
            "gate_totp",
            "no code given",
            "gate_required",
            "gate_denied",
            format!(
                "the gate `{gate}` needs a TOTP code from your authenticator: velvet rotations \
                 stage {job_id} proceed_revoke --totp CODE (the API's `totp` field)"
            ),
        ),
        Code::Unchecked => d.verdict = Verdict::CheckCode,
        Code::Wrong => d.deny(
            "gate_totp",
            format!("wrong code for operator {operator}"),
            "gate_denied",
            "gate_denied",
            "the TOTP code is not valid now".into(),
        ),
        Code::Replayed { step } => d.deny(
            "gate_totp",
            format!("code of step {step} already used by operator {operator}"),
            "gate_denied",
            "totp_replayed",
            "this TOTP code was already used (each code counts once per operator, so the code \
             you just logged in with is spent); wait for the next code, at most 30 s"
                .into(),
        ),
        Code::Fresh => {
            d.pass("gate_totp", format!("fresh code of operator {operator}"));
            return true;
        }
    }
    false
}

/// Passes `gate` by force: only where it allows force, only for an admin, only with a reason.
fn force(gate: &GateSpec, job_id: &str, asker: Asker<'_>, reason: Option<&str>) -> GateDecision {
    let mut d = GateDecision::new(format!(
        "POST /api/v1/rotations/{job_id}/stage proceed_revoke force gate {}",
        gate.name
    ));
    if !gate.allow_force {
        return d.refuse(
            "gate_force",
            "the gate does not allow force",
            "gate_denied",
            "gate_denied",
            format!(
                "the gate `{}` does not allow force (allow_force: false)",
                gate.name
            ),
        );
    }
    if asker.role != Role::Admin {
        return d.refuse(
            "gate_force",
            format!("role {} is not admin", asker.role.as_str()),
            "forbidden",
            "gate_denied",
            "forcing a revocation gate needs the admin role (velvet.admin)".into(),
        );
    }
    let Some(reason) = reason.map(str::trim).filter(|r| !r.is_empty()) else {
        d.verdict = Verdict::Invalid("reason: a forced revoke needs a reason".into());
        return d;
    };
    d.pass(
        "gate_force",
        format!("forced past gate {}: {reason}", gate.name),
    );
    d.alert = Some(format!("the gate `{}` was forced: {reason}", gate.name));
    d
}

/// Decides an approval of job `job_id`'s revoke under `gate` by the asker's operator, whose
/// role now is `role` (`None`: unknown or disabled, which is answered as a wrong code so the
/// answer tells nothing about operators).
pub fn approve(
    gate: &GateSpec,
    job_id: &str,
    operator: Option<&str>,
    role: Option<&str>,
    code: Code,
) -> GateDecision {
    let mut d = GateDecision::new(format!(
        "POST /api/v1/rotations/{job_id}/approvals gate {}",
        gate.name
    ));
    // The role first: a code is not spent on an approval that cannot count.
    if let (Some(op), Some(role)) = (operator, role)
        && !role_fits(gate, role)
    {
        return d.refuse(
            "gate_role",
            format!("operator {op} has role {role}"),
            "gate_denied",
            "gate_denied",
            format!(
                "operator {op} has role {role}; the gate `{}` takes approvals only from {}",
                gate.name,
                gate.require.roles.join(", ")
            ),
        );
    }
    let code = if role.is_none() && code == Code::Fresh {
        Code::Wrong
    } else {
        code
    };
    if !totp(&mut d, &gate.name, job_id, operator, code) {
        return d;
    }
    d.steps.pop();
    d.pass(
        "gate_totp",
        format!("operator {} approves", operator.unwrap_or_default()),
    );
    d
}

#[cfg(test)]
#[path = "attended_tests.rs"]
mod tests;
