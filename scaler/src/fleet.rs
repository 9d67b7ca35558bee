//! The worker processes: started and stopped to the count the decision asks for, as a
//! Deployment's ReplicaSet would run pods. A scale-down stops the newest workers with SIGTERM
//! (a pod's graceful stop: the worker leaves the group and hands its partitions over) and
//! kills one that has not exited after the grace period. A worker that exits on its own is
//! replaced at the next sync, as a crashed pod is.

use std::{fs::OpenOptions, path::PathBuf, process::Stdio, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::process::{Child, Command};

/// How a worker is started: the binary, with the scaler's own environment (the worker's
/// settings: KAFKA_*, MONGO_*) and `env` on top, each with its own metrics port
/// (`WORKER_LISTEN`) and log file.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub env: Vec<(String, String)>,
    /// Worker n (from 1) serves /metrics on 127.0.0.1:(base + n - 1); 0: any free port.
    pub metrics_port_base: u16,
    pub log_dir: PathBuf,
    /// Kubernetes' default `terminationGracePeriodSeconds`.
    pub grace: Duration,
}

struct Worker {
    /// From 1; the lowest free one is reused, so ports and logs stay few.
    number: u16,
    child: Child,
}

pub struct Fleet {
    command: WorkerCommand,
    workers: Vec<Worker>,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot open the worker log {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the worker {program}: {source} (build it with `cargo build --release -p worker`)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

impl Fleet {
    pub fn new(command: WorkerCommand) -> Self {
        Self {
            command,
            workers: Vec::new(),
        }
    }

    /// Workers running now (those that exited on their own are forgotten here).
    pub fn running(&mut self) -> u32 {
        self.workers.retain_mut(|w| match w.child.try_wait() {
            Ok(Some(status)) => {
                tracing::warn!(worker = w.number, %status, "worker exited; it will be replaced");
                false
            }
            _ => true,
        });
        self.workers.len() as u32
    }

    /// The process ids of the running workers, oldest first.
    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().filter_map(|w| w.child.id()).collect()
    }

    /// Starts or stops workers until `replicas` run.
    pub async fn scale_to(&mut self, replicas: u32) -> Result<(), FleetError> {
        while self.running() < replicas {
            self.start()?;
        }
        let excess = self.workers.len().saturating_sub(replicas as usize);
        if excess > 0 {
            // The newest go first; they stop side by side, as pods of a scale-down do.
            let leaving = self.workers.split_off(self.workers.len() - excess);
            stop(leaving, self.command.grace).await;
        }
        Ok(())
    }

    fn start(&mut self) -> Result<(), FleetError> {
        let number = (1..)
            .find(|n| self.workers.iter().all(|w| w.number != *n))
            .unwrap_or(1);
        let path = self.command.log_dir.join(format!("worker-{number}.log"));
        let open_log = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| FleetError::Log {
                    path: path.display().to_string(),
                    source,
                })
        };
        let (stdout, stderr) = (open_log()?, open_log()?);
        let port = match self.command.metrics_port_base {
            0 => 0,
            base => base.saturating_add(number - 1),
        };
        let child = Command::new(&self.command.program)
            .envs(self.command.env.iter().map(|(k, v)| (k, v)))
            .env("WORKER_LISTEN", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // A scaler that dies without stopping its workers must not leave them running.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| FleetError::Spawn {
                program: self.command.program.display().to_string(),
                source,
            })?;
        tracing::info!(worker = number, pid = child.id(), port, "worker started");
        self.workers.push(Worker { number, child });
        Ok(())
    }

    /// Stops every worker (the scaler is shutting down).
    pub async fn stop_all(&mut self) {
        let all = std::mem::take(&mut self.workers);
        stop(all, self.command.grace).await;
    }
}

/// SIGTERM to all at once, then SIGKILL to any still running after `grace`.
async fn stop(mut workers: Vec<Worker>, grace: Duration) {
    for worker in &workers {
        if let Some(pid) = worker.child.id().and_then(|id| i32::try_from(id).ok()) {
            // Already gone is fine: there is nothing left to stop.
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    for worker in &mut workers {
        match tokio::time::timeout_at(deadline, worker.child.wait()).await {
            Ok(Ok(status)) => tracing::info!(worker = worker.number, %status, "worker stopped"),
            _ => {
                tracing::warn!(
                    worker = worker.number,
                    ?grace,
                    "worker did not stop in time; killed"
                );
                let _ = worker.child.kill().await;
            }
        }
    }
}
