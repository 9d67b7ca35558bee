//! The fetch loop's pacing through the whole pipeline: a lone purchase on a quiet stack is
//! read at once, a burst is read in full requests, and nothing is lost or doubled when the
//! traffic changes shape or a worker joins in the middle of it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// POSTs one purchase and returns how long after its 202 the history API showed it.
async fn one_purchase_until_visible(
    pipeline: &Pipeline,
    user: &str,
    timeout: Duration,
) -> Duration {
    let response = pipeline
        .client
        .post(format!("{}/api/purchases", pipeline.gateway))
        .json(&json!({"username": "quiet shopper", "userId": user, "price": 4.5}))
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(response.status().as_u16(), 202);
    let accepted = Instant::now();
    let body: Value = response.json().await.expect("JSON");
    let event_id = body["eventId"].as_str().expect("eventId").to_string();
    loop {
        let page = pipeline
            .gateway_json(&format!("/api/users/{user}/purchases"))
            .await;
        let shown = page["purchases"]
            .as_array()
            .is_some_and(|items| items.iter().any(|p| p["eventId"] == event_id.as_str()));
        if shown {
            return accepted.elapsed();
        }
        assert!(
            accepted.elapsed() < timeout,
            "purchase {event_id} not in the history {timeout:?} after its 202"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `count` purchases one at a time, 150 ms apart: each alone on the wire.
async fn trickle(pipeline: &Pipeline, count: usize) -> std::collections::BTreeSet<String> {
    let mut accepted = std::collections::BTreeSet::new();
    for _ in 0..count {
        accepted.extend(pipeline.post_purchases(1, 1).await);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    accepted
}

#[tokio::test]
async fn a_single_purchase_on_an_idle_stack_is_in_the_history_within_two_seconds_of_its_202() {
    // Alone, so the figure is the pipeline's, not that of another test's stream.
    let _alone = one_heavy_test_at_a_time().await;
    let pipeline = Pipeline::start().await;
    let worker = pipeline.worker();
    wait_assigned(&[&worker], Duration::from_secs(60)).await;
    let mut took = Vec::new();
    for i in 0..5 {
        // Quiet long enough that the worker's fetch is a long poll with nothing to read.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        took.push(
            one_purchase_until_visible(&pipeline, &format!("quiet-{i}"), Duration::from_secs(2))
                .await,
        );
    }
    println!("202 to visible in the history, idle stack: {took:?}");
    pipeline.stop();
}

#[tokio::test]
async fn purchases_sent_while_the_fleet_idles_is_busy_and_grows_are_stored_exactly_once() {
    let _alone = one_heavy_test_at_a_time().await;
    let pipeline = Pipeline::start().await;
    let first = pipeline.worker();
    wait_assigned(&[&first], Duration::from_secs(60)).await;

    // Idle: a trickle, each purchase alone on the wire.
    let mut accepted = trickle(&pipeline, 20).await;
    // Busy, with a second worker joining while the burst runs.
    let burst = pipeline.post_purchases(3000, 64);
    let joining = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        pipeline.worker()
    };
    let (burst, second) = tokio::join!(burst, joining);
    accepted.extend(burst);
    // Idle again after the burst, while the group may still be settling.
    accepted.extend(trickle(&pipeline, 20).await);
    assert_eq!(accepted.len(), 3040);

    let stored = pipeline
        .wait_stored(accepted.len(), Duration::from_secs(120))
        .await;
    assert_exactly_once(&accepted, &stored);
    pipeline.wait_committed_to_end(Duration::from_secs(30));
    wait_assigned(&[&first, &second], Duration::from_secs(60)).await;
    let mut consumed = 0.0;
    for worker in [&first, &second] {
        consumed += worker
            .metric("worker_records_consumed_total")
            .await
            .unwrap_or(0.0);
    }
    assert!(
        consumed >= 3040.0,
        "the workers' own count of records read ({consumed}) covers every purchase"
    );
    pipeline.stop();
}
