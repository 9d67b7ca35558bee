//! The worker's small HTTP server (/healthz, /readyz, /metrics) and the lag gauge.

use std::{sync::Arc, time::Duration};

use kafka_group::{GroupMember, OffsetReset};
use poem::{
    get, handler,
    http::StatusCode,
    listener::TcpAcceptor,
    web::{Data, Json},
    EndpointExt, IntoResponse, Response, Route, Server,
};
use tokio_util::sync::CancellationToken;

use crate::{metrics::Metrics, readiness::Readiness};

#[derive(Clone)]
pub struct OpsState {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

pub async fn serve(acceptor: TcpAcceptor, state: OpsState, stop: CancellationToken) {
    let app = Route::new()
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics_text))
        .data(state);
    if let Err(e) = Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app, stop.cancelled_owned(), Some(Duration::from_secs(1)))
        .await
    {
        tracing::error!(error = %e, "ops server failed");
    }
}

/// Liveness: the process answers.
#[handler]
fn healthz() -> &'static str {
    "Success"
}

/// Readiness: a member of the group with an assignment, and MongoDB lets this worker insert
/// purchases (see [`Readiness`]). The body says what is missing.
#[handler]
async fn readyz(state: Data<&OpsState>) -> Response {
    let report = state.readiness.report(Duration::from_secs(2)).await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Json(report).with_status(status).into_response()
}

#[handler]
fn metrics_text(state: Data<&OpsState>) -> String {
    state.metrics.render()
}

/// Every few seconds, the lag of the partitions this worker owns, counted as KEDA does.
pub async fn track_lag(
    member: Arc<GroupMember>,
    group: String,
    topic: String,
    reset: OffsetReset,
    metrics: Arc<Metrics>,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        ticker.tick().await;
        let owned: Vec<i32> = member.assignment().iter().map(|tp| tp.partition).collect();
        match member.admin().lag(&group, &topic, reset).await {
            Ok(lags) => {
                metrics.partition_lag.reset();
                for lag in lags.iter().filter(|l| owned.contains(&l.partition)) {
                    metrics
                        .partition_lag
                        .with_label_values(&[&lag.partition.to_string()])
                        .set(lag.lag);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot compute lag"),
        }
    }
}
