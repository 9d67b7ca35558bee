"""Gateway benchmark: the write path beside the same binary's HTTP stack, on one broker and on
a three-broker cluster, in one run.

usage: bench_gateway.py [--duration SECONDS] [--connections 16,64,256] [--brokers mock,nisshi]
                        [--gateway [LABEL=]PATH ...] [--no-broker-cpu]

Give `--gateway` more than once (e.g. `--gateway before=/tmp/gw-old --gateway after=target/
release/gateway`) to compare binaries side by side in one run: each concurrency is measured for
every binary in turn, on the same servers, so the load of the machine falls on all alike.

For nisshi (one broker, sqlite) and librdkafka's mock cluster (three brokers, in memory), a
release gateway each, and for every concurrency: accepted purchases/s and p50/p99 of
POST /api/purchases, the same of GET /healthz, the gateway's CPU per purchase and per /healthz
request (utime+stime from /proc), and records per Produce request (on the mock from its own
request tracking, on nisshi from the gateway's histogram). Then the broker's CPU per 10,000
records on nisshi with and without the CloudEvents headers, written by an independent client
(confluent-kafka), so a user sees what the headers cost on a broker that stores them apart.
Every figure printed comes from this run; the machine's load average is printed beside them.
Run by `make bench-gateway` (which builds the gateway and installs wrk and the servers).
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "bench-purchases"
PARTITIONS = 12
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def wait_ready(url, log):
    for _ in range(300):
        try:
            get(f"{url}/readyz")
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"the gateway at {url} never became ready; its log:\n{Path(log).read_text()}")


def metric_sum_count(url, name):
    text = get(f"{url}/metrics")
    values = dict(re.findall(rf"^{name}_(sum|count) (\S+)$", text, re.M))
    return float(values.get("sum", 0)), float(values.get("count", 0))


def ms(value):
    found = re.match(r"([\d.]+)(us|ms|s|m)", value)
    if not found:
        raise ValueError(f"not a wrk latency: {value!r}")
    number, unit = found.groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(url, connections, duration, script=None):
    """(ok answers/s, p50 ms, p99 ms, ok answers, non-2xx answers) of one wrk run."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script:
        command += ["-s", str(script)]
    out = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    seconds = float(re.search(r"requests in ([\d.]+)s", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(bad.group(1)) if bad else 0
    try:
        p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
        p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    except (AttributeError, ValueError) as e:
        sys.exit(f"cannot read wrk's output ({e}):\n{out}")
    return (total - bad) / seconds, p50, p99, total - bad, bad


class Mock:
    """The mock cluster's control connection (test-support/py/mock_cluster.py)."""

    def __init__(self, control):
        host, port = control.split(":")
        self.connection = socket.create_connection((host, int(port)))
        self.lines = self.connection.makefile("r")

    def ask(self, **request):
        self.connection.sendall((json.dumps(request) + "\n").encode())
        answer = json.loads(self.lines.readline())
        if not answer.get("ok"):
            sys.exit(f"mock cluster: {answer}")
        return answer

    def produce_requests(self):
        counts = self.ask(op="requests")["counts"]
        return sum(per_api.get("0", 0) for per_api in counts.values())


def start_gateway(binary, work, name, brokers, mongo):
    port = free_port()
    log = work / f"gateway-{name}.log"
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}  # the default log level
    process = subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{port}", "--kafka-brokers", brokers,
         "--kafka-topic", TOPIC, "--kafka-topic-partitions", str(PARTITIONS),
         "--mongo-uri", mongo, "--auth-disabled"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, log)
    return process, url


def measure(process, url, connections, duration, mock):
    """The figures of one broker at one concurrency."""
    script = ROOT / "bench/post-purchase.lua"
    before = cpu_seconds(process.pid)
    health = wrk(f"{url}/healthz", connections, duration)
    health_cpu = cpu_seconds(process.pid) - before
    batch_before = metric_sum_count(url, "gateway_kafka_produce_batch_records")
    if mock:
        mock.ask(op="clear_requests")
    before = cpu_seconds(process.pid)
    buy = wrk(f"{url}/api/purchases", connections, duration, script)
    buy_cpu = cpu_seconds(process.pid) - before
    batch_after = metric_sum_count(url, "gateway_kafka_produce_batch_records")
    records = batch_after[0] - batch_before[0]
    requests = mock.produce_requests() if mock else batch_after[1] - batch_before[1]
    return {
        "healthz": health, "healthz_cpu_us": 1e6 * health_cpu / max(health[3], 1),
        "buy": buy, "buy_cpu_us": 1e6 * buy_cpu / max(buy[3], 1),
        "records_per_request": records / requests if requests else float("nan"),
    }


def broker_cpu_per_10k(kafka, nisshi_pid, with_headers, rounds=3):
    """nisshi's CPU seconds per 10,000 records a confluent-kafka producer writes (acks=all),
    the fewest of `rounds` runs."""
    from confluent_kafka import Producer

    value = json.dumps({"schemaVersion": 1, "eventId": "0192f0c4-7d2e-7000-8000-000000000000",
                        "username": "bench user", "userId": "user-1", "price": "19.99",
                        "timestamp": "2026-12-05T12:00:00.000Z"}).encode()
    base = [("content-type", b"application/json"), ("schema-version", b"1")]
    cloudevents = [("ce_specversion", b"1.0"), ("ce_id", b"0192f0c4-7d2e-7000-8000-000000000000"),
                   ("ce_source", b"/scalable-shop/gateway"), ("ce_type", b"scalable-shop.purchase.created.v1"),
                   ("ce_time", b"2026-12-05T12:00:00.000Z")]
    headers = base + cloudevents if with_headers else base
    best = None
    for _ in range(rounds):
        producer = Producer({"bootstrap.servers": kafka, "acks": "all", "linger.ms": 5})
        before = cpu_seconds(nisshi_pid)
        for i in range(10_000):
            producer.produce(TOPIC, value=value, key=f"user-{i % 10007}", headers=headers)
            if i % 1000 == 999:
                producer.poll(0)
        if producer.flush(30) != 0:
            sys.exit("confluent-kafka could not write 10,000 records to nisshi")
        spent = cpu_seconds(nisshi_pid) - before
        best = spent if best is None else min(best, spent)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", default="16,64,256")
    parser.add_argument("--brokers", default="nisshi,mock",
                        help="which brokers to run on: nisshi, mock or both")
    parser.add_argument("--gateway", action="append", metavar="[LABEL=]PATH",
                        help="a gateway binary; repeat to compare binaries side by side")
    parser.add_argument("--no-broker-cpu", action="store_true",
                        help="skip nisshi's CPU per 10,000 records with and without headers")
    args = parser.parse_args()
    levels = [int(c) for c in args.connections.split(",")]
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    unknown = set(brokers) - {"nisshi", "mock"}
    if unknown or not brokers:
        parser.error(f"--brokers takes nisshi and/or mock, not {','.join(sorted(unknown)) or 'nothing'}")
    binaries = []
    for given in args.gateway or [str(ROOT / "target/release/gateway")]:
        label, _, path = given.rpartition("=")
        label = label or Path(path).name
        if not Path(path).is_file():
            parser.error(f"--gateway {given}: no such file (build it with `cargo build --release -p gateway`)")
        binaries.append((label, path))
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    infra = str(ROOT / "scripts/infra.sh")
    owner = ["--owner-pid", str(os.getpid())]
    processes = []
    try:
        kafka = subprocess.run([infra, "start", "kafka", str(work / "kafka")] + owner,
                               capture_output=True, text=True, check=True).stdout.strip()
        nisshi_pid = int((work / "kafka/pid").read_text())
        mongo = subprocess.run([infra, "start", "mongo", str(work / "mongo")] + owner,
                               capture_output=True, text=True, check=True).stdout.strip()
        cluster = subprocess.Popen(
            [sys.executable, str(ROOT / "test-support/py/mock_cluster.py"), "--brokers", "3",
             "--topic", f"{TOPIC}:{PARTITIONS}:3"] + owner,
            stdout=subprocess.PIPE, stderr=open(work / "mock.log", "w"), text=True)
        processes.append(cluster)
        started = json.loads(cluster.stdout.readline())
        mock = Mock(started["control"])
        mock.ask(op="start_tracking")

        bootstrap = {"nisshi": kafka, "mock": started["bootstrap"]}
        gateways = []
        for name in brokers:
            for label, binary in binaries:
                process, url = start_gateway(binary, work, f"{name}-{label}", bootstrap[name], mongo)
                processes.append(process)
                gateways.append((name, label, process, url))
                wrk(f"{url}/api/purchases", 64, 3, ROOT / "bench/post-purchase.lua")  # warm-up

        load_before = Path("/proc/loadavg").read_text().split()[:3]
        rows = []
        for name in brokers:
            for connections in levels:
                for broker, label, process, url in gateways:
                    if broker == name:
                        figures = measure(process, url, connections, args.duration,
                                          mock if name == "mock" else None)
                        rows.append((name, label, connections, figures))
        load_after = Path("/proc/loadavg").read_text().split()[:3]
        if not args.no_broker_cpu and "nisshi" in brokers:
            with_headers = broker_cpu_per_10k(kafka, nisshi_pid, True)
            without_headers = broker_cpu_per_10k(kafka, nisshi_pid, False)

        print(f"\ngateway benchmark: {args.duration} s per run, {os.cpu_count()} cores, "
              f"load average {' '.join(load_before)} before, {' '.join(load_after)} after")
        width = max(len(label) for label, _ in binaries)
        print(f"{'broker':<8} {'gateway':<{width}} {'c':>4} {'buy ok/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'p99/p50':>7} "
              f"{'healthz/s':>10} {'buy/hz':>7} {'cpu/buy':>8} {'cpu/hz':>7} {'cpu ratio':>9} "
              f"{'rec/req':>8} {'non-2xx':>8}")
        for name, label, connections, f in rows:
            buy, health = f["buy"], f["healthz"]
            print(f"{name:<8} {label:<{width}} {connections:>4} {buy[0]:>9.0f} {buy[1]:>7.2f} {buy[2]:>7.2f} "
                  f"{buy[2] / buy[1]:>7.1f} {health[0]:>10.0f} {buy[0] / health[0]:>7.2f} "
                  f"{f['buy_cpu_us']:>6.1f}us {f['healthz_cpu_us']:>5.1f}us "
                  f"{f['buy_cpu_us'] / f['healthz_cpu_us']:>9.2f} "
                  f"{f['records_per_request']:>8.1f} {buy[4]:>8}")
        print("(buy/hz: accepted purchases/s over /healthz answers/s of the same binary; cpu: the "
              "gateway's utime+stime per answer; rec/req: records per Produce request, counted by "
              "the mock's request tracking on the mock and by the gateway's histogram on nisshi)")
        if not args.no_broker_cpu and "nisshi" in brokers:
            print(f"nisshi CPU per 10,000 records (confluent-kafka, acks=all): with CloudEvents "
                  f"headers {with_headers:.2f} s, without {without_headers:.2f} s "
                  f"(ratio {with_headers / without_headers:.2f})")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        for server in ("kafka", "mongo"):
            subprocess.run([infra, "stop", str(work / server)], capture_output=True)


if __name__ == "__main__":
    main()
