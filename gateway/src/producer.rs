//! Produces purchase events to Kafka with group commit: one task per partition sends one
//! produce request at a time, and every purchase that arrives while a request is in flight
//! rides in the next one. Under load, batches grow with concurrency (many requests share one
//! round trip); when idle, a purchase is sent at once with no linger delay. rskafka's own
//! `BatchProducer` batches only by a fixed linger time, which costs latency at low load.
//!
//! Every answer is true. A purchase is "not stored" only if it provably never left the
//! gateway: a `Claim` decides between the sender taking it into a produce call and its caller
//! giving up, and after a failed call nothing is sent until the broker answers a probe. A
//! purchase that was handed to the broker without an acknowledgement is `Unconfirmed`: the
//! client learns its eventId and retries safely with its `Idempotency-Key`. The Kafka
//! client's retries end before the produce timeout (`GatewayConfig::kafka_for_producing`),
//! so a record is not retried into the topic long after its caller was answered.

use std::{
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use infra::{cause_log::CauseLog, kafka::Backoff, traces};
use opentelemetry::{
    trace::{SpanKind, Status, TraceContextExt, Tracer},
    Context, KeyValue,
};
use purchase::PurchaseEvent;
use rskafka::{
    client::{
        error::{Error as KafkaError, ProtocolError},
        partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling},
        Client,
    },
    record::Record,
};
use tokio::{
    sync::{mpsc, oneshot, Mutex},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{config::ProduceArgs, metrics::Metrics};

/// Where the broker stored an acknowledged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

/// Why a purchase got no acknowledgement. The variants split on the one thing a client must
/// know: whether the purchase may still be stored.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("too many purchases are waiting for the broker")]
    QueueFull,
    #[error("the broker could not take the purchase within {0:?}")]
    NotSent(Duration),
    #[error("the gateway is shutting down")]
    Closed,
    /// The broker refused the purchase without writing it (its ACLs do not let the
    /// gateway's user write the topic). The detail is for the log and readiness.
    #[error("the broker refused the purchase")]
    Refused(String),
    /// The record was handed to the Kafka client, and no acknowledgement came back: the
    /// broker may have written it. The detail (the Kafka client's error) is for the log,
    /// never for the API answer.
    #[error("the broker did not confirm the purchase")]
    Unconfirmed(String),
}

impl ProduceError {
    /// True when the purchase may be stored although it was not acknowledged.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Unconfirmed(_))
    }
}

/// Who decides the fate of a queued purchase: the sender taking it into a produce call, or
/// the caller giving up on it. Exactly one of them wins, so a caller that answers "not
/// stored" knows the record never left the gateway.
#[derive(Clone, Default)]
struct Claim(Arc<AtomicU8>);

impl Claim {
    const QUEUED: u8 = 0;
    const SENT: u8 = 1;
    const ABANDONED: u8 = 2;

    fn transition(&self, to: u8) -> bool {
        self.0
            .compare_exchange(Self::QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The sender takes the purchase; false when its caller has given up on it.
    fn take_for_sending(&self) -> bool {
        self.transition(Self::SENT)
    }

    /// The caller gives up; false when the purchase is already on its way to the broker.
    fn abandon(&self) -> bool {
        self.transition(Self::ABANDONED)
    }
}

struct Pending {
    record: Record,
    claim: Claim,
    acked: oneshot::Sender<Result<i64, ProduceError>>,
}

pub struct PurchaseProducer {
    queues: Vec<mpsc::Sender<Pending>>,
    /// Cancelled by `close`: senders stop taking purchases and drain what is queued.
    closing: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
    args: ProduceArgs,
    metrics: Arc<Metrics>,
    topic: String,
    /// Why the brokers refused the last produce, until one is accepted: readiness says it.
    refusal: Refusal,
}

/// The last refusal of a produce by the brokers (an authorization error), shared by the
/// partition senders; cleared by any accepted produce.
#[derive(Clone, Default)]
struct Refusal(Arc<std::sync::Mutex<Option<String>>>);

impl Refusal {
    fn set(&self, why: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Produces the brokers refused, logged once per cause.
static REFUSED_PRODUCES: CauseLog = CauseLog::new("produce", Duration::from_secs(60));

impl PurchaseProducer {
    /// Connects to the leader of every partition of `topic` and starts one sender per partition.
    pub async fn start(
        client: &Client,
        topic: &str,
        partitions: i32,
        args: ProduceArgs,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KafkaError> {
        let mut queues = Vec::with_capacity(partitions as usize);
        let mut tasks = JoinSet::new();
        let closing = CancellationToken::new();
        let refusal = Refusal::default();
        for partition in 0..partitions {
            let client = client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await?;
            let (tx, rx) = mpsc::channel(args.queue_capacity.max(1));
            queues.push(tx);
            tasks.spawn(send_batches(
                client,
                rx,
                closing.clone(),
                args.batch_max_bytes,
                args.timeout,
                Arc::clone(&metrics),
                refusal.clone(),
            ));
        }
        Ok(Self {
            queues,
            closing,
            tasks: Mutex::new(tasks),
            args,
            metrics,
            topic: topic.to_string(),
            refusal,
        })
    }

    /// Why the brokers refused the last purchase, while no later one was accepted.
    pub fn refusal(&self) -> Option<String> {
        self.refusal.get()
    }

    /// Resolves once the broker has acknowledged the event (acks=all), or fails within the
    /// produce timeout. Only `Unconfirmed` leaves the outcome open: every other error means
    /// the record was never handed to the broker and never will be.
    ///
    /// The record carries the trace context of the caller's request on: the context of this
    /// send's own span when spans are exported, else the caller's `traceparent` as it came.
    pub async fn send(&self, event: &PurchaseEvent) -> Result<Delivery, ProduceError> {
        let (partition, event_record) = event.to_record(self.queues.len() as i32);
        let mut record = Record {
            key: Some(event_record.key),
            value: Some(event_record.value),
            headers: event_record.headers,
            timestamp: event_record.timestamp,
        };
        let send_span = traces::exporting().then(|| self.send_span(event, partition));
        let carried = send_span.clone().unwrap_or_else(Context::current);
        record.headers.extend(
            traces::headers_for(&carried)
                .into_iter()
                .map(|(name, value)| (name, value.into_bytes())),
        );
        let result = self.send_record(partition, record).await;
        if let Some(send_span) = send_span {
            let span = send_span.span();
            match &result {
                Ok(delivery) => {
                    span.set_attribute(KeyValue::new("messaging.kafka.offset", delivery.offset))
                }
                Err(e) => span.set_status(Status::error(e.to_string())),
            }
            span.end();
        }
        result
    }

    /// A producer span, child of the request's, for the record of `event`.
    fn send_span(&self, event: &PurchaseEvent, partition: i32) -> Context {
        let tracer = traces::tracer();
        let span = tracer
            .span_builder(format!("send {}", self.topic))
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.destination.name", self.topic.clone()),
                KeyValue::new("messaging.destination.partition.id", partition.to_string()),
                KeyValue::new("messaging.message.id", event.event_id.to_string()),
            ])
            .start(&tracer);
        Context::current_with_span(span)
    }

    async fn send_record(&self, partition: i32, record: Record) -> Result<Delivery, ProduceError> {
        let claim = Claim::default();
        let (acked, ack) = oneshot::channel();
        self.queues[partition as usize]
            .try_send(Pending {
                record,
                claim: claim.clone(),
                acked,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ProduceError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => ProduceError::Closed,
            })?;
        let offset = match tokio::time::timeout(self.args.timeout, ack).await {
            Ok(Ok(result)) => result?,
            // The sender is gone (the gateway is stopping) without an answer.
            Ok(Err(_)) if claim.abandon() => return Err(ProduceError::Closed),
            Err(_) if claim.abandon() => return Err(ProduceError::NotSent(self.args.timeout)),
            _ => {
                return Err(ProduceError::Unconfirmed(format!(
                    "no acknowledgement within {:?}",
                    self.args.timeout
                )))
            }
        };
        self.metrics.purchases_accepted.inc();
        Ok(Delivery { partition, offset })
    }

    /// Stops taking purchases (later sends fail with `Closed`) and waits until every queued
    /// one was sent or failed.
    pub async fn close(&self) {
        self.closing.cancel();
        let mut tasks = self.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
    }
}

async fn send_batches(
    client: PartitionClient,
    mut queue: mpsc::Receiver<Pending>,
    closing: CancellationToken,
    batch_max_bytes: usize,
    max_call: Duration,
    metrics: Arc<Metrics>,
    refusal: Refusal,
) {
    let mut reachable = true;
    loop {
        let next = tokio::select! {
            next = queue.recv() => next,
            () = closing.cancelled() => {
                // Refuse new purchases but still send the ones already queued.
                queue.close();
                queue.recv().await
            }
        };
        let Some(first) = next else { break };
        // After a failed call the broker may be down. Until it answers again no purchase
        // is taken into a call, so every caller that gives up meanwhile is told, truthfully,
        // that nothing was sent. Only the batch in flight when it failed stays unknown.
        if !reachable {
            if !wait_until_reachable(&client, &closing).await {
                break;
            }
            reachable = true;
        }
        // Group commit up to a size in bytes, which `recv_many` (a count) cannot bound.
        let mut bytes = first.record.approximate_size();
        let mut batch = vec![first];
        while bytes < batch_max_bytes {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.record.approximate_size();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        // A caller that already answered "not stored" must not see its purchase stored
        // behind its back: only what the sender wins the claim on is sent.
        batch.retain(|p| p.claim.take_for_sending());
        if batch.is_empty() {
            continue;
        }
        let (records, waiters): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.record, p.acked)).unzip();
        metrics.produce_batch_records.observe(records.len() as f64);
        let started = Instant::now();
        let result = produce_within(&client, records, max_call).await;
        metrics
            .produce_duration
            .observe(started.elapsed().as_secs_f64());
        reachable = result.is_ok();
        answer(
            waiters,
            result,
            client.topic(),
            client.partition(),
            &metrics,
            &refusal,
        );
    }
}

/// Tells each caller of a produce call how it ended: its offset; "refused, nothing stored"
/// when the broker's ACLs refused the write (checked before anything is appended); otherwise
/// "unconfirmed", because the broker may have appended it.
fn answer(
    waiters: Vec<oneshot::Sender<Result<i64, ProduceError>>>,
    result: Result<Vec<i64>, KafkaError>,
    topic: &str,
    partition: i32,
    metrics: &Metrics,
    refusal: &Refusal,
) {
    match result {
        Ok(offsets) => {
            refusal.set(None);
            for (waiter, offset) in waiters.into_iter().zip(offsets) {
                let _ = waiter.send(Ok(offset));
            }
        }
        Err(KafkaError::ServerError {
            protocol_error:
                refusal_code @ (ProtocolError::TopicAuthorizationFailed
                | ProtocolError::ClusterAuthorizationFailed),
            ..
        }) => {
            // The broker checked its ACLs before appending anything: nothing was
            // written, and the callers learn so, truthfully.
            metrics.produce_errors.inc();
            let why = format!(
                "the brokers refuse this gateway's user writes to topic {topic} ({refusal_code:?}): grant it Write on the topic"
            );
            REFUSED_PRODUCES.failed(&why);
            refusal.set(Some(why.clone()));
            for waiter in waiters {
                let _ = waiter.send(Err(ProduceError::Refused(why.clone())));
            }
        }
        Err(e) => {
            metrics.produce_errors.inc();
            tracing::warn!(topic, partition, error = %e, "produce failed");
            let reason = e.to_string();
            for waiter in waiters {
                let _ = waiter.send(Err(ProduceError::Unconfirmed(reason.clone())));
            }
        }
    }
}

/// Produces `records`, retrying what the broker says it did not write, for at most
/// `max_call`. rskafka retries a leader move and a broken connection itself until its
/// deadline, which counts only the pauses between attempts; the cap also ends a call stuck on
/// a broker that accepted the connection and never answers (its callers have all answered
/// by then).
async fn produce_within(
    client: &PartitionClient,
    records: Vec<Record>,
    max_call: Duration,
) -> Result<Vec<i64>, KafkaError> {
    let deadline = tokio::time::Instant::now() + max_call;
    let mut backoff = Backoff::new(max_call);
    loop {
        let attempt = tokio::time::timeout_at(
            deadline,
            client.produce(records.clone(), Compression::NoCompression),
        )
        .await
        .unwrap_or_else(|_| {
            Err(KafkaError::InvalidResponse(format!(
                "no answer within {max_call:?}"
            )))
        });
        match attempt {
            Err(e) if not_written(&e) && backoff.wait().await => {
                tracing::debug!(topic = client.topic(), partition = client.partition(), error = %e, "produce refused, nothing written; retrying");
            }
            outcome => return outcome,
        }
    }
}

/// Errors with which the broker says it appended nothing, so sending the same records again
/// cannot store them twice. (rskafka retries `NOT_LEADER_OR_FOLLOWER` and
/// `LEADER_NOT_AVAILABLE` itself; `NOT_ENOUGH_REPLICAS_AFTER_APPEND` and a timeout leave the
/// outcome open and are never retried.)
fn not_written(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::ServerError {
            protocol_error: ProtocolError::NotEnoughReplicas,
            ..
        }
    )
}

/// Probes the partition's leader until it answers (true), or the gateway is closing with the
/// broker still unreachable (false: what is queued is dropped and its callers told it was
/// not sent).
async fn wait_until_reachable(client: &PartitionClient, closing: &CancellationToken) -> bool {
    const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
    let mut probes = Backoff::probing();
    let (topic, partition) = (client.topic(), client.partition());
    tracing::debug!(
        topic,
        partition,
        "waiting for the partition leader to answer"
    );
    loop {
        let probe = tokio::time::timeout(PROBE_TIMEOUT, client.get_offset(OffsetAt::Latest));
        if let Ok(Ok(_)) = probe.await {
            tracing::info!(topic, partition, "partition leader answers again");
            return true;
        }
        tokio::select! {
            () = closing.cancelled() => return false,
            () = tokio::time::sleep(probes.next_delay()) => {}
        }
    }
}
