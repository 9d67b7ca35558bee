use std::{collections::BTreeMap, time::Duration};

use rskafka::{
    client::partition::{Compression, UnknownTopicHandling},
    record::Record,
};
use test_support::run_python;

use crate::helpers::*;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[tokio::test]
async fn poison_records_go_to_the_dead_letter_topic_and_the_good_ones_behind_them_are_stored() {
    let pipeline = Pipeline::start().await;
    let _worker = pipeline.worker();
    let good = |id: &str| {
        format!(
            r#"{{"schemaVersion":1,"eventId":"{id}","username":"ann","userId":"u1","price":5.5,"timestamp":"2026-11-24T10:00:00.000Z"}}"#
        )
    };
    let first = "01a20000-0000-7000-8000-000000000001";
    let last = "01a20000-0000-7000-8000-000000000002";
    let values = [
        good(first),
        "{not json".to_string(),
        r#"{"schemaVersion":1,"eventId":"01a20000-0000-7000-8000-000000000009","username":"ann","price":5}"#.to_string(),
        good(last).replace("5.5", "-5.5"),
        good(last),
    ];
    let client = rskafka::client::ClientBuilder::new(pipeline.bootstrap())
        .build()
        .await
        .unwrap();
    let partition = client
        .partition_client(pipeline.topic.clone(), 0, UnknownTopicHandling::Retry)
        .await
        .unwrap();
    let records = values
        .iter()
        .map(|v| Record {
            key: Some(b"u1".to_vec()),
            value: Some(v.clone().into_bytes()),
            // The original's headers (trace context, a forged dlq.* header) reach the dead letter.
            headers: BTreeMap::from([
                ("traceparent".to_string(), TRACEPARENT.as_bytes().to_vec()),
                ("dlq.offset".to_string(), b"forged".to_vec()),
            ]),
            timestamp: rskafka::chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        })
        .collect();
    partition
        .produce(records, Compression::NoCompression)
        .await
        .unwrap();

    let stored = pipeline.wait_stored(2, Duration::from_secs(60)).await;
    assert_eq!(stored.len(), 2);
    assert!(stored.contains(&first.to_string()) && stored.contains(&last.to_string()));
    pipeline.wait_committed_to_end(Duration::from_secs(30));

    let dlq = run_python(
        "read_topic.py",
        &[
            &pipeline.kafka,
            &format!("{}.dlq", pipeline.topic),
            "3",
            "20",
        ],
    );
    let records = dlq["records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{dlq}");
    let offsets: Vec<&str> = records
        .iter()
        .map(|r| r["headers"]["dlq.offset"].as_str().unwrap())
        .collect();
    assert_eq!(offsets, ["1", "2", "3"]);
    for record in records {
        assert_eq!(record["headers"]["dlq.partition"], "0");
        assert_eq!(record["headers"]["dlq.topic"], pipeline.topic.as_str());
        assert!(!record["headers"]["dlq.reason"].as_str().unwrap().is_empty());
        assert_eq!(record["key"], "u1");
        assert_eq!(record["headers"]["traceparent"], TRACEPARENT, "{record}");
    }
    let reasons: Vec<&str> = records
        .iter()
        .map(|r| r["headers"]["dlq.reason"].as_str().unwrap())
        .collect();
    assert!(reasons[1].contains("userId"), "{reasons:?}");
    assert!(reasons[2].contains("price"), "{reasons:?}");
    pipeline.stop();
}
