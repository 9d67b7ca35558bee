use std::process::Command;
use test_support::process::Signal;

use serde_json::{json, Value};

use crate::{
    create_purchase::metric_value,
    helpers::{python, spawn_app},
};

#[tokio::test]
async fn readiness_reports_both_dependencies() {
    let app = spawn_app().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"kafka": "ok", "mongodb": "ok", "mongodbState": "ok"})
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_and_time_produce_calls() {
    let app = spawn_app().await;
    app.post_purchase(&json!({"username": "ann", "userId": "u1", "price": 2}))
        .await;
    app.post_purchase(&json!({"username": "ann", "userId": "u1", "price": -2}))
        .await;
    app.get("/no/such/route").await;
    let metrics = app.metrics().await;
    let count = |labels: &str| {
        metric_value(
            &metrics,
            &format!("gateway_http_requests_total{{{labels}}}"),
        )
    };
    assert_eq!(
        count(r#"method="POST",route="createPurchase",status="202""#),
        1.0
    );
    assert_eq!(
        count(r#"method="POST",route="createPurchase",status="400""#),
        1.0
    );
    assert_eq!(count(r#"method="GET",route="unmatched",status="404""#), 1.0);
    assert!(metrics.contains(r#"gateway_http_request_duration_seconds_bucket{method="POST",route="createPurchase",status="202",le="#));
    assert_eq!(
        metric_value(&metrics, "gateway_kafka_produce_duration_seconds_count"),
        1.0
    );
    assert_eq!(
        metric_value(&metrics, "gateway_purchases_accepted_total"),
        1.0
    );
}

#[tokio::test]
async fn docs_and_spec_are_served() {
    let app = spawn_app().await;
    let docs = app.get("/docs").await;
    assert_eq!(docs.status().as_u16(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(spec["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    assert!(spec["paths"]["/api/purchases"]["post"].is_object());
    assert_eq!(spec["paths"]["/buy"]["post"]["deprecated"], true);
}

#[test]
fn printed_spec_validates_with_openapi_spec_validator() {
    let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("openapi")
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success(), "gateway openapi needs no servers");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, &output.stdout).unwrap();
    let validation = Command::new(python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        validation.status.success(),
        "{}{}",
        String::from_utf8_lossy(&validation.stdout),
        String::from_utf8_lossy(&validation.stderr)
    );
}

#[tokio::test]
async fn the_binary_stops_cleanly_on_sigterm() {
    let (kafka, mongo) = crate::helpers::shared_servers();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("KAFKA_BROKERS", &kafka.address)
        .env(
            "KAFKA_TOPIC",
            format!("sigterm-{}", uuid::Uuid::new_v4().simple()),
        )
        .env("KAFKA_TOPIC_PARTITIONS", "2")
        .env("MONGO_URI", &mongo.address)
        .env("GATEWAY_AUTH_DISABLED", "true")
        .env("LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..100 {
        if client.get(format!("{url}/healthz")).send().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "gateway binary did not start");
    let accepted = client
        .post(format!("{url}/api/purchases"))
        .json(&json!({"username": "ann", "userId": "u1", "price": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status().as_u16(), 202);

    test_support::process::signal(child.id().unwrap(), Signal::SIGTERM);
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut logs = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut logs)
        .await
        .unwrap();
    assert!(!logs.contains("panicked"), "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("authentication is DISABLED")),
        "a gateway without authentication says so loudly: {logs}"
    );
    let last: Value = serde_json::from_str(logs.lines().last().unwrap()).expect("JSON log lines");
    assert_eq!(last["message"], "gateway stopped", "{logs}");
}
