//! The worker's one typed configuration: every setting is a flag with an env var.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use purchase::config::{parse_duration, ConsumerGroupArgs, KafkaArgs, MongoArgs, TelemetryArgs};

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
    pub telemetry: TelemetryArgs,

    /// Topic for records that cannot be decoded or fail validation.
    #[arg(long, env = "WORKER_DLQ_TOPIC", default_value = "purchases.dlq")]
    pub dlq_topic: String,

    /// After SIGTERM: time to stop fetching, flush, commit and leave the group. Keep it below
    /// the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// How this worker keeps its place in the group; the timings trade failover speed against
/// false alarms on a busy node.
#[derive(Debug, Clone, clap::Args)]
pub struct MembershipArgs {
    /// The coordinator drops a worker that has not heartbeated for this long.
    #[arg(id = "kafka-session-timeout", long = "kafka-session-timeout", env = "KAFKA_SESSION_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub session_timeout: Duration,

    /// How long a rebalance waits for members to rejoin (and for this worker to flush).
    #[arg(id = "kafka-rebalance-timeout", long = "kafka-rebalance-timeout", env = "KAFKA_REBALANCE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub rebalance_timeout: Duration,

    #[arg(id = "kafka-heartbeat-interval", long = "kafka-heartbeat-interval", env = "KAFKA_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    /// Documents per insert_many; a batch is written once it has this many.
    #[arg(
        id = "batch-max-documents",
        long = "batch-max-documents",
        env = "WORKER_BATCH_MAX_DOCUMENTS",
        default_value_t = 1000
    )]
    pub max_documents: usize,

    /// A partial batch is written once its oldest record waited this long.
    #[arg(id = "batch-max-age", long = "batch-max-age", env = "WORKER_BATCH_MAX_AGE", default_value = "200ms", value_parser = parse_duration)]
    pub max_age: Duration,

    /// Bytes asked for per fetch and partition.
    #[arg(id = "fetch-max-bytes", long = "fetch-max-bytes", env = "WORKER_FETCH_MAX_BYTES", default_value_t = 1024 * 1024)]
    pub fetch_max_bytes: i32,

    /// How long the broker may hold a fetch open waiting for new records.
    #[arg(id = "fetch-max-wait", long = "fetch-max-wait", env = "WORKER_FETCH_MAX_WAIT", default_value = "500ms", value_parser = parse_duration)]
    pub fetch_max_wait: Duration,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_flag_is_unique_and_well_formed() {
        WorkerConfig::command().debug_assert();
    }
}
