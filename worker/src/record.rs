//! The hand-off between the fetchers and the sink, declared by neither: decoded records of
//! one partition in offset order, with records that cannot be stored typed as poison all the
//! way to the dead-letter writer.

use std::{collections::BTreeMap, time::SystemTime};

use infra::traces;
use kafka_group::FetchedRecord;
use opentelemetry::{
    trace::{Span, SpanKind, TraceContextExt, Tracer},
    Context, KeyValue,
};
use purchase::PurchaseEvent;
use tokio::sync::oneshot;

/// A record that is not a valid purchase, kept for the dead-letter topic: key, value and
/// headers as they came, except that a missing value is kept as empty bytes.
#[derive(Debug, Clone)]
pub struct PoisonRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Its headers as they came (a header without a value is left out), so the dead letter
    /// keeps the trace context and CloudEvents attributes of the original.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Why it could not be decoded or validated.
    pub reason: String,
}

pub enum Fetched {
    /// A valid purchase, with its span when spans are exported.
    Purchase(PurchaseEvent, Option<RecordSpan>),
    Poison(PoisonRecord),
}

/// The consumer span of one record, continuing the trace its headers carry (the gateway's
/// produce span). It is open from the fetch until the write that stores the record is
/// acknowledged, and that write becomes its child: one trace shows HTTP, produce, consume
/// and the MongoDB write.
pub struct RecordSpan(Context);

impl RecordSpan {
    /// `None` unless spans are exported: a pipeline without tracing does nothing per record.
    pub fn start(topic: &str, partition: i32, record: &FetchedRecord) -> Option<Self> {
        if !traces::exporting() {
            return None;
        }
        let parent = traces::context_from(
            record
                .headers
                .iter()
                .filter_map(|(name, value)| Some((name.as_str(), value.as_deref()?))),
        );
        let tracer = traces::tracer();
        let mut attributes = vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", topic.to_string()),
            KeyValue::new("messaging.destination.partition.id", partition.to_string()),
            KeyValue::new("messaging.kafka.offset", record.offset),
        ];
        if let Some(id) = header(record, "ce_id") {
            attributes.push(KeyValue::new("messaging.message.id", id));
        }
        let span = tracer
            .span_builder(format!("process {topic}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .start_with_context(&tracer, &parent);
        Some(Self(parent.with_span(span)))
    }

    /// The record was stored by the write of `documents` into `namespace` (`db.collection`)
    /// that started at `write_started` and was acknowledged now.
    pub fn stored(
        self,
        namespace: &mongodb::Namespace,
        documents: usize,
        write_started: SystemTime,
    ) {
        let tracer = traces::tracer();
        tracer
            .span_builder(format!("insert {}", namespace.coll))
            .with_kind(SpanKind::Client)
            .with_start_time(write_started)
            .with_attributes([
                KeyValue::new("db.system.name", "mongodb"),
                KeyValue::new("db.operation.name", "insert"),
                KeyValue::new("db.namespace", namespace.db.clone()),
                KeyValue::new("db.collection.name", namespace.coll.clone()),
                KeyValue::new("db.operation.batch.size", documents as i64),
            ])
            .start_with_context(&tracer, &self.0)
            .end();
        self.0.span().end();
    }
}

fn header(record: &FetchedRecord, name: &str) -> Option<String> {
    let (_, value) = record.headers.iter().find(|(n, _)| n == name)?;
    String::from_utf8(value.as_deref()?.to_vec()).ok()
}

/// Consecutive records of one partition, ending just before `next_offset`.
pub struct FetchedBatch {
    pub partition: i32,
    pub next_offset: i64,
    pub records: Vec<Fetched>,
}

pub enum SinkMessage {
    Records(FetchedBatch),
    /// Write everything received so far; the commit stage then records it, forgets the
    /// offsets of `release` (partitions this worker no longer owns) and answers.
    Flush {
        release: Vec<i32>,
        done: oneshot::Sender<()>,
    },
}

/// What the sink tells the commit stage, in the order it happens.
pub enum Ack {
    /// Every record of these partitions before these offsets is stored (or dead-lettered).
    Stored(BTreeMap<i32, i64>),
    /// The sink has written everything it received for `release` (partitions this worker no
    /// longer owns): commit their progress one last time, forget them, then answer.
    Release {
        release: Vec<i32>,
        done: oneshot::Sender<()>,
    },
}
