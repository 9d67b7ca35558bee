use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{
    assert_json_error, shared_servers, spawn_app_with, spawn_app_without_database, InfraServer,
};

#[tokio::test]
async fn broker_stopped_gives_truthful_503s_with_retry_after_in_bounded_time_then_recovers() {
    let kafka = InfraServer::start("kafka");
    let (_, mongo) = shared_servers();
    let app = spawn_app_with(&kafka.address, &mongo.address, &[]).await;
    let purchase = json!({"username": "ann", "userId": "u1", "price": 5});
    assert_eq!(app.post_purchase(&purchase).await.status().as_u16(), 202);

    kafka.stop();
    // The first purchase after the stop meets the broken connection inside the Kafka
    // client, which cannot say whether its request got out: the honest answer is "unknown",
    // with the eventId to check or the advice to retry with an Idempotency-Key.
    let response = app.post_purchase(&purchase).await;
    let body = assert_json_error(response, 503, None).await;
    if body["error"] == "kafka_outcome_unknown" {
        assert!(body["eventId"].is_string(), "{body}");
        assert!(!body["message"]
            .as_str()
            .unwrap()
            .contains("nothing was stored"));
    } else {
        assert_eq!(body["error"], "kafka_unavailable");
    }
    // From then on nothing is sent until the broker answers, so the gateway knows.
    let started = Instant::now();
    let response = app.post_purchase(&purchase).await;
    let took = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "2");
    let body = assert_json_error(response, 503, None).await;
    assert_eq!(body["error"], "kafka_unavailable");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("nothing was stored"));
    // The produce timeout is 3 s in tests: the answer comes within it plus slack, never a hang.
    assert!(took < Duration::from_secs(5), "503 took {took:?}");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status().as_u16(), 503);

    kafka.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = app.post_purchase(&purchase).await.status().as_u16();
        if status == 202 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(status, 202, "the gateway recovers once the broker is back");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn database_unreachable_makes_reads_503_and_readiness_fail_but_writes_still_work() {
    let app = spawn_app_without_database().await;
    let response = app.get("/api/users/u1/purchases").await;
    let body = assert_json_error(response, 503, None).await;
    assert_eq!(body["error"], "mongodb_unavailable");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("could not read") && !message.contains("stored"),
        "a read says what a read can say: {message}"
    );
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status().as_u16(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["kafka"], "ok");
    assert_ne!(ready["mongodb"], "ok");
    assert_eq!(ready["mongodbState"], "unreachable", "{ready}");
    let purchase = json!({"username": "ann", "userId": "u1", "price": 5});
    assert_eq!(app.post_purchase(&purchase).await.status().as_u16(), 202);
    app.stop().await.unwrap();
}
