//! A worker started in a group with history (committed offsets, a backlog, previous workers
//! gone) stores its first record quickly: the moment KEDA adds workers is the moment a
//! backlog grows.

use std::time::{Duration, Instant};

use mongodb::bson::doc;

use crate::helpers::*;

/// Stores 500 purchases with one worker, stops it (`kill`: SIGKILL, else SIGTERM), queues
/// 2,000 more, starts a fresh worker and returns how long it took to store the first of them.
async fn first_record_in_a_group_with_history(kill: bool) -> Duration {
    let _alone = one_heavy_test_at_a_time().await;
    let pipeline = Pipeline::start().await;
    let first = pipeline.worker();
    let mut accepted = pipeline.post_purchases(500, 16).await;
    pipeline.wait_stored(500, Duration::from_secs(60)).await;
    pipeline.wait_committed_to_end(Duration::from_secs(30));
    if kill {
        first.kill();
    } else {
        first.terminate();
    }
    accepted.extend(pipeline.post_purchases(2_000, 32).await);

    let collection = pipeline.collection().await;
    let started = Instant::now();
    let _next = pipeline.worker();
    let took = loop {
        if collection.count_documents(doc! {}).await.unwrap_or(0) > 500 {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing stored within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stored = pipeline
        .wait_stored(accepted.len(), Duration::from_secs(60))
        .await;
    assert_exactly_once(&accepted, &stored);
    pipeline.stop();
    took
}

#[tokio::test]
async fn a_worker_replacing_one_that_was_terminated_stores_its_first_record_without_waiting_for_a_session(
) {
    // Measured 3.3-4.3 s (the target is 5 s); the bound only separates "joined at once" from
    // "waited for a session timeout or worse" without measuring how busy the machine is.
    let took = first_record_in_a_group_with_history(false).await;
    eprintln!("[timing] group with history (previous worker SIGTERMed): first record stored {took:?} after start");
    assert!(
        took < Duration::from_secs(10),
        "first record after {took:?}"
    );
}

#[tokio::test]
async fn a_worker_replacing_one_that_crashed_stores_its_first_record_once_the_session_expired() {
    // The crashed worker is still a member (and the group's leader) until its session
    // timeout (6 s here) passes without a heartbeat: Kafka waits for it too.
    let took = first_record_in_a_group_with_history(true).await;
    eprintln!("[timing] group with history (previous worker SIGKILLed): first record stored {took:?} after start");
    assert!(
        took < Duration::from_secs(20),
        "first record after {took:?}"
    );
}

/// `--group-protocol consumer` on brokers that do not offer it (here the mock cluster with
/// ConsumerGroupHeartbeat withdrawn, as Kafka before 4.0 answers ApiVersions) stops the
/// worker at start-up with the fix, instead of a worker that never joins.
#[tokio::test]
async fn the_consumer_group_protocol_on_brokers_without_it_is_a_start_up_error_naming_the_fix() {
    let mock = test_support::MockCluster::start(test_support::kafka::MOCK_BROKERS);
    mock.set_api_version(68, 0, -1);
    let topic = unique("purchases");
    mock.create_topic(&topic, PARTITIONS, 3);
    mock.create_topic(&dead_letter_topic(&topic), 1, 3);
    let config = worker_config([
        format!("--kafka-brokers={}", mock.address),
        format!("--kafka-topic={topic}"),
        format!("--kafka-topic-partitions={PARTITIONS}"),
        format!("--dlq-topic={}", dead_letter_topic(&topic)),
        "--group-protocol=consumer".into(),
        "--mongo-uri=mongodb://127.0.0.1:9".into(),
        "--mongo-timeout=2s".into(),
    ]);
    let (error, took) = worker_start_up_error(config).await;
    eprintln!("[start] consumer protocol refused in {took:.1?}: {error}");
    assert!(
        error.contains("do not offer the consumer group protocol")
            && error.contains("--group-protocol classic"),
        "{error}"
    );
}

/// Where a partition without a commit starts is asked with ListOffsets. A worker whose first
/// lookups fail (answered NOT_LEADER_OR_FOLLOWER, as during a leader move at start-up, or
/// on a connection another request broke) keeps asking and reads every partition: no later
/// assignment need come to try again (under the consumer group protocol none comes while the
/// group does not change, and a partition given up on stayed owned and unread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_start_offset_lookups_fail_keeps_asking_and_reads_every_partition() {
    const LIST_OFFSETS: i16 = 2;
    const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    let _alone = one_heavy_test_at_a_time().await;
    let kafka = test_support::kafka::TestKafka::mock_cluster(test_support::kafka::MOCK_BROKERS);
    let (_, mongo) = shared_servers();
    let pipeline = Pipeline::start_on_test_kafka(&kafka, &mongo.address).await;
    let accepted = pipeline.post_purchases(120, 8).await;
    let cluster = kafka.mock().expect("a mock cluster");
    cluster.push_errors(LIST_OFFSETS, &[NOT_LEADER_OR_FOLLOWER; 4]);
    let worker = pipeline.worker();
    wait_assigned(&[&worker], Duration::from_secs(30)).await;
    let stored = pipeline
        .wait_stored(accepted.len(), Duration::from_secs(30))
        .await;
    assert_exactly_once(&accepted, &stored);
}
