//! Traces that cross Kafka: the W3C trace context (`traceparent`, `tracestate`) read from an
//! HTTP request or a Kafka record and written into the records the gateway produces, and
//! OpenTelemetry spans exported over OTLP/HTTP (protobuf) when `--otlp-endpoint` is set.
//!
//! Without an endpoint nothing is recorded or exported, but the gateway still forwards a
//! caller's trace context into the record, so a trace that starts before the gateway and
//! continues after the worker is not cut in two by a hop that does not export.
//! The context is always W3C Trace Context, whatever `OTEL_PROPAGATORS` says: it is the
//! format every OpenTelemetry SDK and librdkafka-based consumer reads.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::{
    global::{self, BoxedTracer},
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TraceContextExt,
    Context,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};

/// The record and request headers of the W3C trace context.
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Set once spans are exported; code that builds spans per record asks first, so a
/// pipeline without tracing does no per-record work for it.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Keeps the exporter running; dropping it sends the spans still buffered (bounded by
/// `FLUSH_TIMEOUT`, so an unreachable collector cannot hold up a shutdown).
#[must_use = "dropping it stops exporting"]
pub struct Traces {
    provider: Option<SdkTracerProvider>,
}

/// Within the pods' termination grace periods, which the shutdown grace already mostly uses.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

impl Drop for Traces {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
                tracing::warn!(error = %e, "could not send the last spans to the OTLP endpoint");
            }
        }
    }
}

/// Starts exporting spans of `service` to `endpoint` (the collector's base URL, e.g.
/// `http://otel-collector:4318`; spans go to `{endpoint}/v1/traces`), or does nothing when
/// there is none. `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`
/// and `OTEL_EXPORTER_OTLP_HEADERS` are honoured as the OpenTelemetry SDKs define them.
pub fn init(endpoint: Option<&str>, service: &'static str) -> Result<Traces, String> {
    let Some(endpoint) = endpoint else {
        return Ok(Traces { provider: None });
    };
    let traces_url = traces_url(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&traces_url)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot export traces to {traces_url}: {e}"))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    global::set_tracer_provider(provider.clone());
    EXPORTING.store(true, Ordering::Relaxed);
    tracing::info!(endpoint = %traces_url, "exporting traces over OTLP/HTTP");
    Ok(Traces {
        provider: Some(provider),
    })
}

/// `{endpoint}/v1/traces`, refusing what is not an http(s) URL with a host.
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| {
            format!("OTLP endpoint {endpoint:?} must be an http:// or https:// URL, e.g. http://otel-collector:4318")
        })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("OTLP endpoint {endpoint:?} names no host"));
    }
    Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
}

/// True once `init` started exporting.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The tracer every span of this workspace comes from (a no-op until `init` exported).
pub fn tracer() -> BoxedTracer {
    global::tracer("scalable-shop")
}

/// The trace context `headers` carry, as the parent of the spans that continue it; an empty
/// context when they carry none or a malformed one (a new trace starts).
pub fn context_from<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Context {
    let carrier = Carrier(
        headers
            .into_iter()
            .filter(|(name, _)| TRACE_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h)))
            .filter_map(|(name, value)| {
                Some((
                    name.to_ascii_lowercase(),
                    std::str::from_utf8(value).ok()?.to_string(),
                ))
            })
            .collect(),
    );
    TraceContextPropagator::new().extract(&carrier)
}

/// The headers that carry `context` on (none when it holds no valid span context).
pub fn headers_for(context: &Context) -> Vec<(String, String)> {
    // The common case on the write path (no caller trace, no export): nothing to carry, so
    // no propagator and no map are made per record.
    if !context.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut carrier = Carrier(HashMap::new());
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    let mut headers: Vec<_> = carrier.0.into_iter().collect();
    headers.sort();
    headers
}

struct Carrier(HashMap<String, String>);

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_is_read_whatever_the_header_case_and_written_back_unchanged() {
        let context = context_from([
            ("TraceParent", PARENT.as_bytes()),
            ("tracestate", b"vendor=abc".as_slice()),
            ("content-type", b"application/json".as_slice()),
        ]);
        let span = context.span();
        let ids = span.span_context();
        assert_eq!(
            ids.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(ids.is_remote() && ids.is_sampled());
        assert_eq!(
            headers_for(&context),
            vec![
                ("traceparent".to_string(), PARENT.to_string()),
                ("tracestate".to_string(), "vendor=abc".to_string()),
            ]
        );
    }

    #[test]
    fn a_malformed_or_missing_traceparent_starts_no_context() {
        for headers in [
            vec![("traceparent", b"00-zz-00f067aa0ba902b7-01".as_slice())],
            vec![(
                "traceparent",
                b"00-00000000000000000000000000000000-00f067aa0ba902b7-01".as_slice(),
            )],
            vec![("traceparent", [0xff, 0xfe].as_slice())],
            vec![],
        ] {
            let context = context_from(headers.clone());
            assert!(
                !context.span().span_context().is_valid(),
                "{headers:?} gave a context"
            );
            assert!(headers_for(&context).is_empty());
        }
    }

    #[test]
    fn an_otlp_endpoint_is_a_base_url_that_gets_the_traces_path() {
        assert_eq!(
            traces_url("http://otel-collector:4318").as_deref(),
            Ok("http://otel-collector:4318/v1/traces")
        );
        assert_eq!(
            traces_url("https://otlp.example.com/").as_deref(),
            Ok("https://otlp.example.com/v1/traces")
        );
        assert!(traces_url("otel-collector:4318")
            .unwrap_err()
            .contains("http://"));
        assert!(traces_url("http://").unwrap_err().contains("no host"));
    }
}
