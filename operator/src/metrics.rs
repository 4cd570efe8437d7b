//! Prometheus metrics of the operator, served on `/metrics` (with `/healthz` and
//! `/readyz`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
    error: String,
}

/// Reconcile counts, durations and errors; whether this replica leads.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: Family<KindLabels, Histogram>,
    api_requests: Family<RequestLabels, Counter>,
    leader: Gauge,
    ready: AtomicBool,
}

/// One request to the Kubernetes API: its method, and whether it went to a `status`
/// subresource (the status writes an idle operator must not repeat).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    subresource: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kss_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let durations = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        let leader = Gauge::default();
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API by HTTP method and subresource (status or none)",
            api_requests.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles by kind and result (ok, error)",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by kind and error class",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            durations.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            durations,
            api_requests,
            leader,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Records one reconcile.
    pub fn observe(&self, kind: &str, took: Duration, error: Option<&Error>) {
        self.durations
            .get_or_create(&KindLabels { kind: kind.into() })
            .observe(took.as_secs_f64());
        self.reconciles
            .get_or_create(&ResultLabels {
                kind: kind.into(),
                result: if error.is_some() { "error" } else { "ok" }.into(),
            })
            .inc();
        if let Some(e) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    kind: kind.into(),
                    error: e.metric_label().into(),
                })
                .inc();
        }
    }

    /// Records one request to the Kubernetes API (`path` without the query).
    pub fn observe_api_request(&self, method: &str, path: &str) {
        let subresource = if path.ends_with("/status") {
            "status"
        } else {
            ""
        };
        self.api_requests
            .get_or_create(&RequestLabels {
                verb: method.to_string(),
                subresource: subresource.to_string(),
            })
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

async fn render_metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

async fn ready(State(m): State<Arc<Metrics>>) -> StatusCode {
    if m.ready.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Serves `/metrics`, `/healthz` (live) and `/readyz` (connected to the API server).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))?;
    axum::serve(listener, app).await.context("serving metrics")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_requests_are_counted_by_verb_and_status_subresource() {
        let m = Metrics::default();
        m.observe_api_request(
            "PATCH",
            "/apis/kss.dev/v1alpha1/namespaces/a/keyshardclusters/c/status",
        );
        m.observe_api_request("PATCH", "/apis/apps/v1/namespaces/a/statefulsets/c");
        m.observe_api_request("GET", "/api/v1/namespaces/a/secrets/c-tls");
        m.observe_api_request("GET", "/api/v1/namespaces/a/secrets/c-ca");
        let text = m.render();
        for line in [
            r#"kss_operator_api_requests_total{verb="PATCH",subresource="status"} 1"#,
            r#"kss_operator_api_requests_total{verb="PATCH",subresource=""} 1"#,
            r#"kss_operator_api_requests_total{verb="GET",subresource=""} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
    }
}
