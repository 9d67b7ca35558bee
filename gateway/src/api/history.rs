//! History reads: a user's purchases page by page, one purchase by id, and the seed routes'
//! plain arrays of a user's purchases.

use std::sync::Arc;

use infra::{cause_log::CauseLog, mongo::Failure};
use poem::web::Data;
use poem_openapi::{
    param::{Path, Query},
    payload::Json,
    OpenApi,
};

use super::{
    model::{Purchase, PurchasePage},
    params::{PageLimit, UserIdParam, UuidParam},
    security::Authenticated,
    ApiTags,
};
use crate::{auth::Action, error::ApiError, history::Owner, state::AppState};

pub const DEFAULT_PAGE: u32 = 20;
pub const MAX_PAGE: u32 = 100;

pub struct HistoryApi;

#[OpenApi]
impl HistoryApi {
    /// A user's purchases, newest first
    ///
    /// Pages of `limit` (1-100, default 20); pass `nextCursor` back as `cursor` for the next
    /// page. Needs a bearer token whose `sub` is `userId`, or scope `purchases:read:any`
    /// to read any user's purchases (else 403).
    #[oai(
        path = "/api/users/:userId/purchases",
        method = "get",
        operation_id = "listUserPurchases",
        tag = "ApiTags::History"
    )]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        caller: Authenticated,
        #[oai(name = "userId")] user_id: Path<UserIdParam>,
        limit: Query<Option<PageLimit<DEFAULT_PAGE, MAX_PAGE>>>,
        /// `nextCursor` of the previous page.
        cursor: Query<Option<UuidParam>>,
    ) -> Result<Json<PurchasePage>, ApiError> {
        let user_id = user_id.0 .0.as_str();
        caller.check(&state, Action::Read, user_id, "userId")?;
        let limit = PageLimit::or_default(limit.0);
        let page = state
            .history
            .page(Owner::UserId(user_id), None, limit, cursor.0.map(|c| c.0))
            .await
            .map_err(|e| mongo_unavailable(&state, e))?;
        Ok(Json(PurchasePage {
            purchases: page.purchases.into_iter().map(Purchase::from).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    /// One purchase by its eventId
    ///
    /// 404 until a worker has stored it. Needs a bearer token; a purchase of another user
    /// than the token's `sub` is 404 too unless the token has scope `purchases:read:any`, so
    /// eventIds cannot be probed.
    #[oai(
        path = "/api/purchases/:eventId",
        method = "get",
        operation_id = "getPurchase",
        tag = "ApiTags::History"
    )]
    async fn get(
        &self,
        state: Data<&Arc<AppState>>,
        caller: Authenticated,
        #[oai(name = "eventId")] event_id: Path<UuidParam>,
    ) -> Result<Json<Purchase>, ApiError> {
        let event_id = event_id.0 .0;
        let not_found = || {
            ApiError::not_found(format!(
                "no stored purchase {event_id} (it may not be stored yet)"
            ))
        };
        match state.history.get(event_id).await {
            Ok(Some(event)) if caller.0.may_read(event.user_id.as_str()) => Ok(Json(event.into())),
            Ok(Some(_)) => {
                state
                    .metrics
                    .auth_failure(crate::auth::Reason::InsufficientScope);
                Err(not_found())
            }
            Ok(None) => Err(not_found()),
            Err(e) => Err(mongo_unavailable(&state, e)),
        }
    }
}

/// History reads the database did not answer, logged once per cause.
static READ_FAILURES: CauseLog = CauseLog::new("history read", std::time::Duration::from_secs(60));

pub(super) fn mongo_unavailable(state: &AppState, error: mongodb::error::Error) -> ApiError {
    let failure = Failure::of(&error);
    READ_FAILURES.failed(&failure);
    let message = if failure.is_refused() {
        "the purchase database refused the read"
    } else {
        "the purchase database did not answer"
    };
    ApiError::unavailable_read("mongodb", message, state.retry_after_seconds)
}

/// The seeds returned every purchase at once; we cap a response at this many (newest).
pub const LEGACY_MAX: u32 = 1000;

/// `limit` on the seed routes: default and maximum `LEGACY_MAX`.
pub type LegacyLimit = PageLimit<LEGACY_MAX, LEGACY_MAX>;

/// `owner`'s purchases, narrowed to `only_user_id`'s when the caller may not read others'.
pub(super) async fn purchase_array(
    state: &AppState,
    owner: Owner<'_>,
    only_user_id: Option<&str>,
    limit: Option<LegacyLimit>,
) -> Result<Json<Vec<Purchase>>, ApiError> {
    let limit = LegacyLimit::or_default(limit);
    let page = state
        .history
        .page(owner, only_user_id, limit, None)
        .await
        .map_err(|e| mongo_unavailable(state, e))?;
    Ok(Json(
        page.purchases.into_iter().map(Purchase::from).collect(),
    ))
}
