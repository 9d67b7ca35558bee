//! The seed services' routes keep working.

use serde_json::{json, Value};

use crate::helpers::{event, spawn_app};

#[tokio::test]
async fn seed_buy_routes_accept_both_body_spellings() {
    let app = spawn_app().await;
    let cm_server = app
        .post_json(
            "/buy",
            &json!({"username": "elad", "userid": "555", "price": 12.00}),
        )
        .await;
    assert_eq!(cm_server.status().as_u16(), 202);
    let body: Value = cm_server.json().await.unwrap();
    assert_eq!(body["message"], "Purchase accepted");
    let web_server = app
        .post_json(
            "/api/buy",
            &json!({"username": "elad", "userId": "555", "price": 12.00}),
        )
        .await;
    assert_eq!(web_server.status().as_u16(), 202);

    let dump = app.read_topic(2);
    assert_eq!(dump.records.len(), 2);
    for record in &dump.records {
        assert_eq!(record.key.as_deref(), Some("555"));
        assert_eq!(record.value["userId"], "555");
        assert!(record.value.get("userid").is_none());
    }
}

#[tokio::test]
async fn seed_history_routes_return_arrays_newest_first() {
    let app = spawn_app().await;
    let first = event("555", "elad", 12.0);
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let second = event("555", "elad", 7.5);
    app.store(&[first.clone(), second.clone(), event("556", "other", 1.0)])
        .await;
    let newest_first = json!([second.event_id.to_string(), first.event_id.to_string()]);

    for path in [
        "/api/user/555/purchases",
        "/api/purchases?userId=555",
        "/buyList/elad",
        "/getAllUserBuys/555",
        "/getAllUserBuys/elad",
        "/api/getAllUserBuys/555",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let items: Vec<Value> = response.json().await.unwrap();
        let ids: Vec<Value> = items.iter().map(|p| p["eventId"].clone()).collect();
        assert_eq!(Value::from(ids), newest_first, "{path}");
        assert_eq!(items[1]["price"], json!(12.0), "{path}");
    }
}

#[tokio::test]
async fn seed_info_and_health_routes_answer() {
    let app = spawn_app().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(health.text().await.unwrap(), "Success");
    let info: Value = app.get("/").await.json().await.unwrap();
    assert_eq!(info["docs"], "/docs");
    assert_eq!(info["openapi"], "/openapi.json");
}
