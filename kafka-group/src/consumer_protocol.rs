//! The "consumer" embedded protocol: what members put in JoinGroup metadata (subscription)
//! and what the leader hands out in SyncGroup (assignment). Each blob is an i16 version
//! followed by the struct; readers decode newer versions as the newest they know.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::{
    messages::{
        consumer_protocol_assignment, consumer_protocol_subscription, ConsumerProtocolAssignment,
        ConsumerProtocolSubscription, TopicName,
    },
    protocol::{Decodable, Encodable, Message, StrBytes},
};

use crate::{
    error::{Error, Result},
    TopicPartition,
};

/// Version 1 adds the partitions a member owns, which the sticky assignors need; version 2
/// the generation they were owned in, which librdkafka's and Java's cooperative-sticky
/// leaders use to settle two claims on one partition. Older readers (any Kafka client) read
/// the fields they know and ignore the rest.
const SUBSCRIPTION_VERSION: i16 = 2;
const ASSIGNMENT_VERSION: i16 = 0;

/// `generation`: the one `owned` was assigned in (-1 for none).
pub fn encode_subscription(topics: &[String], owned: &[TopicPartition], generation: i32) -> Bytes {
    let subscription = ConsumerProtocolSubscription::default()
        .with_generation_id(generation)
        .with_topics(
            topics
                .iter()
                .map(|t| StrBytes::from_string(t.clone()))
                .collect(),
        )
        .with_owned_partitions(
            group_by_topic(owned)
                .into_iter()
                .map(|(topic, partitions)| {
                    consumer_protocol_subscription::TopicPartition::default()
                        .with_topic(TopicName(StrBytes::from_string(topic)))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    encode(&subscription, SUBSCRIPTION_VERSION)
}

/// Topics and owned partitions of a member's subscription.
pub fn decode_subscription(bytes: &Bytes) -> Result<(Vec<String>, Vec<TopicPartition>)> {
    let subscription: ConsumerProtocolSubscription = decode(bytes, "subscription")?;
    let topics = subscription.topics.iter().map(|t| t.to_string()).collect();
    let owned = subscription
        .owned_partitions
        .iter()
        .flat_map(|tp| {
            tp.partitions
                .iter()
                .map(|p| TopicPartition::new(tp.topic.0.as_str(), *p))
        })
        .collect();
    Ok((topics, owned))
}

pub fn encode_assignment(partitions: &[TopicPartition]) -> Bytes {
    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
        group_by_topic(partitions)
            .into_iter()
            .map(|(topic, partitions)| {
                consumer_protocol_assignment::TopicPartition::default()
                    .with_topic(TopicName(StrBytes::from_string(topic)))
                    .with_partitions(partitions)
            })
            .collect(),
    );
    encode(&assignment, ASSIGNMENT_VERSION)
}

pub fn decode_assignment(bytes: &Bytes) -> Result<Vec<TopicPartition>> {
    if bytes.is_empty() {
        // A member the leader gave nothing may receive an empty blob.
        return Ok(Vec::new());
    }
    let assignment: ConsumerProtocolAssignment = decode(bytes, "assignment")?;
    let mut partitions: Vec<TopicPartition> = assignment
        .assigned_partitions
        .iter()
        .flat_map(|tp| {
            tp.partitions
                .iter()
                .map(|p| TopicPartition::new(tp.topic.0.as_str(), *p))
        })
        .collect();
    partitions.sort();
    Ok(partitions)
}

fn group_by_topic(partitions: &[TopicPartition]) -> BTreeMap<String, Vec<i32>> {
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        by_topic
            .entry(tp.topic.clone())
            .or_default()
            .push(tp.partition);
    }
    by_topic
}

fn encode<T: Encodable>(message: &T, version: i16) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    message
        .encode(&mut buf, version)
        .expect("a supported version of a well-formed message encodes");
    buf.freeze()
}

fn decode<T: Decodable + Message>(bytes: &Bytes, what: &str) -> Result<T> {
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        return Err(Error::Decode(format!("{what}: {} bytes", buf.remaining())));
    }
    let version = buf.get_i16().clamp(T::VERSIONS.min, T::VERSIONS.max);
    T::decode(&mut buf, version).map_err(|e| Error::Decode(format!("{what} v{version}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_and_assignment_round_trip() {
        let owned = vec![
            TopicPartition::new("a", 2),
            TopicPartition::new("a", 0),
            TopicPartition::new("b", 1),
        ];
        let bytes = encode_subscription(&["a".into(), "b".into()], &owned, 7);
        let (topics, back) = decode_subscription(&bytes).unwrap();
        assert_eq!(topics, ["a", "b"]);
        let mut expected = owned.clone();
        expected.sort();
        let mut back_sorted = back.clone();
        back_sorted.sort();
        assert_eq!(back_sorted, expected);

        let assigned = decode_assignment(&encode_assignment(&owned)).unwrap();
        assert_eq!(assigned, expected);
        assert!(decode_assignment(&Bytes::new()).unwrap().is_empty());
    }

    #[test]
    fn a_version_0_subscription_from_another_client_decodes() {
        // What a client that knows only version 0 sends: version, topics, user data.
        let mut buf = BytesMut::new();
        buf.put_i16(0);
        ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("purchases")])
            .encode(&mut buf, 0)
            .unwrap();
        let (topics, owned) = decode_subscription(&buf.freeze()).unwrap();
        assert_eq!(topics, ["purchases"]);
        assert!(owned.is_empty());
    }
}
