//! What the member task and the application's handle share: the membership as it stands,
//! and the commands the handle sends the task.

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use super::config::GroupProtocol;
use crate::{
    assignor::Assignor,
    error::{Error, Result},
    TopicPartition,
};

/// What the application and the member task both see.
#[derive(Debug, Default, Clone)]
pub(super) struct Membership {
    pub member_id: String,
    /// The classic protocol's generation, or the consumer protocol's member epoch.
    pub generation: i32,
    /// The protocol the member speaks ([`GroupProtocol::Auto`] resolved), once it started.
    pub group_protocol: Option<GroupProtocol>,
    pub assigned: Vec<TopicPartition>,
    /// Between an assignment and the next rebalance.
    pub stable: bool,
    /// Classic protocol: the assignor (and so the rebalance protocol) of the current generation.
    pub protocol: Option<Assignor>,
    /// Whether this member leads the current generation (computes the assignment).
    pub leader: bool,
    /// Why the last attempt to join failed, until one succeeds.
    pub join_error: Option<Error>,
}

/// The membership the member task writes and the handle reads. Every update is a plain
/// assignment, so a panic while the lock was held cannot leave it half written: a poisoned
/// lock is read as it is.
pub(super) fn lock(state: &Mutex<Membership>) -> MutexGuard<'_, Membership> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) enum Command {
    Leave(Leaving),
}

/// The application asks the member to leave the group.
pub(super) struct Leaving {
    pub reply: oneshot::Sender<Result<()>>,
    /// A static member's temporary leave (a restart under the same group instance id): the
    /// coordinator keeps its partitions for its return, until its session expires.
    pub temporary: bool,
}
