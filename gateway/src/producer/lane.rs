//! One broker's sender: takes what waits in its queue (up to the batch size), sends it as
//! one Produce request with a batch per partition, and answers each purchase from its
//! partition's part of the answer. One request at a time: what arrives meanwhile rides in
//! the next one.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use infra::{cause_log::CauseLog, kafka::Backoff};
use kafka_group::{
    authorization::is_refusal, nothing_appended_retriable, BrokerLink, PartitionBatch,
    ResponseError,
};
use tokio::{sync::mpsc, time::Instant};

use super::{routing::Router, Pending, ProduceError, Shared, Waiter};

/// Produces the brokers refused, logged once per cause.
static REFUSED_PRODUCES: CauseLog = CauseLog::new("produce", Duration::from_secs(60));

/// Runs the lane of the broker at `address` until the producer closes and its queue is
/// drained.
pub(super) async fn run(
    router: Arc<Router>,
    address: Arc<str>,
    mut queue: mpsc::Receiver<Pending>,
) {
    let shared = Arc::clone(router.shared());
    let mut link: Option<Box<BrokerLink>> = None;
    // After a failed request the broker may be down: until a connection to it works again
    // nothing is taken into a request, so every caller that gives up meanwhile is told,
    // truthfully, that nothing was sent. Only the request in flight when it failed stays
    // unknown.
    let mut failed = false;
    loop {
        let next = tokio::select! {
            next = queue.recv() => next,
            () = shared.closing.cancelled() => {
                // Refuse new purchases but still send the ones already queued.
                queue.close();
                queue.recv().await
            }
        };
        let Some(first) = next else { break };
        if !router.routes_to(first.partition, &address) {
            router.forward(first);
            continue;
        }
        let current = match link.take() {
            Some(current) => current,
            None => match connect(&router, &address, first.partition, failed).await {
                Connected::Yes(current) => current,
                Connected::Moved => {
                    router.forward(first);
                    continue;
                }
                Connected::Closing => {
                    first.answer(Err(ProduceError::Closed));
                    continue;
                }
            },
        };
        if failed {
            tracing::info!(broker = %address, "broker answers again");
            failed = false;
        }
        gather(&queue).await;
        let batch = group_commit(&router, &address, first, &mut queue);
        if batch.is_empty() {
            link = Some(current);
            continue;
        }
        if send(&router, &current, batch).await {
            link = Some(current);
        } else {
            failed = true;
        }
    }
}

/// How many turns of the scheduler a lane waits for purchases to join a request, at most.
const GATHER_TURNS: usize = 4;

/// Lets the purchases that are about to arrive join the request: yields to the scheduler
/// (which first looks for I/O, so requests that just arrived are parsed and queued) as long
/// as the queue keeps growing, a few turns at most. This waits for work, never for time: an
/// idle gateway sends at once (one turn sees nothing new), a busy one sends fuller requests
/// (13 records per request instead of 7 at 64 connections on three brokers in
/// `make bench-gateway`, and fewer requests cost the broker and the gateway less).
async fn gather(queue: &mpsc::Receiver<Pending>) {
    for _ in 0..GATHER_TURNS {
        let before = queue.len();
        tokio::task::yield_now().await;
        if queue.len() == before {
            return;
        }
    }
}

enum Connected {
    Yes(Box<BrokerLink>),
    /// The partition of the purchase in hand has another leader now.
    Moved,
    Closing,
}

/// Connects to the lane's broker; after a failure, keeps trying (looking the leaders up
/// between attempts) until it answers, the purchase in hand has another leader, or the
/// producer closes.
async fn connect(router: &Arc<Router>, address: &str, partition: i32, failed: bool) -> Connected {
    let mut probes = Backoff::probing();
    loop {
        if failed && router.shared().closing.is_cancelled() {
            return Connected::Closing;
        }
        let attempt = Instant::now();
        match router.client().connect(address).await {
            Ok(link) => return Connected::Yes(Box::new(link)),
            Err(e) if !failed => {
                tracing::warn!(broker = address, error = %e, "cannot connect to the broker");
            }
            Err(e) => tracing::debug!(broker = address, error = %e, "broker still unreachable"),
        }
        router.refresh(attempt).await;
        if !router.routes_to(partition, address) {
            return Connected::Moved;
        }
        tokio::select! {
            () = router.shared().closing.cancelled() => return Connected::Closing,
            () = tokio::time::sleep(probes.next_delay()) => {}
        }
    }
}

/// The purchases of one request: `first`, and what else waits in the queue up to the
/// batch size in bytes (which `recv_many`, a count, cannot bound). Purchases whose partition
/// moved to another broker are handed to its lane; those whose callers gave up are dropped.
fn group_commit(
    router: &Arc<Router>,
    address: &str,
    first: Pending,
    queue: &mut mpsc::Receiver<Pending>,
) -> Vec<Pending> {
    let max_bytes = router.shared().args.batch_max_bytes;
    let mut bytes = 0;
    let mut batch = Vec::new();
    let mut next = Some(first);
    while let Some(pending) = next {
        if !router.routes_to(pending.partition, address) {
            router.forward(pending);
        } else if pending.take() {
            bytes += pending.record.approximate_size();
            batch.push(pending);
        } else if pending.waiter.retry {
            // A retry past its caller's deadline: nothing of it was ever appended.
            let timeout = router.shared().args.timeout;
            pending.answer(Err(ProduceError::NotSent(timeout)));
        }
        if bytes >= max_bytes {
            break;
        }
        next = queue.try_recv().ok();
    }
    batch
}

/// Sends `batch` as one request and answers every purchase in it. False when the request as
/// a whole failed (the link is not to be used again).
async fn send(router: &Arc<Router>, link: &BrokerLink, batch: Vec<Pending>) -> bool {
    let shared = router.shared();
    let count = batch.len();
    let mut batches: BTreeMap<i32, PartitionBatch> = BTreeMap::new();
    let mut waiters: BTreeMap<i32, Vec<Waiter>> = BTreeMap::new();
    for Pending {
        partition,
        record,
        waiter,
    } in batch
    {
        batches.entry(partition).or_default().push(record);
        waiters.entry(partition).or_default().push(waiter);
    }
    shared.metrics.produce_batch_records.observe(count as f64);
    let started = Instant::now();
    let result = link
        .produce(&shared.topic, &batches, shared.args.timeout)
        .await;
    shared
        .metrics
        .produce_duration
        .observe(started.elapsed().as_secs_f64());
    let outcomes = match result {
        Ok(outcomes) => outcomes,
        Err(e) => {
            shared.metrics.produce_errors.inc();
            tracing::warn!(topic = %shared.topic, broker = link.address(), error = %e, "produce failed");
            let reason = e.to_string();
            for waiter in waiters.into_values().flatten() {
                waiter.answer(Err(ProduceError::Unconfirmed(reason.clone())));
            }
            return false;
        }
    };
    let mut retries = Vec::new();
    for (partition, waiters) in waiters {
        match outcomes.get(&partition).copied() {
            Some(Ok(base_offset)) => {
                shared.refusal.set(None);
                for (waiter, offset) in waiters.into_iter().zip(base_offset..) {
                    waiter.answer(Ok(offset));
                }
            }
            Some(Err(error)) if nothing_appended_retriable(error) => {
                tracing::debug!(topic = %shared.topic, partition, broker = link.address(), ?error, "nothing appended; sending again");
                let records = batches
                    .remove(&partition)
                    .unwrap_or_default()
                    .into_records();
                retries.extend(records.zip(waiters).map(|(record, waiter)| Pending {
                    partition,
                    record,
                    waiter: Waiter {
                        retry: true,
                        ..waiter
                    },
                }));
            }
            Some(Err(error)) => answer_failed(shared, partition, error, waiters),
            None => unreachable_partition(waiters),
        }
    }
    if !retries.is_empty() {
        router.refresh(started).await;
        for pending in retries {
            router.forward(pending);
        }
    }
    true
}

/// A partition's batch failed with `error`: "refused, nothing stored" when the brokers'
/// ACLs refused the write (checked before anything is appended); otherwise "unconfirmed",
/// because the broker may have appended it.
fn answer_failed(shared: &Shared, partition: i32, error: ResponseError, waiters: Vec<Waiter>) {
    shared.metrics.produce_errors.inc();
    let topic = &shared.topic;
    if is_refusal(error) {
        let why = format!(
            "the brokers refuse this gateway's user writes to topic {topic} ({error:?}): grant it Write on the topic"
        );
        REFUSED_PRODUCES.failed(&why);
        shared.refusal.set(Some(why.clone()));
        for waiter in waiters {
            waiter.answer(Err(ProduceError::Refused(why.clone())));
        }
    } else {
        tracing::warn!(topic, partition, ?error, "produce failed");
        let reason = format!("{error:?}");
        for waiter in waiters {
            waiter.answer(Err(ProduceError::Unconfirmed(reason.clone())));
        }
    }
}

/// `BrokerLink::produce` answers every partition it was given or fails as a whole.
fn unreachable_partition(waiters: Vec<Waiter>) {
    for waiter in waiters {
        waiter.answer(Err(ProduceError::Unconfirmed(
            "the broker's answer left the partition out".into(),
        )));
    }
}
