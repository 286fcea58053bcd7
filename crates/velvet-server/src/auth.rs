//! Authentication and authorization (design §7). A bearer is either a service token
//! (`vlt_…`, looked up by its SHA-256 on every request, so a revocation holds at once on every
//! replica) or the bootstrap `VELVET_API_KEY`. Handlers state what they need in their signature:
//! `Can<TokensRead>`, `Can<Kickoff>`…; deny by default. Failed attempts are limited per client
//! address.

use crate::{ApiError, AppState};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use velvet_core::identity::{Permission, Role, hash_service_token, looks_like_service_token};

/// Failed authentications allowed per client address per window.
const FAILURES_PER_WINDOW: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How stale `last_used_at` may get before a request refreshes it (a write per request
/// would make every read a write).
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    /// As recorded in audit records: `token:<name>` or `bootstrap-admin`.
    pub actor: String,
    pub role: Role,
}

impl Caller {
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

/// Failed attempts per client address in fixed windows.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    /// Seconds until `ip` may try again, if it is over its budget.
    fn blocked(&self, ip: IpAddr) -> Option<u16> {
        let windows = self.windows.lock().expect("never poisoned");
        let (start, n) = windows.get(&ip)?;
        let left = FAILURE_WINDOW.checked_sub(start.elapsed())?;
        (*n >= FAILURES_PER_WINDOW).then(|| left.as_secs().clamp(1, 3600) as u16)
    }

    fn record(&self, ip: IpAddr) {
        let mut windows = self.windows.lock().expect("never poisoned");
        // Forget finished windows so the map only holds recent offenders.
        if windows.len() > 10_000 {
            windows.retain(|_, (start, _)| start.elapsed() < FAILURE_WINDOW);
        }
        let w = windows.entry(ip).or_insert((Instant::now(), 0));
        if w.0.elapsed() >= FAILURE_WINDOW {
            *w = (Instant::now(), 0);
        }
        w.1 += 1;
    }
}

fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ip = client_ip(parts);
        if let Some(secs) = state.auth_failures.blocked(ip) {
            tracing::warn!(event = "rate_limited", client = %ip, "too many failed authentications");
            return Err(ApiError::rate_limited(
                "too many failed authentications from this address; try again later",
                secs,
            ));
        }
        match authenticate(parts, state).await {
            Ok(caller) => Ok(caller),
            Err(Failure::Rejected(message)) => {
                state.auth_failures.record(ip);
                tracing::warn!(event = "auth_failed", client = %ip, reason = message, "authentication failed");
                Err(ApiError::unauthorized(message))
            }
            Err(Failure::Store(e)) => Err(e),
        }
    }
}

enum Failure {
    Rejected(&'static str),
    Store(ApiError),
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, Failure> {
    let presented = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(Failure::Rejected("missing `Authorization: Bearer <token>`"))?;
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
        })
    } else {
        Err(Failure::Rejected("the bearer token is not valid"))
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
        return Err(Failure::Rejected("the bearer token is not valid"));
    };
    let now = Utc::now();
    if t.revoked_at.is_some() {
        return Err(Failure::Rejected("the service token was revoked"));
    }
    if !t.is_live(now) {
        return Err(Failure::Rejected("the service token has expired"));
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
        actor: format!("token:{}", t.name),
        role,
    })
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
    Stage => RotationsStage,
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
        caller.require(P::PERMISSION)?;
        Ok(Can(caller, PhantomData))
    }
}
