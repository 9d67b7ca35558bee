//! Decoding, the stage between fetching and storing: a fetched record becomes a purchase
//! event, or poison for the dead-letter topic. The storage format is the sink's business.

use kafka_group::FetchedRecord;
use purchase::PurchaseEvent;

use crate::record::{Fetched, PoisonRecord, RecordSpan};

pub fn decode(topic: &str, partition: i32, fetched: FetchedRecord) -> Fetched {
    let span = RecordSpan::start(topic, partition, &fetched);
    let value = fetched.value.map(Vec::from).unwrap_or_default();
    match PurchaseEvent::from_json(&value) {
        Ok(event) => Fetched::Purchase(event, span),
        Err(e) => Fetched::Poison(PoisonRecord {
            partition,
            offset: fetched.offset,
            key: fetched.key.map(Vec::from),
            value,
            headers: fetched
                .headers
                .into_iter()
                .filter_map(|(name, value)| Some((name, value?.to_vec())))
                .collect(),
            reason: e.to_string(),
        }),
    }
}
