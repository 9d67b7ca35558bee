//! Builds and runs a worker: group membership, one fetcher per assigned partition, the sink,
//! the ops HTTP server, and the drain on shutdown.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use kafka_group::{GroupConfig, GroupEvent, GroupMember, Revocation, TopicPartition};
use mongodb::Database;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use purchase::{
    config::{EventTopicArgs, KafkaArgs},
    kafka, mongo,
};
use rskafka::client::{
    partition::{PartitionClient, UnknownTopicHandling},
    Client,
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::WorkerConfig,
    dlq::DeadLetters,
    fetcher::{fetch_partition, reset_offset, FetchSettings},
    metrics::Metrics,
    ops,
    sink::{Sink, SinkMessage},
};

/// Fetched batches waiting for the sink; when full, fetchers wait (backpressure).
const SINK_QUEUE: usize = 64;

pub struct Worker {
    config: WorkerConfig,
    kafka: Client,
    db: Database,
    member: Arc<GroupMember>,
    events: mpsc::UnboundedReceiver<GroupEvent>,
    dead_letters: DeadLetters,
    metrics: Arc<Metrics>,
    acceptor: TcpAcceptor,
}

impl Worker {
    pub async fn build(config: WorkerConfig) -> anyhow::Result<Self> {
        let brokers = config.kafka.events.brokers.join(",");
        let kafka = kafka::connect(&config.kafka)
            .await
            .with_context(|| format!("cannot reach Kafka at {brokers}"))?;
        kafka::ensure_topic(&kafka, &config.kafka)
            .await
            .with_context(|| {
                format!(
                    "cannot create or describe topic {}",
                    config.kafka.events.topic
                )
            })?;
        let dead_letters = dead_letters(&kafka, &config.kafka, &config.dlq_topic).await?;

        let db = mongo::connect(&config.mongo, "worker")
            .await
            .context("invalid MongoDB connection string")?;
        tokio::spawn(mongo::ensure_indexes_until_done(db.clone()));

        let mut group = GroupConfig::new(
            config.kafka.events.brokers.clone(),
            config.group.group_id.clone(),
            vec![config.kafka.events.topic.clone()],
        );
        group.client_id = config.kafka.client_id.clone();
        group.session_timeout = config.membership.session_timeout;
        group.rebalance_timeout = config.membership.rebalance_timeout;
        group.heartbeat_interval = config.membership.heartbeat_interval;
        let (member, events) =
            GroupMember::start(group).context("invalid consumer group settings")?;

        let acceptor = TcpListener::bind(config.listen)
            .into_acceptor()
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        tracing::info!(listen = %config.listen, group = %config.group.group_id, topic = %config.kafka.events.topic, "worker started");
        Ok(Self {
            config,
            kafka,
            db,
            member: Arc::new(member),
            events,
            dead_letters,
            metrics: Arc::new(Metrics::new()),
            acceptor,
        })
    }

    /// The address of the ops HTTP server (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .expect("a TCP acceptor has a socket address")
    }

    /// Consumes until `shutdown`, then within the grace period: stop fetching, write and
    /// commit what was read, leave the group.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Worker {
            config,
            kafka,
            db,
            member,
            mut events,
            dead_letters,
            metrics,
            acceptor,
        } = self;
        let abandon = CancellationToken::new();
        let (sink, inbox) = mpsc::channel(SINK_QUEUE);
        let sink_task = tokio::spawn(
            Sink {
                purchases: mongo::purchases(&db),
                dead_letters,
                member: Arc::clone(&member),
                topic: config.kafka.events.topic.clone(),
                metrics: Arc::clone(&metrics),
                max_documents: config.batch.max_documents.max(1),
                max_age: config.batch.max_age,
                abandon: abandon.clone(),
            }
            .run(inbox),
        );
        let ops_stop = CancellationToken::new();
        let ops_task = tokio::spawn(ops::serve(
            acceptor,
            ops::OpsState {
                metrics: Arc::clone(&metrics),
                member: Arc::clone(&member),
                db: db.clone(),
            },
            ops_stop.clone(),
        ));
        let lag_task = tokio::spawn(ops::track_lag(
            Arc::clone(&member),
            config.group.group_id.clone(),
            config.kafka.events.topic.clone(),
            config.group.offset_reset,
            Arc::clone(&metrics),
        ));
        let mut fetchers = Fetchers {
            kafka,
            topic: config.kafka.events.topic.clone(),
            member: Arc::clone(&member),
            settings: Arc::new(FetchSettings {
                max_bytes: config.batch.fetch_max_bytes,
                max_wait: config.batch.fetch_max_wait,
                reset: config.group.offset_reset,
            }),
            sink,
            metrics: Arc::clone(&metrics),
            clients: BTreeMap::new(),
            running: BTreeMap::new(),
        };

        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => break,
                event = events.recv() => event,
            };
            match event {
                Some(GroupEvent::Assigned {
                    partitions,
                    generation,
                }) => {
                    metrics.rebalances.inc();
                    metrics.assigned_partitions.set(partitions.len() as i64);
                    tracing::info!(generation, partitions = ?partitions.iter().map(|p| p.partition).collect::<Vec<_>>(), "assigned");
                    fetchers.start(&partitions, &shutdown).await;
                }
                Some(GroupEvent::Revoked(revocation)) => fetchers.release(revocation).await,
                None => break,
            }
        }

        tracing::info!("draining: stop fetching, flush, commit, leave the group");
        let drain = async {
            fetchers.stop(None).await;
            fetchers.flush().await;
            if let Err(e) = member.leave().await {
                tracing::warn!(error = %e, "leaving the group failed");
            }
        };
        if tokio::time::timeout(config.shutdown_grace, drain)
            .await
            .is_err()
        {
            tracing::warn!(grace = ?config.shutdown_grace, "drain did not finish within the grace period; uncommitted records will be redelivered");
            abandon.cancel();
        }
        drop(fetchers);
        let _ = sink_task.await;
        lag_task.abort();
        ops_stop.cancel();
        let _ = ops_task.await;
        mongo::disconnect(&db, config.mongo.timeout).await;
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// The fetch loops of the partitions this worker owns.
struct Fetchers {
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
    /// Starts fetching each partition from the group's committed offset (or the reset policy).
    async fn start(&mut self, partitions: &[TopicPartition], shutdown: &CancellationToken) {
        let Some(committed) = self.committed(partitions, shutdown).await else {
            return;
        };
        for tp in partitions {
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
    }

    /// The group's committed offsets, retried until they are known or shutdown.
    async fn committed(
        &self,
        partitions: &[TopicPartition],
        shutdown: &CancellationToken,
    ) -> Option<BTreeMap<TopicPartition, Option<i64>>> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.member.committed(partitions).await {
                Ok(committed) => return Some(committed),
                Err(e) => tracing::warn!(error = %e, "cannot read committed offsets yet"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn partition_client(
        &mut self,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, rskafka::client::error::Error> {
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

    /// Revocation: stop fetching the partitions, write and commit what was read from them,
    /// then let them go.
    async fn release(&mut self, revocation: Revocation) {
        let partitions: Vec<i32> = revocation
            .partitions
            .iter()
            .map(|tp| tp.partition)
            .collect();
        tracing::info!(?partitions, lost = revocation.lost, "revoked");
        self.stop(Some(&partitions)).await;
        // Even when the membership was lost the writes are worth finishing: they are
        // idempotent, and only the commit will be refused.
        self.flush().await;
        self.metrics
            .assigned_partitions
            .set(self.running.len() as i64);
        revocation.done();
    }

    /// Stops the fetchers of `partitions` (all when `None`) and waits until they have.
    async fn stop(&mut self, partitions: Option<&[i32]>) {
        let selected: Vec<i32> = match partitions {
            Some(list) => list.to_vec(),
            None => self.running.keys().copied().collect(),
        };
        let mut stopped = Vec::new();
        for partition in selected {
            if let Some((stop, task)) = self.running.remove(&partition) {
                stop.cancel();
                stopped.push(task);
            }
        }
        for task in stopped {
            let _ = task.await;
        }
    }

    /// Writes and commits everything fetched so far.
    async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.sink.send(SinkMessage::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }
}

async fn dead_letters(
    kafka: &Client,
    args: &KafkaArgs,
    dlq_topic: &str,
) -> anyhow::Result<DeadLetters> {
    let dlq_args = KafkaArgs {
        events: EventTopicArgs {
            topic: dlq_topic.to_string(),
            ..args.events.clone()
        },
        topic_partitions: 1,
        ..args.clone()
    };
    let partitions = kafka::ensure_topic(kafka, &dlq_args)
        .await
        .with_context(|| format!("cannot create or describe dead-letter topic {dlq_topic}"))?;
    let mut clients = Vec::new();
    for partition in 0..partitions {
        clients.push(Arc::new(
            kafka
                .partition_client(dlq_topic, partition, UnknownTopicHandling::Retry)
                .await
                .with_context(|| format!("cannot reach dead-letter partition {partition}"))?,
        ));
    }
    Ok(DeadLetters::new(clients, args.events.topic.clone()))
}
