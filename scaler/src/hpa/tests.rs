//! The decisions against KEDA's and the HPA's documented formulas, on lag histories.

use std::time::Duration;

use super::*;
use crate::scaled_object::ScaledObject;

/// A ScaledObject written for these tests, so they do not move when the shipped numbers do:
/// 1..12 replicas, 1000 records of lag per replica, up by 4 pods or 100% per 30 s (Max),
/// down by 1 pod per 60 s after a 300 s window.
const MANIFEST: &str = r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: { name: worker }
spec:
  scaleTargetRef: { name: worker }
  pollingInterval: 15
  minReplicaCount: 1
  maxReplicaCount: 12
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleUp:
          stabilizationWindowSeconds: 0
          selectPolicy: Max
          policies:
            - { type: Pods, value: 4, periodSeconds: 30 }
            - { type: Percent, value: 100, periodSeconds: 30 }
        scaleDown:
          stabilizationWindowSeconds: 300
          selectPolicy: Min
          policies:
            - { type: Pods, value: 1, periodSeconds: 60 }
  triggers:
    - type: kafka
      metadata:
        topic: purchases
        consumerGroup: purchase-workers
        lagThreshold: "1000"
        activationLagThreshold: "100"
        allowIdleConsumers: "false"
"#;

const SYNC: u64 = 15;

fn spec() -> ScaledObject {
    ScaledObject::from_yaml(MANIFEST).expect("the test manifest parses")
}

/// Replays `lags` (one per HPA sync, 15 s apart) from `start` replicas; the fleet takes each
/// decision at once. Returns the replica count after each sync.
fn replay(spec: ScaledObject, start: u32, lags: &[i64]) -> Vec<u32> {
    let mut hpa = Autoscaler::new(spec);
    let mut current = start;
    lags.iter()
        .enumerate()
        .map(|(i, lag)| {
            current = hpa
                .decide(Duration::from_secs(SYNC * i as u64), current, *lag, 12)
                .replicas;
            current
        })
        .collect()
}

#[test]
fn keda_reports_the_total_lag_capped_at_one_threshold_per_partition() {
    assert_eq!(keda_metric(5_500, 1_000, 12, false), 5_500);
    assert_eq!(keda_metric(50_000, 1_000, 12, false), 12_000);
    assert_eq!(keda_metric(50_000, 1_000, 12, true), 50_000);
    assert_eq!(keda_metric(-3, 1_000, 12, false), 0);
}

#[test]
fn the_hpa_asks_for_ceil_metric_over_target_outside_its_tolerance() {
    // (metric, target, current) -> recommended
    let table = [
        ((0, 1_000, 1), 0),
        ((1, 1_000, 1), 1),
        ((1_050, 1_000, 1), 1), // ratio 1.05: within 10%, keep
        ((1_150, 1_000, 1), 2), // ratio 1.15: ceil(1.15) = 2
        ((5_500, 1_000, 2), 6),
        ((3_800, 1_000, 4), 4), // ratio 0.95: keep
        ((3_500, 1_000, 4), 4), // ceil(3.5) = 4
        ((2_900, 1_000, 4), 3),
    ];
    for ((metric, target, current), want) in table {
        assert_eq!(
            recommended_replicas(metric, target, current),
            want,
            "metric {metric}, target {target}, current {current}"
        );
    }
}

#[test]
fn a_surge_scales_up_within_the_policies_and_back_down_after_the_window() {
    // 0-15 s quiet, a surge builds 30k of lag, drains by 120 s, then quiet for 8 minutes.
    let mut lags = vec![0, 0, 6_000, 30_000, 20_000, 8_000, 2_000, 0, 0];
    lags.extend([0; 32]);
    let replicas = replay(spec(), 1, &lags);
    // Up at 30 s: 6 wanted; the policies count from the replicas at the start of their 30 s
    // period (1) and the larger allows max(1+4, 2×1) = 5. At 45 s 12 are wanted (30k capped at
    // 12 partitions) but the period still starts at 1: 5. At 60 s the first step left the
    // period: max(5+4, 2×5) = 10. At 75 and 90 s fewer are wanted; the scale-down window holds.
    assert_eq!(&replicas[..7], &[1, 1, 5, 5, 10, 10, 10], "{replicas:?}");
    // Down: the highest recommendation of the last 300 s (12, made at 60 s) holds the count
    // until 360 s; then one pod per 60 s.
    let peak = replicas
        .iter()
        .position(|r| *r == 10)
        .expect("it reaches 10");
    let first_down = peak
        + replicas[peak..]
            .iter()
            .position(|r| *r < 10)
            .expect("it scales down");
    assert_eq!(first_down as u64 * SYNC, 360, "{replicas:?}");
    for pair in replicas[first_down..].windows(2) {
        assert!(pair[0] - pair[1] <= 1, "one pod at a time: {replicas:?}");
    }
    assert_eq!(replicas.last(), Some(&5), "{replicas:?}");
}

#[test]
fn a_count_within_the_tolerance_stays_and_the_minimum_holds_at_zero_lag() {
    let replicas = replay(spec(), 3, &[3_100, 2_950, 0, 0]);
    assert_eq!(
        replicas,
        vec![3, 3, 3, 3],
        "within 10% of 3 per 1000; zero lag waits for the window"
    );
    let mut quiet = ScaledObject::from_yaml(&MANIFEST.replace(
        "stabilizationWindowSeconds: 300",
        "stabilizationWindowSeconds: 0",
    ))
    .expect("parses");
    quiet.behavior.down.policies[0].value = 10;
    assert_eq!(
        replay(quiet, 3, &[0, 0]),
        vec![1, 1],
        "never below minReplicaCount 1"
    );
}

#[test]
fn from_zero_keda_activates_above_the_activation_threshold_and_returns_after_the_cooldown() {
    let mut spec =
        ScaledObject::from_yaml(&MANIFEST.replace("minReplicaCount: 1", "minReplicaCount: 0"))
            .expect("parses");
    spec.cooldown_period = Duration::from_secs(60);
    spec.behavior.down.stabilization_window = Duration::ZERO;
    let mut hpa = Autoscaler::new(spec);
    // (seconds, current replicas, lag) -> replicas, why
    let steps = [
        ((0, 0, 100), 0, "100 is not above activation 100"),
        ((15, 0, 101), 1, "active: KEDA takes it to 1"),
        ((30, 1, 0), 1, "inactive, cooldown running"),
        ((60, 1, 0), 1, "45 s idle < 60 s cooldown"),
        ((75, 1, 0), 0, "60 s idle: back to zero"),
    ];
    for ((seconds, current, lag), want, why) in steps {
        let got = hpa.decide(Duration::from_secs(seconds), current, lag, 12);
        assert_eq!(got.replicas, want, "at {seconds} s: {why} ({})", got.reason);
    }
}

#[test]
fn never_more_workers_than_partitions_or_max_replica_count() {
    let replicas = replay(spec(), 12, &[1_000_000, 1_000_000]);
    assert_eq!(replicas, vec![12, 12]);
    let mut small = spec();
    small.max_replicas = 3;
    assert_eq!(replay(small, 1, &[50_000, 50_000, 50_000]), vec![3, 3, 3]);
}

#[test]
fn the_shipped_scaled_object_parses_with_one_worker_per_partition_at_most() {
    let shipped = ScaledObject::from_yaml(include_str!("../../../keda/base/scaledobject.yaml"))
        .expect("keda/base/scaledobject.yaml parses");
    assert_eq!(
        shipped.max_replicas, 12,
        "one worker per partition of the topic"
    );
    assert!(!shipped.trigger.allow_idle_consumers);
    assert!(shipped.trigger.lag_threshold > 0);
    assert_eq!(shipped.trigger.consumer_group, "purchase-workers");
}
