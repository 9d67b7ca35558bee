//! Every error as JSON: the layer that renders errors the handlers and poem return, so every
//! 4xx and 5xx, even a 404 for an unknown path, has a body that says what is wrong.

use poem::{http::header, Endpoint, IntoResponse, Request, Response};
use poem_openapi::{
    error::{ParseParamError, ParsePathError},
    OperationId,
};

use crate::error::{ApiError, ErrorBody};

/// Renders an error response as JSON, keeping the operation it came from (the metrics layer
/// labels requests by it).
pub async fn render_errors<E: Endpoint>(next: E, req: Request) -> Response {
    match next.call(req).await {
        Ok(response) => response.into_response(),
        Err(err) => {
            let operation = err.data::<OperationId>().copied();
            let mut response = render_error(err);
            if let Some(operation) = operation {
                response.set_data(operation);
            }
            response
        }
    }
}

/// Turns any error into a JSON response. Errors we built are JSON already; a parameter that
/// did not parse (poem-openapi's error, carrying our parser's message) names the parameter
/// like our body errors do; poem's own (no such route, wrong method, unsupported media type)
/// are plain text and get wrapped with their status and message.
pub fn render_error(err: poem::Error) -> Response {
    if let Some(e) = err.downcast_ref::<ParseParamError>() {
        return ApiError::invalid_param(e.name, plain_reason(&e.reason)).into_response();
    }
    if let Some(e) = err.downcast_ref::<ParsePathError>() {
        let field = err
            .data::<OperationId>()
            .and_then(|operation| super::path_parameter_name(operation.0, e.name))
            .unwrap_or(e.name);
        return ApiError::invalid_param(field, plain_reason(&e.reason)).into_response();
    }
    let status = err.status();
    let text = err.to_string();
    let response = err.into_response();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let code = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "_");
    let message = match status.as_u16() {
        404 => "no such route; see /docs for the API".to_string(),
        405 => "method not allowed on this route; see /docs".to_string(),
        415 => format!("{text}; send the body as JSON with `Content-Type: application/json`"),
        _ => text,
    };
    let mut fixed = poem::web::Json(ErrorBody::new(&code, message)).into_response();
    fixed.set_status(status);
    fixed
}

/// A parameter parser's own message without the frame poem-openapi puts around it
/// (`failed to parse "limit": ... (occurred while parsing "optional_limit")`), whose type names
/// mean nothing to a client. A message in another shape is left as it is.
fn plain_reason(reason: &str) -> &str {
    let reason = reason
        .strip_prefix("failed to parse \"")
        .and_then(|rest| rest.split_once("\": "))
        .map_or(reason, |(_, message)| message);
    match reason.rfind(" (occurred while parsing \"") {
        Some(frame) if reason.ends_with("\")") => &reason[..frame],
        _ => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::plain_reason;

    #[test]
    fn parameter_messages_lose_poem_openapis_type_names() {
        assert_eq!(
            plain_reason(
                r#"failed to parse "limit": must be 1 to 100 (occurred while parsing "optional_limit")"#
            ),
            "must be 1 to 100"
        );
        assert_eq!(
            plain_reason(r#"failed to parse "userId": contains '/'"#),
            "contains '/'"
        );
        assert_eq!(plain_reason("value is required"), "value is required");
    }
}
