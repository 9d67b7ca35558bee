//! The versioned event on the `purchases` topic: what the gateway produces and the worker
//! consumes. Key = userId so one user's purchases keep their order within a partition.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{money::Price, partitioner::partition_for_key, NewPurchase, UserId, Username};

/// Bumped on any incompatible change of the value's shape; consumers reject versions they
/// do not know instead of guessing.
pub const SCHEMA_VERSION: u32 = 1;

/// CloudEvents (binary content mode of the Kafka protocol binding, spec 1.0): the event's
/// attributes travel as `ce_*` headers and the value stays the plain JSON contract, so a
/// CloudEvents consumer (Knative, Dapr, an SDK) reads the topic without a schema of ours.
pub mod cloudevents {
    pub const SPEC_VERSION: &str = "1.0";
    /// Where purchases come from: the gateway of this system.
    pub const SOURCE: &str = "/scalable-shop/gateway";
    /// What happened, with the value's schema version.
    pub const TYPE: &str = "scalable-shop.purchase.created.v1";
}

/// A purchase as a record on the topic, in no client's types: the producer moves it into
/// its Kafka client's record, so the contract does not depend on one. Header names are
/// unique and fixed by the contract; a value is borrowed where the contract fixes it too, so
/// making a record allocates only what differs per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(&'static str, Cow<'static, [u8]>)>,
    pub timestamp: DateTime<Utc>,
}

impl EventRecord {
    /// The value of the header `name`, if the record has it.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value.as_ref())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PurchaseEvent {
    pub schema_version: u32,
    pub event_id: Uuid,
    pub username: Username,
    pub user_id: UserId,
    pub price: Price,
    #[serde(with = "millis_rfc3339")]
    pub timestamp: DateTime<Utc>,
}

impl PurchaseEvent {
    /// Gives a purchase its identity. The timestamp is the UUID v7's own millisecond, so
    /// ordering by `eventId` and by `timestamp` always agree.
    pub fn new(purchase: NewPurchase) -> Self {
        let event_id = Uuid::now_v7();
        Self {
            schema_version: SCHEMA_VERSION,
            timestamp: uuid_v7_time(event_id),
            event_id,
            username: purchase.username,
            user_id: purchase.user_id,
            price: purchase.price,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings, numbers and a formatted date cannot fail.
        serde_json::to_vec(self).expect("purchase event serializes")
    }

    /// The Kafka record for this event and the partition it belongs to among `partitions`:
    /// key = userId through Kafka's murmur2 partitioner (so any client agrees on the
    /// partition), value = the JSON contract, timestamp = the event's own, headers the
    /// content type, schema version and CloudEvents attributes. Replaying the same event
    /// yields the same record, which is what makes a produce retry harmless (the producer
    /// adds the trace context of the request that sends it).
    pub fn to_record(&self, partitions: i32) -> (i32, EventRecord) {
        let key = self.user_id.as_str().as_bytes();
        let record = EventRecord {
            key: key.to_vec(),
            value: self.to_json(),
            headers: vec![
                fixed("content-type", "application/json"),
                (
                    "schema-version",
                    Cow::Owned(SCHEMA_VERSION.to_string().into_bytes()),
                ),
                fixed("ce_specversion", cloudevents::SPEC_VERSION),
                ("ce_id", Cow::Owned(self.event_id.to_string().into_bytes())),
                fixed("ce_source", cloudevents::SOURCE),
                fixed("ce_type", cloudevents::TYPE),
                (
                    "ce_time",
                    Cow::Owned(
                        self.timestamp
                            .to_rfc3339_opts(SecondsFormat::Millis, true)
                            .into_bytes(),
                    ),
                ),
            ],
            timestamp: self.timestamp,
        };
        (partition_for_key(key, partitions), record)
    }

    /// Decodes a record value. Unknown extra fields are dropped (only the contract's fields
    /// are ever stored); a wrong schema version or a field that fails validation is an error.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let event: Self = serde_json::from_slice(bytes)?;
        if event.schema_version != SCHEMA_VERSION {
            return Err(serde::de::Error::custom(format!(
                "unsupported schemaVersion {}",
                event.schema_version
            )));
        }
        Ok(event)
    }
}

fn fixed(name: &'static str, value: &'static str) -> (&'static str, Cow<'static, [u8]>) {
    (name, Cow::Borrowed(value.as_bytes()))
}

/// The creation time a UUID v7 carries (millisecond precision); epoch for other versions.
pub fn uuid_v7_time(id: Uuid) -> DateTime<Utc> {
    let millis = id
        .get_timestamp()
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        })
        .unwrap_or(0);
    Utc.timestamp_millis_opt(millis)
        .single()
        .unwrap_or_default()
}

/// RFC 3339 with exactly three fractional digits and `Z`: the precision MongoDB keeps, so the
/// time reads back from the history API exactly as it was produced.
pub mod millis_rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("timestamp: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::UserIdField;

    fn sample() -> PurchaseEvent {
        let body: &serde_json::value::RawValue =
            serde_json::from_str(r#"{"username": "ann", "userId": "u1", "price": 19.99}"#).unwrap();
        PurchaseEvent::new(NewPurchase::from_json(body, UserIdField::Current).unwrap())
    }

    #[test]
    fn value_has_exactly_the_contract_fields() {
        let event = sample();
        let value: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "eventId",
                "price",
                "schemaVersion",
                "timestamp",
                "userId",
                "username"
            ]
        );
        assert_eq!(value["price"], serde_json::json!(19.99));
        assert_eq!(event.event_id.get_version_num(), 7);
    }

    #[test]
    fn records_carry_the_cloudevents_attributes_of_their_event_in_binary_mode() {
        let event = sample();
        let (_, record) = event.to_record(12);
        let header = |name: &str| String::from_utf8(record.header(name).unwrap().to_vec()).unwrap();
        assert_eq!(header("ce_specversion"), "1.0");
        assert_eq!(header("ce_id"), event.event_id.to_string());
        assert_eq!(header("ce_source"), "/scalable-shop/gateway");
        assert_eq!(header("ce_type"), "scalable-shop.purchase.created.v1");
        assert_eq!(
            DateTime::parse_from_rfc3339(&header("ce_time")).unwrap(),
            event.timestamp
        );
        assert_eq!(header("content-type"), "application/json");
        // The same event always makes the same record: a produce retry is harmless.
        assert_eq!(event.to_record(12).1, record);
    }

    #[test]
    fn timestamp_is_the_event_id_millisecond_and_round_trips() {
        let event = sample();
        assert_eq!(event.timestamp, uuid_v7_time(event.event_id));
        let back = PurchaseEvent::from_json(&event.to_json()).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn decoding_drops_extra_fields_and_rejects_bad_ones() {
        let event = sample();
        let mut value: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        value["coupon"] = serde_json::json!("FREE");
        let back = PurchaseEvent::from_json(value.to_string().as_bytes()).unwrap();
        assert_eq!(back, event);

        value["price"] = serde_json::json!(-1);
        assert!(PurchaseEvent::from_json(value.to_string().as_bytes()).is_err());
        value["price"] = serde_json::json!(1);
        value["schemaVersion"] = serde_json::json!(2);
        assert!(PurchaseEvent::from_json(value.to_string().as_bytes()).is_err());
    }
}
