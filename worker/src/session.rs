//! One membership of the consumer group, from joining to leaving: the group member, the
//! fetch loop, the sink and the lag gauge, wired together.
//!
//! A session ends in one of two ways. At shutdown it drains within the grace period: stop
//! fetching, write and commit what was read, leave. When MongoDB refuses the writes in a way
//! waiting cannot cure, it gives its partitions back at once instead: nothing more is
//! stored or committed, it leaves the group so the others take over, and the records it
//! had read are read again by their next owner from the last commit. The worker then waits,
//! not ready, until MongoDB lets it write again and starts a new session (`startup`).

use std::{sync::Arc, time::Instant};

use kafka_group::{GroupConfig, GroupEvent, GroupMember};
use mongodb::Database;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    commit::{Committer, ACK_QUEUE},
    config::WorkerConfig,
    dlq::DeadLetters,
    fetch::Assignment,
    metrics::Metrics,
    ops,
    readiness::{Readiness, Writes},
    record::Ack,
    sink::Sink,
    timing::sleep_until,
};

/// A batch write may take server selection (`--mongo-timeout`) plus the write concern's wait
/// (`--mongo-write-timeout`) plus this, for the transfer and the work, before it counts as
/// failed.
const WRITE_SLACK: std::time::Duration = std::time::Duration::from_secs(10);

/// Fetched batches waiting for the sink; when full, fetching waits (backpressure).
const SINK_QUEUE: usize = 64;

/// How a session ended.
#[derive(Debug)]
pub enum Ended {
    /// The shutdown signal: the worker stops.
    Shutdown,
    /// MongoDB refused the writes, or took none for `--give-back-after` (the reason); the
    /// partitions were given back. `stored_any`: the session stored purchases before.
    WritesRefused { reason: String, stored_any: bool },
    /// The group member stopped by itself (fenced by another instance with our id).
    MemberStopped,
}

/// What every session of this worker shares.
pub struct Shared {
    pub config: WorkerConfig,
    pub group: GroupConfig,
    pub db: Database,
    pub dead_letters: DeadLetters,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub security: kafka_group::Security,
}

/// Joins the group and consumes until shutdown or a refusal of the writes.
pub async fn run(shared: &Shared, shutdown: &CancellationToken) -> anyhow::Result<Ended> {
    let Shared {
        config,
        group,
        metrics,
        readiness,
        security,
        ..
    } = shared;
    let (member, events) = GroupMember::start(group.clone())?;
    let member = Arc::new(member);
    readiness.set_member(Some(Arc::clone(&member)));

    // The stages, along the records' path: fetch (the assignment's loop) → decode → sink →
    // acknowledgements → commit.
    let abandon = CancellationToken::new();
    let (acks, acked) = mpsc::channel(ACK_QUEUE);
    let commit_task = tokio::spawn(
        Committer {
            member: Arc::clone(&member),
            topic: config.kafka.events.topic.clone(),
            metrics: Arc::clone(metrics),
        }
        .run(acked),
    );
    let (sink, inbox) = mpsc::channel(SINK_QUEUE);
    let sink_task = tokio::spawn(sink_for(shared, acks, abandon.clone()).run(inbox));
    let lag_task = tokio::spawn(ops::track_lag(
        Arc::clone(&member),
        config.group.group_id.clone(),
        config.kafka.events.topic.clone(),
        config.group.offset_reset,
        Arc::clone(metrics),
    ));
    let mut assignment = Assignment::new(
        config.kafka.events.topic.clone(),
        Arc::clone(&member),
        config.record_fetcher(security),
        config.fetch_settings(),
        sink,
        Arc::clone(metrics),
    );

    let ended = follow(shared, events, &mut assignment, shutdown).await;
    wind_down(&ended, config, &member, &mut assignment, &abandon).await;
    drop(assignment);
    let _ = sink_task.await;
    let _ = commit_task.await;
    lag_task.abort();
    readiness.set_member(None);
    metrics.assigned_partitions.set(0);
    Ok(ended)
}

/// The sink of one session: it acknowledges what it stored to this session's commit stage.
fn sink_for(shared: &Shared, acks: mpsc::Sender<Ack>, abandon: CancellationToken) -> Sink {
    let config = &shared.config;
    Sink {
        purchases: infra::mongo::purchases(&shared.db),
        dead_letters: shared.dead_letters.clone(),
        acks,
        metrics: Arc::clone(&shared.metrics),
        max_documents: config.batch.max_documents.max(1),
        abandon,
        readiness: Arc::clone(&shared.readiness),
        write_timeout: config.mongo.timeout + config.mongo.write_concern.timeout + WRITE_SLACK,
    }
}

/// Follows the group's assignments and the health of the writes until the session ends.
async fn follow(
    shared: &Shared,
    mut events: mpsc::Receiver<GroupEvent>,
    assignment: &mut Assignment,
    shutdown: &CancellationToken,
) -> Ended {
    let Shared {
        config, metrics, ..
    } = shared;
    let stored_before = metrics.documents_inserted.get();
    let refused = |reason: String| Ended::WritesRefused {
        reason,
        stored_any: metrics.documents_inserted.get() > stored_before,
    };
    let mut writes = shared.readiness.writes();
    writes.mark_unchanged();
    // While writes fail in a way that may heal: when the partitions go back.
    let mut give_back_at: Option<Instant> = None;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return Ended::Shutdown,
            changed = writes.changed() => {
                match (changed, &*writes.borrow_and_update()) {
                    (Ok(()), Writes::Refused(why)) => return refused(why.clone()),
                    (Ok(()), Writes::Failing { since, .. }) => {
                        give_back_at = Some(*since + config.give_back_after);
                    }
                    _ => give_back_at = None,
                }
                continue;
            }
            () = sleep_until(give_back_at), if give_back_at.is_some() => {
                return refused(format!("MongoDB has taken no write for {:?}", config.give_back_after));
            }
            event = events.recv() => event,
        };
        match event {
            Some(GroupEvent::Assigned {
                generation,
                partitions,
                added,
            }) => {
                metrics.rebalances.inc();
                tracing::info!(generation, partitions = ?partition_numbers(&partitions), added = ?partition_numbers(&added), "assigned");
                assignment.start(&added, shutdown).await;
            }
            Some(GroupEvent::Revoked(revocation)) => assignment.release(revocation).await,
            None => return Ended::MemberStopped,
        }
    }
}

/// Ends the session: after a refusal the partitions go back at once (nothing more is
/// stored); otherwise what was fetched is written and committed within the grace period.
async fn wind_down(
    ended: &Ended,
    config: &WorkerConfig,
    member: &GroupMember,
    assignment: &mut Assignment,
    abandon: &CancellationToken,
) {
    match ended {
        Ended::WritesRefused { reason, .. } => {
            tracing::error!(%reason, "giving the partitions back; not ready until MongoDB takes this worker's writes again");
            abandon.cancel();
            assignment.drain().await;
            leave(member).await;
        }
        Ended::Shutdown | Ended::MemberStopped => {
            tracing::info!("draining: stop fetching, flush, commit, leave the group");
            let drain = async {
                assignment.drain().await;
                leave(member).await;
            };
            if tokio::time::timeout(config.shutdown_grace, drain)
                .await
                .is_err()
            {
                tracing::warn!(grace = ?config.shutdown_grace, "drain did not finish within the grace period; uncommitted records will be redelivered");
                abandon.cancel();
            }
        }
    }
}

async fn leave(member: &GroupMember) {
    if let Err(e) = member.leave().await {
        tracing::warn!(error = %e, "leaving the group failed");
    }
}

fn partition_numbers(partitions: &[kafka_group::TopicPartition]) -> Vec<i32> {
    partitions.iter().map(|tp| tp.partition).collect()
}
