//! A member of a consumer group: join, (as leader) assign, sync, heartbeat, leave, and
//! recover from every normal group event. Runs as its own task; the application sees a
//! stream of [`GroupEvent`]s and commits through [`GroupMember::commit`].
//!
//! Two group protocols, chosen by [`GroupConfig::protocol`]:
//! - the consumer protocol (KIP-848, `consumer_task`): the coordinator assigns; each member
//!   reconciles its own share, and nobody else pauses;
//! - the classic protocol (`task`, `join`), whose rebalance protocol the group's assignor
//!   decides:
//! - eager (`rskafka-sticky`, `range`): on a rebalance the member revokes everything, then
//!   rejoins; every partition pauses for the whole rebalance.
//! - incremental cooperative (KIP-429, `cooperative-sticky`): the member rejoins while it
//!   keeps fetching and committing, and afterwards revokes only what the new assignment no
//!   longer gives it. If it revoked anything it rejoins once more, so the leader can hand
//!   those partitions, now free, to their new owner.
//!
//! Every state change and retry is logged at debug level, so a member that waits says why.

mod config;
mod consumer_task;
mod coordinator;
mod events;
mod join;
mod reconcile;
mod state;
mod task;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex as StdMutex, MutexGuard},
};

use kafka_protocol::ResponseError;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

pub use config::{GroupConfig, GroupProtocol};
pub use events::{GroupEvent, Revocation};

use crate::{
    backoff::Backoff,
    cluster::Cluster,
    error::{Error, Result},
    offsets::{self, GroupAdmin},
    TopicPartition,
};
use consumer_task::ConsumerTask;
use coordinator::{Coordinator, Link};
use state::{Command, Membership};
use task::MemberTask;

/// Events waiting for the application. A member sends a few per rebalance (an assignment, a
/// revocation it then waits on), so this is never full while the application reads them; an
/// application that stops reading stalls the member (and its heartbeats) rather than losing
/// an event it must act on.
const EVENT_QUEUE: usize = 16;

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
    pub fn start(config: GroupConfig) -> Result<(Self, mpsc::Receiver<GroupEvent>)> {
        config.validate()?;
        let cluster = Arc::new(Cluster::new(
            config.bootstrap.clone(),
            config.client_id.clone(),
            config.request_timeout,
            config.security.clone(),
        ));
        let admin = GroupAdmin::with_cluster(cluster);
        let state = Arc::new(StdMutex::new(Membership::default()));
        let (events, receiver) = mpsc::channel(EVENT_QUEUE);
        let (commands, command_receiver) = mpsc::channel(1);
        let link = Link {
            admin: admin.clone(),
            group_id: config.group_id.clone(),
            connection: None,
        };
        let task = tokio::spawn(run(
            link,
            config.clone(),
            Arc::clone(&state),
            events,
            command_receiver,
        ));
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
        let mut identity = self.identity();
        let mut retry = Backoff::new(self.admin.cluster.request_timeout());
        loop {
            let result = self
                .admin
                .commit_as(&self.group_id, &identity, offsets)
                .await;
            // Consumer protocol: the coordinator moved this member to a new epoch, whose
            // answer reaches the member task about now. The partitions are still owned.
            if !matches!(
                result.as_ref().map_err(Error::protocol),
                Err(Some(ResponseError::StaleMemberEpoch))
            ) || !retry.wait().await
            {
                return result;
            }
            identity = self.identity();
        }
    }

    fn identity(&self) -> offsets::MemberIdentity {
        let state = self.membership();
        offsets::MemberIdentity {
            member_id: state.member_id.clone(),
            generation: state.generation,
            instance_id: self.instance_id.clone(),
            consumer_protocol: state.group_protocol == Some(GroupProtocol::Consumer),
        }
    }

    /// The group protocol the member speaks; `None` until it has chosen (see
    /// [`GroupProtocol::Auto`]) and after it stopped.
    pub fn protocol(&self) -> Option<GroupProtocol> {
        self.membership().group_protocol
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
        self.membership().assigned.clone()
    }

    /// The member id the coordinator gave this member (empty before the first join).
    pub fn member_id(&self) -> String {
        self.membership().member_id.clone()
    }

    pub fn generation(&self) -> i32 {
        self.membership().generation
    }

    /// Classic protocol: whether this member led the generation it last joined.
    pub fn is_leader(&self) -> bool {
        self.membership().leader
    }

    /// Whether the member holds an assignment of the current generation (not joining or
    /// rebalancing).
    pub fn is_stable(&self) -> bool {
        self.membership().stable
    }

    /// Why the member is not in the group yet, when its last attempt to join failed (a
    /// refused group authorization, an unreachable coordinator...). `None` once it joined.
    pub fn join_problem(&self) -> Option<Error> {
        self.membership().join_error.clone()
    }

    /// Offsets and lag without membership, sharing this member's connections.
    pub fn admin(&self) -> &GroupAdmin {
        &self.admin
    }

    fn membership(&self) -> MutexGuard<'_, Membership> {
        state::lock(&self.state)
    }

    /// Leaves the group so it rebalances at once. Commit before calling this. A revocation
    /// the application has not acknowledged yet is not waited for: leaving says the
    /// application is done. The member stops; later calls fail with [`Error::Stopped`].
    pub async fn leave(&self) -> Result<()> {
        self.stop(false).await
    }

    /// A static member's leave for a restart under the same group instance id: its
    /// partitions stay assigned to the instance until the coordinator's session timeout, so
    /// the restarted process takes them back without moving them anywhere (consumer protocol:
    /// member epoch -2; classic: no LeaveGroup, KIP-345). Meanwhile nobody consumes them, so
    /// this is for restarts, not for scaling down. A dynamic member leaves as with
    /// [`leave`](Self::leave).
    pub async fn leave_temporarily(&self) -> Result<()> {
        self.stop(self.instance_id.is_some()).await
    }

    async fn stop(&self, temporary: bool) -> Result<()> {
        let (reply, result) = oneshot::channel();
        let leaving = state::Leaving { reply, temporary };
        if self.commands.send(Command::Leave(leaving)).await.is_err() {
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

/// The member task: chooses the protocol ([`GroupProtocol::Auto`]: the consumer protocol when
/// the coordinator offers it), then runs that protocol's state machine.
async fn run<C: Coordinator>(
    mut coordinator: C,
    config: GroupConfig,
    state: Arc<StdMutex<Membership>>,
    events: mpsc::Sender<GroupEvent>,
    mut commands: mpsc::Receiver<Command>,
) {
    let protocol = match config.protocol {
        GroupProtocol::Auto => {
            let chosen = tokio::select! {
                chosen = choose_protocol(&mut coordinator, &state, &config.group_id) => chosen,
                command = commands.recv() => {
                    // Nothing joined yet, so nothing to leave.
                    if let Some(Command::Leave(leaving)) = command {
                        let _ = leaving.reply.send(Ok(()));
                    }
                    return;
                }
            };
            tracing::info!(group = %config.group_id, protocol = %chosen, "group protocol chosen (auto)");
            chosen
        }
        chosen => chosen,
    };
    state::lock(&state).group_protocol = Some(protocol);
    match protocol {
        GroupProtocol::Consumer => {
            ConsumerTask::new(coordinator, config, state, events)
                .run(commands)
                .await
        }
        _ => {
            MemberTask::new(coordinator, config, state, events)
                .run(commands)
                .await
        }
    }
}

/// Asks the coordinator whether it speaks the consumer protocol, until it answers.
async fn choose_protocol<C: Coordinator>(
    coordinator: &mut C,
    state: &StdMutex<Membership>,
    group_id: &str,
) -> GroupProtocol {
    let mut backoff = Backoff::unbounded();
    loop {
        match coordinator.offers_consumer_protocol().await {
            Ok(true) => return GroupProtocol::Consumer,
            Ok(false) => return GroupProtocol::Classic,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(group = %group_id, error = %e, retry_in = ?delay, "cannot reach the group's coordinator to choose the group protocol");
                state::lock(state).join_error = Some(e);
                coordinator.forget().await;
                tokio::time::sleep(delay).await;
            }
        }
    }
}
