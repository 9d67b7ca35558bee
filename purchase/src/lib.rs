//! The purchase event contract: what a purchase is (validated names, ids and money), the
//! versioned event the gateway produces and the worker consumes, and its record on the
//! topic (key, value, headers and partition). Nothing here talks to a server.

pub mod event;
pub mod money;
pub mod partitioner;
pub mod validation;

pub use event::{EventRecord, PurchaseEvent, SCHEMA_VERSION};
pub use money::Price;
pub use validation::{NewPurchase, UserId, Username, ValidationError};
