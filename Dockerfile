# chat4all-gateway container image.
#   docker build -t chat4all-gateway .
#   docker run --rm -p 8085:8085 -p 127.0.0.1:9095:9095 -e JWT_SECRET=... -e PUBLISH_API_KEY=... \
#     -e REDIS_HOST=... \
#     --ulimit nofile=1048576:1048576 --security-opt seccomp=tuning/seccomp-io_uring.json \
#     chat4all-gateway
# Without that seccomp profile Docker's default one refuses io_uring_setup and the gateway runs on
# epoll (IO_DRIVER=auto); see docs/tuning.md, "Containers".

# ---- build ----------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when a manifest or Cargo.lock changes.
# Stub sources stand in for every workspace member so cargo can resolve and compile the
# dependency graph; add a stub here if a member gains a target with an explicit path.
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
RUN mkdir -p src loadtest/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > loadtest/src/main.rs \
 && cargo build --release --locked -p chat4all-gateway \
 && rm -rf src loadtest/src

# The real sources. touch: COPY keeps the files' old mtimes, which can look older than the stub
# build above, and cargo would then keep the stub binary.
COPY . .
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked -p chat4all-gateway \
 && install -D -m 0755 target/release/chat4all-gateway /out/chat4all-gateway

# ---- runtime --------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates for TLS to Redis or key endpoints; curl only for the HEALTHCHECK below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 chat4all \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin chat4all

COPY --from=builder /out/chat4all-gateway /usr/local/bin/chat4all-gateway

# Inside a container both listeners must bind all interfaces to be reachable through published
# ports; publish METRICS_PORT on loopback or an internal network only. Because the internal port
# is not on loopback here, the gateway refuses to start without PUBLISH_API_KEY (exit 64), which
# /v1/publish then requires as `Authorization: Bearer`; /healthz, /readyz and /metrics need none.
# To run without a key, bind it to loopback consciously: -e METRICS_BIND_HOST=127.0.0.1 (only the
# HEALTHCHECK below can reach it then).
ENV WEBSOCKET_PORT=8085 \
    METRICS_PORT=9095 \
    BIND_HOST=0.0.0.0 \
    METRICS_BIND_HOST=0.0.0.0 \
    IO_DRIVER=auto \
    LOG_FORMAT=json \
    RUST_LOG=info

USER 10001:10001
EXPOSE 8085 9095

# Liveness only (/healthz); /readyz is for load balancers. Shell form so METRICS_PORT is honoured.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS --max-time 2 "http://127.0.0.1:${METRICS_PORT:-9095}/healthz" > /dev/null || exit 1

# SIGTERM starts the drain (DRAIN_SECONDS). `docker stop` waits only 10 s by default: use
# `docker stop -t 45` / compose stop_grace_period to let a 30 s drain finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/chat4all-gateway"]
