use clap::Parser;
use scaler::{
    config::{Cli, Command},
    run,
    scaled_object::ScaledObject,
    state::{now_ms, FleetState},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let worker = args.worker_command();
            run::run(*args, worker, infra::shutdown::on_signal()).await
        }
        Command::Get(state) => {
            let fleet = FleetState::load(&state.state).map_err(|e| {
                anyhow::anyhow!(
                    "no fleet state at {} ({e}): start the stack with `make up`",
                    state.state.display()
                )
            })?;
            print!("{}", fleet.table(now_ms()));
            Ok(())
        }
        Command::Watch {
            state,
            until_settled,
        } => run::watch(&state.state, until_settled).await,
        Command::Threshold { scaled_object } => {
            println!(
                "{}",
                ScaledObject::from_file(&scaled_object)?
                    .trigger
                    .lag_threshold
            );
            Ok(())
        }
    }
}
