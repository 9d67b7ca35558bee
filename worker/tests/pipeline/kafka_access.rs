//! Kafka authorization refusals are named, not retried as outages: on a three-broker mock
//! cluster of its own, a topic the brokers refuse to describe (TOPIC_AUTHORIZATION_FAILED,
//! as Kafka answers a user without Describe) stops gateway and worker start-up naming the
//! topic and what to grant; a consumer group the brokers refuse (GROUP_AUTHORIZATION_FAILED)
//! stops the worker naming the group; and a worker whose joins are refused says why on
//! /readyz instead of only "joining".

use std::time::{Duration, Instant};

use clap::Parser;
use test_support::{shared_servers, TestKafka};

use crate::helpers::{dead_letter_topic, unique, worker_config, worker_start_up_error, Pipeline};

const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const GROUP_AUTHORIZATION_FAILED: i16 = 30;
const OFFSET_FETCH: i16 = 9;
const JOIN_GROUP: i16 = 11;

fn kafka_worker_config(
    kafka: &TestKafka,
    topic: &str,
    group: &str,
) -> worker::config::WorkerConfig {
    let (_, mongo) = shared_servers();
    worker_config([
        format!("--kafka-brokers={}", kafka.address),
        format!("--kafka-topic={topic}"),
        format!("--dlq-topic={}", dead_letter_topic(topic)),
        format!("--kafka-group-id={group}"),
        "--kafka-retry-deadline=5s".into(),
        format!("--mongo-uri={}", mongo.address),
        format!("--mongo-database={}", unique("shop").replace('-', "_")),
    ])
}

#[tokio::test]
async fn a_topic_the_brokers_refuse_to_describe_stops_start_up_naming_the_topic_and_the_grant() {
    let kafka = TestKafka::mock_cluster(3);
    let cluster = kafka.mock().expect("a mock cluster");
    let topic = unique("purchases");
    kafka.prepare_topic(&topic, 3);
    kafka.prepare_topic(&dead_letter_topic(&topic), 1);
    cluster.set_topic_error(&topic, TOPIC_AUTHORIZATION_FAILED);

    let (error, took) =
        worker_start_up_error(kafka_worker_config(&kafka, &topic, &unique("workers"))).await;
    eprintln!("[kafka-access] worker, topic refused ({took:.1?}): {error}");
    assert!(
        error.contains(&format!("refuse to describe topic {topic}"))
            && error.contains("TopicAuthorizationFailed")
            && error.contains("Describe and Read"),
        "{error}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    let (_, mongo) = shared_servers();
    let cli = gateway::config::Cli::try_parse_from([
        "gateway".to_string(),
        "--listen=127.0.0.1:0".into(),
        format!("--kafka-brokers={}", kafka.address),
        format!("--kafka-topic={topic}"),
        format!("--mongo-uri={}", mongo.address),
        "--auth-disabled".into(),
        "--log-filter=warn".into(),
    ])
    .expect("gateway flags");
    let error = match gateway::startup::Application::build(cli.config).await {
        Ok(_) => panic!("the gateway started although Kafka refuses the topic"),
        Err(e) => format!("{e:#}"),
    };
    eprintln!("[kafka-access] gateway, topic refused: {error}");
    assert!(
        error.contains(&format!("refuse to describe topic {topic}"))
            && error.contains("Describe and Write"),
        "{error}"
    );
}

#[tokio::test]
async fn a_consumer_group_the_brokers_refuse_stops_worker_start_up_naming_the_group() {
    let kafka = TestKafka::mock_cluster(3);
    let cluster = kafka.mock().expect("a mock cluster");
    let topic = unique("purchases");
    let group = unique("workers");
    kafka.prepare_topic(&topic, 3);
    kafka.prepare_topic(&dead_letter_topic(&topic), 1);
    cluster.push_errors(OFFSET_FETCH, &[GROUP_AUTHORIZATION_FAILED]);
    let (error, took) = worker_start_up_error(kafka_worker_config(&kafka, &topic, &group)).await;
    eprintln!("[kafka-access] worker, group refused ({took:.1?}): {error}");
    assert!(
        error.contains(&format!("refuse consumer group {group}"))
            && error.contains("grant its user Read on the group"),
        "{error}"
    );
}

#[tokio::test]
async fn a_worker_whose_joins_are_refused_says_why_on_readiness() {
    let kafka = TestKafka::mock_cluster(3);
    let cluster = kafka.mock().expect("a mock cluster");
    let (_, mongo) = shared_servers();
    let pipeline = Pipeline::start_on_test_kafka(&kafka, &mongo.address).await;
    // Enough refusals for several join attempts (the member backs off between them).
    cluster.push_errors(JOIN_GROUP, &[GROUP_AUTHORIZATION_FAILED; 20]);
    let worker = pipeline.worker();
    let started = Instant::now();
    let body = loop {
        if let Some((status, body)) = worker.readiness().await {
            if body["kafka"]
                .as_str()
                .is_some_and(|k| k.contains("GroupAuthorizationFailed"))
            {
                assert_eq!(status, 503, "{body}");
                break body;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "readiness never named the refusal"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "[kafka-access] refused joins on /readyz after {:.1?}: {body}",
        started.elapsed()
    );
    assert_eq!(body["group"], "joining", "{body}");
    cluster.clear_errors(JOIN_GROUP);
    worker.terminate();
    pipeline.stop();
}

#[tokio::test]
async fn a_produce_the_brokers_refuse_is_a_503_saying_nothing_was_stored_and_readiness_names_it() {
    const PRODUCE: i16 = 0;
    let kafka = TestKafka::mock_cluster(3);
    let cluster = kafka.mock().expect("a mock cluster");
    let (_, mongo) = shared_servers();
    let pipeline = Pipeline::start_on_test_kafka(&kafka, &mongo.address).await;
    // The next two produces are refused, as Kafka refuses a user without Write.
    cluster.push_errors(PRODUCE, &[TOPIC_AUTHORIZATION_FAILED; 2]);
    let url = format!("{}/api/purchases", pipeline.gateway);
    let purchase = serde_json::json!({"username": "ann", "userId": "u1", "price": 2.5});
    let response = pipeline
        .client
        .post(&url)
        .json(&purchase)
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(response.status().as_u16(), 503);
    let body: serde_json::Value = response.json().await.expect("JSON");
    eprintln!("[kafka-access] refused produce: {body}");
    assert_eq!(body["error"], "kafka_unavailable", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("refused") && message.contains("nothing was stored"),
        "{body}"
    );
    assert!(
        !message.contains("TopicAuthorization") && !message.contains("Server error"),
        "no protocol internals in the answer: {body}"
    );
    let ready = pipeline
        .client
        .get(format!("{}/readyz", pipeline.gateway))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);
    let ready: serde_json::Value = ready.json().await.expect("JSON");
    eprintln!("[kafka-access] gateway /readyz after a refused produce: {ready}");
    assert!(
        ready["kafka"]
            .as_str()
            .is_some_and(|k| k.contains("grant it Write")),
        "{ready}"
    );

    // Once the brokers take purchases again, so does the gateway, and readiness clears.
    let started = Instant::now();
    loop {
        let status = pipeline
            .client
            .post(&url)
            .json(&purchase)
            .send()
            .await
            .expect("gateway answers")
            .status()
            .as_u16();
        if status == 202 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = pipeline
        .client
        .get(format!("{}/readyz", pipeline.gateway))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    pipeline.stop();
}
