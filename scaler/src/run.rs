//! The scaler's loop: every sync period, read the group's lag as KEDA does, decide as the HPA
//! does, bring the fleet to that count, and write the state.

use std::time::Duration;

use anyhow::Context;
use kafka_group::GroupAdmin;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    config::RunArgs,
    fleet::{Fleet, WorkerCommand},
    hpa::{keda_metric, Autoscaler},
    scaled_object::ScaledObject,
    state::{now_ms, FleetState},
};

const CLIENT_ID: &str = "scalable-shop-scaler";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs until `shutdown`, then stops the workers. `worker` is how a worker starts (main builds
/// it from the flags; a test adds its own environment).
pub async fn run(
    args: RunArgs,
    worker: WorkerCommand,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let spec = ScaledObject::from_file(&args.scaled_object)?;
    let trigger = &spec.trigger;
    if trigger.topic != args.events.topic || trigger.consumer_group != args.group.group_id {
        anyhow::bail!(
            "{} scales group {:?} on topic {:?}, but the workers would join group {:?} on topic {:?}: \
             set KAFKA_GROUP_ID and KAFKA_TOPIC to the trigger's consumerGroup and topic",
            args.scaled_object.display(),
            trigger.consumer_group,
            trigger.topic,
            args.group.group_id,
            args.events.topic
        );
    }
    let security = infra::kafka_security::resolve(&args.events.security)
        .context("invalid Kafka security settings")?;
    let admin = GroupAdmin::new(args.events.brokers.clone(), CLIENT_ID, REQUEST_TIMEOUT)
        .with_security(security);
    let mut fleet = Fleet::new(worker);
    // The Deployment starts at the ScaledObject's minimum (KEDA sets it when it takes over).
    let mut replicas = spec.min_replicas;
    fleet.scale_to(replicas).await?;
    let started = now_ms();
    let mut state = FleetState {
        name: format!("keda-hpa-{}", spec.name),
        reference: format!("Deployment/{}", spec.target),
        min_replicas: spec.min_replicas,
        max_replicas: spec.max_replicas,
        lag_threshold: trigger.lag_threshold,
        lag: 0,
        metric: 0,
        replicas,
        peak_replicas: replicas,
        reason: "started at minReplicaCount".into(),
        started_ms: started,
        updated_ms: started,
        events: Vec::new(),
    };
    save(&state, &args);
    tracing::info!(
        scaled_object = %args.scaled_object.display(),
        replicas,
        sync_period = ?args.sync_period,
        "following the ScaledObject"
    );
    let mut hpa = Autoscaler::new(spec.clone());
    let clock = Instant::now();
    let mut ticks = tokio::time::interval(args.sync_period);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let lags = match admin
            .lag(
                &spec.trigger.consumer_group,
                &spec.trigger.topic,
                args.group.offset_reset,
            )
            .await
        {
            Ok(lags) => lags,
            Err(e) => {
                // KEDA keeps the count while the metric cannot be read (its `fallback` takes
                // over only after failureThreshold failures, which this does not follow).
                tracing::warn!(error = %e, "cannot read the lag; keeping {replicas} workers");
                fleet.scale_to(replicas).await?;
                continue;
            }
        };
        let total: i64 = lags.iter().map(|l| l.lag).sum();
        let decision = hpa.decide(clock.elapsed(), replicas, total, lags.len());
        state.updated_ms = now_ms();
        state.lag = total;
        state.metric = keda_metric(
            total,
            spec.trigger.lag_threshold,
            lags.len(),
            spec.trigger.allow_idle_consumers,
        );
        if decision.replicas != replicas {
            tracing::info!(
                lag = total,
                recommended = decision.recommended,
                from = replicas,
                to = decision.replicas,
                reason = decision.reason,
                "scaling"
            );
        }
        state.record(replicas, decision.replicas, decision.reason);
        replicas = decision.replicas;
        // Also replaces a worker that exited on its own, as a ReplicaSet replaces a pod.
        fleet.scale_to(replicas).await?;
        save(&state, &args);
    }
    fleet.stop_all().await;
    state.updated_ms = now_ms();
    state.record(replicas, 0, "the scaler stopped");
    save(&state, &args);
    Ok(())
}

fn save(state: &FleetState, args: &RunArgs) {
    if let Err(e) = state.save(&args.state.state) {
        tracing::warn!(path = %args.state.state.display(), error = %e, "cannot write the fleet state");
    }
}

/// Prints the lag and the replicas whenever the scaler writes a new state, until the fleet
/// has gone above its minimum and come back to it. Errors when that does not happen in time.
pub async fn watch(path: &std::path::Path, until: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + until;
    let mut last_update = 0;
    let mut rose = false;
    let mut first: Option<u32> = None;
    loop {
        if let Ok(state) = FleetState::load(path) {
            let start = *first.get_or_insert(state.replicas);
            if state.updated_ms != last_update {
                last_update = state.updated_ms;
                println!(
                    "[scaler] lag {:>7} (target {}/worker)  replicas {:>2}  {}",
                    state.lag, state.lag_threshold, state.replicas, state.reason
                );
            }
            rose |= state.replicas > state.min_replicas;
            if rose && state.replicas <= state.min_replicas {
                println!(
                    "[scaler] the fleet went from {start} to {} workers and back to {} (lag {})",
                    state.peak_replicas, state.replicas, state.lag
                );
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            let state = FleetState::load(path).with_context(|| {
                format!(
                    "no fleet state at {} (is the stack up? `make up`)",
                    path.display()
                )
            })?;
            if rose {
                anyhow::bail!(
                    "the fleet reached {} workers but is not back at {} after {}",
                    state.peak_replicas,
                    state.min_replicas,
                    humantime::format_duration(until)
                );
            }
            anyhow::bail!(
                "no scale-up within {}: the lag stayed below what asks for a second worker \
                 (lagThreshold {} per worker; last lag {})",
                humantime::format_duration(until),
                state.lag_threshold,
                state.lag
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
