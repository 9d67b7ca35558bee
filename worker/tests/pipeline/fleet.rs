use std::time::Duration;

use test_support::{run_python, InfraServer};

use crate::helpers::*;

/// Waits until at least `count` purchases are stored.
async fn until_stored(pipeline: &Pipeline, count: u64) {
    let collection = pipeline.collection().await;
    for _ in 0..1200 {
        if collection
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap_or(0)
            >= count
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{count} purchases were never stored");
}

#[tokio::test]
async fn a_worker_killed_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let _alone = one_heavy_test_at_a_time().await;
    let pipeline = Pipeline::start().await;
    let survivor = pipeline.worker();
    let victim = pipeline.worker();
    let (mut accepted, ()) = tokio::join!(pipeline.post_purchases(4_000, 32), async {
        until_stored(&pipeline, 1_000).await;
        victim.kill(); // SIGKILL: no flush, no commit, no leave
    });
    // Purchases for the victim's partitions too, after it is gone: the survivor must take
    // them over (once the victim's session expired) for them to be stored.
    accepted.extend(pipeline.post_purchases(4_000, 32).await);
    let stored = pipeline
        .wait_stored(accepted.len(), Duration::from_secs(180))
        .await;
    assert_exactly_once(&accepted, &stored);
    pipeline.wait_committed_to_end(Duration::from_secs(30));
    wait_assigned(&[&survivor], Duration::from_secs(30)).await;
    pipeline.stop();
}

#[tokio::test]
async fn workers_joining_and_leaving_mid_stream_lose_nothing() {
    let _alone = one_heavy_test_at_a_time().await;
    let pipeline = Pipeline::start().await;
    let first = pipeline.worker();
    let leaving = pipeline.worker();
    let (accepted, joined) = tokio::join!(pipeline.post_purchases(8_000, 32), async {
        until_stored(&pipeline, 1_000).await;
        let joined = pipeline.worker();
        until_stored(&pipeline, 3_000).await;
        leaving.terminate(); // SIGTERM: flush, commit, leave
        joined
    });
    let stored = pipeline
        .wait_stored(accepted.len(), Duration::from_secs(180))
        .await;
    assert_exactly_once(&accepted, &stored);
    pipeline.wait_committed_to_end(Duration::from_secs(30));
    // A leaver that led the group lets its session expire instead of sending LeaveGroup
    // (see kafka-group's README), so its partitions may take a session timeout to move.
    wait_assigned(&[&first, &joined], Duration::from_secs(30)).await;
    pipeline.stop();
}

#[tokio::test]
async fn a_database_outage_pauses_the_worker_without_moving_offsets_or_losing_purchases() {
    let _alone = one_heavy_test_at_a_time().await;
    let (kafka, _) = shared_servers();
    let mongo = InfraServer::start("mongo");
    let pipeline = Pipeline::start_on_test_kafka(kafka, &mongo.address).await;
    let worker = pipeline.worker();
    let mut accepted = pipeline.post_purchases(1_000, 16).await;
    pipeline
        .wait_stored(accepted.len(), Duration::from_secs(120))
        .await;
    pipeline.wait_committed_to_end(Duration::from_secs(30));

    mongo.stop();
    accepted.extend(pipeline.post_purchases(1_000, 16).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = run_python(
        "group_offsets.py",
        &[&pipeline.kafka, &pipeline.group, &pipeline.topic],
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = run_python(
        "group_offsets.py",
        &[&pipeline.kafka, &pipeline.group, &pipeline.topic],
    );
    assert_eq!(
        before["committed"], after["committed"],
        "offsets moved while the database was down"
    );
    let committed: i64 = (0..PARTITIONS)
        .map(|p| after["committed"][p.to_string()].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(
        committed, 1_000,
        "nothing written during the outage was committed"
    );
    assert!(
        worker
            .metric("worker_write_errors_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );

    mongo.restart();
    let stored = pipeline
        .wait_stored(accepted.len(), Duration::from_secs(120))
        .await;
    assert_exactly_once(&accepted, &stored);
    pipeline.wait_committed_to_end(Duration::from_secs(30));
    pipeline.stop();
}
