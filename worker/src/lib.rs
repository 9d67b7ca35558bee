//! The scalable-shop worker: a member of the purchases consumer group that fetches its
//! partitions (kafka-group's fetch sessions), bulk-inserts purchases into MongoDB (idempotently, `_id` =
//! eventId) and commits offsets only after the write, so KEDA can scale the fleet on lag.

pub mod commit;
pub mod config;
pub mod decode;
pub mod dlq;
pub mod fetch;
pub mod metrics;
pub mod ops;
pub mod readiness;
pub mod record;
pub mod session;
pub mod sink;
pub mod startup;
pub mod timing;
