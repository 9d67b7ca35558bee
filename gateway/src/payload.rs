//! The purchase request body. We parse it ourselves (instead of poem-openapi's `Json<T>`) so
//! that every rejection is a JSON error naming the field, and the body size is capped while
//! reading. The derived `Object`s below only document the shape in the OpenAPI spec.

use poem::{error::ReadBodyError, Request, RequestBody};
use poem_openapi::{
    impl_apirequest_for_payload,
    payload::{Json, ParsePayload, Payload},
    registry::{MetaSchemaRef, Registry},
    types::Type,
    Object, Union,
};
use purchase::{validation::UserIdField, NewPurchase};
use serde_json::{value::RawValue, Value};

use crate::error::ApiError;

/// The configured body size limit, attached to requests with `.data(..)`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

// The patterns below are `purchase::validation::{USERNAME_PATTERN, USER_ID_PATTERN}` (an
// attribute needs a literal); a test checks that the spec carries exactly those.

/// A purchase. Unknown fields are rejected, and so is a field given twice.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurchaseRequest {
    /// Display name: 1-64 letters, digits, spaces or `.-_'`, no surrounding spaces.
    #[oai(validator(
        min_length = 1,
        max_length = 64,
        pattern = r"^[\p{Alpha}\p{N}._'-](?:[\p{Alpha}\p{N} ._'-]*[\p{Alpha}\p{N}._'-])?$"
    ))]
    pub username: String,
    /// User id, the Kafka key: 1-64 ASCII letters, digits, `.`, `-` or `_`.
    #[oai(validator(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]{1,64}$"))]
    pub user_id: String,
    /// Amount greater than 0 and at most 1000000 with at most two decimals, read exactly as
    /// written: `19.99`, `19.990` and `1999e-2` are the same amount, `19.999999999999999` is
    /// refused (it is not a whole number of cents, whatever a float would round it to).
    #[oai(validator(
        minimum(value = "0", exclusive),
        maximum(value = "1000000"),
        multiple_of = 0.01
    ))]
    pub price: f64,
}

/// cm-server's purchase body, which spells the user id `userid`.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct SeedPurchaseRequest {
    /// As in `PurchaseRequest`.
    #[oai(validator(
        min_length = 1,
        max_length = 64,
        pattern = r"^[\p{Alpha}\p{N}._'-](?:[\p{Alpha}\p{N} ._'-]*[\p{Alpha}\p{N}._'-])?$"
    ))]
    pub username: String,
    /// Legacy spelling of `userId`.
    #[oai(validator(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]{1,64}$"))]
    pub userid: String,
    /// As in `PurchaseRequest`.
    #[oai(validator(
        minimum(value = "0", exclusive),
        maximum(value = "1000000"),
        multiple_of = 0.01
    ))]
    pub price: f64,
}

/// What the seed routes take: the current body or cm-server's, so exactly one of `userId`
/// and `userid` (both closed objects, so a body with both matches neither).
#[derive(Debug, Union)]
#[oai(one_of)]
pub enum LegacyPurchaseRequest {
    Current(PurchaseRequest),
    Seed(SeedPurchaseRequest),
}

/// poem-openapi's `deny_unknown_fields` refuses unknown fields but does not say so in the
/// schema (its `MetaSchema` has no form for `additionalProperties: false`). Every property of
/// these bodies is required, so `maxProperties` = their number says exactly the same.
fn close_object<T: Type>(registry: &mut Registry) {
    if let Some(schema) = registry.schemas.get_mut(T::name().as_ref()) {
        debug_assert_eq!(schema.required.len(), schema.properties.len());
        schema.max_properties = Some(schema.properties.len());
    }
}

/// A validated purchase body; `LEGACY` also accepts the seed spelling `userid`.
pub struct PurchaseBody<const LEGACY: bool>(pub NewPurchase);

impl<const LEGACY: bool> Payload for PurchaseBody<LEGACY> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        // The usual header is taken without parsing it (a parse allocates); anything else is
        // judged as poem-openapi's `Json` judges it (`+json` suffixes, parameters).
        content_type.eq_ignore_ascii_case("application/json")
            || <Json<Value> as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        if LEGACY {
            LegacyPurchaseRequest::schema_ref()
        } else {
            PurchaseRequest::schema_ref()
        }
    }

    fn register(registry: &mut Registry) {
        if LEGACY {
            LegacyPurchaseRequest::register(registry);
        } else {
            PurchaseRequest::register(registry);
        }
        close_object::<PurchaseRequest>(registry);
        close_object::<SeedPurchaseRequest>(registry);
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
                // The server's body deadline (server.rs) passed before the body was whole.
                ReadBodyError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    ApiError::request_timeout(e)
                }
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
