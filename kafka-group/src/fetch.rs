//! Reading records of many partitions at once: one Fetch request per leader broker carries
//! every partition that broker leads, on a connection of its own.
//!
//! Why not one rskafka `PartitionClient::fetch_records` loop per partition: rskafka sends the
//! requests of every partition over the one connection it keeps per broker, and a broker
//! answers a connection's requests one at a time, in order (Kafka does, nisshi too). Loops
//! that wait for records on the broker (`max_wait`) then queue behind each other's waits, and
//! loops that do not wait flood the broker with fetches of a handful of records each. One
//! request for all of a broker's partitions waits once for all of them and comes back with
//! whatever any of them has, which is how the Java client, librdkafka and KafkaJS fetch.
//!
//! Records are decoded with `kafka-protocol`'s record batch decoder (every compression
//! codec). Control records are skipped, and so are the records of aborted transactions (the
//! request reads committed data only), as Kafka's own consumer does.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use bytes::{Buf, Bytes};
use kafka_protocol::{
    messages::{
        fetch_request::{FetchPartition, FetchTopic},
        fetch_response::{AbortedTransaction, PartitionData},
        BrokerId, FetchRequest, FetchResponse, TopicName,
    },
    protocol::StrBytes,
    records::RecordBatchDecoder,
    ResponseError,
};

use crate::{
    cluster::Cluster,
    connection::Connection,
    error::{check, Error, Result},
    security::Security,
    TopicPartition,
};

/// Versions with topic names (v13 switched to topic ids) and `READ_COMMITTED` (v4).
const FETCH_VERSIONS: std::ops::RangeInclusive<i16> = 4..=12;

/// `isolation_level`: only records of committed transactions (and non-transactional ones).
const READ_COMMITTED: i8 = 1;

/// A record batch starts with its base offset (8 bytes) and the length of the rest (4).
const BATCH_HEADER: usize = 12;
/// Where a batch stores the delta of its last offset (after partition leader epoch, magic,
/// CRC and attributes).
const LAST_OFFSET_DELTA_AT: usize = 23;

/// What one request may ask of the broker.
#[derive(Debug, Clone)]
pub struct FetchLimits {
    /// The broker answers once this many bytes are ready, or `max_wait` has passed.
    pub min_bytes: i32,
    /// How long the broker may hold the request open waiting for `min_bytes`.
    pub max_wait: Duration,
    /// Bytes per response, all partitions together.
    pub max_bytes: i32,
    /// Bytes per partition.
    pub partition_max_bytes: i32,
}

/// One record as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecord {
    pub offset: i64,
    /// Milliseconds since the epoch (create or log-append time, as the topic says).
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// What one partition's part of a response held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRecords {
    /// Records at or after the requested offset, in offset order.
    pub records: Vec<FetchedRecord>,
    /// Where this partition's next fetch starts: past every whole batch returned, including
    /// control batches and aborted ones that yield no records; the requested offset when
    /// nothing whole came back.
    pub next_offset: i64,
    /// The partition's end as the broker saw it: `next_offset < high_watermark` means more
    /// records are waiting.
    pub high_watermark: i64,
    /// Bytes of record batches in the response for this partition.
    pub bytes: usize,
}

/// Fetches many partitions with one request per leader. Owns its connections: a fetch
/// that waits on the broker never delays another client's request.
pub struct RecordFetcher {
    cluster: Cluster,
    leaders: HashMap<TopicPartition, String>,
    connections: HashMap<String, Connection>,
}

impl RecordFetcher {
    /// `bootstrap` as `host:port` strings; `request_timeout` bounds each request beyond the
    /// time the broker may wait for records.
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
            leaders: HashMap::new(),
            connections: HashMap::new(),
        }
    }

    /// Connects with TLS and/or SASL (call before the first fetch).
    pub fn with_security(self, security: Security) -> Self {
        Self {
            cluster: self.cluster.with_security(security),
            leaders: HashMap::new(),
            connections: HashMap::new(),
        }
    }

    /// Reads every partition of `positions` from its offset: one request per leader broker,
    /// all leaders at once. Each partition gets its own outcome, so a broker that fails holds
    /// back only the partitions it leads; after a connection error or a leadership change
    /// the next call reconnects and looks the leaders up again.
    pub async fn fetch(
        &mut self,
        positions: &BTreeMap<TopicPartition, i64>,
        limits: &FetchLimits,
    ) -> BTreeMap<TopicPartition, Result<PartitionRecords>> {
        let mut outcomes = BTreeMap::new();
        if let Err(e) = self.find_leaders(positions.keys()).await {
            for tp in positions
                .keys()
                .filter(|tp| !self.leaders.contains_key(*tp))
            {
                outcomes.insert(tp.clone(), Err(e.clone()));
            }
        }
        let mut by_leader: BTreeMap<String, BTreeMap<TopicPartition, i64>> = BTreeMap::new();
        for (tp, offset) in positions {
            if let Some(leader) = self.leaders.get(tp) {
                by_leader
                    .entry(leader.clone())
                    .or_default()
                    .insert(tp.clone(), *offset);
            } else if !outcomes.contains_key(tp) {
                let error = Error::Config(format!("no leader known for {tp}"));
                outcomes.insert(tp.clone(), Err(error));
            }
        }

        let cluster = &self.cluster;
        let mut requests = Vec::new();
        for (leader, partitions) in by_leader {
            let connection = self.connections.remove(&leader);
            requests.push(async move {
                let connection = match connection {
                    Some(c) if !c.is_broken() => Ok(c),
                    _ => cluster.dedicated(&leader).await,
                };
                let response = match &connection {
                    Ok(c) => fetch_from(c, &partitions, limits).await,
                    Err(e) => Err(e.clone()),
                };
                (leader, connection.ok(), partitions, response)
            });
        }
        for (leader, connection, partitions, response) in futures::future::join_all(requests).await
        {
            match response {
                Ok(mut response) => {
                    if let Some(connection) = connection {
                        self.connections.insert(leader, connection);
                    }
                    for (tp, offset) in partitions {
                        let outcome = take_partition(&mut response, &tp)
                            .and_then(|data| partition_records(data, offset));
                        if outcome.as_ref().is_err_and(leadership_moved) {
                            self.leaders.remove(&tp);
                        }
                        outcomes.insert(tp, outcome);
                    }
                }
                Err(e) => {
                    tracing::debug!(%leader, error = %e, "fetch request failed");
                    for tp in partitions.into_keys() {
                        self.leaders.remove(&tp);
                        outcomes.insert(tp, Err(e.clone()));
                    }
                }
            }
        }
        outcomes
    }

    /// Looks up the leaders of the partitions not known yet.
    async fn find_leaders<'a>(
        &mut self,
        partitions: impl Iterator<Item = &'a TopicPartition>,
    ) -> Result<()> {
        let missing: BTreeSet<String> = partitions
            .filter(|tp| !self.leaders.contains_key(*tp))
            .map(|tp| tp.topic.clone())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let topics: Vec<String> = missing.into_iter().collect();
        let metadata = self.cluster.metadata(&topics).await?;
        for (topic, partitions) in metadata.topics {
            for (partition, leader) in partitions {
                self.leaders
                    .insert(TopicPartition::new(topic.clone(), partition), leader);
            }
        }
        Ok(())
    }
}

async fn fetch_from(
    connection: &Connection,
    partitions: &BTreeMap<TopicPartition, i64>,
    limits: &FetchLimits,
) -> Result<FetchResponse> {
    let version = connection.version::<FetchRequest>(FETCH_VERSIONS)?;
    let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for (tp, offset) in partitions {
        topics.entry(&tp.topic).or_default().push(
            FetchPartition::default()
                .with_partition(tp.partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(*offset)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(limits.partition_max_bytes),
        );
    }
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(i32::try_from(limits.max_wait.as_millis()).unwrap_or(i32::MAX))
        .with_min_bytes(limits.min_bytes)
        .with_max_bytes(limits.max_bytes)
        .with_isolation_level(READ_COMMITTED)
        // No fetch session (KIP-227): session id 0 with the final epoch asks for a full fetch.
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(topic, partitions)| {
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let timeout = connection.request_timeout() + limits.max_wait;
    let response = connection
        .send_with_version(&request, version, timeout)
        .await?;
    check("Fetch", response.error_code)?;
    Ok(response)
}

/// Moves one partition's data out of the response.
fn take_partition(response: &mut FetchResponse, tp: &TopicPartition) -> Result<PartitionData> {
    response
        .responses
        .iter_mut()
        .filter(|t| t.topic.0.as_str() == tp.topic)
        .flat_map(|t| t.partitions.iter_mut())
        .find(|p| p.partition_index == tp.partition)
        .map(std::mem::take)
        .ok_or_else(|| Error::Decode(format!("fetch response without {tp}")))
}

/// Errors after which the partition's leader must be looked up again.
fn leadership_moved(error: &Error) -> bool {
    matches!(
        error.protocol(),
        Some(
            ResponseError::NotLeaderOrFollower
                | ResponseError::LeaderNotAvailable
                | ResponseError::UnknownTopicOrPartition
                | ResponseError::FencedLeaderEpoch
                | ResponseError::UnknownLeaderEpoch
        )
    )
}

fn partition_records(data: PartitionData, offset: i64) -> Result<PartitionRecords> {
    check("Fetch", data.error_code)?;
    let records = data.records.unwrap_or_default();
    let bytes = records.len();
    let aborted = data.aborted_transactions.unwrap_or_default();
    let (records, next_offset) = decode_batches(records, offset, aborted)?;
    Ok(PartitionRecords {
        records,
        next_offset,
        high_watermark: data.high_watermark,
        bytes,
    })
}

/// Decodes the whole batches of `data` (a response may end in a batch cut short by the size
/// limit; it is read again by the next fetch) and returns the records at or after `offset`
/// that are neither control records nor part of an aborted transaction, with the offset
/// after the last whole batch.
fn decode_batches(
    mut data: Bytes,
    offset: i64,
    aborted: Vec<AbortedTransaction>,
) -> Result<(Vec<FetchedRecord>, i64)> {
    let mut aborted = AbortedTransactions::new(aborted);
    let mut records = Vec::new();
    let mut next_offset = offset;
    while data.len() >= BATCH_HEADER {
        let length = i32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        let Ok(length) = usize::try_from(length) else {
            return Err(Error::Decode(format!(
                "record batch of negative length {length}"
            )));
        };
        if data.len() < BATCH_HEADER + length {
            break;
        }
        let mut batch = data.split_to(BATCH_HEADER + length);
        if batch.len() < LAST_OFFSET_DELTA_AT + 4 {
            return Err(Error::Decode(format!("record batch of {length} bytes")));
        }
        let base_offset = (&batch[0..8]).get_i64();
        let last_delta = (&batch[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]).get_i32();
        let set = RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| Error::Decode(format!("record batch at offset {base_offset}: {e}")))?;
        next_offset = next_offset.max(base_offset + i64::from(last_delta) + 1);
        for record in set.records {
            if record.control {
                aborted.on_control(&record);
                continue;
            }
            if record.offset < offset
                || (record.transactional && aborted.is_aborted(record.producer_id, record.offset))
            {
                continue;
            }
            records.push(FetchedRecord {
                offset: record.offset,
                timestamp: record.timestamp,
                key: record.key,
                value: record.value,
                headers: record
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            });
        }
    }
    Ok((records, next_offset))
}

/// The aborted transactions a response lists, applied in offset order as Kafka's consumer
/// does: a producer's records are skipped from its aborted transaction's first offset until
/// its abort marker.
struct AbortedTransactions {
    /// (first offset, producer id), by first offset.
    pending: Vec<(i64, i64)>,
    open: BTreeSet<i64>,
}

/// Control record key: version (i16), then type: 0 abort, 1 commit.
const ABORT_MARKER: i16 = 0;

impl AbortedTransactions {
    fn new(list: Vec<AbortedTransaction>) -> Self {
        let mut pending: Vec<(i64, i64)> = list
            .into_iter()
            .map(|t| (t.first_offset, t.producer_id.0))
            .collect();
        pending.sort_unstable_by(|a, b| b.cmp(a)); // popped from the end, lowest first
        Self {
            pending,
            open: BTreeSet::new(),
        }
    }

    fn is_aborted(&mut self, producer_id: i64, offset: i64) -> bool {
        while self
            .pending
            .last()
            .is_some_and(|(first, _)| *first <= offset)
        {
            if let Some((_, producer)) = self.pending.pop() {
                self.open.insert(producer);
            }
        }
        self.open.contains(&producer_id)
    }

    fn on_control(&mut self, record: &kafka_protocol::records::Record) {
        let marker = record
            .key
            .as_ref()
            .filter(|k| k.len() >= 4)
            .map(|k| i16::from_be_bytes([k[2], k[3]]));
        if marker == Some(ABORT_MARKER) {
            self.open.remove(&record.producer_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::{
        messages::ProducerId,
        records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType},
    };

    use super::*;

    fn record(offset: i64, value: &str) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            // The encoder keeps records in one batch while offset - sequence stays the same.
            sequence: offset as i32,
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"user")),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: Default::default(),
        }
    }

    fn encode(records: &[Record], compression: Compression) -> Bytes {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encodes");
        buf.freeze()
    }

    fn values(records: &[FetchedRecord]) -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).to_string())
            .collect()
    }

    #[test]
    fn records_before_the_requested_offset_are_left_out_but_the_next_offset_follows_the_batch() {
        let data = encode(
            &[record(10, "a"), record(11, "b"), record(12, "c")],
            Compression::Gzip,
        );
        let (records, next) = decode_batches(data, 11, Vec::new()).expect("decodes");
        assert_eq!(values(&records), ["b", "c"]);
        assert_eq!(records[0].offset, 11);
        assert_eq!(next, 13);
    }

    #[test]
    fn a_batch_cut_short_by_the_size_limit_is_left_for_the_next_fetch() {
        let mut data = BytesMut::new();
        data.extend_from_slice(&encode(&[record(0, "a")], Compression::None));
        let second = encode(&[record(1, "b"), record(2, "c")], Compression::None);
        data.extend_from_slice(&second[..second.len() - 5]);
        let (records, next) = decode_batches(data.freeze(), 0, Vec::new()).expect("decodes");
        assert_eq!(values(&records), ["a"]);
        assert_eq!(next, 1);
    }

    #[test]
    fn no_whole_batch_leaves_the_offset_where_it_was() {
        let data = encode(&[record(5, "a")], Compression::None);
        let (records, next) =
            decode_batches(data.slice(..data.len() - 1), 5, Vec::new()).expect("decodes");
        assert!(records.is_empty());
        assert_eq!(next, 5);
    }

    #[test]
    fn records_of_an_aborted_transaction_and_control_records_are_skipped() {
        let transactional = |offset: i64, value: &str| Record {
            transactional: true,
            producer_id: 7,
            producer_epoch: 0,
            ..record(offset, value)
        };
        let marker = |offset: i64, kind: i16| Record {
            control: true,
            key: Some(Bytes::copy_from_slice(
                &[0i16.to_be_bytes(), kind.to_be_bytes()].concat(),
            )),
            value: None,
            ..transactional(offset, "")
        };
        let mut data = BytesMut::new();
        data.extend_from_slice(&encode(&[record(0, "plain")], Compression::None));
        data.extend_from_slice(&encode(
            &[transactional(1, "aborted 1"), transactional(2, "aborted 2")],
            Compression::None,
        ));
        data.extend_from_slice(&encode(&[marker(3, ABORT_MARKER)], Compression::None));
        data.extend_from_slice(&encode(&[transactional(4, "committed")], Compression::None));
        data.extend_from_slice(&encode(&[marker(5, 1)], Compression::None));
        let aborted = vec![AbortedTransaction::default()
            .with_producer_id(ProducerId(7))
            .with_first_offset(1)];
        let (records, next) = decode_batches(data.freeze(), 0, aborted).expect("decodes");
        assert_eq!(values(&records), ["plain", "committed"]);
        assert_eq!(next, 6);
    }

    #[test]
    fn a_corrupt_batch_is_an_error_not_an_empty_fetch() {
        let mut data = BytesMut::from(&encode(&[record(0, "a")], Compression::None)[..]);
        data[16] = 9; // an unknown magic byte
        assert!(decode_batches(data.freeze(), 0, Vec::new()).is_err());
    }
}
