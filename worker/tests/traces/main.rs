//! One trace across the pipeline: a request with a known W3C `traceparent` is continued by
//! the gateway's server and produce spans, carried in the record's headers (read back with
//! confluent-kafka), and continued by the worker's consume span and its MongoDB write, every
//! span exported over OTLP/HTTP to a receiver in this test, with parent and child ids that
//! link. The gateway runs in this process, which exports like a deployed gateway would.

#[allow(dead_code)] // shared with the pipeline suite, which uses more of it
#[path = "../pipeline/helpers.rs"]
mod helpers;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value as AnyValue,
    trace::v1::span::SpanKind,
};
use poem::{handler, post, web::Data, EndpointExt, Route};
use prost::Message;
use serde_json::json;
use test_support::{run_python, serve_on_loopback};

use crate::helpers::{wait_assigned, Pipeline};

/// A span as the receiver got it, ids in hex.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    kind: SpanKind,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

#[handler]
fn receive(body: Vec<u8>, received: Data<&Received>) -> poem::Response {
    let Ok(request) = ExportTraceServiceRequest::decode(body.as_slice()) else {
        return poem::Response::builder()
            .status(poem::http::StatusCode::BAD_REQUEST)
            .finish();
    };
    let mut spans = received.lock().expect("receiver lock");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(name) => Some(name.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(ReceivedSpan {
                service: service.clone(),
                kind: span.kind(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
            });
        }
    }
    poem::Response::builder()
        .content_type("application/x-protobuf")
        .body(Vec::new())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver on loopback: its base URL and what it received.
async fn start_receiver() -> (String, Received) {
    let received = Received::default();
    let app = Route::new()
        .at("/v1/traces", post(receive))
        .data(Arc::clone(&received));
    let (url, _task) = serve_on_loopback(app).await;
    (url, received)
}

/// Waits until `received` holds the spans `complete` accepts for trace `trace_id`.
async fn spans_of(
    received: &Received,
    trace_id: &str,
    complete: impl Fn(&[ReceivedSpan]) -> bool,
) -> Vec<ReceivedSpan> {
    let started = Instant::now();
    loop {
        let spans: Vec<ReceivedSpan> = received
            .lock()
            .expect("receiver lock")
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        if complete(&spans) {
            return spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "trace {trace_id} incomplete after 60 s: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn one<'a>(spans: &'a [ReceivedSpan], service: &str, kind: SpanKind) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.service == service && s.kind == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind:?} span of {service}: {spans:#?}");
    found[0]
}

/// The four spans of one purchase, checked to form one chain under `caller_span` (empty
/// when the request carried no context); returns the produce span's id.
fn assert_chain(spans: &[ReceivedSpan], topic: &str, caller_span: &str) -> String {
    let server = one(spans, "gateway", SpanKind::Server);
    let produce = one(spans, "gateway", SpanKind::Producer);
    let consume = one(spans, "worker", SpanKind::Consumer);
    let write = one(spans, "worker", SpanKind::Client);
    assert_eq!(server.name, "POST /api/purchases");
    assert_eq!(
        server.parent_span_id, caller_span,
        "the caller's span is the parent"
    );
    assert_eq!(produce.name, format!("send {topic}"));
    assert_eq!(produce.parent_span_id, server.span_id);
    assert_eq!(consume.name, format!("process {topic}"));
    assert_eq!(consume.parent_span_id, produce.span_id);
    assert_eq!(write.name, "insert purchases");
    assert_eq!(write.parent_span_id, consume.span_id);
    produce.span_id.clone()
}

#[tokio::test]
async fn a_purchase_is_one_trace_from_the_request_through_kafka_to_the_mongodb_write() {
    let (endpoint, received) = start_receiver().await;
    // Exported within 200 ms instead of the SDK's 5 s, here and in the worker.
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");
    let _traces = infra::traces::init(Some(&endpoint), "gateway").expect("exporter");
    let pipeline = Pipeline::start().await;
    let worker = pipeline.worker_with_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ]);
    wait_assigned(&[&worker], Duration::from_secs(60)).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let url = format!("{}/api/purchases", pipeline.gateway);
    let traced = pipeline
        .client
        .post(&url)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"username": "ann", "userId": "u-traced", "price": 12.5}))
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(traced.status().as_u16(), 202);
    // Without a traceparent the gateway starts the trace.
    let untraced = pipeline
        .client
        .post(&url)
        .json(&json!({"username": "bob", "userId": "u-fresh", "price": 3.0}))
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(untraced.status().as_u16(), 202);
    pipeline.wait_stored(2, Duration::from_secs(60)).await;

    // The record carries the trace on, as librdkafka reads it.
    let records = run_python(
        "read_topic.py",
        &[&pipeline.kafka, &pipeline.topic, "2", "30"],
    );
    let records = records["records"].as_array().expect("records");
    let traceparent_of = |user: &str| {
        let record = records
            .iter()
            .find(|r| r["key"] == user)
            .unwrap_or_else(|| panic!("no record of {user}: {records:?}"));
        let header = record["headers"]["traceparent"]
            .as_str()
            .unwrap_or_else(|| panic!("no traceparent in {record}"));
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts.len(), 4, "{header}");
        assert_eq!((parts[0], parts[3]), ("00", "01"), "{header}");
        (parts[1].to_string(), parts[2].to_string())
    };
    let (record_trace, record_parent) = traceparent_of("u-traced");
    assert_eq!(record_trace, trace_id, "the caller's trace continues");

    let spans = spans_of(&received, trace_id, |spans| spans.len() >= 4).await;
    let produce_span = assert_chain(&spans, &pipeline.topic, caller_span);
    assert_eq!(
        record_parent, produce_span,
        "the record's parent is the produce span"
    );

    let (fresh_trace, fresh_parent) = traceparent_of("u-fresh");
    assert_ne!(fresh_trace, trace_id);
    let spans = spans_of(&received, &fresh_trace, |spans| spans.len() >= 4).await;
    assert_eq!(assert_chain(&spans, &pipeline.topic, ""), fresh_parent);
    drop(worker);
}

#[tokio::test]
async fn an_unreachable_collector_neither_stops_the_workers_nor_delays_their_exit() {
    let pipeline = Pipeline::start().await;
    // Nothing listens there: every export fails.
    let nowhere = format!("http://127.0.0.1:{}", helpers::free_port());
    let mut worker = pipeline.worker_with_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &nowhere),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    wait_assigned(&[&worker], Duration::from_secs(60)).await;
    let accepted = pipeline.post_purchases(200, 8).await;
    pipeline
        .wait_stored(accepted.len(), Duration::from_secs(60))
        .await;
    let stopping = Instant::now();
    worker.send_term();
    let took = worker.wait_clean_exit(stopping, Duration::from_secs(20));
    println!("exit after SIGTERM with an unreachable collector: {took:?}");
    // The flush of the last spans is bounded (3 s) on top of an ordinary exit.
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
}
