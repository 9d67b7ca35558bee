//! Response bodies.

use poem_openapi::Object;
use purchase::PurchaseEvent;
use uuid::Uuid;

/// The broker has the purchase; it becomes readable once a worker stored it. (Serialize:
/// written by `JsonBody`, whose test holds it equal to the `Object` form.)
#[derive(Debug, Object, serde::Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub event_id: Uuid,
    /// Where the purchase can be read (404 until a worker stored it).
    pub location: String,
    pub message: String,
}

/// A stored purchase.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Purchase {
    /// UUID v7 given by the gateway; time-ordered.
    pub event_id: Uuid,
    pub username: String,
    pub user_id: String,
    /// Exactly the amount sent, at most two decimals.
    #[oai(validator(
        minimum(value = "0", exclusive),
        maximum(value = "1000000"),
        multiple_of = 0.01
    ))]
    pub price: f64,
    /// When the gateway took the purchase: RFC 3339, UTC, milliseconds.
    pub timestamp: String,
}

impl From<PurchaseEvent> for Purchase {
    fn from(event: PurchaseEvent) -> Self {
        Self {
            event_id: event.event_id,
            username: event.username.into(),
            user_id: event.user_id.into(),
            price: event.price.as_f64(),
            timestamp: event
                .timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

/// One page of purchases, newest first.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct PurchasePage {
    pub purchases: Vec<Purchase>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<Uuid>,
}
