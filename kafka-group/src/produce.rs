//! Writing records: one Produce request to a broker carries a batch for every partition it
//! leads, on a connection of the caller's own.
//!
//! Why not rskafka's `PartitionClient::produce`: it sends one request per partition. Twelve
//! partitions on three brokers then mean twelve requests in flight, each carrying the few
//! records that arrived for its partition, where Kafka's own clients send one request per
//! broker with every partition's batch in it. The request count, not the record count, is
//! what costs a broker (and a client) CPU at a given rate. The fetch side
//! ([`crate::RecordFetcher`]) is built the same way for the same reason.
//!
//! This module is the wire part only: who leads which partition, one connection per broker,
//! one request, and what the broker said of each partition. What to do with those answers
//! (group commit, retries, what a caller is told) is the application's policy.

use std::{borrow::Cow, collections::BTreeMap, time::Duration};

use bytes::{Bytes, BytesMut};
use kafka_protocol::{
    indexmap::IndexMap,
    messages::{
        produce_request::{PartitionProduceData, TopicProduceData},
        ProduceRequest, TopicName,
    },
    protocol::StrBytes,
    records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE,
    },
    ResponseError,
};

use crate::{
    cluster::Cluster,
    connection::Connection,
    error::{protocol_error, Error, Result},
    security::Security,
};

/// Versions with topic names (v13 switched to topic ids); v3 is the first with record
/// batches (magic 2), which every broker of the last years speaks.
const PRODUCE_VERSIONS: std::ops::RangeInclusive<i16> = 3..=12;

/// `acks=all`: the broker answers once every in-sync replica has the batch.
const ACKS_ALL: i16 = -1;

/// One record to append, built once in the shape the batch encoder takes: it is moved into a
/// [`PartitionBatch`], never copied or converted again on its way to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    record: Record,
    /// Roughly the bytes it takes in a batch, to bound request sizes.
    size: usize,
}

impl OutgoingRecord {
    /// A record with `headers` (names unique within the record: a later duplicate replaces
    /// an earlier) created at `timestamp_ms` (milliseconds since the epoch). Static header
    /// names cost no allocation.
    pub fn new(
        key: Option<Bytes>,
        value: Option<Bytes>,
        headers: impl IntoIterator<Item = (Cow<'static, str>, Bytes)>,
        timestamp_ms: i64,
    ) -> Self {
        let headers: IndexMap<StrBytes, Option<Bytes>> = headers
            .into_iter()
            .map(|(name, value)| {
                let name = match name {
                    Cow::Borrowed(name) => StrBytes::from_static_str(name),
                    Cow::Owned(name) => StrBytes::from_string(name),
                };
                (name, Some(value))
            })
            .collect();
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            // Set by the batch that takes it.
            offset: 0,
            sequence: NO_SEQUENCE,
            timestamp: timestamp_ms,
            key,
            value,
            headers,
        };
        let size = approximate_size_of(&record);
        Self { record, size }
    }

    pub fn key(&self) -> Option<&Bytes> {
        self.record.key.as_ref()
    }

    pub fn value(&self) -> Option<&Bytes> {
        self.record.value.as_ref()
    }

    /// The headers in the order given (a header without a value is left out).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.record
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.as_ref()?)))
    }

    pub fn timestamp_ms(&self) -> i64 {
        self.record.timestamp
    }

    /// Roughly the bytes the record takes in a batch, to bound request sizes.
    pub fn approximate_size(&self) -> usize {
        self.size
    }
}

/// The records of one partition for one Produce request, in order: they become one record
/// batch. Records are moved in and can be taken back out (to send them again after an
/// answer that says nothing was appended).
#[derive(Debug, Default)]
pub struct PartitionBatch {
    records: Vec<Record>,
    bytes: usize,
}

impl PartitionBatch {
    pub fn push(&mut self, record: OutgoingRecord) {
        let OutgoingRecord { mut record, size } = record;
        let position = self.records.len();
        // Offsets count from 0 as a producer sends them (the broker assigns the real ones).
        // The encoder starts a new batch wherever `offset - sequence` changes; keeping it
        // constant makes the records ONE batch (Kafka refuses a produce of more than one
        // batch per partition from v3 on) whose base sequence is NO_SEQUENCE, as a producer
        // without idempotence sends.
        record.offset = position as i64;
        record.sequence = NO_SEQUENCE.wrapping_add(position as i32);
        self.records.push(record);
        self.bytes += size;
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records, in the order they were pushed.
    pub fn into_records(self) -> impl Iterator<Item = OutgoingRecord> {
        self.records.into_iter().map(|mut record| {
            record.offset = 0;
            record.sequence = NO_SEQUENCE;
            let size = approximate_size_of(&record);
            OutgoingRecord { record, size }
        })
    }

    /// One uncompressed record batch (magic 2) of the records.
    pub fn encode(&self) -> Result<Bytes> {
        // The batch header is 61 bytes; a record's framing is within its approximate size.
        let mut buf = BytesMut::with_capacity(self.bytes + 64);
        RecordBatchEncoder::encode(
            &mut buf,
            &self.records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|e| Error::Encode(format!("record batch: {e}")))?;
        Ok(buf.freeze())
    }
}

impl FromIterator<OutgoingRecord> for PartitionBatch {
    fn from_iter<I: IntoIterator<Item = OutgoingRecord>>(records: I) -> Self {
        let mut batch = Self::default();
        for record in records {
            batch.push(record);
        }
        batch
    }
}

fn approximate_size_of(record: &Record) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.as_ref().map_or(0, Bytes::len) + 4)
        .sum();
    record.key.as_ref().map_or(0, Bytes::len)
        + record.value.as_ref().map_or(0, Bytes::len)
        + headers
        + 16
}

/// What the broker said of one partition's batch: the offset of its first record, or the
/// partition's error code.
pub type Appended = std::result::Result<i64, ResponseError>;

/// Errors with which a broker says it appended nothing of the batch, and that another
/// attempt (after looking the leader up again) may succeed. Sending the same records again
/// after one of these cannot store them twice. `NOT_ENOUGH_REPLICAS_AFTER_APPEND` and
/// `REQUEST_TIMED_OUT` are not among them: the leader may have appended the batch.
pub fn nothing_appended_retriable(error: ResponseError) -> bool {
    matches!(
        error,
        ResponseError::NotLeaderOrFollower
            | ResponseError::LeaderNotAvailable
            | ResponseError::NotEnoughReplicas
            | ResponseError::UnknownTopicOrPartition
    )
}

/// Looks leaders up and opens connections for producing.
pub struct ProduceClient {
    cluster: Cluster,
}

impl ProduceClient {
    /// `bootstrap` as `host:port` strings; `request_timeout` bounds connecting and metadata.
    pub fn new(
        bootstrap: Vec<String>,
        client_id: impl Into<String>,
        request_timeout: Duration,
    ) -> Self {
        Self {
            cluster: Cluster::new(
                bootstrap,
                client_id.into(),
                request_timeout,
                Security::default(),
            ),
        }
    }

    /// Connects with TLS and/or SASL.
    pub fn with_security(self, security: Security) -> Self {
        Self {
            cluster: self.cluster.with_security(security),
        }
    }

    /// The leader (`host:port`) of each partition of `topic` that has one now (a partition
    /// in a leader election is absent). An unknown topic is an error.
    pub async fn leaders(&self, topic: &str) -> Result<BTreeMap<i32, String>> {
        let metadata = self.cluster.metadata(&[topic.to_string()]).await?;
        if let Some(error) = metadata.refused_topics.get(topic) {
            return Err(Error::Protocol {
                api: "Metadata",
                error: *error,
            });
        }
        let partitions = metadata.topics.get(topic).ok_or(Error::Protocol {
            api: "Metadata",
            error: ResponseError::UnknownTopicOrPartition,
        })?;
        Ok(partitions.iter().map(|(p, a)| (*p, a.clone())).collect())
    }

    /// A connection of the caller's own to `address` (TLS, SASL and version negotiation
    /// done): requests on it wait for nobody else's.
    pub async fn connect(&self, address: &str) -> Result<BrokerLink> {
        let connection = self.cluster.dedicated(address).await?;
        let version = connection.version::<ProduceRequest>(PRODUCE_VERSIONS)?;
        Ok(BrokerLink {
            connection,
            version,
        })
    }
}

/// One connection to one broker, for Produce requests.
pub struct BrokerLink {
    connection: Connection,
    version: i16,
}

impl BrokerLink {
    pub fn address(&self) -> &str {
        self.connection.address()
    }

    /// True after a request failed mid-way: the link must be replaced.
    pub fn is_broken(&self) -> bool {
        self.connection.is_broken()
    }

    /// Sends one Produce request (`acks=all`) with one record batch per partition of
    /// `batches`, and waits at most `timeout` for the answer, which is also the time the
    /// broker may wait for its replicas. An `Err` means the request as a whole failed (no
    /// answer, a broken connection): the broker may have appended any of the batches.
    /// Otherwise every partition of `batches` has its own outcome.
    pub async fn produce(
        &self,
        topic: &str,
        batches: &BTreeMap<i32, PartitionBatch>,
        timeout: Duration,
    ) -> Result<BTreeMap<i32, Appended>> {
        let mut partition_data = Vec::with_capacity(batches.len());
        for (partition, batch) in batches {
            partition_data.push(
                PartitionProduceData::default()
                    .with_index(*partition)
                    .with_records(Some(batch.encode()?)),
            );
        }
        let request = ProduceRequest::default()
            .with_acks(ACKS_ALL)
            .with_timeout_ms(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX))
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(partition_data)]);
        let response = self
            .connection
            .send_with_version(&request, self.version, timeout)
            .await?;
        let outcomes: BTreeMap<i32, Appended> = response
            .responses
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| &t.partition_responses)
            .filter(|p| batches.contains_key(&p.index))
            .map(|p| {
                let outcome = match protocol_error(p.error_code) {
                    None => Ok(p.base_offset),
                    Some(error) => Err(error),
                };
                (p.index, outcome)
            })
            .collect();
        // A broker that leaves a partition out of its answer has not said it wrote it.
        for partition in batches.keys() {
            if !outcomes.contains_key(partition) {
                return Err(Error::Decode(format!(
                    "Produce response from {} without partition {partition} of {topic}",
                    self.address()
                )));
            }
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::records::RecordBatchDecoder;

    use super::*;

    fn record(value: &str, timestamp_ms: i64) -> OutgoingRecord {
        OutgoingRecord::new(
            Some(Bytes::from_static(b"user-1")),
            Some(Bytes::from(value.to_string())),
            [("ce_id".into(), Bytes::from_static(b"e-1"))],
            timestamp_ms,
        )
    }

    #[test]
    fn a_batch_decodes_to_the_records_it_was_made_of_in_order() {
        let (a, b) = (record("a", 1_000), record("b", 2_000));
        let batch: PartitionBatch = [a.clone(), b.clone()].into_iter().collect();
        let mut encoded = batch.encode().expect("encodes");
        let decoded = RecordBatchDecoder::decode(&mut encoded).expect("decodes");
        let seen: Vec<_> = decoded
            .records
            .iter()
            .map(|r| (r.offset, r.timestamp, r.value.clone(), r.headers.len()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (0, 1_000, a.value().cloned(), 1),
                (1, 2_000, b.value().cloned(), 1)
            ]
        );
    }

    #[test]
    fn the_records_of_a_partition_form_one_batch_without_a_producer_sequence() {
        let batch: PartitionBatch = (0..50).map(|n| record("r", n)).collect();
        let mut encoded = batch.encode().expect("encodes");
        let batches = RecordBatchDecoder::decode_batch_info(&mut encoded).expect("decodes");
        let shape: Vec<_> = batches
            .iter()
            .map(|b| (b.record_count, b.base_sequence, b.producer_id, b.min_offset))
            .collect();
        assert_eq!(shape, vec![(50, NO_SEQUENCE, NO_PRODUCER_ID, 0)]);
    }

    #[test]
    fn records_taken_back_from_a_batch_are_the_records_pushed() {
        let records: Vec<OutgoingRecord> = (0..3).map(|n| record("r", n)).collect();
        let batch: PartitionBatch = records.iter().cloned().collect();
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.into_records().collect::<Vec<_>>(), records);
    }

    #[test]
    fn static_and_owned_header_names_read_back_in_order() {
        let record = OutgoingRecord::new(
            None,
            Some(Bytes::from_static(b"v")),
            [
                (
                    Cow::Borrowed("content-type"),
                    Bytes::from_static(b"application/json"),
                ),
                (
                    Cow::Owned("traceparent".to_string()),
                    Bytes::from_static(b"00-1"),
                ),
            ],
            7,
        );
        let headers: Vec<_> = record
            .headers()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        assert_eq!(
            headers,
            vec![
                (
                    "content-type".to_string(),
                    Bytes::from_static(b"application/json")
                ),
                ("traceparent".to_string(), Bytes::from_static(b"00-1")),
            ]
        );
        assert!(record.approximate_size() > 1 + 12 + 16 + 11 + 4);
    }

    #[test]
    fn only_errors_raised_before_the_append_are_retried() {
        assert!(nothing_appended_retriable(
            ResponseError::NotLeaderOrFollower
        ));
        assert!(nothing_appended_retriable(ResponseError::NotEnoughReplicas));
        assert!(!nothing_appended_retriable(
            ResponseError::NotEnoughReplicasAfterAppend
        ));
        assert!(!nothing_appended_retriable(ResponseError::RequestTimedOut));
        assert!(!nothing_appended_retriable(
            ResponseError::TopicAuthorizationFailed
        ));
    }
}
