//! Builds a worker and runs it: checks Kafka and MongoDB, serves /healthz, /readyz and
//! /metrics, and runs group sessions (`session`) until shutdown. A session that ends because
//! MongoDB refuses the writes is followed, once MongoDB lets the worker write again, by a
//! new one; meanwhile the worker holds no partitions and is not ready.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use infra::{
    cause_log::CauseLog,
    config::{EventTopicArgs, KafkaArgs},
    kafka, kafka_security,
    mongo::{self, document::COLLECTION, Need},
};
use kafka_group::Backoff;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use rskafka::client::{partition::UnknownTopicHandling, Client};
use tokio_util::sync::CancellationToken;

use crate::{
    config::WorkerConfig,
    dlq::DeadLetters,
    metrics::Metrics,
    ops,
    readiness::{Readiness, Writes},
    session::{self, Ended, Shared},
};

/// What a worker does in MongoDB: insert purchases.
const MONGO_NEEDS: &[Need] = &[Need::insert(COLLECTION)];

/// After a refusal of the writes, the least time out of the group: growing while sessions
/// are refused before they store anything (a refusal the access check cannot see, such as a
/// validation rule, must not make the group rebalance in a loop).
const HOLD_OFF: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(60));
/// How often the access check runs while the worker waits to rejoin.
const ACCESS_POLL: Duration = Duration::from_secs(2);

pub struct Worker {
    shared: Shared,
    acceptor: TcpAcceptor,
    /// The start-up access check passed: the first session joins without a second one.
    mongo_usable: bool,
}

impl Worker {
    pub async fn build(config: WorkerConfig) -> anyhow::Result<Self> {
        let security = kafka_security::resolve(&config.kafka.events.security)
            .context("invalid Kafka security settings")?;
        let group = config.group_config(&security);
        group
            .validate()
            .context("invalid consumer group settings")?;
        let kafka = kafka::connect(&config.kafka, &security)
            .await
            .with_context(|| kafka::connecting_to(&config.kafka, &security))?;
        let topics = kafka::topic_admin(&config.kafka, &security);
        kafka::ensure_topic(&topics, &config.kafka, kafka::CONSUME)
            .await
            .with_context(|| kafka::preparing_topic(&config.kafka))?;
        let dead_letters = dead_letters(&kafka, &topics, &config.kafka, &config.dlq_topic).await?;
        check_group_access(&config, &security).await?;
        check_group_protocol(&config, &security).await?;

        let mongo::Opened { db, access, usable } =
            mongo::open(&config.mongo, "worker", MONGO_NEEDS)
                .await
                .context("cannot use MongoDB")?;
        tokio::spawn(mongo::ensure_indexes_until_done(db.clone()));

        let acceptor = TcpListener::bind(config.listen)
            .into_acceptor()
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        tracing::info!(listen = %config.listen, group = %config.group.group_id, topic = %config.kafka.events.topic, "worker started");
        Ok(Self {
            shared: Shared {
                config,
                group,
                db,
                dead_letters,
                metrics: Arc::new(Metrics::new()),
                readiness: Readiness::new(access),
                security,
            },
            acceptor,
            mongo_usable: usable,
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
            shared,
            acceptor,
            mongo_usable,
        } = self;
        let ops_stop = CancellationToken::new();
        let ops_task = tokio::spawn(ops::serve(
            acceptor,
            ops::OpsState {
                metrics: Arc::clone(&shared.metrics),
                readiness: Arc::clone(&shared.readiness),
            },
            ops_stop.clone(),
        ));
        let mut hold_off = Backoff::unbounded_between(HOLD_OFF.0, HOLD_OFF.1);
        // A worker joins only once MongoDB takes its writes: one that cannot reach it (from
        // start-up, or after giving its partitions back) takes none from those that can.
        let mut wait = Duration::ZERO;
        let mut writable = mongo_usable;
        let result = loop {
            if !writable && !wait_until_writable(&shared.readiness, wait, &shutdown).await {
                break Ok(());
            }
            writable = false;
            match session::run(&shared, &shutdown).await {
                Ok(Ended::WritesRefused { stored_any, .. }) => {
                    if stored_any {
                        hold_off.reset();
                    }
                    wait = hold_off.next_delay();
                }
                Ok(Ended::Shutdown) => break Ok(()),
                Ok(Ended::MemberStopped) => {
                    tracing::error!("the group member stopped; shutting down");
                    break Ok(());
                }
                Err(e) => break Err(e),
            }
        };
        ops_stop.cancel();
        let _ = ops_task.await;
        mongo::disconnect(&shared.db, shared.config.mongo.timeout).await;
        tracing::info!("worker stopped");
        result
    }
}

/// Reads the group's committed offset of partition 0 (OffsetFetch needs Describe on the
/// group): a group the brokers refuse this worker's user is a start-up error, named, instead
/// of a worker that never joins. Other errors are left to the group member, which retries.
async fn check_group_access(
    config: &WorkerConfig,
    security: &kafka_group::Security,
) -> anyhow::Result<()> {
    let group = &config.group.group_id;
    let admin = kafka::group_admin(&config.kafka, security);
    let partition = kafka_group::TopicPartition::new(&config.kafka.events.topic, 0);
    match admin.committed(group, &[partition]).await {
        Err(e)
            if e.protocol()
                .is_some_and(kafka_group::authorization::is_refusal) =>
        {
            anyhow::bail!(
                "the Kafka brokers refuse consumer group {group} to this worker ({e}): grant its user Read on the group and Describe and Read on topic {}",
                config.kafka.events.topic
            )
        }
        _ => Ok(()),
    }
}

/// `--group-protocol consumer` on brokers without it is a start-up error that names the fix
/// (`auto` falls back to `classic` by itself). A coordinator that cannot be reached now is
/// left to the group member, which retries.
async fn check_group_protocol(
    config: &WorkerConfig,
    security: &kafka_group::Security,
) -> anyhow::Result<()> {
    if config.membership.group_protocol != kafka_group::GroupProtocol::Consumer {
        return Ok(());
    }
    let group = &config.group.group_id;
    let admin = kafka::group_admin(&config.kafka, security);
    match admin.offers_consumer_protocol(group).await {
        Ok(false) => anyhow::bail!(
            "the Kafka brokers do not offer the consumer group protocol (KIP-848: ConsumerGroupHeartbeat v1, Kafka 4.0 or later) for group {group}: set --group-protocol classic (KAFKA_GROUP_PROTOCOL=classic), or auto to use it wherever the brokers have it"
        ),
        _ => Ok(()),
    }
}

/// Not a member, not ready: waits `hold_off`, then until the access check passes (at once
/// when it passes on the first try). `false`: shutdown came first.
async fn wait_until_writable(
    readiness: &Readiness,
    hold_off: Duration,
    shutdown: &CancellationToken,
) -> bool {
    static STILL_REFUSED: CauseLog =
        CauseLog::new("MongoDB access check", Duration::from_secs(300));
    let mut wait = hold_off;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(wait) => {}
        }
        wait = ACCESS_POLL;
        match readiness.access().run().await {
            Ok(()) => {
                STILL_REFUSED.recovered();
                if !hold_off.is_zero() {
                    tracing::info!("MongoDB takes this worker's writes again: rejoining the group");
                }
                readiness.wrote(Writes::Accepted);
                return true;
            }
            Err(problem) => STILL_REFUSED.failed(&problem),
        }
    }
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
    let partitions = kafka::ensure_topic(topics, &dlq_args, kafka::PRODUCE)
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
