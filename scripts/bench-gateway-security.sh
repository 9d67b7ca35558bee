#!/usr/bin/env bash
# Gateway benchmark: accepted purchases/s and p50/p99 latency at fixed concurrency, measured
# in the same run beside this machine's limit for the same HTTP stack (the gateway answering
# the trivial /healthz), and beside the same gateway on secured servers: Kafka over TLS with
# SASL SCRAM-SHA-512 and MongoDB with --auth over TLS, first without then with JWT
# authentication of each request. Prints every figure and the ratios.
#
#   scripts/bench-gateway-security.sh [--connections N] [--duration SECONDS]
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
cleanup() {
  # start_gateway runs in a command substitution, so its pids are kept in files.
  for pid_file in "$work"/gateway-*.pid; do
    [ -f "$pid_file" ] && kill "$(cat "$pid_file")" 2>/dev/null || true
  done
  for server in kafka mongo secure-kafka secure-mongo; do scripts/infra.sh stop "$work/$server"; done
  rm -rf "$work"
}
trap cleanup EXIT

kafka_user="bench-gateway" kafka_password="bench-kafka-secret"
mongo_user="bench" mongo_password="bench-mongo-secret"
scripts/infra.sh certs "$work/certs" >/dev/null
kafka="$(scripts/infra.sh start kafka "$work/kafka" --owner-pid $$)"
mongo="$(scripts/infra.sh start mongo "$work/mongo" --owner-pid $$)"
secure_kafka="$(scripts/infra.sh start kafka "$work/secure-kafka" --owner-pid $$ \
  --user "$kafka_user:$kafka_password" --tls "$work/certs")"
secure_mongo="$(scripts/infra.sh start mongo "$work/secure-mongo" --owner-pid $$ \
  --user "$mongo_user:$mongo_password" --tls "$work/certs")"
printf '%s\n' "$kafka_password" >"$work/kafka-password"
secure_mongo_uri="mongodb://$mongo_user:$mongo_password@${secure_mongo#mongodb://}/?tls=true&tlsCAFile=$work/certs/ca.pem&authSource=admin"
kafka_security=(--kafka-sasl-mechanism SCRAM-SHA-512 --kafka-sasl-username "$kafka_user"
  --kafka-sasl-password-file "$work/kafka-password" --kafka-tls --kafka-tls-ca-file "$work/certs/ca.pem")

# A JWKS with the test-only fixture key, and a token of a server-to-server caller that may
# buy for any user (the bench spreads purchases over 10,007 users), signed with openssl.
issuer="https://id.bench.test/" audience="scalable-shop-api"
python3 - "$work" "$issuer" "$audience" <<'PY'
import base64, json, subprocess, sys, time
work, issuer, audience = sys.argv[1:]
def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
jwk = json.load(open("test-support/fixtures/test-only-rsa-public.jwk.json"))
jwk["kid"] = "bench"
json.dump({"keys": [jwk]}, open(f"{work}/jwks.json", "w"))
now = int(time.time())
header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode())
claims = b64(json.dumps({"iss": issuer, "aud": audience, "sub": "bench-load",
                         "scope": "purchases:write:any", "iat": now, "exp": now + 3600}).encode())
signature = subprocess.run(
    ["openssl", "dgst", "-sha256", "-sign", "test-support/fixtures/test-only-rsa-private.pem"],
    input=f"{header}.{claims}".encode(), capture_output=True, check=True).stdout
open(f"{work}/token", "w").write(f"{header}.{claims}.{b64(signature)}")
PY

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_gateway NAME ARGS...: a release gateway with ARGS; prints its base URL once ready.
start_gateway() {
  local name="$1" port
  shift
  port="$(free_port)"
  # The log level a user gets (the default filter), not a quieter one.
  env -u RUST_LOG target/release/gateway --listen "127.0.0.1:$port" --kafka-topic bench-purchases "$@" \
    >"$work/gateway-$name.log" 2>&1 &
  echo $! >"$work/gateway-$name.pid"
  for _ in $(seq 1 150); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.2
  done
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/gateway-$name.log" >&2; exit 1; }
  echo "http://127.0.0.1:$port"
}

plain="$(start_gateway plain --kafka-brokers "$kafka" --mongo-uri "$mongo" --auth-disabled)"
secured="$(start_gateway secured --kafka-brokers "$secure_kafka" "${kafka_security[@]}" \
  --mongo-uri "$secure_mongo_uri" --auth-disabled)"
authed="$(start_gateway authed --kafka-brokers "$secure_kafka" "${kafka_security[@]}" \
  --mongo-uri "$secure_mongo_uri" --auth-jwks-file "$work/jwks.json" --auth-issuer "$issuer" \
  --auth-audience "$audience")"

# run_wrk ARGS...: prints "requests_per_s ok_per_s p50_ms p99_ms non_2xx socket_errors"
run_wrk() {
  local out
  out="$(wrk -t2 -c"$connections" -d"${duration}s" --latency "$@")"
  python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
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

# mean_batch URL: mean records per produce call, from the gateway's own histogram.
mean_batch() {
  curl -s "$1/metrics" | awk '/^gateway_kafka_produce_batch_records_(sum|count) /{v[$1]=$2} END{if (v["gateway_kafka_produce_batch_records_count"]>0) printf "%.1f", v["gateway_kafka_produce_batch_records_sum"]/v["gateway_kafka_produce_batch_records_count"]; else printf "n/a"}'
}

export BENCH_TOKEN
echo "warming up..." >&2
for url in "$plain" "$secured"; do
  BENCH_TOKEN="" wrk -t2 -c"$connections" -d3s -s bench/post-purchase.lua "$url/api/purchases" >/dev/null
done
BENCH_TOKEN="$(cat "$work/token")" wrk -t2 -c"$connections" -d3s -s bench/post-purchase.lua "$authed/api/purchases" >/dev/null

read -r _ base_ok base_p50 base_p99 _ <<<"$(run_wrk "$plain/healthz")"
read -r _ plain_ok plain_p50 plain_p99 plain_bad plain_errors <<<"$(BENCH_TOKEN="" run_wrk -s bench/post-purchase.lua "$plain/api/purchases")"
read -r _ sec_ok sec_p50 sec_p99 sec_bad sec_errors <<<"$(BENCH_TOKEN="" run_wrk -s bench/post-purchase.lua "$secured/api/purchases")"
read -r _ auth_ok auth_p50 auth_p99 auth_bad auth_errors <<<"$(BENCH_TOKEN="$(cat "$work/token")" run_wrk -s bench/post-purchase.lua "$authed/api/purchases")"

printf '\ngateway benchmark: %s connections, %ss per run, %s cores\n' "$connections" "$duration" "$(nproc)"
printf '%-52s %10s %8s %8s %8s\n' "endpoint" "ok req/s" "p50 ms" "p99 ms" "batch"
printf '%-52s %10s %8s %8s %8s\n' "GET /healthz (HTTP stack limit)" "$base_ok" "$base_p50" "$base_p99" "-"
printf '%-52s %10s %8s %8s %8s\n' "POST /api/purchases, plaintext Kafka and MongoDB" "$plain_ok" "$plain_p50" "$plain_p99" "$(mean_batch "$plain")"
printf '%-52s %10s %8s %8s %8s\n' "POST, Kafka TLS+SCRAM-SHA-512, MongoDB TLS+auth" "$sec_ok" "$sec_p50" "$sec_p99" "$(mean_batch "$secured")"
printf '%-52s %10s %8s %8s %8s\n' "POST, secured servers + JWT (RS256) per request" "$auth_ok" "$auth_p50" "$auth_p99" "$(mean_batch "$authed")"
python3 - "$plain_ok" "$base_ok" "$sec_ok" "$auth_ok" <<'PY'
import sys
plain, base, secured, authed = map(float, sys.argv[1:])
print(f"ratio accepted purchases / trivial endpoint:        {plain / base:.3f}")
print(f"ratio secured servers / plaintext:                  {secured / plain:.3f}")
print(f"ratio secured servers + JWT / plaintext:            {authed / plain:.3f}")
PY
echo "non-202 answers: plaintext $plain_bad, secured $sec_bad, secured+JWT $auth_bad"
echo "socket errors: plaintext $plain_errors; secured $sec_errors; secured+JWT $auth_errors"
echo "(Kafka TLS is scripts/tls_terminator.py, Python's OpenSSL, in front of nisshi, which has no TLS of its own)"
