//! Prometheus metrics: requests by type and decision, latency, quota denials, database
//! errors, decision batches, TLS certificate expiry and reloads; served at `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::verdict::{Reason, Verdict};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    rpc: &'static str,
    request_type: String,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsReloadLabels {
    listener: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms … ~4 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RpcLabels, Histogram, fn() -> Histogram>,
    quota_denials: Counter,
    db_errors: Family<OperationLabels, Counter>,
    batch_size: Histogram,
    batch_seconds: Histogram,
    verify_batch_size: Histogram,
    verify_queue_full: Counter,
    tls_not_after: Family<ListenerLabels, Gauge>,
    tls_reloads: Family<TlsReloadLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    integrity_failures: Family<TableLabels, Counter>,
    onboard_rate_limited: Counter,
    transport_limited: Family<LimitLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kss");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests decided, by RPC, request type, decision and deny reason",
            requests.clone(),
        );
        let latency: Family<RpcLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to answering it",
            latency.clone(),
        );
        let quota_denials = Counter::default();
        registry.register(
            "quota_denials",
            "Requests denied because a throttle quota was used up",
            quota_denials.clone(),
        );
        let db_errors = Family::<OperationLabels, Counter>::default();
        registry.register(
            "db_errors",
            "Database operations that failed (requests were denied as unavailable)",
            db_errors.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "decision_batch_size",
            "Requests decided per database transaction",
            batch_size.clone(),
        );
        let batch_seconds = latency_histogram();
        registry.register(
            "decision_batch_duration_seconds",
            "Time to decide and commit one batch",
            batch_seconds.clone(),
        );
        let verify_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 6));
        registry.register(
            "verify_batch_size",
            "Ciphertexts verified per batched pairing check",
            verify_batch_size.clone(),
        );
        let verify_queue_full = Counter::default();
        registry.register(
            "verify_queue_full",
            "Decrypt requests denied as unavailable because the ciphertext verification queue was full",
            verify_queue_full.clone(),
        );
        let tls_not_after = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "tls_certificate_not_after_timestamp_seconds",
            "When the certificate a TLS listener serves expires (Unix time), by listener",
            tls_not_after.clone(),
        );
        let tls_reloads = Family::<TlsReloadLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Changes of a TLS listener's files, by listener and result (reloaded, refused)",
            tls_reloads.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejected",
            "Requests refused before they were authenticated (nothing of them is stored), by reason",
            rejected.clone(),
        );
        let transport_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "transport_limited",
            "Times a transport limit held back or closed connections, by limit: handshakes (concurrent TLS handshakes), connections, connections_per_address, idle_timeout",
            transport_limited.clone(),
        );
        let integrity_failures = Family::<TableLabels, Counter>::default();
        registry.register(
            "integrity_failures",
            "Database rows refused because their MAC does not verify (changed outside the keyserver), by table",
            integrity_failures.clone(),
        );
        let onboard_rate_limited = Counter::default();
        registry.register(
            "onboard_rate_limited",
            "Onboardings refused by the keyserver-wide onboarding rate limit",
            onboard_rate_limited.clone(),
        );
        Metrics {
            rejected,
            integrity_failures,
            onboard_rate_limited,
            transport_limited,
            registry,
            requests,
            latency,
            quota_denials,
            db_errors,
            batch_size,
            batch_seconds,
            verify_batch_size,
            verify_queue_full,
            tls_not_after,
            tls_reloads,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, rpc: &'static str, request_type: &str, verdict: Verdict, took: Duration) {
        let (decision, reason) = match verdict {
            Verdict::Approved { .. } => ("approved", ""),
            Verdict::Denied(reason) => ("denied", reason.as_str()),
        };
        if verdict == Verdict::Denied(Reason::Quota) {
            self.quota_denials.inc();
        }
        self.requests
            .get_or_create(&RequestLabels {
                rpc,
                request_type: request_type.to_string(),
                decision,
                reason,
            })
            .inc();
        self.latency
            .get_or_create(&RpcLabels { rpc })
            .observe(took.as_secs_f64());
    }

    /// Counts a request that got no decision (malformed, stale, over a limit), by why.
    pub fn rejected(&self, rpc: &'static str, why: &'static str, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                rpc,
                request_type: String::new(),
                decision: "rejected",
                reason: why,
            })
            .inc();
        self.rejected
            .get_or_create(&ReasonLabels { reason: why })
            .inc();
        self.latency
            .get_or_create(&RpcLabels { rpc })
            .observe(took.as_secs_f64());
    }

    /// Counts a request denied before it was authenticated (not stored).
    pub fn unauthenticated(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a database row refused by its integrity check.
    pub fn integrity_failure(&self, table: &'static str) {
        self.integrity_failures
            .get_or_create(&TableLabels { table })
            .inc();
    }

    /// Counts a transport limit reached (`limit`: which one).
    pub fn transport_limited(&self, limit: &'static str) {
        self.transport_limited
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    pub fn onboard_rate_limited(&self) {
        self.onboard_rate_limited.inc();
    }

    pub fn db_error(&self, operation: &'static str) {
        self.db_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    pub fn batch_done(&self, size: usize, took: Duration) {
        self.batch_size.observe(size as f64);
        self.batch_seconds.observe(took.as_secs_f64());
    }

    pub fn verify_batch_done(&self, size: usize) {
        self.verify_batch_size.observe(size as f64);
    }

    pub fn verify_queue_full(&self) {
        self.verify_queue_full.inc();
    }

    /// The certificate `listener` serves expires at `not_after` (Unix seconds).
    pub fn tls_certificate(&self, listener: &'static str, not_after: i64) {
        self.tls_not_after
            .get_or_create(&ListenerLabels { listener })
            .set(not_after);
    }

    /// `listener`'s files changed: `result` is "reloaded" or "refused".
    pub fn tls_reload(&self, listener: &'static str, result: &'static str) {
        self.tls_reloads
            .get_or_create(&TlsReloadLabels { listener, result })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics` over plain HTTP until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    StatusCode::OK,
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving metrics")
}
