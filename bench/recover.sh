#!/usr/bin/env bash
# Recovery of missed notifications, measured (issue 10): clients that track `offset`/`epoch` and
# reconnect with `since`, while notifications are published through the publish API and the
# gateway (or Redis) goes away in the middle.
#
# Modes:
#   redis     Redis mode; the gateway is killed (SIGKILL) and started again: every client must
#             come back with recovered:true and get every notification exactly once
#   single    no Redis; the gateway is killed and started again: a new epoch, every client told
#             recovered:false, each missing notification belongs to a client that was told
#   sentinel  a master, a replica and a Sentinel; the master is shut down and the replica
#             promoted: a new epoch (4002, then recovered:false), 0 gaps
# For each: `chat4all-loadtest recover` with CONNS clients (one per user) publishing RATE/s for
# SECS s, the restart a third of the way in; it reports published (answered 2xx), delivered,
# replayed, duplicates, lost with the client told, and gaps (lost without being told: must be 0).
#
# Usage: bench/recover.sh [redis|single|sentinel]      (default: all three in turn)
#   CONNS=5000 RATE=500 SECS=15 LOADTEST_BIN GATEWAY_BIN OUT_DIR=bench/out
# Every process it starts is stopped by PID; every wait has a deadline.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CONNS=${CONNS:-5000}
RATE=${RATE:-500}
SECS=${SECS:-15}
OUT_DIR=${OUT_DIR:-$ROOT/bench/out}
MODES=${*:-redis single sentinel}
SECRET="recover-$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
STAMP=$(date +%Y%m%d-%H%M%S)
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/chat4all-recover.XXXXXX")
STARTED=$SECONDS
PIDS=()

log() { printf '[recover %4ds] %s\n' "$((SECONDS - STARTED))" "$*" >&2; }

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [[ -f $RUN_DIR/gw.pid ]]; then kill -9 "$(cat "$RUN_DIR/gw.pid")" 2>/dev/null || true; fi
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_redis() { # port [args...]
  local port=$1
  shift
  mkdir -p "$RUN_DIR/redis-$port"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$RUN_DIR/redis-$port" \
    --loglevel warning "$@" >"$RUN_DIR/redis-$port.log" 2>&1 </dev/null &
  PIDS+=("$!")
  disown "$!"
  wait_for 10 redis-cli -p "$port" ping || { log "redis-server on $port did not start"; exit 1; }
}

if [[ -z ${LOADTEST_BIN:-} || -z ${GATEWAY_BIN:-} ]]; then
  log "building release binaries"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q -p chat4all-gateway -p chat4all-loadtest)
  LOADTEST_BIN=${LOADTEST_BIN:-$TARGET_DIR/release/chat4all-loadtest}
  GATEWAY_BIN=${GATEWAY_BIN:-$TARGET_DIR/release/chat4all-gateway}
fi
mkdir -p "$OUT_DIR"

# The restart commands the load generator runs: a gateway started again on the same ports with
# the same settings (written to $RUN_DIR/gw.env), or a Sentinel failover.
cat >"$RUN_DIR/start-gw.sh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
[[ -f $RUN_DIR/gw.pid ]] && kill -9 "\$(cat $RUN_DIR/gw.pid)" 2>/dev/null || true
while [[ -f $RUN_DIR/gw.pid ]] && kill -0 "\$(cat $RUN_DIR/gw.pid)" 2>/dev/null; do sleep 0.02; done
env \$(cat $RUN_DIR/gw.env) "$GATEWAY_BIN" >>"$RUN_DIR/gw.log" 2>&1 </dev/null &
echo \$! >$RUN_DIR/gw.pid
. $RUN_DIR/ports.env
for _ in \$(seq 1 400); do
  curl -sf "http://127.0.0.1:\$CTL/healthz" >/dev/null && exit 0
  sleep 0.05
done
exit 1
EOF
cat >"$RUN_DIR/failover.sh" <<EOF
#!/usr/bin/env bash
. $RUN_DIR/ports.env
redis-cli -p "\$MASTER" shutdown nosave >/dev/null 2>&1 || true
for _ in \$(seq 1 600); do
  [[ \$(redis-cli -p "\$SENTINEL" sentinel get-master-addr-by-name mymaster | tail -1) == "\$REPLICA" ]] && exit 0
  sleep 0.1
done
exit 1
EOF
chmod +x "$RUN_DIR/start-gw.sh" "$RUN_DIR/failover.sh"

for mode in $MODES; do
  ws=$(free_port)
  ctl=$(free_port)
  common="JWT_SECRET=$SECRET WEBSOCKET_PORT=$ws METRICS_PORT=$ctl BIND_HOST=127.0.0.1 SHARDS=2"
  common+=" MAX_HANDSHAKES_PER_IP=0 RUST_LOG=warn"
  restart=$RUN_DIR/start-gw.sh
  case $mode in
    redis)
      rp=$(free_port)
      start_redis "$rp"
      echo "$common REDIS_HOST=127.0.0.1 REDIS_PORT=$rp" >"$RUN_DIR/gw.env"
      ;;
    single) echo "$common" >"$RUN_DIR/gw.env" ;;
    sentinel)
      master=$(free_port)
      replica=$(free_port)
      sentinel=$(free_port)
      start_redis "$master"
      start_redis "$replica" --replicaof 127.0.0.1 "$master"
      printf 'port %s\nbind 127.0.0.1\ndaemonize no\nlogfile ""\nloglevel warning\nsentinel monitor mymaster 127.0.0.1 %s 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n' \
        "$sentinel" "$master" >"$RUN_DIR/sentinel.conf"
      redis-sentinel "$RUN_DIR/sentinel.conf" >"$RUN_DIR/sentinel.log" 2>&1 </dev/null &
      PIDS+=("$!")
      disown "$!"
      echo "MASTER=$master REPLICA=$replica SENTINEL=$sentinel" >"$RUN_DIR/ports.env.sentinel"
      replica_up() { redis-cli -p "$replica" info replication | grep -q master_link_status:up; }
      wait_for 30 replica_up || { log "the replica did not sync"; exit 1; }
      wait_for 10 redis-cli -p "$sentinel" sentinel get-master-addr-by-name mymaster ||
        { log "the Sentinel did not start"; exit 1; }
      echo "$common REDIS_SENTINELS=127.0.0.1:$sentinel REDIS_MASTER_NAME=mymaster" >"$RUN_DIR/gw.env"
      restart=$RUN_DIR/failover.sh
      ;;
    *) log "unknown mode $mode (redis, single or sentinel)"; exit 2 ;;
  esac
  {
    echo "CTL=$ctl"
    if [[ -f $RUN_DIR/ports.env.sentinel ]]; then tr ' ' '\n' <"$RUN_DIR/ports.env.sentinel"; fi
  } >"$RUN_DIR/ports.env"
  rm -f "$RUN_DIR/ports.env.sentinel"
  "$RUN_DIR/start-gw.sh" || { log "the gateway did not start: $(tail -3 "$RUN_DIR/gw.log")"; exit 1; }
  if [[ $mode != single ]]; then
    wait_for 20 curl -sf "http://127.0.0.1:$ctl/readyz" || { log "the gateway is not ready"; exit 1; }
  fi
  log "$mode: $CONNS clients, $RATE/s for ${SECS}s, restart: $(basename "$restart")"
  report=$OUT_DIR/recover-$mode-$STAMP
  "$LOADTEST_BIN" recover --url "ws://127.0.0.1:$ws/notifications" --jwt-secret "$SECRET" \
    --conns "$CONNS" --connect-rate 0 --connect-concurrency 256 \
    --publish-url "http://127.0.0.1:$ctl/v1/publish" --restart-cmd "$restart" \
    --rate "$RATE" --duration "$SECS" --max-run-secs 300 \
    --report "$report.json" >"$report.txt" 2>"$RUN_DIR/loadtest-$mode.err" ||
    log "$mode: the load generator failed: $(tail -1 "$RUN_DIR/loadtest-$mode.err")"
  python3 - "$report.json" "$mode" <<'PY' | tee -a "$OUT_DIR/recover-$STAMP.md"
import json, sys
r = json.load(open(sys.argv[1])); rec = r["recovery"]; d = rec["phase"]["deliveries"]
c = rec["counts"]
# published (answered 2xx) | delivered | replayed | duplicates | lost, client told | lost, not
# told (gaps: must be 0) | reconnects asking | recovered true / false | restart at, exit
print(f"| {sys.argv[2]} | {d['published']:,} | {d['delivered']:,} | {c['replayed']:,} | "
      f"{d['duplicates']} | {c['lost_resync']:,} | {c['lost_unexplained']} | {c['asked']:,} | "
      f"{c['recovered_true']:,} / {c['recovered_false']:,} | {rec['restart_at_s']:.1f} s, exit {rec['restart_cmd_exit']} |")
for w in r.get("warnings", []):
    print(f"| warning: {w} |")
PY
  if [[ -f $RUN_DIR/gw.pid ]]; then kill -9 "$(cat "$RUN_DIR/gw.pid")" 2>/dev/null || true; fi
  rm -f "$RUN_DIR/gw.pid"
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  PIDS=()
done
log "wrote $OUT_DIR/recover-$STAMP.md (reports: $OUT_DIR/recover-<mode>-$STAMP.json)"
