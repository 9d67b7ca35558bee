//! The ScaledObject manifest as KEDA and the HPA read it: the fields that decide the replica
//! count, with KEDA's and Kubernetes' defaults for those left out.

use std::{path::Path, time::Duration};

use serde::Deserialize;

/// What the replica decision needs from a ScaledObject with one Kafka trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaledObject {
    pub name: String,
    /// The Deployment it scales.
    pub target: String,
    pub polling_interval: Duration,
    pub cooldown_period: Duration,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub behavior: Behavior,
    pub trigger: KafkaTrigger,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaTrigger {
    pub topic: String,
    pub consumer_group: String,
    pub lag_threshold: i64,
    pub activation_lag_threshold: i64,
    pub allow_idle_consumers: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    pub up: ScalingRules,
    pub down: ScalingRules,
}

impl Behavior {
    /// The longest period any policy counts changes over.
    pub fn longest_period(&self) -> Duration {
        self.up
            .policies
            .iter()
            .chain(&self.down.policies)
            .map(|p| p.period)
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScalingRules {
    pub stabilization_window: Duration,
    pub select: SelectPolicy,
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SelectPolicy {
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub value: u32,
    pub period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PolicyKind {
    Pods,
    Percent,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a ScaledObject KEDA would take: {source}")]
    Yaml {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
}

impl ScaledObject {
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|e| match e {
            SpecError::Yaml { source, .. } => SpecError::Yaml {
                path: shown,
                source,
            },
            SpecError::Invalid { problem, .. } => SpecError::Invalid {
                path: shown,
                problem,
            },
            other => other,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Self, SpecError> {
        let raw: raw::ScaledObject =
            serde_yaml::from_str(text).map_err(|source| SpecError::Yaml {
                path: String::new(),
                source,
            })?;
        let invalid = |problem: String| SpecError::Invalid {
            path: String::new(),
            problem,
        };
        if raw.kind != "ScaledObject" {
            return Err(invalid(format!("kind is {}, not ScaledObject", raw.kind)));
        }
        let spec = raw.spec;
        let kafka: Vec<_> = spec.triggers.iter().filter(|t| t.kind == "kafka").collect();
        let [trigger] = kafka.as_slice() else {
            return Err(invalid(format!(
                "needs exactly one kafka trigger, found {}",
                kafka.len()
            )));
        };
        let number = |name: &str, value: &Option<String>, default: i64| -> Result<i64, SpecError> {
            match value {
                None => Ok(default),
                Some(text) => text.trim().parse().map_err(|_| {
                    invalid(format!(
                        "trigger {name} must be a whole number, not {text:?}"
                    ))
                }),
            }
        };
        let lag_threshold = number("lagThreshold", &trigger.metadata.lag_threshold, 10)?;
        if lag_threshold <= 0 {
            return Err(invalid("trigger lagThreshold must be above 0".into()));
        }
        let allow_idle_consumers = match trigger.metadata.allow_idle_consumers.as_deref() {
            None => false,
            Some(text) => text.trim().parse().map_err(|_| {
                invalid(format!(
                    "trigger allowIdleConsumers must be true or false, not {text:?}"
                ))
            })?,
        };
        let min_replicas = spec.min_replica_count.unwrap_or(0);
        let max_replicas = spec.max_replica_count.unwrap_or(100);
        if max_replicas < min_replicas.max(1) {
            return Err(invalid(format!(
                "maxReplicaCount {max_replicas} is below minReplicaCount {min_replicas}"
            )));
        }
        let behavior = spec
            .advanced
            .and_then(|a| a.horizontal_pod_autoscaler_config)
            .and_then(|h| h.behavior)
            .unwrap_or_default();
        Ok(Self {
            name: raw.metadata.name,
            target: spec.scale_target_ref.name,
            polling_interval: Duration::from_secs(spec.polling_interval.unwrap_or(30)),
            cooldown_period: Duration::from_secs(spec.cooldown_period.unwrap_or(300)),
            min_replicas,
            max_replicas,
            behavior: Behavior {
                up: rules(behavior.scale_up, Direction::Up),
                down: rules(behavior.scale_down, Direction::Down),
            },
            trigger: KafkaTrigger {
                topic: trigger.metadata.topic.clone().unwrap_or_default(),
                consumer_group: trigger.metadata.consumer_group.clone().unwrap_or_default(),
                lag_threshold,
                activation_lag_threshold: number(
                    "activationLagThreshold",
                    &trigger.metadata.activation_lag_threshold,
                    0,
                )?,
                allow_idle_consumers,
            },
        })
    }
}

enum Direction {
    Up,
    Down,
}

/// Kubernetes' defaults for what the manifest leaves out: up without stabilization, at most
/// 4 pods or doubling per 15 s (the larger); down after a 300 s window, up to all per 15 s.
fn rules(given: Option<raw::Rules>, direction: Direction) -> ScalingRules {
    let given = given.unwrap_or_default();
    let (window, policies) = match direction {
        Direction::Up => (
            0,
            vec![
                Policy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period: Duration::from_secs(15),
                },
                Policy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period: Duration::from_secs(15),
                },
            ],
        ),
        Direction::Down => (
            300,
            vec![Policy {
                kind: PolicyKind::Percent,
                value: 100,
                period: Duration::from_secs(15),
            }],
        ),
    };
    ScalingRules {
        stabilization_window: Duration::from_secs(
            given.stabilization_window_seconds.unwrap_or(window),
        ),
        select: given.select_policy.unwrap_or(SelectPolicy::Max),
        policies: given.policies.map_or(policies, |ps| {
            ps.into_iter()
                .map(|p| Policy {
                    kind: p.kind,
                    value: p.value,
                    period: Duration::from_secs(p.period_seconds),
                })
                .collect()
        }),
    }
}

/// The manifest's shape, only as far as the decision reads it.
mod raw {
    use serde::Deserialize;

    use super::{PolicyKind, SelectPolicy};

    #[derive(Deserialize)]
    pub struct ScaledObject {
        pub kind: String,
        pub metadata: Metadata,
        pub spec: Spec,
    }

    #[derive(Deserialize)]
    pub struct Metadata {
        pub name: String,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Spec {
        pub scale_target_ref: TargetRef,
        pub polling_interval: Option<u64>,
        pub cooldown_period: Option<u64>,
        pub min_replica_count: Option<u32>,
        pub max_replica_count: Option<u32>,
        pub advanced: Option<Advanced>,
        pub triggers: Vec<Trigger>,
    }

    #[derive(Deserialize)]
    pub struct TargetRef {
        pub name: String,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Advanced {
        pub horizontal_pod_autoscaler_config: Option<HpaConfig>,
    }

    #[derive(Deserialize)]
    pub struct HpaConfig {
        pub behavior: Option<Behavior>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct Behavior {
        pub scale_up: Option<Rules>,
        pub scale_down: Option<Rules>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct Rules {
        pub stabilization_window_seconds: Option<u64>,
        pub select_policy: Option<SelectPolicy>,
        pub policies: Option<Vec<Policy>>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Policy {
        #[serde(rename = "type")]
        pub kind: PolicyKind,
        pub value: u32,
        pub period_seconds: u64,
    }

    #[derive(Deserialize)]
    pub struct Trigger {
        #[serde(rename = "type")]
        pub kind: String,
        #[serde(default)]
        pub metadata: TriggerMetadata,
    }

    /// KEDA takes trigger metadata as strings.
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct TriggerMetadata {
        pub topic: Option<String>,
        pub consumer_group: Option<String>,
        pub lag_threshold: Option<String>,
        pub activation_lag_threshold: Option<String>,
        pub allow_idle_consumers: Option<String>,
    }
}
