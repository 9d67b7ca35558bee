//! Fetching, the source of the worker's pipeline: one loop reads every partition this worker
//! owns with one Fetch request per broker (kafka-group's [`RecordFetcher`](kafka_group::RecordFetcher)), passes each
//! record through [`crate::decode`] and hands the sink each partition's records in offset
//! order (a full sink queue, when the database is slow or down, pauses fetching).
//!
//! The rooms, along the records' path: [`assignment`] turns the group's assignments and
//! revocations into commands to the loop ([`partitions`] keeps what it reads),
//! [`fetch_loop`] asks the brokers, [`pacing`] (a pure policy) spaces and sizes the
//! requests, and [`start_offsets`] says where a partition without a commit starts.
//!
//! Why one loop and not one per partition: a broker answers a connection's requests one at a
//! time, so per-partition loops over rskafka's shared connection either wait behind each
//! other's long polls or, asking again at once with `min_bytes = 1`, send the broker a request
//! for every handful of records (measured on nisshi: the broker saturated one core serving
//! 1,000 purchases/s; README "Worker").
//!
//! Why the pause is the client's and not `min_bytes`: holding a request open for more bytes
//! costs Kafka nothing, but nisshi 0.7 re-reads every partition of a waiting request on each
//! of its polls. A pause before asking costs either broker nothing, and the request then
//! returns at once with what accumulated.

pub mod assignment;
pub mod fetch_loop;
pub mod pacing;
pub mod partitions;
pub mod start_offsets;

use kafka_group::{FetchLimits, OffsetReset};

pub use assignment::Assignment;
pub use pacing::Pacing;

/// How the loop fetches: the request limits, the pacing, and where a partition without a
/// commit starts.
pub struct FetchSettings {
    pub limits: FetchLimits,
    pub pacing: Pacing,
    pub reset: OffsetReset,
}
