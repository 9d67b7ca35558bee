//! The stored form of a purchase in MongoDB: `_id` = eventId (so a redelivered event is a
//! harmless duplicate key), price as Decimal128 (exact money), timestamp as a BSON date.

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Bson, DateTime as BsonDateTime, Decimal128, Document};
use uuid::Uuid;

use purchase::{Price, PurchaseEvent, UserId, Username, SCHEMA_VERSION};

pub const COLLECTION: &str = "purchases";

/// Field names in the collection, shared by writers, readers and index definitions.
pub mod fields {
    pub const ID: &str = "_id";
    pub const USERNAME: &str = "username";
    pub const USER_ID: &str = "userId";
    pub const PRICE: &str = "price";
    pub const TIMESTAMP: &str = "timestamp";
}

#[derive(Debug, thiserror::Error)]
#[error("stored purchase {id} is malformed: {reason}")]
pub struct DocumentError {
    pub id: String,
    pub reason: String,
}

/// Exactly the contract's fields; nothing a producer added on the side.
pub fn from_event(event: &PurchaseEvent) -> Document {
    let price: Decimal128 = event
        .price
        .to_string()
        .parse()
        .expect("a two-decimal amount is a valid Decimal128");
    doc! {
        fields::ID: event.event_id.to_string(),
        fields::USERNAME: event.username.as_str(),
        fields::USER_ID: event.user_id.as_str(),
        fields::PRICE: price,
        fields::TIMESTAMP: BsonDateTime::from_millis(event.timestamp.timestamp_millis()),
    }
}

pub fn to_event(document: &Document) -> Result<PurchaseEvent, DocumentError> {
    let id = document.get_str(fields::ID).unwrap_or("?").to_string();
    let fail = |reason: String| DocumentError {
        id: id.clone(),
        reason,
    };
    let event_id = Uuid::parse_str(&id).map_err(|e| fail(format!("_id: {e}")))?;
    let text = |key: &str| {
        document
            .get_str(key)
            .map_err(|e| fail(format!("{key}: {e}")))
    };
    let username =
        Username::parse(text(fields::USERNAME)?).map_err(|e| fail(format!("username {e}")))?;
    let user_id = UserId::parse(text(fields::USER_ID)?).map_err(|e| fail(format!("userId {e}")))?;
    let price = match document.get(fields::PRICE) {
        Some(Bson::Decimal128(d)) => Price::parse_decimal(&d.to_string()),
        Some(Bson::Double(f)) => Price::from_f64(*f),
        Some(Bson::Int32(i)) => Price::from_cents(i64::from(*i) * 100),
        Some(Bson::Int64(i)) => Price::from_cents(i.saturating_mul(100)),
        other => return Err(fail(format!("price has unexpected value {other:?}"))),
    }
    .map_err(|e| fail(format!("price {e}")))?;
    let timestamp = document
        .get_datetime(fields::TIMESTAMP)
        .map_err(|e| fail(format!("timestamp: {e}")))?;
    let timestamp = DateTime::<Utc>::from_timestamp_millis(timestamp.timestamp_millis())
        .ok_or_else(|| fail("timestamp out of range".into()))?;
    Ok(PurchaseEvent {
        schema_version: SCHEMA_VERSION,
        event_id,
        username,
        user_id,
        price,
        timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use purchase::{validation::UserIdField, NewPurchase};

    #[test]
    fn document_round_trips_the_event_with_price_as_decimal128() {
        let body: &serde_json::value::RawValue =
            serde_json::from_str(r#"{"username": "Zoë", "userId": "u1", "price": 19.99}"#).unwrap();
        let event = PurchaseEvent::new(NewPurchase::from_json(body, UserIdField::Current).unwrap());
        let document = from_event(&event);
        assert_eq!(document.len(), 5);
        assert!(
            matches!(document.get("price"), Some(Bson::Decimal128(d)) if d.to_string() == "19.99")
        );
        assert_eq!(to_event(&document).unwrap(), event);
    }
}
