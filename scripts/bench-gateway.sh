#!/usr/bin/env bash
# Gateway benchmark: accepted purchases/s and p50/p99 latency at fixed concurrency, measured
# in the same run beside this machine's limit for the same HTTP stack: the gateway answering a
# trivial endpoint (/healthz). Prints both and their ratio.
#
#   scripts/bench-gateway.sh [--connections N] [--duration SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
connections=64
duration=15
while [ $# -gt 0 ]; do
  case "$1" in
    --connections) connections="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    *) echo "unknown option $1 (use --connections N, --duration SECONDS)" >&2; exit 2 ;;
  esac
done

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
scripts/infra.sh install >/dev/null
cargo build --release -q -p gateway

work="$(mktemp -d)"
trap 'kill "${gateway_pid:-0}" 2>/dev/null || true; scripts/infra.sh stop "$work/kafka"; scripts/infra.sh stop "$work/mongo"; rm -rf "$work"' EXIT
kafka="$(scripts/infra.sh start kafka "$work/kafka" --owner-pid $$)"
mongo="$(scripts/infra.sh start mongo "$work/mongo" --owner-pid $$)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
RUST_LOG=warn target/release/gateway --listen "127.0.0.1:$port" --kafka-brokers "$kafka" \
  --kafka-topic bench-purchases --mongo-uri "$mongo" --auth-disabled >"$work/gateway.log" 2>&1 &
gateway_pid=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/gateway.log"; exit 1; }

# run_wrk NAME ARGS...: prints "requests_per_s ok_per_s p50_ms p99_ms"
run_wrk() {
  local out
  out="$(wrk -t2 -c"$connections" -d"${duration}s" --latency "$@")"
  echo "$out" >"$work/wrk-$RANDOM.txt"
  python3 - "$duration" <<PY
import re, sys
out = """$out"""
duration = float(sys.argv[1])
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
total = int(re.search(r"(\d+) requests in", out).group(1))
seconds = float(re.search(r"requests in ([\d.]+)s", out).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
bad = int(bad.group(1)) if bad else 0
errors = re.search(r"Socket errors: .*", out)
p50 = ms(re.search(r"50%\s+(\S+)", out).group(1))
p99 = ms(re.search(r"99%\s+(\S+)", out).group(1))
print(f"{total / seconds:.0f} {(total - bad) / seconds:.0f} {p50:.2f} {p99:.2f} {bad} {errors.group(0) if errors else 'none'}")
PY
}

echo "warming up..." >&2
wrk -t2 -c"$connections" -d3s -s bench/post-purchase.lua "http://127.0.0.1:$port/api/purchases" >/dev/null
read -r base_rps base_ok base_p50 base_p99 _ <<<"$(run_wrk "http://127.0.0.1:$port/healthz")"
read -r post_rps post_ok post_p50 post_p99 post_bad post_errors <<<"$(run_wrk -s bench/post-purchase.lua "http://127.0.0.1:$port/api/purchases")"
batches="$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^gateway_kafka_produce_batch_records_(sum|count) /{v[$1]=$2} END{if (v["gateway_kafka_produce_batch_records_count"]>0) printf "%.1f", v["gateway_kafka_produce_batch_records_sum"]/v["gateway_kafka_produce_batch_records_count"]}')"

printf '\ngateway benchmark: %s connections, %ss per run, %s cores\n' "$connections" "$duration" "$(nproc)"
printf '%-34s %12s %10s %10s\n' "endpoint" "ok req/s" "p50 ms" "p99 ms"
printf '%-34s %12s %10s %10s\n' "GET /healthz (HTTP stack limit)" "$base_ok" "$base_p50" "$base_p99"
printf '%-34s %12s %10s %10s\n' "POST /api/purchases (202s)" "$post_ok" "$post_p50" "$post_p99"
python3 -c "print(f'ratio accepted purchases / trivial endpoint: {$post_ok / $base_ok:.3f}')"
echo "non-202 answers during the purchase run: $post_bad; socket errors: $post_errors"
echo "mean purchases per produce call: ${batches:-n/a}"
