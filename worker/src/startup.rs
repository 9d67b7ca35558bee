//! Wires a worker together and runs it: group membership, the fetchers, the sink, the ops
//! HTTP server, and the drain on shutdown.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use kafka_group::Security;
use kafka_group::{GroupEvent, GroupMember};
use mongodb::Database;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use purchase::{
    config::{EventTopicArgs, KafkaArgs},
    kafka, kafka_security, mongo,
};
use rskafka::client::{partition::UnknownTopicHandling, Client};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    config::WorkerConfig, dlq::DeadLetters, fetcher::Fetchers, metrics::Metrics, ops, sink::Sink,
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
    security: Security,
}

impl Worker {
    pub async fn build(config: WorkerConfig) -> anyhow::Result<Self> {
        let brokers = config.kafka.events.brokers.join(",");
        let security = kafka_security::resolve(&config.kafka.events.security)
            .context("invalid Kafka security settings")?;
        let kafka = kafka::connect(&config.kafka, &security)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to Kafka at {brokers} ({})",
                    kafka_security::describe(&security)
                )
            })?;
        let topics = kafka::topic_admin(&config.kafka, &security);
        kafka::ensure_topic(&topics, &config.kafka)
            .await
            .with_context(|| {
                format!(
                    "cannot create or describe topic {}",
                    config.kafka.events.topic
                )
            })?;
        let dead_letters = dead_letters(&kafka, &topics, &config.kafka, &config.dlq_topic).await?;

        let db = mongo::open(&config.mongo, "worker")
            .await
            .context("cannot use MongoDB")?;
        tokio::spawn(mongo::ensure_indexes_until_done(db.clone()));

        let (member, events) = GroupMember::start(config.group_config(&security))
            .context("invalid consumer group settings")?;

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
            security,
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
            security,
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
        let mut fetchers = Fetchers::new(
            kafka,
            config.kafka.events.topic.clone(),
            Arc::clone(&member),
            config.record_fetcher(&security),
            config.fetch_settings(),
            sink,
            Arc::clone(&metrics),
        );

        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => break,
                event = events.recv() => event,
            };
            match event {
                Some(GroupEvent::Assigned {
                    generation,
                    partitions,
                    added,
                }) => {
                    metrics.rebalances.inc();
                    tracing::info!(generation, partitions = ?partition_numbers(&partitions), added = ?partition_numbers(&added), "assigned");
                    fetchers.start(&added, &shutdown).await;
                }
                Some(GroupEvent::Revoked(revocation)) => fetchers.release(revocation).await,
                None => {
                    tracing::error!("the group member stopped; shutting down");
                    break;
                }
            }
        }

        tracing::info!("draining: stop fetching, flush, commit, leave the group");
        let drain = async {
            fetchers.drain().await;
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

fn partition_numbers(partitions: &[kafka_group::TopicPartition]) -> Vec<i32> {
    partitions.iter().map(|tp| tp.partition).collect()
}

async fn dead_letters(
    kafka: &Client,
    topics: &kafka::TopicAdmin,
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
    let partitions = kafka::ensure_topic(topics, &dlq_args)
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
