//! Joining a generation: JoinGroup, the leader's assignment, SyncGroup.

use std::{collections::BTreeMap, time::Instant};

use kafka_protocol::{
    messages::{
        join_group_request::JoinGroupRequestProtocol, join_group_response::JoinGroupResponseMember,
        sync_group_request::SyncGroupRequestAssignment, JoinGroupRequest, JoinGroupResponse,
        SyncGroupRequest,
    },
    protocol::StrBytes,
    ResponseError,
};

use super::{
    coordinator::Coordinator,
    task::{millis, Joined, MemberTask},
};
use crate::{
    assignor::{Assignor, MemberSubscription},
    consumer_protocol::{
        decode_assignment, decode_subscription, encode_assignment, encode_subscription,
    },
    error::{check, protocol_error, Error, Result},
};

impl<C: Coordinator> MemberTask<C> {
    /// JoinGroup, then (as leader) the assignment, then SyncGroup: this member's partitions
    /// in the new generation.
    pub(super) async fn join_and_sync(&mut self) -> Result<Joined> {
        let joined = self.join().await?;
        self.sync(joined).await
    }

    /// JoinGroup until the coordinator answers with a generation (a first join of v4+ is
    /// answered with a member id to join again with).
    async fn join(&mut self) -> Result<JoinGroupResponse> {
        let group_id = self.group_id();
        let metadata = encode_subscription(&self.config.topics, &self.owned, self.owned_generation);
        let protocols: Vec<JoinGroupRequestProtocol> = self
            .config
            .assignors
            .iter()
            .map(|a| {
                JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(a.protocol_name()))
                    .with_metadata(metadata.clone())
            })
            .collect();
        let join_timeout = self.config.rebalance_timeout + self.config.request_timeout;
        let session_ms = millis(self.config.session_timeout);
        let rebalance_ms = millis(self.config.rebalance_timeout);

        let joined = loop {
            let (member_id, _) = self.member();
            let request = JoinGroupRequest::default()
                .with_group_id(group_id.clone())
                .with_session_timeout_ms(session_ms)
                .with_rebalance_timeout_ms(rebalance_ms)
                .with_member_id(StrBytes::from_string(member_id.clone()))
                .with_group_instance_id(self.instance_id())
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(protocols.clone())
                .with_reason(Some(StrBytes::from_static_str("joining or rebalancing")));
            let static_member = self.config.group_instance_id.is_some();
            tracing::debug!(group = %self.config.group_id, member = %member_id, owned = self.owned.len(), "JoinGroup sent; the coordinator answers once the members have rejoined");
            let started = Instant::now();
            let response = self
                .coordinator
                .join(request, static_member, join_timeout)
                .await?;
            tracing::debug!(group = %self.config.group_id, waited = ?started.elapsed(), error = response.error_code, generation = response.generation_id, "JoinGroup answered");
            match protocol_error(response.error_code) {
                None => break response,
                // Since JoinGroup v4 the coordinator first hands out a member id, then expects
                // the join again with it.
                Some(ResponseError::MemberIdRequired) => {
                    self.membership().member_id = response.member_id.to_string();
                }
                Some(error) => {
                    return Err(Error::Protocol {
                        api: "JoinGroup",
                        error,
                    })
                }
            }
        };
        self.last_contact = Instant::now();
        Ok(joined)
    }

    /// Records the generation, computes the assignment when this member leads, and sends
    /// SyncGroup with it.
    async fn sync(&mut self, joined: JoinGroupResponse) -> Result<Joined> {
        let join_timeout = self.config.rebalance_timeout + self.config.request_timeout;
        let member_id = joined.member_id.to_string();
        let protocol = joined
            .protocol_name
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let assignor = Assignor::from_protocol_name(&protocol)
            .ok_or_else(|| Error::Unsupported(format!("the group chose assignor {protocol:?}")))?;
        {
            let mut state = self.membership();
            state.member_id = member_id.clone();
            state.generation = joined.generation_id;
        }
        let leader = joined.leader.as_str() == member_id;
        self.last_leader = joined.leader.to_string();
        self.members = joined.members.len();
        self.membership().leader = leader;
        // A static leader that rejoined a stable group gets `skip_assignment`: the group
        // keeps its assignment, the leader only syncs.
        let assignments = if leader && !joined.skip_assignment {
            self.lead(assignor, &joined.members).await?
        } else {
            Vec::new()
        };
        tracing::debug!(group = %self.config.group_id, generation = joined.generation_id, leader, %protocol, "joined; SyncGroup sent");

        let request = SyncGroupRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id(joined.generation_id)
            .with_member_id(StrBytes::from_string(member_id))
            .with_group_instance_id(self.instance_id())
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_string(protocol)))
            .with_assignments(assignments);
        let response = self.coordinator.sync(request, join_timeout).await?;
        check("SyncGroup", response.error_code)?;
        self.last_contact = Instant::now();
        self.membership().protocol = Some(assignor);
        Ok(Joined {
            generation: joined.generation_id,
            assignor,
            partitions: decode_assignment(&response.assignment)?,
        })
    }

    /// The leader's job: decode every member's subscription and compute the assignment.
    async fn lead(
        &mut self,
        assignor: Assignor,
        members: &[JoinGroupResponseMember],
    ) -> Result<Vec<SyncGroupRequestAssignment>> {
        let subscriptions = members
            .iter()
            .map(|m| {
                let (topics, owned) = decode_subscription(&m.metadata)?;
                Ok(MemberSubscription {
                    member_id: m.member_id.to_string(),
                    topics,
                    owned,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut topics: Vec<String> = subscriptions
            .iter()
            .flat_map(|s| s.topics.clone())
            .collect();
        topics.sort();
        topics.dedup();
        let counts: BTreeMap<String, i32> = self
            .coordinator
            .partition_counts(&topics)
            .await?
            .into_iter()
            .map(|(t, n)| (t, i32::try_from(n).unwrap_or(i32::MAX)))
            .collect();
        self.partition_counts = counts
            .iter()
            .filter(|(t, _)| self.config.topics.contains(t))
            .map(|(t, n)| (t.clone(), *n as usize))
            .collect();
        let plan = assignor.assign(&subscriptions, &counts);
        tracing::info!(group = %self.config.group_id, members = members.len(), assignor = assignor.protocol_name(), "leader assigned partitions");
        Ok(plan
            .into_iter()
            .map(|(member, partitions)| {
                SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_string(member))
                    .with_assignment(encode_assignment(&partitions))
            })
            .collect())
    }
}
