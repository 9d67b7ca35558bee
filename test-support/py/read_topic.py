"""Reads every record of a topic with confluent-kafka (librdkafka), an independent client,
and prints them as JSON: [{partition, offset, key, value, headers, cloudevent}], where
`cloudevent` is the record as the CloudEvents SDK reads it in binary content mode (its
attributes and data), or {"error": why} when it is not one.

usage: read_topic.py BOOTSTRAP TOPIC EXPECTED_COUNT [TIMEOUT_SECONDS]
Stops once EXPECTED_COUNT records were read and no more arrive for a second, or at the timeout.
"""
import json
import os
import sys
import time

from cloudevents.v1.kafka import KafkaMessage, from_binary
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def extra_config():
    """librdkafka settings from KAFKA_CLIENT_CONFIG (JSON), e.g. SASL and TLS for a secured broker."""
    return json.loads(os.environ.get("KAFKA_CLIENT_CONFIG", "{}"))


bootstrap, topic, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.time() + (float(sys.argv[4]) if len(sys.argv) > 4 else 30.0)

consumer = Consumer({**extra_config(), "bootstrap.servers": bootstrap, "group.id": "read-topic-check",
                     "enable.auto.commit": False})
metadata = consumer.list_topics(topic, timeout=10)
partitions = sorted(metadata.topics[topic].partitions)
consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])



def decode(value):
    """JSON values as JSON; anything else (a poison record) as text."""
    try:
        return json.loads(value)
    except ValueError:
        return value.decode(errors="replace")


def cloudevent(message):
    """The record as the CloudEvents SDK's Kafka binding reads it, or why it cannot."""
    try:
        event = from_binary(KafkaMessage(headers=dict(message.headers() or []),
                                         key=message.key(), value=message.value()))
    except Exception as error:  # the SDK raises several types; any means "not a CloudEvent"
        return {"error": f"{type(error).__name__}: {error}"}
    attributes = {name: value if isinstance(value, str) else str(value)
                  for name, value in event.get_attributes().items()}
    return {**attributes, "data": event.get_data()}


records, quiet_since = [], None
while time.time() < deadline:
    message = consumer.poll(0.2)
    if message is None or message.error():
        if len(records) >= expected:
            quiet_since = quiet_since or time.time()
            if time.time() - quiet_since > 1.0:
                break
        continue
    quiet_since = None
    records.append({
        "partition": message.partition(),
        "offset": message.offset(),
        "key": message.key().decode() if message.key() is not None else None,
        "value": decode(message.value()),
        "headers": {k: v.decode() for k, v in (message.headers() or [])},
        "cloudevent": cloudevent(message),
    })
consumer.close()
print(json.dumps({"partitions": len(partitions), "records": records}))
