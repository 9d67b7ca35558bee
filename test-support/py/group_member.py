"""A confluent-kafka consumer in GROUP with partition.assignment.strategy STRATEGY (range,
cooperative-sticky, ...), or, with STRATEGY `consumer`, on the consumer group protocol
(KIP-848, group.protocol=consumer: the coordinator assigns, always incrementally). Prints a JSON line with all the partitions it owns each time that
changes (under cooperative-sticky librdkafka reports increments; this keeps the total), and
leaves the group when stdin closes.

usage: group_member.py STRATEGY BOOTSTRAP GROUP TOPIC
"""
import json
import sys
import threading

from confluent_kafka import Consumer

strategy, bootstrap, group, topic = sys.argv[1:5]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
owned = set()


def report(event):
    print(json.dumps({"event": event, "assigned": sorted(owned)}), flush=True)


incremental = strategy in ("cooperative-sticky", "consumer")


def assigned(consumer, partitions):
    if incremental:
        consumer.incremental_assign(partitions)
    owned.update(p.partition for p in partitions)
    report("assigned")


def revoked(consumer, partitions):
    if incremental:
        consumer.incremental_unassign(partitions)
    owned.difference_update(p.partition for p in partitions)
    report("revoked")


def lost(consumer, partitions):
    owned.clear()
    report("lost")


settings = {
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "enable.auto.commit": False,
}
if strategy == "consumer":
    # The coordinator owns the assignor, session and heartbeat settings under this protocol;
    # librdkafka refuses them here.
    settings["group.protocol"] = "consumer"
else:
    settings.update({
        "partition.assignment.strategy": strategy,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 300,
    })
consumer = Consumer(settings)
consumer.subscribe([topic], on_assign=assigned, on_revoke=revoked, on_lost=lost)
while not stop.is_set():
    consumer.poll(0.1)
consumer.close()
