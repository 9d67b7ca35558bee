//! `POST /api/purchases`: validate, produce, answer once the broker has it.

use std::sync::Arc;

use infra::cause_log::CauseLog;
use poem::web::Data;
use poem_openapi::{payload::Json, ApiResponse, OpenApi};
use purchase::{NewPurchase, PurchaseEvent};

use poem_openapi::param::{Header, Query};

use super::{
    history::{purchase_array, LegacyLimit},
    json_body::JsonBody,
    model::{Accepted, Purchase},
    params::UserIdParam,
    paths::location_of,
    security::Authenticated,
    ApiTags,
};
use crate::{
    auth::Action,
    error::ApiError,
    history::Owner,
    idempotency::{IdempotencyKey, Reservation},
    payload::PurchaseBody,
    producer::ProduceError,
    state::AppState,
};

#[derive(ApiResponse)]
pub enum CreatedResponse {
    /// The broker acknowledged the purchase (acks=all).
    #[oai(status = 202)]
    Accepted(JsonBody<Accepted>, #[oai(header = "Location")] String),
}

pub struct PurchasesApi;

#[OpenApi]
impl PurchasesApi {
    /// Take a purchase
    ///
    /// Answers 202 only after Kafka acknowledged the record. 503 with `Retry-After` when the
    /// broker cannot take it in time: `kafka_unavailable` means nothing was stored;
    /// `kafka_outcome_unknown` (with `eventId`) means it may have been, so retry only with
    /// the same `Idempotency-Key`. With a key, every retry answers the first attempt's
    /// `eventId` and at most one purchase is stored.
    ///
    /// Needs a bearer token whose `sub` is the body's `userId`, or scope
    /// `purchases:write:any` to buy for any user (else 403).
    #[oai(
        path = "/api/purchases",
        method = "post",
        operation_id = "createPurchase",
        tag = "ApiTags::Purchases"
    )]
    async fn create(
        &self,
        state: Data<&Arc<AppState>>,
        caller: Authenticated,
        body: PurchaseBody<false>,
        #[oai(name = "Idempotency-Key")] idempotency_key: IdempotencyKeyHeader,
    ) -> Result<CreatedResponse, ApiError> {
        accept(&state, &caller, body.0, idempotency_key).await
    }

    /// A user's purchases by userId as an array (seed api-server `?userId=`)
    ///
    /// Lives here rather than with the other seed routes because poem-openapi keeps only one
    /// API's operations per path in the spec. Use `/api/users/{userId}/purchases`. Needs a
    /// bearer token whose `sub` is `userId`, or scope `purchases:read:any`.
    #[oai(
        path = "/api/purchases",
        method = "get",
        operation_id = "legacyPurchasesByQuery",
        tag = "ApiTags::Legacy",
        deprecated
    )]
    async fn purchases_by_query(
        &self,
        state: Data<&Arc<AppState>>,
        caller: Authenticated,
        #[oai(name = "userId")] user_id: Query<UserIdParam>,
        limit: Query<Option<LegacyLimit>>,
    ) -> Result<Json<Vec<Purchase>>, ApiError> {
        let user_id = user_id.0 .0.as_str();
        caller.check(&state, Action::Read, user_id, "userId")?;
        purchase_array(&state, Owner::UserId(user_id), None, limit.0).await
    }
}

/// Idempotency keys the database did not record, logged once per cause.
static RESERVATION_FAILURES: CauseLog = CauseLog::new(
    "recording an Idempotency-Key",
    std::time::Duration::from_secs(60),
);

/// The optional `Idempotency-Key` request header of every purchase route (each handler
/// names it with `#[oai(name = "Idempotency-Key")]`).
pub(super) type IdempotencyKeyHeader = Header<Option<IdempotencyKey>>;

/// The one write path, shared by the current route and the seed aliases. The caller may buy
/// for this userId, or nothing happens: no key is reserved, nothing is produced.
pub(super) async fn accept(
    state: &AppState,
    caller: &Authenticated,
    purchase: NewPurchase,
    idempotency_key: IdempotencyKeyHeader,
) -> Result<CreatedResponse, ApiError> {
    caller.check(state, Action::Buy, purchase.user_id.as_str(), "userId")?;
    let event = match idempotency_key.0 {
        None => PurchaseEvent::new(purchase),
        Some(key) => {
            match state.reservations.reserve(&key, purchase).await {
                Ok(Reservation::First(event)) => event,
                Ok(Reservation::Replay(event)) => {
                    state.metrics.idempotent_replays.inc();
                    event
                }
                Ok(Reservation::Conflict) => return Err(ApiError::idempotency_key_reused()),
                // Nothing was produced, so nothing can be stored. The cause goes to the
                // log once; the client learns only what it can act on.
                Err(e) => {
                    RESERVATION_FAILURES.failed(&e);
                    return Err(ApiError::unavailable(
                        "mongodb",
                        "the purchase database could not record the Idempotency-Key",
                        state.retry_after_seconds,
                    ));
                }
            }
        }
    };
    match state.producer.send(&event).await {
        Ok(delivery) => {
            tracing::debug!(event_id = %event.event_id, partition = delivery.partition, offset = delivery.offset, "purchase accepted");
            let location = location_of(event.event_id);
            Ok(CreatedResponse::Accepted(
                JsonBody(Accepted {
                    event_id: event.event_id,
                    location: location.clone(),
                    message: "Purchase accepted".to_string(),
                }),
                location,
            ))
        }
        Err(e) if e.outcome_unknown() => {
            state.metrics.purchases_unconfirmed.inc();
            tracing::warn!(event_id = %event.event_id, error = ?e, "purchase outcome unknown");
            Err(ApiError::outcome_unknown(
                event.event_id,
                e,
                state.retry_after_seconds,
            ))
        }
        Err(e) => {
            // A full queue is load, and refusals are logged once per cause by the producer.
            if !matches!(e, ProduceError::QueueFull | ProduceError::Refused(_)) {
                tracing::warn!(event_id = %event.event_id, error = %e, "purchase not accepted");
            }
            Err(ApiError::unavailable("kafka", e, state.retry_after_seconds))
        }
    }
}
