//! The one fetch loop: asks every leader for the partitions due, hands each partition's
//! records to the decoder in offset order (a full queue pauses fetching), and follows the
//! assignment's commands meanwhile.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use kafka_group::{FetchLimits, RecordFetcher, ResponseError, TopicPartition};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    pacing::{FetchOutcome, Pacing},
    partitions::{Command, Outcomes, Partitions},
    start_offsets::StartOffsets,
};
use crate::{
    decode::decode,
    metrics::Metrics,
    record::{FetchedBatch, SinkMessage},
    timing::sleep_until,
};

/// A request on its way. It owns the fetcher until its response is in, so the loop can hand
/// the previous response to the sink meanwhile.
struct InFlight {
    due: BTreeMap<i32, i64>,
    started: Instant,
    response: Pin<Box<dyn Future<Output = (RecordFetcher, Outcomes)> + Send>>,
}

pub struct FetchLoop {
    pub(super) topic: String,
    pub(super) limits: FetchLimits,
    pub(super) pacing: Pacing,
    pub(super) starts: Arc<StartOffsets>,
    pub(super) sink: mpsc::Sender<SinkMessage>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) partitions: Partitions,
}

/// Why the loop ends.
struct Stopped;

impl FetchLoop {
    /// Runs until `stop` or until the sink is gone. Whatever was fetched but not handed over
    /// is dropped: it was not committed, so the next owner reads it again.
    pub async fn run(
        mut self,
        fetcher: RecordFetcher,
        mut inbox: mpsc::Receiver<Command>,
        stop: CancellationToken,
    ) {
        let mut fetcher = Some(fetcher);
        let mut prefetched: Option<InFlight> = None;
        let mut pause = Duration::ZERO;
        let mut last_request: Option<Instant> = None;
        // A partition just assigned may be far behind: the first request asks for it all.
        let mut behind = true;
        loop {
            let request = match prefetched.take() {
                Some(request) => request,
                None => {
                    let Ok(due) = self.wait(pause, &mut inbox, &stop).await else {
                        return;
                    };
                    let Some(idle) = fetcher.take() else { return };
                    let limits = self.pacing.limits(&self.limits, behind);
                    self.send(idle, due, limits)
                }
            };
            let (due, started) = (request.due.clone(), request.started);
            let interval = last_request.map_or(Duration::ZERO, |at| started - at);
            last_request = Some(started);
            let Ok((idle, outcomes)) = self.receive(request, &mut inbox, &stop).await else {
                return;
            };
            let took = started.elapsed();
            behind = outcomes
                .values()
                .any(|o| o.as_ref().is_ok_and(|r| r.next_offset < r.high_watermark));
            if behind {
                // Ask for what follows now, while this response goes to the sink: the broker
                // builds the next response while the database stores this one.
                let next = self.partitions.after(&due, &outcomes);
                let limits = self.pacing.limits(&self.limits, true);
                prefetched = Some(self.send(idle, next, limits));
            } else {
                fetcher = Some(idle);
            }
            let Ok(bytes) = self.dispatch(&due, outcomes, &mut inbox, &stop).await else {
                return;
            };
            pause = self.pacing.pause_after(FetchOutcome {
                bytes,
                backlog: behind,
                interval,
                took,
                max_wait: self.limits.max_wait,
            });
            tracing::debug!(
                partitions = due.len(),
                bytes,
                behind,
                ?took,
                ?pause,
                "fetched"
            );
        }
    }

    /// Sends one request per leader for the `due` partitions.
    fn send(
        &self,
        mut fetcher: RecordFetcher,
        due: BTreeMap<i32, i64>,
        limits: FetchLimits,
    ) -> InFlight {
        let positions: BTreeMap<TopicPartition, i64> = due
            .iter()
            .map(|(p, o)| (TopicPartition::new(&self.topic, *p), *o))
            .collect();
        self.metrics.fetch_requests.inc();
        InFlight {
            due,
            started: Instant::now(),
            response: Box::pin(async move {
                let outcomes = fetcher.fetch(&positions, &limits).await;
                (fetcher, outcomes)
            }),
        }
    }

    /// Waits for the response, applying commands meanwhile (a stop is answered at once: its
    /// partitions' records are dropped when they come).
    async fn receive(
        &mut self,
        mut request: InFlight,
        inbox: &mut mpsc::Receiver<Command>,
        stop: &CancellationToken,
    ) -> Result<(RecordFetcher, Outcomes), Stopped> {
        loop {
            tokio::select! {
                () = stop.cancelled() => return Err(Stopped),
                response = &mut request.response => return Ok(response),
                command = inbox.recv() => match command {
                    Some(command) => self.partitions.apply(command),
                    None => return Err(Stopped),
                },
            }
        }
    }

    /// Waits out `pause` (and, when no partition is due, until one is), applying commands
    /// meanwhile; then the partitions to ask for.
    async fn wait(
        &mut self,
        pause: Duration,
        inbox: &mut mpsc::Receiver<Command>,
        stop: &CancellationToken,
    ) -> Result<BTreeMap<i32, i64>, Stopped> {
        let pause_until = Instant::now() + pause;
        loop {
            let now = Instant::now();
            let (due, next_retry) = self.partitions.due(now);
            let wake = if due.is_empty() {
                next_retry
            } else if now >= pause_until {
                return Ok(due);
            } else {
                Some(pause_until)
            };
            tokio::select! {
                () = stop.cancelled() => return Err(Stopped),
                command = inbox.recv() => match command {
                    Some(command) => self.partitions.apply(command),
                    None => return Err(Stopped),
                },
                () = sleep_until(wake) => {}
            }
        }
    }

    /// Hands each partition's records to the sink, in partition order, and moves the
    /// partitions on; returns the bytes fetched.
    async fn dispatch(
        &mut self,
        due: &BTreeMap<i32, i64>,
        outcomes: Outcomes,
        inbox: &mut mpsc::Receiver<Command>,
        stop: &CancellationToken,
    ) -> Result<usize, Stopped> {
        let mut bytes = 0;
        // Partitions that failed, by error: a broker that is down fails all of its
        // partitions with one error, and says so in one log line.
        let mut failed: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (tp, outcome) in outcomes {
            let partition = tp.partition;
            let Some(&offset) = due.get(&partition) else {
                continue;
            };
            if !self.partitions.reads(partition, offset) {
                continue;
            }
            let fetched = match outcome {
                Ok(fetched) => fetched,
                Err(e) => {
                    if !self.reset_if_out_of_range(partition, offset, &e).await {
                        self.partitions.hold(partition);
                        self.metrics.fetch_errors.inc();
                        failed.entry(e.to_string()).or_default().push(partition);
                    }
                    continue;
                }
            };
            self.partitions.held.remove(&partition);
            bytes += fetched.bytes;
            if fetched.next_offset <= offset {
                continue;
            }
            self.metrics
                .fetch_records
                .observe(fetched.records.len() as f64);
            self.metrics
                .records_consumed
                .inc_by(fetched.records.len() as u64);
            let batch = FetchedBatch {
                partition,
                next_offset: fetched.next_offset,
                records: fetched
                    .records
                    .into_iter()
                    .map(|r| decode(&self.topic, partition, r))
                    .collect(),
            };
            self.hand_over(batch, offset, inbox, stop).await?;
        }
        for (error, partitions) in failed {
            tracing::warn!(?partitions, %error, "fetch failed; retrying with backoff");
        }
        Ok(bytes)
    }

    /// Sends `batch` once the sink has room, unless its partition stops meanwhile.
    async fn hand_over(
        &mut self,
        batch: FetchedBatch,
        offset: i64,
        inbox: &mut mpsc::Receiver<Command>,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        loop {
            tokio::select! {
                () = stop.cancelled() => return Err(Stopped),
                room = self.sink.reserve() => {
                    let room = room.map_err(|_| Stopped)?;
                    self.partitions.next.insert(batch.partition, batch.next_offset);
                    room.send(SinkMessage::Records(batch));
                    return Ok(());
                }
                command = inbox.recv() => {
                    self.partitions.apply(command.ok_or(Stopped)?);
                    if !self.partitions.reads(batch.partition, offset) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// A partition whose offset fell out of the log starts again where the reset policy
    /// says; `false` for any other error.
    async fn reset_if_out_of_range(
        &mut self,
        partition: i32,
        offset: i64,
        error: &kafka_group::Error,
    ) -> bool {
        if error.protocol() != Some(ResponseError::OffsetOutOfRange) {
            return false;
        }
        match self.starts.offsets(&[partition]).await {
            Ok(starts) if starts.contains_key(&partition) => {
                let reset = starts[&partition];
                tracing::warn!(
                    partition,
                    from = offset,
                    to = reset,
                    "offset out of range, reset"
                );
                if self.partitions.reads(partition, offset) {
                    self.partitions.next.insert(partition, reset);
                }
                true
            }
            Ok(_) => {
                tracing::warn!(
                    partition,
                    "cannot reset offset: the brokers know no such partition"
                );
                false
            }
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot reset offset");
                false
            }
        }
    }
}
