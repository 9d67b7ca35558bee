//! The member's link to its group coordinator: the requests the state machine sends, behind
//! a trait, so that tests can drive the state machine with a scripted coordinator (the seam),
//! and the real link over this crate's connections.

use std::{collections::BTreeMap, future::Future, time::Duration};

use kafka_protocol::{
    messages::{
        leave_group_request::MemberIdentity, ConsumerGroupHeartbeatRequest,
        ConsumerGroupHeartbeatResponse, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
        JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, SyncGroupRequest,
        SyncGroupResponse,
    },
    protocol::StrBytes,
};
use uuid::Uuid;

use crate::{
    connection::Connection, describe::CONSUMER_HEARTBEAT_VERSIONS, error::Result,
    offsets::GroupAdmin,
};

/// What the member's state machine asks of the group coordinator (and, for partition counts,
/// of any broker). Each call goes to the coordinator it knows, finding it first if needed.
pub(crate) trait Coordinator: Send + 'static {
    /// JoinGroup, answered once the group's members have rejoined (within `timeout`). A
    /// static member needs JoinGroup v5 or later: without it the broker would silently treat
    /// the member as dynamic.
    fn join(
        &mut self,
        request: JoinGroupRequest,
        static_member: bool,
        timeout: Duration,
    ) -> impl Future<Output = Result<JoinGroupResponse>> + Send;

    fn sync(
        &mut self,
        request: SyncGroupRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<SyncGroupResponse>> + Send;

    fn heartbeat(
        &mut self,
        request: HeartbeatRequest,
    ) -> impl Future<Output = Result<HeartbeatResponse>> + Send;

    /// LeaveGroup for this one member, in the request shape the coordinator's version takes.
    fn leave(
        &mut self,
        member_id: String,
        instance_id: Option<StrBytes>,
    ) -> impl Future<Output = Result<LeaveGroupResponse>> + Send;

    /// Consumer protocol (KIP-848): one ConsumerGroupHeartbeat, which joins, reports the
    /// partitions owned, receives the assignment and leaves.
    fn consumer_heartbeat(
        &mut self,
        request: ConsumerGroupHeartbeatRequest,
    ) -> impl Future<Output = Result<ConsumerGroupHeartbeatResponse>> + Send;

    /// Whether the group's coordinator speaks the consumer protocol (ConsumerGroupHeartbeat
    /// v1, as Kafka 4.0 does).
    fn offers_consumer_protocol(&mut self) -> impl Future<Output = Result<bool>> + Send;

    /// The ids of those of `topics` that exist (the consumer protocol names topics by id).
    fn topic_ids(
        &mut self,
        topics: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, Uuid>>> + Send;

    /// How many partitions each of `topics` has now.
    fn partition_counts(
        &mut self,
        topics: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, usize>>> + Send;

    /// The coordinator moved or its connection failed: look it up again before the next
    /// request.
    fn forget(&mut self) -> impl Future<Output = ()> + Send;
}

/// The real link: a dedicated connection to the coordinator (JoinGroup holds it for a whole
/// rebalance, so it is not shared with commits), found through the group admin.
pub(crate) struct Link {
    pub admin: GroupAdmin,
    pub group_id: String,
    pub connection: Option<Connection>,
}

impl Link {
    async fn connection(&mut self) -> Result<&Connection> {
        let usable = self.connection.as_ref().is_some_and(|c| !c.is_broken());
        if !usable {
            let address = self.admin.coordinator(&self.group_id).await?;
            tracing::debug!(group = %self.group_id, coordinator = %address, "connecting to the coordinator");
            self.connection = Some(self.admin.cluster.dedicated(&address).await?);
        }
        Ok(self.connection.as_ref().expect("just connected"))
    }
}

impl Coordinator for Link {
    async fn join(
        &mut self,
        request: JoinGroupRequest,
        static_member: bool,
        timeout: Duration,
    ) -> Result<JoinGroupResponse> {
        let connection = self.connection().await?;
        let versions = if static_member { 5..=9 } else { 1..=9 };
        let version = connection.version::<JoinGroupRequest>(versions)?;
        connection.send_lenient(&request, version, timeout).await
    }

    async fn sync(
        &mut self,
        request: SyncGroupRequest,
        timeout: Duration,
    ) -> Result<SyncGroupResponse> {
        let connection = self.connection().await?;
        let version = connection.version::<SyncGroupRequest>(1..=5)?;
        connection.send_lenient(&request, version, timeout).await
    }

    async fn heartbeat(&mut self, request: HeartbeatRequest) -> Result<HeartbeatResponse> {
        let connection = self.connection().await?;
        let version = connection.version::<HeartbeatRequest>(0..=4)?;
        connection.send(&request, version).await
    }

    async fn leave(
        &mut self,
        member_id: String,
        instance_id: Option<StrBytes>,
    ) -> Result<LeaveGroupResponse> {
        let group_id = self.group_id.clone();
        let connection = self.connection().await?;
        let version = connection.version::<LeaveGroupRequest>(0..=5)?;
        let mut request = LeaveGroupRequest::default().with_group_id(
            kafka_protocol::messages::GroupId(StrBytes::from_string(group_id)),
        );
        if version >= 3 {
            request = request.with_members(vec![MemberIdentity::default()
                .with_member_id(StrBytes::from_string(member_id))
                .with_group_instance_id(instance_id)
                .with_reason(Some(StrBytes::from_static_str("the application left")))]);
        } else {
            request = request.with_member_id(StrBytes::from_string(member_id));
        }
        connection.send(&request, version).await
    }

    async fn consumer_heartbeat(
        &mut self,
        request: ConsumerGroupHeartbeatRequest,
    ) -> Result<ConsumerGroupHeartbeatResponse> {
        let connection = self.connection().await?;
        let version =
            connection.version::<ConsumerGroupHeartbeatRequest>(CONSUMER_HEARTBEAT_VERSIONS)?;
        connection.send(&request, version).await
    }

    async fn offers_consumer_protocol(&mut self) -> Result<bool> {
        self.admin.offers_consumer_protocol(&self.group_id).await
    }

    async fn topic_ids(&mut self, topics: &[String]) -> Result<BTreeMap<String, Uuid>> {
        self.admin.cluster.topic_ids(topics).await
    }

    async fn partition_counts(&mut self, topics: &[String]) -> Result<BTreeMap<String, usize>> {
        let metadata = self.admin.cluster.metadata(topics).await?;
        Ok(metadata.partition_counts.into_iter().collect())
    }

    async fn forget(&mut self) {
        self.connection = None;
        self.admin.forget_coordinator(&self.group_id).await;
    }
}
