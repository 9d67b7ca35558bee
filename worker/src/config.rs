//! The worker's one typed configuration: every setting is a flag with an env var.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use infra::config::{parse_duration, ConsumerGroupArgs, KafkaArgs, MongoArgs, TelemetryArgs};
use kafka_group::{Assignor, FetchLimits, GroupConfig, GroupProtocol, RecordFetcher, Security};

use crate::fetch::{FetchSettings, Pacing};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "worker",
    version,
    args_override_self = true,
    about = "scalable-shop worker: consumes purchases from Kafka into MongoDB as a consumer group member"
)]
pub struct WorkerConfig {
    /// Address of the small HTTP server for /healthz, /readyz and /metrics.
    #[arg(long, env = "WORKER_LISTEN", default_value = "0.0.0.0:9091")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub mongo: MongoArgs,

    #[command(flatten)]
    pub group: ConsumerGroupArgs,

    #[command(flatten)]
    pub membership: MembershipArgs,

    #[command(flatten)]
    pub batch: BatchArgs,

    #[command(flatten)]
    pub fetch: FetchArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// Topic for records that cannot be decoded or fail validation.
    #[arg(long, env = "WORKER_DLQ_TOPIC", default_value = "purchases.dlq")]
    pub dlq_topic: String,

    /// After SIGTERM: time to stop fetching, flush, commit and leave the group. Keep it below
    /// the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// When MongoDB has taken none of this worker's writes for this long (no answer, not a
    /// refusal), it gives its partitions back and rejoins once MongoDB answers, so a worker
    /// cut off from the database does not hold partitions others could store. Shorter
    /// outages (a failover) keep the partitions and retry.
    #[arg(long, env = "WORKER_GIVE_BACK_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub give_back_after: Duration,
}

/// How this worker keeps its place in the group; the timings trade failover speed against
/// false alarms on a busy node.
#[derive(Debug, Clone, clap::Args)]
pub struct MembershipArgs {
    /// The consumer group protocol: `classic` (JoinGroup/SyncGroup; every broker), `consumer`
    /// (KIP-848, Kafka 4.0+: the coordinator assigns, and a worker joining or leaving pauses
    /// only the partitions that move), or `auto`: `consumer` when the group's coordinator
    /// offers it, else `classic`. Under `consumer`, the brokers'
    /// `group.consumer.session.timeout.ms` (Kafka: at least 45 s unless lowered) and
    /// `group.consumer.heartbeat.interval.ms` apply instead of the session and heartbeat
    /// flags, and the assignors are not used. `classic` by default, as in Kafka's own clients:
    /// a broker upgrade never changes the protocol, nor which settings apply, by itself.
    #[arg(id = "group-protocol", long = "group-protocol", env = "KAFKA_GROUP_PROTOCOL", value_enum, default_value_t = GroupProtocol::Classic)]
    pub group_protocol: GroupProtocol,

    /// Consumer protocol only: the coordinator's assignor (`uniform`, `range`, or one the
    /// broker was configured with); unset, the broker's default (`uniform` on Kafka).
    #[arg(id = "group-remote-assignor", long = "group-remote-assignor", env = "KAFKA_GROUP_REMOTE_ASSIGNOR", value_parser = non_empty_assignor)]
    pub remote_assignor: Option<String>,

    /// The coordinator drops a worker that has not heartbeated for this long. The group's
    /// first member fixes it for the group on some brokers (nisshi), which also hold every
    /// JoinGroup for half of it: a short session is a fast start.
    #[arg(id = "kafka-session-timeout", long = "kafka-session-timeout", env = "KAFKA_SESSION_TIMEOUT", default_value = "6s", value_parser = parse_duration)]
    pub session_timeout: Duration,

    /// How long a rebalance waits for members to rejoin (and for this worker to flush).
    #[arg(id = "kafka-rebalance-timeout", long = "kafka-rebalance-timeout", env = "KAFKA_REBALANCE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub rebalance_timeout: Duration,

    /// Whether this worker sends LeaveGroup when it stops while it leads the group, like
    /// every other member: on Kafka the group then rebalances at once. Turn it off only on a
    /// broker that strands a group whose leader leaves while the group re-forms (nisshi 0.7:
    /// README "Kafka brokers this is tested on"); a stopping leader then costs the group one
    /// session timeout.
    #[arg(id = "kafka-leader-leaves-group", long = "kafka-leader-leaves-group", env = "KAFKA_LEADER_LEAVES_GROUP", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_leaves_group: bool,

    #[arg(id = "kafka-heartbeat-interval", long = "kafka-heartbeat-interval", env = "KAFKA_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Static membership (KIP-345): a stable name for this worker, unique in the group (the
    /// manifests use the pod name). A worker that crashes and comes back under the same
    /// name within the session timeout takes its place back without a rebalance.
    #[arg(id = "kafka-group-instance-id", long = "kafka-group-instance-id", env = "KAFKA_GROUP_INSTANCE_ID", value_parser = non_empty)]
    pub group_instance_id: Option<String>,

    /// Assignors offered, in order of preference: `cooperative-sticky` (incremental: only
    /// partitions that move pause), `rskafka-sticky` and `range` (eager: every partition
    /// pauses during a rebalance; for groups with older workers or other clients).
    #[arg(id = "kafka-assignors", long = "kafka-assignors", env = "KAFKA_ASSIGNORS", value_delimiter = ',', default_value = "cooperative-sticky,rskafka-sticky,range", value_parser = parse_assignor)]
    pub assignors: Vec<Assignor>,

    /// How often the topic's partition count is checked, so partitions added to it are
    /// assigned without waiting for a worker to join or leave.
    #[arg(id = "kafka-metadata-refresh", long = "kafka-metadata-refresh", env = "KAFKA_METADATA_REFRESH", default_value = "30s", value_parser = parse_duration)]
    pub metadata_refresh: Duration,
}

fn parse_assignor(name: &str) -> Result<Assignor, String> {
    Assignor::from_protocol_name(name).ok_or_else(|| {
        format!("unknown assignor {name:?}: use cooperative-sticky, rskafka-sticky or range")
    })
}

fn non_empty_assignor(value: &str) -> Result<String, String> {
    match value.trim() {
        "" => Err("must not be empty (leave it unset for the broker's default assignor)".into()),
        value => Ok(value.to_string()),
    }
}

fn non_empty(value: &str) -> Result<String, String> {
    match value.trim() {
        "" => Err("must not be empty (leave it unset for a dynamic member)".into()),
        value => Ok(value.to_string()),
    }
}

impl WorkerConfig {
    /// The consumer group membership these settings describe.
    pub fn group_config(&self, security: &Security) -> GroupConfig {
        let mut group = GroupConfig::new(
            self.kafka.events.brokers.clone(),
            self.group.group_id.clone(),
            vec![self.kafka.events.topic.clone()],
        );
        group.client_id = self.kafka.client_id.clone();
        group.protocol = self.membership.group_protocol;
        group.server_assignor = self.membership.remote_assignor.clone();
        group.group_instance_id = self.membership.group_instance_id.clone();
        group.session_timeout = self.membership.session_timeout;
        group.rebalance_timeout = self.membership.rebalance_timeout;
        group.heartbeat_interval = self.membership.heartbeat_interval;
        group.metadata_refresh = self.membership.metadata_refresh;
        group.assignors = self.membership.assignors.clone();
        group.security = security.clone();
        group.leader_sends_leave_group = self.membership.leader_leaves_group;
        group
    }
}

/// How stored batches are sized. A batch is written as soon as the database is free: what
/// arrived while the previous write ran goes into the next one (group commit), so a quiet
/// stream is stored at once and a busy one in large writes.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    /// Documents per insert_many at most, when more than this many are waiting.
    #[arg(
        id = "batch-max-documents",
        long = "batch-max-documents",
        env = "WORKER_BATCH_MAX_DOCUMENTS",
        default_value_t = 1000
    )]
    pub max_documents: usize,
}

/// How the worker reads: one request per broker for all its partitions, paced by
/// [`Pacing`] so that each request carries many records while the worker is busy and a lone
/// record is read as soon as it arrives while it is idle.
#[derive(Debug, Clone, clap::Args)]
pub struct FetchArgs {
    /// Bytes one request may bring back, all partitions together (and so each partition).
    #[arg(id = "fetch-max-bytes", long = "fetch-max-bytes", env = "WORKER_FETCH_MAX_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(i32).range(1024..))]
    pub max_bytes: i32,

    /// How long the broker may hold a request open while no partition has records; a record
    /// arriving meanwhile is answered at once.
    #[arg(id = "fetch-max-wait", long = "fetch-max-wait", env = "WORKER_FETCH_MAX_WAIT", default_value = "500ms", value_parser = parse_duration)]
    pub max_wait: Duration,

    /// While records keep coming, the longest pause between two requests, so each carries
    /// many records instead of a few (the added delay is at most this). 0 asks again at once.
    #[arg(id = "fetch-linger", long = "fetch-linger", env = "WORKER_FETCH_LINGER", default_value = "100ms", value_parser = parse_duration)]
    pub linger: Duration,

    /// Bytes a request aims to carry: once traffic brings this many within one pause, the
    /// next request goes out without pausing.
    #[arg(id = "fetch-fill-bytes", long = "fetch-fill-bytes", env = "WORKER_FETCH_FILL_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub fill_bytes: u32,
}

impl WorkerConfig {
    /// The reader of this worker's partitions: its own connections to the partition leaders.
    pub fn record_fetcher(&self, security: &Security) -> RecordFetcher {
        RecordFetcher::new(
            self.kafka.events.brokers.clone(),
            self.kafka.client_id.clone(),
            self.group_config(security).request_timeout,
        )
        .with_security(security.clone())
    }

    pub fn fetch_settings(&self) -> FetchSettings {
        let fetch = &self.fetch;
        FetchSettings {
            limits: FetchLimits {
                min_bytes: 1,
                max_wait: fetch.max_wait,
                max_bytes: fetch.max_bytes,
                partition_max_bytes: fetch.max_bytes,
            },
            pacing: Pacing {
                linger: fetch.linger,
                fill_bytes: fetch.fill_bytes as usize,
            },
            reset: self.group.offset_reset,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_flag_is_unique_and_well_formed() {
        WorkerConfig::command().debug_assert();
    }

    #[test]
    fn the_group_settings_come_from_the_flags() {
        let config = WorkerConfig::try_parse_from([
            "worker",
            "--kafka-group-instance-id=worker-7",
            "--kafka-assignors=range,cooperative-sticky",
            "--kafka-session-timeout=8s",
        ])
        .unwrap();
        let group = config.group_config(&Security::default());
        assert_eq!(group.group_instance_id.as_deref(), Some("worker-7"));
        assert_eq!(
            group.assignors,
            [Assignor::Range, Assignor::CooperativeSticky]
        );
        assert_eq!(group.session_timeout, Duration::from_secs(8));
        assert_eq!(group.protocol, GroupProtocol::Classic, "the default");
    }

    #[test]
    fn the_group_protocol_and_remote_assignor_come_from_the_flags() {
        let config = WorkerConfig::try_parse_from([
            "worker",
            "--group-protocol=consumer",
            "--group-remote-assignor=range",
        ])
        .unwrap();
        let group = config.group_config(&Security::default());
        assert_eq!(group.protocol, GroupProtocol::Consumer);
        assert_eq!(group.server_assignor.as_deref(), Some("range"));
        let error = WorkerConfig::try_parse_from(["worker", "--group-protocol=new"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("auto, classic, consumer"), "{error}");
        let error = WorkerConfig::try_parse_from(["worker", "--group-remote-assignor="])
            .unwrap_err()
            .to_string();
        assert!(error.contains("must not be empty"), "{error}");
    }

    #[test]
    fn an_unknown_assignor_or_an_empty_instance_id_is_refused_with_the_fix() {
        let error = WorkerConfig::try_parse_from(["worker", "--kafka-assignors=sticky"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("use cooperative-sticky, rskafka-sticky or range"),
            "{error}"
        );
        let error = WorkerConfig::try_parse_from(["worker", "--kafka-group-instance-id= "])
            .unwrap_err()
            .to_string();
        assert!(error.contains("must not be empty"), "{error}");
    }
}
