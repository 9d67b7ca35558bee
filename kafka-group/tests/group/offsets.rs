use std::{collections::BTreeMap, time::Duration};

use kafka_group::{GroupAdmin, OffsetReset, TopicPartition};
use rskafka::{
    client::partition::{Compression, UnknownTopicHandling},
    record::Record,
};
use test_support::run_python;

use crate::helpers::*;

/// Writes `count` records to each partition.
async fn fill(bootstrap: &str, topic: &str, count: usize) {
    let client = rskafka::client::ClientBuilder::new(crate::helpers::brokers(bootstrap))
        .build()
        .await
        .unwrap();
    for partition in 0..PARTITIONS {
        let pc = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        let records = (0..count)
            .map(|i| Record {
                key: None,
                value: Some(format!("{partition}-{i}").into_bytes()),
                headers: Default::default(),
                timestamp: rskafka::chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            })
            .collect();
        pc.produce(records, Compression::NoCompression)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn committed_offsets_read_back_and_confluent_kafka_reads_the_same() {
    let kafka = broker();
    let topic = topic(&kafka.address).await;
    fill(&kafka.address, &topic, 5).await;
    let group = unique("group");
    let mut a = Tracked::start(config(&kafka.address, &group, &topic));
    settle(&mut [&mut a], &topic, Duration::from_secs(60)).await;

    // Partition p has its first p % 6 records processed; partition 11 none at all.
    let commit: BTreeMap<TopicPartition, i64> = (0..PARTITIONS - 1)
        .map(|p| (TopicPartition::new(&topic, p), i64::from(p % 6)))
        .collect();
    a.member.commit(&commit).await.expect("commit");

    let all: Vec<TopicPartition> = (0..PARTITIONS)
        .map(|p| TopicPartition::new(&topic, p))
        .collect();
    let ours = a.member.committed(&all).await.expect("fetch");
    for tp in &all {
        assert_eq!(ours[tp], commit.get(tp).copied(), "{tp}");
    }

    let theirs = run_python("group_offsets.py", &[&kafka.address, &group, &topic]);
    for p in 0..PARTITIONS {
        let expected = commit.get(&TopicPartition::new(&topic, p)).copied();
        assert_eq!(
            theirs["committed"][p.to_string()].as_i64(),
            expected,
            "partition {p}"
        );
        assert_eq!(
            theirs["end"][p.to_string()].as_i64(),
            Some(5),
            "partition {p}"
        );
    }

    // The lag helper agrees with what KEDA computes from those two numbers.
    let admin = GroupAdmin::new(brokers(&kafka.address), "lag-check", Duration::from_secs(5));
    let lag = admin
        .lag(&group, &topic, OffsetReset::Earliest)
        .await
        .unwrap();
    assert_eq!(lag.len(), PARTITIONS as usize);
    for l in &lag {
        let expected = if l.partition == PARTITIONS - 1 {
            5
        } else {
            5 - i64::from(l.partition % 6)
        };
        assert_eq!(l.end, 5);
        assert_eq!(l.lag, expected, "partition {}", l.partition);
    }
    let latest = admin
        .lag(&group, &topic, OffsetReset::Latest)
        .await
        .unwrap();
    assert_eq!(
        latest[PARTITIONS as usize - 1].lag,
        1,
        "KEDA keeps one consumer for an uncommitted partition"
    );
}

#[tokio::test]
async fn a_commit_from_outside_the_active_generation_is_refused() {
    let kafka = broker();
    let (topic, group, members) = settled_group(&kafka.address, 1).await;
    let mut a = members.into_iter().next().expect("one member");
    let old_generation = a.member.generation();

    let mut b = Tracked::start(config(&kafka.address, &group, &topic));
    settle(&mut [&mut a, &mut b], &topic, Duration::from_secs(60)).await;
    assert!(a.member.generation() > old_generation);

    // A stale member (same id, old generation) must not move the group's offsets.
    let admin = GroupAdmin::new(brokers(&kafka.address), "stale", Duration::from_secs(5));
    let result = admin
        .commit_without_membership(&group, &offsets(&topic, &[(0, 3)]))
        .await;
    assert!(
        result.is_err(),
        "a commit outside the active generation was accepted"
    );
    let committed = a
        .member
        .committed(&[TopicPartition::new(&topic, 0)])
        .await
        .unwrap();
    assert_eq!(committed[&TopicPartition::new(&topic, 0)], None);
}
