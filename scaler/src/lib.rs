//! Runs the worker fleet on one machine the way KEDA and the HorizontalPodAutoscaler run it on
//! Kubernetes: it reads the very ScaledObject the cluster gets, reads the consumer group's lag
//! as KEDA's Kafka scaler does, decides the replica count as the HPA does (tolerance,
//! stabilization windows, scaling policies), starts and stops real worker processes to that
//! count, and shows it the way `kubectl get hpa` does.
//!
//! - `scaled_object`: the manifest, with KEDA's and Kubernetes' defaults;
//! - `hpa`: the decision, pure (unit-tested against the documented formulas);
//! - `fleet`: the worker processes;
//! - `state`: what was decided, for `scaler get` / `scaler watch` and the load tool;
//! - `run`: the loop.

pub mod config;
pub mod fleet;
pub mod hpa;
pub mod run;
pub mod scaled_object;
pub mod state;
