//! Purchase history reads, straight from MongoDB: they never wait on the worker fleet.

use futures::TryStreamExt;
use infra::mongo::{
    self,
    document::{self, fields},
};
use mongodb::{
    bson::{doc, Document},
    options::FindOptions,
    Collection, Database,
};
use purchase::PurchaseEvent;
use uuid::Uuid;

/// Whose purchases to read.
pub enum Owner<'a> {
    UserId(&'a str),
    Username(&'a str),
    /// The seed route `getAllUserBuys/{x}` was documented with a username but called with a
    /// userId; matching either keeps both kinds of old clients working.
    UserIdOrUsername(&'a str),
}

impl Owner<'_> {
    fn filter(&self) -> Document {
        match self {
            Owner::UserId(id) => doc! { fields::USER_ID: *id },
            Owner::Username(name) => doc! { fields::USERNAME: *name },
            Owner::UserIdOrUsername(x) => {
                doc! { "$or": [ { fields::USER_ID: *x }, { fields::USERNAME: *x } ] }
            }
        }
    }
}

/// One page of a user's purchases, newest first, and where the next page starts.
pub struct Page {
    pub purchases: Vec<PurchaseEvent>,
    pub next_cursor: Option<Uuid>,
}

#[derive(Clone)]
pub struct History {
    purchases: Collection<Document>,
}

impl History {
    pub fn new(db: &Database) -> Self {
        Self {
            purchases: mongo::purchases(db),
        }
    }

    /// Newest first. `_id` is a UUID v7 (time-ordered), so the cursor is simply the last
    /// eventId seen and the next page is everything older: stable under concurrent inserts.
    /// `only_user_id` narrows the owner's purchases to those of that userId (a caller's own,
    /// when it may not read every user's).
    pub async fn page(
        &self,
        owner: Owner<'_>,
        only_user_id: Option<&str>,
        limit: u32,
        before: Option<Uuid>,
    ) -> mongodb::error::Result<Page> {
        let mut filter = match only_user_id {
            None => owner.filter(),
            Some(user_id) => doc! { "$and": [owner.filter(), { fields::USER_ID: user_id }] },
        };
        if let Some(before) = before {
            filter.insert(fields::ID, doc! { "$lt": before.to_string() });
        }
        let options = FindOptions::builder()
            .sort(doc! { fields::ID: -1 })
            .limit(i64::from(limit) + 1)
            .build();
        let documents: Vec<Document> = self
            .purchases
            .find(filter)
            .with_options(options)
            .await?
            .try_collect()
            .await?;
        let has_more = documents.len() > limit as usize;
        let page = &documents[..documents.len().min(limit as usize)];
        // The cursor is the last document of the page even if it failed to decode, so a
        // malformed row can neither end the listing early nor repeat.
        let next_cursor = match page.last() {
            Some(last) if has_more => last
                .get_str(fields::ID)
                .ok()
                .and_then(|id| Uuid::parse_str(id).ok()),
            _ => None,
        };
        let purchases = page.iter().filter_map(decode).collect();
        Ok(Page {
            purchases,
            next_cursor,
        })
    }

    pub async fn get(&self, event_id: Uuid) -> mongodb::error::Result<Option<PurchaseEvent>> {
        let found = self
            .purchases
            .find_one(doc! { fields::ID: event_id.to_string() })
            .await?;
        Ok(found.as_ref().and_then(decode))
    }
}

/// A document that does not match the contract is logged and left out rather than failing
/// the whole page: one bad row must not hide a user's other purchases.
fn decode(document: &Document) -> Option<PurchaseEvent> {
    document::to_event(document)
        .map_err(|e| tracing::error!(error = %e, "skipping malformed purchase document"))
        .ok()
}
