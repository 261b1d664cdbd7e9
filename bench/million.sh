#!/usr/bin/env bash
# A million WebSockets on one host, measured (issue 12). One command, bounded in time, that stops
# every process it started (by PID).
#
# What it does:
#   1. checks the host (open files per process, fs.file-max, nf_conntrack_max, the local port
#      range, somaxconn, memory) and raises what is too low where it may (tuning/apply.sh with a
#      generated file, reverted at the end; TUNE=0 to only report);
#   2. sizes the run: N gateway processes sharing one WebSocket port with SO_REUSEPORT (it spreads by
#      hash, not evenly: N is the smallest for which the busiest process stays under 95% of its
#      descriptor cap even after one process is killed), worker processes of the load generator
#      under the same cap, and enough 127.x source addresses for the ports each offers;
#   3. starts redis-server and the N gateways (per-user subscriptions, SHARDS=1, each with its own
#      internal port on 127.0.0.1, queue sizes chosen for the run, all printed);
#   4. runs `chat4all-loadtest capacity`: connect all (progress as it goes), idle with keep-alive
#      pings every PING_INTERVAL s (CPU of the idle fleet), notification latency to random users at
#      LATENCY_RATE/s, a broadcast to BCAST_USERS users through the publish API in requests of at
#      most BCAST_BATCH user ids, then SIGKILL one gateway and time its clients back;
#   5. writes bench/out/million-<date>.{json,md,svg}: the report, a short table, and connections and
#      memory over time.
#
# Usage: bench/million.sh                        (CONNS=1000000: needs ~15 GB free, ~15-30 min)
#        CONNS=300000 bench/million.sh           (a trial on a shared machine)
# Environment (all optional):
#   CONNS=1000000            client connections
#   GATEWAYS=auto            gateway processes (auto: sized as above)
#   CONNS_PER_WORKER=18000   connections per load-generator process (each under the fd cap)
#   CONNECT_RATE=0           connects/s over all workers (0 = as fast as CONNECT_CONCURRENCY allows)
#   CONNECT_CONCURRENCY=512  handshakes in flight
#   SOURCE_PORTS=1024-32767  each client socket binds its own (address, port) from this range, so
#                            connect() never searches for a free ephemeral port ("kernel" to let it)
#   IDLE_SECS=75 PING_INTERVAL=30 LATENCY_RATE=1000 LATENCY_SECS=20
#   BCAST_USERS=10000 BCAST_BATCH=1000 (the publish API's user_ids cap per request)
#   STORM=1 STORM_TIMEOUT=180 SAMPLE_MS=2000
#   SHARD_QUEUE_CAPACITY=4096 OUTBOX_MAX_MESSAGES=64 OUTBOX_MAX_BYTES=65536
#   REDIS_SUBSCRIPTION=per-user  (or pattern: every gateway receives every notification)
#   MAX_TOTAL_SECS=3600      hard bound on the whole run
#   TUNE=1                   raise host limits that are too low (root only), revert at the end
#   FORCE=0                  run even if the memory estimate exceeds what is available
#   LOADTEST_BIN, GATEWAY_BIN  prebuilt binaries (else built with cargo --release)
#   OUT_DIR=bench/out        where the results go
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CONNS=${CONNS:-1000000}
GATEWAYS=${GATEWAYS:-auto}
CONNS_PER_WORKER=${CONNS_PER_WORKER:-18000}
CONNECT_RATE=${CONNECT_RATE:-0}
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-512}
SOURCE_PORTS=${SOURCE_PORTS:-1024-32767}
IDLE_SECS=${IDLE_SECS:-75}
PING_INTERVAL=${PING_INTERVAL:-30}
LATENCY_RATE=${LATENCY_RATE:-1000}
LATENCY_SECS=${LATENCY_SECS:-20}
BCAST_USERS=${BCAST_USERS:-10000}
BCAST_BATCH=${BCAST_BATCH:-1000}
STORM=${STORM:-1}
STORM_TIMEOUT=${STORM_TIMEOUT:-180}
SAMPLE_MS=${SAMPLE_MS:-2000}
SHARD_QUEUE_CAPACITY=${SHARD_QUEUE_CAPACITY:-4096}
OUTBOX_MAX_MESSAGES=${OUTBOX_MAX_MESSAGES:-64}
OUTBOX_MAX_BYTES=${OUTBOX_MAX_BYTES:-65536}
REDIS_SUBSCRIPTION=${REDIS_SUBSCRIPTION:-per-user}
MAX_TOTAL_SECS=${MAX_TOTAL_SECS:-3600}
TUNE=${TUNE:-1}
FORCE=${FORCE:-0}
OUT_DIR=${OUT_DIR:-$ROOT/bench/out}
# Measured per connection pair on loopback (docs/capacity.md): ~10.3 KB kernel slab for both
# ends, ~0.9 KB gateway, ~0.3-2.7 KB load generator, Redis per subscription; 15 KB leaves margin.
BYTES_PER_CONN_ESTIMATE=15000

STARTED=$SECONDS
STAMP=$(date +%Y%m%d-%H%M%S)
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/chat4all-million.XXXXXX")
SECRET="million-$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
API_KEY="key-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
PIDS=()
SYSCTL_BACKUP=
RC_FILE=$RUN_DIR/tune.conf

log() { printf '[million %5ds] %s\n' "$((SECONDS - STARTED))" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

cleanup() {
  local pid end
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  end=$((SECONDS + 15))
  for pid in "${PIDS[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < end)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n $SYSCTL_BACKUP && -s $SYSCTL_BACKUP ]]; then
    "$ROOT/tuning/apply.sh" --file "$RC_FILE" --backup "$SYSCTL_BACKUP" --revert >&2 ||
      log "warning: reverting the sysctls failed; backup kept in $SYSCTL_BACKUP"
  fi
  if [[ -n ${KEEP_RUN_DIR:-} ]]; then
    log "run directory kept: $RUN_DIR"
  else
    rm -rf "$RUN_DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

remaining() { echo $((MAX_TOTAL_SECS - (SECONDS - STARTED))); }

# GET /readyz on an internal port answers 200.
ready() { # port
  local line
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
  IFS= read -r -t 2 line <&3 || line=
  exec 3<&-
  [[ $line == "HTTP/1.1 200"* ]]
}

sysctl_get() { cat "/proc/sys/${1//.//}" 2>/dev/null || echo "absent"; }

# ---------------------------------------------------------------------------------------------
# Sizing

if ! [[ $CONNS =~ ^[0-9]+$ ]] || ((CONNS < 2)); then die "CONNS must be a number >= 2"; fi
FD_CAP=$(ulimit -n)
[[ $FD_CAP == unlimited ]] && FD_CAP=1048576
# The gateway's automatic MAX_CONNECTIONS: the open-files limit - FD_RESERVE (64) - 8 per shard.
GW_CAP=$((FD_CAP - 64 - 8))
((GW_CAP > 100)) || die "open files per process ($FD_CAP) are too few"
if [[ $GATEWAYS == auto ]]; then
  # Smallest N with C/(N-1) + 4 sqrt(C/(N-1)) <= 0.95 cap: after one process is killed its
  # clients spread over the others; the hash spread is binomial, 4 standard deviations above the
  # mean covers the busiest of ~60 processes.
  GATEWAYS=$(python3 -c '
import math, sys
c, cap = int(sys.argv[1]), int(sys.argv[2])
n = 2
while True:
    per = c / (n - 1)
    if per + 4 * math.sqrt(per) <= 0.95 * cap:
        print(n); break
    n += 1' "$CONNS" "$GW_CAP")
fi
((GATEWAYS >= 2)) || die "GATEWAYS must be at least 2 (one is killed for the storm)"
((CONNS_PER_WORKER <= FD_CAP - 1000)) || CONNS_PER_WORKER=$((FD_CAP - 1000))
WORKERS=$(((CONNS + CONNS_PER_WORKER - 1) / CONNS_PER_WORKER))
read -r PORT_LO PORT_HI </proc/sys/net/ipv4/ip_local_port_range
if [[ $SOURCE_PORTS == kernel ]]; then
  # With IP_BIND_ADDRESS_NO_PORT each source address offers the ephemeral range per destination;
  # keep half of it free: past ~50% occupancy the kernel's search for a free port
  # (__inet_check_established) becomes the load generator's main cost (measured: the connect
  # rate fell from ~8,000/s to ~250/s at 185,000 connections on 13 addresses).
  PORTS_PER_IP=$(((PORT_HI - PORT_LO + 1) / 2))
  SOURCE_PORT_ARGS=()
else
  # One explicit (address, port) per connection: no search at all.
  PORTS_PER_IP=$((${SOURCE_PORTS#*-} - ${SOURCE_PORTS%-*} + 1))
  SOURCE_PORT_ARGS=(--source-ports "$SOURCE_PORTS")
fi
SOURCE_IPS=$(((CONNS + PORTS_PER_IP - 1) / PORTS_PER_IP))
((SOURCE_IPS >= 1)) || SOURCE_IPS=1
((SOURCE_IPS <= 250)) || die "$SOURCE_IPS source addresses needed: widen ip_local_port_range"
SOURCE_RANGE="127.1.0.1-127.1.0.$SOURCE_IPS"

# ---------------------------------------------------------------------------------------------
# Host checks and tuning

NEED_FILES=$((CONNS * 2 + 200000))
NEED_CONNTRACK=$((CONNS * 2 + 100000))
declare -A NEED=(
  [fs.file-max]=$NEED_FILES
  [net.netfilter.nf_conntrack_max]=$NEED_CONNTRACK
  [net.core.somaxconn]=4096
  [net.ipv4.tcp_max_syn_backlog]=4096
  [net.ipv4.tcp_max_orphans]=262144
)
log "host checks (open files per process: $FD_CAP; ports per source address: $PORTS_PER_IP)"
: >"$RC_FILE"
for key in fs.file-max net.netfilter.nf_conntrack_max net.core.somaxconn \
  net.ipv4.tcp_max_syn_backlog net.ipv4.tcp_max_orphans; do
  cur=$(sysctl_get "$key")
  want=${NEED[$key]}
  if [[ $cur == absent ]]; then
    log "  $key: absent here (nothing to do)"
  elif ((cur >= want)); then
    log "  $key = $cur (needs >= $want): ok"
  else
    log "  $key = $cur (needs >= $want): too low"
    echo "-$key = $want" >>"$RC_FILE"
  fi
done
log "  net.ipv4.ip_local_port_range = $PORT_LO $PORT_HI; source ports $SOURCE_PORTS: $SOURCE_IPS source addresses ($SOURCE_RANGE)"
if [[ -s $RC_FILE ]]; then
  if [[ $TUNE == 1 && $(id -u) == 0 ]]; then
    SYSCTL_BACKUP=$RUN_DIR/sysctl.backup
    log "raising with tuning/apply.sh (reverted at the end):"
    sed 's/^-/    /' "$RC_FILE" >&2
    "$ROOT/tuning/apply.sh" --file "$RC_FILE" --backup "$SYSCTL_BACKUP" >&2 ||
      log "warning: some values could not be raised (see above); the run may hit them"
  else
    log "warning: limits above are too low and TUNE=0 or not root: the run may hit them"
  fi
fi
MEM_AVAIL_KB=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
NEED_KB=$((CONNS * BYTES_PER_CONN_ESTIMATE / 1024 + 512 * 1024))
log "memory: ~$((NEED_KB / 1024)) MiB estimated for $CONNS connections, $((MEM_AVAIL_KB / 1024)) MiB available"
if ((NEED_KB > MEM_AVAIL_KB * 9 / 10)) && [[ $FORCE != 1 ]]; then
  die "not enough free memory for $CONNS connections (FORCE=1 to try anyway)"
fi

# ---------------------------------------------------------------------------------------------
# Binaries

command -v redis-server >/dev/null || die "redis-server is required (apt-get install redis-server)"
if [[ -z ${LOADTEST_BIN:-} || -z ${GATEWAY_BIN:-} ]]; then
  log "building release binaries (cargo build --release)"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p chat4all-gateway -p chat4all-loadtest)
  LOADTEST_BIN=${LOADTEST_BIN:-$TARGET_DIR/release/chat4all-loadtest}
  GATEWAY_BIN=${GATEWAY_BIN:-$TARGET_DIR/release/chat4all-gateway}
fi
[[ -x $LOADTEST_BIN && -x $GATEWAY_BIN ]] || die "binaries missing: $LOADTEST_BIN $GATEWAY_BIN"

# ---------------------------------------------------------------------------------------------
# Processes

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --maxclients 10000 >"$RUN_DIR/redis.log" 2>&1 </dev/null &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
echo "$REDIS_PID" >>"$RUN_DIR/pids"
wait_for 10 port_open "$REDIS_PORT" || die "redis-server did not start"

WS_PORT=$(free_port)
GW_ENV=(
  WEBSOCKET_PORT="$WS_PORT" BIND_HOST=127.0.0.1 METRICS_BIND_HOST=127.0.0.1
  JWT_SECRET="$SECRET" PUBLISH_API_KEY="$API_KEY"
  REDIS_HOST=127.0.0.1 REDIS_PORT="$REDIS_PORT" REDIS_SUBSCRIPTION="$REDIS_SUBSCRIPTION"
  SHARDS=1 PIN_CORES=false SHARD_QUEUE_CAPACITY="$SHARD_QUEUE_CAPACITY"
  # Thousands of handshakes at once from a few loopback addresses: lift the per-address cap.
  MAX_HANDSHAKES_PER_IP=0
  OUTBOX_MAX_MESSAGES="$OUTBOX_MAX_MESSAGES" OUTBOX_MAX_BYTES="$OUTBOX_MAX_BYTES"
  RUST_LOG=warn
)
log "starting $GATEWAYS gateway processes on port $WS_PORT (SO_REUSEPORT), each:"
log "  SHARDS=1 PIN_CORES=false REDIS_SUBSCRIPTION=$REDIS_SUBSCRIPTION MAX_CONNECTIONS=auto ($GW_CAP) MAX_HANDSHAKES_PER_IP=0"
log "  SHARD_QUEUE_CAPACITY=$SHARD_QUEUE_CAPACITY OUTBOX_MAX_MESSAGES=$OUTBOX_MAX_MESSAGES OUTBOX_MAX_BYTES=$OUTBOX_MAX_BYTES"
log "  internal port on 127.0.0.1 with PUBLISH_API_KEY set; Redis on $REDIS_PORT"
GW_PIDS=()
GW_MPORTS=()
for ((i = 0; i < GATEWAYS; i++)); do
  mp=$(free_port)
  env "${GW_ENV[@]}" METRICS_PORT="$mp" "$GATEWAY_BIN" >"$RUN_DIR/gw$i.log" 2>&1 </dev/null &
  GW_PIDS+=("$!")
  GW_MPORTS+=("$mp")
  PIDS+=("$!")
  echo "$!" >>"$RUN_DIR/pids"
done
for ((i = 0; i < GATEWAYS; i++)); do
  if ! wait_for 60 ready "${GW_MPORTS[$i]}"; then
    tail -5 "$RUN_DIR/gw$i.log" >&2 || true
    die "gateway $i (pid ${GW_PIDS[$i]}) not ready on ${GW_MPORTS[$i]}"
  fi
done
log "all $GATEWAYS gateways ready"

# ---------------------------------------------------------------------------------------------
# The run

mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/million-$STAMP.json
PLOT=$OUT_DIR/million-$STAMP.svg
TABLE=$OUT_DIR/million-$STAMP.md
pids_csv=$(
  IFS=,
  echo "${GW_PIDS[*]}"
)
args=(capacity --url "ws://127.0.0.1:$WS_PORT/notifications" --redis "127.0.0.1:$REDIS_PORT"
  --conns "$CONNS" --conns-per-worker "$CONNS_PER_WORKER" --source-ips "$SOURCE_RANGE"
  "${SOURCE_PORT_ARGS[@]}"
  --connect-rate "$CONNECT_RATE" --connect-concurrency "$CONNECT_CONCURRENCY"
  --server-pids "$pids_csv" --redis-pid "$REDIS_PID"
  --publish-url "http://127.0.0.1:${GW_MPORTS[0]}/v1/publish"
  --broadcast-users "$BCAST_USERS" --broadcast-batch "$BCAST_BATCH"
  --idle-secs "$IDLE_SECS" --ping-interval "$PING_INTERVAL"
  --latency-rate "$LATENCY_RATE" --latency-secs "$LATENCY_SECS"
  --storm-timeout "$STORM_TIMEOUT" --sample-ms "$SAMPLE_MS"
  --max-run-secs "$(remaining)" --report "$REPORT" --plot "$PLOT")
# The storm kills the last gateway (not the one whose publish API the broadcast used).
((STORM == 1)) && args+=(--kill-pid "${GW_PIDS[$((GATEWAYS - 1))]}")
log "chat4all-loadtest: $WORKERS worker processes, $SOURCE_IPS source addresses"
JWT_SECRET=$SECRET PUBLISH_API_KEY=$API_KEY "$LOADTEST_BIN" "${args[@]}" \
  --workers "$WORKERS" >"$RUN_DIR/summary.txt" &
LT_PID=$!
PIDS+=("$LT_PID")
echo "$LT_PID" >>"$RUN_DIR/pids"
lt_rc=0
wait "$LT_PID" || lt_rc=$?
cat "$RUN_DIR/summary.txt"
((lt_rc == 0)) || die "chat4all-loadtest exited with $lt_rc"

python3 - "$REPORT" "$GATEWAYS" "$GW_CAP" "$WORKERS" "$SOURCE_IPS" \
  "$(uname -r)" "$(nproc)" >"$TABLE" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1]))
gateways, cap, workers, ips, kernel, cpus = sys.argv[2:8]
c, cap_r = rep["connect"], rep["capacity"]
pc, con = cap_r["per_conn"], cap_r["connected"]
mib = lambda kb: f"{kb / 1024:,.0f} MiB"
rows = [
    ("connections", f"{c['established']:,} of {c['requested']:,} ({gateways} gateway processes, {workers} load-generator processes, {ips} source addresses)"),
    ("time to connect all", f"{c['duration_s']:.1f} s ({c['connects_per_s']:,.0f}/s), failures: {c['failures'] or 'none'}"),
    ("gateways RSS", f"{mib(con['gateways_rss_kb'])} ({pc['gateways_rss']:,.0f} B per connection)"),
    ("load generator RSS", f"{mib(con['workers_rss_kb'])} ({con['workers_rss_kb'] * 1024 / max(c['established'], 1):,.0f} B per connection all included; {pc['workers_rss']:,.0f} B grew while connecting, the slots are allocated up front)"),
    ("redis RSS / used_memory", f"{mib(con['redis_rss_kb'])} / {mib(con['redis_used_kb'])} ({cap_r['redis_bytes_per_user']:,.0f} B per user subscription)"),
    ("kernel slab (both ends)", f"{mib(con['slab_kb'])} ({pc['kernel_slab']:,.0f} B per connection pair)"),
    ("kernel TCP buffers", f"{mib(con['tcp_mem_kb'])} ({pc['kernel_tcp_mem']:,.0f} B per connection)"),
    ("total per connection", f"{pc['total']:,.0f} B"),
]
for label, key in (("descriptors per gateway, connected", "fds_connected"), ("descriptors per surviving gateway, after the storm", "fds_after_storm")):
    fds = cap_r.get(key) or []
    if fds:
        rows.append((label, f"min {min(fds):,} max {max(fds):,} of {int(cap) + 72:,} ({max(fds) * 100 / (int(cap) + 72):.1f}% of the open-files limit)"))
i = cap_r.get("idle")
if i:
    rows.append(("idle fleet CPU", f"{i['gateways_cores']:.3f} cores for the gateways over {i['secs']:.0f} s, {i['pongs']:,} pongs to {i['pings_sent']:,} pings every {i['ping_interval_s']:.0f} s ({i['gateways_us_per_ping']:.1f} µs each); redis {i['redis_cpu_ms']} ms, load generator {i['workers_cpu_ms']} ms"))
l = cap_r.get("latency")
if l:
    lat = l["latency"]
    d = l["deliveries"]
    rows.append(("latency to random users", f"{l['rate']:.0f}/s for {l['duration_s']:.0f} s: p50 {lat['p50_us']/1000:.2f} ms, p99 {lat['p99_us']/1000:.2f} ms, p99.9 {lat['p999_us']/1000:.2f} ms; {d['delivered']:,}/{d['published']:,} delivered"))
b = cap_r.get("broadcast")
if b:
    last = f"{b['last_delivery_ms']:.0f} ms" if b.get("last_delivery_ms") is not None else "n/a"
    rows.append(("broadcast", f"{b['users']:,} users in {b['requests']} requests of <= {b['batch']} ids: {b['delivered']:,}/{b['expected']:,} delivered, {b['lost']} lost, {b['duplicates']} duplicates; last delivery {last} after the first request (p50 {b['latency']['p50_us']/1000:.1f} ms, p99 {b['latency']['p99_us']/1000:.1f} ms)"))
s = cap_r.get("storm")
if s:
    fmt = lambda v: f"{v:,.0f} ms" if v is not None else "n/a"
    rows.append(("reconnect storm", f"{s['restart_cmd']}: {s['dropped']:,} dropped, {s['reconnected']:,} reconnected, {s['receiving']:,} receiving again ({'all back' if s['all_back'] else 'NOT all back'}); all reconnected {fmt(s['all_reconnected_ms'])}, all receiving {fmt(s['all_receiving_ms'])}; failed retries {s['retry_failures'] or 'none'}"))
print(f"# bench/million.sh, {rep['machine']['cpu_model']}, {cpus} CPUs, kernel {kernel}")
print()
print("| what | measured |")
print("|---|---|")
for k, v in rows:
    print(f"| {k} | {v} |")
if rep.get("warnings"):
    print()
    for w in rep["warnings"]:
        print(f"- warning: {w}")
PY
cat "$TABLE"
log "wrote $REPORT, $TABLE and $PLOT in $((SECONDS - STARTED)) s"
