#!/usr/bin/env bash
# Where the CPU of a delivery goes: chat4all against the floor, per thread and per system call
# (issue 12, "close the gap to the floor").
#
# For each system in SYSTEMS: a fresh redis-server and the system (chat4all with SHARDS=2, plain
# TCP and history off, as in bench/compare.sh), then `chat4all-loadtest fanout` at RATE PUBLISH/s
# to CONNS connections (one per user) for SECS s. Once the publishing phase runs (the load generator says
# "[fanout]"), for WINDOW s:
#   - `perf stat --per-thread` counts task-clock, context switches and system calls of every
#     thread of the system (software events and tracepoints only: this machine has no hardware
#     counters);
#   - then `perf record -g` samples task-clock for WINDOW s for a profile (user space vs kernel,
#     top symbols).
# Per 1,000 deliveries (the window's deliveries are taken as the phase's delivered rate x WINDOW),
# it prints CPU ms by thread, context switches and system calls by name. RATE=0 runs flat out
# (closed loop). Raw outputs go to bench/out/hops-<date>/.
#
# Usage: bench/hops.sh
#   SYSTEMS="chat4all floor" CONNS=10000 RATE=20000 SECS=14 WINDOW=4
#   PEERS_DIR=../shared/peers  CACHE_DIR=~/.cache/chat4all-bench  LOADTEST_BIN, GATEWAY_BIN
# Needs perf with tracepoints (linux-perf) and root (or perf_event_paranoid <= 1).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SYSTEMS=${SYSTEMS:-"chat4all floor"}
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers}
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/chat4all-bench}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CONNS=${CONNS:-10000}
RATE=${RATE:-20000}
SECS=${SECS:-14}
WINDOW=${WINDOW:-4}
SECRET="hops-secret-0123456789abcdef0123456789abcdef"
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$ROOT/bench/out/hops-$STAMP
STARTED=$SECONDS
PIDS=()
# The system calls on the delivery path of one or the other system.
CALLS="sendto sendmsg write writev read recvfrom recvmsg io_uring_enter epoll_wait epoll_pwait futex"

log() { printf '[hops %4ds] %s\n' "$((SECONDS - STARTED))" "$*" >&2; }

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.3
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_file_has() { # file pattern seconds
  local end=$((SECONDS + $3))
  until grep -q -- "$2" "$1" 2>/dev/null; do
    ((SECONDS < end)) || return 1
    sleep 0.05
  done
}

command -v perf >/dev/null || { log "perf is required (apt-get install linux-perf)"; exit 1; }
command -v redis-server >/dev/null || { log "redis-server is required"; exit 1; }
mkdir -p "$OUT"
if [[ -z ${LOADTEST_BIN:-} || -z ${GATEWAY_BIN:-} ]]; then
  log "building release binaries"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p chat4all-loadtest -p chat4all-gateway)
  LOADTEST_BIN=${LOADTEST_BIN:-$TARGET_DIR/release/chat4all-loadtest}
  GATEWAY_BIN=${GATEWAY_BIN:-$TARGET_DIR/release/chat4all-gateway}
fi
FLOOR_BIN=$CACHE_DIR/peers/floor/target/release/peer-floor
if [[ " $SYSTEMS " == *" floor "* && ! -x $FLOOR_BIN ]]; then
  log "building peer floor (its documented cargo build --release, in a writable copy)"
  mkdir -p "$CACHE_DIR/peers/floor"
  cp -R -p "$PEERS_DIR/floor/." "$CACHE_DIR/peers/floor/"
  chmod -R u+w "$CACHE_DIR/peers/floor"
  (cd "$CACHE_DIR/peers/floor" && CARGO_TARGET_DIR=$CACHE_DIR/peers/floor/target cargo build --release -q)
fi

events="task-clock,context-switches,raw_syscalls:sys_enter"
# Listed once: `perf list | grep -q` would fail under pipefail when grep stops reading early.
tracepoints=$(perf list 2>/dev/null || true)
for c in $CALLS; do
  [[ $tracepoints == *"syscalls:sys_enter_$c "* ]] && events+=",syscalls:sys_enter_$c"
done

for sys in $SYSTEMS; do
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/$sys-redis.log" 2>&1 </dev/null &
  redis_pid=$!
  PIDS+=("$redis_pid")
  wait_port "$redis_port" 10 || { log "redis-server did not start"; exit 1; }
  ws=$(free_port)
  mp=$(free_port)
  env=(WEBSOCKET_PORT="$ws" METRICS_PORT="$mp" BIND_HOST=127.0.0.1 METRICS_BIND_HOST=127.0.0.1
    REDIS_HOST=127.0.0.1 REDIS_PORT="$redis_port" JWT_SECRET="$SECRET" MAX_HANDSHAKES_PER_IP=0)
  case $sys in
    chat4all) env "${env[@]}" SHARDS=2 HISTORY_ENABLED=false "$GATEWAY_BIN" >"$OUT/$sys.log" 2>&1 </dev/null & ;;
    floor) env "${env[@]}" "$FLOOR_BIN" >"$OUT/$sys.log" 2>&1 </dev/null & ;;
    *) log "unknown system $sys"; exit 2 ;;
  esac
  pid=$!
  PIDS+=("$pid")
  wait_port "$ws" 20 || { log "$sys did not open its port"; exit 1; }
  log "$sys: fanout at $RATE/s to $CONNS connections for ${SECS}s"
  "$LOADTEST_BIN" fanout --conns "$CONNS" --connect-rate 0 --rate "$RATE" --duration "$SECS" \
    --url "ws://127.0.0.1:$ws/notifications" --jwt-secret "$SECRET" --redis "127.0.0.1:$redis_port" \
    --server-pid "$pid" --max-run-secs 240 --report "$OUT/$sys-fanout.json" \
    >"$OUT/$sys-fanout.txt" 2>"$OUT/$sys-fanout.err" &
  lt=$!
  PIDS+=("$lt")
  if ! wait_file_has "$OUT/$sys-fanout.err" "^\[fanout\]" 120; then
    log "$sys: the publishing phase did not start; see $OUT/$sys-fanout.err"
    exit 1
  fi
  # One second in, so the window is inside the steady state.
  sleep 1
  perf stat --per-thread -e "$events" -p "$pid" -o "$OUT/$sys-stat.txt" -- sleep "$WINDOW" 2>/dev/null
  perf record -q -e task-clock -g -p "$pid" -o "$OUT/$sys-perf.data" -- sleep "$WINDOW" 2>/dev/null
  wait "$lt" || log "$sys: the load generator failed: $(tail -1 "$OUT/$sys-fanout.err")"
  perf report -i "$OUT/$sys-perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -8 >"$OUT/$sys-dso.txt" || true
  perf report -i "$OUT/$sys-perf.data" --no-children --sort sym --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -80 >"$OUT/$sys-sym.txt" || true
  kill "$pid" "$redis_pid" 2>/dev/null || true
  wait "$pid" "$redis_pid" 2>/dev/null || true
done

python3 - "$OUT" "$SYSTEMS" "$RATE" "$WINDOW" <<'PY' | tee "$OUT/summary.md"
import json, os, re, sys
out, systems, rate, window = sys.argv[1], sys.argv[2].split(), float(sys.argv[3]), float(sys.argv[4])
what = f"{rate:,.0f}/s" if rate else "flat out"
print(f"Per 1,000 deliveries, {what} (window {window:.0f} s; deliveries in it = the phase's delivered rate x window).\n")
for s in systems:
    try:
        rep = json.load(open(os.path.join(out, f"{s}-fanout.json")))
        d = rep["fanout"]["deliveries"]
        per_s = rep["fanout"]["delivered_per_s"]
        verdict = f"{d['delivered']:,} of {d['published']:,} delivered, {d['lost']} lost, {per_s:,.0f}/s"
    except (OSError, ValueError, KeyError):
        print(f"### {s}: no load-generator report\n")
        continue
    per_k = per_s * window / 1000.0  # thousands of deliveries in the window
    threads, totals = {}, {}
    for line in open(os.path.join(out, f"{s}-stat.txt")):
        m = re.match(r"\s*(\S+)-(\d+)\s+([\d.,]+)\s+(?:msec\s+)?(\S+)", line)
        if not m:
            continue
        name, val, ev = m.group(1), float(m.group(3).replace(",", "")), m.group(4)
        threads.setdefault(name, {}).setdefault(ev, 0.0)
        threads[name][ev] += val
        totals[ev] = totals.get(ev, 0.0) + val
    print(f"### {s} ({verdict})\n")
    print("| thread | CPU ms | context switches | system calls |")
    print("|---|---|---|---|")
    for name, ev in sorted(threads.items(), key=lambda kv: -kv[1].get("task-clock", 0)):
        cpu = ev.get("task-clock", 0) / per_k
        if cpu < 0.005 and ev.get("raw_syscalls:sys_enter", 0) == 0:
            continue
        print(f"| {name} | {cpu:.2f} | {ev.get('context-switches', 0) / per_k:.0f} | "
              f"{ev.get('raw_syscalls:sys_enter', 0) / per_k:.0f} |")
    print(f"| **all** | **{totals.get('task-clock', 0) / per_k:.2f}** | "
          f"**{totals.get('context-switches', 0) / per_k:.0f}** | "
          f"**{totals.get('raw_syscalls:sys_enter', 0) / per_k:.0f}** |")
    calls = {k.split('sys_enter_')[1]: v / per_k for k, v in totals.items()
             if k.startswith("syscalls:sys_enter_") and v > 0}
    if calls:
        print("\nSystem calls per 1,000 deliveries: " +
              ", ".join(f"{k} {v:,.0f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])))
    try:
        dso = open(os.path.join(out, f"{s}-dso.txt")).read().strip()
        print("\nSamples by object (perf record -e task-clock):\n\n```\n" + dso + "\n```")
    except OSError:
        pass
    try:
        user = [l.rstrip() for l in open(os.path.join(out, f"{s}-sym.txt")) if "[.]" in l][:12]
        if user:
            print("\nTop user-space symbols (share of all samples):\n\n```\n" + "\n".join(user) + "\n```")
    except OSError:
        pass
    print()
PY
log "wrote $OUT/summary.md"
