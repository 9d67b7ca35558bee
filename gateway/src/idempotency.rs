//! `Idempotency-Key` on the purchase routes (IETF httpapi idempotency-key draft): a client
//! that retries with the same key gets the same `eventId` and at most one stored purchase,
//! whatever happened to the first attempt (503, timeout, dropped connection, gateway restart).
//!
//! The first request with a key reserves an event for `(userId, key)` in MongoDB, durably,
//! before anything is produced. A retry finds that reservation and produces the very same
//! event again; the worker stores by `_id = eventId`, so however many copies reach the topic,
//! one purchase is stored. The reserved event keeps its UUID v7 and timestamp from the first
//! attempt, so history stays newest first. A key reused by the same user for a different
//! purchase is refused (422): it cannot mean a retry.
//!
//! Kept in MongoDB rather than in the gateway's memory so that every replica and every
//! restart sees the same reservations; only requests that carry a key pay the extra write.

use std::{borrow::Cow, time::Duration};

use mongodb::{
    bson::{doc, DateTime as BsonDateTime, Document},
    options::IndexOptions,
    Collection, Database, IndexModel,
};
use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromParameter, ParseResult, Type},
};
use purchase::{mongo, NewPurchase, PurchaseDocument, PurchaseEvent};

pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// The spec's pattern for the header: 1-255 visible ASCII characters without `"` or `\`,
/// bare or as a quoted structured-field string (`"abc"`, as the draft writes it).
pub const IDEMPOTENCY_KEY_PATTERN: &str = r#"^([!#-\[\]-~]{1,255}|"[!#-\[\]-~]{1,255}")$"#;

const COLLECTION: &str = "idempotency_keys";
const MAX_KEY_CHARS: usize = 255;

/// A client's idempotency key, as sent (quotes of the structured-field form removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(header: &str) -> Result<Self, String> {
        let key = header
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap_or(header);
        if key.is_empty() {
            return Err("must not be empty".into());
        }
        if key.len() > MAX_KEY_CHARS {
            return Err(format!("must be at most {MAX_KEY_CHARS} characters"));
        }
        if let Some(bad) = key
            .chars()
            .find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '\\'))
        {
            return Err(format!(
                "contains {bad:?}; use visible ASCII characters without quotes or backslashes, \
                 e.g. a UUID"
            ));
        }
        Ok(Self(key.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// In the spec, the header is a string with the parser's rule as its pattern.
impl Type for IdempotencyKey {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string(idempotency-key)".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            description: Some(
                "A client-chosen key (a UUID v4 is a good one) identifying one purchase intent; \
                 send the same key when retrying. Remembered per userId for \
                 --idempotency-key-retention (24 h by default).",
            ),
            pattern: Some(IDEMPOTENCY_KEY_PATTERN.to_string()),
            min_length: Some(1),
            max_length: Some(MAX_KEY_CHARS + 2),
            example: Some("8e03978e-40d5-43e8-bc93-6894a57f9324".into()),
            ..MetaSchema::new("string")
        }))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromParameter for IdempotencyKey {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Self::parse(value).map_err(ParseError::custom)
    }
}

/// What a key stands for.
#[derive(Debug)]
pub enum Reservation {
    /// The key is new: this is its event.
    First(PurchaseEvent),
    /// The key was seen with the same purchase: produce this event again.
    Replay(PurchaseEvent),
    /// The key was seen with a different purchase.
    Conflict,
}

#[derive(Clone)]
pub struct Reservations {
    keys: Collection<Document>,
    retention: Duration,
}

impl Reservations {
    pub fn new(db: &Database, retention: Duration) -> Self {
        Self {
            keys: db.collection(COLLECTION),
            retention,
        }
    }

    /// Keys are forgotten after the retention period (MongoDB's TTL monitor removes them);
    /// until then a retry is recognized.
    pub async fn ensure_index(&self) -> mongodb::error::Result<()> {
        let index = IndexModel::builder()
            .keys(doc! { "createdAt": 1 })
            .options(
                IndexOptions::builder()
                    .name("expire_after_retention".to_string())
                    .expire_after(self.retention)
                    .build(),
            )
            .build();
        self.keys.create_index(index).await.map(|_| ())
    }

    /// Reserves `purchase`'s event under `(userId, key)`, or finds what the key already
    /// stands for. The write carries the client's write concern (durable by default), so a
    /// reservation the gateway acted on survives a database crash.
    pub async fn reserve(
        &self,
        key: &IdempotencyKey,
        purchase: NewPurchase,
    ) -> mongodb::error::Result<Reservation> {
        // A userId never contains `/`, so the pair maps to one `_id` and back.
        let id = format!("{}/{}", purchase.user_id, key.as_str());
        let event = PurchaseEvent::new(purchase);
        // Two attempts: the reservation a duplicate key points at may expire in between.
        for _ in 0..2 {
            let reservation = doc! {
                "_id": &id,
                "event": PurchaseDocument::from_event(&event),
                "createdAt": BsonDateTime::now(),
            };
            match self.keys.insert_one(reservation).await {
                Ok(_) => return Ok(Reservation::First(event)),
                Err(e) if mongo::is_duplicate_key(&e) => {}
                Err(e) => return Err(e),
            }
            let Some(existing) = self.keys.find_one(doc! { "_id": &id }).await? else {
                continue;
            };
            let stored = existing
                .get_document("event")
                .map_err(|e| malformed(&id, e.to_string()))
                .and_then(|d| {
                    PurchaseDocument::to_event(d).map_err(|e| malformed(&id, e.to_string()))
                })?;
            let same = stored.username == event.username
                && stored.user_id == event.user_id
                && stored.price == event.price;
            return Ok(if same {
                Reservation::Replay(stored)
            } else {
                Reservation::Conflict
            });
        }
        Err(malformed(
            &id,
            "reservation vanished twice while read".into(),
        ))
    }
}

fn malformed(id: &str, reason: String) -> mongodb::error::Error {
    mongodb::error::Error::custom(format!("idempotency reservation {id}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_accepts_bare_and_structured_field_forms() {
        let bare = IdempotencyKey::parse("8e03978e-40d5-43e8-bc93-6894a57f9324").unwrap();
        let quoted = IdempotencyKey::parse("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"").unwrap();
        assert_eq!(bare, quoted);
        assert_eq!(bare.as_str(), "8e03978e-40d5-43e8-bc93-6894a57f9324");
    }

    #[test]
    fn key_refuses_empty_long_and_invisible_characters() {
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("\"\"").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse("a b").is_err());
        assert!(IdempotencyKey::parse("a\\b").is_err());
        assert!(IdempotencyKey::parse("ключ").is_err());
    }

    #[test]
    fn key_pattern_in_the_spec_agrees_with_the_parser() {
        let pattern = regex::Regex::new(IDEMPOTENCY_KEY_PATTERN).unwrap();
        let long = "k".repeat(255);
        let too_long = "k".repeat(256);
        for probe in [
            "abc", "\"abc\"", "", "\"\"", "a b", "a\"b", "x\\y", "~!#[]", "\"abc", "ключ", &long,
            &too_long,
        ] {
            assert_eq!(
                pattern.is_match(probe),
                IdempotencyKey::parse(probe).is_ok(),
                "{probe:?}"
            );
        }
    }
}
