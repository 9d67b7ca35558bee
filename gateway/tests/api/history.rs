use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::helpers::{assert_json_error, event, spawn_app};

#[tokio::test]
async fn history_pages_newest_first_and_the_cursor_visits_every_purchase_once() {
    let app = spawn_app().await;
    let mut mine = Vec::new();
    for i in 0..7 {
        mine.push(event("u-7", "ann", 10.0 + f64::from(i)));
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let others = vec![event("u-8", "bob", 1.0)];
    app.store(&mine).await;
    app.store(&others).await;

    let mut seen = Vec::new();
    let mut path = "/api/users/u-7/purchases?limit=3".to_string();
    let mut pages = 0;
    loop {
        let response = app.get(&path).await;
        assert_eq!(response.status().as_u16(), 200);
        let page: Value = response.json().await.unwrap();
        pages += 1;
        let items = page["purchases"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(
            items
                .iter()
                .map(|p| p["eventId"].as_str().unwrap().to_string()),
        );
        match page["nextCursor"].as_str() {
            Some(cursor) => path = format!("/api/users/u-7/purchases?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = mine.iter().rev().map(|e| e.event_id.to_string()).collect();
    assert_eq!(
        seen, expected,
        "newest first, each exactly once, nobody else's"
    );
}

#[tokio::test]
async fn a_purchase_reads_back_exactly_as_sent_once_stored() {
    let app = spawn_app().await;
    let stored = event("u-1", "Zoë", 19.99);
    let path = format!("/api/purchases/{}", stored.event_id);
    let before = app.get(&path).await;
    assert_json_error(before, 404, None).await;

    app.store(std::slice::from_ref(&stored)).await;
    let response = app.get(&path).await;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "eventId": stored.event_id.to_string(),
            "username": "Zoë",
            "userId": "u-1",
            "price": 19.99,
            "timestamp": stored.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    );
    // The database holds the price as an exact decimal, not a float.
    let client = mongodb::Client::with_uri_str(&app.mongo).await.unwrap();
    let document = client
        .database(&app.database)
        .collection::<mongodb::bson::Document>("purchases")
        .find_one(mongodb::bson::doc! {"_id": stored.event_id.to_string()})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(document.get("price").unwrap().to_string(), "19.99");
    assert!(matches!(
        document.get("price"),
        Some(mongodb::bson::Bson::Decimal128(_))
    ));
}

#[tokio::test]
async fn bad_history_parameters_are_named() {
    let app = spawn_app().await;
    assert_json_error(
        app.get("/api/users/u-1/purchases?limit=0").await,
        400,
        Some("limit"),
    )
    .await;
    assert_json_error(
        app.get("/api/users/u-1/purchases?limit=101").await,
        400,
        Some("limit"),
    )
    .await;
    assert_json_error(
        app.get("/api/users/u-1/purchases?cursor=nope").await,
        400,
        Some("cursor"),
    )
    .await;
    assert_json_error(
        app.get("/api/users/a%20b/purchases").await,
        400,
        Some("userId"),
    )
    .await;
    assert_json_error(
        app.get("/api/purchases/not-a-uuid").await,
        400,
        Some("eventId"),
    )
    .await;
    let empty: Value = app
        .get("/api/users/nobody/purchases")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(empty, json!({"purchases": []}));
}

#[tokio::test]
async fn indexes_for_history_exist_after_start_up() {
    let app = spawn_app().await;
    let client = mongodb::Client::with_uri_str(&app.mongo).await.unwrap();
    let collection = client
        .database(&app.database)
        .collection::<mongodb::bson::Document>("purchases");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let names = loop {
        let names: BTreeSet<String> = collection
            .list_index_names()
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        // Created one after the other: wait for both.
        let both = names.contains("userId_newest_first") && names.contains("username_newest_first");
        if both || std::time::Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(names.contains("userId_newest_first"), "{names:?}");
    assert!(names.contains("username_newest_first"), "{names:?}");
}
