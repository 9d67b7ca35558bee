# syntax=docker/dockerfile:1.7
# One image with the gateway, the worker and the load tool: Kubernetes picks one with `command`.
#   docker build -t scalable-shop:0.1.0 .
# Reproducible: pinned toolchain and base images, `--locked` dependencies from Cargo.lock.

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
# cmake/gcc are not needed by our crates; pkg-config covers nothing either: rskafka, mongodb
# and poem are pure Rust with rustls.
COPY Cargo.toml Cargo.lock ./
COPY purchase purchase
COPY infra infra
COPY kafka-group kafka-group
COPY gateway gateway
COPY worker worker
COPY load load
COPY test-support test-support
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gateway -p worker -p load \
 && install -D -m 0755 target/release/gateway /out/gateway \
 && install -D -m 0755 target/release/worker /out/worker \
 && install -D -m 0755 target/release/load /out/load

# Distroless: no shell, no package manager, glibc only; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
#checkov:skip=CKV_DOCKER_2: health is checked by Kubernetes probes on /healthz and /readyz; distroless has no curl for a HEALTHCHECK
COPY --from=build /out/gateway /usr/local/bin/gateway
COPY --from=build /out/worker /usr/local/bin/worker
# The load tool, so `load lag` can run inside the cluster (load/scale.sh).
COPY --from=build /out/load /usr/local/bin/load
USER 65532:65532
# gateway HTTP API; worker ops (/healthz, /readyz, /metrics)
EXPOSE 8080 9091
ENV LOG_FORMAT=json
CMD ["/usr/local/bin/gateway"]
