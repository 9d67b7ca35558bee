//! The partition lifecycle of this worker: the group's assignments start partitions in the
//! fetch loop from their committed offsets, revocations stop them and flush the sink before
//! they are let go.

use std::{collections::BTreeMap, sync::Arc};

use kafka_group::{Backoff, GroupMember, RecordFetcher, Revocation, TopicPartition};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{
    fetch_loop::FetchLoop,
    partitions::{Command, Partitions},
    start_offsets::StartOffsets,
    FetchSettings,
};
use crate::{metrics::Metrics, record::SinkMessage};

/// Commands waiting for the loop. The loop reads them in every state it waits in, so a
/// handful is plenty; a full queue only makes the group's event handler wait its turn.
const COMMAND_QUEUE: usize = 16;

/// The partition lifecycle of this worker, over its one fetch loop.
pub struct Assignment {
    member: Arc<GroupMember>,
    starts: Arc<StartOffsets>,
    sink: mpsc::Sender<SinkMessage>,
    metrics: Arc<Metrics>,
    commands: mpsc::Sender<Command>,
    owned: Vec<i32>,
    /// Dropping it (with the `Assignment`) ends the loop.
    stop: CancellationToken,
    fetch_loop: Option<JoinHandle<()>>,
}

impl Assignment {
    pub fn new(
        topic: String,
        member: Arc<GroupMember>,
        fetcher: RecordFetcher,
        settings: FetchSettings,
        sink: mpsc::Sender<SinkMessage>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let starts = Arc::new(StartOffsets::new(
            Arc::clone(&member),
            topic.clone(),
            settings.reset,
        ));
        let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
        let stop = CancellationToken::new();
        let fetch_loop = tokio::spawn(
            FetchLoop {
                topic,
                limits: settings.limits,
                pacing: settings.pacing,
                starts: Arc::clone(&starts),
                sink: sink.clone(),
                metrics: Arc::clone(&metrics),
                partitions: Partitions::default(),
            }
            .run(fetcher, inbox, stop.clone()),
        );
        Self {
            member,
            starts,
            sink,
            metrics,
            commands,
            owned: Vec::new(),
            stop,
            fetch_loop: Some(fetch_loop),
        }
    }

    /// Starts fetching each of `partitions` that is not fetched yet, from the group's
    /// committed offset (or the reset policy).
    pub async fn start(&mut self, partitions: &[TopicPartition], shutdown: &CancellationToken) {
        self.metrics
            .group_leader
            .set(i64::from(self.member.is_leader()));
        if let Some(protocol) = self.member.protocol() {
            self.metrics
                .group_protocol
                .with_label_values(&[protocol.name()])
                .set(1);
        }
        let partitions: Vec<TopicPartition> = partitions
            .iter()
            .filter(|tp| !self.owned.contains(&tp.partition))
            .cloned()
            .collect();
        if partitions.is_empty() {
            return;
        }
        let Some(committed) = until_answered("committed offsets", shutdown, || {
            self.member.committed(&partitions)
        })
        .await
        else {
            return;
        };
        let mut offsets: BTreeMap<i32, i64> = committed
            .iter()
            .filter_map(|(tp, offset)| Some((tp.partition, (*offset)?)))
            .collect();
        let uncommitted: Vec<i32> = partitions
            .iter()
            .map(|tp| tp.partition)
            .filter(|p| !offsets.contains_key(p))
            .collect();
        if !uncommitted.is_empty() {
            let Some(starts) = until_answered("start offsets", shutdown, || {
                self.starts.offsets(&uncommitted)
            })
            .await
            else {
                return;
            };
            offsets.extend(starts);
        }
        tracing::debug!(?offsets, "fetching");
        self.owned.extend(offsets.keys());
        let _ = self.commands.send(Command::Start(offsets)).await;
        self.metrics
            .assigned_partitions
            .set(self.owned.len() as i64);
    }

    /// Revocation: stop fetching the partitions, write and commit what was read from them,
    /// then let them go. The other partitions keep fetching throughout.
    pub async fn release(&mut self, revocation: Revocation) {
        let partitions: Vec<i32> = revocation
            .partitions
            .iter()
            .map(|tp| tp.partition)
            .collect();
        tracing::info!(?partitions, lost = revocation.lost, "revoked");
        self.stop(partitions.clone()).await;
        // Even when the membership was lost the writes are worth finishing: they are
        // idempotent, and only the commit will be refused.
        self.flush(partitions).await;
        self.metrics
            .assigned_partitions
            .set(self.owned.len() as i64);
        revocation.done();
    }

    /// Shutdown: stop fetching, then write and commit everything fetched.
    pub async fn drain(&mut self) {
        let partitions = self.owned.clone();
        self.stop(partitions.clone()).await;
        self.stop.cancel();
        if let Some(fetch_loop) = self.fetch_loop.take() {
            let _ = fetch_loop.await;
        }
        self.flush(partitions).await;
        self.metrics.assigned_partitions.set(0);
    }

    /// Stops fetching `partitions` and waits until the loop let them go, so that everything
    /// fetched from them is in the sink's queue before anything sent after.
    async fn stop(&mut self, partitions: Vec<i32>) {
        self.owned.retain(|p| !partitions.contains(p));
        let (done, stopped) = oneshot::channel();
        if self
            .commands
            .send(Command::Stop { partitions, done })
            .await
            .is_ok()
        {
            // An error: the loop has ended, and sends nothing more.
            let _ = stopped.await;
        }
    }

    /// Writes and commits everything fetched so far; afterwards the sink forgets `release`.
    async fn flush(&self, release: Vec<i32>) {
        let (done, flushed) = oneshot::channel();
        if self
            .sink
            .send(SinkMessage::Flush { release, done })
            .await
            .is_ok()
        {
            let _ = flushed.await;
        }
    }
}

impl Drop for Assignment {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Asks `ask` until it answers, or the worker shuts down (`None`). A partition cannot be
/// fetched without its start, and giving up would leave it owned and never read: no later
/// assignment need come to try again (under the consumer group protocol none comes while
/// the group does not change).
async fn until_answered<T, F, Fut>(what: &str, shutdown: &CancellationToken, ask: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = kafka_group::Result<T>>,
{
    let mut backoff = Backoff::unbounded();
    loop {
        match ask().await {
            Ok(answer) => return Some(answer),
            Err(e) => tracing::warn!(error = %e, "cannot read the {what} yet; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
