//! One log line per request, at the level it deserves: debug for the ordinary ones, info for
//! slow ones, warn for server errors. poem's `Tracing` middleware logs every request at info,
//! which at the default level wrote one line per purchase (22,538 lines for ~22k purchases)
//! and made a user's default run slower than the benchmarks' `RUST_LOG=warn`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use poem::{Endpoint, IntoResponse, Request, Response};

/// A request slower than this is logged at info even when it succeeded.
const SLOW_REQUEST: Duration = Duration::from_secs(1);

pub async fn log_request<E: Endpoint>(next: Arc<E>, req: Request) -> poem::Result<Response> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let result = next.call(req).await.map(IntoResponse::into_response);
    let status = match &result {
        Ok(response) => response.status(),
        Err(error) => error.status(),
    };
    let took = started.elapsed();
    if status.is_server_error() {
        tracing::warn!(%method, %path, status = status.as_u16(), ?took, "request failed");
    } else if took > SLOW_REQUEST {
        tracing::info!(%method, %path, status = status.as_u16(), ?took, "slow request");
    } else {
        tracing::debug!(%method, %path, status = status.as_u16(), ?took, "request");
    }
    result
}
