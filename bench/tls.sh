#!/usr/bin/env bash
# wss:// on the shards, measured (issue 11): the gateway terminating TLS itself, side by side
# with the same gateway on plain ws:// and with nginx (Debian's package, default TLS settings)
# terminating TLS in front of the plain gateway. One command, bounded in time; stops every
# process it started (by PID).
#
# For each system in SYSTEMS:
#   plain  the gateway on ws://
#   tls    the gateway on wss:// (ECDSA P-256 certificate from a generated CA; CERT=rsa for
#          RSA-2048)
#   nginx  nginx on wss:// (same certificate, 4 workers, reuseport) proxying to the plain gateway
# it runs chat4all-loadtest:
#   - idle, CONNS then CONNS_MAX connections: user-space RSS per idle connection of the gateway
#     (from the load generator's report) and of nginx's processes (sampled here: peak minus
#     baseline), kernel slab per connection (system-wide: both ends of every loopback pair, and for
#     nginx its upstream pair too)
#   - fanout at RATE PUBLISH/s to CONNS connections for SECS s: p50/p99 and CPU per 1,000
#     deliveries (gateway from the report, nginx's processes from /proc here)
# then a reconnect storm of STORM_CONNS clients for each system in STORM_SYSTEMS (plain, tls):
# the gateway restarted (SIGTERM, DRAIN_SECONDS=0, a new process on the same port); for tls the
# processes share TLS_TICKET_KEY_FILE, so the clients resume their sessions.
# Writes bench/out/tls-<date>.md (raw reports in bench/out/tls-<date>/) and prints the table.
#
# Usage: bench/tls.sh          (about 8 minutes with the defaults; bounded by MAX_TOTAL_SECS)
# Environment (all optional):
#   SYSTEMS="plain tls nginx"  STORM_SYSTEMS="plain tls" (empty: no storm)  CERT=ecdsa (or rsa)
#   PHASES="idle rate"         which per-system phases to run (idle: both sizes; rate: fanout)
#   CONNS=10000 CONNS_MAX=19500 RATE=20000 SECS=10 HOLD_SECS=5 STORM_CONNS=19500
#   STORM_TIMEOUT=60 MAX_TOTAL_SECS=1800 NGINX=nginx NGINX_WORKERS=4
#   LOADTEST_BIN, GATEWAY_BIN  prebuilt binaries (else built with cargo --release)
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SYSTEMS=${SYSTEMS:-"plain tls nginx"}
STORM_SYSTEMS=${STORM_SYSTEMS-"plain tls"}
PHASES=${PHASES-"idle rate"}
CERT=${CERT:-ecdsa}
CONNS=${CONNS:-10000}
CONNS_MAX=${CONNS_MAX:-19500}
RATE=${RATE:-20000}
SECS=${SECS:-10}
HOLD_SECS=${HOLD_SECS:-5}
STORM_CONNS=${STORM_CONNS:-19500}
STORM_TIMEOUT=${STORM_TIMEOUT:-60}
MAX_TOTAL_SECS=${MAX_TOTAL_SECS:-1800}
NGINX=${NGINX:-nginx}
NGINX_WORKERS=${NGINX_WORKERS:-4}
SECRET="tls-bench-secret-0123456789abcdef0123456789abcdef"
STAMP=$(date +%Y%m%d-%H%M%S)
OUT_DIR=$ROOT/bench/out
RAW=$OUT_DIR/tls-$STAMP
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/chat4all-tls.XXXXXX")
STARTED=$SECONDS
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
PIDS=()

log() { printf '[tls %4ds] %s\n' "$((SECONDS - STARTED))" "$*" >&2; }

cleanup() {
  local pid
  # The restarted gateway of a storm is named by its pidfile.
  [[ -f $RUN_DIR/gateway.pid ]] && PIDS+=("$(cat "$RUN_DIR/gateway.pid")")
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.3
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

budget() {
  if ((SECONDS - STARTED > MAX_TOTAL_SECS)); then
    log "MAX_TOTAL_SECS=$MAX_TOTAL_SECS spent; stopping here"
    return 1
  fi
}

# ---------------------------------------------------------------------------------------------
# Binaries, certificates (generated here; nothing secret is kept), Redis

if [[ -z ${LOADTEST_BIN:-} || -z ${GATEWAY_BIN:-} ]]; then
  log "building chat4all-gateway and chat4all-loadtest (release)"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q --workspace --bins)
  LOADTEST_BIN=${LOADTEST_BIN:-$TARGET_DIR/release/chat4all-loadtest}
  GATEWAY_BIN=${GATEWAY_BIN:-$TARGET_DIR/release/chat4all-gateway}
fi
mkdir -p "$RAW"

certs() {
  local d=$RUN_DIR/tls
  mkdir -p "$d"
  openssl req -x509 -nodes -days 2 -subj "/CN=chat4all bench CA" -newkey ec \
    -pkeyopt ec_paramgen_curve:P-256 -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  case $CERT in
    ecdsa) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/server.key" ;;
    rsa) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/server.key" ;;
    *) log "CERT must be ecdsa or rsa"; exit 64 ;;
  esac 2>/dev/null
  openssl req -new -key "$d/server.key" -subj /CN=localhost -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$d/ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$d/ext" -out "$d/leaf.pem" 2>/dev/null
  cat "$d/leaf.pem" "$d/ca.pem" >"$d/chain.pem"
  openssl rand -hex 32 >"$d/tickets"
  chmod 600 "$d/server.key" "$d/tickets"
}
certs

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  >"$RUN_DIR/redis.log" 2>&1 </dev/null &
PIDS+=($!)
wait_port "$REDIS_PORT" 10 || { log "redis-server did not start"; exit 1; }

subscribed() {
  redis-cli -p "$REDIS_PORT" CLIENT LIST 2>/dev/null | grep -Eq ' (sub|psub)=[1-9]'
}

# ---------------------------------------------------------------------------------------------
# Systems

GW_PID=
GW_PORT=
NG_PID=
URL=
TLS_ARGS=()

# Starts the gateway (plain or tls) on GW_PORT, in the background; writes its PID to the pidfile.
# Also what the storm's restart command runs (hence a script of its own).
cat >"$RUN_DIR/gateway.sh" <<EOF
#!/usr/bin/env bash
# gateway.sh MODE PORT METRICS_PORT: starts the gateway, writes its PID, waits for the port.
mode=\$1
env=(WEBSOCKET_PORT=\$2 METRICS_PORT=\$3 BIND_HOST=127.0.0.1 METRICS_BIND_HOST=127.0.0.1
  REDIS_HOST=127.0.0.1 REDIS_PORT=$REDIS_PORT JWT_SECRET=$SECRET MAX_HANDSHAKES_PER_IP=0
  SHARDS=2 DRAIN_SECONDS=0)
if [[ \$mode == tls ]]; then
  env+=(TLS_CERT_FILE=$RUN_DIR/tls/chain.pem TLS_KEY_FILE=$RUN_DIR/tls/server.key
    TLS_TICKET_KEY_FILE=$RUN_DIR/tls/tickets)
fi
env "\${env[@]}" "$GATEWAY_BIN" >>"$RUN_DIR/gateway-\$mode.log" 2>&1 </dev/null &
echo \$! >"$RUN_DIR/gateway.pid"
for _ in \$(seq 400); do (exec 3<>"/dev/tcp/127.0.0.1/\$2") 2>/dev/null && exit 0; sleep 0.05; done
exit 1
EOF
chmod +x "$RUN_DIR/gateway.sh"

start_gateway() { # plain|tls
  GW_PORT=$(free_port)
  local mp
  mp=$(free_port)
  "$RUN_DIR/gateway.sh" "$1" "$GW_PORT" "$mp" || { log "gateway did not start"; exit 1; }
  GW_PID=$(cat "$RUN_DIR/gateway.pid")
  PIDS+=("$GW_PID")
  local end=$((SECONDS + 10))
  until subscribed; do
    ((SECONDS < end)) || { log "the gateway did not subscribe to Redis"; break; }
    sleep 0.05
  done
  RESTART="kill -TERM \$(cat '$RUN_DIR/gateway.pid'); while kill -0 \$(cat '$RUN_DIR/gateway.pid') 2>/dev/null; do sleep 0.02; done; '$RUN_DIR/gateway.sh' $1 $GW_PORT $mp"
}

start_nginx() {
  local port
  port=$(free_port)
  mkdir -p "$RUN_DIR/nginx/logs"
  cat >"$RUN_DIR/nginx/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
worker_rlimit_nofile 20000;
pid $RUN_DIR/nginx/nginx.pid;
error_log $RUN_DIR/nginx/error.log warn;
daemon off;
events { worker_connections 19000; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $RUN_DIR/nginx/body;
  proxy_temp_path $RUN_DIR/nginx/proxy;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream gateway { server 127.0.0.1:$GW_PORT; }
  server {
    listen 127.0.0.1:$port ssl reuseport backlog=4096;
    ssl_certificate $RUN_DIR/tls/chain.pem;
    ssl_certificate_key $RUN_DIR/tls/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://gateway;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }
  }
}
EOF
  "$NGINX" -p "$RUN_DIR/nginx" -c "$RUN_DIR/nginx/nginx.conf" -e "$RUN_DIR/nginx/error.log" \
    >"$RUN_DIR/nginx/stdout.log" 2>&1 </dev/null &
  NG_PID=$!
  PIDS+=("$NG_PID")
  wait_port "$port" 10 || { log "nginx did not start: $(tail -3 "$RUN_DIR/nginx/error.log")"; exit 1; }
  URL=wss://localhost:$port/notifications
}

start_system() { # plain|tls|nginx
  NG_PID=
  case $1 in
    plain) start_gateway plain; URL=ws://127.0.0.1:$GW_PORT/notifications; TLS_ARGS=() ;;
    tls) start_gateway tls; URL=wss://localhost:$GW_PORT/notifications ;;
    nginx) start_gateway plain; start_nginx ;;
  esac
  [[ $1 == plain ]] || TLS_ARGS=(--tls-ca-file "$RUN_DIR/tls/ca.pem" --tls-server-name localhost)
}

stop_pid() {
  local pid=$1 end=$((SECONDS + 10))
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < end)); do sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

stop_system() {
  [[ -n $NG_PID ]] && stop_pid "$NG_PID"
  stop_pid "$(cat "$RUN_DIR/gateway.pid")"
  sleep 1 # let TIME_WAIT and orphaned sockets settle a little
}

# nginx's processes (master and workers): RSS in KiB, CPU in clock ticks.
nginx_pids() {
  echo "$NG_PID"
  pgrep -P "$NG_PID" || true
}
nginx_rss_kb() {
  local pid sum=0 v
  for pid in $(nginx_pids); do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
nginx_cpu_ticks() {
  local pid sum=0 v
  for pid in $(nginx_pids); do
    v=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

loadtest() { # system tag scenario args...
  local sys=$1 tag=$2 base peak cpu0 lt marked=0
  shift 2
  log "$sys: $tag"
  [[ -n $NG_PID ]] && { base=$(nginx_rss_kb); peak=$base; cpu0=$(nginx_cpu_ticks); }
  "$LOADTEST_BIN" "$@" --url "$URL" "${TLS_ARGS[@]}" --jwt-secret "$SECRET" \
    --redis "127.0.0.1:$REDIS_PORT" --server-pid "$GW_PID" --max-run-secs 300 \
    --report "$RAW/$sys-$tag.json" >"$RAW/$sys-$tag.txt" 2>"$RAW/$sys-$tag.err" &
  lt=$!
  while kill -0 "$lt" 2>/dev/null; do
    if [[ -n $NG_PID ]]; then
      local now
      now=$(nginx_rss_kb)
      ((now > peak)) && peak=$now
      # nginx's CPU per delivery counts from the start of publishing, not the handshakes.
      if ((!marked)) && grep -q '^\[fanout\] started' "$RAW/$sys-$tag.err" 2>/dev/null; then
        cpu0=$(nginx_cpu_ticks)
        marked=1
      fi
    fi
    sleep 0.25
  done
  wait "$lt" || log "$sys: $tag failed: $(tail -1 "$RAW/$sys-$tag.err")"
  if [[ -n $NG_PID ]]; then
    printf '{"rss_base_kb": %s, "rss_peak_kb": %s, "cpu_ticks": %s, "clk_tck": %s}\n' \
      "$base" "$peak" "$(($(nginx_cpu_ticks) - cpu0))" "$(getconf CLK_TCK)" >"$RAW/$sys-$tag.nginx.json"
  fi
}

for sys in $SYSTEMS; do
  if [[ " $PHASES " == *" idle "* ]]; then
    budget || break
    start_system "$sys"
    loadtest "$sys" idle10k idle --conns "$CONNS" --connect-rate 0 --hold "$HOLD_SECS"
    stop_system
    budget || break
    start_system "$sys"
    loadtest "$sys" idlemax idle --conns "$CONNS_MAX" --connect-rate 0 --hold "$HOLD_SECS" --no-verify
    stop_system
  fi
  if [[ " $PHASES " == *" rate "* ]]; then
    budget || break
    start_system "$sys"
    loadtest "$sys" rate fanout --conns "$CONNS" --connect-rate 0 --rate "$RATE" --duration "$SECS"
    stop_system
  fi
done

for sys in $STORM_SYSTEMS; do
  budget || break
  start_system "$sys"
  loadtest "$sys" storm reconnect-storm --conns "$STORM_CONNS" --connect-rate 0 \
    --restart-cmd "$RESTART" --timeout "$STORM_TIMEOUT"
  GW_PID=$(cat "$RUN_DIR/gateway.pid")
  PIDS+=("$GW_PID")
  stop_system
done

# ---------------------------------------------------------------------------------------------
# Table

table() {
  python3 - "$RAW" "$SYSTEMS" "$STORM_SYSTEMS" "$CONNS" "$CONNS_MAX" "$RATE" <<'PY'
import json, os, sys
raw, systems, storms = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
conns, conns_max, rate = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]

def load(name):
    try:
        with open(os.path.join(raw, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def get(d, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d

def fmt(v, spec="{:.0f}"):
    return "—" if v is None else spec.format(v)

print("| system | RSS/idle conn @%d | RSS/idle conn @%d | kernel slab/conn @%d (both ends) | "
      "p50 ms @%s/s | p99 ms @%s/s | CPU ms / 1k deliveries | delivered |" % (conns, conns_max, conns_max, rate, rate))
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for s in systems:
    row = [s]
    for tag, n in (("idle10k", conns), ("idlemax", conns_max)):
        r = load(f"{s}-{tag}.json")
        gw = get(r, "idle", "per_conn", "server_rss_bytes")
        cell = fmt(gw) + " B"
        ng = load(f"{s}-{tag}.nginx.json")
        if ng:
            opened = get(r, "connect", "established") or n
            per = (ng["rss_peak_kb"] - ng["rss_base_kb"]) * 1024 / max(opened, 1)
            cell = f"{per:.0f} B nginx + {fmt(gw)} B gateway"
        row.append(cell)
    r = load(f"{s}-idlemax.json")
    row.append(fmt(get(r, "idle", "per_conn", "kernel_slab_bytes")) + " B")
    r = load(f"{s}-rate.json")
    row.append(fmt((get(r, "fanout", "latency", "p50_us") or 0) / 1000, "{:.2f}") if r else "—")
    row.append(fmt((get(r, "fanout", "latency", "p99_us") or 0) / 1000, "{:.2f}") if r else "—")
    cpu = get(r, "fanout", "server_cpu_ms_per_1k")
    delivered = get(r, "fanout", "deliveries", "delivered")
    cell = fmt(cpu, "{:.1f}")
    ng = load(f"{s}-rate.nginx.json")
    if ng and delivered:
        ngcpu = ng["cpu_ticks"] * 1000 / ng["clk_tck"] / delivered * 1000
        cell = f"{ngcpu:.1f} nginx + {cell} gateway"
    row.append(cell)
    row.append(fmt(delivered))
    print("| " + " | ".join(row) + " |")
print()
print("| storm | clients | all back | all reconnected (ms after restart) | all receiving (ms) | "
      "back after answering (ms) | reconnect handshake p50/p99 ms | TLS resumed |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for s in storms:
    r = load(f"{s}-storm.json")
    st = get(r, "storm") or {}
    hs = st.get("reconnect_handshake") or {}
    print(f"| {s} | {fmt(st.get('open_at_start'))} | {st.get('all_back', '—')} | "
          f"{fmt(st.get('all_reconnected_ms'))} | {fmt(st.get('all_receiving_ms'))} | "
          f"{fmt(st.get('back_after_answering_ms'))} | "
          f"{fmt((hs.get('p50_us') or 0) / 1000, '{:.1f}')}/{fmt((hs.get('p99_us') or 0) / 1000, '{:.1f}')} | "
          f"{fmt(get(r, 'harness', 'tls_resumed'))} |")
PY
}

{
  echo "# wss:// on the shards, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "- kernel $(uname -r), $(nproc) CPUs, load average before: $LOAD_BEFORE"
  echo "- chat4all-gateway at $(cd "$ROOT" && git rev-parse --short HEAD), certificate $CERT," \
    "$($NGINX -v 2>&1 | cut -d' ' -f3), $(openssl version | cut -d' ' -f1-2)"
  echo "- CONNS=$CONNS CONNS_MAX=$CONNS_MAX RATE=$RATE SECS=$SECS STORM_CONNS=$STORM_CONNS"
  echo
  table
} | tee "$OUT_DIR/tls-$STAMP.md"
log "written: bench/out/tls-$STAMP.md, raw reports in bench/out/tls-$STAMP/"
