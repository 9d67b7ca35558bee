//! The seed services' routes, kept so their clients keep working. They share the current
//! write path and history reads; only the shapes differ (plain arrays, `userid`).

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::{
    param::{Path, Query},
    payload::Json,
    OpenApi,
};
use purchase::Username;

use super::{
    history::{mongo_unavailable, page_limit, parse_user_id},
    model::Purchase,
    purchases::{accept, CreatedResponse, IdempotencyKeyHeader},
    ApiTags,
};
use crate::{error::ApiError, history::Owner, payload::PurchaseBody, state::AppState};

/// The seeds returned every purchase at once; we cap a response at this many (newest).
pub const LEGACY_MAX: u32 = 1000;

pub struct LegacyApi;

#[OpenApi(tag = "ApiTags::Legacy")]
impl LegacyApi {
    /// Take a purchase (cm-server `/buy`)
    ///
    /// Same as `POST /api/purchases`; also accepts `userid`.
    #[oai(path = "/buy", method = "post", operation_id = "legacyBuy", deprecated)]
    async fn buy(
        &self,
        state: Data<&Arc<AppState>>,
        body: PurchaseBody<true>,
        #[oai(name = "Idempotency-Key")] idempotency_key: IdempotencyKeyHeader,
    ) -> Result<CreatedResponse, ApiError> {
        accept(&state, body.0, idempotency_key).await
    }

    /// Take a purchase (web-server `/api/buy`)
    ///
    /// Same as `POST /api/purchases`; also accepts `userid`.
    #[oai(
        path = "/api/buy",
        method = "post",
        operation_id = "legacyApiBuy",
        deprecated
    )]
    async fn api_buy(
        &self,
        state: Data<&Arc<AppState>>,
        body: PurchaseBody<true>,
        #[oai(name = "Idempotency-Key")] idempotency_key: IdempotencyKeyHeader,
    ) -> Result<CreatedResponse, ApiError> {
        accept(&state, body.0, idempotency_key).await
    }

    /// A user's purchases by userId as an array (web-server)
    ///
    /// Newest first, at most `limit` (default and maximum 1000).
    #[oai(
        path = "/api/user/:userId/purchases",
        method = "get",
        operation_id = "legacyUserPurchases",
        deprecated
    )]
    async fn user_purchases(
        &self,
        state: Data<&Arc<AppState>>,
        #[oai(name = "userId")] user_id: Path<String>,
        limit: Query<Option<u32>>,
    ) -> Result<Json<Vec<Purchase>>, ApiError> {
        let user_id = parse_user_id(&user_id)?;
        list(&state, Owner::UserId(user_id.as_str()), limit.0).await
    }

    /// A user's purchases by username as an array (cm-api `/buyList`)
    #[oai(
        path = "/buyList/:username",
        method = "get",
        operation_id = "legacyBuyList",
        deprecated
    )]
    async fn buy_list(
        &self,
        state: Data<&Arc<AppState>>,
        username: Path<String>,
        limit: Query<Option<u32>>,
    ) -> Result<Json<Vec<Purchase>>, ApiError> {
        let username =
            Username::parse(&username).map_err(|m| ApiError::invalid_param("username", m))?;
        list(&state, Owner::Username(username.as_str()), limit.0).await
    }

    /// Purchases whose userId or username is `user`, as an array (api-server)
    ///
    /// The seed documented a username but called it with a userId, so both match.
    #[oai(
        path = "/getAllUserBuys/:user",
        method = "get",
        operation_id = "legacyGetAllUserBuys",
        deprecated
    )]
    async fn get_all_user_buys(
        &self,
        state: Data<&Arc<AppState>>,
        user: Path<String>,
        limit: Query<Option<u32>>,
    ) -> Result<Json<Vec<Purchase>>, ApiError> {
        all_user_buys(&state, &user, limit.0).await
    }

    /// Same as `/getAllUserBuys/{user}`, at the path the seed's example used
    #[oai(
        path = "/api/getAllUserBuys/:user",
        method = "get",
        operation_id = "legacyApiGetAllUserBuys",
        deprecated
    )]
    async fn api_get_all_user_buys(
        &self,
        state: Data<&Arc<AppState>>,
        user: Path<String>,
        limit: Query<Option<u32>>,
    ) -> Result<Json<Vec<Purchase>>, ApiError> {
        all_user_buys(&state, &user, limit.0).await
    }
}

async fn all_user_buys(
    state: &AppState,
    user: &str,
    limit: Option<u32>,
) -> Result<Json<Vec<Purchase>>, ApiError> {
    Username::parse(user).map_err(|m| ApiError::invalid_param("user", m))?;
    list(state, Owner::UserIdOrUsername(user), limit).await
}

pub(super) async fn list(
    state: &AppState,
    owner: Owner<'_>,
    limit: Option<u32>,
) -> Result<Json<Vec<Purchase>>, ApiError> {
    let limit = page_limit(limit, LEGACY_MAX, LEGACY_MAX)?;
    let page = state
        .history
        .page(owner, limit, None)
        .await
        .map_err(|e| mongo_unavailable(state, e))?;
    Ok(Json(
        page.purchases.into_iter().map(Purchase::from).collect(),
    ))
}
