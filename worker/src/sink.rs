//! The sink: gathers decoded records from the fetch loop into batches, writes each batch with
//! one unordered `insert_many` (`_id` = eventId, so a redelivered purchase is a harmless
//! duplicate key), sends poison records to the dead-letter topic, and only then acknowledges
//! the batch's offsets to the commit stage ([`crate::commit`]). Batches form by group
//! commit, not by a timer: a batch is written as soon as the sink is free, with everything
//! that queued up during the previous write, so a lone purchase on a quiet system is stored
//! at once and a busy stream in large writes. A failed write is retried with backoff while
//! fetching waits; nothing is acknowledged that is not stored.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use infra::{
    cause_log::CauseLog,
    mongo::document,
    mongo::{is_duplicate_key, Failure, DUPLICATE_KEY},
};
use kafka_group::Backoff;
use mongodb::{bson::Document, error::ErrorKind, Collection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    dlq::DeadLetters,
    metrics::Metrics,
    readiness::{Readiness, Writes},
    record::{Ack, Fetched, FetchedBatch, PoisonRecord, RecordSpan, SinkMessage},
};

/// Failed writes are logged once per cause, and again at most this often while it lasts.
static WRITE_FAILURES: CauseLog = CauseLog::new("batch write", Duration::from_secs(60));
static DEAD_LETTER_FAILURES: CauseLog =
    CauseLog::new("dead-letter produce", Duration::from_secs(60));

pub struct Sink {
    pub purchases: Collection<Document>,
    pub dead_letters: DeadLetters,
    /// Where stored offsets are acknowledged, in order.
    pub acks: mpsc::Sender<Ack>,
    pub metrics: Arc<Metrics>,
    /// Documents per write at most when more are queued (a single fetched batch larger
    /// than this is still written whole).
    pub max_documents: usize,
    /// Cancelled when the grace period is over, or when the worker gives its partitions
    /// back: give up retrying, store and commit nothing more.
    pub abandon: CancellationToken,
    /// Told whether writes are accepted or refused (a refusal gives the partitions back).
    pub readiness: Arc<Readiness>,
    /// The longest one write may take before it counts as failed (no answer).
    pub write_timeout: Duration,
}

#[derive(Default)]
struct Pending {
    documents: Vec<Document>,
    /// The spans of the records among `documents` that have one.
    spans: Vec<RecordSpan>,
    poison: Vec<PoisonRecord>,
    /// Next offset to read per partition, once this batch is stored.
    offsets: BTreeMap<i32, i64>,
}

impl Sink {
    /// Runs until every sender is gone, writing what is pending before it returns.
    pub async fn run(self, mut inbox: mpsc::Receiver<SinkMessage>) {
        let mut pending = Pending::default();
        // A message taken from the queue while gathering a batch, handled next.
        let mut carried: Option<SinkMessage> = None;
        loop {
            let message = match carried.take() {
                Some(message) => Some(message),
                None => inbox.recv().await,
            };
            match message {
                Some(SinkMessage::Records(batch)) => {
                    pending.add(batch);
                    // Group commit: what queued up during the last write joins this one, up
                    // to a count of documents (not of messages, which `recv_many` counts) and
                    // never past a flush, which must wait for the write before it.
                    while pending.len() < self.max_documents {
                        match inbox.try_recv() {
                            Ok(SinkMessage::Records(batch)) => pending.add(batch),
                            Ok(other) => {
                                carried = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.flush(&mut pending).await;
                }
                Some(SinkMessage::Flush { release, done }) => {
                    self.flush(&mut pending).await;
                    // The commit stage answers once it recorded what this write stored.
                    let _ = self.acks.send(Ack::Release { release, done }).await;
                }
                None => {
                    self.flush(&mut pending).await;
                    return;
                }
            }
        }
    }

    /// Writes the batch, then acknowledges its offsets to the commit stage.
    async fn flush(&self, pending: &mut Pending) {
        let batch = std::mem::take(pending);
        // Once a batch was abandoned, a later one must not be stored and committed: its
        // offsets would commit past the abandoned records, which nobody would read again.
        if batch.offsets.is_empty() || self.abandon.is_cancelled() {
            return;
        }
        if !self.store(batch.documents, batch.spans).await || !self.dead_letter(batch.poison).await
        {
            return;
        }
        let _ = self.acks.send(Ack::Stored(batch.offsets)).await;
    }

    /// Writes until MongoDB acknowledges (or the grace period is over: `false`).
    async fn store(&self, documents: Vec<Document>, spans: Vec<RecordSpan>) -> bool {
        if documents.is_empty() {
            return true;
        }
        let mut backoff = Backoff::unbounded();
        loop {
            let started = Instant::now();
            let started_at = SystemTime::now();
            // The driver has no socket timeout: a connection whose packets vanish (a
            // black-holed route) would hold this write, and the partitions, forever. A write
            // cut short may still land; a retry then meets duplicate keys, which is fine.
            let result = tokio::time::timeout(
                self.write_timeout,
                self.purchases.insert_many(&documents).ordered(false),
            )
            .await
            .unwrap_or_else(|_| Err(no_answer_within(self.write_timeout)));
            self.metrics
                .write_duration
                .observe(started.elapsed().as_secs_f64());
            match classify(result, documents.len()) {
                Ok((inserted, duplicates)) => {
                    tracing::debug!(documents = documents.len(), took = ?started.elapsed(), "batch stored");
                    WRITE_FAILURES.recovered();
                    self.readiness.wrote(Writes::Accepted);
                    self.metrics.batch_documents.observe(documents.len() as f64);
                    self.metrics.documents_inserted.inc_by(inserted as u64);
                    self.metrics.duplicates.inc_by(duplicates as u64);
                    if !spans.is_empty() {
                        let namespace = self.purchases.namespace();
                        for span in spans {
                            span.stored(&namespace, documents.len(), started_at);
                        }
                    }
                    return true;
                }
                Err(e) => {
                    self.metrics.write_errors.inc();
                    let failure = Failure::of(&e);
                    WRITE_FAILURES.failed(&failure);
                    match failure {
                        Failure::Refused { description, .. } => {
                            self.readiness.wrote(Writes::Refused(description));
                        }
                        Failure::Unavailable(why) => self.readiness.still_failing(why),
                    }
                }
            }
            if !self.pause(&mut backoff).await {
                return false;
            }
        }
    }

    async fn dead_letter(&self, poison: Vec<PoisonRecord>) -> bool {
        if poison.is_empty() {
            return true;
        }
        let mut backoff = Backoff::unbounded();
        loop {
            match self.dead_letters.send(&poison).await {
                Ok(()) => {
                    DEAD_LETTER_FAILURES.recovered();
                    self.metrics.dead_lettered.inc_by(poison.len() as u64);
                    return true;
                }
                Err(e) => DEAD_LETTER_FAILURES.failed(&e),
            }
            if !self.pause(&mut backoff).await {
                return false;
            }
        }
    }

    /// Waits out one backoff step; `false` when the grace period ended first.
    async fn pause(&self, backoff: &mut Backoff) -> bool {
        tokio::select! {
            () = self.abandon.cancelled() => false,
            () = tokio::time::sleep(backoff.next_delay()) => true,
        }
    }
}

impl Pending {
    fn len(&self) -> usize {
        self.documents.len() + self.poison.len()
    }

    fn add(&mut self, batch: FetchedBatch) {
        self.offsets.insert(batch.partition, batch.next_offset);
        for record in batch.records {
            match record {
                Fetched::Purchase(event, span) => {
                    self.documents.push(document::from_event(&event));
                    self.spans.extend(span);
                }
                Fetched::Poison(poison) => self.poison.push(poison),
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

fn no_answer_within(timeout: Duration) -> mongodb::error::Error {
    ErrorKind::Io(Arc::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer to the write within {timeout:?}"),
    )))
    .into()
}
