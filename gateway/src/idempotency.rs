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

use std::{borrow::Cow, collections::HashMap, time::Duration};

use futures::TryStreamExt;
use infra::mongo::{self, document, Failure};
use mongodb::{
    bson::{doc, DateTime as BsonDateTime, Document},
    error::ErrorKind,
    options::IndexOptions,
    Collection, Database, IndexModel,
};
use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromParameter, ParseResult, Type},
};
use purchase::{NewPurchase, PurchaseEvent};
use tokio::sync::{mpsc, oneshot};

pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// The spec's pattern for the header: 1-255 visible ASCII characters without `"` or `\`,
/// bare or as a quoted structured-field string (`"abc"`, as the draft writes it).
pub const IDEMPOTENCY_KEY_PATTERN: &str = r#"^([!#-\[\]-~]{1,255}|"[!#-\[\]-~]{1,255}")$"#;

pub const COLLECTION: &str = "idempotency_keys";
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

/// One reservation waiting for the writer.
struct Pending {
    id: String,
    event: PurchaseEvent,
    reply: oneshot::Sender<Result<Reservation, String>>,
}

/// Reservations with group commit: a durable write costs the database a journal flush, so
/// one writer task writes everything that arrived while the previous write was in flight as
/// one unordered `insert_many`. Under load, batches grow with concurrency and the flushes per
/// second stay flat; when idle, a reservation is written at once.
#[derive(Clone)]
pub struct Reservations {
    keys: Collection<Document>,
    queue: mpsc::Sender<Pending>,
    retention: Duration,
    /// Longest a reservation may take; a database too slow to answer is treated as down,
    /// so a keyed purchase is answered in bounded time.
    timeout: Duration,
}

impl Reservations {
    /// Starts the writer task; it ends when the last `Reservations` clone is dropped.
    pub fn start(db: &Database, retention: Duration, timeout: Duration) -> Self {
        let keys = db.collection(COLLECTION);
        let (queue, pending) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(write_batches(keys.clone(), pending));
        Self {
            keys,
            queue,
            retention,
            timeout,
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
    /// reservation the gateway acted on survives a database crash. Nothing is produced
    /// before this returns, so on error nothing was stored.
    pub async fn reserve(
        &self,
        key: &IdempotencyKey,
        purchase: NewPurchase,
    ) -> Result<Reservation, String> {
        // A userId never contains `/`, so the pair maps to one `_id` and back.
        let id = format!("{}/{}", purchase.user_id, key.as_str());
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            id,
            event: PurchaseEvent::new(purchase),
            reply,
        };
        self.queue
            .try_send(pending)
            .map_err(|_| "too many idempotency keys are waiting for the database".to_string())?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the idempotency key writer stopped".into()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

const QUEUE_CAPACITY: usize = 10_000;
const MAX_BATCH: usize = 1_000;

async fn write_batches(keys: Collection<Document>, mut queue: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Group commit: waits for one reservation, then takes whatever queued up meanwhile.
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A caller that gave up needs no answer, but its reservation is written anyway:
        // it is harmless (nothing was produced) and makes its retry a replay.
        let answers = write_batch(&keys, &batch).await;
        for (pending, answer) in batch.drain(..).zip(answers) {
            let _ = pending.reply.send(answer);
        }
    }
}

/// One unordered `insert_many`; a duplicate `_id` means the key was used before (or twice
/// in this batch), and the stored reservation says whether this is a replay or a conflict.
async fn write_batch(
    keys: &Collection<Document>,
    batch: &[Pending],
) -> Vec<Result<Reservation, String>> {
    let now = BsonDateTime::now();
    let documents = batch.iter().map(|p| {
        doc! {
            "_id": &p.id,
            "event": document::from_event(&p.event),
            "createdAt": now,
        }
    });
    let failed: HashMap<usize, i32> = match keys.insert_many(documents).ordered(false).await {
        Ok(_) => HashMap::new(),
        Err(error) => match error.kind.as_ref() {
            ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => failure
                .write_errors
                .iter()
                .flatten()
                .map(|e| (e.index, e.code))
                .collect(),
            // A write concern error or no answer: none of them is known to be durable.
            _ => {
                let cause = Failure::of(&error).to_string();
                return batch.iter().map(|_| Err(cause.clone())).collect();
            }
        },
    };
    let duplicates: Vec<&str> = batch
        .iter()
        .enumerate()
        .filter(|(i, _)| failed.get(i) == Some(&mongo::DUPLICATE_KEY))
        .map(|(_, p)| p.id.as_str())
        .collect();
    let existing = match stored_reservations(keys, &duplicates).await {
        Ok(existing) => existing,
        Err(e) => {
            let cause = Failure::of(&e).to_string();
            return batch.iter().map(|_| Err(cause.clone())).collect();
        }
    };
    batch
        .iter()
        .enumerate()
        .map(|(i, pending)| match failed.get(&i) {
            None => Ok(Reservation::First(pending.event.clone())),
            Some(&mongo::DUPLICATE_KEY) => match existing.get(&pending.id) {
                Some(stored) if same_purchase(stored, &pending.event) => {
                    Ok(Reservation::Replay(stored.clone()))
                }
                Some(_) => Ok(Reservation::Conflict),
                None => Err(format!(
                    "reservation {} expired while read; retry",
                    pending.id
                )),
            },
            Some(code) => Err(format!(
                "reservation {} refused with code {code}",
                pending.id
            )),
        })
        .collect()
}

async fn stored_reservations(
    keys: &Collection<Document>,
    ids: &[&str],
) -> mongodb::error::Result<HashMap<String, PurchaseEvent>> {
    let mut found = HashMap::new();
    if ids.is_empty() {
        return Ok(found);
    }
    let mut cursor = keys.find(doc! { "_id": { "$in": ids } }).await?;
    while let Some(document) = cursor.try_next().await? {
        let id = document.get_str("_id").unwrap_or_default().to_string();
        let event = document
            .get_document("event")
            .map_err(|e| e.to_string())
            .and_then(|d| document::to_event(d).map_err(|e| e.to_string()))
            .map_err(|e| mongodb::error::Error::custom(format!("reservation {id}: {e}")))?;
        found.insert(id, event);
    }
    Ok(found)
}

/// The same purchase as far as a client can tell: the fields it sent.
fn same_purchase(stored: &PurchaseEvent, new: &PurchaseEvent) -> bool {
    stored.username == new.username && stored.user_id == new.user_id && stored.price == new.price
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
