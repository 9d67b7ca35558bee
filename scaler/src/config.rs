//! The scaler's flags: where the ScaledObject, the worker binary and the state live, and the
//! same Kafka flags and env vars the worker takes (so one environment serves both).

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use infra::config::{parse_duration, ConsumerGroupArgs, EventTopicArgs};

#[derive(Debug, Parser)]
#[command(
    name = "scaler",
    about = "Runs the worker fleet on this machine the way KEDA and the HPA would on Kubernetes, from the same ScaledObject"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Follow the lag and start and stop workers as KEDA and the HPA would.
    Run(Box<RunArgs>),
    /// Print the fleet the way `kubectl get hpa` prints KEDA's HPA.
    Get(StateArgs),
    /// Print the lag and the replicas as they change, until the fleet is back at its minimum
    /// after a scale-up (or the time is up).
    Watch {
        #[command(flatten)]
        state: StateArgs,
        /// Give up (exit 1) when the fleet has not scaled up and back within this time.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        until_settled: Duration,
    },
    /// Print the ScaledObject's lagThreshold (for the load tool's lag lines).
    Threshold {
        #[arg(
            long,
            env = "SCALER_SCALED_OBJECT",
            default_value = "keda/base/scaledobject.yaml"
        )]
        scaled_object: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// Where the scaler writes what it decided.
    #[arg(long, env = "SCALER_STATE", default_value = ".local/stack/hpa.json")]
    pub state: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The ScaledObject the cluster uses: a change there changes both.
    #[arg(
        long,
        env = "SCALER_SCALED_OBJECT",
        default_value = "keda/base/scaledobject.yaml"
    )]
    pub scaled_object: PathBuf,

    #[command(flatten)]
    pub state: StateArgs,

    /// The worker binary to run.
    #[arg(long, env = "SCALER_WORKER", default_value = "target/release/worker")]
    pub worker: PathBuf,

    /// Where each worker's log goes (worker-N.log).
    #[arg(long, env = "SCALER_LOG_DIR", default_value = ".local/stack/logs")]
    pub log_dir: PathBuf,

    /// Worker N serves /metrics on 127.0.0.1:(this + N - 1); 0 lets each take a free port.
    #[arg(long, env = "SCALER_METRICS_PORT_BASE", default_value_t = 9101)]
    pub metrics_port_base: u16,

    /// How often the HPA decides (kube-controller-manager's
    /// --horizontal-pod-autoscaler-sync-period, 15 s by default).
    #[arg(long, env = "SCALER_SYNC_PERIOD", default_value = "15s", value_parser = parse_duration)]
    pub sync_period: Duration,

    /// How long a stopping worker may take before it is killed (a pod's
    /// terminationGracePeriodSeconds).
    #[arg(long, env = "SCALER_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,

    #[command(flatten)]
    pub events: EventTopicArgs,

    #[command(flatten)]
    pub group: ConsumerGroupArgs,
}

impl RunArgs {
    /// How a worker starts, from these flags (with the scaler's environment).
    pub fn worker_command(&self) -> crate::fleet::WorkerCommand {
        crate::fleet::WorkerCommand {
            program: self.worker.clone(),
            env: Vec::new(),
            metrics_port_base: self.metrics_port_base,
            log_dir: self.log_dir.clone(),
            grace: self.grace,
        }
    }
}
