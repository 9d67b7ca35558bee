//! Error responses: every failure is JSON `{error, message, field?}` with the right status.

use poem_openapi::{payload::Json, ApiResponse, Object};
use purchase::{validation::ErrorKind, ValidationError};
use uuid::Uuid;

use crate::{
    api::paths::location_of,
    auth::{Failure, Refusal},
    idempotency::IDEMPOTENCY_KEY_HEADER,
};

/// The body of every error response.
#[derive(Debug, Clone, Object, serde::Serialize)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `invalid_field`.
    pub error: String,
    /// What is wrong and how to fix it, for humans.
    pub message: String,
    /// The request field (body, path or query) that is wrong, when one is.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The purchase concerned, when its outcome is unknown: look it up at
    /// `/api/purchases/{eventId}`, or retry with the same `Idempotency-Key`.
    #[oai(rename = "eventId", skip_serializing_if_is_none)]
    #[serde(rename = "eventId", skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
}

impl ErrorBody {
    pub(crate) fn new(error: &str, message: impl Into<String>) -> Self {
        Self {
            error: error.to_string(),
            message: message.into(),
            field: None,
            event_id: None,
        }
    }
}

#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The body or a parameter is invalid; `field` names it.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No valid bearer token. `error` names the problem (`missing_token`, `malformed_token`,
    /// `token_expired`, `token_not_yet_valid`, `invalid_signature`, `wrong_issuer`,
    /// `wrong_audience`, `algorithm_not_allowed`, `unknown_key`, `invalid_claims`) and
    /// `WWW-Authenticate` says it as RFC 6750 does. Nothing of the request was used.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// The token is valid but may not act for this user (`insufficient_scope`): buying for
    /// a userId other than the token's `sub` needs scope `purchases:write:any`, reading
    /// another user's purchases `purchases:read:any`. Nothing was reserved or produced.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// No such purchase (yet: a purchase is readable once a worker stored it).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The body did not arrive within the body read timeout; nothing was accepted.
    #[oai(status = 408)]
    RequestTimeout(Json<ErrorBody>),
    /// The body is larger than the configured limit.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The `Idempotency-Key` was already used by this user for a different purchase.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// Kafka or MongoDB did not answer in time. `error` says whether the purchase was not
    /// stored (`kafka_unavailable`, `mongodb_unavailable`: retry after the given number of
    /// seconds) or may have been (`kafka_outcome_unknown`, with `eventId`: retry only with
    /// the same `Idempotency-Key`).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u32),
}

/// Answers given before any handler runs: by the router (a path without this method) and by
/// the payload extractor (a body that is not JSON). Never built by a handler; it documents
/// them on each operation (`api::WithRouterAnswers`), and `api::render::render_error` gives them their
/// JSON body.
#[derive(Debug, ApiResponse)]
pub enum RouterError {
    /// This path does not take this method; `Allow` lists the ones it takes.
    #[oai(status = 405)]
    MethodNotAllowed(Json<ErrorBody>, #[oai(header = "Allow")] String),
    /// The body must be JSON, sent with `Content-Type: application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
}

impl ApiError {
    pub fn invalid(error: ValidationError) -> Self {
        let code = match error.kind {
            ErrorKind::Field => "invalid_field",
            ErrorKind::Body => "invalid_body",
        };
        Self::BadRequest(Json(ErrorBody {
            error: code.to_string(),
            message: error.to_string(),
            field: error.field,
            event_id: None,
        }))
    }

    /// The request's token is missing or invalid (`field` is the header).
    pub fn unauthorized(failure: &Failure) -> Self {
        let mut body = ErrorBody::new(failure.reason.code(), failure.message.clone());
        body.field = Some("Authorization".to_string());
        Self::Unauthorized(Json(body), failure.www_authenticate())
    }

    /// A valid token that may not act for this user (`field` names the user field).
    pub fn forbidden(refusal: &Refusal, field: &str) -> Self {
        let mut body = ErrorBody::new("insufficient_scope", refusal.to_string());
        body.field = Some(field.to_string());
        Self::Forbidden(Json(body), refusal.www_authenticate())
    }

    pub fn invalid_param(field: &str, message: impl std::fmt::Display) -> Self {
        Self::invalid(ValidationError::field(field, message.to_string()))
    }

    pub fn malformed_json(message: impl Into<String>) -> Self {
        Self::BadRequest(Json(ErrorBody::new("malformed_json", message)))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(Json(ErrorBody::new("not_found", message)))
    }

    pub fn request_timeout(message: impl std::fmt::Display) -> Self {
        Self::RequestTimeout(Json(ErrorBody::new(
            "request_timeout",
            format!("{message}; nothing was accepted, send the request again"),
        )))
    }

    pub fn too_large(limit: usize) -> Self {
        Self::PayloadTooLarge(Json(ErrorBody::new(
            "payload_too_large",
            format!("request body exceeds {limit} bytes"),
        )))
    }

    /// A write the dependency did not take: nothing was stored.
    pub fn unavailable(
        dependency: &str,
        message: impl std::fmt::Display,
        retry_after: u32,
    ) -> Self {
        Self::dependency_unavailable(
            dependency,
            format!("{message}; nothing was stored, retry later"),
            retry_after,
        )
    }

    fn dependency_unavailable(dependency: &str, message: String, retry_after: u32) -> Self {
        Self::Unavailable(
            Json(ErrorBody::new(
                &format!("{dependency}_unavailable"),
                message,
            )),
            retry_after,
        )
    }

    /// The broker may have the purchase although it never confirmed it. Saying "not
    /// stored" here would invite a retry that buys twice.
    pub fn outcome_unknown(
        event_id: Uuid,
        message: impl std::fmt::Display,
        retry_after: u32,
    ) -> Self {
        let mut body = ErrorBody::new(
            "kafka_outcome_unknown",
            format!(
                "{message}; purchase {event_id} may or may not be stored. Retry with the same \
                 Idempotency-Key header to be safe (a retry without one may buy twice), or look \
                 it up at {} later",
                location_of(event_id)
            ),
        );
        body.event_id = Some(event_id);
        Self::Unavailable(Json(body), retry_after)
    }

    pub fn idempotency_key_reused() -> Self {
        let mut body = ErrorBody::new(
            "idempotency_key_reused",
            "this Idempotency-Key was already used by this user for a different purchase; \
             use a new key for a new purchase",
        );
        body.field = Some(IDEMPOTENCY_KEY_HEADER.to_string());
        Self::Unprocessable(Json(body))
    }

    /// A read the database did not answer. Unlike `unavailable` (a write), there is nothing
    /// to say about what was stored, only that the purchases could not be read.
    pub fn unavailable_read(
        dependency: &str,
        message: impl std::fmt::Display,
        retry_after: u32,
    ) -> Self {
        Self::dependency_unavailable(
            dependency,
            format!("{message}; could not read purchases, try again"),
            retry_after,
        )
    }
}
