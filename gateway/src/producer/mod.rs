//! Produces purchase events to Kafka with group commit, one Produce request per broker: a
//! lane per broker sends one request at a time carrying a batch for every partition that
//! broker leads, and every purchase that arrives while a request is in flight rides in the
//! next one. Under load, batches grow with concurrency (many purchases share one round
//! trip); when idle, a purchase is sent at once with no linger delay. rskafka's own producer
//! sends one request per partition and batches only by a fixed linger time; the wire part
//! here is `kafka_group::ProduceClient` (README, "Which library does which job").
//!
//! - `routing`: which lane (broker) takes each partition, looked up again when a broker says
//!   it no longer leads one;
//! - `lane`: one broker's sender: group commit, the request, each partition's answer.
//!
//! Every answer is true. A purchase is "not stored" only if it provably never left the
//! gateway, or the broker said it appended nothing: a `Claim` decides between the lane
//! taking it into a request and its caller giving up, and after a failed request a lane takes
//! nothing until its broker answers a connection again. A purchase that was handed to the
//! broker without an acknowledgement is `Unconfirmed`: the client learns its eventId and
//! retries safely with its `Idempotency-Key`. A purchase is never sent after its caller's
//! produce timeout, so a record is not retried into the topic long after its caller was
//! answered.

mod lane;
mod routing;

use std::{
    borrow::Cow,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use infra::traces;
use kafka_group::{OutgoingRecord, ProduceClient};
use opentelemetry::{
    trace::{SpanKind, Status, TraceContextExt, Tracer},
    Context, KeyValue,
};
use purchase::PurchaseEvent;
use tokio::{sync::oneshot, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{config::ProduceArgs, metrics::Metrics};
use routing::Router;

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
    /// No leader of the purchase's partition is known yet (a leader election at start-up);
    /// a lookup is under way.
    #[error("partition {0} has no leader the gateway knows of yet")]
    NoLeader(i32),
    /// The broker refused the purchase without writing it (its ACLs do not let the
    /// gateway's user write the topic). The detail is for the log and readiness.
    #[error("the broker refused the purchase")]
    Refused(String),
    /// The record was handed to the broker, and no acknowledgement came back: the broker
    /// may have written it. The detail (the Kafka client's error) is for the log, never for
    /// the API answer.
    #[error("the broker did not confirm the purchase")]
    Unconfirmed(String),
}

impl ProduceError {
    /// True when the purchase may be stored although it was not acknowledged.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Unconfirmed(_))
    }
}

/// Who decides the fate of a queued purchase: the lane taking it into a request, or the
/// caller giving up on it. Exactly one of them wins, so a caller that answers "not stored"
/// knows the record never left the gateway.
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

    /// The lane takes the purchase; false when its caller has given up on it.
    fn take_for_sending(&self) -> bool {
        self.transition(Self::SENT)
    }

    /// The caller gives up; false when the purchase is already on its way to the broker.
    fn abandon(&self) -> bool {
        self.transition(Self::ABANDONED)
    }
}

/// A purchase waiting for a lane: its record, and the one who waits for its answer.
struct Pending {
    partition: i32,
    record: OutgoingRecord,
    waiter: Waiter,
}

impl Pending {
    /// Whether a lane may put it in a request now (see `Waiter::take`).
    fn take(&self) -> bool {
        self.waiter.take()
    }

    fn answer(self, result: Result<i64, ProduceError>) {
        self.waiter.answer(result);
    }
}

/// The caller of a purchase in a lane's hands, waiting for its answer.
struct Waiter {
    claim: Claim,
    acked: oneshot::Sender<Result<i64, ProduceError>>,
    /// When its caller stops waiting; it is never sent after this.
    deadline: Instant,
    /// A broker said it appended nothing of an earlier attempt (the claim is the lane's
    /// already): it may be sent again until its deadline.
    retry: bool,
}

impl Waiter {
    /// Whether a lane may put its purchase in a request now: a first attempt wins its
    /// claim, a retry must still be within its caller's time.
    fn take(&self) -> bool {
        if self.retry {
            Instant::now() < self.deadline
        } else {
            self.claim.take_for_sending()
        }
    }

    fn answer(self, result: Result<i64, ProduceError>) {
        // The caller may have answered already (it timed out); nobody listens then.
        let _ = self.acked.send(result);
    }
}

/// What every lane shares: the settings, the metrics, the shutdown signal and the last
/// refusal by the brokers.
struct Shared {
    args: ProduceArgs,
    metrics: Arc<Metrics>,
    topic: String,
    /// Cancelled by `close`: lanes stop taking purchases and drain what is queued.
    closing: CancellationToken,
    lanes: TaskTracker,
    refusal: Refusal,
}

pub struct PurchaseProducer {
    router: Arc<Router>,
    shared: Arc<Shared>,
}

/// The last refusal of a produce by the brokers (an authorization error), shared by the
/// lanes; cleared by any accepted produce.
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

impl PurchaseProducer {
    /// Looks up the leaders of `topic`'s partitions and starts a lane for each of them.
    pub async fn start(
        client: ProduceClient,
        topic: &str,
        partitions: i32,
        args: ProduceArgs,
        metrics: Arc<Metrics>,
    ) -> Result<Self, kafka_group::Error> {
        let shared = Arc::new(Shared {
            args,
            metrics,
            topic: topic.to_string(),
            closing: CancellationToken::new(),
            lanes: TaskTracker::new(),
            refusal: Refusal::default(),
        });
        let router = Router::start(client, partitions, Arc::clone(&shared)).await?;
        Ok(Self { router, shared })
    }

    /// Why the brokers refused the last purchase, while no later one was accepted.
    pub fn refusal(&self) -> Option<String> {
        self.shared.refusal.get()
    }

    /// Resolves once the broker has acknowledged the event (acks=all), or fails within the
    /// produce timeout. Only `Unconfirmed` leaves the outcome open: every other error means
    /// the record was never written and never will be.
    ///
    /// The record carries the trace context of the caller's request on: the context of this
    /// send's own span when spans are exported, else the caller's `traceparent` as it came.
    pub async fn send(&self, event: &PurchaseEvent) -> Result<Delivery, ProduceError> {
        let (partition, event_record) = event.to_record(self.router.partitions());
        let send_span = traces::exporting().then(|| self.send_span(event, partition));
        let carried = send_span.clone().unwrap_or_else(Context::current);
        let contract_headers = event_record.headers.into_iter().map(|(name, value)| {
            let value = match value {
                Cow::Borrowed(fixed) => Bytes::from_static(fixed),
                Cow::Owned(value) => Bytes::from(value),
            };
            (Cow::Borrowed(name), value)
        });
        let trace_headers = traces::headers_for(&carried)
            .into_iter()
            .map(|(name, value)| (Cow::Owned(name), Bytes::from(value)));
        let record = OutgoingRecord::new(
            Some(Bytes::from(event_record.key)),
            Some(Bytes::from(event_record.value)),
            contract_headers.chain(trace_headers),
            event_record.timestamp.timestamp_millis(),
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
        let topic = &self.shared.topic;
        let span = tracer
            .span_builder(format!("send {topic}"))
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.destination.name", topic.clone()),
                KeyValue::new("messaging.destination.partition.id", partition.to_string()),
                KeyValue::new("messaging.message.id", event.event_id.to_string()),
            ])
            .start(&tracer);
        Context::current_with_span(span)
    }

    async fn send_record(
        &self,
        partition: i32,
        record: OutgoingRecord,
    ) -> Result<Delivery, ProduceError> {
        let timeout = self.shared.args.timeout;
        let claim = Claim::default();
        let (acked, ack) = oneshot::channel();
        self.router.route(Pending {
            partition,
            record,
            waiter: Waiter {
                claim: claim.clone(),
                acked,
                deadline: Instant::now() + timeout,
                retry: false,
            },
        })?;
        let offset = match tokio::time::timeout(timeout, ack).await {
            Ok(Ok(result)) => result?,
            // The lane is gone (the gateway is stopping) without an answer.
            Ok(Err(_)) if claim.abandon() => return Err(ProduceError::Closed),
            Err(_) if claim.abandon() => return Err(ProduceError::NotSent(timeout)),
            _ => {
                return Err(ProduceError::Unconfirmed(format!(
                    "no acknowledgement within {timeout:?}"
                )))
            }
        };
        self.shared.metrics.purchases_accepted.inc();
        Ok(Delivery { partition, offset })
    }

    /// Stops taking purchases (later sends fail with `Closed`) and waits until every queued
    /// one was sent or failed.
    pub async fn close(&self) {
        self.shared.closing.cancel();
        self.shared.lanes.close();
        self.shared.lanes.wait().await;
    }
}
