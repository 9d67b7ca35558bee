use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use load::{
    config::{Cli, Command},
    lag::LagReader,
    runner::{run, Run},
    workload::Workload,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Lag {
        lag,
        follow,
        interval,
        json,
    }) = cli.command
    {
        let brokers = lag.events.brokers.join(",");
        let reader = LagReader::new(lag).context("invalid Kafka security settings")?;
        loop {
            let snapshot = reader.read().await.map_err(|e| {
                let hint = if e.mismatch().is_some() {
                    "" // says which flags to change itself
                } else if e.is_security() {
                    " (check the --kafka-sasl-* and --kafka-tls-* settings)"
                } else {
                    " (set --kafka-brokers or KAFKA_BROKERS)"
                };
                let e = infra::kafka_security::explain(&e);
                anyhow::anyhow!("cannot read the group's lag from Kafka at {brokers}: {e}{hint}")
            })?;
            if json {
                println!("{}", serde_json::to_string(&snapshot)?);
            } else {
                println!("{}\n", snapshot.table());
            }
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(interval).await;
        }
    }

    let args = cli.run;
    let schedule = args.schedule().map_err(anyhow::Error::msg)?;
    let workload = Workload::new(args.users, args.zipf_exponent).map_err(anyhow::Error::msg)?;
    let report = run(Run {
        url: args.target.clone(),
        schedule,
        max_in_flight: args.max_in_flight,
        timeout: args.timeout,
        idempotency_keys: args.idempotency_keys,
        retries: args.retries,
        workload,
        lag: args
            .watch_lag
            .then(|| LagReader::new(args.lag.clone()))
            .transpose()
            .context("invalid Kafka security settings")?,
        progress: std::io::stderr().is_terminal() && !args.json,
        bearer_token: args.bearer_token().map_err(anyhow::Error::msg)?,
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}
