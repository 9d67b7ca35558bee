//! The load tool's flags (each with an env var).

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use infra::config::{parse_duration, ConsumerGroupArgs, EventTopicArgs};

use crate::schedule::Schedule;

#[derive(Debug, Parser)]
#[command(
    name = "load",
    version,
    about = "Drive purchases at the gateway at a target rate and watch the consumer lag KEDA scales on"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the consumer group's lag and the replica count KEDA would ask for.
    Lag {
        #[command(flatten)]
        lag: LagArgs,
        /// Keep printing every --interval until Ctrl-C.
        #[arg(long)]
        follow: bool,
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        interval: Duration,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Gateway base URL.
    #[arg(long, env = "LOAD_TARGET", default_value = "http://127.0.0.1:8080")]
    pub target: String,

    /// Constant rate in purchases per second (with --duration).
    #[arg(long, env = "LOAD_RATE", conflicts_with = "stages")]
    pub rate: Option<f64>,

    /// How long to run at --rate.
    #[arg(long, env = "LOAD_DURATION", default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Ramp stages DURATION:RATE,... (linear from the previous rate), e.g. 30s:100,60s:2000,30s:0.
    #[arg(long, env = "LOAD_STAGES")]
    pub stages: Option<String>,

    /// Most requests in flight at once; beyond it requests wait (and their wait counts in
    /// the latency, measured from when they were due).
    #[arg(long, env = "LOAD_MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,

    /// Distinct users buying.
    #[arg(long, env = "LOAD_USERS", default_value_t = 10_000)]
    pub users: u64,

    /// Skew of user activity (Zipf exponent; 0 is uniform).
    #[arg(long, env = "LOAD_ZIPF_EXPONENT", default_value_t = 1.1)]
    pub zipf_exponent: f64,

    /// Per-request timeout.
    #[arg(long, env = "LOAD_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Send an `Idempotency-Key` (a fresh UUID per purchase) with every purchase, so that
    /// retries cannot buy twice.
    #[arg(long, env = "LOAD_IDEMPOTENCY_KEYS")]
    pub idempotency_keys: bool,

    /// Retry a purchase answered 503 (or not answered at all) up to this many times, after
    /// the `Retry-After` the gateway gave (at most 5 s). Needs --idempotency-keys: a retry
    /// without a key may buy twice when the first outcome was unknown.
    #[arg(
        long,
        env = "LOAD_RETRIES",
        default_value_t = 0,
        requires = "idempotency_keys"
    )]
    pub retries: u32,

    /// Bearer token (a JWT) sent with every purchase, for a gateway with authentication on.
    /// The load buys for many users, so the token needs the `purchases:write:any` scope.
    #[arg(
        long,
        env = "LOAD_BEARER_TOKEN",
        hide_env_values = true,
        conflicts_with = "bearer_token_file"
    )]
    pub bearer_token: Option<String>,

    /// File holding the bearer token (a mounted Secret); surrounding whitespace is ignored.
    #[arg(long, env = "LOAD_BEARER_TOKEN_FILE")]
    pub bearer_token_file: Option<std::path::PathBuf>,

    /// Print the final report as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Also show the consumer group's lag and KEDA's replica suggestion while running.
    #[arg(long)]
    pub watch_lag: bool,

    #[command(flatten)]
    pub lag: LagArgs,
}

/// What the lag watch reads: the same flags and env vars the worker takes, so one ConfigMap
/// serves both.
#[derive(Debug, Clone, Args)]
pub struct LagArgs {
    #[command(flatten)]
    pub events: EventTopicArgs,

    #[command(flatten)]
    pub group: ConsumerGroupArgs,

    /// The ScaledObject's lagThreshold: target lag per worker.
    #[arg(long, env = "LOAD_LAG_THRESHOLD", default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..))]
    pub lag_threshold: i64,
}

impl RunArgs {
    /// The token from --bearer-token or --bearer-token-file, if any.
    pub fn bearer_token(&self) -> Result<Option<String>, String> {
        let token = match (&self.bearer_token, &self.bearer_token_file) {
            (Some(token), _) => token.trim().to_string(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --bearer-token-file {}: {e}", path.display()))?
                .trim()
                .to_string(),
            (None, None) => return Ok(None),
        };
        if token.is_empty() {
            return Err("the bearer token is empty: pass the JWT the gateway should verify".into());
        }
        Ok(Some(token))
    }

    pub fn schedule(&self) -> Result<Schedule, String> {
        match (&self.stages, self.rate) {
            (Some(stages), _) => Schedule::parse_stages(stages),
            (None, Some(rate)) if rate.is_finite() && rate > 0.0 => {
                Ok(Schedule::constant(rate, self.duration))
            }
            (None, Some(_)) => {
                Err("--rate must be a positive number of purchases per second".into())
            }
            (None, None) => Err(
                "give --rate (with --duration) or --stages, e.g. --rate 200 --duration 30s".into(),
            ),
        }
    }
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
    fn a_run_needs_a_rate_or_stages() {
        let cli = Cli::try_parse_from(["load"]).unwrap();
        assert!(cli.run.schedule().unwrap_err().contains("--rate"));
        let cli = Cli::try_parse_from(["load", "--rate", "0"]).unwrap();
        assert!(cli.run.schedule().is_err());
        assert!(Cli::try_parse_from(["load", "--rate", "5", "--stages", "1s:5"]).is_err());
    }
}
