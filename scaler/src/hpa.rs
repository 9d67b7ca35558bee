//! The replica decision KEDA and the HorizontalPodAutoscaler make for a ScaledObject with a
//! Kafka trigger, as pure functions of the lag and the history, so it can be checked against
//! their documented formulas without a cluster.
//!
//! - KEDA's Kafka scaler reports the group's total lag as an external metric whose target is
//!   an `AverageValue` of `lagThreshold` per replica. With `allowIdleConsumers: false` it caps
//!   the lag it reports at `lagThreshold × partitions`, so the HPA never asks for more workers
//!   than partitions. The scaler is *active* while the lag exceeds `activationLagThreshold`;
//!   activity only decides between 0 and 1 replicas (with `minReplicaCount: 0`), after
//!   `cooldownPeriod` of inactivity.
//! - The HPA (every sync period, 15 s by default): desired = ceil(metric / target), unless
//!   metric / (target × current) is within the 10% tolerance of 1; then the recommendation is
//!   stabilized (scale up to the lowest recommendation of the scale-up window, down to the
//!   highest of the scale-down window), clamped to min/max, and limited by the behavior's
//!   policies (Pods or Percent per period, counted from the replicas at the period's start;
//!   `selectPolicy` Max, Min or Disabled).
//!
//! Kubernetes' own code is `pkg/controller/podautoscaler/horizontal.go`
//! (`stabilizeRecommendationWithBehaviors`, `convertDesiredReplicasWithBehaviorRate`) and
//! `replica_calculator.go` (`GetExternalMetricReplicas`); KEDA's is `pkg/scalers/kafka_scaler.go`.

use std::time::Duration;

use crate::scaled_object::{PolicyKind, ScaledObject, ScalingRules, SelectPolicy};

/// The HPA controller's default tolerance (`--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;

/// The lag KEDA's Kafka scaler reports to the HPA: the total, capped at one `lagThreshold`
/// per partition unless idle consumers are allowed.
pub fn keda_metric(total_lag: i64, lag_threshold: i64, partitions: usize, allow_idle: bool) -> i64 {
    let total_lag = total_lag.max(0);
    let partitions = partitions as i64;
    if !allow_idle && lag_threshold > 0 && total_lag / lag_threshold > partitions {
        partitions * lag_threshold
    } else {
        total_lag
    }
}

/// The HPA's raw recommendation for an external metric with an `AverageValue` target.
pub fn recommended_replicas(metric: i64, target: i64, current: u32) -> u32 {
    let target = target.max(1) as f64;
    let metric = metric.max(0) as f64;
    if current > 0 {
        let usage_ratio = metric / (target * f64::from(current));
        if (usage_ratio - 1.0).abs() <= TOLERANCE {
            return current;
        }
    }
    (metric / target).ceil() as u32
}

/// One change of the replica count, kept for the policies' periods.
#[derive(Debug, Clone, Copy)]
struct ScaleEvent {
    at: Duration,
    change: u32,
}

/// Why the replica count is what it is, as `kubectl describe hpa` words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub replicas: u32,
    /// What the metric alone asks for (before stabilization, bounds and policies).
    pub recommended: u32,
    pub reason: &'static str,
}

/// The state the HPA keeps between syncs: past recommendations (for the stabilization
/// windows) and past changes (for the policies' periods), plus KEDA's last activity.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    spec: ScaledObject,
    recommendations: Vec<(Duration, u32)>,
    scale_ups: Vec<ScaleEvent>,
    scale_downs: Vec<ScaleEvent>,
    last_active: Option<Duration>,
    started: bool,
}

impl Autoscaler {
    pub fn new(spec: ScaledObject) -> Self {
        Self {
            spec,
            recommendations: Vec::new(),
            scale_ups: Vec::new(),
            scale_downs: Vec::new(),
            last_active: None,
            started: false,
        }
    }

    pub fn spec(&self) -> &ScaledObject {
        &self.spec
    }

    /// The replica count for `current` replicas at time `now` (any monotonic clock), given the
    /// group's total lag over `partitions` partitions. Call it once per HPA sync period.
    pub fn decide(
        &mut self,
        now: Duration,
        current: u32,
        total_lag: i64,
        partitions: usize,
    ) -> Decision {
        let spec = &self.spec;
        let trigger = &spec.trigger;
        let active = total_lag > trigger.activation_lag_threshold;
        if active {
            self.last_active = Some(now);
        }
        // KEDA's part: between 0 and 1 replicas (only when the ScaledObject allows 0).
        if spec.min_replicas == 0 {
            if current == 0 {
                return if active {
                    self.record(now, 0, 1);
                    Decision {
                        replicas: 1,
                        recommended: 1,
                        reason: "KEDA activated: lag above activationLagThreshold",
                    }
                } else {
                    Decision {
                        replicas: 0,
                        recommended: 0,
                        reason: "KEDA inactive: scaled to zero",
                    }
                };
            }
            let idle_since = self.last_active.unwrap_or(Duration::ZERO);
            if !active && now.saturating_sub(idle_since) >= spec.cooldown_period {
                self.record(now, current, 0);
                return Decision {
                    replicas: 0,
                    recommended: 0,
                    reason: "KEDA inactive for cooldownPeriod: scaled to zero",
                };
            }
        }
        // The HPA's part, from its minimum of at least 1. A new HPA starts its scale-down window
        // with the current count (`maybeInitScaleDownStabilizationWindow`): it does not shrink a
        // fleet the moment it starts watching it.
        if !self.started {
            self.started = true;
            if !self.spec.behavior.down.stabilization_window.is_zero() {
                self.recommendations.push((now, current));
            }
        }
        let metric = keda_metric(
            total_lag,
            trigger.lag_threshold,
            partitions,
            trigger.allow_idle_consumers,
        );
        let recommended = recommended_replicas(metric, trigger.lag_threshold, current);
        let stabilized = self.stabilize(now, current, recommended);
        let (replicas, reason) = self.limit(now, current, stabilized);
        let reason = if replicas == current && stabilized == current && recommended != current {
            if recommended > current {
                "ScaleUpStabilized"
            } else {
                "ScaleDownStabilized"
            }
        } else {
            reason
        };
        self.record(now, current, replicas);
        Decision {
            replicas,
            recommended,
            reason,
        }
    }

    /// `stabilizeRecommendationWithBehaviors`: up to the lowest recommendation of the
    /// scale-up window, down to the highest of the scale-down window.
    fn stabilize(&mut self, now: Duration, current: u32, recommended: u32) -> u32 {
        let (up_window, down_window) = (
            self.spec.behavior.up.stabilization_window,
            self.spec.behavior.down.stabilization_window,
        );
        let mut up = recommended;
        let mut down = recommended;
        for &(at, past) in &self.recommendations {
            if at + up_window > now {
                up = up.min(past);
            }
            if at + down_window > now {
                down = down.max(past);
            }
        }
        let longest = up_window.max(down_window);
        self.recommendations.retain(|(at, _)| *at + longest > now);
        self.recommendations.push((now, recommended));
        current.max(up).min(down)
    }

    /// Bounds and `convertDesiredReplicasWithBehaviorRate`: min/max, then the policies.
    fn limit(&self, now: Duration, current: u32, desired: u32) -> (u32, &'static str) {
        let min = self.spec.min_replicas.max(1);
        let max = self.spec.max_replicas;
        if desired > current {
            let up_limit = self
                .rate_limit(now, current, &self.spec.behavior.up, true)
                .max(current);
            let allowed = max.min(up_limit);
            if desired > allowed {
                let reason = if allowed == max {
                    "TooManyReplicas: the desired count is above maxReplicaCount"
                } else {
                    "ScaleUpLimit: limited by the scale-up policy"
                };
                return (allowed, reason);
            }
            (desired, "SucceededRescale: lag above the target")
        } else if desired < current {
            let down_limit = self
                .rate_limit(now, current, &self.spec.behavior.down, false)
                .min(current);
            let allowed = min.max(down_limit);
            if desired < allowed {
                let reason = if allowed == min {
                    "TooFewReplicas: the desired count is below minReplicaCount"
                } else {
                    "ScaleDownLimit: limited by the scale-down policy"
                };
                return (allowed, reason);
            }
            (desired, "SucceededRescale: lag below the target")
        } else if current < min {
            (
                min,
                "TooFewReplicas: the desired count is below minReplicaCount",
            )
        } else if current > max {
            (
                max,
                "TooManyReplicas: the desired count is above maxReplicaCount",
            )
        } else {
            (
                current,
                "ReadyForNewScale: recommended size matches current size",
            )
        }
    }

    /// The furthest the policies let the count go from `current` in one direction.
    fn rate_limit(&self, now: Duration, current: u32, rules: &ScalingRules, up: bool) -> u32 {
        let mut limits = Vec::new();
        if rules.select == SelectPolicy::Disabled {
            return current;
        }
        for policy in &rules.policies {
            let added = changes_within(&self.scale_ups, now, policy.period);
            let removed = changes_within(&self.scale_downs, now, policy.period);
            let period_start = (i64::from(current) - added + removed).max(0);
            let value = i64::from(policy.value);
            let proposed = match (policy.kind, up) {
                (PolicyKind::Pods, true) => period_start + value,
                (PolicyKind::Percent, true) => {
                    (period_start as f64 * (1.0 + value as f64 / 100.0)).ceil() as i64
                }
                (PolicyKind::Pods, false) => period_start - value,
                (PolicyKind::Percent, false) => {
                    (period_start as f64 * (1.0 - value as f64 / 100.0)) as i64
                }
            };
            limits.push(proposed.max(0));
        }
        // "Max" picks the policy that allows the largest change: the highest limit up, the
        // lowest limit down; "Min" the smallest change.
        let highest_limit = (rules.select == SelectPolicy::Max) == up;
        let chosen = if highest_limit {
            limits.iter().max()
        } else {
            limits.iter().min()
        };
        chosen.map_or(i64::from(current), |l| *l) as u32
    }

    fn record(&mut self, now: Duration, from: u32, to: u32) {
        let longest = self.spec.behavior.longest_period();
        self.scale_ups.retain(|e| e.at + longest > now);
        self.scale_downs.retain(|e| e.at + longest > now);
        if to > from {
            self.scale_ups.push(ScaleEvent {
                at: now,
                change: to - from,
            });
        } else if to < from {
            self.scale_downs.push(ScaleEvent {
                at: now,
                change: from - to,
            });
        }
    }
}

fn changes_within(events: &[ScaleEvent], now: Duration, period: Duration) -> i64 {
    events
        .iter()
        .filter(|e| e.at + period > now)
        .map(|e| i64::from(e.change))
        .sum()
}

#[cfg(test)]
mod tests;
