//! The server span of each API request. It continues the caller's W3C `traceparent` (or
//! starts a trace) and runs the handler inside it, so the purchase's produce span is its
//! child and the record carries the trace on. Probes, scrapes and the docs are not traced:
//! they would drown the traces that matter.

use std::sync::Arc;

use infra::traces;
use opentelemetry::{
    context::FutureExt,
    trace::{SpanKind, Status, TraceContextExt, Tracer},
    KeyValue,
};
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::OperationId;

const UNTRACED: &[&str] = &["/", "/healthz", "/readyz", "/metrics", "/openapi.json"];

pub async fn trace_request<E: Endpoint>(next: Arc<E>, req: Request) -> poem::Result<Response> {
    let path = req.uri().path();
    if UNTRACED.contains(&path) || path.starts_with("/docs") {
        return next.call(req).await.map(IntoResponse::into_response);
    }
    let parent = traces::context_from(
        req.headers()
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes())),
    );
    if !traces::exporting() {
        if !parent.span().span_context().is_valid() {
            // No caller trace and nothing to record: there is no context to hand on.
            return next.call(req).await.map(IntoResponse::into_response);
        }
        // Nothing to record: the caller's context alone is handed on to the record.
        return next
            .call(req)
            .with_context(parent)
            .await
            .map(IntoResponse::into_response);
    }
    let method = req.method().to_string();
    let tracer = traces::tracer();
    let span = tracer
        .span_builder(method.clone())
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new("url.path", path.to_string()),
        ])
        .start_with_context(&tracer, &parent);
    let context = parent.with_span(span);
    let result = next
        .call(req)
        .with_context(context.clone())
        .await
        .map(IntoResponse::into_response);
    let span = context.span();
    let (status, operation) = match &result {
        Ok(response) => (
            response.status(),
            response.data::<OperationId>().map(|o| o.0),
        ),
        Err(error) => (error.status(), error.data::<OperationId>().map(|o| o.0)),
    };
    if let Some(route) = operation.and_then(crate::api::route_of) {
        span.update_name(format!("{method} {route}"));
        span.set_attribute(KeyValue::new("http.route", route));
    }
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if status.is_server_error() {
        span.set_status(Status::error(status.to_string()));
    }
    span.end();
    result
}
