//! The hand-off between the fetchers and the sink, declared by neither: decoded records of
//! one partition in offset order, with records that cannot be stored typed as poison all the
//! way to the dead-letter writer.

use mongodb::bson::Document;
use tokio::sync::oneshot;

/// A record that is not a valid purchase, kept byte for byte for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct PoisonRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Why it could not be decoded or validated.
    pub reason: String,
}

pub enum Fetched {
    /// A valid purchase, as the document to store.
    Purchase(Document),
    Poison(PoisonRecord),
}

/// Consecutive records of one partition, ending just before `next_offset`.
pub struct FetchedBatch {
    pub partition: i32,
    pub next_offset: i64,
    pub records: Vec<Fetched>,
}

pub enum SinkMessage {
    Records(FetchedBatch),
    /// Write and commit everything received so far, then forget the offsets of `release`
    /// (partitions this worker no longer owns), then answer.
    Flush {
        release: Vec<i32>,
        done: oneshot::Sender<()>,
    },
}
