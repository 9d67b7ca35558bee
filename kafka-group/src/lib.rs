//! Kafka consumer groups for rskafka users.
mod assignor;
mod backoff;
mod cluster;
mod connection;
mod consumer_protocol;
mod error;
mod member;
mod offsets;
mod types;

pub use assignor::{Assignor, MemberSubscription};
pub use error::{Error, Result};
pub use member::{GroupConfig, GroupEvent, GroupMember, Revocation};
pub use offsets::{keda_desired_replicas, GroupAdmin, OffsetReset, PartitionLag};
pub use types::TopicPartition;
