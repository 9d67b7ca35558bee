//! History reads: a user's purchases page by page, and one purchase by id.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::{
    param::{Path, Query},
    payload::Json,
    OpenApi,
};
use purchase::UserId;
use uuid::Uuid;

use super::{
    model::{Purchase, PurchasePage},
    ApiTags,
};
use crate::{error::ApiError, history::Owner, state::AppState};

pub const DEFAULT_PAGE: u32 = 20;
pub const MAX_PAGE: u32 = 100;

pub struct HistoryApi;

#[OpenApi]
impl HistoryApi {
    /// A user's purchases, newest first
    ///
    /// Pages of `limit` (1-100, default 20); pass `nextCursor` back as `cursor` for the next
    /// page.
    #[oai(
        path = "/api/users/:userId/purchases",
        method = "get",
        operation_id = "listUserPurchases",
        tag = "ApiTags::History"
    )]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        #[oai(name = "userId")] user_id: Path<String>,
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
    ) -> Result<Json<PurchasePage>, ApiError> {
        let user_id = parse_user_id(&user_id)?;
        let limit = page_limit(limit.0, DEFAULT_PAGE, MAX_PAGE)?;
        let before = cursor
            .0
            .map(|c| {
                Uuid::parse_str(&c).map_err(|_| {
                    ApiError::invalid_param("cursor", "is not a cursor returned as nextCursor")
                })
            })
            .transpose()?;
        let page = state
            .history
            .page(Owner::UserId(user_id.as_str()), limit, before)
            .await
            .map_err(|e| mongo_unavailable(&state, e))?;
        Ok(Json(PurchasePage {
            purchases: page.purchases.into_iter().map(Purchase::from).collect(),
            next_cursor: page.next_cursor.map(|c| c.to_string()),
        }))
    }

    /// One purchase by its eventId
    ///
    /// 404 until a worker has stored it.
    #[oai(
        path = "/api/purchases/:eventId",
        method = "get",
        operation_id = "getPurchase",
        tag = "ApiTags::History"
    )]
    async fn get(
        &self,
        state: Data<&Arc<AppState>>,
        #[oai(name = "eventId")] event_id: Path<String>,
    ) -> Result<Json<Purchase>, ApiError> {
        let event_id = Uuid::parse_str(&event_id)
            .map_err(|_| ApiError::invalid_param("eventId", "must be a UUID"))?;
        match state.history.get(event_id).await {
            Ok(Some(event)) => Ok(Json(event.into())),
            Ok(None) => Err(ApiError::not_found(format!(
                "no stored purchase {event_id} (it may not be stored yet)"
            ))),
            Err(e) => Err(mongo_unavailable(&state, e)),
        }
    }
}

pub(super) fn parse_user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|m| ApiError::invalid_param("userId", m))
}

pub(super) fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid_param(
            "limit",
            format!("must be between 1 and {max}"),
        )),
    }
}

pub(super) fn mongo_unavailable(state: &AppState, error: mongodb::error::Error) -> ApiError {
    tracing::warn!(error = %error, "history read failed");
    ApiError::unavailable_read(
        "mongodb",
        "the purchase database did not answer",
        state.retry_after_seconds,
    )
}
