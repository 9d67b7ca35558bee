//! The purchase request body. We parse it ourselves (instead of poem-openapi's `Json<T>`) so
//! that every rejection is a JSON error naming the field, and the body size is capped while
//! reading. The derived `Object`s below only document the shape in the OpenAPI spec.

use poem::{error::ReadBodyError, Request, RequestBody};
use poem_openapi::{
    impl_apirequest_for_payload,
    payload::{Json, ParsePayload, Payload},
    registry::{MetaSchemaRef, Registry},
    types::Type,
    Object,
};
use purchase::{validation::UserIdField, NewPurchase};
use serde_json::{value::RawValue, Value};

use crate::error::ApiError;

/// The configured body size limit, attached to requests with `.data(..)`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A purchase. Unknown fields are rejected.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurchaseRequest {
    /// Display name: 1-64 letters, digits, spaces or `.-_'`, no surrounding spaces.
    #[oai(validator(min_length = 1, max_length = 64))]
    pub username: String,
    /// User id, the Kafka key: 1-64 ASCII letters, digits, `.`, `-` or `_`.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,64}$"))]
    pub user_id: String,
    /// Amount greater than 0 and at most 1000000, with at most two decimals (19.99).
    #[oai(validator(minimum(value = "0", exclusive), maximum(value = "1000000")))]
    pub price: f64,
}

/// The seed services' purchase body: `userId`, or cm-server's lowercase `userid`.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct LegacyPurchaseRequest {
    #[oai(validator(min_length = 1, max_length = 64))]
    pub username: String,
    /// Either `userId` or `userid` is required, not both.
    #[oai(rename = "userId", validator(pattern = r"^[A-Za-z0-9._-]{1,64}$"))]
    pub user_id: Option<String>,
    /// Legacy spelling of `userId`.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,64}$"))]
    pub userid: Option<String>,
    #[oai(validator(minimum(value = "0", exclusive), maximum(value = "1000000")))]
    pub price: f64,
}

/// A validated purchase body; `LEGACY` also accepts the seed spelling `userid`.
pub struct PurchaseBody<const LEGACY: bool>(pub NewPurchase);

impl<const LEGACY: bool> Payload for PurchaseBody<LEGACY> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        <Json<Value> as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        if LEGACY {
            LegacyPurchaseRequest::schema_ref()
        } else {
            PurchaseRequest::schema_ref()
        }
    }

    fn register(registry: &mut Registry) {
        PurchaseRequest::register(registry);
        LegacyPurchaseRequest::register(registry);
    }
}

impl<const LEGACY: bool> ParsePayload for PurchaseBody<LEGACY> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let limit = request
            .data::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(16 * 1024);
        let bytes = body
            .take()?
            .into_bytes_limit(limit)
            .await
            .map_err(|e| match e {
                ReadBodyError::PayloadTooLarge => ApiError::too_large(limit),
                other => ApiError::malformed_json(format!("cannot read body: {other}")),
            })?;
        // Only the syntax is checked here (the whole text, so trailing garbage or a BOM is
        // refused); the values stay text for `NewPurchase`, which reads `price` exactly.
        let body: &RawValue = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::malformed_json(format!("body is not valid JSON: {e}")))?;
        let field = if LEGACY {
            UserIdField::AllowLegacy
        } else {
            UserIdField::Current
        };
        let purchase = NewPurchase::from_json(body, field).map_err(ApiError::invalid)?;
        Ok(Self(purchase))
    }
}

impl_apirequest_for_payload!(PurchaseBody<LEGACY>, const LEGACY: bool);
