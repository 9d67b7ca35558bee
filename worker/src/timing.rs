//! Waiting for a deadline that may not be set.

use std::time::Instant;

/// Sleeps until `deadline`, or forever when there is none (a `select!` branch that never
/// fires).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
