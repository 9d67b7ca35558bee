//! Logging a failure that repeats, once per cause instead of once per occurrence.

use std::{
    fmt,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Logs a repeating failure once per cause: the first time a cause is seen, again when it
/// changes, and otherwise at most once per `every` with how many were not logged. A fleet
/// that fails thousands of requests a second for one reason writes one line, not thousands.
pub struct CauseLog {
    what: &'static str,
    every: Duration,
    last: Mutex<Option<Logged>>,
}

struct Logged {
    cause: String,
    at: Instant,
    unlogged: u64,
}

impl CauseLog {
    pub const fn new(what: &'static str, every: Duration) -> Self {
        Self {
            what,
            every,
            last: Mutex::new(None),
        }
    }

    /// Records one occurrence of `cause`; logs it when it is news.
    pub fn failed(&self, cause: &dyn fmt::Display) {
        let cause = cause.to_string();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let repeated = match last.as_mut() {
            Some(logged) if logged.cause == cause && logged.at.elapsed() < self.every => {
                logged.unlogged += 1;
                return;
            }
            Some(logged) if logged.cause == cause => logged.unlogged,
            _ => 0,
        };
        tracing::warn!(cause = %cause, repeated, "{} failed", self.what);
        *last = Some(Logged {
            cause,
            at: Instant::now(),
            unlogged: 0,
        });
    }

    /// The operation worked again: logs the recovery if a failure was logged.
    pub fn recovered(&self) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(logged) = last.take() {
            tracing::info!(after = %logged.cause, "{} works again", self.what);
        }
    }
}
