//! Configuration pieces every binary shares. Each setting is a flag with an environment
//! variable (clap `env`), so the same binary runs from a shell, `make up` or a Kubernetes
//! ConfigMap.

use std::time::Duration;

use clap::{Args, ValueEnum};
use kafka_group::OffsetReset;
use secrecy::SecretString;

/// A secret flag's value, kept out of `Debug` output from the moment it is parsed.
fn secret(text: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(text))
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 500ms, 5s, 1m)"))
}

/// Where purchase events live: the cluster and the topic. Every binary that talks to Kafka
/// (gateway, worker, the load tool's lag watch) reads these two, under the same names.
#[derive(Debug, Clone, Args)]
pub struct EventTopicArgs {
    /// Comma-separated bootstrap brokers (host:port).
    #[arg(
        id = "kafka-brokers",
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        value_delimiter = ','
    )]
    pub brokers: Vec<String>,

    /// Topic that carries purchase events.
    #[arg(
        id = "kafka-topic",
        long = "kafka-topic",
        env = "KAFKA_TOPIC",
        default_value = "purchases"
    )]
    pub topic: String,

    #[command(flatten)]
    pub security: KafkaSecurityArgs,
}

/// How every Kafka connection is secured (the producer, the group member, the fetcher, the
/// lag watch): the same flags in every binary, so one Secret configures the whole fleet.
/// Plaintext without authentication unless set; a TLS or SASL failure stops the process
/// with the cause and never falls back to plaintext.
#[derive(Debug, Clone, Default, Args)]
pub struct KafkaSecurityArgs {
    /// SASL mechanism to authenticate with; unset sends no SASL handshake.
    #[arg(
        id = "kafka-sasl-mechanism",
        long = "kafka-sasl-mechanism",
        env = "KAFKA_SASL_MECHANISM",
        value_enum,
        ignore_case = true,
        requires = "kafka-sasl-username"
    )]
    pub sasl_mechanism: Option<SaslMechanismArg>,

    /// SASL user name.
    #[arg(
        id = "kafka-sasl-username",
        long = "kafka-sasl-username",
        env = "KAFKA_SASL_USERNAME",
        requires = "kafka-sasl-mechanism"
    )]
    pub sasl_username: Option<String>,

    /// SASL password. Prefer --kafka-sasl-password-file: a value here is visible in the
    /// process list (the env var is not).
    #[arg(
        id = "kafka-sasl-password",
        long = "kafka-sasl-password",
        env = "KAFKA_SASL_PASSWORD",
        hide_env_values = true,
        conflicts_with = "kafka-sasl-password-file",
        value_parser = secret
    )]
    pub sasl_password: Option<SecretString>,

    /// File holding the SASL password (a mounted Secret); one trailing newline is ignored.
    #[arg(
        id = "kafka-sasl-password-file",
        long = "kafka-sasl-password-file",
        env = "KAFKA_SASL_PASSWORD_FILE"
    )]
    pub sasl_password_file: Option<std::path::PathBuf>,

    /// Connect with TLS and verify the brokers' certificates (against the public web roots
    /// unless --kafka-tls-ca-file is given).
    #[arg(id = "kafka-tls", long = "kafka-tls", env = "KAFKA_TLS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub tls: bool,

    /// PEM file of the CA certificates that sign the brokers' certificates, instead of the
    /// public web roots.
    #[arg(
        id = "kafka-tls-ca-file",
        long = "kafka-tls-ca-file",
        env = "KAFKA_TLS_CA_FILE"
    )]
    pub tls_ca_file: Option<std::path::PathBuf>,

    /// PEM certificate chain presented to brokers that require client certificates (mutual
    /// TLS); needs --kafka-tls-key-file.
    #[arg(
        id = "kafka-tls-cert-file",
        long = "kafka-tls-cert-file",
        env = "KAFKA_TLS_CERT_FILE",
        requires = "kafka-tls-key-file"
    )]
    pub tls_cert_file: Option<std::path::PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --kafka-tls-cert-file.
    #[arg(
        id = "kafka-tls-key-file",
        long = "kafka-tls-key-file",
        env = "KAFKA_TLS_KEY_FILE",
        requires = "kafka-tls-cert-file"
    )]
    pub tls_key_file: Option<std::path::PathBuf>,
}

/// The SASL mechanisms, as named on the command line: Kafka's names in any case, or KEDA's
/// (`scram_sha512`), so that one Secret key serves the KEDA trigger and the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaslMechanismArg {
    /// The password travels as it is: only with --kafka-tls.
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256", alias = "scram_sha256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512", alias = "scram_sha512")]
    ScramSha512,
}

/// The worker fleet's consumer group, as the worker joins it and as KEDA and the load tool
/// measure its lag: all three must name the same group and count uncommitted partitions alike.
#[derive(Debug, Clone, Args)]
pub struct ConsumerGroupArgs {
    /// Consumer group; KEDA's ScaledObject must name the same one.
    #[arg(
        id = "kafka-group-id",
        long = "kafka-group-id",
        env = "KAFKA_GROUP_ID",
        default_value = "purchase-workers"
    )]
    pub group_id: String,

    /// Where a partition without a committed offset starts; must match the KEDA trigger's
    /// offsetResetPolicy so KEDA counts the same lag.
    #[arg(id = "kafka-offset-reset", long = "kafka-offset-reset", env = "KAFKA_OFFSET_RESET", value_enum, default_value_t = OffsetReset::Earliest)]
    pub offset_reset: OffsetReset,
}

#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    #[command(flatten)]
    pub events: EventTopicArgs,

    /// Partitions used when the topic has to be created. Caps the useful worker replicas.
    #[arg(id = "kafka-topic-partitions", long = "kafka-topic-partitions", env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 12, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub topic_partitions: i32,

    /// Replication factor used when the topic has to be created.
    #[arg(id = "kafka-replication-factor", long = "kafka-replication-factor", env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(i16).range(1..=100))]
    pub replication_factor: i16,

    /// Client id sent to the broker (shows up in broker logs and quotas).
    #[arg(
        id = "kafka-client-id",
        long = "kafka-client-id",
        env = "KAFKA_CLIENT_ID",
        default_value = "scalable-shop"
    )]
    pub client_id: String,

    /// How long one Kafka operation may keep retrying a broker that does not answer.
    #[arg(id = "kafka-retry-deadline", long = "kafka-retry-deadline", env = "KAFKA_RETRY_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub retry_deadline: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct MongoArgs {
    /// MongoDB connection string, with credentials and TLS options in the standard form
    /// (`mongodb://user:password@host/?tls=true&tlsCAFile=/etc/ca.pem&authSource=admin`).
    /// The server certificate is verified unless the string says `tlsInsecure=true`.
    #[arg(
        id = "mongo-uri",
        long = "mongo-uri",
        env = "MONGO_URI",
        default_value = "mongodb://127.0.0.1:27017",
        hide_env_values = true
    )]
    pub uri: String,

    /// File holding the connection string (a mounted Secret), read at start-up instead of
    /// --mongo-uri; surrounding whitespace is ignored.
    #[arg(
        id = "mongo-uri-file",
        long = "mongo-uri-file",
        env = "MONGO_URI_FILE",
        conflicts_with = "mongo-uri"
    )]
    pub uri_file: Option<std::path::PathBuf>,

    /// Database that holds the `purchases` collection.
    #[arg(
        id = "mongo-database",
        long = "mongo-database",
        env = "MONGO_DATABASE",
        default_value = "shop"
    )]
    pub database: String,

    /// How long to wait for a usable MongoDB server before an operation fails.
    #[arg(id = "mongo-timeout", long = "mongo-timeout", env = "MONGO_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    #[command(flatten)]
    pub write_concern: WriteConcernArgs,
}

/// When MongoDB may acknowledge a write. Our writes are the ones a purchase's safety rests
/// on (the worker commits Kafka offsets after them, the gateway produces after reserving an
/// idempotency key), so the default waits for a majority of the replica set and the journal:
/// an acknowledged write then survives a crash of any minority, including the primary.
#[derive(Debug, Clone, Args)]
pub struct WriteConcernArgs {
    /// Write acknowledgement: `majority`, a number of members (1 = the primary alone), or a
    /// tag set name. Overrides any `w` in the connection string.
    #[arg(id = "mongo-write-concern", long = "mongo-write-concern", env = "MONGO_WRITE_CONCERN", default_value = "majority", value_parser = parse_acknowledgment)]
    pub w: WriteAcknowledgment,

    /// Wait until the write is in the on-disk journal (`j: true`).
    #[arg(id = "mongo-write-journal", long = "mongo-write-journal", env = "MONGO_WRITE_JOURNAL", default_value_t = true, action = clap::ArgAction::Set)]
    pub journal: bool,

    /// How long the server may wait for the acknowledgement before it reports a write
    /// concern error (the write is then retried; `_id` makes the retry harmless).
    #[arg(id = "mongo-write-timeout", long = "mongo-write-timeout", env = "MONGO_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The `w` of a write concern, as typed on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteAcknowledgment {
    Majority,
    Members(u32),
    Tag(String),
}

fn parse_acknowledgment(text: &str) -> Result<WriteAcknowledgment, String> {
    match text.trim() {
        "" => Err("must be `majority`, a number of members (1 or more) or a tag set name".into()),
        "majority" => Ok(WriteAcknowledgment::Majority),
        "0" => Err("0 (unacknowledged) cannot tell whether a purchase was stored; use 1 or more, or `majority`".into()),
        digits if digits.bytes().all(|b| b.is_ascii_digit()) => digits
            .parse()
            .map(WriteAcknowledgment::Members)
            .map_err(|_| format!("{digits} members is too many")),
        tag => Ok(WriteAcknowledgment::Tag(tag.to_string())),
    }
}

impl std::fmt::Display for WriteConcernArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.w {
            WriteAcknowledgment::Majority => write!(f, "w: majority")?,
            WriteAcknowledgment::Members(n) => write!(f, "w: {n}")?,
            WriteAcknowledgment::Tag(tag) => write!(f, "w: {tag}")?,
        }
        write!(f, ", j: {}, wtimeout: {:?}", self.journal, self.timeout)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log output format.
    #[arg(id = "log-format", long = "log-format", env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in RUST_LOG syntax, e.g. `info` or `info,gateway=debug`. rskafka logs
    /// every connection at info, hence its own default level.
    #[arg(
        id = "log-filter",
        long = "log-filter",
        env = "RUST_LOG",
        default_value = "info,rskafka=warn"
    )]
    pub log_filter: String,

    /// OpenTelemetry collector to export traces to over OTLP/HTTP (protobuf), as its base
    /// URL, e.g. `http://otel-collector:4318`; unset exports nothing. A request's W3C
    /// `traceparent` is carried into the Kafka record either way.
    #[arg(id = "otlp-endpoint", long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<String>,
}

fn parse_otlp_endpoint(text: &str) -> Result<String, String> {
    crate::traces::traces_url(text).map(|_| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_acknowledgment_accepts_majority_members_and_tags() {
        assert_eq!(
            parse_acknowledgment("majority"),
            Ok(WriteAcknowledgment::Majority)
        );
        assert_eq!(
            parse_acknowledgment("2"),
            Ok(WriteAcknowledgment::Members(2))
        );
        assert_eq!(
            parse_acknowledgment("eastCoast"),
            Ok(WriteAcknowledgment::Tag("eastCoast".into()))
        );
    }

    #[test]
    fn write_acknowledgment_refuses_unacknowledged_and_empty() {
        assert!(parse_acknowledgment("0")
            .unwrap_err()
            .contains("unacknowledged"));
        assert!(parse_acknowledgment("").is_err());
        assert!(parse_acknowledgment("99999999999").is_err());
    }
}
