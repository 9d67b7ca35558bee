//! Produces purchase events to Kafka with group commit: one task per partition sends one
//! produce request at a time, and every purchase that arrives while a request is in flight
//! rides in the next one. Under load, batches grow with concurrency (many requests share one
//! round trip); when idle, a purchase is sent at once with no linger delay. rskafka's own
//! `BatchProducer` batches only by a fixed linger time, which costs latency at low load.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use purchase::{partitioner::partition_for_key, PurchaseEvent, SCHEMA_VERSION};
use rskafka::{
    client::{
        partition::{Compression, PartitionClient, UnknownTopicHandling},
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

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("the broker did not acknowledge the purchase within {0:?}")]
    Timeout(std::time::Duration),
    #[error("too many purchases are waiting for the broker")]
    QueueFull,
    #[error("the broker rejected or could not take the purchase: {0}")]
    Broker(String),
    #[error("the gateway is shutting down")]
    Closed,
}

struct Pending {
    record: Record,
    acked: oneshot::Sender<Result<i64, ProduceError>>,
}

pub struct PurchaseProducer {
    queues: Vec<mpsc::Sender<Pending>>,
    /// Cancelled by `close`: senders stop taking purchases and drain what is queued.
    closing: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
    args: ProduceArgs,
    metrics: Arc<Metrics>,
}

impl PurchaseProducer {
    /// Connects to the leader of every partition of `topic` and starts one sender per partition.
    pub async fn start(
        client: &Client,
        topic: &str,
        partitions: i32,
        args: ProduceArgs,
        metrics: Arc<Metrics>,
    ) -> Result<Self, rskafka::client::error::Error> {
        let mut queues = Vec::with_capacity(partitions as usize);
        let mut tasks = JoinSet::new();
        let closing = CancellationToken::new();
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
                Arc::clone(&metrics),
            ));
        }
        Ok(Self {
            queues,
            closing,
            tasks: Mutex::new(tasks),
            args,
            metrics,
        })
    }

    /// Resolves once the broker has acknowledged the event (acks=all), or fails within the
    /// produce timeout. A failure never means the event is stored; it may still arrive late
    /// when the broker was slow, which is why retries get a fresh eventId only from clients.
    pub async fn send(&self, event: &PurchaseEvent) -> Result<Delivery, ProduceError> {
        let key = event.user_id.as_str().as_bytes();
        let partition = partition_for_key(key, self.queues.len() as i32);
        let record = Record {
            key: Some(key.to_vec()),
            value: Some(event.to_json()),
            headers: BTreeMap::from([
                ("content-type".to_string(), b"application/json".to_vec()),
                (
                    "schema-version".to_string(),
                    SCHEMA_VERSION.to_string().into_bytes(),
                ),
            ]),
            timestamp: event.timestamp,
        };
        let (acked, ack) = oneshot::channel();
        self.queues[partition as usize]
            .try_send(Pending { record, acked })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ProduceError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => ProduceError::Closed,
            })?;
        let offset = match tokio::time::timeout(self.args.timeout, ack).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(ProduceError::Closed),
            Err(_) => return Err(ProduceError::Timeout(self.args.timeout)),
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
    metrics: Arc<Metrics>,
) {
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
        // A caller that already answered 503 must not see its purchase stored behind its
        // back: drop what nobody waits for any more.
        batch.retain(|p| !p.acked.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (records, waiters): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.record, p.acked)).unzip();
        metrics.produce_batch_records.observe(records.len() as f64);
        let started = Instant::now();
        let result = client.produce(records, Compression::NoCompression).await;
        metrics
            .produce_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(offsets) => {
                for (waiter, offset) in waiters.into_iter().zip(offsets) {
                    let _ = waiter.send(Ok(offset));
                }
            }
            Err(e) => {
                metrics.produce_errors.inc();
                tracing::warn!(topic = client.topic(), partition = client.partition(), error = %e, "produce failed");
                let reason = e.to_string();
                for waiter in waiters {
                    let _ = waiter.send(Err(ProduceError::Broker(reason.clone())));
                }
            }
        }
    }
}
