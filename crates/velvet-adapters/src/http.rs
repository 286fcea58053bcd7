//! The HTTP client shared by HTTP consumers: rustls with the ring provider, bounded timeouts,
//! and the classification of answers (429 and 5xx retryable, honouring `Retry-After`). It never
//! follows a redirect (design §10): a 3xx would re-send the value and its signature to another
//! host, so it is a permanent failure naming where it pointed.

use crate::AdapterError;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::sync::OnceLock;
use std::time::Duration;

/// Longest delay a `Retry-After` may impose; a server asking for more is retried at this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client builder with Velvet's rules: rustls with the ring provider, a bounded connect, and
/// no redirects. The consumers' shared client and the CLI's own both start here.
pub fn builder(user_agent: &str) -> reqwest::ClientBuilder {
    // A second install (another crate got there first) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(format!("{user_agent}/{}", env!("CARGO_PKG_VERSION")))
}

/// The client HTTP consumers share (connection pools are per client).
pub fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        builder("velvet")
            .pool_max_idle_per_host(256)
            .build()
            .expect("the HTTP client builds with the ring provider installed")
    })
}

/// `Retry-After` as seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// Classifies a non-success answer: 408, 425, 429 and 5xx are retryable, other 4xx permanent,
/// and so is a redirect, which names the host it pointed to (never the path or query, which
/// could carry a credential).
pub fn status_error(what: &str, status: StatusCode, headers: &HeaderMap) -> AdapterError {
    if status.is_redirection() {
        let to = headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| match reqwest::Url::parse(l) {
                Ok(u) => u.host_str().unwrap_or("?").to_string(),
                Err(_) => "the same host".to_string(),
            })
            .unwrap_or_else(|| "nowhere (no Location)".into());
        return AdapterError::permanent(format!(
            "{what} answered {status}, redirecting to {to}; Velvet never follows redirects \
             (the value would be sent again elsewhere): point the URL at the final address"
        ));
    }
    let message = format!("{what} answered {status}");
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.as_u16() == 425
        || status.is_server_error()
    {
        AdapterError::Retryable {
            message,
            retry_after: retry_after(headers),
        }
    } else {
        AdapterError::permanent(message)
    }
}

/// [`status_error`] with the provider's own words (its error message and code, which never hold
/// a value) added.
pub fn status_error_saying(
    what: &str,
    status: StatusCode,
    headers: &HeaderMap,
    said: &str,
) -> AdapterError {
    match status_error(what, status, headers) {
        AdapterError::Retryable {
            message,
            retry_after,
        } => AdapterError::Retryable {
            message: format!("{message}: {said}"),
            retry_after,
        },
        AdapterError::Permanent { message } => {
            AdapterError::permanent(format!("{message}: {said}"))
        }
    }
}

/// Transport failures (refused, reset, timed out) are retryable. The URL is not echoed: it
/// could carry a credential in its query.
pub fn transport_error(what: &str, e: &reqwest::Error) -> AdapterError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    AdapterError::retryable(format!("{what} {kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, "99999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(RETRY_AFTER, soon.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn statuses_are_classified() {
        let h = HeaderMap::new();
        for (code, retry) in [
            (429, true),
            (503, true),
            (500, true),
            (408, true),
            (400, false),
            (401, false),
            (403, false),
            (404, false),
            (301, false),
            (302, false),
            (307, false),
            (308, false),
        ] {
            let e = status_error("x", StatusCode::from_u16(code).unwrap(), &h);
            assert_eq!(e.is_retryable(), retry, "{code}");
        }
    }
}
