//! Authentication and authorization (design §7). A bearer is either a service token
//! (`vlt_…`, looked up by its SHA-256 on every request, so a revocation holds at once on every
//! replica) or the bootstrap `VELVET_API_KEY`. Handlers state what they need in their signature:
//! `Can<TokensRead>`, `Can<Kickoff>`…; deny by default. Failed attempts with a credential are
//! limited per client address.

use crate::{ApiError, AppState};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::Method;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use subtle::ConstantTimeEq;
use velvet_core::decision::{Decision, DecisionStep, SecurityEvent, Severity};
use velvet_core::identity::{Permission, Role, hash_service_token, looks_like_service_token};

/// How stale `last_used_at` may get before a request refreshes it (a write per request
/// would make every read a write).
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    /// As recorded in audit records: `token:<name>` or `bootstrap-admin`.
    pub actor: String,
    pub role: Role,
    /// How the caller proved who it is, as decision steps.
    pub steps: Vec<DecisionStep>,
    /// The client's address.
    pub client: String,
    /// The operator who owns the service token, if one does (the one who can answer TOTP).
    pub operator: Option<String>,
}

impl Caller {
    /// The caller as the engine service takes it.
    pub fn person(&self) -> velvet_engine::Person<'_> {
        velvet_engine::Person {
            actor: &self.actor,
            role: self.role,
            operator: self.operator.as_deref(),
            client: &self.client,
            steps: &self.steps,
        }
    }

    /// 403 `forbidden` unless the caller's role grants `p`.
    pub fn require(&self, p: Permission) -> Result<(), ApiError> {
        if self.role.grants(p) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "role `{}` does not grant {}",
                self.role.as_str(),
                p.as_str()
            )))
        }
    }
}

/// The client's address: the peer, or what a trusted proxy says in `X-Forwarded-For`
/// (`server.trusted_proxies`, design §10).
pub(crate) fn client_addr(
    state: &AppState,
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
) -> IpAddr {
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    state.config().server.client_ip(peer, forwarded)
}

fn client_ip(parts: &Parts, state: &AppState) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    client_addr(state, peer, &parts.headers)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ip = client_ip(parts, state);
        // A valid credential always passes: 256-bit tokens cannot be guessed, and a shared
        // address (a proxy, a NAT) must not let one client lock out another (design §10).
        match authenticate(parts, state).await {
            Ok(mut caller) => {
                caller.client = ip.to_string();
                Ok(caller)
            }
            Err(Failure::Rejected { .. }) if state.limits.auth.blocked(&ip).is_some() => {
                // Over the budget: answer without storing a row per flood request.
                let secs = state.limits.auth.blocked(&ip).unwrap_or(1);
                Err(ApiError::rate_limited(
                    "too many failed authentications from this address; try again later",
                    secs.min(u16::MAX as u64) as u16,
                ))
            }
            Err(Failure::Rejected {
                message,
                subject,
                steps,
            }) => {
                // Only a presented credential is a guess worth limiting; a request without one
                // guesses nothing (and clients probing for auth would otherwise lock a shared
                // address out).
                if parts
                    .headers
                    .contains_key(axum::http::header::AUTHORIZATION)
                    && state.limits.auth.record(&ip)
                {
                    let mut ev = SecurityEvent::new(
                        "rate_limited",
                        Severity::Warning,
                        format!(
                            "too many failed authentications; {} {} is refused for a while",
                            parts.method,
                            parts.uri.path()
                        ),
                    );
                    ev.client = Some(ip.to_string());
                    security_event(state, ev).await;
                }
                // Every denial is a decision on record, and a security event.
                let d = Decision::new(&subject, "authenticate", &resource(parts), steps);
                if let Err(e) = state.store.record_decision(&d).await {
                    tracing::warn!(error = %e, "recording a denial failed");
                }
                let mut ev = SecurityEvent::new("auth_failed", Severity::Warning, message);
                ev.client = Some(ip.to_string());
                ev.subject = Some(subject);
                ev.decision_id = Some(d.id);
                security_event(state, ev).await;
                Err(ApiError::unauthorized(message))
            }
            Err(Failure::Store(e)) => Err(e),
        }
    }
}

enum Failure {
    Rejected {
        message: &'static str,
        subject: String,
        steps: Vec<DecisionStep>,
    },
    Store(ApiError),
}

fn rejected(message: &'static str, subject: &str, steps: Vec<DecisionStep>) -> Failure {
    Failure::Rejected {
        message,
        subject: subject.into(),
        steps,
    }
}

/// `METHOD /path`, what a decision is about.
fn resource(parts: &Parts) -> String {
    format!("{} {}", parts.method, parts.uri.path())
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, Failure> {
    if !parts
        .headers
        .contains_key(axum::http::header::AUTHORIZATION)
        && let Some(id) = crate::session::cookie(&parts.headers)
    {
        return match crate::session::caller(parts, state, &id).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(why)) => Err(rejected(
                "the console session is not valid; log in again",
                "anonymous",
                vec![DecisionStep::new("token_valid", false, why)],
            )),
            Err(e) => Err(Failure::Store(e)),
        };
    }
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let Some(presented) = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
    else {
        let message = "missing `Authorization: Bearer <token>`";
        return Err(rejected(
            message,
            "anonymous",
            vec![DecisionStep::new("token_valid", false, "no bearer token")],
        ));
    };
    if looks_like_service_token(presented) {
        return service_token(presented, state).await;
    }
    let config = state.config();
    let bootstrap = config.api_key.as_ref().is_some_and(|key| {
        presented.len() == key.expose().len()
            && bool::from(presented.as_bytes().ct_eq(key.expose().as_bytes()))
    });
    if bootstrap {
        Ok(Caller {
            actor: "bootstrap-admin".into(),
            role: Role::Admin,
            steps: vec![DecisionStep::new(
                "token_valid",
                true,
                "the bootstrap key (VELVET_API_KEY)",
            )],
            client: String::new(),
            operator: None,
        })
    } else {
        Err(rejected(
            "the bearer token is not valid",
            "anonymous",
            vec![DecisionStep::new(
                "token_valid",
                false,
                "neither a known service token nor the bootstrap key",
            )],
        ))
    }
}

async fn service_token(presented: &str, state: &AppState) -> Result<Caller, Failure> {
    // The lookup is by hash: an index finds it, and no comparison of secrets leaks timing.
    let found = state
        .store
        .service_token_by_hash(&hash_service_token(presented))
        .await
        .map_err(|e| Failure::Store(e.into()))?;
    let Some(t) = found else {
        return Err(rejected(
            "the bearer token is not valid",
            "anonymous",
            vec![DecisionStep::new(
                "token_valid",
                false,
                "no service token has this hash",
            )],
        ));
    };
    let subject = format!("token:{}", t.name);
    let valid = DecisionStep::new(
        "token_valid",
        true,
        format!("service token {} ({})", t.id, t.prefix),
    );
    let now = Utc::now();
    if t.revoked_at.is_some() {
        let step = DecisionStep::new("not_revoked", false, "revoked");
        return Err(rejected(
            "the service token was revoked",
            &subject,
            vec![valid, step],
        ));
    }
    if !t.is_live(now) {
        let step = DecisionStep::new("not_revoked", false, "expired");
        return Err(rejected(
            "the service token has expired",
            &subject,
            vec![valid, step],
        ));
    }
    let role = Role::parse(&t.role).ok_or_else(|| {
        Failure::Store(ApiError::internal(&format!(
            "service token {} has an unknown role `{}`",
            t.id, t.role
        )))
    })?;
    if t.last_used_at
        .is_none_or(|at: DateTime<Utc>| now - at > TOUCH_EVERY)
    {
        let (store, id) = (state.store.clone(), t.id.clone());
        tokio::spawn(async move {
            if let Err(e) = store.touch_service_token(&id, now).await {
                tracing::debug!(error = %e, "recording a token's use failed");
            }
        });
    }
    Ok(Caller {
        actor: subject,
        role,
        steps: vec![valid, DecisionStep::new("not_revoked", true, "live")],
        client: String::new(),
        operator: t.operator.clone(),
    })
}

/// Logs a security event at its severity and stores it (best effort: the log has it anyway).
pub(crate) async fn security_event(state: &AppState, ev: SecurityEvent) {
    velvet_engine::raise(&*state.store, ev).await;
}

/// Checks `p` for `caller` on `resource` and keeps the decision: always for a mutating
/// request or a denial. An allow that cannot be recorded does not go ahead (I6).
pub(crate) async fn authorize(
    state: &AppState,
    caller: &Caller,
    p: Permission,
    resource: &str,
    mutating: bool,
) -> Result<(), ApiError> {
    let granted = caller.role.grants(p);
    let mut steps = caller.steps.clone();
    steps.push(DecisionStep::new(
        "permission",
        granted,
        format!(
            "role {} {} {}",
            caller.role.as_str(),
            if granted { "grants" } else { "does not grant" },
            p.as_str()
        ),
    ));
    if mutating || !granted {
        let d = Decision::new(&caller.actor, p.as_str(), resource, steps);
        let recorded = state.store.record_decision(&d).await;
        if !granted {
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "recording a denial failed");
            }
            let mut ev = SecurityEvent::new(
                "permission_denied",
                Severity::Warning,
                format!("{} needs {}", resource, p.as_str()),
            );
            ev.subject = Some(caller.actor.clone());
            ev.client = Some(caller.client.clone());
            ev.decision_id = Some(d.id);
            security_event(state, ev).await;
        } else {
            recorded.map_err(|e| {
                velvet_store::StoreError::AuditUnavailable(format!("recording the decision: {e}"))
            })?;
        }
    }
    caller.require(p)
}

/// A permission a route needs, as a type.
pub trait Need {
    const PERMISSION: Permission;
}

macro_rules! needs {
    ($($name:ident => $perm:ident),* $(,)?) => {$(
        #[derive(Debug)]
        pub struct $name;
        impl Need for $name {
            const PERMISSION: Permission = Permission::$perm;
        }
    )*};
}

needs!(
    TokensRead => TokensRead,
    Kickoff => RotationsKickoff,
    AuditRead => AuditRead,
    AdminOnly => Admin,
);

/// An authenticated caller holding `P`'s permission; 401 or 403 otherwise.
#[derive(Debug)]
pub struct Can<P: Need>(pub Caller, pub PhantomData<P>);

impl<P: Need + Send + Sync> FromRequestParts<AppState> for Can<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let mutating = !matches!(parts.method, Method::GET | Method::HEAD);
        authorize(state, &caller, P::PERMISSION, &resource(parts), mutating).await?;
        Ok(Can(caller, PhantomData))
    }
}
