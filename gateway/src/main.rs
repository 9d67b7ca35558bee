use clap::Parser;
use gateway::{
    api,
    config::{Cli, Command},
    startup::Application,
};

/// See the dependency note in Cargo.toml: measured faster than glibc's malloc under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        println!("{}", api::spec_json());
        return Ok(());
    }
    let _traces =
        infra::telemetry::init(&cli.config.telemetry, "gateway").map_err(anyhow::Error::msg)?;
    let shutdown = infra::shutdown::on_signal();
    Application::build(cli.config).await?.run(shutdown).await
}
