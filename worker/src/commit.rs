//! The commit stage: the sink acknowledges what it stored, and this stage records that
//! progress with the group (OffsetCommit), so no offset is ever committed past a record that
//! is not stored. Commits run one at a time; acknowledgements that arrive while one is in
//! flight are carried into the next (group commit), and a refused commit (the group was
//! rebalancing) is carried into the next one, or retried on its own when nothing else comes,
//! so a partition's committed offset catches up even when its traffic stops.

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Instant};

use kafka_group::{Backoff, GroupMember, TopicPartition};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{metrics::Metrics, record::Ack, timing::sleep_until};

/// Acknowledgements waiting for the commit stage. The sink sends one per written batch and
/// the stage takes them as they come, so a few are plenty; a full queue makes the sink wait.
pub const ACK_QUEUE: usize = 16;

/// Who records the progress: the group member, or a stand-in in tests (the seam that lets
/// this stage's ordering, carrying and retries be tested without a broker).
pub trait CommitOffsets: Send + Sync + 'static {
    fn commit(
        &self,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> impl Future<Output = kafka_group::Result<()>> + Send;
}

impl CommitOffsets for GroupMember {
    fn commit(
        &self,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> impl Future<Output = kafka_group::Result<()>> + Send {
        GroupMember::commit(self, offsets)
    }
}

pub struct Committer<G = GroupMember> {
    pub member: Arc<G>,
    pub topic: String,
    pub metrics: Arc<Metrics>,
}

/// A commit on its way: the offsets it carries, and whether the group accepted them.
type InFlight = JoinHandle<(BTreeMap<i32, i64>, bool)>;

/// Offsets of stored records, per partition, not yet acknowledged by the group.
#[derive(Default)]
struct Progress {
    uncommitted: BTreeMap<i32, i64>,
    in_flight: Option<InFlight>,
    /// When a refused commit is due again, when no new acknowledgement carries it first.
    retry_at: Option<Instant>,
    retry: Backoff,
}

impl<G: CommitOffsets> Committer<G> {
    /// Runs until the sink is gone; what it acknowledged last is committed before it returns.
    pub async fn run(self, mut acks: mpsc::Receiver<Ack>) {
        let mut progress = Progress::default();
        loop {
            tokio::select! {
                ack = acks.recv() => match ack {
                    Some(Ack::Stored(offsets)) => {
                        progress.uncommitted.extend(offsets);
                        if progress.in_flight.is_none() {
                            self.commit(&mut progress);
                        }
                    }
                    Some(Ack::Release { release, done }) => {
                        self.release(&mut progress, &release).await;
                        let _ = done.send(());
                    }
                    None => break,
                },
                settled = in_flight(&mut progress.in_flight), if progress.in_flight.is_some() => {
                    progress.settle(settled);
                    if progress.retry_at.is_none() && progress.has_new() {
                        self.commit(&mut progress);
                    }
                }
                () = sleep_until(progress.retry_at), if progress.retry_at.is_some() && progress.in_flight.is_none() => {
                    progress.retry_at = None;
                    self.commit(&mut progress);
                }
            }
        }
        progress.finish().await;
        if !progress.uncommitted.is_empty() {
            self.commit(&mut progress);
            progress.finish().await;
        }
    }

    /// The last chance to record progress on partitions that move: what is in flight, then
    /// one more try; afterwards the next owner re-reads from the last commit.
    async fn release(&self, progress: &mut Progress, release: &[i32]) {
        progress.finish().await;
        if progress.has_any(release) {
            self.commit(progress);
            progress.finish().await;
        }
        progress.forget(release);
    }

    /// Starts committing everything stored and not yet acknowledged (none may be in flight).
    fn commit(&self, progress: &mut Progress) {
        if progress.uncommitted.is_empty() {
            return;
        }
        let offsets = progress.uncommitted.clone();
        let by_partition: BTreeMap<TopicPartition, i64> = offsets
            .iter()
            .map(|(p, o)| (TopicPartition::new(&self.topic, *p), *o))
            .collect();
        let member = Arc::clone(&self.member);
        let metrics = Arc::clone(&self.metrics);
        progress.retry_at = None;
        progress.in_flight = Some(tokio::spawn(async move {
            match member.commit(&by_partition).await {
                Ok(()) => (offsets, true),
                Err(e) => {
                    // The records are stored; the commit is carried into the next one. If
                    // the partition moves first, its next owner finds them as duplicates.
                    metrics.commit_errors.inc();
                    tracing::debug!(error = %e, "offset commit refused; retrying with the next");
                    (offsets, false)
                }
            }
        }));
    }
}

impl Progress {
    /// Waits for the commit in flight and settles it.
    async fn finish(&mut self) {
        if self.in_flight.is_some() {
            let settled = in_flight(&mut self.in_flight).await;
            self.settle(settled);
        }
    }

    /// Acknowledged offsets are done (unless a newer one arrived meanwhile); a refused
    /// commit is due again after a backoff step.
    fn settle(&mut self, settled: Option<(BTreeMap<i32, i64>, bool)>) {
        let Some((offsets, accepted)) = settled else {
            return;
        };
        if accepted {
            self.retry.reset();
            for (partition, offset) in offsets {
                if self.uncommitted.get(&partition) == Some(&offset) {
                    self.uncommitted.remove(&partition);
                }
            }
        } else {
            self.retry_at = Some(Instant::now() + self.retry.next_delay());
        }
    }

    /// Something is stored that no commit carried yet.
    fn has_new(&self) -> bool {
        !self.uncommitted.is_empty()
    }

    fn has_any(&self, partitions: &[i32]) -> bool {
        partitions.iter().any(|p| self.uncommitted.contains_key(p))
    }

    /// Partitions this worker gave up: their progress is the next owner's to record.
    fn forget(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.uncommitted.remove(partition);
        }
        if self.uncommitted.is_empty() {
            self.retry_at = None;
        }
    }
}

/// The result of the commit in flight, once it is done (`None`: none, or its task died).
async fn in_flight(commit: &mut Option<InFlight>) -> Option<(BTreeMap<i32, i64>, bool)> {
    let result = match commit.as_mut() {
        Some(handle) => handle.await.ok(),
        None => std::future::pending().await,
    };
    *commit = None;
    result
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Mutex,
        time::{Duration, Instant},
    };

    use tokio::sync::{oneshot, Semaphore};

    use super::*;

    /// A group that records each commit, refuses the first `refusals`, and holds each commit
    /// until the test lets one through (when gated).
    #[derive(Default)]
    struct Group {
        commits: Mutex<Vec<BTreeMap<i32, i64>>>,
        refusals: Mutex<usize>,
        gate: Option<Semaphore>,
    }

    impl Group {
        fn gated() -> Self {
            Self {
                gate: Some(Semaphore::new(0)),
                ..Self::default()
            }
        }

        fn refusing(refusals: usize) -> Self {
            Self {
                refusals: Mutex::new(refusals),
                ..Self::default()
            }
        }

        fn commits(&self) -> Vec<BTreeMap<i32, i64>> {
            self.commits.lock().unwrap().clone()
        }
    }

    impl CommitOffsets for Group {
        async fn commit(&self, offsets: &BTreeMap<TopicPartition, i64>) -> kafka_group::Result<()> {
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            self.commits
                .lock()
                .unwrap()
                .push(offsets.iter().map(|(tp, o)| (tp.partition, *o)).collect());
            let mut refusals = self.refusals.lock().unwrap();
            if *refusals > 0 {
                *refusals -= 1;
                return Err(kafka_group::Error::Io("rebalancing".into()));
            }
            Ok(())
        }
    }

    fn start(group: &Arc<Group>) -> (mpsc::Sender<Ack>, tokio::task::JoinHandle<()>) {
        let (acks, acked) = mpsc::channel(ACK_QUEUE);
        let committer = Committer {
            member: Arc::clone(group),
            topic: "purchases".into(),
            metrics: Arc::new(Metrics::new()),
        };
        (acks, tokio::spawn(committer.run(acked)))
    }

    async fn wait_for_commits(group: &Group, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while group.commits().len() < count {
            assert!(Instant::now() < deadline, "commits: {:?}", group.commits());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn offsets_stored_while_a_commit_is_in_flight_ride_in_the_next_commit_together() {
        let group = Arc::new(Group::gated());
        let (acks, task) = start(&group);
        acks.send(Ack::Stored(BTreeMap::from([(0, 10)])))
            .await
            .unwrap();
        acks.send(Ack::Stored(BTreeMap::from([(0, 20)])))
            .await
            .unwrap();
        acks.send(Ack::Stored(BTreeMap::from([(1, 5)])))
            .await
            .unwrap();
        // Let the stage take all three before the first commit goes through.
        tokio::time::sleep(Duration::from_millis(20)).await;
        group.gate.as_ref().unwrap().add_permits(10);
        drop(acks);
        task.await.unwrap();
        assert_eq!(
            group.commits(),
            [BTreeMap::from([(0, 10)]), BTreeMap::from([(0, 20), (1, 5)])]
        );
    }

    #[tokio::test]
    async fn a_refused_commit_is_retried_on_its_own_when_nothing_else_comes() {
        let group = Arc::new(Group::refusing(2));
        let (acks, _task) = start(&group);
        acks.send(Ack::Stored(BTreeMap::from([(3, 7)])))
            .await
            .unwrap();
        wait_for_commits(&group, 3).await;
        let expected = BTreeMap::from([(3, 7)]);
        assert_eq!(
            group.commits(),
            [expected.clone(), expected.clone(), expected]
        );
        // Accepted the third time: nothing more to commit.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(group.commits().len(), 3);
    }

    #[tokio::test]
    async fn a_released_partition_gets_one_last_commit_and_is_then_forgotten() {
        let group = Arc::new(Group::refusing(usize::MAX));
        let (acks, _task) = start(&group);
        acks.send(Ack::Stored(BTreeMap::from([(0, 10), (1, 4)])))
            .await
            .unwrap();
        wait_for_commits(&group, 1).await;
        let (done, released) = oneshot::channel();
        acks.send(Ack::Release {
            release: vec![0],
            done,
        })
        .await
        .unwrap();
        released.await.expect("the release is answered");
        let at_release = group.commits().len();
        assert!(at_release >= 2, "one last try for the released partition");
        // Partition 1 is still ours and retried; partition 0 never again.
        wait_for_commits(&group, at_release + 1).await;
        let after = &group.commits()[at_release..];
        assert!(
            after.iter().all(|c| c == &BTreeMap::from([(1, 4)])),
            "{after:?}"
        );
    }

    #[tokio::test]
    async fn nothing_is_committed_that_was_not_acknowledged_as_stored() {
        let group = Arc::new(Group::default());
        let (acks, task) = start(&group);
        let (done, released) = oneshot::channel();
        acks.send(Ack::Release {
            release: vec![0, 1],
            done,
        })
        .await
        .unwrap();
        released.await.unwrap();
        drop(acks);
        task.await.unwrap();
        assert!(group.commits().is_empty());
    }
}
