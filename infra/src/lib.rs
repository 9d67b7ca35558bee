//! The infrastructure that moves purchases, shared by every scalable-shop service: typed
//! configuration, Kafka and MongoDB set-up and security, the stored purchase document,
//! metrics, logs and traces, and the one shutdown signal. The event itself is the
//! `purchase` crate's; this crate only carries and stores it.

pub mod cause_log;
pub mod config;
pub mod kafka;
pub mod kafka_security;
pub mod metrics;
pub mod mongo;
pub mod shutdown;
pub mod telemetry;
pub mod traces;
