//! Fetching: one fetch loop per owned partition, reading records with rskafka from the
//! group's committed offset, decoding them and handing them to the sink in order (a full sink
//! channel, when the database is slow or down, pauses fetching); and [`Fetchers`], the
//! partition lifecycle the group's assignments and revocations drive.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use kafka_group::{Backoff, GroupMember, OffsetReset, Revocation, TopicPartition};
use purchase::{PurchaseDocument, PurchaseEvent};
use rskafka::client::{
    error::{Error as KafkaError, ProtocolError},
    partition::{OffsetAt, PartitionClient, UnknownTopicHandling},
    Client,
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    record::{Fetched, FetchedBatch, PoisonRecord, SinkMessage},
};

pub struct FetchSettings {
    pub max_bytes: i32,
    pub max_wait: Duration,
    pub reset: OffsetReset,
}

/// The fetch loops of the partitions this worker owns.
pub struct Fetchers {
    kafka: Client,
    topic: String,
    member: Arc<GroupMember>,
    settings: Arc<FetchSettings>,
    sink: mpsc::Sender<SinkMessage>,
    metrics: Arc<Metrics>,
    clients: BTreeMap<i32, Arc<PartitionClient>>,
    running: BTreeMap<i32, (CancellationToken, JoinHandle<()>)>,
}

impl Fetchers {
    pub fn new(
        kafka: Client,
        topic: String,
        member: Arc<GroupMember>,
        settings: FetchSettings,
        sink: mpsc::Sender<SinkMessage>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            kafka,
            topic,
            member,
            settings: Arc::new(settings),
            sink,
            metrics,
            clients: BTreeMap::new(),
            running: BTreeMap::new(),
        }
    }

    /// Starts fetching each of `partitions` that is not fetched yet, from the group's
    /// committed offset (or the reset policy).
    pub async fn start(&mut self, partitions: &[TopicPartition], shutdown: &CancellationToken) {
        let partitions: Vec<TopicPartition> = partitions
            .iter()
            .filter(|tp| !self.running.contains_key(&tp.partition))
            .cloned()
            .collect();
        if partitions.is_empty() {
            return;
        }
        let Some(committed) = self.committed(&partitions, shutdown).await else {
            return;
        };
        for tp in &partitions {
            let client = match self.partition_client(tp.partition).await {
                Ok(client) => client,
                Err(e) => {
                    tracing::error!(partition = tp.partition, error = %e, "cannot reach the partition leader; its records wait for the next assignment");
                    continue;
                }
            };
            let offset = match committed.get(tp).copied().flatten() {
                Some(offset) => offset,
                None => match reset_offset(&client, self.settings.reset).await {
                    Ok(offset) => offset,
                    Err(e) => {
                        tracing::error!(partition = tp.partition, error = %e, "cannot find the start offset");
                        continue;
                    }
                },
            };
            tracing::debug!(partition = tp.partition, offset, "fetching");
            let stop = CancellationToken::new();
            let task = tokio::spawn(fetch_partition(
                client,
                offset,
                Arc::clone(&self.settings),
                self.sink.clone(),
                stop.clone(),
                Arc::clone(&self.metrics),
            ));
            self.running.insert(tp.partition, (stop, task));
        }
        self.metrics
            .assigned_partitions
            .set(self.running.len() as i64);
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
        self.stop(&partitions).await;
        // Even when the membership was lost the writes are worth finishing: they are
        // idempotent, and only the commit will be refused.
        self.flush(partitions).await;
        self.metrics
            .assigned_partitions
            .set(self.running.len() as i64);
        revocation.done();
    }

    /// Shutdown: stop every fetcher, then write and commit everything fetched.
    pub async fn drain(&mut self) {
        let partitions: Vec<i32> = self.running.keys().copied().collect();
        self.stop(&partitions).await;
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

    async fn partition_client(
        &mut self,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, KafkaError> {
        if let Some(client) = self.clients.get(&partition) {
            return Ok(Arc::clone(client));
        }
        let client = Arc::new(
            self.kafka
                .partition_client(self.topic.clone(), partition, UnknownTopicHandling::Retry)
                .await?,
        );
        self.clients.insert(partition, Arc::clone(&client));
        Ok(client)
    }

    /// Stops the fetchers of `partitions` and waits until they have, so that everything they
    /// fetched is in the sink's queue before anything sent after.
    async fn stop(&mut self, partitions: &[i32]) {
        let mut stopped = Vec::new();
        for partition in partitions {
            if let Some((stop, task)) = self.running.remove(partition) {
                stop.cancel();
                stopped.push(task);
            }
        }
        for task in stopped {
            let _ = task.await;
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

/// The first offset to read when the group has none committed, per the reset policy.
pub async fn reset_offset(client: &PartitionClient, reset: OffsetReset) -> Result<i64, KafkaError> {
    let at = match reset {
        OffsetReset::Earliest => OffsetAt::Earliest,
        OffsetReset::Latest => OffsetAt::Latest,
    };
    client.get_offset(at).await
}

/// Runs until `stop` is cancelled. Whatever was fetched but not yet handed over is dropped:
/// it was not committed, so the next owner reads it again.
pub async fn fetch_partition(
    client: Arc<PartitionClient>,
    mut offset: i64,
    settings: Arc<FetchSettings>,
    sink: mpsc::Sender<SinkMessage>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let partition = client.partition();
    let max_wait_ms = i32::try_from(settings.max_wait.as_millis()).unwrap_or(i32::MAX);
    let mut backoff =
        Backoff::unbounded_between(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let fetched = tokio::select! {
            () = stop.cancelled() => return,
            fetched = client.fetch_records(offset, 1..settings.max_bytes, max_wait_ms) => fetched,
        };
        let records = match fetched {
            Ok((records, high_watermark)) => {
                backoff.reset();
                if records.is_empty() && high_watermark > offset {
                    tracing::debug!(
                        partition,
                        offset,
                        high_watermark,
                        "fetch returned nothing below the high watermark"
                    );
                } else if records.last().is_some_and(|r| r.offset < offset) {
                    tracing::debug!(
                        partition,
                        offset,
                        high_watermark,
                        first = records[0].offset,
                        last = records[records.len() - 1].offset,
                        "fetch returned only records before the offset"
                    );
                }
                records
            }
            Err(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => {
                match reset_offset(&client, settings.reset).await {
                    Ok(reset) => {
                        tracing::warn!(
                            partition,
                            from = offset,
                            to = reset,
                            "offset out of range, reset"
                        );
                        offset = reset;
                    }
                    Err(e) => tracing::warn!(partition, error = %e, "cannot reset offset"),
                }
                continue;
            }
            Err(e) => {
                let pause = backoff.next_delay();
                tracing::warn!(partition, offset, error = %e, retry_in = ?pause, "fetch failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        // A fetch may start before the requested offset (whole compressed batches).
        let records: Vec<_> = records.into_iter().filter(|r| r.offset >= offset).collect();
        let Some(last) = records.last() else { continue };
        let next_offset = last.offset + 1;
        metrics.records_consumed.inc_by(records.len() as u64);
        let batch = FetchedBatch {
            partition,
            next_offset,
            records: records.into_iter().map(|r| decode(partition, r)).collect(),
        };
        tokio::select! {
            () = stop.cancelled() => return,
            sent = sink.send(SinkMessage::Records(batch)) => if sent.is_err() { return },
        }
        offset = next_offset;
    }
}

fn decode(partition: i32, fetched: rskafka::record::RecordAndOffset) -> Fetched {
    let value = fetched.record.value.unwrap_or_default();
    match PurchaseEvent::from_json(&value) {
        // The document is built here, in the partition's task, to keep the single sink free
        // for writing.
        Ok(event) => Fetched::Purchase(PurchaseDocument::from_event(&event)),
        Err(e) => Fetched::Poison(PoisonRecord {
            partition,
            offset: fetched.offset,
            key: fetched.record.key,
            value,
            reason: e.to_string(),
        }),
    }
}
