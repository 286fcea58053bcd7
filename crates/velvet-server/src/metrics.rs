//! Prometheus metrics: request counts and latencies per route, tokens by status, reconciles.
//! `/metrics` answers loopback clients only, since it is unauthenticated.

use crate::{ApiError, AppState};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::time::Instant;
use velvet_core::model::TokenStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabel {
    token: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabel {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RotationLabels {
    token: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    latency: Family<HttpLabels, Histogram>,
    tokens: Family<StatusLabel, Gauge>,
    reconciles: Family<OutcomeLabel, Counter>,
    /// Read from the store at each scrape, so every replica reports the same.
    rotations: Family<RotationLabels, Counter>,
    overdue: Gauge,
    due_soon: Gauge,
    drifted: Gauge,
    token_age: Family<TokenLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    leader: Gauge,
    notifications_failed: Family<ChannelLabel, Counter>,
    /// One refresh at a time: two would both add the same new jobs to the counters.
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("velvet");
        let requests = Family::<HttpLabels, Counter>::default();
        let latency = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let tokens = Family::<StatusLabel, Gauge>::default();
        let reconciles = Family::<OutcomeLabel, Counter>::default();
        let build = Family::<VersionLabel, Gauge>::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests",
            latency.clone(),
        );
        registry.register("tokens", "Tokens in the store by status", tokens.clone());
        registry.register(
            "reconciles",
            "Reconciles of velvet.yaml into the store",
            reconciles.clone(),
        );
        registry.register("build_info", "Velvet version", build);
        let rotations = Family::<RotationLabels, Counter>::default();
        registry.register(
            "rotations",
            "Rotation jobs by token and status (from the store)",
            rotations.clone(),
        );
        let (overdue, due_soon, drifted, leader) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        registry.register(
            "tokens_overdue",
            "Tokens whose current version is older than max_age",
            overdue.clone(),
        );
        registry.register(
            "tokens_due_soon",
            "Tokens within remind_before of max_age or of a rotation that needs a person",
            due_soon.clone(),
        );
        registry.register(
            "consumers_drifted",
            "Consumers holding another value than the current version",
            drifted.clone(),
        );
        let token_age = Family::<TokenLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "token_age_seconds",
            "Age of each token's current version",
            token_age.clone(),
        );
        registry.register(
            "scheduler_leader",
            "1 while this replica leads the scheduler",
            leader.clone(),
        );
        let notifications_failed = Family::<ChannelLabel, Counter>::default();
        registry.register(
            "notifications_failed",
            "Notifications given up on, by channel (from the store)",
            notifications_failed.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            tokens,
            reconciles,
            rotations,
            overdue,
            due_soon,
            drifted,
            token_age,
            leader,
            notifications_failed,
            refreshing: Default::default(),
        }
    }
}

impl Metrics {
    pub fn set_tokens(&self, active: i64, retired: i64) {
        for (status, n) in [("active", active), ("retired", retired)] {
            self.tokens
                .get_or_create(&StatusLabel {
                    status: status.into(),
                })
                .set(n);
        }
    }

    pub fn reconciled(&self, ok: bool) {
        self.reconciles
            .get_or_create(&OutcomeLabel {
                outcome: if ok { "success" } else { "failure" }.into(),
            })
            .inc();
    }

    /// Brings the store-derived series up to date before a scrape.
    async fn refresh(&self, state: &AppState) -> Result<(), ApiError> {
        let _one = self.refreshing.lock().await;
        for (token, status, n) in state.store.job_counts().await? {
            let c = self
                .rotations
                .get_or_create(&RotationLabels { token, status });
            let seen = c.get();
            if let Ok(n) = u64::try_from(n)
                && n > seen
            {
                c.inc_by(n - seen);
            }
        }
        for (channel, n) in state.store.failed_deliveries().await? {
            let c = self
                .notifications_failed
                .get_or_create(&ChannelLabel { channel });
            if let Ok(n) = u64::try_from(n)
                && n > c.get()
            {
                c.inc_by(n - c.get());
            }
        }
        let summary = crate::status::summary(state).await?;
        self.overdue.set(summary.overdue.len() as i64);
        self.due_soon.set(summary.due_soon.len() as i64);
        self.drifted.set(summary.drifted.len() as i64);
        let now = chrono::Utc::now();
        self.token_age.clear();
        for t in state.store.list_tokens().await? {
            if let Some(at) = t
                .last_rotated_at
                .filter(|_| t.status == TokenStatus::Active)
            {
                self.token_age
                    .get_or_create(&TokenLabel { token: t.name })
                    .set((now - at).num_milliseconds() as f64 / 1000.0);
            }
        }
        let leads = state.engine.as_ref().is_some_and(|e| e.leads_scheduler());
        self.leader.set(i64::from(leads));
        Ok(())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new().routes(utoipa_axum::routes!(metrics))
}

/// Prometheus metrics (OpenMetrics text), for loopback clients only.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "health",
    responses(
        (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
        (status = 403, description = "`forbidden`: the client is not on loopback", body = crate::error::ErrorBody),
    ))]
async fn metrics(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Response, ApiError> {
    if !peer.ip().is_loopback() {
        return Err(ApiError::forbidden(
            "metrics are served to loopback clients only",
        ));
    }
    Ok((
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        {
            // A store that does not answer leaves the last values; the rest still serves.
            if let Err(e) = state.metrics.refresh(&state).await {
                tracing::warn!(error = %e.message, "refreshing store metrics failed");
            }
            state.metrics.render()
        },
    )
        .into_response())
}

/// Counts and times every request by its route template (never the raw path, which could
/// carry names an operator would rather not see in metrics).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(req).await;
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    state.metrics.requests.get_or_create(&labels).inc();
    state
        .metrics
        .latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
