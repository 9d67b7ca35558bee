//! The consumer side of Kafka for [rskafka] users: consumer groups, fetching, committed
//! offsets and lag, and topic administration.
//!
//! rskafka produces well but has no consumer groups and fetches one partition per request.
//! This crate adds both group protocols, the classic one (FindCoordinator, JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup) and the consumer protocol of KIP-848
//! (ConsumerGroupHeartbeat; [`GroupProtocol`]), a fetcher that asks each leader for all its partitions at once
//! ([`RecordFetcher`]) and offset management (OffsetCommit, OffsetFetch, ListOffsets) on the
//! [`kafka_protocol`] crate's message types over tokio TCP, so a fleet of consumers can split
//! a topic's partitions and record progress where tools like KEDA read it.
//!
//! - [`GroupMember`] joins a group in a background task, heartbeats, follows rebalances and
//!   tells the application through [`GroupEvent`]s which partitions it owns. Before a
//!   partition can go to another member, the owner receives [`GroupEvent::Revoked`] and the
//!   group waits until it has committed and let go.
//! - [`GroupProtocol::Consumer`] (Kafka 4.0): the coordinator assigns, and a member joining or
//!   leaving pauses only the partitions that move, with no group-wide barrier;
//!   [`GroupProtocol::Auto`] uses it where the coordinator offers it.
//! - Classic protocol: [`Assignor::CooperativeSticky`] (the default) rebalances incrementally (KIP-429): only
//!   the partitions that move pause. [`Assignor::Sticky`] is the same split under the eager
//!   protocol and [`Assignor::Range`] Kafka's range assignor, for groups mixed with other
//!   clients or older members.
//! - Static membership (KIP-345) with [`GroupConfig::group_instance_id`].
//! - [`GroupAdmin`] reads committed offsets, end offsets and lag without joining, counting
//!   lag the way KEDA's Kafka scaler does ([`PartitionLag`], [`keda_desired_replicas`]).
//! - [`ProduceClient`] and [`BrokerLink`] write one Produce request per broker carrying a
//!   batch for every partition it leads (rskafka sends one request per partition); the
//!   caller decides what to do with each partition's answer.
//! - [`TopicAdmin`] looks topics up and creates missing ones on any cluster shape (to the
//!   controller the metadata names, else to any broker, which forwards it).
//!
//! Tested on nisshi (one broker) and on librdkafka's three-broker mock cluster, with leaders
//! moving, brokers failing over and coordinators moving (the project README's "Kafka brokers
//! this is tested on").
//!
//! # Example
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use kafka_group::{GroupConfig, GroupEvent, GroupMember, TopicPartition};
//!
//! # async fn example() -> kafka_group::Result<()> {
//! let config = GroupConfig::new(vec!["127.0.0.1:9092".into()], "purchase-workers", vec!["purchases".into()]);
//! let (member, mut events) = GroupMember::start(config)?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         GroupEvent::Assigned { added, .. } => {
//!             // Start fetching the `added` partitions with a `RecordFetcher` from
//!             // `member.committed(&added)`; the others are fetched already.
//!         }
//!         GroupEvent::Revoked(revocation) => {
//!             // Stop fetching, write what was read, then commit the next offsets to read.
//!             let done: BTreeMap<TopicPartition, i64> = BTreeMap::new();
//!             if !revocation.lost {
//!                 member.commit(&done).await?;
//!             }
//!             revocation.done();
//!         }
//!     }
//! }
//! member.leave().await?;
//! # Ok(())
//! # }
//! ```
//!
//! [rskafka]: https://docs.rs/rskafka

mod assignor;
pub mod authorization;
pub mod backoff;
mod cluster;
mod connection;
mod consumer_protocol;
mod describe;
mod diagnosis;
mod error;
mod establish;
mod fetch;
mod member;
mod mismatch;
mod offsets;
mod produce;
mod sasl;
mod security;
mod topics;
mod transport;
mod types;

pub use assignor::{Assignor, MemberSubscription};
pub use backoff::Backoff;
pub use describe::{GroupDescription, MemberDescription};
pub use diagnosis::speaks_tls;
pub use error::{Error, Result};
pub use fetch::{FetchLimits, FetchedRecord, PartitionRecords, RecordFetcher};
/// The broker's error codes, as [`Error::protocol`] returns them.
pub use kafka_protocol::ResponseError;
pub use member::{GroupConfig, GroupEvent, GroupMember, GroupProtocol, Revocation};
pub use mismatch::Mismatch;
pub use offsets::{keda_desired_replicas, GroupAdmin, OffsetReset, PartitionLag};
pub use produce::{
    nothing_appended_retriable, Appended, BrokerLink, OutgoingRecord, PartitionBatch, ProduceClient,
};
pub use security::{SaslCredentials, SaslMechanism, Security};
/// The TLS library [`Security::tls`] is configured with (the one rskafka uses too).
pub use tokio_rustls::rustls;
pub use topics::TopicAdmin;
pub use types::TopicPartition;
