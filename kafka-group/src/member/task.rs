//! The member's state machine, as one task: join (and, as leader, assign), sync, follow the
//! assignment (revoking first what moves), heartbeat, rejoin on a rebalance, rejoin as a new
//! member when the coordinator dropped this one, leave. It talks to the coordinator only
//! through [`Coordinator`], so tests drive it with a script.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex as StdMutex, MutexGuard},
    time::{Duration, Instant},
};

use kafka_protocol::{
    messages::{GroupId, HeartbeatRequest},
    protocol::StrBytes,
    ResponseError,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    config::GroupConfig,
    coordinator::Coordinator,
    events::{GroupEvent, Revocation},
    state::{self, Command, Leaving, Membership},
};
use crate::{
    assignor::Assignor,
    backoff::Backoff,
    error::{check, Error, Result},
    offsets::coordinator_trouble,
    TopicPartition,
};

/// Why the stable phase ended.
enum Interruption {
    /// The group is rebalancing (or this member starts one): rejoin with the same member id.
    Rebalance,
    /// The coordinator no longer knows this member (or its generation): partitions are lost.
    Lost,
    /// Another process joined with this member's group instance id.
    Fenced,
    Leave(Leaving),
    /// Every handle is gone.
    Abandoned,
}

/// A successful JoinGroup + SyncGroup.
pub(super) struct Joined {
    pub generation: i32,
    pub assignor: Assignor,
    pub partitions: Vec<TopicPartition>,
}

pub(super) struct MemberTask<C> {
    pub coordinator: C,
    pub config: GroupConfig,
    pub state: Arc<StdMutex<Membership>>,
    pub events: mpsc::Sender<GroupEvent>,
    /// What this member owns, or (eager protocol, mid-rebalance) owned until the revocation:
    /// offered to the sticky assignors when it rejoins.
    pub owned: Vec<TopicPartition>,
    /// The generation `owned` was assigned in.
    pub owned_generation: i32,
    /// Partitions per subscribed topic at the last check; a change starts a rebalance.
    pub partition_counts: BTreeMap<String, usize>,
    /// Last answer from the coordinator that proves this member is still in the group.
    pub last_contact: Instant,
    /// The member id of that generation's leader, for the logs.
    pub last_leader: String,
    /// How many members that generation had (known to its leader only).
    pub members: usize,
}

impl<C: Coordinator> MemberTask<C> {
    /// A member that has not joined yet and owns nothing.
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
            owned: Vec::new(),
            owned_generation: -1,
            partition_counts: BTreeMap::new(),
            last_contact: Instant::now(),
            last_leader: String::new(),
            members: 0,
        }
    }

    /// The member's life, from its first join to its leave. One piece on purpose: every
    /// state's way out is a branch of this loop, and which state follows which is read here,
    /// in one place.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut backoff = Backoff::unbounded();
        let mut unassigned_rounds = 0u32;
        let mut waiting_since = Instant::now();
        loop {
            let joined = tokio::select! {
                joined = self.join_and_sync() => joined,
                command = commands.recv() => {
                    // Leaving mid-join: the join is abandoned, the leave still sent.
                    return self.finish(command).await;
                }
            };
            let joined = match joined {
                Ok(joined) => joined,
                Err(e) => {
                    self.membership().join_error = Some(e.clone());
                    let fenced = matches!(e.protocol(), Some(ResponseError::FencedInstanceId));
                    if let Some(command) = self.after_failed_join(&e, &mut commands).await {
                        return self.finish(Some(command)).await;
                    }
                    if fenced {
                        return self.fenced();
                    }
                    let delay = backoff.next_delay();
                    if matches!(e.protocol(), Some(ResponseError::RebalanceInProgress)) {
                        unassigned_rounds += 1;
                    }
                    self.log_failed_join(&e, delay, unassigned_rounds, waiting_since);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        command = commands.recv() => return self.finish(command).await,
                    }
                    continue;
                }
            };
            self.membership().join_error = None;
            backoff.reset();
            unassigned_rounds = 0;
            waiting_since = Instant::now();
            let (revoked_any, pending) = self.take_assignment(joined, &mut commands).await;
            if let Some(command) = pending {
                return self.finish(Some(command)).await;
            }
            if revoked_any {
                // KIP-429: what this member gave up is unowned now; a second rebalance lets
                // the leader hand it to its new owner.
                tracing::debug!(group = %self.config.group_id, "revoked partitions are free; rejoining so they can be reassigned");
                continue;
            }

            let interruption = self.stable(&mut commands).await;
            waiting_since = Instant::now();
            let lost = match interruption {
                Interruption::Leave(leaving) => {
                    // A leave needs no revocation: the application committed before asking.
                    return self.finish(Some(Command::Leave(leaving))).await;
                }
                Interruption::Abandoned => return self.finish(None).await,
                Interruption::Fenced => {
                    if let Some(command) = self.revoke_everything(true, &mut commands).await {
                        return self.finish(Some(command)).await;
                    }
                    return self.fenced();
                }
                Interruption::Rebalance => false,
                Interruption::Lost => true,
            };
            self.membership().stable = false;
            if lost || !self.cooperative() {
                if let Some(command) = self.revoke_everything(lost, &mut commands).await {
                    return self.finish(Some(command)).await;
                }
            }
            if lost {
                tracing::warn!(group = %self.config.group_id, "membership lost, rejoining as a new member");
                self.forget_membership();
            } else {
                tracing::info!(group = %self.config.group_id, cooperative = self.cooperative(), owned = self.owned.len(), "rebalance, rejoining");
            }
        }
    }

    /// Says why a join failed, at the level its cause deserves.
    fn log_failed_join(
        &self,
        e: &Error,
        delay: Duration,
        unassigned_rounds: u32,
        waiting_since: Instant,
    ) {
        let group = &self.config.group_id;
        if matches!(e.protocol(), Some(ResponseError::RebalanceInProgress)) {
            // Normal once: another member started a rebalance while this one synced. Again
            // and again: the leader never completes the rebalance.
            if unassigned_rounds >= 3 {
                tracing::warn!(%group, leader = %self.last_leader, rounds = unassigned_rounds, since = ?waiting_since.elapsed(), "still no assignment: the group's leader has not completed the rebalance; rejoining");
            } else {
                tracing::debug!(%group, error = %e, retry_in = ?delay, "the group is rebalancing again, rejoining");
            }
        } else if e.is_security() || e.protocol().is_some_and(crate::authorization::is_refusal) {
            // The credentials or certificates were refused: nothing heals this but a change
            // of settings on one side, so it is said at error.
            tracing::error!(%group, error = %e, retry_in = ?delay, "the broker refused this member's TLS or SASL settings, or its user's access to the group");
        } else {
            tracing::warn!(%group, error = %e, retry_in = ?delay, "join failed, retrying");
        }
    }

    /// Whether the group's current generation uses the incremental cooperative protocol.
    fn cooperative(&self) -> bool {
        self.protocol().is_some_and(Assignor::is_cooperative)
    }

    fn protocol(&self) -> Option<Assignor> {
        self.membership().protocol
    }

    /// Applies a new assignment: under the cooperative protocol, first revokes what it no
    /// longer contains. Returns whether anything was revoked, and a leave asked for meanwhile.
    async fn take_assignment(
        &mut self,
        joined: Joined,
        commands: &mut mpsc::Receiver<Command>,
    ) -> (bool, Option<Command>) {
        let new: BTreeSet<&TopicPartition> = joined.partitions.iter().collect();
        let current = self.membership().assigned.clone();
        let revoked: Vec<TopicPartition> = current
            .iter()
            .filter(|tp| !new.contains(tp))
            .cloned()
            .collect();
        if !revoked.is_empty() {
            // Only the cooperative protocol gets here with partitions still owned.
            let kept: Vec<TopicPartition> = current
                .iter()
                .filter(|tp| new.contains(tp))
                .cloned()
                .collect();
            self.membership().assigned = kept.clone();
            self.owned = kept;
            if let Some(command) = self.revoke(revoked.clone(), false, commands).await {
                return (true, Some(command));
            }
        }
        let before: BTreeSet<TopicPartition> = current.into_iter().collect();
        let added: Vec<TopicPartition> = joined
            .partitions
            .iter()
            .filter(|tp| !before.contains(tp))
            .cloned()
            .collect();
        {
            let mut state = self.membership();
            state.assigned = joined.partitions.clone();
            state.stable = revoked.is_empty();
        }
        self.owned = joined.partitions.clone();
        self.owned_generation = joined.generation;
        tracing::info!(
            group = %self.config.group_id,
            generation = joined.generation,
            assignor = joined.assignor.protocol_name(),
            partitions = joined.partitions.len(),
            added = added.len(),
            revoked = revoked.len(),
            "assigned"
        );
        let _ = self
            .events
            .send(GroupEvent::Assigned {
                generation: joined.generation,
                partitions: joined.partitions,
                added,
            })
            .await;
        (!revoked.is_empty(), None)
    }

    /// After a failed JoinGroup/SyncGroup: reconnect or forget the member id as the error
    /// says, and give up the partitions still owned (cooperative protocol) once the
    /// coordinator has certainly dropped this member.
    async fn after_failed_join(
        &mut self,
        error: &Error,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Option<Command> {
        self.recover_from(error).await;
        let dropped = matches!(
            error.protocol(),
            Some(
                ResponseError::UnknownMemberId
                    | ResponseError::IllegalGeneration
                    | ResponseError::FencedInstanceId
            )
        ) || self.last_contact.elapsed() > self.config.session_timeout;
        let owns_something = !self.membership().assigned.is_empty();
        if dropped && owns_something {
            tracing::warn!(group = %self.config.group_id, error = %error, "no longer a member of the group: the partitions it owned are lost");
            let command = self.revoke_everything(true, commands).await;
            self.forget_membership();
            return command;
        }
        None
    }

    fn forget_membership(&mut self) {
        self.owned.clear();
        self.owned_generation = -1;
        let mut state = self.membership();
        state.member_id.clear();
        state.generation = -1;
    }

    fn fenced(self) {
        tracing::error!(group = %self.config.group_id, instance = ?self.config.group_instance_id, "another member joined with this group instance id: this one is fenced and stops");
        // Dropping the task (and its event sender) ends the application's event stream.
    }

    /// Heartbeats until something needs a rejoin or the application wants to leave; also
    /// watches the subscribed topics for added partitions.
    async fn stable(&mut self, commands: &mut mpsc::Receiver<Command>) -> Interruption {
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.heartbeat_interval,
            self.config.heartbeat_interval,
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut metadata_check = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.metadata_refresh,
            self.config.metadata_refresh,
        );
        metadata_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => match self.heartbeat().await {
                    Ok(()) => self.last_contact = Instant::now(),
                    Err(e) => match e.protocol() {
                        Some(ResponseError::RebalanceInProgress) => {
                            tracing::debug!(group = %self.config.group_id, "heartbeat: the group is rebalancing");
                            return Interruption::Rebalance;
                        }
                        Some(ResponseError::FencedInstanceId) => return Interruption::Fenced,
                        Some(ResponseError::UnknownMemberId | ResponseError::IllegalGeneration) => {
                            tracing::debug!(group = %self.config.group_id, error = %e, "heartbeat: the coordinator dropped this member");
                            return Interruption::Lost
                        }
                        _ => {
                            tracing::warn!(group = %self.config.group_id, error = %e, "heartbeat failed");
                            self.recover_from(&e).await;
                            if self.last_contact.elapsed() > self.config.session_timeout {
                                // The coordinator has certainly dropped us by now.
                                return Interruption::Lost;
                            }
                        }
                    },
                },
                _ = metadata_check.tick() => {
                    if self.partitions_changed().await {
                        return Interruption::Rebalance;
                    }
                }
                command = commands.recv() => return match command {
                    Some(Command::Leave(leaving)) => Interruption::Leave(leaving),
                    None => Interruption::Abandoned,
                },
            }
        }
    }

    /// Whether a subscribed topic's partition count differs from the last check (the first
    /// check only records it). A failed check changes nothing.
    async fn partitions_changed(&mut self) -> bool {
        let counts = match self.coordinator.partition_counts(&self.config.topics).await {
            Ok(counts) => counts,
            Err(e) => {
                tracing::debug!(group = %self.config.group_id, error = %e, "cannot check the topics' partitions");
                return false;
            }
        };
        let changed = !self.partition_counts.is_empty() && counts != self.partition_counts;
        if changed {
            tracing::info!(group = %self.config.group_id, before = ?self.partition_counts, now = ?counts, "the subscribed topics' partitions changed; rejoining so they are assigned");
        }
        self.partition_counts = counts;
        changed
    }

    async fn revoke_everything(
        &mut self,
        lost: bool,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Option<Command> {
        let partitions = {
            let mut state = self.membership();
            state.stable = false;
            std::mem::take(&mut state.assigned)
        };
        self.revoke(partitions, lost, commands).await
    }

    /// Tells the application to let go of `partitions` and waits until it did (or the
    /// rebalance timeout passed), heartbeating meanwhile so the session stays alive. A leave
    /// asked for meanwhile ends the wait (the application is done with every partition) and
    /// is returned.
    async fn revoke(
        &mut self,
        partitions: Vec<TopicPartition>,
        lost: bool,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Option<Command> {
        if partitions.is_empty() {
            return None;
        }
        tracing::debug!(group = %self.config.group_id, partitions = ?partitions, lost, "revoking; waiting for the application to let go");
        let (ack, acked) = oneshot::channel();
        let revocation = Revocation {
            partitions,
            lost,
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
        let started = Instant::now();
        let deadline = tokio::time::sleep(self.config.rebalance_timeout);
        tokio::pin!(deadline);
        tokio::pin!(acked);
        let mut ticker = tokio::time::interval(self.config.heartbeat_interval);
        loop {
            tokio::select! {
                _ = &mut acked => {
                    tracing::debug!(group = %self.config.group_id, took = ?started.elapsed(), "revocation done");
                    return None;
                }
                () = &mut deadline => {
                    tracing::warn!(group = %self.config.group_id, "application did not finish revocation within the rebalance timeout");
                    return None;
                }
                _ = ticker.tick(), if !lost => {
                    // Errors here are expected (the group may be rebalancing); only the
                    // session matters.
                    if let Err(e) = self.heartbeat().await {
                        tracing::debug!(group = %self.config.group_id, error = %e, "heartbeat while revoking");
                    }
                }
                command = commands.recv() => {
                    tracing::debug!(group = %self.config.group_id, "leaving while a revocation was pending");
                    // `None`: every handle is gone, nobody will acknowledge.
                    return command;
                }
            }
        }
    }

    /// Leaves the group so the coordinator rebalances at once instead of after the session
    /// timeout: every member leaves, the leader too (on Kafka the coordinator elects a new
    /// leader among the members that rejoin), unless `leader_sends_leave_group` is off.
    async fn finish(mut self, command: Option<Command>) {
        let temporary = matches!(&command, Some(Command::Leave(leaving)) if leaving.temporary);
        let result = if temporary {
            tracing::info!(group = %self.config.group_id, instance = ?self.config.group_instance_id, session_timeout = ?self.config.session_timeout, "leaving temporarily: no LeaveGroup, the instance's partitions wait for its return until its session expires");
            Ok(())
        } else if self.may_leave() {
            self.leave_group().await
        } else {
            tracing::info!(group = %self.config.group_id, session_timeout = ?self.config.session_timeout, "stopping without LeaveGroup (this member may lead the group and leader_sends_leave_group is off): the coordinator drops it after the session timeout");
            Ok(())
        };
        if let Err(e) = &result {
            tracing::warn!(group = %self.config.group_id, error = %e, "leave failed; the coordinator drops the member after the session timeout");
        }
        if let Some(Command::Leave(leaving)) = command {
            let _ = leaving.reply.send(result);
        }
    }

    /// With `leader_sends_leave_group` off: a member that may lead a group with other
    /// members does not leave (one in the middle of a rebalance may have just become the
    /// leader). A leader alone in its generation leaves, so the next worker of a group with
    /// history starts at once.
    fn may_leave(&self) -> bool {
        if self.config.leader_sends_leave_group {
            return true;
        }
        let state = self.membership();
        state.stable && (!state.leader || self.members == 1)
    }

    /// After an error: drop the coordinator when it moved or the connection failed; forget
    /// the member id when the coordinator does not know it.
    async fn recover_from(&mut self, error: &Error) {
        if coordinator_trouble(error) {
            tracing::debug!(group = %self.config.group_id, error = %error, "looking for the coordinator again");
            self.coordinator.forget().await;
        }
        if matches!(error.protocol(), Some(ResponseError::UnknownMemberId)) {
            self.membership().member_id.clear();
        }
    }

    pub(super) fn membership(&self) -> MutexGuard<'_, Membership> {
        state::lock(&self.state)
    }

    pub(super) fn group_id(&self) -> GroupId {
        GroupId(StrBytes::from_string(self.config.group_id.clone()))
    }

    pub(super) fn instance_id(&self) -> Option<StrBytes> {
        self.config
            .group_instance_id
            .clone()
            .map(StrBytes::from_string)
    }

    pub(super) fn member(&self) -> (String, i32) {
        let state = self.membership();
        (state.member_id.clone(), state.generation)
    }

    async fn heartbeat(&mut self) -> Result<()> {
        let (member_id, generation) = self.member();
        let request = HeartbeatRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(member_id))
            .with_group_instance_id(self.instance_id());
        let response = self.coordinator.heartbeat(request).await?;
        check("Heartbeat", response.error_code)
    }

    async fn leave_group(&mut self) -> Result<()> {
        let (member_id, _) = self.member();
        if member_id.is_empty() {
            return Ok(());
        }
        let response = self
            .coordinator
            .leave(member_id, self.instance_id())
            .await?;
        check("LeaveGroup", response.error_code)?;
        for member in &response.members {
            check("LeaveGroup", member.error_code)?;
        }
        *self.membership() = Membership::default();
        Ok(())
    }
}

pub(super) fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}
