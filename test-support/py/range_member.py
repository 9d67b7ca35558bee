"""A confluent-kafka consumer in GROUP on the range assignor. Prints a JSON line with its
partitions each time its assignment changes, and leaves the group when stdin closes.

usage: range_member.py BOOTSTRAP GROUP TOPIC
"""
import json
import sys
import threading

from confluent_kafka import Consumer

bootstrap, group, topic = sys.argv[1:4]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()


def report(_consumer, partitions):
    print(json.dumps({"assigned": sorted(p.partition for p in partitions)}), flush=True)


def revoked(_consumer, _partitions):
    print(json.dumps({"assigned": []}), flush=True)


consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "partition.assignment.strategy": "range",
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 300,
    "enable.auto.commit": False,
})
consumer.subscribe([topic], on_assign=report, on_revoke=revoked)
while not stop.is_set():
    consumer.poll(0.1)
consumer.close()
