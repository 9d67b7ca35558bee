//! `Idempotency-Key`: a retry with the same key and user is the same purchase.

use serde_json::{json, Value};

use crate::helpers::{
    assert_json_error, shared_servers, spawn_app, spawn_app_with, spawn_app_without_database,
};

async fn accepted_event_id(response: reqwest::Response) -> String {
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.expect("JSON");
    body["eventId"].as_str().expect("eventId").to_string()
}

fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn a_retry_with_the_same_key_answers_the_same_event_id_and_produces_the_same_event() {
    let app = spawn_app().await;
    let purchase = json!({"username": "ann", "userId": "u1", "price": 19.99});
    let key = new_key();
    let first = accepted_event_id(app.post_with_key("/api/purchases", &purchase, &key).await).await;
    let second =
        accepted_event_id(app.post_with_key("/api/purchases", &purchase, &key).await).await;
    // The structured-field form of the same key is the same key.
    let quoted = format!("\"{key}\"");
    let third = accepted_event_id(
        app.post_with_key("/api/purchases", &purchase, &quoted)
            .await,
    )
    .await;
    assert_eq!(first, second);
    assert_eq!(first, third);

    // Every copy in the topic is the very same event, so the worker stores one purchase.
    let dump = app.read_topic(3);
    assert_eq!(dump.records.len(), 3);
    let values: Vec<&Value> = dump.records.iter().map(|r| &r.value).collect();
    assert!(values.iter().all(|v| **v == *values[0]), "{values:?}");
    assert_eq!(values[0]["eventId"], json!(first));
    assert!(app
        .metrics()
        .await
        .contains("gateway_idempotent_replays_total 2"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_reused_for_a_different_purchase_is_refused_with_422_naming_the_header() {
    let app = spawn_app().await;
    let key = new_key();
    let purchase = json!({"username": "ann", "userId": "u1", "price": 5});
    accepted_event_id(app.post_with_key("/api/purchases", &purchase, &key).await).await;
    for different in [
        json!({"username": "ann", "userId": "u1", "price": 6}),
        json!({"username": "anne", "userId": "u1", "price": 5}),
    ] {
        let response = app.post_with_key("/api/purchases", &different, &key).await;
        let body = assert_json_error(response, 422, Some("Idempotency-Key")).await;
        assert_eq!(body["error"], "idempotency_key_reused");
    }
    // Only the first purchase reached the topic.
    assert_eq!(app.read_topic(1).records.len(), 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_same_key_from_another_user_is_another_purchase() {
    let app = spawn_app().await;
    let key = new_key();
    let ann = json!({"username": "ann", "userId": "u1", "price": 5});
    let bob = json!({"username": "bob", "userId": "u2", "price": 5});
    let a = accepted_event_id(app.post_with_key("/api/purchases", &ann, &key).await).await;
    let b = accepted_event_id(app.post_with_key("/api/purchases", &bob, &key).await).await;
    assert_ne!(a, b);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_is_remembered_across_a_gateway_restart_and_by_the_seed_routes() {
    let first = spawn_app().await;
    let key = new_key();
    let purchase = json!({"username": "ann", "userId": "u1", "price": 5});
    let id = accepted_event_id(first.post_with_key("/api/purchases", &purchase, &key).await).await;
    let (topic, database) = (first.topic.clone(), first.database.clone());
    first.stop().await.unwrap();

    let (kafka, mongo) = shared_servers();
    let topic_flag = format!("--kafka-topic={topic}");
    let database_flag = format!("--mongo-database={database}");
    let second = spawn_app_with(
        &kafka.address,
        &mongo.address,
        &[&topic_flag, &database_flag],
    )
    .await;
    let again = accepted_event_id(
        second
            .post_with_key("/api/purchases", &purchase, &key)
            .await,
    )
    .await;
    assert_eq!(id, again, "a new gateway process knows the key");
    // cm-server's spelling of the same purchase on the seed route is the same purchase.
    let legacy = json!({"username": "ann", "userid": "u1", "price": 5});
    let via_seed = accepted_event_id(second.post_with_key("/buy", &legacy, &key).await).await;
    assert_eq!(id, via_seed);
    second.stop().await.unwrap();
}

#[tokio::test]
async fn a_malformed_key_is_a_400_naming_the_header_and_nothing_is_produced() {
    let app = spawn_app().await;
    let purchase = json!({"username": "ann", "userId": "u1", "price": 5});
    for bad in ["", "has space", "back\\slash", &"k".repeat(256)] {
        let response = app.post_with_key("/api/purchases", &purchase, bad).await;
        assert_json_error(response, 400, Some("Idempotency-Key")).await;
    }
    let accepted = app.post_purchase(&purchase).await;
    assert_eq!(accepted.status().as_u16(), 202);
    assert_eq!(
        app.read_topic(1).records.len(),
        1,
        "only the valid purchase"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_keyed_purchase_without_a_database_is_refused_as_not_stored() {
    let app = spawn_app_without_database().await;
    let purchase = json!({"username": "ann", "userId": "u1", "price": 5});
    let response = app
        .post_with_key("/api/purchases", &purchase, &new_key())
        .await;
    assert_eq!(response.headers()["retry-after"], "2");
    let body = assert_json_error(response, 503, None).await;
    assert_eq!(body["error"], "mongodb_unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("nothing was stored"),
        "{body}"
    );
    // Unkeyed purchases do not need the database.
    assert_eq!(app.post_purchase(&purchase).await.status().as_u16(), 202);
    assert_eq!(
        app.read_topic(1).records.len(),
        1,
        "the keyed one was never produced"
    );
    app.stop().await.unwrap();
}
