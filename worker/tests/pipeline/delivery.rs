use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn purchases_posted_to_the_gateway_appear_in_the_history_api() {
    let pipeline = Pipeline::start().await;
    let _worker = pipeline.worker();
    let url = format!("{}/api/purchases", pipeline.gateway);
    let sent = [19.99, 0.01, 120.5];
    let mut ids = Vec::new();
    for price in sent {
        let response = pipeline
            .client
            .post(&url)
            .json(&json!({"username": "Zoë", "userId": "u-e2e", "price": price}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let body: Value = response.json().await.unwrap();
        ids.push(body["eventId"].as_str().unwrap().to_string());
    }

    let started = Instant::now();
    let page = loop {
        let page = pipeline.gateway_json("/api/users/u-e2e/purchases").await;
        if page["purchases"].as_array().map(Vec::len) == Some(3) {
            break page;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "history never showed the purchases: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let items = page["purchases"].as_array().unwrap();
    let newest_first: Vec<&str> = items
        .iter()
        .map(|p| p["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(
        newest_first,
        [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]
    );
    let prices: Vec<f64> = items.iter().map(|p| p["price"].as_f64().unwrap()).collect();
    assert_eq!(
        prices,
        [120.5, 0.01, 19.99],
        "money reads back exactly as sent"
    );
    assert!(items.iter().all(|p| p["username"] == "Zoë"));
    let one = pipeline
        .gateway_json(&format!("/api/purchases/{}", ids[0]))
        .await;
    assert_eq!(one["price"], json!(19.99));
    pipeline.stop();
}

#[tokio::test]
async fn two_workers_store_20000_purchases_exactly_once_and_commit_to_the_end() {
    let _alone = one_heavy_test_at_a_time().await;
    let pipeline = Pipeline::start().await;
    let workers = [pipeline.worker(), pipeline.worker()];
    let accepted = pipeline.post_purchases(20_000, 64).await;
    assert_eq!(accepted.len(), 20_000);

    let stored = pipeline
        .wait_stored(accepted.len(), Duration::from_secs(180))
        .await;
    assert_exactly_once(&accepted, &stored);
    let offsets = pipeline.wait_committed_to_end(Duration::from_secs(30));
    let end_total: i64 = (0..PARTITIONS)
        .map(|p| offsets["end"][p.to_string()].as_i64().unwrap())
        .sum();
    assert_eq!(
        end_total, 20_000,
        "the topic holds exactly the accepted purchases"
    );

    let mut inserted = 0.0;
    for worker in &workers {
        inserted += worker
            .metric("worker_documents_inserted_total")
            .await
            .unwrap_or(0.0);
    }
    assert_eq!(inserted, 20_000.0, "the workers' own count agrees");
    pipeline.stop();
}
