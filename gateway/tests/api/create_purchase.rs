use std::collections::BTreeSet;

use futures::StreamExt;
use purchase::partitioner::partition_for_key;
use serde_json::{json, Value};

use crate::helpers::spawn_app;

#[tokio::test]
async fn accepted_purchase_is_on_the_topic_with_exactly_the_contract_fields_and_user_key() {
    let app = spawn_app().await;

    let response = app
        .post_purchase(&json!({"username": "José", "userId": "u-17", "price": 19.99}))
        .await;

    assert_eq!(response.status().as_u16(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    let event_id = body["eventId"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/api/purchases/{event_id}"));
    assert_eq!(body["location"], location.as_str());
    assert_eq!(
        uuid::Uuid::parse_str(&event_id).unwrap().get_version_num(),
        7
    );

    let dump = app.read_topic(1);
    assert_eq!(dump.partitions, 3);
    assert_eq!(dump.records.len(), 1, "{dump:?}");
    let record = &dump.records[0];
    assert_eq!(record.key.as_deref(), Some("u-17"));
    assert_eq!(record.partition, partition_for_key(b"u-17", 3));
    assert_eq!(record.headers["content-type"], "application/json");
    // CloudEvents binary mode: the event's attributes as ce_* headers.
    assert_eq!(record.headers["ce_specversion"], "1.0");
    assert_eq!(record.headers["ce_id"], event_id.as_str());
    assert_eq!(record.headers["ce_source"], "/scalable-shop/gateway");
    assert_eq!(
        record.headers["ce_type"],
        "scalable-shop.purchase.created.v1"
    );
    // ...and the CloudEvents SDK's Kafka binding reads the record as that event.
    let cloudevent = &record.cloudevent;
    assert_eq!(cloudevent["specversion"], "1.0", "{cloudevent}");
    assert_eq!(cloudevent["id"], event_id.as_str());
    assert_eq!(cloudevent["source"], "/scalable-shop/gateway");
    assert_eq!(cloudevent["type"], "scalable-shop.purchase.created.v1");
    assert_eq!(cloudevent["datacontenttype"], "application/json");
    assert_eq!(cloudevent["data"], record.value);
    let value = record.value.as_object().unwrap();
    let keys: BTreeSet<&str> = value.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "eventId",
            "price",
            "schemaVersion",
            "timestamp",
            "userId",
            "username"
        ])
    );
    assert_eq!(value["eventId"], event_id.as_str());
    assert_eq!(value["username"], "José");
    assert_eq!(value["userId"], "u-17");
    assert_eq!(value["price"], json!(19.99));
    assert_eq!(value["schemaVersion"], 1);
    let timestamp =
        chrono::DateTime::parse_from_rfc3339(value["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(
        timestamp,
        purchase::event::uuid_v7_time(uuid::Uuid::parse_str(&event_id).unwrap())
    );
    let ce_time = chrono::DateTime::parse_from_rfc3339(&record.headers["ce_time"]).unwrap();
    assert_eq!(ce_time, timestamp);
    assert!(
        !record.headers.contains_key("traceparent"),
        "a request without trace context starts none when no spans are exported: {:?}",
        record.headers
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_callers_trace_context_is_carried_into_the_record_even_when_no_spans_are_exported() {
    let app = spawn_app().await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for path in ["/api/purchases", "/api/buy"] {
        let response = app
            .client
            .post(format!("{}{path}", app.address))
            .header("traceparent", traceparent)
            .header("tracestate", "shop=checkout")
            .json(&json!({"username": "ann", "userId": "u-1", "price": 1.5}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202, "{path}");
    }
    let dump = app.read_topic(2);
    for record in &dump.records {
        assert_eq!(record.headers["traceparent"], traceparent, "{record:?}");
        assert_eq!(record.headers["tracestate"], "shop=checkout", "{record:?}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_purchases_share_produce_calls_and_all_reach_the_topic() {
    let app = spawn_app().await;
    let requests = 300;

    let responses = futures::future::join_all((0..requests).map(|i| {
        let app = &app;
        async move {
            app.post_purchase(
                &json!({"username": "load", "userId": format!("user-{}", i % 7), "price": 1.25}),
            )
            .await
            .status()
            .as_u16()
        }
    }))
    .await;

    assert!(responses.iter().all(|s| *s == 202), "{responses:?}");
    let metrics = app.metrics().await;
    let batches = metric_value(&metrics, "gateway_kafka_produce_batch_records_count");
    let records = metric_value(&metrics, "gateway_kafka_produce_batch_records_sum");
    assert_eq!(records, requests as f64);
    assert!(
        batches < records / 2.0,
        "{batches} produce calls for {records} purchases: not batched"
    );
    assert_eq!(
        metric_value(&metrics, "gateway_purchases_accepted_total"),
        requests as f64
    );

    let dump = app.read_topic(requests);
    assert_eq!(dump.records.len(), requests);
    let ids: BTreeSet<&str> = dump
        .records
        .iter()
        .map(|r| r.value["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        requests,
        "every accepted purchase is on the topic once"
    );
    let positions: BTreeSet<(i32, i64)> = dump
        .records
        .iter()
        .map(|r| (r.partition, r.offset))
        .collect();
    assert_eq!(positions.len(), requests);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_in_flight_purchases_finish() {
    let app = spawn_app().await;
    let requests = 10;
    // Each body arrives in two halves with the shutdown signal in between, so the requests
    // are surely in flight when the gateway is told to stop.
    let (release, released) = tokio::sync::watch::channel(false);
    let in_flight: Vec<_> = (0..requests)
        .map(|i| {
            let released = released.clone();
            let body = futures::stream::iter([0, 1]).then(move |half| {
                let mut released = released.clone();
                async move {
                    if half == 0 {
                        Ok::<_, std::io::Error>(format!(r#"{{"username":"late","userId":"l{i}","#))
                    } else {
                        let _ = released.wait_for(|r| *r).await;
                        Ok(r#""price":3}"#.to_string())
                    }
                }
            });
            let request = app
                .client
                .post(format!("{}/api/purchases", app.address))
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(body));
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    app.shutdown.cancel();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    release.send(true).unwrap();

    for request in in_flight {
        assert_eq!(request.await.unwrap().unwrap(), 202);
    }
    assert_eq!(app.read_topic(requests).records.len(), requests);
    app.server.await.unwrap().unwrap();
}

pub fn metric_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not found in:\n{metrics}"))
}
