//! The purchase contract shared by every scalable-shop binary: the event type and its
//! validation, the stored document, configuration pieces, Kafka and MongoDB set-up,
//! telemetry and the shutdown signal. Written once here so gateway and worker cannot drift.

pub mod cause_log;
pub mod config;
pub mod document;
pub mod event;
pub mod kafka;
pub mod kafka_security;
pub mod metrics;
pub mod money;
pub mod mongo;
pub mod partitioner;
pub mod shutdown;
pub mod telemetry;
pub mod traces;
pub mod validation;

pub use document::PurchaseDocument;
pub use event::{PurchaseEvent, SCHEMA_VERSION};
pub use money::Price;
pub use validation::{NewPurchase, UserId, Username, ValidationError};
