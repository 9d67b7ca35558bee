//! Fetching: one loop reads every partition this worker owns with one Fetch request per
//! broker (kafka-group's [`RecordFetcher`]), decodes the records and hands them to the sink
//! in offset order (a full sink queue, when the database is slow or down, pauses fetching).
//! [`Pacing`] spaces the requests; [`Fetchers`] turns the group's assignments and
//! revocations into commands to the loop.
//!
//! Why one loop and not one per partition: a broker answers a connection's requests one at a
//! time, so per-partition loops over rskafka's shared connection either wait behind each
//! other's long polls or, asking again at once with `min_bytes = 1`, send the broker a request
//! for every handful of records (measured on nisshi: the broker saturated one core serving
//! 1,000 purchases/s; README "Worker").
//!
//! Why the pause is the client's and not `min_bytes`: holding a request open for more bytes
//! costs Kafka nothing, but nisshi 0.7 re-reads every partition of a waiting request on each
//! of its polls. A pause before asking costs either broker nothing, and the request then
//! returns at once with what accumulated.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use infra::mongo::document;
use kafka_group::{
    Backoff, FetchLimits, FetchedRecord, GroupMember, OffsetReset, PartitionRecords, RecordFetcher,
    ResponseError, Revocation, TopicPartition,
};
use purchase::PurchaseEvent;
use rskafka::client::{
    error::Error as KafkaError,
    partition::{OffsetAt, PartitionClient, UnknownTopicHandling},
    Client,
};
use tokio::{
    sync::{mpsc, oneshot, Mutex},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    record::{Fetched, FetchedBatch, PoisonRecord, RecordSpan, SinkMessage},
};

pub struct FetchSettings {
    pub limits: FetchLimits,
    pub pacing: Pacing,
    pub reset: OffsetReset,
}

/// How long to wait before the next request, and how much it asks for, from what the last
/// one brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// The longest pause while records keep coming.
    pub linger: Duration,
    /// Bytes a request aims to carry.
    pub fill_bytes: usize,
}

/// What one request brought, for [`Pacing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOutcome {
    /// Record bytes in the response, all partitions together.
    pub bytes: usize,
    /// Some partition has more records than the response carried.
    pub backlog: bool,
    /// Time since the request before this one went out: the window the bytes came in.
    pub interval: Duration,
    /// How long the request itself took.
    pub took: Duration,
    /// How long the broker was allowed to hold the request.
    pub max_wait: Duration,
}

/// A caught-up request asks for this many times `fill_bytes`.
const TAIL_FILLS: usize = 1;

/// How long a broker may hold a fetch while this worker is behind: a round's answers come
/// back at once.
pub const BEHIND_MAX_WAIT: Duration = Duration::from_millis(5);

impl Pacing {
    /// What to ask for. While behind: everything `full` allows, and no broker may hold the
    /// request. The requests of one round go to every leader at once and the round ends
    /// with the last answer, so a broker whose partitions are caught up would hold the round
    /// for `max_wait` while another broker's partitions have records waiting (measured on
    /// three brokers: the backlog after a load drained at one round per 500 ms, 40 s instead
    /// of 2). Kafka answers a fetch with nothing at once, at no cost. The wait is
    /// [`BEHIND_MAX_WAIT`], not zero: a few milliseconds cost a round nothing, and a server
    /// that reads "wait zero" as "no time to look" (nisshi 0.7 answers it with no partitions
    /// at all) still returns what it has.
    ///
    /// While caught up, a few fills: the answer comes within one fill's time on any broker,
    /// including one that keeps reading a partition while records keep arriving until the
    /// size limit is reached (nisshi 0.7 does: one worker's request was held for 18 s of load
    /// chasing a partition's tail to its 5 MiB limit while the other worker's came back at
    /// once).
    pub fn limits(&self, full: &FetchLimits, behind: bool) -> FetchLimits {
        if behind {
            return FetchLimits {
                max_wait: BEHIND_MAX_WAIT,
                ..full.clone()
            };
        }
        let tail = i32::try_from(self.fill_bytes.saturating_mul(TAIL_FILLS)).unwrap_or(i32::MAX);
        FetchLimits {
            max_bytes: full.max_bytes.min(tail),
            partition_max_bytes: full.partition_max_bytes.min(tail),
            ..full.clone()
        }
    }

    pub fn pause_after(&self, fetched: FetchOutcome) -> Duration {
        if fetched.backlog || fetched.bytes >= self.fill_bytes {
            // Behind or busy: read on at full speed.
            return Duration::ZERO;
        }
        if fetched.bytes == 0 {
            // Nothing came: the broker held the request for `max_wait` and will hold the next
            // one too, answering the moment a record arrives. Only a broker that answered
            // early (it does not wait) is asked less often.
            return fetched
                .max_wait
                .saturating_sub(fetched.took)
                .min(self.linger);
        }
        // Records trickle in at `bytes / interval`: wait until about `fill_bytes` are there.
        let wanted = fetched
            .interval
            .mul_f64(self.fill_bytes as f64 / fetched.bytes as f64);
        wanted.saturating_sub(fetched.took).min(self.linger)
    }
}

/// Where a partition without a committed offset starts, and where one whose offset fell out
/// of the log starts again: ListOffsets through rskafka.
pub struct StartOffsets {
    kafka: Arc<Client>,
    topic: String,
    reset: OffsetReset,
    clients: Mutex<BTreeMap<i32, Arc<PartitionClient>>>,
}

impl StartOffsets {
    pub async fn offset(&self, partition: i32) -> Result<i64, KafkaError> {
        let client = {
            let mut clients = self.clients.lock().await;
            match clients.get(&partition) {
                Some(client) => Arc::clone(client),
                None => {
                    let client = Arc::new(
                        self.kafka
                            .partition_client(
                                self.topic.clone(),
                                partition,
                                UnknownTopicHandling::Retry,
                            )
                            .await?,
                    );
                    clients.insert(partition, Arc::clone(&client));
                    client
                }
            }
        };
        client
            .get_offset(match self.reset {
                OffsetReset::Earliest => OffsetAt::Earliest,
                OffsetReset::Latest => OffsetAt::Latest,
            })
            .await
    }
}

enum Command {
    /// Fetch these partitions from these offsets.
    Start(BTreeMap<i32, i64>),
    /// Stop fetching these partitions; answered once nothing more of theirs can reach the
    /// sink.
    Stop {
        partitions: Vec<i32>,
        done: oneshot::Sender<()>,
    },
}

/// The partition lifecycle of this worker, over its one fetch loop.
pub struct Fetchers {
    member: Arc<GroupMember>,
    starts: Arc<StartOffsets>,
    sink: mpsc::Sender<SinkMessage>,
    metrics: Arc<Metrics>,
    commands: mpsc::UnboundedSender<Command>,
    owned: Vec<i32>,
    /// Dropping it (with the `Fetchers`) ends the loop.
    stop: CancellationToken,
    fetch_loop: Option<JoinHandle<()>>,
}

impl Fetchers {
    pub fn new(
        kafka: Arc<Client>,
        topic: String,
        member: Arc<GroupMember>,
        fetcher: RecordFetcher,
        settings: FetchSettings,
        sink: mpsc::Sender<SinkMessage>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let starts = Arc::new(StartOffsets {
            kafka,
            topic: topic.clone(),
            reset: settings.reset,
            clients: Mutex::default(),
        });
        let (commands, inbox) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let fetch_loop = tokio::spawn(
            FetchLoop {
                topic,
                limits: settings.limits,
                pacing: settings.pacing,
                starts: Arc::clone(&starts),
                sink: sink.clone(),
                metrics: Arc::clone(&metrics),
                partitions: Partitions::default(),
            }
            .run(fetcher, inbox, stop.clone()),
        );
        Self {
            member,
            starts,
            sink,
            metrics,
            commands,
            owned: Vec::new(),
            stop,
            fetch_loop: Some(fetch_loop),
        }
    }

    /// Starts fetching each of `partitions` that is not fetched yet, from the group's
    /// committed offset (or the reset policy).
    pub async fn start(&mut self, partitions: &[TopicPartition], shutdown: &CancellationToken) {
        self.metrics
            .group_leader
            .set(i64::from(self.member.is_leader()));
        let partitions: Vec<TopicPartition> = partitions
            .iter()
            .filter(|tp| !self.owned.contains(&tp.partition))
            .cloned()
            .collect();
        if partitions.is_empty() {
            return;
        }
        let Some(committed) = self.committed(&partitions, shutdown).await else {
            return;
        };
        let mut offsets = BTreeMap::new();
        for tp in &partitions {
            let offset = match committed.get(tp).copied().flatten() {
                Some(offset) => offset,
                None => match self.starts.offset(tp.partition).await {
                    Ok(offset) => offset,
                    Err(e) => {
                        tracing::error!(partition = tp.partition, error = %e, "cannot find the start offset; its records wait for the next assignment");
                        continue;
                    }
                },
            };
            tracing::debug!(partition = tp.partition, offset, "fetching");
            offsets.insert(tp.partition, offset);
        }
        self.owned.extend(offsets.keys());
        let _ = self.commands.send(Command::Start(offsets));
        self.metrics
            .assigned_partitions
            .set(self.owned.len() as i64);
    }

    /// Revocation: stop fetching the partitions, write and commit what was read from them,
    /// then let them go. The other partitions keep fetching throughout.
    pub async fn release(&mut self, revocation: Revocation) {
        let partitions: Vec<i32> = revocation
            .partitions
            .iter()
            .map(|tp| tp.partition)
            .collect();
        tracing::info!(?partitions, lost = revocation.lost, "revoked");
        self.stop(partitions.clone()).await;
        // Even when the membership was lost the writes are worth finishing: they are
        // idempotent, and only the commit will be refused.
        self.flush(partitions).await;
        self.metrics
            .assigned_partitions
            .set(self.owned.len() as i64);
        revocation.done();
    }

    /// Shutdown: stop fetching, then write and commit everything fetched.
    pub async fn drain(&mut self) {
        let partitions = self.owned.clone();
        self.stop(partitions.clone()).await;
        self.stop.cancel();
        if let Some(fetch_loop) = self.fetch_loop.take() {
            let _ = fetch_loop.await;
        }
        self.flush(partitions).await;
        self.metrics.assigned_partitions.set(0);
    }

    /// The group's committed offsets, retried until they are known or shutdown.
    async fn committed(
        &self,
        partitions: &[TopicPartition],
        shutdown: &CancellationToken,
    ) -> Option<BTreeMap<TopicPartition, Option<i64>>> {
        let mut backoff = Backoff::unbounded();
        loop {
            match self.member.committed(partitions).await {
                Ok(committed) => return Some(committed),
                Err(e) => tracing::warn!(error = %e, "cannot read committed offsets yet"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Stops fetching `partitions` and waits until the loop let them go, so that everything
    /// fetched from them is in the sink's queue before anything sent after.
    async fn stop(&mut self, partitions: Vec<i32>) {
        self.owned.retain(|p| !partitions.contains(p));
        let (done, stopped) = oneshot::channel();
        if self
            .commands
            .send(Command::Stop { partitions, done })
            .is_ok()
        {
            // An error: the loop has ended, and sends nothing more.
            let _ = stopped.await;
        }
    }

    /// Writes and commits everything fetched so far; afterwards the sink forgets `release`.
    async fn flush(&self, release: Vec<i32>) {
        let (done, flushed) = oneshot::channel();
        if self
            .sink
            .send(SinkMessage::Flush { release, done })
            .await
            .is_ok()
        {
            let _ = flushed.await;
        }
    }
}

impl Drop for Fetchers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The partitions the loop reads: where each goes on, and which wait out an error.
#[derive(Default)]
struct Partitions {
    next: BTreeMap<i32, i64>,
    held: BTreeMap<i32, (Instant, Backoff)>,
}

impl Partitions {
    fn apply(&mut self, command: Command) {
        match command {
            Command::Start(offsets) => {
                for partition in offsets.keys() {
                    self.held.remove(partition);
                }
                self.next.extend(offsets);
            }
            Command::Stop { partitions, done } => {
                for partition in &partitions {
                    self.next.remove(partition);
                    self.held.remove(partition);
                }
                // Nothing of theirs is on its way to the sink: a batch is only sent while
                // its partition is still here at the offset it was fetched from.
                let _ = done.send(());
            }
        }
    }

    /// Still reading `partition` from `offset` (not stopped or restarted meanwhile).
    fn reads(&self, partition: i32, offset: i64) -> bool {
        self.next.get(&partition) == Some(&offset)
    }

    /// The partitions to ask for now, and when the next held one is due.
    fn due(&self, now: Instant) -> (BTreeMap<i32, i64>, Option<Instant>) {
        let mut due = BTreeMap::new();
        let mut next_retry: Option<Instant> = None;
        for (partition, offset) in &self.next {
            match self.held.get(partition) {
                Some((retry_at, _)) if *retry_at > now => {
                    next_retry = Some(next_retry.map_or(*retry_at, |t| t.min(*retry_at)));
                }
                _ => {
                    due.insert(*partition, *offset);
                }
            }
        }
        (due, next_retry)
    }

    /// The partitions to ask for next, before `outcomes` (the response to a request for
    /// `due`) is handed over: where it went well, from where it ended; failed ones are left
    /// out (they wait out a backoff).
    fn after(&self, due: &BTreeMap<i32, i64>, outcomes: &Outcomes) -> BTreeMap<i32, i64> {
        let (mut next, _) = self.due(Instant::now());
        for (tp, outcome) in outcomes {
            let Some(&requested) = due.get(&tp.partition) else {
                continue;
            };
            match outcome {
                Ok(fetched) if self.reads(tp.partition, requested) => {
                    next.insert(tp.partition, fetched.next_offset.max(requested));
                }
                _ => {
                    next.remove(&tp.partition);
                }
            }
        }
        next
    }

    /// Leaves `partition` out of requests for its next backoff step.
    fn hold(&mut self, partition: i32) -> Duration {
        let (retry_at, backoff) = self.held.entry(partition).or_insert_with(|| {
            (
                Instant::now(),
                Backoff::unbounded_between(Duration::from_millis(100), Duration::from_secs(5)),
            )
        });
        let pause = backoff.next_delay();
        *retry_at = Instant::now() + pause;
        pause
    }
}

type Outcomes = BTreeMap<TopicPartition, kafka_group::Result<PartitionRecords>>;

/// A request on its way. It owns the fetcher until its response is in, so the loop can hand
/// the previous response to the sink meanwhile.
struct InFlight {
    due: BTreeMap<i32, i64>,
    started: Instant,
    response: Pin<Box<dyn Future<Output = (RecordFetcher, Outcomes)> + Send>>,
}

struct FetchLoop {
    topic: String,
    limits: FetchLimits,
    pacing: Pacing,
    starts: Arc<StartOffsets>,
    sink: mpsc::Sender<SinkMessage>,
    metrics: Arc<Metrics>,
    partitions: Partitions,
}

/// Why the loop ends.
struct Stopped;

impl FetchLoop {
    /// Runs until `stop` or until the sink is gone. Whatever was fetched but not handed over
    /// is dropped: it was not committed, so the next owner reads it again.
    async fn run(
        mut self,
        fetcher: RecordFetcher,
        mut inbox: mpsc::UnboundedReceiver<Command>,
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
        inbox: &mut mpsc::UnboundedReceiver<Command>,
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
        inbox: &mut mpsc::UnboundedReceiver<Command>,
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
        inbox: &mut mpsc::UnboundedReceiver<Command>,
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
        inbox: &mut mpsc::UnboundedReceiver<Command>,
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
        match self.starts.offset(partition).await {
            Ok(reset) => {
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
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot reset offset");
                false
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

fn decode(topic: &str, partition: i32, fetched: FetchedRecord) -> Fetched {
    let span = RecordSpan::start(topic, partition, &fetched);
    let value = fetched.value.map(Vec::from).unwrap_or_default();
    match PurchaseEvent::from_json(&value) {
        Ok(event) => Fetched::Purchase(document::from_event(&event), span),
        Err(e) => Fetched::Poison(PoisonRecord {
            partition,
            offset: fetched.offset,
            key: fetched.key.map(Vec::from),
            value,
            headers: fetched
                .headers
                .into_iter()
                .filter_map(|(name, value)| Some((name, value?.to_vec())))
                .collect(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACING: Pacing = Pacing {
        linger: Duration::from_millis(100),
        fill_bytes: 64 * 1024,
    };

    fn outcome(bytes: usize, interval_ms: u64) -> FetchOutcome {
        FetchOutcome {
            bytes,
            backlog: false,
            interval: Duration::from_millis(interval_ms),
            took: Duration::from_millis(2),
            max_wait: Duration::from_millis(500),
        }
    }

    #[test]
    fn a_backlog_is_read_without_pausing() {
        let fetched = FetchOutcome {
            backlog: true,
            ..outcome(100, 10)
        };
        assert_eq!(PACING.pause_after(fetched), Duration::ZERO);
    }

    #[test]
    fn a_full_request_is_followed_at_once() {
        assert_eq!(PACING.pause_after(outcome(64 * 1024, 10)), Duration::ZERO);
    }

    #[test]
    fn an_empty_long_poll_is_followed_by_the_next_long_poll_at_once() {
        let fetched = FetchOutcome {
            took: Duration::from_millis(500),
            ..outcome(0, 500)
        };
        assert_eq!(PACING.pause_after(fetched), Duration::ZERO);
    }

    #[test]
    fn a_broker_that_answers_empty_at_once_is_asked_at_most_once_per_linger() {
        let fetched = FetchOutcome {
            took: Duration::from_millis(1),
            ..outcome(0, 1)
        };
        assert_eq!(PACING.pause_after(fetched), PACING.linger);
    }

    #[test]
    fn a_trickle_waits_the_whole_linger() {
        assert_eq!(PACING.pause_after(outcome(200, 100)), PACING.linger);
    }

    #[test]
    fn steady_traffic_waits_about_as_long_as_filling_a_request_takes() {
        // 16 KiB in 20 ms: 64 KiB take 80 ms, of which the request took 2.
        let pause = PACING.pause_after(outcome(16 * 1024, 20));
        assert_eq!(pause, Duration::from_millis(78));
    }

    #[test]
    fn no_linger_never_pauses_while_records_come() {
        let pacing = Pacing {
            linger: Duration::ZERO,
            ..PACING
        };
        assert_eq!(pacing.pause_after(outcome(200, 100)), Duration::ZERO);
    }

    #[test]
    fn a_caught_up_request_asks_for_a_few_fills_and_one_behind_for_everything_at_once() {
        let full = FetchLimits {
            min_bytes: 1,
            max_wait: Duration::from_millis(500),
            max_bytes: 8 << 20,
            partition_max_bytes: 1 << 20,
        };
        let tail = PACING.limits(&full, false);
        assert_eq!(tail.max_bytes, 64 * 1024);
        assert_eq!(tail.partition_max_bytes, 64 * 1024);
        assert_eq!(tail.max_wait, full.max_wait);
        let behind = PACING.limits(&full, true);
        assert_eq!(
            behind.max_wait, BEHIND_MAX_WAIT,
            "no broker holds a round that is behind"
        );
        assert_eq!(behind.max_bytes, full.max_bytes);
        assert_eq!(behind.partition_max_bytes, full.partition_max_bytes);
        let small = FetchLimits {
            partition_max_bytes: 4096,
            ..full
        };
        assert_eq!(PACING.limits(&small, false).partition_max_bytes, 4096);
    }

    fn stop(partitions: Vec<i32>) -> (Command, oneshot::Receiver<()>) {
        let (done, stopped) = oneshot::channel();
        (Command::Stop { partitions, done }, stopped)
    }

    #[test]
    fn a_stopped_partition_is_not_read_and_the_stop_is_answered() {
        let mut partitions = Partitions::default();
        partitions.apply(Command::Start(BTreeMap::from([(0, 10), (1, 20)])));
        let (command, mut stopped) = stop(vec![1]);
        partitions.apply(command);
        assert!(stopped.try_recv().is_ok());
        assert!(partitions.reads(0, 10));
        assert!(!partitions.reads(1, 20));
        assert_eq!(partitions.due(Instant::now()).0, BTreeMap::from([(0, 10)]));
    }

    #[test]
    fn a_held_partition_is_left_out_until_its_retry_is_due() {
        let mut partitions = Partitions::default();
        partitions.apply(Command::Start(BTreeMap::from([(0, 10), (1, 20)])));
        let pause = partitions.hold(1);
        let (due, next_retry) = partitions.due(Instant::now());
        assert_eq!(due, BTreeMap::from([(0, 10)]));
        assert!(next_retry.is_some());
        let (due, _) = partitions.due(Instant::now() + pause + Duration::from_millis(1));
        assert_eq!(due, BTreeMap::from([(0, 10), (1, 20)]));
    }

    fn records(next_offset: i64) -> kafka_group::Result<PartitionRecords> {
        Ok(PartitionRecords {
            records: Vec::new(),
            next_offset,
            high_watermark: next_offset + 100,
            bytes: 0,
        })
    }

    #[test]
    fn the_request_sent_ahead_goes_on_from_where_each_partition_ended() {
        let mut partitions = Partitions::default();
        partitions.apply(Command::Start(BTreeMap::from([(0, 10), (1, 20), (2, 30)])));
        let due = BTreeMap::from([(0, 10), (1, 20), (2, 30)]);
        // Started while the request was out: not in the response, asked for from its start.
        partitions.apply(Command::Start(BTreeMap::from([(3, 40)])));
        // Stopped while the request was out: its records are not asked for again.
        let (command, _stopped) = stop(vec![2]);
        partitions.apply(command);
        let outcomes: Outcomes = BTreeMap::from([
            (TopicPartition::new("t", 0), records(15)),
            (
                TopicPartition::new("t", 1),
                Err(kafka_group::Error::Io("broken".into())),
            ),
            (TopicPartition::new("t", 2), records(35)),
        ]);
        assert_eq!(
            partitions.after(&due, &outcomes),
            BTreeMap::from([(0, 15), (3, 40)])
        );
    }

    #[test]
    fn a_restarted_partition_is_read_from_its_new_offset() {
        let mut partitions = Partitions::default();
        partitions.apply(Command::Start(BTreeMap::from([(0, 10)])));
        partitions.hold(0);
        partitions.apply(Command::Start(BTreeMap::from([(0, 7)])));
        assert!(!partitions.reads(0, 10));
        assert_eq!(partitions.due(Instant::now()).0, BTreeMap::from([(0, 7)]));
    }
}
