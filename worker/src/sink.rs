//! The sink: gathers decoded records from every fetcher into batches, writes each batch with
//! one unordered `insert_many` (`_id` = eventId, so a redelivered purchase is a harmless
//! duplicate key), sends poison records to the dead-letter topic, and only then commits the
//! offsets. A failed write is retried with backoff while the fetchers wait; no offset is ever
//! committed past a record that is not stored.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use kafka_group::{GroupMember, TopicPartition};
use mongodb::{bson::Document, error::ErrorKind, Collection};
use purchase::mongo::{is_duplicate_key, DUPLICATE_KEY};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{dlq::DeadLetters, metrics::Metrics};

pub enum Fetched {
    /// A valid purchase, as the document to store.
    Document(Document),
    Poison {
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        value: Vec<u8>,
        reason: String,
    },
}

/// Consecutive records of one partition, ending just before `next_offset`.
pub struct FetchedBatch {
    pub partition: i32,
    pub next_offset: i64,
    pub records: Vec<Fetched>,
}

pub enum SinkMessage {
    Records(FetchedBatch),
    /// Write and commit everything received so far, then answer.
    Flush(oneshot::Sender<()>),
}

pub struct Sink {
    pub purchases: Collection<Document>,
    pub dead_letters: DeadLetters,
    pub member: Arc<GroupMember>,
    pub topic: String,
    pub metrics: Arc<Metrics>,
    pub max_documents: usize,
    pub max_age: Duration,
    /// Cancelled when the grace period is over: give up retrying, commit nothing more.
    pub abandon: CancellationToken,
}

#[derive(Default)]
struct Pending {
    documents: Vec<Document>,
    poison: Vec<Fetched>,
    /// Next offset to read per partition, once this batch is stored.
    offsets: BTreeMap<i32, i64>,
    since: Option<Instant>,
}

impl Sink {
    /// Runs until every sender is gone, writing what is pending before it returns.
    pub async fn run(self, mut inbox: mpsc::Receiver<SinkMessage>) {
        let mut pending = Pending::default();
        let mut committing = None;
        loop {
            let deadline = pending.since.map(|since| since + self.max_age);
            let message = tokio::select! {
                message = inbox.recv() => message,
                () = sleep_until(deadline), if deadline.is_some() => {
                    self.flush(&mut pending, &mut committing).await;
                    continue;
                }
            };
            match message {
                Some(SinkMessage::Records(batch)) => {
                    pending.add(batch);
                    if pending.documents.len() + pending.poison.len() >= self.max_documents {
                        self.flush(&mut pending, &mut committing).await;
                    }
                }
                Some(SinkMessage::Flush(done)) => {
                    self.flush(&mut pending, &mut committing).await;
                    finish_commit(&mut committing).await;
                    let _ = done.send(());
                }
                None => {
                    self.flush(&mut pending, &mut committing).await;
                    finish_commit(&mut committing).await;
                    return;
                }
            }
        }
    }

    /// Writes the batch, then commits its offsets. The commit runs while the next batch is
    /// written; commits still reach the broker in order, as each waits for the one before.
    async fn flush(&self, pending: &mut Pending, committing: &mut Option<JoinHandle<()>>) {
        let batch = std::mem::take(pending);
        if batch.offsets.is_empty() {
            return;
        }
        if !self.store(batch.documents).await || !self.dead_letter(batch.poison).await {
            return;
        }
        let offsets: BTreeMap<TopicPartition, i64> = batch
            .offsets
            .into_iter()
            .map(|(p, o)| (TopicPartition::new(&self.topic, p), o))
            .collect();
        finish_commit(committing).await;
        let member = Arc::clone(&self.member);
        let metrics = Arc::clone(&self.metrics);
        *committing = Some(tokio::spawn(async move {
            if let Err(e) = member.commit(&offsets).await {
                // The records are stored; the next owner reads them again from the last
                // commit and finds them as duplicates.
                metrics.commit_errors.inc();
                tracing::warn!(error = %e, "offset commit refused; records will be redelivered");
            }
        }));
    }

    /// Writes until MongoDB acknowledges (or the grace period is over: `false`).
    async fn store(&self, documents: Vec<Document>) -> bool {
        if documents.is_empty() {
            return true;
        }
        let mut delay = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            let result = self.purchases.insert_many(&documents).ordered(false).await;
            self.metrics
                .write_duration
                .observe(started.elapsed().as_secs_f64());
            match classify(result, documents.len()) {
                Ok((inserted, duplicates)) => {
                    self.metrics.batch_documents.observe(documents.len() as f64);
                    self.metrics.documents_inserted.inc_by(inserted as u64);
                    self.metrics.duplicates.inc_by(duplicates as u64);
                    return true;
                }
                Err(e) => {
                    self.metrics.write_errors.inc();
                    tracing::warn!(error = %e, retry_in = ?delay, documents = documents.len(), "batch write failed, fetching paused");
                }
            }
            if !self.pause(&mut delay).await {
                return false;
            }
        }
    }

    async fn dead_letter(&self, poison: Vec<Fetched>) -> bool {
        if poison.is_empty() {
            return true;
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match self.dead_letters.send(&poison).await {
                Ok(()) => {
                    self.metrics.dead_lettered.inc_by(poison.len() as u64);
                    return true;
                }
                Err(e) => tracing::warn!(error = %e, "dead-letter produce failed, retrying"),
            }
            if !self.pause(&mut delay).await {
                return false;
            }
        }
    }

    async fn pause(&self, delay: &mut Duration) -> bool {
        tokio::select! {
            () = self.abandon.cancelled() => return false,
            () = tokio::time::sleep(*delay) => {}
        }
        *delay = (*delay * 2).min(Duration::from_secs(5));
        true
    }
}

impl Pending {
    fn add(&mut self, batch: FetchedBatch) {
        self.since.get_or_insert_with(Instant::now);
        self.offsets.insert(batch.partition, batch.next_offset);
        for record in batch.records {
            match record {
                Fetched::Document(document) => self.documents.push(document),
                poison @ Fetched::Poison { .. } => self.poison.push(poison),
            }
        }
    }
}

/// `(inserted, duplicates)` when every failure is a duplicate key; the error otherwise.
fn classify(
    result: mongodb::error::Result<mongodb::results::InsertManyResult>,
    total: usize,
) -> Result<(usize, usize), mongodb::error::Error> {
    match result {
        Ok(done) => Ok((done.inserted_ids.len(), 0)),
        Err(error) => {
            let duplicates = match error.kind.as_ref() {
                ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => failure
                    .write_errors
                    .as_ref()
                    .filter(|errors| errors.iter().all(|e| e.code == DUPLICATE_KEY))
                    .map(Vec::len),
                _ if is_duplicate_key(&error) => Some(1),
                _ => None,
            };
            match duplicates {
                Some(duplicates) => Ok((total - duplicates, duplicates)),
                None => Err(error),
            }
        }
    }
}

async fn finish_commit(committing: &mut Option<JoinHandle<()>>) {
    if let Some(commit) = committing.take() {
        let _ = commit.await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
