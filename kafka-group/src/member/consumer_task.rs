//! The member under the consumer group protocol (KIP-848), as one task. There is no join
//! round and no group-wide barrier: the member heartbeats (ConsumerGroupHeartbeat) at the
//! interval the coordinator dictates, and each answer may carry this member's assignment.
//! The member then reconciles: it revokes first what the assignment no longer holds (the
//! application commits and lets go), reports what it owns on the next heartbeat, which is
//! the acknowledgement that lets the coordinator hand those partitions to their next owner,
//! and takes what was added. A member that joins or leaves pauses only the partitions that
//! move.
//!
//! `FENCED_MEMBER_EPOCH` or `UNKNOWN_MEMBER_ID`: the coordinator dropped this member; its
//! partitions are lost and it rejoins at epoch 0 with the same member id. It leaves with
//! epoch -1, or -2 as a static member (a temporary leave: it keeps its partitions for the
//! coordinator's session timeout, so a restart under the same instance id gets them back).
//!
//! Talks to the coordinator only through [`Coordinator`], so tests drive it with a script.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex as StdMutex, MutexGuard},
    time::{Duration, Instant},
};

use kafka_protocol::{
    messages::{
        consumer_group_heartbeat_request::TopicPartitions, ConsumerGroupHeartbeatRequest, GroupId,
        TopicName,
    },
    protocol::StrBytes,
    ResponseError,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    config::GroupConfig,
    coordinator::Coordinator,
    events::{GroupEvent, Revocation},
    reconcile::{by_topic_id, named, next_step, Step, Target},
    state::{self, Command, Membership},
    task::millis,
};
use crate::{
    backoff::Backoff,
    error::{protocol_error, Error, Result},
    offsets::coordinator_trouble,
    TopicPartition,
};

const API: &str = "ConsumerGroupHeartbeat";
/// The member epoch of a member that leaves for good.
const LEAVE_EPOCH: i32 = -1;
/// The member epoch of a static member that leaves for a while (a restart): the coordinator
/// keeps its assignment until its session expires.
const TEMPORARY_LEAVE_EPOCH: i32 = -2;

/// A revocation the application has not acknowledged yet.
struct Revoking {
    partitions: Vec<TopicPartition>,
    acked: oneshot::Receiver<()>,
    deadline: tokio::time::Instant,
}

/// What the member does after a failed heartbeat.
enum AfterError {
    /// Try again after a pause.
    Retry,
    /// The coordinator dropped this member: its partitions are lost; rejoin at once.
    Lost,
    /// Another process took over this member's group instance id.
    Fenced,
}

pub(super) struct ConsumerTask<C> {
    coordinator: C,
    config: GroupConfig,
    state: Arc<StdMutex<Membership>>,
    events: mpsc::Sender<GroupEvent>,
    /// Made by this member once, kept for its whole life (KIP-1082), rejoins included.
    member_id: String,
    /// 0 to join; then what the coordinator answers.
    epoch: i32,
    /// What the application owns: told `Assigned`, not yet told `Revoked`.
    owned: BTreeSet<TopicPartition>,
    /// The coordinator's latest assignment for this member.
    target: Target,
    ids: BTreeMap<String, Uuid>,
    names: BTreeMap<Uuid, String>,
    /// The heartbeat interval the coordinator dictates.
    interval: Duration,
    /// Last answer that proves this member is still in the group.
    last_contact: Instant,
    /// The next heartbeat carries every field: joining, or after an error (the coordinator
    /// may have lost what it was told, e.g. after a coordinator move).
    full: bool,
    /// `owned` changed since the coordinator last heard it.
    report: bool,
    /// Whether the coordinator has answered this member at least once (so it has something
    /// to leave).
    joined: bool,
}

impl<C: Coordinator> ConsumerTask<C> {
    pub fn new(
        coordinator: C,
        config: GroupConfig,
        state: Arc<StdMutex<Membership>>,
        events: mpsc::Sender<GroupEvent>,
    ) -> Self {
        Self {
            coordinator,
            config,
            state,
            events,
            member_id: Uuid::now_v7().to_string(),
            epoch: 0,
            owned: BTreeSet::new(),
            target: Target::new(),
            ids: BTreeMap::new(),
            names: BTreeMap::new(),
            interval: Duration::from_secs(5),
            last_contact: Instant::now(),
            full: true,
            report: false,
            joined: false,
        }
    }

    /// The member's life, from its first heartbeat to its leave: heartbeat when due, act on
    /// the answer, and meanwhile wait for the application's revocation and for a leave.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut backoff = Backoff::unbounded();
        let mut revoking: Option<Revoking> = None;
        let mut next = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => {
                    match self.heartbeat().await {
                        Ok(()) => {
                            backoff.reset();
                            next = tokio::time::Instant::now() + self.interval;
                        }
                        Err(e) => match self.after_error(&e).await {
                            AfterError::Retry => {
                                next = tokio::time::Instant::now() + backoff.next_delay();
                            }
                            AfterError::Lost => {
                                // A revocation still pending is overtaken: everything goes.
                                revoking = None;
                                if let Some(command) = self.lose_everything(&mut commands).await {
                                    return self.leave(Some(command)).await;
                                }
                                next = tokio::time::Instant::now();
                            }
                            AfterError::Fenced => {
                                drop(revoking);
                                if let Some(command) = self.lose_everything(&mut commands).await {
                                    return self.leave(Some(command)).await;
                                }
                                tracing::error!(group = %self.config.group_id, instance = ?self.config.group_instance_id, "another member joined with this group instance id: this one is fenced and stops");
                                return;
                            }
                        },
                    }
                }
                () = acknowledged(&mut revoking) => {
                    if let Some(done) = revoking.take() {
                        for tp in &done.partitions {
                            self.owned.remove(tp);
                        }
                        self.report = true;
                        self.announce(Vec::new()).await;
                        // The report is the acknowledgement the coordinator waits for.
                        next = tokio::time::Instant::now();
                    }
                }
                command = commands.recv() => return self.leave(command).await,
            }
            if revoking.is_none() && self.reconcile(&mut revoking).await {
                next = tokio::time::Instant::now();
            }
        }
    }

    /// One step towards the coordinator's assignment: a revocation to wait for, or partitions
    /// to take. Returns whether `owned` changed (to be reported at once).
    async fn reconcile(&mut self, revoking: &mut Option<Revoking>) -> bool {
        let (mut target, mut unnamed) = named(&self.target, &self.names);
        if unnamed {
            self.learn_topic_ids().await;
            (target, unnamed) = named(&self.target, &self.names);
            if unnamed {
                tracing::debug!(group = %self.config.group_id, "assigned partitions of a topic id this member cannot name yet; taking them later");
            }
        }
        match next_step(&self.owned, &target) {
            Step::Settled => {
                self.membership().stable = !unnamed;
                false
            }
            Step::Revoke(partitions) => {
                self.membership().stable = false;
                tracing::debug!(group = %self.config.group_id, epoch = self.epoch, partitions = ?partitions, "revoking; waiting for the application to let go");
                let (ack, acked) = oneshot::channel();
                let revocation = Revocation {
                    partitions: partitions.clone(),
                    lost: false,
                    ack: Some(ack),
                };
                if self
                    .events
                    .send(GroupEvent::Revoked(revocation))
                    .await
                    .is_ok()
                {
                    *revoking = Some(Revoking {
                        partitions,
                        acked,
                        deadline: tokio::time::Instant::now() + self.config.rebalance_timeout,
                    });
                }
                false
            }
            Step::Add(added) => {
                self.owned.extend(added.iter().cloned());
                self.membership().stable = !unnamed;
                self.report = true;
                self.announce(added).await;
                true
            }
        }
    }

    /// Tells the application what it owns now, `added` being new.
    async fn announce(&mut self, added: Vec<TopicPartition>) {
        let partitions: Vec<TopicPartition> = self.owned.iter().cloned().collect();
        self.membership().assigned = partitions.clone();
        tracing::info!(group = %self.config.group_id, protocol = "consumer", epoch = self.epoch, partitions = partitions.len(), added = added.len(), "assigned");
        let _ = self
            .events
            .send(GroupEvent::Assigned {
                generation: self.epoch,
                partitions,
                added,
            })
            .await;
    }

    /// The coordinator dropped this member: the application discards what it did not commit
    /// (its commits would be refused now) and the member rejoins as new, at epoch 0.
    async fn lose_everything(&mut self, commands: &mut mpsc::Receiver<Command>) -> Option<Command> {
        tracing::warn!(group = %self.config.group_id, member = %self.member_id, epoch = self.epoch, owned = self.owned.len(), "the coordinator dropped this member: its partitions are lost; rejoining");
        let partitions: Vec<TopicPartition> = std::mem::take(&mut self.owned).into_iter().collect();
        self.epoch = 0;
        self.target.clear();
        self.full = true;
        {
            let mut state = self.membership();
            state.assigned.clear();
            state.stable = false;
            state.generation = 0;
        }
        if partitions.is_empty() {
            return None;
        }
        let (ack, acked) = oneshot::channel();
        let revocation = Revocation {
            partitions,
            lost: true,
            ack: Some(ack),
        };
        if self
            .events
            .send(GroupEvent::Revoked(revocation))
            .await
            .is_err()
        {
            return None;
        }
        tokio::select! {
            _ = acked => None,
            () = tokio::time::sleep(self.config.rebalance_timeout) => {
                tracing::warn!(group = %self.config.group_id, "application did not finish revocation within the rebalance timeout");
                None
            }
            command = commands.recv() => command,
        }
    }

    /// One ConsumerGroupHeartbeat and what its answer says.
    async fn heartbeat(&mut self) -> Result<()> {
        let request = self.request(self.epoch);
        let started = Instant::now();
        let response = self.coordinator.consumer_heartbeat(request).await?;
        if let Some(error) = protocol_error(response.error_code) {
            tracing::debug!(group = %self.config.group_id, %error, message = ?response.error_message.as_deref(), "heartbeat refused");
            return Err(Error::Protocol { api: API, error });
        }
        self.last_contact = Instant::now();
        self.joined = true;
        self.full = false;
        self.report = false;
        if let Some(id) = response.member_id.as_ref().filter(|id| !id.is_empty()) {
            self.member_id = id.to_string();
        }
        if response.member_epoch != self.epoch {
            tracing::debug!(group = %self.config.group_id, from = self.epoch, to = response.member_epoch, took = ?started.elapsed(), "member epoch");
        }
        self.epoch = response.member_epoch;
        if response.heartbeat_interval_ms > 0 {
            self.interval = Duration::from_millis(response.heartbeat_interval_ms as u64);
        }
        if let Some(assignment) = response.assignment {
            self.target = assignment
                .topic_partitions
                .into_iter()
                .map(|t| (t.topic_id, t.partitions.into_iter().collect()))
                .collect();
        }
        let mut state = self.membership();
        state.member_id = self.member_id.clone();
        state.generation = self.epoch;
        state.join_error = None;
        Ok(())
    }

    /// The heartbeat for `epoch`. Unchanged fields are left out (null), as Kafka's clients
    /// do, except in a full request.
    fn request(&self, epoch: i32) -> ConsumerGroupHeartbeatRequest {
        let mut request = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.config.group_id.clone())))
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_member_epoch(epoch);
        if self.full {
            request = request
                .with_instance_id(
                    self.config
                        .group_instance_id
                        .clone()
                        .map(StrBytes::from_string),
                )
                .with_rebalance_timeout_ms(millis(self.config.rebalance_timeout))
                .with_subscribed_topic_names(Some(
                    self.config
                        .topics
                        .iter()
                        .map(|t| TopicName(StrBytes::from_string(t.clone())))
                        .collect(),
                ))
                // No regex subscription, said as an empty one, as librdkafka does: Kafka
                // reads it as none, and librdkafka's mock cluster requires both fields set
                // or both null (rdkafka_mock_cgrp.c, validate_subscription).
                .with_subscribed_topic_regex(Some(StrBytes::from_static_str("")))
                .with_server_assignor(
                    self.config
                        .server_assignor
                        .clone()
                        .map(StrBytes::from_string),
                );
        }
        if self.full || self.report {
            request = request.with_topic_partitions(Some(
                by_topic_id(&self.owned, &self.ids)
                    .into_iter()
                    .map(|(id, partitions)| {
                        TopicPartitions::default()
                            .with_topic_id(id)
                            .with_partitions(partitions)
                    })
                    .collect(),
            ));
        }
        request
    }

    /// What a failed heartbeat means, after reconnecting or noting the problem as it says.
    async fn after_error(&mut self, error: &Error) -> AfterError {
        let group = self.config.group_id.clone();
        self.full = true;
        match error.protocol() {
            Some(ResponseError::UnknownMemberId | ResponseError::FencedMemberEpoch)
                if self.epoch > 0 =>
            {
                return AfterError::Lost
            }
            Some(ResponseError::FencedInstanceId) => return AfterError::Fenced,
            // Refused while joining (epoch 0): nothing to lose; retried after a pause. The
            // mock cluster answers UNKNOWN_MEMBER_ID where Kafka answers
            // UNRELEASED_INSTANCE_ID (a static member whose earlier process is still in the
            // group).
            Some(ResponseError::UnknownMemberId | ResponseError::FencedMemberEpoch) => {
                tracing::info!(%group, error = %error, instance = ?self.config.group_instance_id, "refused while joining; retrying");
                return AfterError::Retry;
            }
            Some(ResponseError::UnreleasedInstanceId) => {
                // The previous process under this instance id has not left yet (or its
                // session has not expired): wait for it.
                tracing::info!(%group, instance = ?self.config.group_instance_id, "the group instance id is still held by an earlier member; waiting for it to be released");
                return AfterError::Retry;
            }
            _ => {}
        }
        if coordinator_trouble(error) {
            tracing::debug!(%group, %error, "looking for the coordinator again");
            self.coordinator.forget().await;
        } else if error.is_security()
            || error
                .protocol()
                .is_some_and(crate::authorization::is_refusal)
            || matches!(error, Error::Unsupported(_))
            || matches!(
                error.protocol(),
                Some(
                    ResponseError::UnsupportedAssignor
                        | ResponseError::InvalidRequest
                        | ResponseError::UnsupportedVersion
                        | ResponseError::GroupIdNotFound
                        | ResponseError::InconsistentGroupProtocol
                        | ResponseError::GroupMaxSizeReached
                )
            )
        {
            // A setting on one side must change; said at error, retried in case it does.
            tracing::error!(%group, %error, assignor = ?self.config.server_assignor, "the coordinator refused this member under the consumer group protocol");
        } else {
            tracing::warn!(%group, %error, "heartbeat failed, retrying");
        }
        if !self.joined || self.epoch == 0 {
            self.membership().join_error = Some(error.clone());
        }
        if !self.owned.is_empty() && self.last_contact.elapsed() > self.config.session_timeout {
            // The coordinator has certainly dropped this member by now.
            return AfterError::Lost;
        }
        AfterError::Retry
    }

    /// Learns the ids of the subscribed topics (a failure leaves the old ones).
    async fn learn_topic_ids(&mut self) {
        match self.coordinator.topic_ids(&self.config.topics).await {
            Ok(ids) => {
                self.names = ids.iter().map(|(name, id)| (*id, name.clone())).collect();
                self.ids = ids;
            }
            Err(e) => {
                tracing::debug!(group = %self.config.group_id, error = %e, "cannot look the topic ids up");
            }
        }
    }

    /// Leaves the group: epoch -1, or -2 for a static member's temporary leave (its
    /// partitions wait for its restart). A leave needs no revocation: the application
    /// committed before asking. Every handle gone (`None`) is a leave for good.
    async fn leave(mut self, command: Option<Command>) {
        let temporary = matches!(&command, Some(Command::Leave(leaving)) if leaving.temporary);
        let result = if self.joined {
            let epoch = if temporary && self.config.group_instance_id.is_some() {
                TEMPORARY_LEAVE_EPOCH
            } else {
                LEAVE_EPOCH
            };
            // Kafka requires the instance id with a static member's leave.
            let request = self.request(epoch).with_instance_id(
                self.config
                    .group_instance_id
                    .clone()
                    .map(StrBytes::from_string),
            );
            match self.coordinator.consumer_heartbeat(request).await {
                Ok(response) => match protocol_error(response.error_code) {
                    None
                    | Some(ResponseError::UnknownMemberId | ResponseError::FencedMemberEpoch) => {
                        Ok(())
                    }
                    Some(error) => Err(Error::Protocol { api: API, error }),
                },
                Err(e) => Err(e),
            }
        } else {
            Ok(())
        };
        match &result {
            Ok(()) => {
                tracing::info!(group = %self.config.group_id, member = %self.member_id, "left the group")
            }
            Err(e) => {
                tracing::warn!(group = %self.config.group_id, error = %e, "leave failed; the coordinator drops the member after its session timeout")
            }
        }
        *self.membership() = Membership::default();
        if let Some(Command::Leave(leaving)) = command {
            let _ = leaving.reply.send(result);
        }
    }

    fn membership(&self) -> MutexGuard<'_, Membership> {
        state::lock(&self.state)
    }
}

/// Resolves when the application acknowledged the pending revocation or the rebalance
/// timeout passed; never while none is pending.
async fn acknowledged(revoking: &mut Option<Revoking>) {
    match revoking {
        Some(pending) => {
            tokio::select! {
                _ = &mut pending.acked => {}
                () = tokio::time::sleep_until(pending.deadline) => {
                    tracing::warn!(partitions = pending.partitions.len(), "application did not finish revocation within the rebalance timeout");
                }
            }
        }
        None => std::future::pending().await,
    }
}
