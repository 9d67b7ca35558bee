//! The seed services' routes, kept so their clients keep working. They share the current
//! write path and history reads; only the shapes differ (plain arrays, `userid`).

use std::sync::Arc;

use super::{
    history::{purchase_array, LegacyLimit},
    model::Purchase,
    params::{UserIdParam, UsernameParam},
    purchases::{accept, CreatedResponse, IdempotencyKeyHeader},
    security::Authenticated,
    ApiTags,
};
use crate::{
    auth::Action, error::ApiError, history::Owner, payload::PurchaseBody, state::AppState,
};
use poem::web::Data;
use poem_openapi::{
    param::{Path, Query},
    payload::Json,
    OpenApi,
};

pub struct LegacyApi;

#[OpenApi(tag = "ApiTags::Legacy")]
impl LegacyApi {
    /// Take a purchase (cm-server `/buy`)
    ///
    /// Same as `POST /api/purchases` (same token rules); also accepts `userid`.
    #[oai(path = "/buy", method = "post", operation_id = "legacyBuy", deprecated)]
    async fn buy(
        &self,
        state: Data<&Arc<AppState>>,
        caller: Authenticated,
        body: PurchaseBody<true>,
        #[oai(name = "Idempotency-Key")] idempotency_key: IdempotencyKeyHeader,
    ) -> Result<CreatedResponse, ApiError> {
        accept(&state, &caller, body.0, idempotency_key).await
    }

    /// Take a purchase (web-server `/api/buy`)
    ///
    /// Same as `POST /api/purchases` (same token rules); also accepts `userid`.
    #[oai(
        path = "/api/buy",
        method = "post",
        operation_id = "legacyApiBuy",
        deprecated
    )]
    async fn api_buy(
        &self,
        state: Data<&Arc<AppState>>,
        caller: Authenticated,
        body: PurchaseBody<true>,
        #[oai(name = "Idempotency-Key")] idempotency_key: IdempotencyKeyHeader,
    ) -> Result<CreatedResponse, ApiError> {
        accept(&state, &caller, body.0, idempotency_key).await
    }

    /// A user's purchases by userId as an array (web-server)
    ///
    /// Newest first, at most `limit` (default and maximum 1000). Needs a bearer token whose
    /// `sub` is `userId`, or scope `purchases:read:any`.
    #[oai(
        path = "/api/user/:userId/purchases",
        method = "get",
        operation_id = "legacyUserPurchases",
        deprecated
    )]
    async fn user_purchases(
        &self,
        state: Data<&Arc<AppState>>,
        caller: Authenticated,
        #[oai(name = "userId")] user_id: Path<UserIdParam>,
        limit: Query<Option<LegacyLimit>>,
    ) -> Result<Json<Vec<Purchase>>, ApiError> {
        let user_id = user_id.0 .0.as_str();
        caller.check(&state, Action::Read, user_id, "userId")?;
        purchase_array(&state, Owner::UserId(user_id), None, limit.0).await
    }

    /// A user's purchases by username as an array (cm-api `/buyList`)
    ///
    /// A username is a display name, not an identity: without scope `purchases:read:any`
    /// only the caller's own purchases (userId = its token's `sub`) with this username are
    /// listed.
    #[oai(
        path = "/buyList/:username",
        method = "get",
        operation_id = "legacyBuyList",
        deprecated
    )]
    async fn buy_list(
        &self,
        state: Data<&Arc<AppState>>,
        caller: Authenticated,
        username: Path<UsernameParam>,
        limit: Query<Option<LegacyLimit>>,
    ) -> Result<Json<Vec<Purchase>>, ApiError> {
        let owner = Owner::Username(username.0 .0.as_str());
        purchase_array(&state, owner, caller.0.readable_user_id(), limit.0).await
    }

    /// Purchases whose userId or username is `user`, as an array (api-server)
    ///
    /// The seed documented a username but called it with a userId, so both match. Without
    /// scope `purchases:read:any` only the caller's own purchases (userId = its token's
    /// `sub`) are listed.
    #[oai(
        path = "/getAllUserBuys/:user",
        method = "get",
        operation_id = "legacyGetAllUserBuys",
        deprecated
    )]
    async fn get_all_user_buys(
        &self,
        state: Data<&Arc<AppState>>,
        caller: Authenticated,
        user: Path<UsernameParam>,
        limit: Query<Option<LegacyLimit>>,
    ) -> Result<Json<Vec<Purchase>>, ApiError> {
        all_user_buys(&state, &caller, user.0, limit.0).await
    }

    /// Same as `/getAllUserBuys/{user}`, at the path the seed's example used
    ///
    /// Same token rule: the caller's own purchases unless it has `purchases:read:any`.
    #[oai(
        path = "/api/getAllUserBuys/:user",
        method = "get",
        operation_id = "legacyApiGetAllUserBuys",
        deprecated
    )]
    async fn api_get_all_user_buys(
        &self,
        state: Data<&Arc<AppState>>,
        caller: Authenticated,
        user: Path<UsernameParam>,
        limit: Query<Option<LegacyLimit>>,
    ) -> Result<Json<Vec<Purchase>>, ApiError> {
        all_user_buys(&state, &caller, user.0, limit.0).await
    }
}

/// `user` follows the username rules, which every userId also meets.
async fn all_user_buys(
    state: &AppState,
    caller: &Authenticated,
    user: UsernameParam,
    limit: Option<LegacyLimit>,
) -> Result<Json<Vec<Purchase>>, ApiError> {
    let owner = Owner::UserIdOrUsername(user.0.as_str());
    purchase_array(state, owner, caller.0.readable_user_id(), limit).await
}
