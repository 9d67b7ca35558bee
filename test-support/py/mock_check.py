"""Independent checks of the mock cluster harness (mock_cluster.py): what a client sees.
Prints one JSON object.

usage: mock_check.py metadata BOOTSTRAP
         confluent-kafka's view: {"brokers": {"<id>": "host:port"}, "controller_id": n,
         "topics": {name: {"error": name|null, "leaders": {"<partition>": broker}}}}
       mock_check.py connect HOST:PORT
         {"connected": bool, "error": str|null}: a plain TCP connect
       mock_check.py produce BOOTSTRAP TOPIC PARTITION...
         one record to each partition with a confluent-kafka producer that does not retry:
         {"results": [{"partition": p, "error": name|null, "offset": n}]}
       mock_check.py versions HOST:PORT
         the ApiVersions v0 answer: {"error": code, "versions": {"<key>": [min, max]}}
       mock_check.py coordinator HOST:PORT GROUP
         FindCoordinator v3 (hand-encoded) for a group, asked of one broker:
         {"error": code, "node_id": n, "address": "host:port"}
       mock_check.py wire HOST:PORT
         hand-encoded requests to one broker, decoded field by field (trailing_bytes: what the
         decoder did not account for):
         {"api_versions": {"<key>": [min, max]}, "metadata_v12": {...}, "metadata_v13": {...},
          "no_auto_create": {...}, "auto_create": {...}, "create_topics_answered": bool}
"""
import json
import socket
import struct
import sys
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient


def metadata(bootstrap):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(timeout=10)
    return {
        "brokers": {str(b.id): f"{b.host}:{b.port}" for b in md.brokers.values()},
        "controller_id": md.controller_id,
        "topics": {
            name: {
                "error": t.error.name() if t.error else None,
                "leaders": {str(p.id): p.leader for p in t.partitions.values()},
            }
            for name, t in md.topics.items()
        },
    }


def connect(address):
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        return {"connected": True, "error": None}
    except OSError as e:
        return {"connected": False, "error": f"{type(e).__name__}: {e}"}


def produce(bootstrap, topic, partitions):
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": False,
        "retries": 0,
        "acks": "all",
        "message.timeout.ms": 10000,
    })
    results = []

    def report(err, msg):
        results.append({
            "partition": msg.partition(),
            "error": err.name() if err else None,
            "offset": msg.offset() if not err else None,
        })

    for partition in partitions:
        producer.produce(topic, value=b"mock-check", partition=int(partition), on_delivery=report)
    remaining = producer.flush(15)
    if remaining:
        raise SystemExit(f"{remaining} records undelivered after 15 s")
    return {"results": sorted(results, key=lambda r: r["partition"])}


# -- a minimal Kafka wire client: just what `wire` needs --

class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError(f"response ends at {len(self.data)}, wanted {n} bytes at {self.pos}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def i8(self):
        return struct.unpack(">b", self.take(1))[0]

    def i16(self):
        return struct.unpack(">h", self.take(2))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def uvarint(self):
        shift = value = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def compact_string(self):
        n = self.uvarint() - 1
        return None if n < 0 else self.take(n).decode()

    def compact_array(self, item):
        n = self.uvarint() - 1
        return None if n < 0 else [item() for _ in range(n)]

    def uuid(self):
        return str(uuid.UUID(bytes=self.take(16)))

    def tags(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())

    def end(self):
        """How many bytes the decoder did not account for."""
        return len(self.data) - self.pos


def uvarint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def compact_string(value):
    if value is None:
        return uvarint(0)
    raw = value.encode()
    return uvarint(len(raw) + 1) + raw


class Connection:
    def __init__(self, address):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.correlation = 0

    def call(self, api_key, version, body, flexible):
        """Sends one request; returns the response body after its header, or None when the
        broker closed the connection instead of answering."""
        self.correlation += 1
        client_id = b"mock-check"
        header = struct.pack(">hhih", api_key, version, self.correlation, len(client_id)) + client_id
        if flexible:
            header += uvarint(0)
        frame = header + body
        self.sock.sendall(struct.pack(">i", len(frame)) + frame)
        size = self.recv_exactly(4)
        if size is None:
            return None
        data = self.recv_exactly(struct.unpack(">i", size)[0])
        reader = Reader(data)
        if reader.i32() != self.correlation:
            raise ValueError("correlation id mismatch")
        # ApiVersions answers with header v0 whatever its version (KIP-511).
        if flexible and api_key != 18:
            reader.tags()
        return reader

    def recv_exactly(self, n):
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            data += chunk
        return data


def api_versions(connection):
    reader = connection.call(18, 0, b"", flexible=False)
    error = reader.i16()
    versions = {}
    for _ in range(reader.i32()):
        key, lo, hi = reader.i16(), reader.i16(), reader.i16()
        versions[str(key)] = [lo, hi]
    return {"error": error, "versions": versions, "trailing_bytes": reader.end()}


def metadata_request(connection, version, topics, allow_auto_create):
    """Metadata v12/v13 (flexible; v13 adds a top-level ErrorCode to the response)."""
    body = b""
    if topics is None:
        body += uvarint(0)
    else:
        body += uvarint(len(topics) + 1)
        for topic in topics:
            body += b"\0" * 16 + compact_string(topic) + uvarint(0)
    body += struct.pack(">??", allow_auto_create, False) + uvarint(0)
    r = connection.call(3, version, body, flexible=True)
    r.i32()  # throttle

    def broker():
        out = {"id": r.i32(), "host": r.compact_string(), "port": r.i32(), "rack": r.compact_string()}
        r.tags()
        return out

    def partition():
        out = {"error": r.i16(), "partition": r.i32(), "leader": r.i32(), "leader_epoch": r.i32()}
        out["replicas"] = r.compact_array(r.i32)
        out["isr"] = r.compact_array(r.i32)
        r.compact_array(r.i32)  # offline replicas
        r.tags()
        return out

    def topic():
        out = {"error": r.i16(), "name": r.compact_string(), "id": r.uuid(), "internal": r.i8() != 0}
        out["partitions"] = r.compact_array(partition)
        r.i32()  # topic authorized operations
        r.tags()
        return out

    result = {"brokers": r.compact_array(broker), "cluster_id": r.compact_string(), "controller_id": r.i32()}
    result["topics"] = r.compact_array(topic)
    if version >= 13:
        result["error"] = r.i16()
    r.tags()
    result["trailing_bytes"] = r.end()
    return result


def create_topics_answered(address):
    """CreateTopics v5 for one topic: True if the broker answers at all."""
    connection = Connection(address)
    body = uvarint(2) + compact_string("mock-check-created") + struct.pack(">ih", 1, 1)
    body += uvarint(1) + uvarint(1) + uvarint(0)  # no assignments, no configs, tags
    body += struct.pack(">i?", 10000, False) + uvarint(0)
    return connection.call(19, 5, body, flexible=True) is not None


def coordinator(address, group):
    connection = Connection(address)
    # Key, KeyType 0 (group), tags.
    r = connection.call(10, 3, compact_string(group) + b"\0" + uvarint(0), flexible=True)
    r.i32()  # throttle
    error = r.i16()
    r.compact_string()  # error message
    node_id, host, port = r.i32(), r.compact_string(), r.i32()
    r.tags()
    return {"error": error, "node_id": node_id, "address": f"{host}:{port}", "trailing_bytes": r.end()}


def summary(md):
    return {
        "controller_id": md["controller_id"],
        "brokers": sorted(b["id"] for b in md["brokers"]),
        "topics": {
            t["name"]: {"error": t["error"], "partitions": len(t["partitions"] or [])} for t in md["topics"]
        },
        "trailing_bytes": md["trailing_bytes"],
        **({"error": md["error"]} if "error" in md else {}),
    }


def wire(address):
    connection = Connection(address)
    unknown = f"mock-check-{uuid.uuid4().hex[:8]}"
    return {
        "api_versions": api_versions(connection),
        "metadata_v12": summary(metadata_request(connection, 12, None, False)),
        "metadata_v13": summary(metadata_request(connection, 13, None, False)),
        "no_auto_create": {
            "first": summary(metadata_request(connection, 12, [unknown], False))["topics"],
            "again": summary(metadata_request(connection, 12, [unknown], False))["topics"],
        },
        "auto_create": summary(metadata_request(connection, 12, [unknown + "-auto"], True))["topics"],
        "create_topics_answered": create_topics_answered(address),
    }


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "metadata":
        result = metadata(args[0])
    elif command == "connect":
        result = connect(args[0])
    elif command == "produce":
        result = produce(args[0], args[1], args[2:])
    elif command == "versions":
        result = api_versions(Connection(args[0]))
    elif command == "coordinator":
        result = coordinator(args[0], args[1])
    elif command == "wire":
        result = wire(args[0])
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
