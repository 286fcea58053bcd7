//! Operators' console sessions (design §7): login with name, password and a TOTP code (or a
//! backup code); a random session id in an HttpOnly, SameSite=Strict cookie (Secure unless the
//! server listens on loopback), of which the store keeps only the SHA-256; idle timeout 30 min,
//! absolute 12 h; logout; an admin can end an operator's sessions. A request authenticated by
//! its session must echo the session's CSRF token when it changes anything.

use crate::auth::Caller;
use crate::{ApiError, AppState};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};
use chrono::{Duration, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use velvet_core::decision::{DecisionStep, SecurityEvent, Severity};
use velvet_core::identity::Role;
use velvet_core::operator;
use velvet_store::NewSession;

pub(crate) const COOKIE_NAME: &str = "velvet_session";
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
const IDLE: Duration = Duration::minutes(30);
const ABSOLUTE: Duration = Duration::hours(12);
/// How stale `last_seen_at` may get before a request refreshes it.
const TOUCH_EVERY: Duration = Duration::seconds(60);

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).expect("OS randomness");
    hex::encode(raw)
}

fn hash(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// The session id the request's cookie carries, if any.
pub(crate) fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `Set-Cookie` for a new session, or (with `None`) one that clears it.
pub(crate) fn set_cookie(state: &AppState, id: Option<&str>) -> HeaderValue {
    let secure = if state.config().listen.ip().is_loopback() {
        ""
    } else {
        "; Secure"
    };
    let v = match id {
        Some(id) => format!(
            "{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            ABSOLUTE.num_seconds()
        ),
        None => format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&v).expect("a cookie of hex and ASCII")
}

pub(crate) fn set_cookie_header(
    state: &AppState,
    id: Option<&str>,
) -> [(axum::http::HeaderName, HeaderValue); 1] {
    [(SET_COOKIE, set_cookie(state, id))]
}

/// Why a login failed; the operator is told only "not valid", the log and events say more.
#[derive(Debug)]
pub(crate) enum LoginError {
    Invalid,
    Limited(u16),
    Store(ApiError),
}

/// Checks name, password and code; opens a session. Returns the session id and CSRF token.
pub(crate) async fn login(
    state: &AppState,
    client: std::net::IpAddr,
    name: &str,
    password: &str,
    code: &str,
) -> Result<(String, String), LoginError> {
    // Limited per address and per operator name (design §10): a spread-out guesser is caught by
    // the second, a shared address only by the first.
    let limits = &state.limits;
    if let Some(secs) = limits
        .auth
        .blocked(&client)
        .or_else(|| limits.login.blocked(name))
    {
        return Err(LoginError::Limited(secs.min(u16::MAX as u64) as u16));
    }
    let fail = |why: String| async move {
        limits.auth.record(&client);
        if limits.login.record(name) {
            let mut ev = SecurityEvent::new(
                "login_locked",
                Severity::Critical,
                "too many failed logins for this operator; logins refused for 15 minutes",
            );
            ev.subject = Some(format!("operator:{name}"));
            ev.client = Some(client.to_string());
            crate::auth::security_event(state, ev).await;
        }
        let mut ev = SecurityEvent::new("login_failed", Severity::Warning, why);
        ev.subject = Some(format!("operator:{name}"));
        ev.client = Some(client.to_string());
        crate::auth::security_event(state, ev).await;
        LoginError::Invalid
    };
    let store = |e: velvet_store::StoreError| LoginError::Store(e.into());
    let Some(op) = state
        .store
        .operator(name)
        .await
        .map_err(store)?
        .filter(|o| o.disabled_at.is_none())
    else {
        // Spend the same time as a real check, so timing does not tell names apart.
        let dummy = DUMMY_HASH
            .get_or_init(|| operator::hash_password("x"))
            .clone();
        verify(password, dummy).await;
        return Err(fail("unknown operator".into()).await);
    };
    if !verify(password, op.password_hash.clone()).await {
        return Err(fail("wrong password".into()).await);
    }
    // Six digits are a TOTP code; anything else is a backup code (spaces and dashes aside).
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let code = code.as_str();
    if !(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())) {
        if !state
            .store
            .use_backup_code(name, &operator::hash_backup_code(code))
            .await
            .map_err(store)?
        {
            return Err(fail("unknown or used backup code".into()).await);
        }
    } else {
        let secret = state
            .keyring
            .open(&op.totp, &operator::totp_aad(name))
            .map_err(|e| LoginError::Store(ApiError::internal(&e)))?;
        let now = Utc::now().timestamp().max(0) as u64;
        let Some(step) = secret
            .get("value")
            .and_then(|s| operator::totp_step(s.expose(), code, now))
        else {
            return Err(fail("wrong TOTP code".into()).await);
        };
        if !state
            .store
            .accept_totp_step(name, step as i64)
            .await
            .map_err(store)?
        {
            let mut ev = SecurityEvent::new(
                "totp_replayed",
                Severity::Warning,
                "a login replayed a used TOTP code",
            );
            ev.subject = Some(format!("operator:{name}"));
            ev.client = Some(client.to_string());
            crate::auth::security_event(state, ev).await;
            return Err(fail("replayed TOTP code".into()).await);
        }
    }
    let id = random_hex(32);
    let csrf = random_hex(16);
    state
        .store
        .create_session(&NewSession {
            id_hash: &hash(&id),
            operator: name,
            csrf: &csrf,
            client: &client.to_string(),
            expires_at: Utc::now() + ABSOLUTE,
        })
        .await
        .map_err(store)?;
    tracing::info!(operator = %name, client = %client, "operator logged in");
    Ok((id, csrf))
}

static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// argon2id takes tens of milliseconds of CPU by design: off the async workers.
async fn verify(password: &str, hash: String) -> bool {
    let password = zeroize::Zeroizing::new(password.to_string());
    tokio::task::spawn_blocking(move || operator::verify_password(&password, &hash))
        .await
        .unwrap_or(false)
}

/// An open session: who, and its CSRF token.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub operator: String,
    pub role: Role,
    pub csrf: String,
}

/// The live session `id` names, or why there is none.
pub(crate) async fn find(
    state: &AppState,
    id: &str,
) -> Result<Result<Session, &'static str>, ApiError> {
    let h = hash(id);
    let Some(s) = state.store.session(&h).await? else {
        return Ok(Err("no such session"));
    };
    let now = Utc::now();
    if s.revoked_at.is_some() {
        return Ok(Err("the session was ended"));
    }
    if s.expires_at <= now {
        return Ok(Err("the session reached its 12 h limit"));
    }
    if s.last_seen_at + IDLE <= now {
        return Ok(Err("the session was idle for 30 min"));
    }
    let Some(op) = state
        .store
        .operator(&s.operator)
        .await?
        .filter(|o| o.disabled_at.is_none())
    else {
        return Ok(Err("the operator is gone"));
    };
    let Some(role) = Role::parse(&op.role) else {
        return Err(ApiError::internal(&format!(
            "operator {} has an unknown role",
            op.name
        )));
    };
    if now - s.last_seen_at > TOUCH_EVERY {
        state.store.touch_session(&h, now).await?;
    }
    Ok(Ok(Session {
        operator: s.operator,
        role,
        csrf: s.csrf,
    }))
}

/// Ends the session `id` names.
pub(crate) async fn end(state: &AppState, id: &str, actor: &str) -> Result<bool, ApiError> {
    Ok(state.store.end_session(&hash(id), actor).await?)
}

/// The caller a session cookie makes, checking the CSRF header on state-changing requests.
pub(crate) async fn caller(
    parts: &Parts,
    state: &AppState,
    id: &str,
) -> Result<Result<Caller, &'static str>, ApiError> {
    let s = match find(state, id).await? {
        Ok(s) => s,
        Err(why) => return Ok(Err(why)),
    };
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        let sent = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !bool::from(sent.as_bytes().ct_eq(s.csrf.as_bytes())) {
            return Err(ApiError::forbidden(
                "a request from a console session must send its CSRF token in X-CSRF-Token",
            ));
        }
    }
    Ok(Ok(Caller {
        actor: format!("operator:{}", s.operator),
        role: s.role,
        steps: vec![
            DecisionStep::new(
                "token_valid",
                true,
                format!("console session of operator {}", s.operator),
            ),
            DecisionStep::new("not_revoked", true, "live"),
        ],
        client: String::new(),
        operator: Some(s.operator),
    }))
}
