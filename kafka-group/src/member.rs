//! A member of a consumer group: join, (as leader) assign, sync, heartbeat, leave, and
//! recover from every normal group event. Runs as its own task; the application sees a
//! stream of [`GroupEvent`]s and commits through [`GroupMember::commit`].

use std::{
    collections::BTreeMap,
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
    offsets::{coordinator_trouble, GroupAdmin},
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
    /// Without a heartbeat for this long, the coordinator drops the member and rebalances.
    pub session_timeout: Duration,
    /// How long the coordinator waits for members to rejoin during a rebalance; also how
    /// long this member waits for the application to finish a revocation.
    pub rebalance_timeout: Duration,
    /// How often to heartbeat; a rebalance is noticed within one interval.
    pub heartbeat_interval: Duration,
    /// Bound on every request except JoinGroup (which waits for the rebalance).
    pub request_timeout: Duration,
    /// Assignors offered, in order of preference. The group uses the first one every member
    /// offers.
    pub assignors: Vec<Assignor>,
}

impl GroupConfig {
    /// Kafka's consumer defaults: 45 s session, 5 min rebalance, 3 s heartbeat.
    pub fn new(bootstrap: Vec<String>, group_id: impl Into<String>, topics: Vec<String>) -> Self {
        Self {
            bootstrap,
            group_id: group_id.into(),
            topics,
            client_id: "kafka-group".into(),
            session_timeout: Duration::from_secs(45),
            rebalance_timeout: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            assignors: vec![Assignor::Sticky, Assignor::Range],
        }
    }

    fn validate(&self) -> Result<()> {
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
    /// This member now owns exactly these partitions (generation `generation`).
    Assigned {
        generation: i32,
        partitions: Vec<TopicPartition>,
    },
    /// This member must let go of these partitions: stop fetching them, write and commit
    /// what was read, then drop (or [`Revocation::done`]) the revocation. The member rejoins
    /// only after that, or after the rebalance timeout.
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
    /// Between an assignment and the next revocation.
    stable: bool,
}

enum Command {
    Leave(oneshot::Sender<Result<()>>),
}

/// Handle to a running group member. Dropping it without [`leave`](Self::leave) stops the
/// member abruptly, like a crash: the coordinator notices after the session timeout.
pub struct GroupMember {
    group_id: String,
    admin: GroupAdmin,
    state: Arc<StdMutex<Membership>>,
    commands: mpsc::Sender<Command>,
    task: StdMutex<Option<JoinHandle<()>>>,
}

impl GroupMember {
    /// Starts joining the group in the background. Assignments arrive on the returned
    /// receiver; keep reading it (a revocation waits for the application).
    pub fn start(config: GroupConfig) -> Result<(Self, mpsc::UnboundedReceiver<GroupEvent>)> {
        config.validate()?;
        let cluster = Arc::new(Cluster::new(
            config.bootstrap.clone(),
            config.client_id.clone(),
            config.request_timeout,
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
            previous: Vec::new(),
        };
        let task = tokio::spawn(task.run(command_receiver));
        Ok((
            Self {
                group_id: config.group_id,
                admin,
                state,
                commands,
                task: StdMutex::new(Some(task)),
            },
            receiver,
        ))
    }

    /// Commits `offsets` (the next offset to read, per partition) as this member of the
    /// current generation. Fails with `RebalanceInProgress`, `IllegalGeneration` or
    /// `UnknownMemberId` when the group moved on; the new owner then starts from the last
    /// successful commit, so nothing is skipped.
    pub async fn commit(&self, offsets: &BTreeMap<TopicPartition, i64>) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let (member_id, generation) = {
            let state = self.state.lock().expect("membership lock");
            (state.member_id.clone(), state.generation)
        };
        self.admin
            .commit_as(&self.group_id, generation, &member_id, offsets)
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

    /// Whether the member holds an assignment of the current generation (not joining or
    /// rebalancing).
    pub fn is_stable(&self) -> bool {
        self.state.lock().expect("membership lock").stable
    }

    /// Offsets and lag without membership, sharing this member's connections.
    pub fn admin(&self) -> &GroupAdmin {
        &self.admin
    }

    /// Leaves the group so it rebalances at once. Commit before calling this.
    /// The member stops; later calls fail with [`Error::Stopped`].
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
    /// The group is rebalancing: revoke, then rejoin with the same member id.
    Rebalance,
    /// The coordinator no longer knows this member (or its generation): partitions are lost.
    Lost,
    Leave(oneshot::Sender<Result<()>>),
    /// Every handle is gone.
    Abandoned,
}

struct MemberTask {
    admin: GroupAdmin,
    config: GroupConfig,
    state: Arc<StdMutex<Membership>>,
    events: mpsc::UnboundedSender<GroupEvent>,
    /// Our own connection to the coordinator: JoinGroup blocks it for a whole rebalance, so
    /// it is not shared with commits.
    connection: Option<Connection>,
    /// What this member owned before the current rebalance, offered to the sticky assignor.
    previous: Vec<TopicPartition>,
}

impl MemberTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut backoff = Backoff::unbounded();
        loop {
            let joined = tokio::select! {
                joined = self.join_and_sync() => joined,
                command = commands.recv() => {
                    // Leaving mid-join: the join is abandoned, the leave still sent.
                    return self.finish(command).await;
                }
            };
            match joined {
                Ok(partitions) => {
                    backoff.reset();
                    let generation = {
                        let mut state = self.state.lock().expect("membership lock");
                        state.assigned = partitions.clone();
                        state.stable = true;
                        state.generation
                    };
                    tracing::info!(group = %self.config.group_id, generation, partitions = partitions.len(), "assigned");
                    let _ = self.events.send(GroupEvent::Assigned {
                        generation,
                        partitions,
                    });
                }
                Err(e) => {
                    self.recover_from(&e).await;
                    if !matches!(e.protocol(), Some(ResponseError::RebalanceInProgress)) {
                        tracing::warn!(group = %self.config.group_id, error = %e, "join failed, retrying");
                        backoff.wait().await;
                    }
                    continue;
                }
            }

            // A leave needs no revocation: the application committed before asking.
            let lost = match self.stable(&mut commands).await {
                Interruption::Leave(reply) => {
                    return self.finish(Some(Command::Leave(reply))).await
                }
                Interruption::Abandoned => return self.finish(None).await,
                Interruption::Rebalance => false,
                Interruption::Lost => true,
            };
            if let Some(command) = self.revoke(lost, &mut commands).await {
                return self.finish(Some(command)).await;
            }
            if lost {
                tracing::warn!(group = %self.config.group_id, "membership lost, rejoining as a new member");
                self.previous.clear();
                self.state
                    .lock()
                    .expect("membership lock")
                    .member_id
                    .clear();
            } else {
                tracing::info!(group = %self.config.group_id, "rebalance, rejoining");
            }
        }
    }

    /// Heartbeats until something needs a rejoin or the application wants to leave.
    async fn stable(&mut self, commands: &mut mpsc::Receiver<Command>) -> Interruption {
        let mut last_ok = Instant::now();
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.heartbeat_interval,
            self.config.heartbeat_interval,
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => match self.heartbeat().await {
                    Ok(()) => last_ok = Instant::now(),
                    Err(e) => match e.protocol() {
                        Some(ResponseError::RebalanceInProgress) => return Interruption::Rebalance,
                        Some(ResponseError::UnknownMemberId | ResponseError::IllegalGeneration | ResponseError::FencedInstanceId) => {
                            return Interruption::Lost
                        }
                        _ => {
                            tracing::warn!(group = %self.config.group_id, error = %e, "heartbeat failed");
                            self.recover_from(&e).await;
                            if last_ok.elapsed() > self.config.session_timeout {
                                // The coordinator has certainly dropped us by now.
                                return Interruption::Lost;
                            }
                        }
                    },
                },
                command = commands.recv() => return match command {
                    Some(Command::Leave(reply)) => Interruption::Leave(reply),
                    None => Interruption::Abandoned,
                },
            }
        }
    }

    /// Tells the application to let go of its partitions and waits until it did (or the
    /// rebalance timeout passed), heartbeating meanwhile so the session stays alive. A leave
    /// asked for during the wait is returned to be handled after.
    async fn revoke(
        &mut self,
        lost: bool,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Option<Command> {
        let partitions = {
            let mut state = self.state.lock().expect("membership lock");
            state.stable = false;
            std::mem::take(&mut state.assigned)
        };
        self.previous = partitions.clone();
        if partitions.is_empty() {
            return None;
        }
        let (ack, acked) = oneshot::channel();
        let revocation = Revocation {
            partitions,
            lost,
            ack: Some(ack),
        };
        if self.events.send(GroupEvent::Revoked(revocation)).is_err() {
            return None;
        }
        let deadline = tokio::time::sleep(self.config.rebalance_timeout);
        tokio::pin!(deadline);
        tokio::pin!(acked);
        let mut ticker = tokio::time::interval(self.config.heartbeat_interval);
        let mut pending = None;
        loop {
            tokio::select! {
                _ = &mut acked => return pending,
                () = &mut deadline => {
                    tracing::warn!(group = %self.config.group_id, "application did not finish revocation within the rebalance timeout");
                    return pending;
                }
                _ = ticker.tick(), if !lost => {
                    // Errors here are expected (the group is rebalancing); only the session
                    // matters.
                    let _ = self.heartbeat().await;
                }
                command = commands.recv(), if pending.is_none() => {
                    pending = command;
                }
            }
        }
    }

    async fn finish(mut self, command: Option<Command>) {
        let result = self.leave_group().await;
        if let Err(e) = &result {
            tracing::warn!(group = %self.config.group_id, error = %e, "leave failed; the coordinator drops the member after the session timeout");
        }
        if let Some(Command::Leave(reply)) = command {
            let _ = reply.send(result);
        }
    }

    async fn coordinator(&mut self) -> Result<&Connection> {
        let usable = self.connection.as_ref().is_some_and(|c| !c.is_broken());
        if !usable {
            let address = self.admin.coordinator(&self.config.group_id).await?;
            self.connection = Some(self.admin.cluster.dedicated(&address).await?);
        }
        Ok(self.connection.as_ref().expect("just connected"))
    }

    /// After an error: drop the coordinator when it moved or the connection failed; forget
    /// the member id when the coordinator does not know it.
    async fn recover_from(&mut self, error: &Error) {
        if coordinator_trouble(error) {
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

    fn member(&self) -> (String, i32) {
        let state = self.state.lock().expect("membership lock");
        (state.member_id.clone(), state.generation)
    }

    async fn join_and_sync(&mut self) -> Result<Vec<TopicPartition>> {
        let group_id = self.group_id();
        let metadata = encode_subscription(&self.config.topics, &self.previous);
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
                .with_member_id(StrBytes::from_string(member_id))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(protocols.clone());
            let connection = self.coordinator().await?;
            let version = connection.version::<JoinGroupRequest>(1..=9)?;
            let response = connection
                .send_with_version(&request, version, join_timeout)
                .await?;
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

        let member_id = joined.member_id.to_string();
        let protocol = joined
            .protocol_name
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        {
            let mut state = self.state.lock().expect("membership lock");
            state.member_id = member_id.clone();
            state.generation = joined.generation_id;
        }
        let assignments = if joined.leader.as_str() == member_id {
            self.lead(&protocol, &joined.members).await?
        } else {
            Vec::new()
        };
        tracing::debug!(group = %self.config.group_id, generation = joined.generation_id, leader = joined.leader.as_str() == member_id, %protocol, "joined");

        let request = SyncGroupRequest::default()
            .with_group_id(group_id)
            .with_generation_id(joined.generation_id)
            .with_member_id(StrBytes::from_string(member_id))
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_string(protocol)))
            .with_assignments(assignments);
        let connection = self.coordinator().await?;
        let version = connection.version::<SyncGroupRequest>(1..=5)?;
        let response = connection
            .send_with_version(&request, version, join_timeout)
            .await?;
        check("SyncGroup", response.error_code)?;
        decode_assignment(&response.assignment)
    }

    /// The leader's job: decode every member's subscription and compute the assignment.
    async fn lead(
        &self,
        protocol: &str,
        members: &[kafka_protocol::messages::join_group_response::JoinGroupResponseMember],
    ) -> Result<Vec<SyncGroupRequestAssignment>> {
        let assignor = Assignor::from_protocol_name(protocol)
            .ok_or_else(|| Error::Unsupported(format!("the group chose assignor {protocol:?}")))?;
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
            .topics
            .iter()
            .map(|(t, ps)| (t.clone(), ps.len() as i32))
            .collect();
        let plan = assignor.assign(&subscriptions, &counts);
        tracing::info!(group = %self.config.group_id, members = members.len(), assignor = protocol, "leader assigned partitions");
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
            .with_member_id(StrBytes::from_string(member_id));
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
        let connection = self.coordinator().await?;
        let version = connection.version::<LeaveGroupRequest>(0..=5)?;
        let mut request = LeaveGroupRequest::default().with_group_id(group_id);
        if version >= 3 {
            request = request.with_members(vec![MemberIdentity::default()
                .with_member_id(StrBytes::from_string(member_id))
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
