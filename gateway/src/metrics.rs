//! Prometheus metrics of the gateway, named `gateway_<what>_<unit>`, and the HTTP layer that
//! records them.

use std::time::Instant;

use infra::metrics;
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::OperationId;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, Registry};

use crate::auth::Reason;

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    pub purchases_accepted: IntCounter,
    pub produce_duration: Histogram,
    pub produce_batch_records: Histogram,
    pub produce_errors: IntCounter,
    pub purchases_unconfirmed: IntCounter,
    pub idempotent_replays: IntCounter,
    auth_failures: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let labels = &["route", "method", "status"];
        Self {
            http_requests: metrics::counter_vec(
                &registry,
                "gateway_http_requests_total",
                "HTTP requests by route and status",
                labels,
            ),
            http_duration: metrics::histogram_vec(
                &registry,
                "gateway_http_request_duration_seconds",
                "HTTP request latency by route and status",
                labels,
                metrics::latency_buckets(),
            ),
            purchases_accepted: metrics::counter(
                &registry,
                "gateway_purchases_accepted_total",
                "Purchases acknowledged by the broker and answered with 202",
            ),
            produce_duration: metrics::histogram(
                &registry,
                "gateway_kafka_produce_duration_seconds",
                "Duration of one produce request (a broker's batches of every partition it leads) until the broker answered",
                metrics::latency_buckets(),
            ),
            produce_batch_records: metrics::histogram(
                &registry,
                "gateway_kafka_produce_batch_records",
                "Purchases sent together in one produce request to one broker",
                metrics::size_buckets(),
            ),
            produce_errors: metrics::counter(
                &registry,
                "gateway_kafka_produce_errors_total",
                "Produce requests that failed, and partitions of one that the broker did not write (a refusal or an unknown outcome)",
            ),
            purchases_unconfirmed: metrics::counter(
                &registry,
                "gateway_purchases_unconfirmed_total",
                "Purchases sent to the broker but not acknowledged in time (outcome unknown)",
            ),
            idempotent_replays: metrics::counter(
                &registry,
                "gateway_idempotent_replays_total",
                "Purchases retried with a known Idempotency-Key, answered with the first eventId",
            ),
            auth_failures: {
                let failures = metrics::counter_vec(
                    &registry,
                    "gateway_auth_failures_total",
                    "Requests refused by authentication (401) or authorization (403), by reason",
                    &["reason"],
                );
                // Every reason from the start, so a rate over it never misses its first one.
                for reason in Reason::ALL {
                    failures.with_label_values(&[reason.code()]);
                }
                failures
            },
            registry,
        }
    }

    pub fn auth_failure(&self, reason: Reason) {
        self.auth_failures.with_label_values(&[reason.code()]).inc();
    }

    /// The Prometheus text exposition of every gateway metric.
    pub fn render(&self) -> String {
        metrics::render(&self.registry)
    }

    fn observe(&self, route: &str, method: &str, status: u16, started: Instant) {
        let status = status.to_string();
        let labels = [route, method, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Paths outside the OpenAPI operations that get their own route label; anything else that
/// matches no operation is `unmatched`, which keeps label cardinality bounded.
const STATIC_ROUTES: &[&str] = &["/metrics", "/openapi.json", "/docs"];

/// Records request count and latency by route (the operation the response names; errors
/// reach it already rendered, see `api::render`).
pub async fn observe<E: Endpoint>(next: E, req: Request, metrics: &Metrics) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let (route, response) = match next.call(req).await {
        Ok(resp) => {
            let resp = resp.into_response();
            (resp.data::<OperationId>().map(|o| o.0), resp)
        }
        // Not on the gateway's routes, whose errors are rendered inside this layer.
        Err(err) => (err.data::<OperationId>().map(|o| o.0), err.into_response()),
    };
    let route = route.unwrap_or_else(|| {
        STATIC_ROUTES
            .iter()
            .find(|r| path == **r || path.starts_with(&format!("{r}/")))
            .copied()
            .unwrap_or("unmatched")
    });
    metrics.observe(route, &method, response.status().as_u16(), started);
    response
}
