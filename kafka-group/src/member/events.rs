//! What a group member tells the application: partitions assigned, and partitions to let go
//! of (with the token the application hands back once it did).

use tokio::sync::oneshot;

use crate::TopicPartition;

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
    pub(super) ack: Option<oneshot::Sender<()>>,
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
