//! One fetch loop per assigned partition: reads records with rskafka from the group's
//! committed offset, decodes them, and hands them to the sink in order. A full sink channel
//! (the database is slow or down) pauses fetching.

use std::{sync::Arc, time::Duration};

use kafka_group::OffsetReset;
use purchase::{PurchaseDocument, PurchaseEvent};
use rskafka::client::{
    error::{Error as KafkaError, ProtocolError},
    partition::{OffsetAt, PartitionClient},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    sink::{Fetched, FetchedBatch, SinkMessage},
};

pub struct FetchSettings {
    pub max_bytes: i32,
    pub max_wait: Duration,
    pub reset: OffsetReset,
}

/// The first offset to read when the group has none committed, per the reset policy.
pub async fn reset_offset(client: &PartitionClient, reset: OffsetReset) -> Result<i64, KafkaError> {
    let at = match reset {
        OffsetReset::Earliest => OffsetAt::Earliest,
        OffsetReset::Latest => OffsetAt::Latest,
    };
    client.get_offset(at).await
}

/// Runs until `stop` is cancelled. Whatever was fetched but not yet handed over is dropped:
/// it was not committed, so the next owner reads it again.
pub async fn fetch_partition(
    client: Arc<PartitionClient>,
    mut offset: i64,
    settings: Arc<FetchSettings>,
    sink: mpsc::Sender<SinkMessage>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let partition = client.partition();
    let max_wait_ms = i32::try_from(settings.max_wait.as_millis()).unwrap_or(i32::MAX);
    let mut failures = 0u32;
    loop {
        let fetched = tokio::select! {
            () = stop.cancelled() => return,
            fetched = client.fetch_records(offset, 1..settings.max_bytes, max_wait_ms) => fetched,
        };
        let records = match fetched {
            Ok((records, _high_watermark)) => {
                failures = 0;
                records
            }
            Err(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => {
                match reset_offset(&client, settings.reset).await {
                    Ok(reset) => {
                        tracing::warn!(
                            partition,
                            from = offset,
                            to = reset,
                            "offset out of range, reset"
                        );
                        offset = reset;
                    }
                    Err(e) => tracing::warn!(partition, error = %e, "cannot reset offset"),
                }
                continue;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(partition, offset, error = %e, "fetch failed");
                let pause = Duration::from_millis(100 * u64::from(failures.min(50)));
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        // A fetch may start before the requested offset (whole compressed batches).
        let records: Vec<_> = records.into_iter().filter(|r| r.offset >= offset).collect();
        let Some(last) = records.last() else { continue };
        let next_offset = last.offset + 1;
        metrics.records_consumed.inc_by(records.len() as u64);
        let batch = FetchedBatch {
            partition,
            next_offset,
            records: records.into_iter().map(|r| decode(partition, r)).collect(),
        };
        tokio::select! {
            () = stop.cancelled() => return,
            sent = sink.send(SinkMessage::Records(batch)) => if sent.is_err() { return },
        }
        offset = next_offset;
    }
}

fn decode(partition: i32, fetched: rskafka::record::RecordAndOffset) -> Fetched {
    let value = fetched.record.value.unwrap_or_default();
    match PurchaseEvent::from_json(&value) {
        // The document is built here, in the partition's task, to keep the single sink free
        // for writing.
        Ok(event) => Fetched::Document(PurchaseDocument::from_event(&event)),
        Err(e) => Fetched::Poison {
            partition,
            offset: fetched.offset,
            key: fetched.record.key,
            value,
            reason: e.to_string(),
        },
    }
}
