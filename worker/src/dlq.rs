//! The dead-letter topic: poison records keep their key, value and headers byte for byte; the
//! reason and where they came from travel in added `dlq.*` headers (the Kafka Connect
//! convention), which replace any the original carried.

use std::{collections::BTreeMap, sync::Arc};

use rskafka::{
    client::partition::{Compression, PartitionClient},
    record::Record,
};

use crate::record::PoisonRecord;

#[derive(Clone)]
pub struct DeadLetters {
    /// One client per partition of the dead-letter topic.
    partitions: Vec<Arc<PartitionClient>>,
    source_topic: String,
}

impl DeadLetters {
    pub fn new(partitions: Vec<Arc<PartitionClient>>, source_topic: String) -> Self {
        assert!(
            !partitions.is_empty(),
            "the dead-letter topic has partitions"
        );
        Self {
            partitions,
            source_topic,
        }
    }

    /// Produces the poison records, each to the dead-letter partition of its source partition.
    pub async fn send(&self, poison: &[PoisonRecord]) -> Result<(), rskafka::client::error::Error> {
        let mut by_partition: BTreeMap<usize, Vec<Record>> = BTreeMap::new();
        for PoisonRecord {
            partition,
            offset,
            key,
            value,
            headers,
            reason,
        } in poison
        {
            let target = (*partition as usize) % self.partitions.len();
            let mut headers: BTreeMap<String, Vec<u8>> = headers.iter().cloned().collect();
            headers.extend([
                ("dlq.reason".to_string(), reason.clone().into_bytes()),
                (
                    "dlq.topic".to_string(),
                    self.source_topic.clone().into_bytes(),
                ),
                (
                    "dlq.partition".to_string(),
                    partition.to_string().into_bytes(),
                ),
                ("dlq.offset".to_string(), offset.to_string().into_bytes()),
            ]);
            by_partition.entry(target).or_default().push(Record {
                key: key.clone(),
                value: Some(value.clone()),
                headers,
                timestamp: rskafka::chrono::DateTime::from_timestamp_millis(now_millis())
                    .unwrap_or_default(),
            });
        }
        for (target, records) in by_partition {
            self.partitions[target]
                .produce(records, Compression::NoCompression)
                .await?;
        }
        Ok(())
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
