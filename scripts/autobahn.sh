#!/usr/bin/env bash
# Run the Autobahn|Testsuite (`wstest -m fuzzingclient`) against a WebSocket echo server and
# fail if any case is FAILED.
#
# Usage: scripts/autobahn.sh [--cases "1.*,2.*,..."] [--exclude "9.7.*,..."]
#                            [--url ws://127.0.0.1:PORT/] [--out DIR] [--timeout SECS]
#                            [--profile release|dev]
#
#   --cases    comma-separated case patterns (default: 1.*,2.*,3.*,4.*,5.*,6.*,7.*,10.*).
#              Section 9 (limits/performance) only runs when asked for, e.g. --cases "9.*":
#              it takes minutes on a 2-core machine.
#   --exclude  extra case patterns to skip. Sections 12 and 13 (permessage-deflate) are
#              ALWAYS excluded: the gateway does not negotiate compression.
#   --url      server under test. Without it the script builds and starts
#              `cargo run --release --example autobahn_echo -- --port PORT` on a free port,
#              waits (with a deadline) for it to print its ws://127.0.0.1:PORT/ line, and
#              stops it by PID on exit.
#   --out      output dir (default: target/autobahn): spec.json, wstest.log, server.log,
#              report/ (wstest's index.json/index.html and per-case reports), summary.txt.
#   --timeout  overall wstest timeout in seconds (default: 1800).
#   --profile  cargo profile the example is built with (default: release, as the documented
#              command; CI uses dev, which reuses the test build and skips a release build:
#              conformance does not depend on optimisation, only section 9's timing does).
#
# Environment:
#   AUTOBAHN_VENV        Python 2.7 virtualenv to create/reuse (default: target/autobahn-venv)
#   AUTOBAHN_PYTHON2     Python 2.7 interpreter to use (default: newest
#                        ${PYENV_ROOT:-~/.pyenv}/versions/2.7.*, else python2.7 on PATH)
#   AUTOBAHN_AGENT       agent name in the reports (default: chat4all-gateway)
#   AUTOBAHN_SERVER_CMD  command that starts the server; `--port PORT` is appended (default:
#                        the cargo example above, built first with `cargo build`)
#   AUTOBAHN_SERVER_WAIT seconds to wait for the server's URL line (default: 60)
#
# wstest is Python 2.7 code: the virtualenv is made with virtualenv 20.21.1 (the last release
# that can create 2.7 environments), installed by python3's pip into <venv>.bootstrap, and gets
# the exact pins of scripts/autobahn/requirements.txt. The summary is parsed with python3.
#
# Exit status: 0 no case FAILED; 1 a case FAILED, no case ran, or an error; 2 usage error;
# 3 skipped because no Python 2.7 interpreter was found ("autobahn: SKIPPED: ...").
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)
requirements="$script_dir/autobahn/requirements.txt"

cases='1.*,2.*,3.*,4.*,5.*,6.*,7.*,10.*'
always_exclude='12.*,13.*'
extra_exclude=''
url=''
out="$repo_root/target/autobahn"
timeout_secs=1800
profile=release
venv="${AUTOBAHN_VENV:-$repo_root/target/autobahn-venv}"
agent="${AUTOBAHN_AGENT:-chat4all-gateway}"
server_wait="${AUTOBAHN_SERVER_WAIT:-60}"
virtualenv_pins=(virtualenv==20.21.1 distlib==0.3.8 filelock==3.12.2 platformdirs==3.11.0)

log() { printf 'autobahn: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; }

while (($#)); do
  case "$1" in
    --cases) cases="${2:?--cases needs a value}"; shift 2 ;;
    --cases=*) cases="${1#*=}"; shift ;;
    --exclude) extra_exclude="${2:?--exclude needs a value}"; shift 2 ;;
    --exclude=*) extra_exclude="${1#*=}"; shift ;;
    --url) url="${2:?--url needs a value}"; shift 2 ;;
    --url=*) url="${1#*=}"; shift ;;
    --out) out="${2:?--out needs a value}"; shift 2 ;;
    --out=*) out="${1#*=}"; shift ;;
    --timeout) timeout_secs="${2:?--timeout needs a value}"; shift 2 ;;
    --timeout=*) timeout_secs="${1#*=}"; shift ;;
    --profile) profile="${2:?--profile needs a value}"; shift 2 ;;
    --profile=*) profile="${1#*=}"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) log "unknown argument: $1 (see --help)"; exit 2 ;;
  esac
done
[[ "$timeout_secs" =~ ^[1-9][0-9]*$ ]] || { log "--timeout must be a positive integer"; exit 2; }
[[ "$profile" == release || "$profile" == dev ]] || { log "--profile must be release or dev"; exit 2; }
[[ "$server_wait" =~ ^[1-9][0-9]*$ ]] || { log "AUTOBAHN_SERVER_WAIT must be a positive integer"; exit 2; }
[[ -z "$url" || "$url" =~ ^wss?:// ]] || { log "--url must start with ws:// or wss://"; exit 2; }
command -v python3 >/dev/null || die "python3 is needed (virtualenv bootstrap and report parsing)"

# --- Python 2.7 ----------------------------------------------------------------------------
is_py27() { [[ -x "$1" ]] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; }

find_python27() {
  local cand
  if [[ -n "${AUTOBAHN_PYTHON2:-}" ]]; then
    is_py27 "$AUTOBAHN_PYTHON2" && { echo "$AUTOBAHN_PYTHON2"; return 0; }
    return 1
  fi
  # Newest pyenv 2.7.x first (the `python2.7` pyenv shim fails when no 2.7 is installed).
  while IFS= read -r cand; do
    is_py27 "$cand" && { echo "$cand"; return 0; }
  done < <(printf '%s\n' "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7.*/bin/python | sort -rV)
  cand=$(command -v python2.7 || true)
  [[ -n "$cand" ]] && is_py27 "$cand" && { echo "$cand"; return 0; }
  return 1
}

if ! python2=$(find_python27); then
  echo "autobahn: SKIPPED: no Python 2.7 interpreter (AUTOBAHN_PYTHON2='${AUTOBAHN_PYTHON2:-}'," \
    "${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.*, python2.7 on PATH); wstest needs Python 2.7"
  exit 3
fi

# --- virtualenv ----------------------------------------------------------------------------
# Reused while the interpreter and requirements.txt are unchanged (stamp file).
stamp_want="$(readlink -f "$python2") $(sha256sum "$requirements" | cut -d' ' -f1)"
stamp_file="$venv/.autobahn-stamp"
if [[ -x "$venv/bin/wstest" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp_want" ]]; then
  log "reusing virtualenv $venv"
else
  setup_start=$SECONDS
  if [[ -e "$venv" ]]; then
    [[ -f "$venv/pyvenv.cfg" ]] || die "$venv exists and is not a virtualenv; remove it or set AUTOBAHN_VENV"
    log "recreating virtualenv $venv (interpreter or requirements changed)"
    rm -rf -- "$venv"
  fi
  bootstrap="$venv.bootstrap"
  # Check the version: a newer virtualenv elsewhere on python3's path cannot make 2.7 venvs.
  if ! PYTHONPATH="$bootstrap" python3 -c \
    "import sys, virtualenv; sys.exit(virtualenv.__version__ != '${virtualenv_pins[0]#*==}')" 2>/dev/null; then
    log "installing ${virtualenv_pins[*]} into $bootstrap"
    rm -rf -- "$bootstrap"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
      --no-warn-script-location \
      --target "$bootstrap" "${virtualenv_pins[@]}"
  fi
  log "creating Python 2.7 virtualenv $venv with $python2"
  PYTHONPATH="$bootstrap" python3 -m virtualenv --quiet --no-periodic-update \
    --app-data "$bootstrap/app-data" -p "$python2" "$venv"
  log "installing $requirements"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-python-version-warning --no-deps -r "$requirements"
  "$venv/bin/wstest" --autobahnversion >/dev/null || die "wstest does not start in $venv"
  printf '%s\n' "$stamp_want" >"$stamp_file"
  log "virtualenv ready in $((SECONDS - setup_start))s"
fi

# --- server under test ---------------------------------------------------------------------
mkdir -p "$out"
out=$(cd "$out" && pwd)
report_dir="$out/report"
server_pid=''
wstest_pid=''

stop_server() {
  [[ -n "$server_pid" ]] || return 0
  if kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while kill -0 "$server_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  wait "$server_pid" 2>/dev/null || true
  server_pid=''
}
# shellcheck disable=SC2317 # only called from the EXIT trap
cleanup() {
  # `timeout` runs wstest in its own process group, so a signal to this script does not reach
  # it: stop it explicitly (timeout passes the TERM on to wstest).
  if [[ -n "$wstest_pid" ]]; then
    kill -TERM "$wstest_pid" 2>/dev/null || true
    wait "$wstest_pid" 2>/dev/null || true
  fi
  stop_server
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z "$url" ]]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if [[ -n "${AUTOBAHN_SERVER_CMD:-}" ]]; then
    read -r -a server_cmd <<<"$AUTOBAHN_SERVER_CMD"
  else
    log "building the autobahn_echo example ($profile profile)"
    (cd "$repo_root" && cargo build --profile "$profile" --example autobahn_echo) ||
      die "cargo build --profile $profile --example autobahn_echo failed"
    server_cmd=(cargo run --quiet --profile "$profile" --example autobahn_echo --)
  fi
  log "starting ${server_cmd[*]} --port $port (log: $out/server.log)"
  # `cargo run` execs the example on Unix, so this PID is the server's own.
  (cd "$repo_root" && exec "${server_cmd[@]}" --port "$port") >"$out/server.log" 2>&1 &
  server_pid=$!
  deadline=$((SECONDS + server_wait + 1)) # SECONDS ticks in whole seconds: wait at least that
  until url=$(grep -o -m1 "ws://127\.0\.0\.1:$port/[^[:space:]]*" "$out/server.log"); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      tail -n 20 "$out/server.log" >&2 || true
      die "server exited before printing ws://127.0.0.1:$port/"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$out/server.log" >&2 || true
      die "server did not print ws://127.0.0.1:$port/ within ${server_wait}s"
    fi
    sleep 0.1
  done
  log "server is up at $url (pid $server_pid)"
fi

# --- run the suite -------------------------------------------------------------------------
rm -rf -- "$report_dir"
rm -f -- "$out/summary.txt" "$out/wstest.log"
spec="$out/spec.json"
python3 - "$spec" "$agent" "$url" "$cases" "$always_exclude,$extra_exclude" "$report_dir" <<'PY'
import json, sys
path, agent, url, cases, exclude, outdir = sys.argv[1:]
split = lambda s: [p.strip() for p in s.split(",") if p.strip()]
spec = {
    "outdir": outdir,
    "servers": [{"agent": agent, "url": url}],
    "cases": split(cases),
    "exclude-cases": split(exclude),
    "exclude-agent-cases": {},
}
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
    f.write("\n")
PY

log "running wstest fuzzingclient against $url: cases [$cases], excluded [$always_exclude${extra_exclude:+,$extra_exclude}] (timeout ${timeout_secs}s, log: $out/wstest.log)"
run_start=$SECONDS
(cd "$out" && exec timeout -k 10 "$timeout_secs" "$venv/bin/wstest" -m fuzzingclient -s "$spec") \
  >"$out/wstest.log" 2>&1 &
wstest_pid=$!
rc=0
wait "$wstest_pid" || rc=$? # in the background so that INT/TERM traps run at once
wstest_pid=''
run_secs=$((SECONDS - run_start))
if ((rc == 124 || rc == 137)); then
  die "wstest timed out after ${timeout_secs}s (see $out/wstest.log)"
elif ((rc != 0)); then
  tail -n 20 "$out/wstest.log" >&2 || true
  die "wstest exited with status $rc (see $out/wstest.log)"
fi
grep -m3 'Connection to .* failed' "$out/wstest.log" >&2 || true
stop_server

# --- summary -------------------------------------------------------------------------------
status=0
python3 - "$report_dir/index.json" "$agent" "$url" "$run_secs" "$out/summary.txt" <<'PY' || status=$?
import json, os, sys

index_path, agent, url, run_secs, summary_path = sys.argv[1:]
BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]

if not os.path.isfile(index_path):
    sys.exit("autobahn: ERROR: %s is missing (wstest produced no report)" % index_path)
with open(index_path) as f:
    index = json.load(f)
results = index.get(agent)
if results is None and len(index) == 1:
    results = next(iter(index.values()))
if not results:
    sys.exit("autobahn: ERROR: no case ran (is the server reachable at %s? see wstest.log)" % url)

def case_key(case_id):
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))

ids = sorted(results, key=case_key)
totals = {b: 0 for b in BEHAVIORS}
sections = {}
for cid in ids:
    b = results[cid].get("behavior", "?")
    totals[b] = totals.get(b, 0) + 1
    row = sections.setdefault(cid.split(".")[0], {})
    row[b] = row.get(b, 0) + 1
columns = BEHAVIORS + sorted(set(totals) - set(BEHAVIORS))

lines = ["## Autobahn|Testsuite fuzzingclient: %s" % agent, "",
         "%d cases against `%s` in %ss." % (len(ids), url, run_secs), "",
         "| section | " + " | ".join(columns) + " | total |",
         "|---" * (len(columns) + 2) + "|"]
for sec in sorted(sections, key=case_key):
    row = sections[sec]
    lines.append("| %s | %s | %d |" % (sec, " | ".join(str(row.get(c, 0)) for c in columns),
                                       sum(row.values())))
lines.append("| **all** | %s | **%d** |" % (" | ".join("**%d**" % totals.get(c, 0) for c in columns),
                                            len(ids)))
not_ok = [c for c in ids
          if results[c].get("behavior") != "OK" or results[c].get("behaviorClose") != "OK"]
lines += ["", "Cases not OK (behavior or behaviorClose): %d" % len(not_ok)]
if not_ok:
    lines += ["", "| case | behavior | behaviorClose | remoteCloseCode | duration ms |",
              "|---|---|---|---|---|"]
    for c in not_ok:
        r = results[c]
        lines.append("| %s | %s | %s | %s | %s |" % (c, r.get("behavior"), r.get("behaviorClose"),
                                                    r.get("remoteCloseCode"), r.get("duration")))
failed = totals.get("FAILED", 0)
lines += ["", "Result: %s (%d FAILED)" % ("FAIL" if failed else "PASS", failed)]
text = "\n".join(lines) + "\n"
with open(summary_path, "w") as f:
    f.write(text)
sys.stdout.write(text)
sys.exit(1 if failed else 0)
PY
[[ -f "$out/summary.txt" ]] && log "summary: $out/summary.txt; HTML report: $report_dir/index.html"
exit "$status"
