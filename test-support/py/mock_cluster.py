"""A multi-broker Kafka for the integration tests: librdkafka's in-memory mock cluster
(`rdkafka_mock.h`), driven through ctypes from the librdkafka bundled in the confluent-kafka
wheel, with a line-oriented JSON control server for fault injection.

usage: mock_cluster.py [--brokers N] [--owner-pid PID] [--topic NAME:PARTITIONS[:REPLICATION]]...
                       [--control-port PORT] [--debug CONTEXTS]
                       [--initial-rebalance-delay-ms MS]
                       [--consumer-session-timeout-ms MS] [--consumer-heartbeat-interval-ms MS]

Once the brokers listen it prints ONE JSON line on stdout:
  {"bootstrap": "127.0.0.1:p1,...", "brokers": {"1": "127.0.0.1:p1", ...},
   "control": "127.0.0.1:PORT", "librdkafka": "2.16.0"}
Everything else (ours and librdkafka's logs) goes to stderr. Brokers are ids 1..N, all on
127.0.0.1. The process exits (destroying the cluster, so no broker keeps listening) on the
`stop` control request, SIGTERM/SIGINT, or when --owner-pid no longer exists (checked every
0.5 s). A SIGKILL takes the brokers with it: they are threads of this process.

Control protocol: TCP on 127.0.0.1, one JSON object per line in, one JSON line out, requests
handled one at a time: {"ok": true, ...} or {"ok": false, "error": "..."}. Operations ("op"):
  create_topic {topic, partitions, replication?}    replication defaults to min(3, brokers)
  set_leader {topic, partition, broker}              broker -1: no leader
  set_follower {topic, partition, broker}            the preferred read replica (KIP-392)
  broker_down {broker} / broker_up {broker}
  set_rtt {broker, ms}
  set_coordinator {key_type: "group"|"transaction", key, broker}
  push_errors {api_key, errors: [code...], broker?, rtts?: [ms...]}
      without broker: the next requests of api_key to any broker get these errors, in order;
      with broker: only that broker's, each delayed by rtts[i] ms (default 0).
  clear_errors {api_key}                             the cluster-wide stack only (see below)
  set_topic_error {topic, error}                     Metadata answers the topic with this
                                                     error code (0 clears it)
  start_tracking / stop_tracking / clear_requests
  requests -> {"requests": [{"broker", "api_key", "ts_us"}...],
               "counts": {"<broker>": {"<api_key>": n}}}
      ts_us is librdkafka's rd_clock(): monotonic microseconds, not wall time.
  set_apiversion {api_key, min, max}                 max -1 withdraws the API
  set_group_initial_rebalance_delay {ms}
  set_group_consumer_session_timeout {ms}            KIP-848 groups: group.consumer.session.timeout.ms
  set_group_consumer_heartbeat_interval {ms}         KIP-848 groups: group.consumer.heartbeat.interval.ms
      (both apply to a group from its members' next heartbeats; the mock's defaults: 30000 and 3000)
  stop                                               answers, then shuts down and exits 0

Source lines quoted here are of librdkafka master just after v2.15.0 (commit 4c3b017c3),
the source at hand; the wheel's 2.16.0 differs a little (it advertises Metadata v13, and its
own messages quote nearby lines, e.g. rd_kafka_mock_handle_SyncGroup:1939 for :1910 here).
The JoinGroup, SyncGroup and LeaveGroup misreads below were reproduced on the 2.16.0 binary
with hand-encoded requests after lifting their caps.

Harness decisions (not the mock's):
- Topics made by create_topic/--topic get their leaders spread deterministically: partition p
  is led by replica p % replication of the replica list the mock assigned (the list is
  computed as rdkafka_mock.c:738-760 does), so with replication = brokers = 3 partition p is
  led by broker p % 3 + 1. The mock itself picks a random replica (rdkafka_mock.c:762-764),
  which can put every leader of a small topic on one broker. Topics the mock auto-creates
  keep random leaders.
- Broker ids are checked against 1..N before calling the mock: coordinator_set accepts an
  unknown broker, and a later FindCoordinator then aborts the whole process on
  `rd_assert(mrkb)` (rdkafka_mock_handlers.c:1537).
- replication > brokers is refused (Kafka answers INVALID_REPLICATION_FACTOR; the mock would
  silently use fewer replicas, rdkafka_mock.c:724).

API version caps. The mock advertises its handler table in ApiVersions
(rdkafka_mock_handlers.c:5137-5176) but some handlers misparse flexible (KIP-482) or newer
versions they advertise. Clients pick the highest common version, so each is capped at the
highest version its handler reads correctly:
- JoinGroup (11) 0..5, advertised 0..6: v6 is flexible, but the handler reads the Protocols
  array count with rd_kafka_buf_read_i32 (rdkafka_mock_handlers.c:1602) instead of a compact
  (uvarint) count; the request is dropped ("JoinGroupRequest: ProtocolCnt 33976929 > max
  allowed 1000", :1604-1610) and the connection closed as a parse error
  (rdkafka_mock.c:1657-1663). Its v6 answer would be wrong too: the member count is written
  as an i32 (rdkafka_mock_cgrp.c:361).
- SyncGroup (14) 0..3, advertised 0..4: v4 is flexible, but the Assignments count is read
  with rd_kafka_buf_read_i32 (rdkafka_mock_handlers.c:1851); the loop (:1905-1920) then
  reads garbage: on 2.16.0 a protocol read underflow and a closed connection, and with other
  bytes it crashed the mock.
- LeaveGroup (13) 0..2, advertised 0..4: from v3 the request carries a Members array
  (MemberId, GroupInstanceId) but the handler reads one MemberId string
  (rdkafka_mock_handlers.c:1773), so a v3 leave of a real member is answered
  UNKNOWN_MEMBER_ID, and the answer is an ErrorCode alone (:1816) without the v3 Members.
- Heartbeat (12) 0..4, advertised 0..5: Kafka defines Heartbeat v0-v4 only; the table entry
  {0, 5, 4} (rdkafka_mock_handlers.c:5151) advertises a v5 that does not exist. v4 parses.
Audited and left as advertised (every field the handler reads matches Kafka's schema at every
advertised version): ApiVersions 0..2, Metadata 0..13, Produce 0..10, Fetch 0..16,
ListOffsets 0..7, FindCoordinator 0..3, OffsetCommit 0..9, OffsetFetch 0..6,
InitProducerId 0..4, ConsumerGroupHeartbeat 1..1.
Not implemented at all (no handler, not advertised; a request for them is logged as
"unsupported ...Request" (rdkafka_mock.c:1499) and its connection closed (:1657-1663)):
CreateTopics (19), DescribeGroups (15), SaslHandshake (17), ConsumerGroupDescribe (69).
Topics come from create_topic, or are auto-created with 4 partitions by a Metadata request
that allows it (v0-v3 always, v4+ when AllowAutoTopicCreation is true:
rdkafka_mock_handlers.c:1302, :1387, :1451-1456); with AllowAutoTopicCreation false an
unknown topic is UNKNOWN_TOPIC_OR_PART and stays unknown, as on Kafka.

Other mock behaviours a test must know (not worked around here; see mock_check.py wire):
- Metadata names controller 0, which is no broker (the cluster's controller_id is never set
  by rd_kafka_mock_cluster_new; rdkafka_mock_handlers.c:1355 writes it as is).
- Flexible Metadata answers (v9+) end with one byte too many: the handler writes the
  top-level tags (rdkafka_mock_handlers.c:1484) and send_response writes them again
  (rdkafka_mock.c:1286-1289). Decoders that ignore trailing bytes are unaffected.
- A down broker drops out of Metadata's broker list but stays the leader of its partitions
  and the coordinator of its groups: no failover (move them with set_leader and
  set_coordinator). Coordinators are picked by hashing the key over all brokers, up or down
  (rdkafka_mock.c:2158-2165).
- Error answers of JoinGroup carry null ProtocolName/Leader/MemberId strings
  (rdkafka_mock_handlers.c:1667-1669), FindCoordinator's a null Host (:1551), SyncGroup's a
  null Assignment (:1936): fields Kafka declares non-nullable at these versions, which
  strict decoders refuse.
- A follower's SyncGroup that arrives after the leader's has completed the round is answered
  REBALANCE_IN_PROGRESS with a null assignment (rdkafka_mock_cgrp.c:238-239), where Kafka
  would hand it its assignment. A first JoinGroup with an empty member id gets a member id
  at once, never MEMBER_ID_REQUIRED (rdkafka_mock_cgrp.c:576-579).
- OffsetCommit/OffsetFetch are answered by any broker, not only the coordinator
  (rdkafka_mock_handlers.c:892-895, :1042-1045).
- An error pushed for Metadata is consumed but not written into the answer: only its RTT,
  and -195 (__TRANSPORT: close the connection), take effect (rdkafka_mock_handlers.c:1312-1319).
- clear_errors empties the cluster-wide stack only, not per-broker ones
  (rdkafka_mock.c:2351-2362).
- set_leader/set_follower on an unknown topic auto-create it (rdkafka_mock.c:1103-1105).
"""
import argparse
import ctypes
import glob
import json
import os
import signal
import socket
import sys
import threading

import confluent_kafka

# (api_key, min, max, reason): applied right after the cluster is made. See the docstring.
API_VERSION_CAPS = [
    (11, 0, 5, "JoinGroup v6 Protocols count read as i32 (rdkafka_mock_handlers.c:1602)"),
    (14, 0, 3, "SyncGroup v4 Assignments count read as i32 (rdkafka_mock_handlers.c:1851)"),
    (13, 0, 2, "LeaveGroup v3+ Members array read as one MemberId (rdkafka_mock_handlers.c:1773)"),
    (12, 0, 4, "Heartbeat v5 does not exist in Kafka (rdkafka_mock_handlers.c:5151)"),
]

RD_KAFKA_PRODUCER = 0
RD_KAFKA_CONF_OK = 0


def log(message):
    print(f"mock_cluster: {message}", file=sys.stderr, flush=True)


def load_librdkafka():
    """The librdkafka the confluent-kafka wheel bundles (`confluent_kafka.libs/`, next to the
    package), with prototypes for every function this harness calls (rdkafka.h,
    rdkafka_mock.h)."""
    site = os.path.dirname(os.path.dirname(os.path.abspath(confluent_kafka.__file__)))
    candidates = sorted(glob.glob(os.path.join(site, "confluent_kafka.libs", "librdkafka-*.so*")))
    if not candidates:
        raise SystemExit(f"no librdkafka-*.so in {site}/confluent_kafka.libs")
    lib = ctypes.CDLL(candidates[0])
    c_void_p, c_char_p, c_int, c_size_t = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t
    i16, i32, i64 = ctypes.c_int16, ctypes.c_int32, ctypes.c_int64
    err_t = ctypes.c_int  # rd_kafka_resp_err_t, an enum
    prototypes = {
        # rdkafka.h
        "rd_kafka_version_str": ([], c_char_p),
        "rd_kafka_err2name": ([err_t], c_char_p),
        "rd_kafka_err2str": ([err_t], c_char_p),
        "rd_kafka_conf_new": ([], c_void_p),
        "rd_kafka_conf_set": ([c_void_p, c_char_p, c_char_p, c_char_p, c_size_t], c_int),
        "rd_kafka_conf_destroy": ([c_void_p], None),
        "rd_kafka_new": ([c_int, c_void_p, c_char_p, c_size_t], c_void_p),
        "rd_kafka_destroy": ([c_void_p], None),
        # rdkafka_mock.h
        "rd_kafka_mock_cluster_new": ([c_void_p, c_int], c_void_p),
        "rd_kafka_mock_cluster_destroy": ([c_void_p], None),
        "rd_kafka_mock_cluster_bootstraps": ([c_void_p], c_char_p),
        "rd_kafka_mock_topic_create": ([c_void_p, c_char_p, c_int, c_int], err_t),
        "rd_kafka_mock_partition_set_leader": ([c_void_p, c_char_p, i32, i32], err_t),
        "rd_kafka_mock_partition_set_follower": ([c_void_p, c_char_p, i32, i32], err_t),
        "rd_kafka_mock_broker_set_down": ([c_void_p, i32], err_t),
        "rd_kafka_mock_broker_set_up": ([c_void_p, i32], err_t),
        "rd_kafka_mock_broker_set_rtt": ([c_void_p, i32, c_int], err_t),
        "rd_kafka_mock_coordinator_set": ([c_void_p, c_char_p, c_char_p, i32], err_t),
        "rd_kafka_mock_push_request_errors_array": ([c_void_p, i16, c_size_t, ctypes.POINTER(err_t)], None),
        "rd_kafka_mock_topic_set_error": ([c_void_p, c_char_p, err_t], None),
        # Variadic: (mcluster, broker_id, ApiKey, cnt, ...) followed by cnt pairs of
        # (rd_kafka_resp_err_t err, int rtt_ms), read with va_arg(ap, rd_kafka_resp_err_t) and
        # va_arg(ap, int) (rdkafka_mock.c:2440-2445). Only the fixed arguments are declared;
        # the pairs are passed as explicit ctypes.c_int objects.
        "rd_kafka_mock_broker_push_request_error_rtts": ([c_void_p, i32, i16, c_size_t], err_t),
        "rd_kafka_mock_broker_error_stack_cnt": ([c_void_p, i32, i16, ctypes.POINTER(c_size_t)], err_t),
        "rd_kafka_mock_clear_request_errors": ([c_void_p, i16], None),
        "rd_kafka_mock_set_apiversion": ([c_void_p, i16, i16, i16], err_t),
        "rd_kafka_mock_group_initial_rebalance_delay_ms": ([c_void_p, i32], None),
        "rd_kafka_mock_set_group_consumer_session_timeout_ms": ([c_void_p, i32], None),
        "rd_kafka_mock_set_group_consumer_heartbeat_interval_ms": ([c_void_p, i32], None),
        "rd_kafka_mock_start_request_tracking": ([c_void_p], None),
        "rd_kafka_mock_stop_request_tracking": ([c_void_p], None),
        "rd_kafka_mock_get_requests": ([c_void_p, ctypes.POINTER(c_size_t)], ctypes.POINTER(c_void_p)),
        "rd_kafka_mock_request_id": ([c_void_p], i32),
        "rd_kafka_mock_request_api_key": ([c_void_p], i16),
        "rd_kafka_mock_request_timestamp": ([c_void_p], i64),
        "rd_kafka_mock_request_destroy_array": ([ctypes.POINTER(c_void_p), c_size_t], None),
        "rd_kafka_mock_clear_requests": ([c_void_p], None),
    }
    for name, (argtypes, restype) in prototypes.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = restype
    return lib


class RequestError(Exception):
    """A control request that cannot be done; its text goes back as {"ok": false}."""


class Cluster:
    def __init__(self, lib, brokers, debug):
        self.lib = lib
        self.broker_cnt = brokers
        self.lock = threading.Lock()
        errstr = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        # The handle only hosts the mock cluster: it has no bootstrap servers and connects
        # nowhere. Its own librdkafka warns about that once (CONFWARN) on stderr.
        settings = {"client.id": "scalable-shop-mock-cluster"}
        if debug:
            settings["debug"] = debug
        for key, value in settings.items():
            if lib.rd_kafka_conf_set(conf, key.encode(), value.encode(), errstr, len(errstr)) != RD_KAFKA_CONF_OK:
                lib.rd_kafka_conf_destroy(conf)
                raise SystemExit(f"{key}={value}: {errstr.value.decode()}")
        # rd_kafka_new takes ownership of conf on success only.
        self.rk = lib.rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, len(errstr))
        if not self.rk:
            lib.rd_kafka_conf_destroy(conf)
            raise SystemExit(f"rd_kafka_new: {errstr.value.decode()}")
        self.mcluster = lib.rd_kafka_mock_cluster_new(self.rk, brokers)
        if not self.mcluster:
            lib.rd_kafka_destroy(self.rk)
            raise SystemExit("rd_kafka_mock_cluster_new failed")
        # Brokers are created with ids 1..N and appended in that order (rdkafka_mock.c:3314,
        # :2085); the bootstrap list walks them in list order (:3383-3393).
        self.bootstrap = lib.rd_kafka_mock_cluster_bootstraps(self.mcluster).decode()
        addresses = self.bootstrap.split(",")
        if len(addresses) != brokers:
            raise SystemExit(f"expected {brokers} brokers, bootstrap list is {self.bootstrap}")
        self.brokers = {i + 1: address for i, address in enumerate(addresses)}
        for address in addresses:
            if not address.startswith("127.0.0.1:"):
                raise SystemExit(f"a mock broker is not on loopback: {address}")
        for api_key, lo, hi, reason in API_VERSION_CAPS:
            self.check(lib.rd_kafka_mock_set_apiversion(self.mcluster, api_key, lo, hi), f"cap api {api_key}")
            log(f"api {api_key} capped at v{lo}..v{hi}: {reason}")
        self.destroyed = False

    def error_text(self, err):
        return f"{self.lib.rd_kafka_err2name(err).decode()}: {self.lib.rd_kafka_err2str(err).decode()}"

    def check(self, err, what):
        if err:
            raise RequestError(f"{what}: {self.error_text(err)}")

    def broker(self, value, allow_none=False):
        if not isinstance(value, int) or isinstance(value, bool):
            raise RequestError(f"broker must be an integer, not {value!r}")
        if allow_none and value == -1:
            return value
        if value not in self.brokers:
            raise RequestError(f"no broker {value}: brokers are 1..{self.broker_cnt}")
        return value

    # -- topics and partitions --

    def create_topic(self, topic, partitions, replication=None):
        if replication is None:
            replication = min(3, self.broker_cnt)
        if not isinstance(topic, str) or not topic:
            raise RequestError("topic must be a non-empty string")
        if not isinstance(partitions, int) or partitions < 1:
            raise RequestError(f"partitions must be >= 1, not {partitions!r}")
        if not isinstance(replication, int) or not 1 <= replication <= self.broker_cnt:
            raise RequestError(
                f"INVALID_REPLICATION_FACTOR: replication {replication!r} with {self.broker_cnt} brokers"
            )
        self.check(
            self.lib.rd_kafka_mock_topic_create(self.mcluster, topic.encode(), partitions, replication),
            f"create topic {topic}",
        )
        leaders = [self.spread_leader(p, replication) for p in range(partitions)]
        for partition, leader in enumerate(leaders):
            self.set_leader(topic, partition, leader)
        return {"leaders": leaders}

    def spread_leader(self, partition, replication):
        """The replica list the mock assigns partition `partition` (rdkafka_mock.c:738-760:
        `replication` consecutive brokers, wrapping, from index (partition * replication) %
        brokers; every broker is in Metadata here), and the one of them that leads it."""
        first = (partition * replication) % self.broker_cnt
        replicas = [(first + i) % self.broker_cnt + 1 for i in range(replication)]
        return replicas[partition % replication]

    def set_leader(self, topic, partition, broker):
        broker = self.broker(broker, allow_none=True)
        self.check(
            self.lib.rd_kafka_mock_partition_set_leader(self.mcluster, topic.encode(), partition, broker),
            f"set leader of {topic} [{partition}]",
        )

    def set_follower(self, topic, partition, broker):
        broker = self.broker(broker, allow_none=True)
        self.check(
            self.lib.rd_kafka_mock_partition_set_follower(self.mcluster, topic.encode(), partition, broker),
            f"set follower of {topic} [{partition}]",
        )

    # -- brokers --

    def broker_down(self, broker):
        self.check(self.lib.rd_kafka_mock_broker_set_down(self.mcluster, self.broker(broker)), "broker down")

    def broker_up(self, broker):
        self.check(self.lib.rd_kafka_mock_broker_set_up(self.mcluster, self.broker(broker)), "broker up")

    def set_rtt(self, broker, ms):
        if not isinstance(ms, int) or ms < 0:
            raise RequestError(f"ms must be a non-negative integer, not {ms!r}")
        self.check(self.lib.rd_kafka_mock_broker_set_rtt(self.mcluster, self.broker(broker), ms), "set rtt")

    def set_coordinator(self, key_type, key, broker):
        if key_type not in ("group", "transaction"):
            raise RequestError(f'key_type must be "group" or "transaction", not {key_type!r}')
        if not isinstance(key, str) or not key:
            raise RequestError("key must be a non-empty string")
        self.check(
            self.lib.rd_kafka_mock_coordinator_set(
                self.mcluster, key_type.encode(), key.encode(), self.broker(broker)
            ),
            f"set {key_type} coordinator of {key}",
        )

    # -- errors --

    def push_errors(self, api_key, errors, broker=None, rtts=None):
        if not isinstance(errors, list) or not all(isinstance(e, int) for e in errors):
            raise RequestError("errors must be a list of error codes")
        if broker is None:
            if rtts:
                raise RequestError("rtts need a broker (the cluster-wide stack has no delays)")
            array = (ctypes.c_int * len(errors))(*errors)
            self.lib.rd_kafka_mock_push_request_errors_array(self.mcluster, api_key, len(errors), array)
            return {}
        rtts = rtts if rtts is not None else [0] * len(errors)
        if len(rtts) != len(errors) or not all(isinstance(r, int) and r >= 0 for r in rtts):
            raise RequestError("rtts must give one non-negative delay (ms) per error")
        pairs = []
        for err, rtt in zip(errors, rtts):
            pairs += [ctypes.c_int(err), ctypes.c_int(rtt)]
        broker = self.broker(broker)
        self.check(
            self.lib.rd_kafka_mock_broker_push_request_error_rtts(
                self.mcluster, broker, api_key, len(errors), *pairs
            ),
            f"push errors on broker {broker}",
        )
        # Read the stack depth back: proof that the variadic call passed what we meant.
        depth = ctypes.c_size_t(0)
        self.check(
            self.lib.rd_kafka_mock_broker_error_stack_cnt(self.mcluster, broker, api_key, ctypes.byref(depth)),
            "error stack depth",
        )
        return {"stack": depth.value}

    def clear_errors(self, api_key):
        self.lib.rd_kafka_mock_clear_request_errors(self.mcluster, api_key)

    # -- request tracking --

    def requests(self):
        count = ctypes.c_size_t(0)
        array = self.lib.rd_kafka_mock_get_requests(self.mcluster, ctypes.byref(count))
        requests, counts = [], {}
        try:
            for i in range(count.value):
                request = array[i]
                broker = self.lib.rd_kafka_mock_request_id(request)
                api_key = self.lib.rd_kafka_mock_request_api_key(request)
                ts_us = self.lib.rd_kafka_mock_request_timestamp(request)
                requests.append({"broker": broker, "api_key": api_key, "ts_us": ts_us})
                per_broker = counts.setdefault(str(broker), {})
                per_broker[str(api_key)] = per_broker.get(str(api_key), 0) + 1
        finally:
            if array:
                self.lib.rd_kafka_mock_request_destroy_array(array, count.value)
        return {"requests": requests, "counts": counts}

    def set_apiversion(self, api_key, min, max):  # noqa: A002 - the protocol's names
        self.check(self.lib.rd_kafka_mock_set_apiversion(self.mcluster, api_key, min, max), "set api version")

    def destroy(self):
        with self.lock:
            if self.destroyed:
                return
            self.destroyed = True
            log("destroying the mock cluster")
            self.lib.rd_kafka_mock_cluster_destroy(self.mcluster)
            self.lib.rd_kafka_destroy(self.rk)
            log("destroyed")

    # -- the control protocol --

    def handle(self, request):
        """One control request (a dict) -> the answer (a dict without "ok")."""
        op = request.get("op")

        def field(name, kind=int, default=...):
            if name not in request:
                if default is ...:
                    raise RequestError(f"{op}: missing field {name!r}")
                return default
            value = request[name]
            if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
                raise RequestError(f"{op}: {name} must be an integer, not {value!r}")
            if kind is str and not isinstance(value, str):
                raise RequestError(f"{op}: {name} must be a string, not {value!r}")
            return value

        def api_key():
            key = field("api_key")
            if not 0 <= key < 32768:
                raise RequestError(f"{op}: api_key {key} out of range")
            return key

        with self.lock:
            if self.destroyed:
                raise RequestError("the cluster is shutting down")
            if op == "create_topic":
                return self.create_topic(
                    field("topic", str), field("partitions"), field("replication", int, None)
                )
            if op == "set_leader":
                self.set_leader(field("topic", str), field("partition"), field("broker"))
            elif op == "set_follower":
                self.set_follower(field("topic", str), field("partition"), field("broker"))
            elif op == "broker_down":
                self.broker_down(field("broker"))
            elif op == "broker_up":
                self.broker_up(field("broker"))
            elif op == "set_rtt":
                self.set_rtt(field("broker"), field("ms"))
            elif op == "set_coordinator":
                self.set_coordinator(field("key_type", str), field("key", str), field("broker"))
            elif op == "push_errors":
                return self.push_errors(
                    api_key(), field("errors", list), field("broker", int, None), field("rtts", list, None)
                )
            elif op == "clear_errors":
                self.clear_errors(api_key())
            elif op == "set_topic_error":
                self.lib.rd_kafka_mock_topic_set_error(
                    self.mcluster, field("topic", str).encode(), field("error", int)
                )
            elif op == "start_tracking":
                self.lib.rd_kafka_mock_start_request_tracking(self.mcluster)
            elif op == "stop_tracking":
                self.lib.rd_kafka_mock_stop_request_tracking(self.mcluster)
            elif op == "clear_requests":
                self.lib.rd_kafka_mock_clear_requests(self.mcluster)
            elif op == "requests":
                return self.requests()
            elif op == "set_apiversion":
                self.set_apiversion(api_key(), field("min"), field("max"))
            elif op == "set_group_initial_rebalance_delay":
                ms = field("ms")
                if ms < 0:
                    raise RequestError(f"{op}: ms must be >= 0")
                self.lib.rd_kafka_mock_group_initial_rebalance_delay_ms(self.mcluster, ms)
            elif op in ("set_group_consumer_session_timeout", "set_group_consumer_heartbeat_interval"):
                ms = field("ms")
                if ms <= 0:
                    raise RequestError(f"{op}: ms must be > 0")
                setter = {
                    "set_group_consumer_session_timeout": self.lib.rd_kafka_mock_set_group_consumer_session_timeout_ms,
                    "set_group_consumer_heartbeat_interval": self.lib.rd_kafka_mock_set_group_consumer_heartbeat_interval_ms,
                }[op]
                setter(self.mcluster, ms)
            elif op == "stop":
                pass  # serve_connection sets `stop` once this answer is sent
            else:
                raise RequestError(f"unknown op {op!r}")
            return {}


def serve_control(server, cluster, stop):
    """Accepts control connections; each gets a thread, and Cluster.lock makes the requests
    of all of them take turns."""
    while not stop.is_set():
        try:
            connection, _ = server.accept()
        except socket.timeout:
            continue
        except OSError:
            return  # closed on shutdown
        threading.Thread(target=serve_connection, args=(connection, cluster, stop), daemon=True).start()


def serve_connection(connection, cluster, stop):
    with connection:
        reader = connection.makefile("r", encoding="utf-8", newline="\n")
        for line in reader:
            line = line.strip()
            if not line:
                continue
            request = None
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise RequestError("a request is a JSON object")
                answer = {"ok": True, **cluster.handle(request)}
            except RequestError as e:
                answer = {"ok": False, "error": str(e)}
            except (ValueError, TypeError) as e:
                answer = {"ok": False, "error": f"bad request {line!r}: {e}"}
            except Exception as e:  # noqa: BLE001 - a harness bug must not kill the cluster
                log(f"request {line!r} failed: {e!r}")
                answer = {"ok": False, "error": f"harness error: {e!r}"}
            try:
                connection.sendall((json.dumps(answer) + "\n").encode())
            except OSError:
                return
            finally:
                # After the answer, so the process cannot exit before sending it.
                if answer["ok"] and isinstance(request, dict) and request.get("op") == "stop":
                    stop.set()
            if stop.is_set():
                return


def owner_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A dead owner not yet reaped by its parent is a zombie: gone all the same.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def parse_topic(spec):
    parts = spec.rsplit(":", 2) if spec.count(":") >= 2 else spec.rsplit(":", 1)
    try:
        if len(parts) == 3:
            return parts[0], int(parts[1]), int(parts[2])
        if len(parts) == 2:
            return parts[0], int(parts[1]), None
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{spec!r}: expected NAME:PARTITIONS[:REPLICATION]")


def main():
    parser = argparse.ArgumentParser(description="librdkafka's mock cluster with a control server")
    parser.add_argument("--brokers", type=int, default=3)
    parser.add_argument("--owner-pid", type=int, help="exit when this process no longer exists")
    parser.add_argument("--topic", type=parse_topic, action="append", default=[],
                        help="NAME:PARTITIONS[:REPLICATION], created at start (repeatable)")
    parser.add_argument("--control-port", type=int, default=0, help="0: any free loopback port")
    parser.add_argument("--debug", default="", help="librdkafka debug contexts, e.g. mock,protocol")
    parser.add_argument("--initial-rebalance-delay-ms", type=int,
                        help="group.initial.rebalance.delay.ms of the mock (its default: 3000)")
    parser.add_argument("--consumer-session-timeout-ms", type=int,
                        help="group.consumer.session.timeout.ms of KIP-848 groups (mock default: 30000)")
    parser.add_argument("--consumer-heartbeat-interval-ms", type=int,
                        help="group.consumer.heartbeat.interval.ms of KIP-848 groups (mock default: 3000)")
    args = parser.parse_args()
    if args.brokers < 1:
        parser.error("--brokers must be >= 1")

    stop = threading.Event()
    # Signals only set the flag; the main loop below does the shutdown.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    lib = load_librdkafka()
    version = lib.rd_kafka_version_str().decode()
    cluster = Cluster(lib, args.brokers, args.debug)
    try:
        if args.initial_rebalance_delay_ms is not None:
            lib.rd_kafka_mock_group_initial_rebalance_delay_ms(cluster.mcluster, args.initial_rebalance_delay_ms)
        if args.consumer_session_timeout_ms is not None:
            lib.rd_kafka_mock_set_group_consumer_session_timeout_ms(cluster.mcluster, args.consumer_session_timeout_ms)
        if args.consumer_heartbeat_interval_ms is not None:
            lib.rd_kafka_mock_set_group_consumer_heartbeat_interval_ms(cluster.mcluster, args.consumer_heartbeat_interval_ms)
        for name, partitions, replication in args.topic:
            cluster.create_topic(name, partitions, replication)
            log(f"created topic {name} with {partitions} partitions")

        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", args.control_port))
        server.listen(16)
        server.settimeout(0.5)
        control = "127.0.0.1:%d" % server.getsockname()[1]
        threading.Thread(target=serve_control, args=(server, cluster, stop), daemon=True).start()

        ready = {
            "bootstrap": cluster.bootstrap,
            "brokers": {str(i): address for i, address in cluster.brokers.items()},
            "control": control,
            "librdkafka": version,
        }
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        log(f"librdkafka {version}: {args.brokers} brokers at {cluster.bootstrap}, control at {control}")

        while not stop.wait(0.5):
            if args.owner_pid is not None and not owner_alive(args.owner_pid):
                log(f"owner {args.owner_pid} is gone")
                break
        server.close()
    except RequestError as e:
        log(str(e))
        return 1
    finally:
        # Should destroying ever hang, the brokers must still go: they die with the process.
        guard = threading.Timer(10, os._exit, args=(3,))
        guard.daemon = True
        guard.start()
        cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
