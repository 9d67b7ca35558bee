//! Where the API's resources live: the paths its answers point to.

use uuid::Uuid;

pub fn location_of(event_id: Uuid) -> String {
    format!("/api/purchases/{event_id}")
}
