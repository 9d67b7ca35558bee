"""A group's committed offsets and a topic's end offsets, as confluent-kafka (librdkafka) sees
them; KEDA reads the same two numbers. Prints JSON {"committed": {p: offset|null},
"end": {p: offset}}.

usage: group_offsets.py BOOTSTRAP GROUP TOPIC
"""
import json
import os
import sys

from confluent_kafka import Consumer, TopicPartition


def extra_config():
    """librdkafka settings from KAFKA_CLIENT_CONFIG (JSON), e.g. SASL and TLS for a secured broker."""
    return json.loads(os.environ.get("KAFKA_CLIENT_CONFIG", "{}"))


bootstrap, group, topic = sys.argv[1:4]
consumer = Consumer({**extra_config(), "bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
result = {"committed": {}, "end": {}}
for tp in committed:
    result["committed"][str(tp.partition)] = tp.offset if tp.offset >= 0 else None
for p in partitions:
    _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
    result["end"][str(p)] = high
consumer.close()
print(json.dumps(result))
