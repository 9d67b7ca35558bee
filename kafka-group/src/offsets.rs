//! Committed offsets (OffsetCommit, OffsetFetch), end offsets (ListOffsets) and lag.

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use kafka_protocol::{
    messages::{
        list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
        offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
        offset_fetch_request::OffsetFetchRequestTopic,
        BrokerId, GroupId, ListOffsetsRequest, OffsetCommitRequest, OffsetFetchRequest, TopicName,
    },
    protocol::StrBytes,
    ResponseError,
};
use tokio::sync::Mutex;

use crate::{
    cluster::Cluster,
    connection::Connection,
    error::{check, Error, Result},
    security::Security,
    TopicPartition,
};

/// Where a member without a committed offset starts, and how lag is counted for it. The
/// same choice as KEDA's `offsetResetPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum OffsetReset {
    /// Start at the oldest record still in the partition.
    #[default]
    Earliest,
    /// Start after the newest record: what was written before is skipped.
    Latest,
}

/// One partition's lag, counted the way KEDA's Kafka scaler counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// The group's committed offset (the next record to read), if any.
    pub committed: Option<i64>,
    /// The partition's end offset (the offset the next produced record will get).
    pub end: i64,
    /// `end - committed`. Without a commit, KEDA counts `end` under `Earliest` and 1 under
    /// `Latest` (so one consumer stays up; KEDA's `scaleToZeroOnInvalidOffset` makes it 0).
    pub lag: i64,
}

impl PartitionLag {
    pub fn new(partition: i32, committed: Option<i64>, end: i64, reset: OffsetReset) -> Self {
        let lag = match (committed, reset) {
            (Some(offset), _) => (end - offset).max(0),
            (None, OffsetReset::Earliest) => end,
            (None, OffsetReset::Latest) => 1,
        };
        Self {
            partition,
            committed,
            end,
            lag,
        }
    }
}

/// The replica count KEDA's Kafka scaler asks for with default flags: the HPA targets an
/// average of `lag_threshold` per replica, so ceil(total lag / threshold), capped at the
/// partition count (`allowIdleConsumers: false`). Zero lag means zero replicas only when the
/// ScaledObject allows scaling to zero (`minReplicaCount: 0`).
pub fn keda_desired_replicas(total_lag: i64, lag_threshold: i64, partitions: usize) -> usize {
    assert!(lag_threshold > 0, "KEDA requires lagThreshold > 0");
    let wanted = (total_lag.max(0) + lag_threshold - 1) / lag_threshold;
    (wanted as usize).min(partitions)
}

/// Group offsets without joining the group: what KEDA, dashboards and load tools need.
#[derive(Clone)]
pub struct GroupAdmin {
    pub(crate) cluster: Arc<Cluster>,
    coordinators: Arc<Mutex<BTreeMap<String, String>>>,
}

/// Who commits: a member of a generation (a static one with its instance id), or nobody.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemberIdentity {
    pub member_id: String,
    /// The classic protocol's generation, or the consumer protocol's member epoch.
    pub generation: i32,
    pub instance_id: Option<String>,
    /// A member of a consumer-protocol group (KIP-848): Kafka takes its commits only at
    /// OffsetCommit v9 and later, where the generation field carries the member epoch.
    pub consumer_protocol: bool,
}

impl MemberIdentity {
    /// Generation -1 and no member id: a commit for a group without active members.
    pub fn none() -> Self {
        Self {
            generation: -1,
            ..Self::default()
        }
    }
}

const COMMIT_VERSIONS: std::ops::RangeInclusive<i16> = 2..=8;
const CONSUMER_PROTOCOL_COMMIT_VERSIONS: std::ops::RangeInclusive<i16> = 9..=9;

impl GroupAdmin {
    /// `bootstrap` as `host:port` strings.
    pub fn new(
        bootstrap: Vec<String>,
        client_id: impl Into<String>,
        request_timeout: Duration,
    ) -> Self {
        Self::with_cluster(Arc::new(Cluster::new(
            bootstrap,
            client_id.into(),
            request_timeout,
            Security::default(),
        )))
    }

    /// Connects with TLS and/or SASL (call before the first request).
    pub fn with_security(self, security: Security) -> Self {
        Self::with_cluster(Arc::new(self.cluster.with_security(security)))
    }

    pub(crate) fn with_cluster(cluster: Arc<Cluster>) -> Self {
        Self {
            cluster,
            coordinators: Arc::default(),
        }
    }

    /// The group's committed offsets for `partitions`; `None` where nothing was committed.
    pub async fn committed(
        &self,
        group_id: &str,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>> {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in partitions {
            by_topic.entry(&tp.topic).or_default().push(tp.partition);
        }
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group_id.to_string())))
            .with_topics(Some(
                by_topic
                    .iter()
                    .map(|(topic, ps)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(topic_name(topic))
                            .with_partition_indexes(ps.clone())
                    })
                    .collect(),
            ));
        let response = self
            .with_coordinator(group_id, |connection| {
                let request = request.clone();
                async move {
                    let version = connection.version::<OffsetFetchRequest>(1..=7)?;
                    let response = connection.send(&request, version).await?;
                    check("OffsetFetch", response.error_code)?;
                    Ok(response)
                }
            })
            .await?;
        let mut result: BTreeMap<TopicPartition, Option<i64>> =
            partitions.iter().map(|tp| (tp.clone(), None)).collect();
        for topic in &response.topics {
            for p in &topic.partitions {
                check("OffsetFetch", p.error_code)?;
                let tp = TopicPartition::new(topic.name.0.as_str(), p.partition_index);
                if let Some(slot) = result.get_mut(&tp) {
                    *slot = (p.committed_offset >= 0).then_some(p.committed_offset);
                }
            }
        }
        Ok(result)
    }

    /// Commits as a group member of `generation` (or, with generation -1 and an empty member
    /// id, for a group with no active members).
    pub(crate) async fn commit_as(
        &self,
        group_id: &str,
        member: &MemberIdentity,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<()> {
        let mut by_topic: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
        for (tp, offset) in offsets {
            by_topic
                .entry(&tp.topic)
                .or_default()
                .push((tp.partition, *offset));
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group_id.to_string())))
            .with_generation_id_or_member_epoch(member.generation)
            .with_member_id(StrBytes::from_string(member.member_id.clone()))
            .with_group_instance_id(member.instance_id.clone().map(StrBytes::from_string))
            .with_retention_time_ms(-1)
            .with_topics(
                by_topic
                    .iter()
                    .map(|(topic, ps)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(topic_name(topic))
                            .with_partitions(
                                ps.iter()
                                    .map(|(p, o)| {
                                        OffsetCommitRequestPartition::default()
                                            .with_partition_index(*p)
                                            .with_committed_offset(*o)
                                            .with_committed_leader_epoch(-1)
                                            .with_committed_metadata(Some(
                                                StrBytes::from_static_str(""),
                                            ))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let versions = if member.consumer_protocol {
            CONSUMER_PROTOCOL_COMMIT_VERSIONS
        } else {
            COMMIT_VERSIONS
        };
        self.with_coordinator(group_id, |connection| {
            let request = request.clone();
            let versions = versions.clone();
            async move {
                let version = connection.version::<OffsetCommitRequest>(versions)?;
                let response = connection.send(&request, version).await?;
                for topic in &response.topics {
                    for p in &topic.partitions {
                        check("OffsetCommit", p.error_code)?;
                    }
                }
                Ok(())
            }
        })
        .await
    }

    /// Commits for a group that has no active members (tools, tests, resets).
    pub async fn commit_without_membership(
        &self,
        group_id: &str,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<()> {
        self.commit_as(group_id, &MemberIdentity::none(), offsets)
            .await
    }

    /// The end offset (latest) of every partition of `topic`, asked of each partition's leader.
    pub async fn end_offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>> {
        self.offsets_at(topic, OffsetReset::Latest).await
    }

    /// Where `reset` puts a reader of each partition of `topic` (its earliest or its end
    /// offset), asked of each partition's leader: where a partition without a committed
    /// offset starts, or one whose offset fell out of the log starts again.
    pub async fn offsets_at(&self, topic: &str, reset: OffsetReset) -> Result<BTreeMap<i32, i64>> {
        // ListOffsets' special timestamps: -2 the earliest offset, -1 the end.
        let timestamp = match reset {
            OffsetReset::Earliest => -2,
            OffsetReset::Latest => -1,
        };
        let metadata = self.cluster.metadata(&[topic.to_string()]).await?;
        let partitions = metadata
            .topics
            .get(topic)
            .ok_or_else(|| Error::Config(format!("topic {topic} does not exist")))?;
        let mut by_leader: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (partition, leader) in partitions {
            by_leader.entry(leader).or_default().push(*partition);
        }
        let mut result = BTreeMap::new();
        for (leader, ps) in by_leader {
            let connection = self.cluster.broker(leader).await?;
            let version = connection.version::<ListOffsetsRequest>(1..=7)?;
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(
                        ps.iter()
                            .map(|p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(*p)
                                    .with_current_leader_epoch(-1)
                                    .with_timestamp(timestamp)
                            })
                            .collect(),
                    )]);
            let response = match connection.send(&request, version).await {
                Ok(r) => r,
                Err(e) => {
                    self.cluster.forget(leader).await;
                    return Err(e);
                }
            };
            for t in &response.topics {
                for p in &t.partitions {
                    check("ListOffsets", p.error_code)?;
                    result.insert(p.partition_index, p.offset);
                }
            }
        }
        Ok(result)
    }

    /// Per-partition lag of `group` on `topic`, as KEDA's Kafka scaler computes it.
    pub async fn lag(
        &self,
        group_id: &str,
        topic: &str,
        reset: OffsetReset,
    ) -> Result<Vec<PartitionLag>> {
        let ends = self.end_offsets(topic).await?;
        let partitions: Vec<TopicPartition> = ends
            .keys()
            .map(|p| TopicPartition::new(topic, *p))
            .collect();
        let committed = self.committed(group_id, &partitions).await?;
        Ok(ends
            .iter()
            .map(|(p, end)| {
                let offset = committed
                    .get(&TopicPartition::new(topic, *p))
                    .copied()
                    .flatten();
                PartitionLag::new(*p, offset, *end, reset)
            })
            .collect())
    }

    /// Runs `call` against the group's coordinator, finding it again (with backoff) when it
    /// moved, is loading, or the connection failed.
    async fn with_coordinator<T, F, Fut>(&self, group_id: &str, call: F) -> Result<T>
    where
        F: Fn(Arc<Connection>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut backoff = crate::backoff::Backoff::new(self.cluster.request_timeout() * 2);
        loop {
            let result = async {
                let address = self.coordinator(group_id).await?;
                let connection = self.cluster.broker(&address).await?;
                call(connection).await
            }
            .await;
            match result {
                Err(e) if coordinator_trouble(&e) => {
                    self.forget_coordinator(group_id).await;
                    if !backoff.wait().await {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    pub(crate) async fn coordinator(&self, group_id: &str) -> Result<String> {
        if let Some(address) = self.coordinators.lock().await.get(group_id) {
            return Ok(address.clone());
        }
        let address = self.cluster.find_coordinator(group_id).await?;
        self.coordinators
            .lock()
            .await
            .insert(group_id.to_string(), address.clone());
        Ok(address)
    }

    pub(crate) async fn forget_coordinator(&self, group_id: &str) {
        if let Some(address) = self.coordinators.lock().await.remove(group_id) {
            self.cluster.forget(&address).await;
        }
    }
}

/// Errors that mean "ask again, maybe elsewhere": the coordinator moved, is loading, or the
/// connection broke.
pub(crate) fn coordinator_trouble(error: &Error) -> bool {
    error.is_connection()
        || matches!(
            error.protocol(),
            Some(
                ResponseError::NotCoordinator
                    | ResponseError::CoordinatorNotAvailable
                    | ResponseError::CoordinatorLoadInProgress
            )
        )
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_end_minus_committed_and_follows_the_reset_policy_without_a_commit() {
        assert_eq!(
            PartitionLag::new(0, Some(40), 100, OffsetReset::Earliest).lag,
            60
        );
        assert_eq!(
            PartitionLag::new(0, Some(100), 100, OffsetReset::Latest).lag,
            0
        );
        assert_eq!(
            PartitionLag::new(0, None, 100, OffsetReset::Earliest).lag,
            100
        );
        assert_eq!(PartitionLag::new(0, None, 100, OffsetReset::Latest).lag, 1);
        // A commit ahead of the end (after a topic was recreated) is not negative lag.
        assert_eq!(
            PartitionLag::new(0, Some(120), 100, OffsetReset::Earliest).lag,
            0
        );
    }

    #[test]
    fn keda_replicas_round_up_and_cap_at_partitions() {
        assert_eq!(keda_desired_replicas(0, 100, 12), 0);
        assert_eq!(keda_desired_replicas(1, 100, 12), 1);
        assert_eq!(keda_desired_replicas(250, 100, 12), 3);
        assert_eq!(keda_desired_replicas(1_000_000, 100, 12), 12);
    }
}
