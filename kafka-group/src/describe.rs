//! What a group is, asked of its coordinator without joining: whether the coordinator offers
//! the consumer group protocol (KIP-848), and who the members of a consumer-protocol group
//! are and what they own (ConsumerGroupDescribe; the classic DescribeGroups answers "dead"
//! for such a group).

use kafka_protocol::{
    messages::{
        consumer_group_describe_response::DescribedGroup, ConsumerGroupDescribeRequest,
        ConsumerGroupHeartbeatRequest, GroupId,
    },
    protocol::StrBytes,
};

use crate::{
    error::{check, Error, Result},
    offsets::GroupAdmin,
    TopicPartition,
};

/// ConsumerGroupHeartbeat v1: Kafka 4.0's consumer protocol (v0 was 3.7-3.9's early access).
pub(crate) const CONSUMER_HEARTBEAT_VERSIONS: std::ops::RangeInclusive<i16> = 1..=1;

/// A consumer-protocol group as its coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// `empty`, `assigning`, `reconciling`, `stable` or `dead`.
    pub state: String,
    /// Bumped on every change of membership or subscriptions.
    pub epoch: i32,
    /// The group epoch the current target assignment was computed for.
    pub assignment_epoch: i32,
    /// The server assignor in use (`uniform`, `range`...).
    pub assignor: String,
    pub members: Vec<MemberDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub member_epoch: i32,
    /// What the member owns now.
    pub assigned: Vec<TopicPartition>,
    /// What the coordinator wants it to own (differs while it reconciles).
    pub target: Vec<TopicPartition>,
}

impl GroupAdmin {
    /// Whether `group_id`'s coordinator speaks the consumer group protocol.
    pub async fn offers_consumer_protocol(&self, group_id: &str) -> Result<bool> {
        let address = self.coordinator(group_id).await?;
        let connection = match self.cluster.broker(&address).await {
            Ok(connection) => connection,
            Err(e) => {
                self.forget_coordinator(group_id).await;
                return Err(e);
            }
        };
        Ok(connection
            .version::<ConsumerGroupHeartbeatRequest>(CONSUMER_HEARTBEAT_VERSIONS)
            .is_ok())
    }

    /// The members and assignments of a consumer-protocol group (ConsumerGroupDescribe,
    /// Kafka 4.0). A classic group is answered `GROUP_ID_NOT_FOUND` by Kafka.
    pub async fn describe_consumer_group(&self, group_id: &str) -> Result<GroupDescription> {
        let address = self.coordinator(group_id).await?;
        let connection = self.cluster.broker(&address).await?;
        let version = connection.version::<ConsumerGroupDescribeRequest>(0..=1)?;
        let request = ConsumerGroupDescribeRequest::default()
            .with_group_ids(vec![GroupId(StrBytes::from_string(group_id.to_string()))]);
        let response = connection.send(&request, version).await?;
        let group = response.groups.into_iter().next().ok_or_else(|| {
            Error::Decode("a ConsumerGroupDescribe answer without the group".into())
        })?;
        check("ConsumerGroupDescribe", group.error_code)?;
        Ok(description(group))
    }
}

fn description(group: DescribedGroup) -> GroupDescription {
    let partitions =
        |assignment: &kafka_protocol::messages::consumer_group_describe_response::Assignment| {
            let mut partitions: Vec<TopicPartition> = assignment
                .topic_partitions
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(move |p| TopicPartition::new(t.topic_name.0.as_str(), *p))
                })
                .collect();
            partitions.sort();
            partitions
        };
    GroupDescription {
        state: group.group_state.to_string(),
        epoch: group.group_epoch,
        assignment_epoch: group.assignment_epoch,
        assignor: group.assignor_name.to_string(),
        members: group
            .members
            .iter()
            .map(|m| MemberDescription {
                member_id: m.member_id.to_string(),
                instance_id: m.instance_id.as_ref().map(|i| i.to_string()),
                client_id: m.client_id.to_string(),
                client_host: m.client_host.to_string(),
                member_epoch: m.member_epoch,
                assigned: partitions(&m.assignment),
                target: partitions(&m.target_assignment),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::{
        consumer_group_describe_response::{Assignment, Member, TopicPartitions},
        TopicName,
    };

    use super::*;

    #[test]
    fn a_described_group_names_each_members_partitions_by_topic_name() {
        let assignment = |partitions: Vec<i32>| {
            Assignment::default().with_topic_partitions(vec![TopicPartitions::default()
                .with_topic_id(uuid::Uuid::from_u128(9))
                .with_topic_name(TopicName(StrBytes::from_static_str("purchases")))
                .with_partitions(partitions)])
        };
        let group = DescribedGroup::default()
            .with_group_state(StrBytes::from_static_str("reconciling"))
            .with_group_epoch(7)
            .with_assignment_epoch(7)
            .with_assignor_name(StrBytes::from_static_str("uniform"))
            .with_members(vec![Member::default()
                .with_member_id(StrBytes::from_static_str("m-1"))
                .with_instance_id(Some(StrBytes::from_static_str("worker-0")))
                .with_member_epoch(6)
                .with_assignment(assignment(vec![2, 0]))
                .with_target_assignment(assignment(vec![0]))]);
        let described = description(group);
        assert_eq!(described.state, "reconciling");
        assert_eq!(described.assignor, "uniform");
        let member = &described.members[0];
        assert_eq!(member.instance_id.as_deref(), Some("worker-0"));
        assert_eq!(
            member.assigned,
            vec![
                TopicPartition::new("purchases", 0),
                TopicPartition::new("purchases", 2)
            ]
        );
        assert_eq!(member.target, vec![TopicPartition::new("purchases", 0)]);
    }
}
