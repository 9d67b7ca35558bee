//! Counting what happened: an HDR histogram of latencies (from the intended send time) and
//! answers by status, summarised as the final report.

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::lag::LagSnapshot;

/// Latencies are recorded in microseconds up to an hour, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

pub struct Stats {
    inner: Mutex<Inner>,
}

struct Inner {
    all: Histogram<u64>,
    /// Since the last progress tick.
    window: Histogram<u64>,
    sent: u64,
    accepted: u64,
    retried: u64,
    by_status: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

/// One request's outcome.
pub enum Outcome {
    Status(u16),
    Failed(String),
}

impl Stats {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                all: histogram(),
                window: histogram(),
                sent: 0,
                accepted: 0,
                retried: 0,
                by_status: BTreeMap::new(),
                errors: BTreeMap::new(),
            }),
        }
    }

    pub fn sent(&self) {
        self.inner.lock().expect("stats lock").sent += 1;
    }

    /// One more attempt of a purchase already counted as sent.
    pub fn retried(&self) {
        self.inner.lock().expect("stats lock").retried += 1;
    }

    pub fn record(&self, latency: Duration, outcome: Outcome) {
        let micros = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        let mut inner = self.inner.lock().expect("stats lock");
        inner.all.saturating_record(micros);
        inner.window.saturating_record(micros);
        match outcome {
            Outcome::Status(202) => inner.accepted += 1,
            Outcome::Status(status) => *inner.by_status.entry(status).or_default() += 1,
            Outcome::Failed(kind) => *inner.errors.entry(kind).or_default() += 1,
        }
    }

    /// (sent, accepted, failed, window p99) and starts a new window.
    pub fn tick(&self) -> (u64, u64, u64, Option<Duration>) {
        let mut inner = self.inner.lock().expect("stats lock");
        let p99 = (!inner.window.is_empty())
            .then(|| Duration::from_micros(inner.window.value_at_quantile(0.99)));
        inner.window.reset();
        let failed = inner.by_status.values().sum::<u64>() + inner.errors.values().sum::<u64>();
        (inner.sent, inner.accepted, failed, p99)
    }

    pub fn report(&self, elapsed: Duration, lag: Option<LagSnapshot>) -> Report {
        let inner = self.inner.lock().expect("stats lock");
        let ms = |q: f64| inner.all.value_at_quantile(q) as f64 / 1000.0;
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Report {
            elapsed_seconds: seconds,
            sent: inner.sent,
            accepted: inner.accepted,
            retried: inner.retried,
            rejected: inner
                .by_status
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
            errors: inner.errors.clone(),
            achieved_rate: inner.sent as f64 / seconds,
            accepted_rate: inner.accepted as f64 / seconds,
            latency_ms: Latency {
                p50: ms(0.50),
                p90: ms(0.90),
                p99: ms(0.99),
                p99_9: ms(0.999),
                max: inner.all.max() as f64 / 1000.0,
                mean: inner.all.mean() / 1000.0,
            },
            lag,
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub elapsed_seconds: f64,
    pub sent: u64,
    pub accepted: u64,
    /// Extra attempts made by --retries (a purchase is counted once in `sent`).
    pub retried: u64,
    /// Final answers other than 202, by status.
    pub rejected: BTreeMap<String, u64>,
    /// Requests without an answer, by kind (timeout, connect, ...).
    pub errors: BTreeMap<String, u64>,
    /// Requests sent per second (the rate the server was offered).
    pub achieved_rate: f64,
    pub accepted_rate: f64,
    /// From each request's intended send time to its answer.
    pub latency_ms: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagSnapshot>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "sent {} in {:.1}s ({:.1}/s offered), accepted {} ({:.1}/s)\n",
            self.sent, self.elapsed_seconds, self.achieved_rate, self.accepted, self.accepted_rate
        ));
        if self.retried > 0 {
            out.push_str(&format!(
                "retries (same Idempotency-Key): {}\n",
                self.retried
            ));
        }
        if self.rejected.is_empty() && self.errors.is_empty() {
            out.push_str("rejected: none\n");
        } else {
            for (status, n) in &self.rejected {
                out.push_str(&format!("rejected {status}: {n}\n"));
            }
            for (kind, n) in &self.errors {
                out.push_str(&format!("failed ({kind}): {n}\n"));
            }
        }
        let l = &self.latency_ms;
        out.push_str(&format!(
            "latency from intended send time (ms): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n",
            l.p50, l.p90, l.p99, l.p99_9, l.max
        ));
        if let Some(lag) = &self.lag {
            out.push_str(&lag.summary());
            out.push('\n');
        }
        out
    }
}
