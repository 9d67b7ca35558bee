//! The gateway's one typed configuration: every setting is a flag with an env var.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use infra::config::{parse_duration, KafkaArgs, MongoArgs, TelemetryArgs};

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    args_override_self = true,
    about = "scalable-shop HTTP gateway: purchases into Kafka, history from MongoDB"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: GatewayConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (the default).
    Serve,
    /// Print the OpenAPI 3 spec as JSON and exit; needs no broker or database.
    Openapi,
}

#[derive(Debug, Clone, Args)]
pub struct GatewayConfig {
    /// Address the HTTP server listens on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub mongo: MongoArgs,

    #[command(flatten)]
    pub produce: ProduceArgs,

    #[command(flatten)]
    pub client_timeouts: ClientTimeoutArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// Largest accepted request body; larger bodies get 413.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Longest a purchase waits for the broker's acknowledgement before the client gets 503.
    #[arg(id = "produce-timeout", long = "produce-timeout", env = "GATEWAY_PRODUCE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Purchases that may wait per broker while a produce request is in flight; beyond it
    /// clients get 503 at once instead of queueing without bound.
    #[arg(
        id = "produce-queue-capacity",
        long = "produce-queue-capacity",
        env = "GATEWAY_PRODUCE_QUEUE_CAPACITY",
        default_value_t = 10_000
    )]
    pub queue_capacity: usize,

    /// Largest batch (sum of record sizes) sent in one produce call; below the broker's
    /// message size limit.
    #[arg(id = "produce-batch-max-bytes", long = "produce-batch-max-bytes", env = "GATEWAY_PRODUCE_BATCH_MAX_BYTES", default_value_t = 512 * 1024)]
    pub batch_max_bytes: usize,

    /// How long an `Idempotency-Key` is remembered: a retry within this time gets the first
    /// attempt's eventId and cannot buy twice.
    #[arg(id = "idempotency-key-retention", long = "idempotency-key-retention", env = "GATEWAY_IDEMPOTENCY_KEY_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_key_retention: Duration,

    /// Seconds sent in `Retry-After` with a 503.
    #[arg(
        id = "retry-after-seconds",
        long = "retry-after-seconds",
        env = "GATEWAY_RETRY_AFTER_SECONDS",
        default_value_t = 2
    )]
    pub retry_after_seconds: u32,
}

impl GatewayConfig {
    /// The Kafka settings the gateway connects with. Its client's retries must end before
    /// the produce timeout: a record retried after its caller was answered would be stored
    /// behind the caller's back. So the retry deadline is at most half the produce timeout.
    pub fn kafka_for_producing(&self) -> KafkaArgs {
        let mut kafka = self.kafka.clone();
        kafka.retry_deadline = kafka.retry_deadline.min(self.produce.timeout / 2);
        kafka
    }
}

/// How long a client may take to send its request, so that slow or silent clients cannot
/// hold connections (see `server.rs` for when each deadline runs).
#[derive(Debug, Clone, Args)]
pub struct ClientTimeoutArgs {
    /// Longest a client may take to send a request's headers, from its first byte (or from
    /// connecting); a connection that misses it is closed.
    #[arg(long, env = "GATEWAY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Longest a client may take to send a request's body once its headers arrived; a late
    /// body is answered 408 and nothing of it is accepted.
    #[arg(long, env = "GATEWAY_BODY_READ_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// Longest a keep-alive connection may wait for its next request. Longer than the 60 s
    /// upstream keep-alive of common proxies (ingress-nginx, AWS ALB), so the proxy closes
    /// first and never sends a request into a connection we are closing.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
}

/// Who may call the API: bearer JWTs verified against a JWKS (see README "Authentication").
/// On unless `--auth-disabled`; with neither that nor a JWKS source the gateway refuses to
/// start (`auth::AuthSettings::from_args`), so a forgotten setting never opens the API.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Accept every request without a token, as any user (local development only; logged
    /// loudly at start-up).
    #[arg(id = "auth-disabled", long = "auth-disabled", env = "GATEWAY_AUTH_DISABLED", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub disabled: bool,

    /// JWKS file with the keys that sign tokens (re-read every --auth-jwks-refresh, so a
    /// mounted Secret or ConfigMap can rotate keys).
    #[arg(
        id = "auth-jwks-file",
        long = "auth-jwks-file",
        env = "GATEWAY_AUTH_JWKS_FILE",
        conflicts_with = "auth-jwks-url"
    )]
    pub jwks_file: Option<PathBuf>,

    /// http(s) URL of the identity provider's JWKS (its `jwks_uri`).
    #[arg(
        id = "auth-jwks-url",
        long = "auth-jwks-url",
        env = "GATEWAY_AUTH_JWKS_URL"
    )]
    pub jwks_url: Option<String>,

    /// How often the JWKS is fetched again in the background (and at most every 30 s more
    /// when a token names an unknown `kid`).
    #[arg(id = "auth-jwks-refresh", long = "auth-jwks-refresh", env = "GATEWAY_AUTH_JWKS_REFRESH", default_value = "5m", value_parser = parse_duration)]
    pub jwks_refresh: Duration,

    /// The `iss` every token must carry (exactly).
    #[arg(id = "auth-issuer", long = "auth-issuer", env = "GATEWAY_AUTH_ISSUER")]
    pub issuer: Option<String>,

    /// A value the token's `aud` must contain: this API's name at the identity provider.
    #[arg(
        id = "auth-audience",
        long = "auth-audience",
        env = "GATEWAY_AUTH_AUDIENCE"
    )]
    pub audience: Option<String>,

    /// Clock skew allowed when checking `exp` and `nbf`.
    #[arg(id = "auth-leeway", long = "auth-leeway", env = "GATEWAY_AUTH_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub leeway: Duration,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_flag_is_unique_and_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_need_no_flags() {
        let cli = Cli::try_parse_from(["gateway"]).unwrap();
        assert_eq!(cli.config.kafka.events.topic, "purchases");
        assert_eq!(cli.config.kafka.topic_partitions, 12);
        assert_eq!(
            cli.config.produce.timeout,
            std::time::Duration::from_secs(5)
        );
        let timeouts = cli.config.client_timeouts;
        assert_eq!(timeouts.header_read_timeout, Duration::from_secs(10));
        assert_eq!(timeouts.body_read_timeout, Duration::from_secs(15));
        assert_eq!(timeouts.idle_timeout, Duration::from_secs(75));
        let auth = cli.config.auth;
        assert!(!auth.disabled, "authentication is on unless switched off");
        assert_eq!(auth.jwks_refresh, Duration::from_secs(300));
        assert_eq!(auth.leeway, Duration::from_secs(30));
    }

    #[test]
    fn auth_disabled_is_a_flag_or_a_boolean() {
        let disabled = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("gateway").chain(args.iter().copied()))
                .map(|cli| cli.config.auth.disabled)
                .map_err(|e| e.to_string())
        };
        assert_eq!(disabled(&["--auth-disabled"]), Ok(true));
        assert_eq!(disabled(&["--auth-disabled=true"]), Ok(true));
        assert_eq!(
            disabled(&["--auth-disabled", "--auth-disabled=false"]),
            Ok(false)
        );
        assert!(disabled(&["--auth-disabled=maybe"]).is_err());
    }

    #[test]
    fn one_jwks_source_at_a_time() {
        let both = Cli::try_parse_from([
            "gateway",
            "--auth-jwks-file=/keys.json",
            "--auth-jwks-url=https://id.example/jwks",
        ]);
        assert!(both.is_err());
    }

    #[test]
    fn kafka_retries_end_before_the_produce_timeout() {
        let cli = Cli::try_parse_from([
            "gateway",
            "--produce-timeout=5s",
            "--kafka-retry-deadline=10s",
        ])
        .unwrap();
        assert_eq!(
            cli.config.kafka_for_producing().retry_deadline,
            std::time::Duration::from_millis(2500)
        );
        let cli = Cli::try_parse_from([
            "gateway",
            "--produce-timeout=5s",
            "--kafka-retry-deadline=1s",
        ])
        .unwrap();
        assert_eq!(
            cli.config.kafka_for_producing().retry_deadline,
            std::time::Duration::from_secs(1)
        );
    }
}
