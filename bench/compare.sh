#!/usr/bin/env bash
# Side-by-side capacity benchmark of chat4all-gateway and the peer gateways, one command, with the
# floor peer (the least-work implementation of the protocol) as the reference for ratios.
#
# Starts a private redis-server, then each system in turn on free loopback ports, and runs the same
# chat4all-loadtest scenarios against each:
#   - idle, 10,000 connections as fast as they open: connect rate, server RSS per idle connection
#   - idle, 19,500 connections (the most the 20,000-descriptor cap allows): RSS per connection
#   - fanout at 20,000 PUBLISH/s to 10,000 connections: p50/p99, loss, server CPU per 1,000 deliveries
#   - fanout closed loop ("flat out") to 10,000 connections: delivered msg/s
# and writes one markdown table (with ratios of ours to the best peer, and of every system to the
# floor: CPU per delivery at RATE/s and flat out, RSS per idle connection) to stdout and to
# bench/out/compare-<date>.md, with the machine and versions (raw JSON reports beside it, in
# bench/out/compare-<date>/). Stops everything it started.
#
# Usage: bench/compare.sh            (about 6-8 minutes; bounded by MAX_TOTAL_SECS)
# Environment (all optional):
#   SYSTEMS="chat4all floor rust-tokio node-ws uws"   which systems, in order; "baseline" adds
#                                               BASELINE_BIN, an earlier build of this gateway run
#                                               the same way (e.g. to show no regression)
#   PEERS_DIR=../shared/peers                   peer sources (copied, never written)
#   CACHE_DIR=~/.cache/chat4all-bench           writable peer copies and their builds (outside this
#                                               workspace, which cargo would otherwise take them for)
#   LOADTEST_BIN, GATEWAY_BIN                   prebuilt binaries (else built with cargo --release)
#   CONNS=10000 CONNS_MAX=19500 RATE=20000 SECS=10 HOLD_SECS=5 MAX_TOTAL_SECS=1140
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SYSTEMS=${SYSTEMS:-"chat4all floor rust-tokio node-ws uws"}
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers}
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/chat4all-bench}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CONNS=${CONNS:-10000}
CONNS_MAX=${CONNS_MAX:-19500}
RATE=${RATE:-20000}
SECS=${SECS:-10}
HOLD_SECS=${HOLD_SECS:-5}
MAX_TOTAL_SECS=${MAX_TOTAL_SECS:-1140}
SECRET="compare-secret-0123456789abcdef0123456789abcdef"
STAMP=$(date +%Y%m%d-%H%M%S)
OUT_DIR=$ROOT/bench/out
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/chat4all-compare.XXXXXX")
STARTED=$SECONDS
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
PIDS=()

log() { printf '[compare %4ds] %s\n' "$((SECONDS - STARTED))" "$*" >&2; }

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  sleep 0.3
  for pid in "${PIDS[@]}"; do
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stops the whole script once the time budget is spent (checked between runs).
budget() {
  if ((SECONDS - STARTED > MAX_TOTAL_SECS)); then
    log "time budget of ${MAX_TOTAL_SECS}s spent; stopping"
    return 1
  fi
}

# ---------------------------------------------------------------------------------------------
# Binaries and peers

build_ours() {
  if [[ -z ${LOADTEST_BIN:-} ]]; then
    log "building chat4all-loadtest"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p chat4all-loadtest)
    LOADTEST_BIN=$TARGET_DIR/release/chat4all-loadtest
  fi
  if [[ -z ${GATEWAY_BIN:-} ]] && [[ " $SYSTEMS " == *" chat4all "* ]]; then
    log "building chat4all-gateway"
    if (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p chat4all-gateway); then
      GATEWAY_BIN=$TARGET_DIR/release/chat4all-gateway
    else
      log "chat4all-gateway does not build; it is skipped"
      GATEWAY_BIN=
    fi
  fi
}

# Copies a peer into the cache (if its sources changed) and installs or builds it there.
prepare_peer() { # name
  local src=$PEERS_DIR/$1 dst=$CACHE_DIR/peers/$1
  [[ -d $src ]] || { log "peer $1 not found in $PEERS_DIR"; return 1; }
  mkdir -p "$dst"
  # -p keeps the sources' times, so an unchanged peer is not rebuilt.
  cp -R -p "$src/." "$dst/"
  chmod -R u+w "$dst"
  case $1 in
    rust-tokio)
      [[ -x $dst/target/release/peer-rust-tokio ]] || log "building peer rust-tokio (a few minutes)"
      (cd "$dst" && CARGO_TARGET_DIR=$dst/target cargo build --release -q)
      ;;
    floor)
      # Its documented build, in the writable copy (never in shared/ or this repository).
      [[ -x $dst/target/release/peer-floor ]] || log "building peer floor"
      (cd "$dst" && CARGO_TARGET_DIR=$dst/target cargo build --release -q)
      ;;
    node-ws | uws)
      if [[ ! -d $dst/node_modules ]]; then
        log "npm install for peer $1"
        (cd "$dst" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
      fi
      ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# Processes

REDIS_PORT=
REDIS_PID=
start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    >"$RUN_DIR/redis.log" 2>&1 </dev/null &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  wait_port "$REDIS_PORT" 10 || { log "redis-server did not start"; exit 1; }
}

# Whether the target has subscribed to Redis (SUBSCRIBE or PSUBSCRIBE).
subscribed() {
  redis-cli -p "$REDIS_PORT" CLIENT LIST 2>/dev/null | grep -Eq ' (sub|psub)=[1-9]'
}

SYS_PID=
SYS_PORT=
start_system() { # name
  local ws mp dir
  ws=$(free_port)
  mp=$(free_port)
  dir=$CACHE_DIR/peers/$1
  # The internal port is bound to loopback explicitly: the gateway refuses a non-loopback
  # internal bind without PUBLISH_API_KEY (nothing here uses the publish API). The load
  # generator opens thousands of handshakes at once from a handful of loopback addresses, so the
  # gateway's per-address handshake cap (a slow-loris guard) is lifted; peers ignore the variable.
  local -a env=(WEBSOCKET_PORT="$ws" METRICS_PORT="$mp" BIND_HOST=127.0.0.1
    METRICS_BIND_HOST=127.0.0.1 REDIS_HOST=127.0.0.1 REDIS_PORT="$REDIS_PORT" JWT_SECRET="$SECRET"
    MAX_HANDSHAKES_PER_IP=0)
  case $1 in
    # Issue 12's goals are for 2 shards, plain TCP and history off (the peers keep no history).
    chat4all) env "${env[@]}" SHARDS=2 HISTORY_ENABLED=false "$GATEWAY_BIN" >"$RUN_DIR/$1.log" 2>&1 </dev/null & ;;
    # An earlier build of this gateway (BASELINE_BIN), run the same way: "no regression" claims.
    baseline) env "${env[@]}" SHARDS=2 HISTORY_ENABLED=false "$BASELINE_BIN" >"$RUN_DIR/$1.log" 2>&1 </dev/null & ;;
    floor) env "${env[@]}" "$dir/target/release/peer-floor" >"$RUN_DIR/$1.log" 2>&1 </dev/null & ;;
    rust-tokio) env "${env[@]}" "$dir/target/release/peer-rust-tokio" >"$RUN_DIR/$1.log" 2>&1 </dev/null & ;;
    node-ws | uws) env "${env[@]}" node "$dir/gateway.js" >"$RUN_DIR/$1.log" 2>&1 </dev/null & ;;
  esac
  SYS_PID=$!
  SYS_PORT=$ws
  PIDS+=("$SYS_PID")
  if ! wait_port "$ws" 20; then
    log "$1 did not open its port; log:"
    tail -5 "$RUN_DIR/$1.log" >&2
    return 1
  fi
  local end=$((SECONDS + 10))
  until subscribed; do
    ((SECONDS < end)) || { log "$1 did not subscribe to Redis"; break; }
    sleep 0.05
  done
}

stop_system() {
  kill "$SYS_PID" 2>/dev/null || true
  local end=$((SECONDS + 10))
  while kill -0 "$SYS_PID" 2>/dev/null && ((SECONDS < end)); do sleep 0.05; done
  kill -9 "$SYS_PID" 2>/dev/null || true
  wait "$SYS_PID" 2>/dev/null || true
  # Let TIME_WAIT and orphaned sockets of the last run settle a little.
  sleep 1
}

loadtest() { # system tag scenario args...
  local sys=$1 tag=$2
  shift 2
  log "$sys: $tag"
  if ! "$LOADTEST_BIN" "$@" --url "ws://127.0.0.1:$SYS_PORT/notifications" --jwt-secret "$SECRET" \
    --redis "127.0.0.1:$REDIS_PORT" --server-pid "$SYS_PID" --max-run-secs 240 \
    --report "$RUN_DIR/$sys-$tag.json" >"$RUN_DIR/$sys-$tag.txt" 2>"$RUN_DIR/$sys-$tag.err"; then
    log "$sys: $tag failed: $(tail -1 "$RUN_DIR/$sys-$tag.err")"
  fi
}

bench_system() { # name
  local sys=$1
  budget || return 1
  start_system "$sys" || return 0
  loadtest "$sys" idle10k idle --conns "$CONNS" --connect-rate 0 --hold "$HOLD_SECS"
  stop_system
  budget || return 1
  start_system "$sys" || return 0
  loadtest "$sys" idlemax idle --conns "$CONNS_MAX" --connect-rate 0 --hold "$HOLD_SECS" --no-verify
  stop_system
  budget || return 1
  start_system "$sys" || return 0
  loadtest "$sys" rate fanout --conns "$CONNS" --connect-rate 0 --rate "$RATE" --duration "$SECS"
  loadtest "$sys" flat fanout --conns "$CONNS" --connect-rate 0 --rate 0 --duration "$SECS"
  stop_system
}

# ---------------------------------------------------------------------------------------------
# Table

versions() {
  local v
  echo "- kernel $(uname -r), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "- load average before the run: $LOAD_BEFORE (other work on the machine skews every number)"
  echo "- $(rustc --version 2>/dev/null || echo 'rustc ?'), node $(node --version 2>/dev/null || echo '?'), $(redis-server --version | cut -d' ' -f1-3)"
  v=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo "uncommitted")
  echo "- chat4all-gateway at $v; chat4all-loadtest $("$LOADTEST_BIN" --version | cut -d' ' -f2)"
  for p in ws ioredis @trufflesuite/uws-js-unofficial; do
    for d in node-ws uws; do
      local pj=$CACHE_DIR/peers/$d/node_modules/$p/package.json
      if [[ -f $pj ]]; then
        echo "- $d: $p $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$pj")"
      fi
    done
  done
  echo "- peer rust-tokio: tokio-tungstenite 0.30, tokio 1.54 (see peers/rust-tokio/Cargo.toml)"
  echo "- peer floor: one thread, mio/epoll, one write() per delivery (see peers/floor/README.md); the reference for the ratios"
}

table() {
  python3 - "$RUN_DIR" "$SYSTEMS" "$CONNS" "$CONNS_MAX" "$RATE" <<'PY'
import json, os, sys
run_dir, systems, conns, conns_max, rate = sys.argv[1], sys.argv[2].split(), *sys.argv[3:]

def load(sys_, tag):
    try:
        with open(os.path.join(run_dir, f"{sys_}-{tag}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def get(r, *path):
    for p in path:
        if r is None:
            return None
        r = r.get(p) if isinstance(r, dict) else None
    return r

rows = {}
for s in systems:
    i10, imax, rt, fl = load(s, "idle10k"), load(s, "idlemax"), load(s, "rate"), load(s, "flat")
    def rss(r):
        v = get(r, "idle", "per_conn", "server_rss_bytes")
        est = get(r, "connect", "established")
        return v / 1024 if v is not None and est else None
    def loss(r):
        d = get(r, "fanout", "deliveries")
        return d["lost"] / d["published"] if d and d["published"] else None
    if not get(rt, "fanout", "deliveries", "delivered"):
        rt = None  # nothing delivered: no latency or CPU per delivery to show
    rows[s] = {
        "connects/s": get(i10, "connect", "connects_per_s"),
        f"RSS KiB/conn @{conns}": rss(i10),
        f"RSS KiB/conn @{conns_max}": rss(imax),
        "flat out msg/s": get(fl, "fanout", "delivered_per_s"),
        f"p50 ms @{rate}/s": (get(rt, "fanout", "latency", "p50_us") or 0) / 1000 if rt else None,
        f"p99 ms @{rate}/s": (get(rt, "fanout", "latency", "p99_us") or 0) / 1000 if rt else None,
        f"loss @{rate}/s": loss(load(s, "rate")),
        "server CPU ms/1k": get(rt, "fanout", "server_cpu_ms_per_1k"),
        "server CPU ms/1k flat": get(fl, "fanout", "server_cpu_ms_per_1k") if get(fl, "fanout", "deliveries", "delivered") else None,
        "harness CPU ms/1k": get(rt, "fanout", "harness_cpu_ms_per_1k"),
    }
    est = get(imax, "connect", "established")
    if imax and est != int(conns_max):
        rows[s][f"RSS KiB/conn @{conns_max}"] = None
        rows[s]["note"] = f"{est} of {conns_max} connected"

higher = {"connects/s", "flat out msg/s"}
cols = [c for c in next(iter(rows.values())).keys() if c != "note"]

def fmt(c, v):
    if v is None:
        return "fail"
    if c.startswith("loss"):
        return f"{v * 100:.3f}%"
    if c in higher:
        return f"{v:,.0f}"
    return f"{v:.2f}"

print("| system | " + " | ".join(cols) + " |")
print("|---|" + "---|" * len(cols))
for s, r in rows.items():
    note = f" ({r['note']})" if "note" in r else ""
    print(f"| {s}{note} | " + " | ".join(fmt(c, r[c]) for c in cols) + " |")
peers = [s for s in rows if s not in ("chat4all", "floor", "baseline")]
if "chat4all" in rows and peers:
    cells = []
    for c in cols:
        ours = rows["chat4all"][c]
        vals = [rows[p][c] for p in peers if rows[p][c] is not None]
        if not ours or not vals or c.startswith("loss") or c.startswith("harness"):
            cells.append("")
            continue
        best = max(vals) if c in higher else min(vals)
        if best == 0:
            cells.append("")
            continue
        ratio = ours / best if c in higher else best / ours
        cells.append(f"{ratio:.2f}x")
    print("| **ours vs best peer** (>1 = better) | " + " | ".join(cells) + " |")

# Ratios to the floor (issue 12): lower is better, 1.00 = as cheap as the least-work gateway.
goals = {"server CPU ms/1k": 1.15, "server CPU ms/1k flat": 1.15,
         f"RSS KiB/conn @{conns}": 1.5, f"RSS KiB/conn @{conns_max}": 1.5}
if "floor" in rows:
    fl = rows["floor"]
    print()
    print("Ratio to the floor (system / floor; lower is better):")
    print()
    print("| system | " + " | ".join(goals) + " |")
    print("|---|" + "---|" * len(goals))
    for s, r in rows.items():
        if s == "floor":
            continue
        cells = []
        for c, goal in goals.items():
            if r[c] is None or not fl[c]:
                cells.append("n/a")
                continue
            ratio = r[c] / fl[c]
            mark = " (goal <= %.2fx: %s)" % (goal, "met" if ratio <= goal else "missed") if s == "chat4all" else ""
            cells.append(f"{ratio:.2f}x{mark}")
        print(f"| {s} | " + " | ".join(cells) + " |")
PY
}

# ---------------------------------------------------------------------------------------------

command -v redis-server >/dev/null || { log "redis-server is required (apt-get install redis-server)"; exit 1; }
build_ours
mkdir -p "$CACHE_DIR/peers" "$OUT_DIR"
selected=()
for s in $SYSTEMS; do
  if [[ $s == chat4all ]]; then
    [[ -n ${GATEWAY_BIN:-} ]] && selected+=("$s")
  elif [[ $s == baseline ]]; then
    if [[ -x ${BASELINE_BIN:-} ]]; then selected+=("$s"); else log "baseline needs BASELINE_BIN"; fi
  elif prepare_peer "$s"; then
    selected+=("$s")
  fi
done
start_redis
for s in "${selected[@]}"; do
  bench_system "$s" || break
done

report=$OUT_DIR/compare-$STAMP.md
{
  echo "# chat4all-gateway vs peers, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Command: \`bench/compare.sh\` (SYSTEMS=\"$SYSTEMS\" CONNS=$CONNS CONNS_MAX=$CONNS_MAX RATE=$RATE SECS=$SECS HOLD_SECS=$HOLD_SECS)"
  echo
  table
  echo
  echo "connects/s: authenticated upgrades per second, 128 handshakes in flight. RSS per idle connection: server"
  echo "RSS growth from before connecting, divided by connections. p50/p99: PUBLISH to client read, $RATE PUBLISH/s"
  echo "to $CONNS connections (one per user) for ${SECS}s. Flat out: closed loop with 4,000 deliveries in flight."
  echo "CPU ms/1k: server (or harness, all worker processes) CPU time per 1,000 deliveries at $RATE/s;"
  echo "\"flat\": the same in the closed-loop run. chat4all runs with SHARDS=2, plain TCP, history off."
  echo "Harness and server share the machine's cores. Loopback only."
  echo
  echo "Machine and versions:"
  versions
  echo
  echo "Raw reports: bench/out/compare-$STAMP/ (one JSON and one summary per run)."
} | tee "$report"
mkdir -p "$OUT_DIR/compare-$STAMP"
cp "$RUN_DIR"/*.json "$RUN_DIR"/*.txt "$OUT_DIR/compare-$STAMP/" 2>/dev/null || true
log "wrote $report in $((SECONDS - STARTED)) s"
