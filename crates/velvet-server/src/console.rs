//! The console's entry: login, logout and the signed-in landing page, server-rendered with no
//! inline script or style (the Content-Security-Policy forbids both).

use crate::session::{self, LoginError};
use crate::{ApiError, AppState};
use axum::Router;
use axum::extract::{ConnectInfo, Form, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use std::net::SocketAddr;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(crate::console_pages::tokens))
        .route("/console/tokens/{name}", get(crate::console_pages::token))
        .route("/console/rotations", get(crate::console_history::rotations))
        .route(
            "/console/rotations/{job_id}",
            get(crate::console_pages::rotation),
        )
        .route("/console/audit", get(crate::console_pages::audit))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route(
            "/console/assets/manifest.json",
            get(crate::assets::manifest),
        )
        .route("/console/assets/{file}", get(crate::assets::serve))
}

/// Every answer, page or API, says: do not sniff types, do not leak the path in a Referer, and
/// never render inside a frame (pages keep their fuller policy).
pub(crate) async fn security_headers(mut r: Response) -> Response {
    use axum::http::HeaderValue;
    use axum::http::header::{REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS};
    let h = r.headers_mut();
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static("frame-ancestors 'none'"));
    r
}

/// A violet rounded square with a "V", inline (the CSP allows `data:` images), so no page
/// load asks for a /favicon.ico that is not there.
const FAVICON: &str = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E%3Crect width='16' height='16' rx='3' fill='%236b3fa0'/%3E%3Cpath d='M4 4l4 8 4-8' stroke='white' stroke-width='2' fill='none'/%3E%3C/svg%3E";

fn page(status: StatusCode, title: &str, body: Markup, extra_head: Markup) -> Response {
    let html = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                (extra_head)
                link rel="icon" href=(FAVICON);
                link rel="stylesheet" href=(crate::assets::path("console.css"));
                script src=(crate::assets::path("console.js")) defer {}
                title { (title) " · Velvet" }
            }
            body { (body) }
        }
    };
    (
        status,
        [(CONTENT_SECURITY_POLICY, CSP), (CACHE_CONTROL, "no-store")],
        Html(html.into_string()),
    )
        .into_response()
}

/// The login form's CSRF token travels in this cookie and in the form; a cross-site page can
/// make a browser post the form but cannot read or set the cookie (double submit).
const LOGIN_COOKIE: &str = "velvet_login";

fn login_form(status: StatusCode, error: Option<&str>) -> Response {
    let csrf = session::random_hex(16);
    let mut r = page(
        status,
        "Log in",
        html! {
            main.login.card {
                h1 { "Velvet" }
                @if let Some(e) = error { p role="alert" class="error" { (e) } }
                form method="post" action="/console/login" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="name" { "Operator" }
                    input id="name" name="name" autocomplete="username" required;
                    label for="password" { "Password" }
                    input id="password" name="password" type="password" autocomplete="current-password" required;
                    label for="code" { "TOTP code or backup code" }
                    input id="code" name="code" autocomplete="one-time-code" required;
                    button type="submit" { "Log in" }
                }
            }
        },
        html! {},
    );
    let cookie = format!(
        "{LOGIN_COOKIE}={csrf}; Path=/console/login; HttpOnly; SameSite=Strict; Max-Age=3600"
    );
    r.headers_mut().insert(
        axum::http::header::SET_COOKIE,
        cookie.parse().expect("hex and ASCII"),
    );
    r
}

/// Whether the login form's token matches the cookie set with the form.
fn login_csrf_ok(headers: &HeaderMap, sent: &str) -> bool {
    let cookie = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == LOGIN_COOKIE)
        .map(|(_, v)| v);
    cookie.is_some_and(|c| {
        !c.is_empty() && bool::from(subtle::ConstantTimeEq::ct_eq(c.as_bytes(), sent.as_bytes()))
    })
}

async fn login_page() -> Response {
    login_form(StatusCode::OK, None)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    name: String,
    password: String,
    code: String,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !login_csrf_ok(&headers, &f.csrf) {
        return login_form(
            StatusCode::FORBIDDEN,
            Some("The login form expired or came from another site; log in from this page."),
        );
    }
    let client = crate::auth::client_addr(&state, peer.ip(), &headers);
    match session::login(&state, client, f.name.trim(), &f.password, &f.code).await {
        Ok((id, _csrf)) => (
            StatusCode::SEE_OTHER,
            session::set_cookie_header(&state, Some(&id)),
            [(LOCATION, "/console")],
        )
            .into_response(),
        Err(LoginError::Invalid) => login_form(
            StatusCode::UNAUTHORIZED,
            Some("Operator, password or code is not valid."),
        ),
        Err(LoginError::Limited(secs)) => {
            let mut r = login_form(
                StatusCode::TOO_MANY_REQUESTS,
                Some("Too many failed attempts; try again later."),
            );
            r.headers_mut().insert(RETRY_AFTER, secs.into());
            r
        }
        Err(LoginError::Store(e)) => e.into_response(),
    }
}

/// The signed-in operator, or the redirect to the login page.
pub(crate) async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Result<session::Session, Response>, ApiError> {
    let to_login = || (StatusCode::SEE_OTHER, [(LOCATION, "/console/login")]).into_response();
    let Some(id) = session::cookie(headers) else {
        return Ok(Err(to_login()));
    };
    Ok(session::find(state, &id).await?.map_err(|_| to_login()))
}

/// A console page for a signed-in operator: the header with navigation, who, and logout.
pub(crate) fn shell(s: &session::Session, title: &str, body: Markup) -> Response {
    let audit = s.role.grants(velvet_core::identity::Permission::AuditRead);
    page(
        StatusCode::OK,
        title,
        html! {
            header.top {
                a.brand href="/console" { "Velvet" }
                nav aria-label="Main" {
                    a href="/console" { "Tokens" }
                    a href="/console/rotations" { "Rotations" }
                    @if audit { a href="/console/audit" { "Audit" } }
                }
                span.who { (s.operator) " (" (s.role.as_str()) ")" }
                form method="post" action="/console/logout" {
                    input type="hidden" name="csrf" value=(s.csrf);
                    button type="submit" class="secondary" { "Log out" }
                }
            }
            main { (body) }
        },
        html! { meta name="csrf-token" content=(s.csrf); },
    )
}

#[derive(Debug, Deserialize)]
struct LogoutForm {
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Result<Response, ApiError> {
    let Some(id) = session::cookie(&headers) else {
        return Err(ApiError::unauthorized("no console session"));
    };
    let s = session::find(&state, &id)
        .await?
        .map_err(ApiError::unauthorized)?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        f.csrf.as_bytes(),
        s.csrf.as_bytes(),
    )) {
        return Err(ApiError::forbidden(
            "the form's CSRF token does not match the session",
        ));
    }
    session::end(&state, &id, &format!("operator:{}", s.operator)).await?;
    Ok((
        StatusCode::SEE_OTHER,
        session::set_cookie_header(&state, None),
        [(LOCATION, "/console/login")],
    )
        .into_response())
}
