//! The local scaler (`scaler/`, what `make up` runs) following a ScaledObject: a surge's
//! backlog takes the fleet from one worker to several and back to one, and every accepted
//! purchase is stored exactly once across the scale events.

use std::time::Duration;

use clap::Parser;
use scaler::{
    config::{Cli, Command},
    state::FleetState,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// A ScaledObject shaped like the shipped one with test-sized numbers: 200 records of lag per
/// worker, up by 4 or ×2 per 2 s, down by half per 2 s after a 4 s window.
fn manifest(pipeline: &Pipeline) -> String {
    format!(
        r#"apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {{ name: worker }}
spec:
  scaleTargetRef: {{ name: worker }}
  pollingInterval: 1
  minReplicaCount: 1
  maxReplicaCount: {PARTITIONS}
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleUp:
          stabilizationWindowSeconds: 0
          selectPolicy: Max
          policies:
            - {{ type: Pods, value: 4, periodSeconds: 2 }}
            - {{ type: Percent, value: 100, periodSeconds: 2 }}
        scaleDown:
          stabilizationWindowSeconds: 4
          selectPolicy: Max
          policies:
            - {{ type: Percent, value: 50, periodSeconds: 2 }}
  triggers:
    - type: kafka
      metadata:
        topic: {topic}
        consumerGroup: {group}
        lagThreshold: "200"
        activationLagThreshold: "10"
        offsetResetPolicy: earliest
        allowIdleConsumers: "false"
"#,
        topic = pipeline.topic,
        group = pipeline.group,
    )
}

/// Polls the scaler's state until `done` holds for it.
async fn wait_state(
    path: &std::path::Path,
    timeout: Duration,
    what: &str,
    done: impl Fn(&FleetState) -> bool,
) -> FleetState {
    let started = Instant::now();
    loop {
        if let Ok(state) = FleetState::load(path) {
            if done(&state) {
                return state;
            }
            assert!(
                started.elapsed() < timeout,
                "{what} not within {timeout:?}; the scaler's last state: {state:?}"
            );
        }
        assert!(
            started.elapsed() < timeout,
            "no scaler state at {} within {timeout:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_surge_scales_the_local_fleet_up_and_back_to_one_storing_every_purchase_once() {
    let _heavy = one_heavy_test_at_a_time().await;
    let pipeline = Pipeline::start().await;
    let dir = tempfile::tempdir().expect("a directory");
    let manifest_path = dir.path().join("scaledobject.yaml");
    std::fs::write(&manifest_path, manifest(&pipeline)).expect("manifest written");
    let state_path = dir.path().join("hpa.json");
    let Command::Run(args) = Cli::try_parse_from([
        "scaler".to_string(),
        "run".into(),
        format!("--scaled-object={}", manifest_path.display()),
        format!("--state={}", state_path.display()),
        format!("--worker={}", env!("CARGO_BIN_EXE_worker")),
        format!("--log-dir={}", dir.path().display()),
        "--metrics-port-base=0".into(),
        "--sync-period=1s".into(),
        "--grace=20s".into(),
        format!("--kafka-brokers={}", pipeline.kafka),
        format!("--kafka-topic={}", pipeline.topic),
        format!("--kafka-group-id={}", pipeline.group),
    ])
    .expect("scaler flags")
    .command
    else {
        unreachable!("parsed as run")
    };
    // The workers get the pipeline's own settings, as the stack's scaler passes its own.
    let mut worker = args.worker_command();
    worker.env = pipeline
        .worker_command(0)
        .get_envs()
        .filter(|(name, _)| *name != "WORKER_LISTEN")
        .filter_map(|(name, value)| {
            Some((name.to_str()?.to_string(), value?.to_str()?.to_string()))
        })
        .collect();
    // The surge lands before the fleet can drain it: one worker would keep up with 6,000
    // purchases on a fast broker before a 1 s sync saw any lag. The scaler then starts at
    // minReplicaCount (1 worker) and its first decision sees the backlog.
    let accepted = pipeline.post_purchases(6_000, 64).await;
    let shutdown = CancellationToken::new();
    let scaler = tokio::spawn(scaler::run::run(*args, worker, shutdown.clone()));
    let peak = wait_state(&state_path, Duration::from_secs(60), "a scale-up", |s| {
        s.peak_replicas > 1
    })
    .await;
    let back = wait_state(
        &state_path,
        Duration::from_secs(120),
        "the fleet back at one worker",
        |s| s.replicas == 1 && s.lag == 0,
    )
    .await;
    let stored = pipeline
        .wait_stored(accepted.len(), Duration::from_secs(60))
        .await;
    assert_exactly_once(&accepted, &stored);
    shutdown.cancel();
    scaler
        .await
        .expect("the scaler task ends")
        .expect("the scaler stops its workers cleanly");
    let changes: Vec<(u32, u32)> = back.events.iter().map(|e| (e.from, e.to)).collect();
    assert!(
        back.peak_replicas > 1,
        "peak {}: {changes:?}",
        back.peak_replicas
    );
    assert!(
        changes.iter().any(|(from, to)| to > from) && changes.iter().any(|(from, to)| to < from),
        "up and down: {changes:?} (first seen at peak {})",
        peak.peak_replicas
    );
    pipeline.stop();
}
