//! A member of a consumer group: join, (as leader) assign, sync, heartbeat, leave, and
//! recover from every normal group event. Runs as its own task; the application sees a
//! stream of [`GroupEvent`]s and commits through [`GroupMember::commit`].
//!
//! Two rebalance protocols, chosen by the assignor the group agrees on:
//! - eager (`rskafka-sticky`, `range`): on a rebalance the member revokes everything, then
//!   rejoins; every partition pauses for the whole rebalance.
//! - incremental cooperative (KIP-429, `cooperative-sticky`): the member rejoins while it
//!   keeps fetching and committing, and afterwards revokes only what the new assignment no
//!   longer gives it. If it revoked anything it rejoins once more, so the leader can hand
//!   those partitions, now free, to their new owner.
//!
//! Every state change and retry is logged at debug level, so a member that waits says why.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex as StdMutex},
    time::{Duration, Instant},
};

use kafka_protocol::{
    messages::{
        join_group_request::JoinGroupRequestProtocol, leave_group_request::MemberIdentity,
        sync_group_request::SyncGroupRequestAssignment, GroupId, HeartbeatRequest,
        JoinGroupRequest, LeaveGroupRequest, SyncGroupRequest,
    },
    protocol::StrBytes,
    ResponseError,
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{
    assignor::{Assignor, MemberSubscription},
    backoff::Backoff,
    cluster::Cluster,
    connection::Connection,
    consumer_protocol::{
        decode_assignment, decode_subscription, encode_assignment, encode_subscription,
    },
    error::{check, protocol_error, Error, Result},
    offsets::{self, coordinator_trouble, GroupAdmin},
    security::Security,
    TopicPartition,
};

/// Settings of one group member.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Bootstrap brokers as `host:port`.
    pub bootstrap: Vec<String>,
    pub group_id: String,
    pub topics: Vec<String>,
    pub client_id: String,
    /// Static membership (KIP-345): a member that comes back under the same instance id
    /// within the session timeout takes its old place (and partitions) without a rebalance.
    /// Must be unique in the group; `None` for a dynamic member.
    pub group_instance_id: Option<String>,
    /// Without a heartbeat for this long, the coordinator drops the member and rebalances.
    pub session_timeout: Duration,
    /// How long the coordinator waits for members to rejoin during a rebalance; also how
    /// long this member waits for the application to finish a revocation.
    pub rebalance_timeout: Duration,
    /// How often to heartbeat; a rebalance is noticed within one interval.
    pub heartbeat_interval: Duration,
    /// Bound on every request except JoinGroup (which waits for the rebalance).
    pub request_timeout: Duration,
    /// How often the subscribed topics' partition counts are checked; partitions added to a
    /// topic are assigned at the rebalance this check starts.
    pub metadata_refresh: Duration,
    /// Assignors offered, in order of preference. The group uses the first one every member
    /// offers.
    pub assignors: Vec<Assignor>,
    /// TLS and SASL for every connection of the member.
    pub security: Security,
    /// Whether the group's leader sends LeaveGroup when it stops, like every other member
    /// (the default, right on Kafka: the coordinator elects a new leader among the members
    /// that rejoin, at once). `false` only for a broker that strands a group whose leader
    /// leaves while it re-forms (nisshi 0.7 keeps the departed member as leader, and every
    /// later member waits for its assignment forever): a stopping leader with other members
    /// then lets its session expire, so the group waits one session timeout, not forever.
    pub leader_sends_leave_group: bool,
}

impl GroupConfig {
    /// Kafka's consumer defaults: 45 s session, 5 min rebalance, 3 s heartbeat; the
    /// cooperative sticky assignor first, then the eager ones for groups with older members
    /// or other clients.
    pub fn new(bootstrap: Vec<String>, group_id: impl Into<String>, topics: Vec<String>) -> Self {
        Self {
            bootstrap,
            group_id: group_id.into(),
            topics,
            client_id: "kafka-group".into(),
            group_instance_id: None,
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            metadata_refresh: Duration::from_secs(30),
            assignors: vec![
                Assignor::CooperativeSticky,
                Assignor::Sticky,
                Assignor::Range,
            ],
            security: Security::default(),
            leader_sends_leave_group: true,
        }
    }

    /// The settings' mistakes, as [`Error::Config`]; [`GroupMember::start`] checks them too.
    pub fn validate(&self) -> Result<()> {
        let problem = if self.bootstrap.is_empty() {
            Some("at least one bootstrap broker is needed")
        } else if self.group_id.is_empty() {
            Some("the group id must not be empty")
        } else if self.topics.is_empty() {
            Some("subscribe to at least one topic")
        } else if self.assignors.is_empty() {
            Some("offer at least one assignor")
        } else if self.heartbeat_interval >= self.session_timeout {
            Some("the heartbeat interval must be shorter than the session timeout")
        } else if self.group_instance_id.as_deref() == Some("") {
            Some("the group instance id must not be empty (leave it unset for a dynamic member)")
        } else {
            None
        };
        match problem {
            Some(p) => Err(Error::Config(p.into())),
            None => Ok(()),
        }
    }
}

/// What the application must act on.
#[derive(Debug)]
pub enum GroupEvent {
    /// This member now owns exactly `partitions` (generation `generation`); `added` are the
    /// ones it did not own before, to start fetching. Under the eager protocol everything was
    /// revoked first, so `added == partitions`.
    Assigned {
        generation: i32,
        partitions: Vec<TopicPartition>,
        added: Vec<TopicPartition>,
    },
    /// This member must let go of these partitions: stop fetching them, write and commit
    /// what was read, then drop (or [`Revocation::done`]) the revocation. Under the
    /// cooperative protocol these are only the partitions that move; the others keep their
    /// fetchers. The member goes on only after the acknowledgement, the rebalance timeout, or
    /// a [`GroupMember::leave`].
    Revoked(Revocation),
}

#[derive(Debug)]
pub struct Revocation {
    pub partitions: Vec<TopicPartition>,
    /// `true` when the coordinator already dropped this member (session expired): the
    /// partitions may belong to someone else by now and commits will be refused, so the
    /// application should discard uncommitted work rather than commit it.
    pub lost: bool,
    ack: Option<oneshot::Sender<()>>,
}

impl Revocation {
    /// Tells the member the application let go of the partitions.
    pub fn done(mut self) {
        if let Some(ack) = self.ack.take() {
            let _ = ack.send(());
        }
    }
}

impl Drop for Revocation {
    fn drop(&mut self) {
        if let Some(ack) = self.ack.take() {
            let _ = ack.send(());
        }
    }
}

/// What the application and the member task both see.
#[derive(Debug, Default, Clone)]
struct Membership {
    member_id: String,
    generation: i32,
    assigned: Vec<TopicPartition>,
    /// Between an assignment and the next rebalance.
    stable: bool,
    /// The assignor (and so the rebalance protocol) of the current generation.
    protocol: Option<Assignor>,
    /// Whether this member leads the current generation (computes the assignment).
    leader: bool,
    /// Why the last attempt to join failed, until one succeeds.
    join_error: Option<Error>,
}

enum Command {
    Leave(oneshot::Sender<Result<()>>),
}

/// Handle to a running group member. Dropping it without [`leave`](Self::leave) stops the
/// member abruptly, like a crash: the coordinator notices after the session timeout.
pub struct GroupMember {
    group_id: String,
    instance_id: Option<String>,
    admin: GroupAdmin,
    state: Arc<StdMutex<Membership>>,
    commands: mpsc::Sender<Command>,
    task: StdMutex<Option<JoinHandle<()>>>,
}

impl GroupMember {
    /// Starts joining the group in the background. Assignments arrive on the returned
    /// receiver; keep reading it (a revocation waits for the application). The receiver
    /// ends when the member stops: after [`leave`](Self::leave), or when another process
    /// took over its group instance id (fenced).
    pub fn start(config: GroupConfig) -> Result<(Self, mpsc::UnboundedReceiver<GroupEvent>)> {
        config.validate()?;
        let cluster = Arc::new(Cluster::new(
            config.bootstrap.clone(),
            config.client_id.clone(),
            config.request_timeout,
            config.security.clone(),
        ));
        let admin = GroupAdmin::with_cluster(cluster);
        let state = Arc::new(StdMutex::new(Membership::default()));
        let (events, receiver) = mpsc::unbounded_channel();
        let (commands, command_receiver) = mpsc::channel(1);
        let task = MemberTask {
            admin: admin.clone(),
            config: config.clone(),
            state: Arc::clone(&state),
            events,
            connection: None,
            owned: Vec::new(),
            owned_generation: -1,
            partition_counts: BTreeMap::new(),
            last_contact: Instant::now(),
            last_leader: String::new(),
            members: 0,
        };
        let task = tokio::spawn(task.run(command_receiver));
        Ok((
            Self {
                group_id: config.group_id,
                instance_id: config.group_instance_id,
                admin,
                state,
                commands,
                task: StdMutex::new(Some(task)),
            },
            receiver,
        ))
    }

    /// Commits `offsets` (the next offset to read, per partition) as this member of the
    /// current generation. Under the cooperative protocol this also works while the group
    /// rebalances, except in the short moment between JoinGroup and SyncGroup. Fails with
    /// `RebalanceInProgress`, `IllegalGeneration` or `UnknownMemberId` when the group moved
    /// on; the owner then starts from the last successful commit, so nothing is skipped.
    pub async fn commit(&self, offsets: &BTreeMap<TopicPartition, i64>) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let identity = {
            let state = self.state.lock().expect("membership lock");
            offsets::MemberIdentity {
                member_id: state.member_id.clone(),
                generation: state.generation,
                instance_id: self.instance_id.clone(),
            }
        };
        self.admin
            .commit_as(&self.group_id, &identity, offsets)
            .await
    }

    /// The group's committed offsets for `partitions` (`None`: nothing committed yet).
    pub async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<i64>>> {
        self.admin.committed(&self.group_id, partitions).await
    }

    /// The partitions this member owns right now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.state.lock().expect("membership lock").assigned.clone()
    }

    /// The member id the coordinator gave this member (empty before the first join).
    pub fn member_id(&self) -> String {
        self.state
            .lock()
            .expect("membership lock")
            .member_id
            .clone()
    }

    pub fn generation(&self) -> i32 {
        self.state.lock().expect("membership lock").generation
    }

    /// Whether this member led the generation it last joined.
    pub fn is_leader(&self) -> bool {
        self.state.lock().expect("membership lock").leader
    }

    /// Whether the member holds an assignment of the current generation (not joining or
    /// rebalancing).
    pub fn is_stable(&self) -> bool {
        self.state.lock().expect("membership lock").stable
    }

    /// Why the member is not in the group yet, when its last attempt to join failed (a
    /// refused group authorization, an unreachable coordinator...). `None` once it joined.
    pub fn join_problem(&self) -> Option<Error> {
        self.state
            .lock()
            .expect("membership lock")
            .join_error
            .clone()
    }

    /// Offsets and lag without membership, sharing this member's connections.
    pub fn admin(&self) -> &GroupAdmin {
        &self.admin
    }

    /// Leaves the group so it rebalances at once. Commit before calling this. A revocation
    /// the application has not acknowledged yet is not waited for: leaving says the
    /// application is done. The member stops; later calls fail with [`Error::Stopped`].
    pub async fn leave(&self) -> Result<()> {
        let (reply, result) = oneshot::channel();
        if self.commands.send(Command::Leave(reply)).await.is_err() {
            return Err(Error::Stopped);
        }
        let result = result.await.unwrap_or(Err(Error::Stopped));
        let task = self.task.lock().expect("task lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
        result
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// Why the stable phase ended.
enum Interruption {
    /// The group is rebalancing (or this member starts one): rejoin with the same member id.
    Rebalance,
    /// The coordinator no longer knows this member (or its generation): partitions are lost.
    Lost,
    /// Another process joined with this member's group instance id.
    Fenced,
    Leave(oneshot::Sender<Result<()>>),
    /// Every handle is gone.
    Abandoned,
}

/// A successful JoinGroup + SyncGroup.
struct Joined {
    generation: i32,
    assignor: Assignor,
    partitions: Vec<TopicPartition>,
}

struct MemberTask {
    admin: GroupAdmin,
    config: GroupConfig,
    state: Arc<StdMutex<Membership>>,
    events: mpsc::UnboundedSender<GroupEvent>,
    /// Our own connection to the coordinator: JoinGroup blocks it for a whole rebalance, so
    /// it is not shared with commits.
    connection: Option<Connection>,
    /// What this member owns, or (eager protocol, mid-rebalance) owned until the revocation:
    /// offered to the sticky assignors when it rejoins.
    owned: Vec<TopicPartition>,
    /// The generation `owned` was assigned in.
    owned_generation: i32,
    /// Partitions per subscribed topic at the last check; a change starts a rebalance.
    partition_counts: BTreeMap<String, usize>,
    /// Last answer from the coordinator that proves this member is still in the group.
    last_contact: Instant,
    /// The member id of that generation's leader, for the logs.
    last_leader: String,
    /// How many members that generation had (known to its leader only).
    members: usize,
}

impl MemberTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
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
                    self.state.lock().expect("membership lock").join_error = Some(e.clone());
                    let fenced = matches!(e.protocol(), Some(ResponseError::FencedInstanceId));
                    if let Some(command) = self.after_failed_join(&e, &mut commands).await {
                        return self.finish(Some(command)).await;
                    }
                    if fenced {
                        return self.fenced();
                    }
                    let delay = backoff.next_delay();
                    if matches!(e.protocol(), Some(ResponseError::RebalanceInProgress)) {
                        // Normal once: another member started a rebalance while this one
                        // synced. Again and again: the leader never completes the rebalance.
                        unassigned_rounds += 1;
                        if unassigned_rounds >= 3 {
                            tracing::warn!(group = %self.config.group_id, leader = %self.last_leader, rounds = unassigned_rounds, since = ?waiting_since.elapsed(), "still no assignment: the group's leader has not completed the rebalance; rejoining");
                        } else {
                            tracing::debug!(group = %self.config.group_id, error = %e, retry_in = ?delay, "the group is rebalancing again, rejoining");
                        }
                    } else if e.is_security()
                        || e.protocol().is_some_and(crate::authorization::is_refusal)
                    {
                        // The credentials or certificates were refused: nothing heals this
                        // but a change of settings on one side, so it is said at error.
                        tracing::error!(group = %self.config.group_id, error = %e, retry_in = ?delay, "the broker refused this member's TLS or SASL settings, or its user's access to the group");
                    } else {
                        tracing::warn!(group = %self.config.group_id, error = %e, retry_in = ?delay, "join failed, retrying");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        command = commands.recv() => return self.finish(command).await,
                    }
                    continue;
                }
            };
            self.state.lock().expect("membership lock").join_error = None;
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
                Interruption::Leave(reply) => {
                    // A leave needs no revocation: the application committed before asking.
                    return self.finish(Some(Command::Leave(reply))).await;
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
            self.state.lock().expect("membership lock").stable = false;
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

    /// Whether the group's current generation uses the incremental cooperative protocol.
    fn cooperative(&self) -> bool {
        self.protocol().is_some_and(Assignor::is_cooperative)
    }

    fn protocol(&self) -> Option<Assignor> {
        self.state.lock().expect("membership lock").protocol
    }

    /// Applies a new assignment: under the cooperative protocol, first revokes what it no
    /// longer contains. Returns whether anything was revoked, and a leave asked for meanwhile.
    async fn take_assignment(
        &mut self,
        joined: Joined,
        commands: &mut mpsc::Receiver<Command>,
    ) -> (bool, Option<Command>) {
        let new: BTreeSet<&TopicPartition> = joined.partitions.iter().collect();
        let current = self.state.lock().expect("membership lock").assigned.clone();
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
            self.state.lock().expect("membership lock").assigned = kept.clone();
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
            let mut state = self.state.lock().expect("membership lock");
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
        let _ = self.events.send(GroupEvent::Assigned {
            generation: joined.generation,
            partitions: joined.partitions,
            added,
        });
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
        let owns_something = !self
            .state
            .lock()
            .expect("membership lock")
            .assigned
            .is_empty();
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
        let mut state = self.state.lock().expect("membership lock");
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
                    Some(Command::Leave(reply)) => Interruption::Leave(reply),
                    None => Interruption::Abandoned,
                },
            }
        }
    }

    /// Whether a subscribed topic's partition count differs from the last check (the first
    /// check only records it). A failed check changes nothing.
    async fn partitions_changed(&mut self) -> bool {
        let counts = match self.admin.cluster.metadata(&self.config.topics).await {
            Ok(metadata) => metadata
                .partition_counts
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
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
            let mut state = self.state.lock().expect("membership lock");
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
        if self.events.send(GroupEvent::Revoked(revocation)).is_err() {
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
        let result = if self.may_leave() {
            self.leave_group().await
        } else {
            tracing::info!(group = %self.config.group_id, session_timeout = ?self.config.session_timeout, "stopping without LeaveGroup (this member may lead the group and leader_sends_leave_group is off): the coordinator drops it after the session timeout");
            Ok(())
        };
        if let Err(e) = &result {
            tracing::warn!(group = %self.config.group_id, error = %e, "leave failed; the coordinator drops the member after the session timeout");
        }
        if let Some(Command::Leave(reply)) = command {
            let _ = reply.send(result);
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
        let state = self.state.lock().expect("membership lock");
        state.stable && (!state.leader || self.members == 1)
    }

    async fn coordinator(&mut self) -> Result<&Connection> {
        let usable = self.connection.as_ref().is_some_and(|c| !c.is_broken());
        if !usable {
            let address = self.admin.coordinator(&self.config.group_id).await?;
            tracing::debug!(group = %self.config.group_id, coordinator = %address, "connecting to the coordinator");
            self.connection = Some(self.admin.cluster.dedicated(&address).await?);
        }
        Ok(self.connection.as_ref().expect("just connected"))
    }

    /// After an error: drop the coordinator when it moved or the connection failed; forget
    /// the member id when the coordinator does not know it.
    async fn recover_from(&mut self, error: &Error) {
        if coordinator_trouble(error) {
            tracing::debug!(group = %self.config.group_id, error = %error, "looking for the coordinator again");
            self.connection = None;
            self.admin.forget_coordinator(&self.config.group_id).await;
        }
        if matches!(error.protocol(), Some(ResponseError::UnknownMemberId)) {
            self.state
                .lock()
                .expect("membership lock")
                .member_id
                .clear();
        }
    }

    fn group_id(&self) -> GroupId {
        GroupId(StrBytes::from_string(self.config.group_id.clone()))
    }

    fn instance_id(&self) -> Option<StrBytes> {
        self.config
            .group_instance_id
            .clone()
            .map(StrBytes::from_string)
    }

    fn member(&self) -> (String, i32) {
        let state = self.state.lock().expect("membership lock");
        (state.member_id.clone(), state.generation)
    }

    async fn join_and_sync(&mut self) -> Result<Joined> {
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
            let connection = self.coordinator().await?;
            // Static membership needs JoinGroup v5; without it the broker would treat the
            // member as dynamic, silently.
            let version = connection.version::<JoinGroupRequest>(if static_member {
                5..=9
            } else {
                1..=9
            })?;
            let started = Instant::now();
            let response = connection
                .send_lenient(&request, version, join_timeout)
                .await?;
            tracing::debug!(group = %self.config.group_id, waited = ?started.elapsed(), error = response.error_code, generation = response.generation_id, version, "JoinGroup answered");
            match protocol_error(response.error_code) {
                None => break response,
                // Since JoinGroup v4 the coordinator first hands out a member id, then expects
                // the join again with it.
                Some(ResponseError::MemberIdRequired) => {
                    self.state.lock().expect("membership lock").member_id =
                        response.member_id.to_string();
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

        let member_id = joined.member_id.to_string();
        let protocol = joined
            .protocol_name
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let assignor = Assignor::from_protocol_name(&protocol)
            .ok_or_else(|| Error::Unsupported(format!("the group chose assignor {protocol:?}")))?;
        {
            let mut state = self.state.lock().expect("membership lock");
            state.member_id = member_id.clone();
            state.generation = joined.generation_id;
        }
        let leader = joined.leader.as_str() == member_id;
        self.last_leader = joined.leader.to_string();
        self.members = joined.members.len();
        self.state.lock().expect("membership lock").leader = leader;
        // A static leader that rejoined a stable group gets `skip_assignment`: the group
        // keeps its assignment, the leader only syncs.
        let assignments = if leader && !joined.skip_assignment {
            self.lead(assignor, &joined.members).await?
        } else {
            Vec::new()
        };
        tracing::debug!(group = %self.config.group_id, generation = joined.generation_id, leader, %protocol, "joined; SyncGroup sent");

        let request = SyncGroupRequest::default()
            .with_group_id(group_id)
            .with_generation_id(joined.generation_id)
            .with_member_id(StrBytes::from_string(member_id))
            .with_group_instance_id(self.instance_id())
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_string(protocol)))
            .with_assignments(assignments);
        let connection = self.coordinator().await?;
        let version = connection.version::<SyncGroupRequest>(1..=5)?;
        let response = connection
            .send_lenient(&request, version, join_timeout)
            .await?;
        check("SyncGroup", response.error_code)?;
        self.last_contact = Instant::now();
        self.state.lock().expect("membership lock").protocol = Some(assignor);
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
        members: &[kafka_protocol::messages::join_group_response::JoinGroupResponseMember],
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
        let metadata = self.admin.cluster.metadata(&topics).await?;
        let counts: BTreeMap<String, i32> = metadata
            .partition_counts
            .iter()
            .map(|(t, n)| (t.clone(), *n as i32))
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

    async fn heartbeat(&mut self) -> Result<()> {
        let (member_id, generation) = self.member();
        let request = HeartbeatRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(member_id))
            .with_group_instance_id(self.instance_id());
        let connection = self.coordinator().await?;
        let version = connection.version::<HeartbeatRequest>(0..=4)?;
        let response = connection.send(&request, version).await?;
        check("Heartbeat", response.error_code)
    }

    async fn leave_group(&mut self) -> Result<()> {
        let (member_id, _) = self.member();
        if member_id.is_empty() {
            return Ok(());
        }
        let group_id = self.group_id();
        let instance_id = self.instance_id();
        let connection = self.coordinator().await?;
        let version = connection.version::<LeaveGroupRequest>(0..=5)?;
        let mut request = LeaveGroupRequest::default().with_group_id(group_id);
        if version >= 3 {
            request = request.with_members(vec![MemberIdentity::default()
                .with_member_id(StrBytes::from_string(member_id))
                .with_group_instance_id(instance_id)
                .with_reason(Some(StrBytes::from_static_str("the application left")))]);
        } else {
            request = request.with_member_id(StrBytes::from_string(member_id));
        }
        let response = connection.send(&request, version).await?;
        check("LeaveGroup", response.error_code)?;
        for member in &response.members {
            check("LeaveGroup", member.error_code)?;
        }
        *self.state.lock().expect("membership lock") = Membership::default();
        Ok(())
    }
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}
