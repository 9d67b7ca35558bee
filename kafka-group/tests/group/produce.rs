//! Producing with one request per broker (`ProduceClient`, `BrokerLink`) on librdkafka's
//! three-broker mock cluster, whose request tracking counts the requests: every partition a
//! broker leads rides in one request, what was written reads back as it was sent, and a
//! partition that moved says so alone, appending nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use bytes::Bytes;
use kafka_group::{
    nothing_appended_retriable, FetchLimits, OutgoingRecord, PartitionBatch, ProduceClient,
    RecordFetcher, ResponseError, TopicPartition,
};
use test_support::MockCluster;

use crate::helpers::unique;

const PRODUCE: i16 = 0;
const TIMEOUT: Duration = Duration::from_secs(5);

fn record(partition: i32, n: usize) -> OutgoingRecord {
    OutgoingRecord::new(
        Some(Bytes::from(format!("user-{partition}"))),
        Some(Bytes::from(format!("p{partition}-r{n}"))),
        [("ce_id".into(), Bytes::from(format!("{partition}-{n}")))],
        1_764_936_000_000 + n as i64,
    )
}

fn mock_with_topic(partitions: i32) -> (MockCluster, String, ProduceClient) {
    let mock = MockCluster::start(test_support::kafka::MOCK_BROKERS);
    let topic = unique("produce");
    mock.create_topic(&topic, partitions, 3);
    let client = ProduceClient::new(
        mock.address.split(',').map(str::to_string).collect(),
        "produce-test",
        TIMEOUT,
    );
    (mock, topic, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_produce_request_per_broker_carries_every_partition_it_leads() {
    let (mock, topic, client) = mock_with_topic(12);
    let leaders = client.leaders(&topic).await.expect("leaders");
    assert_eq!(leaders.len(), 12, "every partition has a leader");
    let mut by_broker: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (partition, address) in &leaders {
        by_broker
            .entry(address.clone())
            .or_default()
            .push(*partition);
    }
    assert_eq!(by_broker.len(), 3, "the mock spreads leaders: {leaders:?}");

    mock.start_tracking();
    let records: BTreeMap<i32, Vec<OutgoingRecord>> = (0..12)
        .map(|p| (p, (0..10).map(|n| record(p, n)).collect()))
        .collect();
    // Two rounds: the second batch of each partition must start where the first ended.
    for (address, partitions) in &by_broker {
        let link = client.connect(address).await.expect("connects");
        for (round, half) in [(0, 0..5), (1, 5..10)] {
            let batches: BTreeMap<i32, PartitionBatch> = partitions
                .iter()
                .map(|p| (*p, records[p][half.clone()].iter().cloned().collect()))
                .collect();
            let outcomes = link
                .produce(&topic, &batches, TIMEOUT)
                .await
                .expect("answered");
            let expected: BTreeMap<i32, Result<i64, ResponseError>> =
                partitions.iter().map(|p| (*p, Ok(round * 5))).collect();
            assert_eq!(
                outcomes, expected,
                "round {round}: each batch's base offset"
            );
        }
    }
    let produce_requests: usize = mock
        .request_counts()
        .iter()
        .filter(|((_, api), _)| *api == PRODUCE)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        produce_requests, 6,
        "one request per broker and round for 12 partitions"
    );

    let mut fetcher = RecordFetcher::new(
        mock.address.split(',').map(str::to_string).collect(),
        "produce-test",
        TIMEOUT,
    );
    let mut positions: BTreeMap<TopicPartition, i64> = (0..12)
        .map(|p| (TopicPartition::new(&topic, p), 0))
        .collect();
    let limits = FetchLimits {
        min_bytes: 1,
        max_wait: Duration::from_millis(100),
        max_bytes: 1 << 20,
        partition_max_bytes: 1 << 20,
    };
    // The mock answers one stored batch per partition and fetch: read until all are in.
    let mut fetched: BTreeMap<TopicPartition, Vec<kafka_group::FetchedRecord>> = BTreeMap::new();
    for _ in 0..10 {
        for (tp, outcome) in fetcher.fetch(&positions, &limits).await {
            let part = outcome.expect("fetched");
            positions.insert(tp.clone(), part.next_offset);
            fetched.entry(tp).or_default().extend(part.records);
        }
    }
    for (tp, got) in fetched {
        let sent = &records[&tp.partition];
        let got: Vec<_> = got
            .iter()
            .map(|r| {
                (
                    r.offset,
                    r.timestamp,
                    r.key.clone(),
                    r.value.clone(),
                    r.headers.clone(),
                )
            })
            .collect();
        let want: Vec<_> = sent
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let headers = r
                    .headers()
                    .map(|(n, v)| (n.to_string(), Some(v.clone())))
                    .collect();
                (
                    i as i64,
                    r.timestamp_ms(),
                    r.key().cloned(),
                    r.value().cloned(),
                    headers,
                )
            })
            .collect();
        assert_eq!(got, want, "{tp} reads back as sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_leader_moved_is_refused_alone_and_nothing_of_it_is_appended() {
    let (mock, topic, client) = mock_with_topic(6);
    let leaders = client.leaders(&topic).await.expect("leaders");
    let address = leaders[&0].clone();
    let same_broker: BTreeSet<i32> = leaders
        .iter()
        .filter(|(_, a)| **a == address)
        .map(|(p, _)| *p)
        .collect();
    let kept = *same_broker
        .iter()
        .find(|p| **p != 0)
        .expect("two partitions");
    let link = client.connect(&address).await.expect("connects");
    let other = mock
        .broker_ids()
        .into_iter()
        .find(|id| mock.broker_address(*id) != address)
        .expect("another broker");
    mock.set_leader(&topic, 0, other);

    let (moved, stays) = (record(0, 0), record(kept, 0));
    let batch = |record: &OutgoingRecord| PartitionBatch::from_iter([record.clone()]);
    let batches = BTreeMap::from([(0, batch(&moved)), (kept, batch(&stays))]);
    let outcomes = link
        .produce(&topic, &batches, TIMEOUT)
        .await
        .expect("answered");
    let refusal = outcomes[&0].expect_err("partition 0 moved away");
    assert!(nothing_appended_retriable(refusal), "{refusal:?}");
    assert_eq!(outcomes[&kept], Ok(0));

    // The new leader takes it at offset 0: the refused attempt appended nothing.
    let leaders = client.leaders(&topic).await.expect("leaders");
    assert_eq!(leaders[&0], mock.broker_address(other));
    let new_link = client.connect(&leaders[&0]).await.expect("connects");
    let again = BTreeMap::from([(0, batch(&moved))]);
    let outcomes = new_link
        .produce(&topic, &again, TIMEOUT)
        .await
        .expect("answered");
    assert_eq!(outcomes[&0], Ok(0));
}
