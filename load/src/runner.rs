//! The open-loop dispatcher: each request leaves at its scheduled time (or as soon as a
//! slot frees up under the in-flight cap) and its latency counts from that scheduled time.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use tokio::{sync::Semaphore, time::Instant};

use crate::{
    lag::{LagReader, LagSnapshot},
    report::{Outcome, Report, Stats},
    schedule::Schedule,
    workload::Workload,
};

pub struct Run {
    pub url: String,
    pub schedule: Schedule,
    pub max_in_flight: usize,
    pub timeout: Duration,
    /// Send an `Idempotency-Key` with every purchase.
    pub idempotency_keys: bool,
    /// Retries of a purchase answered 503 or not at all (with the same key).
    pub retries: u32,
    pub workload: Workload,
    /// Shown live and in the report when set.
    pub lag: Option<LagReader>,
    pub progress: bool,
    /// Sent as `Authorization: Bearer …` with every purchase.
    pub bearer_token: Option<String>,
}

pub async fn run(run: Run) -> anyhow::Result<Report> {
    let client = http_client(&run)?;
    let url = format!("{}/api/purchases", run.url.trim_end_matches('/'));
    let stats = Arc::new(Stats::new());
    let slots = Arc::new(Semaphore::new(run.max_in_flight.max(1)));
    let lag: Arc<Mutex<Option<LagSnapshot>>> = Arc::default();
    let lag_reader = run.lag.map(Arc::new);
    let progress = run.progress.then(|| {
        spawn_progress(
            Arc::clone(&stats),
            Arc::clone(&lag),
            run.schedule.duration(),
        )
    });
    let lag_task = lag_reader
        .clone()
        .map(|reader| tokio::spawn(watch_lag(reader, Arc::clone(&lag))));

    let mut rng = rand::rngs::StdRng::from_os_rng();
    let start = Instant::now();
    for offset in run.schedule.send_times() {
        let due = start + offset;
        tokio::time::sleep_until(due).await;
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let purchase = run.workload.purchase(&mut rng);
        let key = run
            .idempotency_keys
            .then(|| uuid::Uuid::new_v4().to_string());
        let attempt = {
            let (client, url) = (client.clone(), url.clone());
            move || {
                let request = client.post(&url).json(&purchase);
                match &key {
                    Some(key) => request.header("Idempotency-Key", key),
                    None => request,
                }
            }
        };
        stats.sent();
        let stats = Arc::clone(&stats);
        let retries = run.retries;
        tokio::spawn(async move {
            let outcome = send_with_retries(attempt, retries, &stats).await;
            // From when the request was due, not when it left: a stall delays the requests
            // queued behind it, and that wait is part of what a user would see.
            stats.record(due.elapsed(), outcome);
            drop(slot);
        });
    }
    // Wait for the stragglers: every slot back.
    let _all = slots
        .acquire_many(run.max_in_flight.max(1) as u32)
        .await
        .expect("semaphore is never closed");
    let elapsed = start.elapsed().max(run.schedule.duration());
    if let Some(task) = lag_task {
        task.abort();
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let final_lag = match &lag_reader {
        Some(reader) => final_lag(reader).await,
        None => None,
    };
    Ok(stats.report(elapsed, final_lag))
}

/// The HTTP client of a run: its timeout, a pool as large as the in-flight cap, and the
/// bearer token (marked sensitive, so it never shows in debug output) on every request.
fn http_client(run: &Run) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &run.bearer_token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| {
                anyhow::anyhow!("the bearer token has characters a header cannot carry")
            })?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .timeout(run.timeout)
        .pool_max_idle_per_host(run.max_in_flight)
        .build()?)
}

/// Keeps `lag` at the latest reading, once a second, for the progress line.
async fn watch_lag(reader: Arc<LagReader>, lag: Arc<Mutex<Option<LagSnapshot>>>) {
    loop {
        if let Ok(snapshot) = reader.read().await {
            *lag.lock().expect("lag lock") = Some(snapshot);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The lag once the run is over, for the report; a warning instead when it cannot be read.
async fn final_lag(reader: &LagReader) -> Option<LagSnapshot> {
    match reader.read().await {
        Ok(snapshot) => Some(snapshot),
        Err(e) => {
            eprintln!("warning: cannot read the consumer lag ({e}); check --kafka-brokers");
            None
        }
    }
}

/// Sends one purchase, retrying a 503 or a missing answer up to `retries` times after the
/// gateway's `Retry-After` (capped, so a misconfigured server cannot park the tool).
async fn send_with_retries(
    attempt: impl Fn() -> reqwest::RequestBuilder,
    retries: u32,
    stats: &Stats,
) -> Outcome {
    const MAX_PAUSE: Duration = Duration::from_secs(5);
    let mut left = retries;
    loop {
        let (outcome, pause) = match attempt().send().await {
            Ok(response) => {
                let pause = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .map_or(Duration::from_secs(1), Duration::from_secs);
                (Outcome::Status(response.status().as_u16()), pause)
            }
            Err(e) if e.is_timeout() => (Outcome::Failed("timeout".into()), Duration::ZERO),
            Err(e) if e.is_connect() => (Outcome::Failed("connect".into()), Duration::from_secs(1)),
            Err(e) => (
                Outcome::Failed(format!("{e}").chars().take(60).collect()),
                Duration::from_secs(1),
            ),
        };
        let retryable = matches!(outcome, Outcome::Failed(_) | Outcome::Status(503));
        if !retryable || left == 0 {
            return outcome;
        }
        left -= 1;
        stats.retried();
        tokio::time::sleep(pause.min(MAX_PAUSE)).await;
    }
}

fn spawn_progress(
    stats: Arc<Stats>,
    lag: Arc<Mutex<Option<LagSnapshot>>>,
    total: Duration,
) -> ProgressBar {
    let bar = ProgressBar::new(total.as_secs().max(1));
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let handle = bar.clone();
    tokio::spawn(async move {
        let interval = Duration::from_millis(500);
        let started = Instant::now();
        let mut last_sent = 0;
        loop {
            tokio::time::sleep(interval).await;
            if handle.is_finished() {
                return;
            }
            let (sent, accepted, failed, p99) = stats.tick();
            let rate = (sent - last_sent) as f64 / interval.as_secs_f64();
            last_sent = sent;
            let p99 = p99
                .map(|d| format!("{:.1}ms", d.as_secs_f64() * 1000.0))
                .unwrap_or_else(|| "-".into());
            let lag = lag
                .lock()
                .expect("lag lock")
                .as_ref()
                .map(|l| format!("  {}", l.summary()))
                .unwrap_or_default();
            handle.set_position(started.elapsed().as_secs());
            handle.set_message(format!(
                "{rate:.0}/s  ok {accepted}  errors {failed}  p99 {p99}{lag}"
            ));
        }
    });
    bar
}
