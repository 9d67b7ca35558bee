use clap::Parser;
use worker::{config::WorkerConfig, startup::Worker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig::parse();
    let _traces =
        infra::telemetry::init(&config.telemetry, "worker").map_err(anyhow::Error::msg)?;
    let shutdown = infra::shutdown::on_signal();
    Worker::build(config).await?.run(shutdown).await
}
