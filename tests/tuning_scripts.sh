#!/usr/bin/env bash
# Tests for the operations files in tuning/ (and the Dockerfile/compose/unit consistency).
#   bash tests/tuning_scripts.sh
# Needs bash, python3 and shellcheck (apt-get install -y shellcheck); no network, < 30 s.
# Never changes the host: apply.sh runs against the real /proc/sys only with --dry-run, and for
# real only against a copy of the settings in a temporary directory (SYSCTL_ROOT).
# Last line: "N passed, M failed"; exit 1 when anything failed.
set -uo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
TMP=$(mktemp -d)
trap 'rm -rf -- "$TMP"' EXIT
# Readable by an unprivileged user for the non-root test below.
chmod 0755 "$TMP"

CONF=tuning/sysctl.conf
pass=0
fail=0

ok() {
	pass=$((pass + 1))
	echo "ok    $1"
}
not_ok() {
	fail=$((fail + 1))
	echo "FAIL  $1"
	if (($# > 1)) && [[ -n $2 ]]; then
		printf '%s\n' "$2" | head -n 20 | sed 's/^/      | /'
	fi
}
# expect NAME CONDITION-COMMAND... [-- DETAIL]: passes when the command succeeds.
expect() {
	local name=$1
	shift
	if "$@"; then ok "$name"; else not_ok "$name" "${DETAIL:-}"; fi
	DETAIL=""
}
skip() { echo "skip  $1"; }

# run CMD...: sets OUT (stdout), ERR (stderr), RC.
run() {
	OUT=$("$@" 2>"$TMP/stderr")
	RC=$?
	ERR=$(<"$TMP/stderr")
}

# Keys of a sysctl.d file, in order, without a leading '-'.
conf_keys() {
	sed -nE 's/^[[:space:]]*-?([A-Za-z0-9_./-]+)[[:space:]]*=.*/\1/p' "$1"
}
conf_value() { # conf_value FILE KEY
	local key_re=${2//./[.]}
	sed -nE "s/^[[:space:]]*-?${key_re}[[:space:]]*=[[:space:]]*(.*)$/\1/p" "$1" |
		tr -s ' \t' '  ' | sed 's/ *$//'
}
mapfile -t KEYS < <(conf_keys "$CONF")
declare -A WANT=() # key -> recommended value, whitespace-normalized
for k in "${KEYS[@]}"; do WANT[$k]=$(conf_value "$CONF" "$k"); done

# Normalized value of every key under a sysctl root ("(absent)" when missing).
snapshot() { # snapshot ROOT
	local k p
	local -a w
	for k in "${KEYS[@]}"; do
		p="$1/${k//.//}"
		if [[ -r $p ]]; then
			w=()
			read -r -a w <"$p" || true
			printf '%s = %s\n' "$k" "${w[*]}"
		else
			printf '%s = (absent)\n' "$k"
		fi
	done
}

# Status column of KEY's row in check.sh output.
status_of() { # status_of KEY OUTPUT
	awk -v k="$1" '$1 == k {print $NF}' <<<"$2"
}

# A fake /proc/sys holding the recommended values of sysctl.conf (copied from one built once).
TEMPLATE=$TMP/template
for k in "${KEYS[@]}"; do
	p="$TEMPLATE/${k//.//}"
	mkdir -p -- "${p%/*}"
	printf '%s\n' "${WANT[$k]}" >"$p"
done
make_fake_root() { # make_fake_root DIR
	rm -rf -- "$1"
	cp -a -- "$TEMPLATE" "$1"
}
set_fake() { printf '%s\n' "$3" >"$1/${2//.//}"; } # set_fake ROOT KEY VALUE

echo "# tuning scripts: ${#KEYS[@]} keys in $CONF"

# ---- shellcheck --------------------------------------------------------------------------------
if command -v shellcheck >/dev/null; then
	for f in tuning/*.sh tests/tuning_scripts.sh; do
		run shellcheck "$f"
		DETAIL=$OUT expect "shellcheck $f" test "$RC" -eq 0
	done
else
	not_ok "shellcheck is installed" "apt-get install -y shellcheck"
fi

# ---- check.sh on this machine --------------------------------------------------------------------
run bash tuning/check.sh
DETAIL=$ERR expect "check.sh exits 0 or 1 on this host (got $RC)" test "$RC" -le 1
header=$(head -n 1 <<<"$OUT")
DETAIL=$header expect "check.sh prints a header row" \
	grep -qE '^SETTING +CURRENT +RECOMMENDED +RULE +STATUS$' <<<"$header"
missing=""
for k in "${KEYS[@]}"; do
	n=$(awk -v k="$k" '$1 == k' <<<"$OUT" | wc -l)
	((n == 1)) || missing+="$k ($n rows) "
done
DETAIL=$missing expect "check.sh prints one row per key of sysctl.conf" test -z "$missing"
bad_status=$(awk 'NR > 1 && NF > 0 && !/^#/ && $NF !~ /^(OK|LOW|HIGH|DIFF|n\/a)$/' <<<"$OUT")
DETAIL=$bad_status expect "every row ends in OK/LOW/HIGH/DIFF/n/a" test -z "$bad_status"
shorts=$(awk 'NR > 1 && !/^#/ && $NF ~ /^(LOW|HIGH|DIFF)$/' <<<"$OUT" | wc -l)
expect "exit code matches the rows (rc=$RC, $shorts short)" \
	test "$(((shorts > 0) ? 1 : 0))" -eq "$RC"
expect "check.sh has ulimit -n rows for this shell" grep -q '^ulimit -n (this shell, soft) ' <<<"$OUT"

# The default recommendation for descriptors is exactly what the files ship.
nr_open=${WANT[fs.nr_open]}
file_max=${WANT[fs.file-max]}
rec_nr=$(awk '$1 == "fs.nr_open" {print $(NF-2)}' <<<"$OUT")
rec_fm=$(awk '$1 == "fs.file-max" {print $(NF-2)}' <<<"$OUT")
expect "fs.nr_open recommendation ($rec_nr) = sysctl.conf ($nr_open)" test "$rec_nr" = "$nr_open"
expect "fs.file-max recommendation ($rec_fm) = sysctl.conf ($file_max)" test "$rec_fm" = "$file_max"
expect "unit LimitNOFILE = fs.nr_open" grep -qx "LimitNOFILE=$nr_open" tuning/chat4all-gateway.service
expect "limits.conf hard nofile = fs.nr_open" \
	grep -qE "^@chat4all +hard +nofile +$nr_open$" tuning/limits.conf

# --target-connections scales the descriptor rows.
run bash tuning/check.sh --target-connections 10000
expect "--target-connections 10000: fs.nr_open >= 32768" \
	test "$(awk '$1 == "fs.nr_open" {print $(NF-2)}' <<<"$OUT")" = 32768
expect "--target-connections 10000: fs.file-max >= 65536" \
	test "$(awk '$1 == "fs.file-max" {print $(NF-2)}' <<<"$OUT")" = 65536

# --pid: this shell's own limits.
run bash tuning/check.sh --pid $$
expect "check.sh --pid \$\$ exits 0 or 1 (got $RC)" test "$RC" -le 1
soft=$(awk '/^Max open files/ {print $4}' /proc/$$/limits)
row=$(grep "^pid $$: Max open files " <<<"$OUT")
DETAIL=$OUT expect "open-files row shows the soft limit of pid $$ ($soft)" \
	test "$(awk '{print $6}' <<<"$row")" = "$soft"
expect "locked-memory row present" grep -q "^pid $$: Max locked memory " <<<"$OUT"

# Usage errors.
run bash tuning/check.sh --help
expect "check.sh --help exits 0" test "$RC" -eq 0
expect "check.sh --help prints usage" grep -q '^Usage:' <<<"$OUT"
for args in "--bogus" "--target-connections abc" "--target-connections 0" "--pid 0" \
	"--pid 999999999" "--file $TMP/nonexistent" "--pid"; do
	# shellcheck disable=SC2086 # word splitting of the argument list is intended
	run bash tuning/check.sh $args
	expect "check.sh $args exits 2 (got $RC)" test "$RC" -eq 2
done

# ---- check.sh rules, on a fake /proc/sys --------------------------------------------------------
FAKE=$TMP/fake
make_fake_root "$FAKE"
# 100 connections -> 1024 descriptors: any shell passes the ulimit rows.
check_fake() { run env SYSCTL_ROOT="$FAKE" bash tuning/check.sh --target-connections 100; }
check_fake
DETAIL=$OUT expect "a host at the recommendation passes (exit 0)" test "$RC" -eq 0
rm -f -- "$FAKE/net/netfilter/nf_conntrack_max" "$FAKE/net/netfilter/nf_conntrack_buckets"
check_fake
expect "absent conntrack keys are n/a and still exit 0" \
	test "$RC/$(status_of net.netfilter.nf_conntrack_max "$OUT")" = "0/n/a"
# Each tuple: key, value, expected status.
while read -r key status value; do
	make_fake_root "$FAKE"
	set_fake "$FAKE" "$key" "$value"
	check_fake
	got=$(status_of "$key" "$OUT")
	want_rc=1
	[[ $status == OK ]] && want_rc=0
	DETAIL=$(grep "^$key " <<<"$OUT") expect "rule: $key = '$value' is $status (rc $want_rc)" \
		test "$got/$RC" = "$status/$want_rc"
done <<'EOF'
net.core.somaxconn LOW 128
net.core.somaxconn OK 131072
net.ipv4.tcp_fin_timeout HIGH 60
net.ipv4.tcp_fin_timeout OK 10
net.ipv4.ip_local_port_range LOW 32768	60999
net.ipv4.ip_local_port_range OK 1024	65535
net.ipv4.tcp_mem LOW 786432	1048576	1000000
net.ipv4.tcp_mem OK 900000	2000000	3000000
net.ipv4.tcp_rmem HIGH 4096	131072	6291456
net.ipv4.tcp_wmem OK 4096	4096	16777216
net.ipv4.tcp_orphan_retries HIGH 0
net.ipv4.tcp_orphan_retries OK 1
net.ipv4.tcp_syncookies DIFF 2
net.ipv4.tcp_tw_reuse DIFF 2
fs.nr_open OK 1048576
EOF

# ---- apply.sh --dry-run on the real /proc/sys ----------------------------------------------------
before=$(snapshot /proc/sys)
run bash tuning/apply.sh --dry-run --backup "$TMP/dry-backup"
after=$(snapshot /proc/sys)
DETAIL=$ERR expect "apply.sh --dry-run exits 0 (got $RC)" test "$RC" -eq 0
missing=""
for k in "${KEYS[@]}"; do
	grep -q "^$k: " <<<"$OUT" || missing+="$k "
done
DETAIL=$missing expect "apply.sh --dry-run prints every key of sysctl.conf" test -z "$missing"
DETAIL=$(diff <(echo "$before") <(echo "$after")) \
	expect "apply.sh --dry-run changes no /proc/sys value" test "$before" = "$after"
expect "apply.sh --dry-run writes no backup" test ! -e "$TMP/dry-backup"

run bash tuning/apply.sh --help
expect "apply.sh --help exits 0" test "$RC" -eq 0
for args in "--bogus" "--file" "--file $TMP/nonexistent" "--backup"; do
	# shellcheck disable=SC2086 # word splitting of the argument list is intended
	run bash tuning/apply.sh $args
	expect "apply.sh $args exits 2 (got $RC)" test "$RC" -eq 2
done

# Not root and not --dry-run: refused before touching anything.
if ((EUID == 0)) && command -v setpriv >/dev/null; then
	mkdir -p "$TMP/nr/tuning" && cp tuning/apply.sh tuning/sysctl.conf "$TMP/nr/tuning/"
	chmod -R a+rX "$TMP/nr"
	run env -u SYSCTL_ROOT setpriv --reuid=65534 --regid=65534 --clear-groups -- \
		bash "$TMP/nr/tuning/apply.sh" --backup "$TMP/nr/backup"
	DETAIL=$ERR expect "apply.sh as non-root refuses (exit 1)" test "$RC" -eq 1
	expect "... and says it must run as root" grep -q 'must run as root' <<<"$ERR"
elif ((EUID != 0)); then
	run env -u SYSCTL_ROOT bash tuning/apply.sh --backup "$TMP/nr-backup"
	DETAIL=$ERR expect "apply.sh as non-root refuses (exit 1)" test "$RC" -eq 1
else
	skip "apply.sh non-root refusal (setpriv not installed)"
fi

# ---- apply.sh for real, against a fake /proc/sys -------------------------------------------------
make_fake_root "$FAKE"
# "Old" host values: take this machine's, so apply has something to change.
for k in "${KEYS[@]}"; do
	[[ -r /proc/sys/${k//.//} ]] && set_fake "$FAKE" "$k" "$(</proc/sys/"${k//.//}")"
done
rm -f -- "$FAKE/net/netfilter/nf_conntrack_buckets"  # a key this kernel lacks
set_fake "$FAKE" vm.max_map_count 65530
chmod 0444 "$FAKE/vm/max_map_count"                   # read-only here
original=$(snapshot "$FAKE")
BK=$TMP/state/sysctl.backup
run env SYSCTL_ROOT="$FAKE" bash tuning/apply.sh --backup "$BK"
DETAIL="$OUT$ERR" expect "apply.sh (fake root) exits 0 with skipped keys (got $RC)" test "$RC" -eq 0
wrong=""
for k in "${KEYS[@]}"; do
	case $k in net.netfilter.nf_conntrack_buckets | vm.max_map_count) continue ;; esac
	read -r -a w <"$FAKE/${k//.//}"
	[[ ${w[*]} == "${WANT[$k]}" ]] || wrong+="$k=${w[*]} "
done
DETAIL=$wrong expect "apply.sh wrote every present, writable key" test -z "$wrong"
expect "absent key reported as skipped" grep -q '^net.netfilter.nf_conntrack_buckets: (absent.*skipped' <<<"$OUT"
expect "read-only key skipped and left alone" \
	test "$(<"$FAKE/vm/max_map_count")" = 65530 -a -n "$(grep 'vm.max_map_count.*read-only' <<<"$OUT")"
expect "backup written with mode 600" test "$(stat -c %a "$BK" 2>/dev/null)" = 600
expect "backup holds the previous somaxconn" \
	test "$(conf_value "$BK" net.core.somaxconn)" = "$(</proc/sys/net/core/somaxconn)"
backup1=$(grep -v '^#' "$BK")
set_fake "$FAKE" net.core.somaxconn 1234
run env SYSCTL_ROOT="$FAKE" bash tuning/apply.sh --backup "$BK"
expect "a second apply keeps the first backup's values" test "$(grep -v '^#' "$BK")" = "$backup1"
applied=$(snapshot "$FAKE")
run env SYSCTL_ROOT="$FAKE" bash tuning/apply.sh --revert --dry-run --backup "$BK"
expect "--revert --dry-run changes nothing" test "$RC/$(snapshot "$FAKE")" = "0/$applied"
run env SYSCTL_ROOT="$FAKE" bash tuning/apply.sh --revert --backup "$BK"
DETAIL=$(diff <(echo "$original") <(snapshot "$FAKE"))
expect "--revert restores every original value (rc $RC)" test "$RC/$(snapshot "$FAKE")" = "0/$original"
run env SYSCTL_ROOT="$FAKE" bash tuning/apply.sh --revert --backup "$TMP/none"
expect "--revert without a backup exits 1" test "$RC" -eq 1

# ---- loadgen-aliases.sh --------------------------------------------------------------------------
LG=tuning/loadgen-aliases.sh
run bash "$LG" --help
expect "loadgen-aliases.sh --help exits 0" test "$RC" -eq 0
run bash "$LG" --add --count 3 --base 198.18.0.254 --dev eth0 --dry-run
want=$'ip addr add 198.18.0.254/32 dev eth0\nip addr add 198.18.0.255/32 dev eth0\nip addr add 198.18.1.0/32 dev eth0'
DETAIL=$OUT expect "--dry-run prints 3 consecutive addresses across an octet" \
	test "$(grep '^ip ' <<<"$OUT")" = "$want"
run bash "$LG" --del --count 2 --base 198.18.0.1 --dev eth0 --prefix 24 --dry-run
expect "--del --dry-run prints deletions" \
	test "$(grep -c '^ip addr del 198.18.0.[12]/24 dev eth0$' <<<"$OUT")" = 2
run bash "$LG" --add --count 16 --base 127.0.0.2
expect "loopback base: nothing to add, exit 0" test "$RC/$(grep -c '^ip ' <<<"$OUT")" = "0/0"
expect "loopback base: explains 127.0.0.0/8 is local" grep -q '127.0.0.0/8' <<<"$OUT"
for args in "--bogus" "--count 3 --dev eth0" "--add --count 0 --dev eth0" \
	"--add --count 3" "--add --count 3 --base 1.2.3 --dev eth0" \
	"--add --count 2 --base 255.255.255.255 --dev eth0"; do
	# shellcheck disable=SC2086 # word splitting of the argument list is intended
	run bash "$LG" $args --dry-run
	expect "loadgen-aliases.sh $args exits 2 (got $RC)" test "$RC" -eq 2
done

# ---- seccomp profile -----------------------------------------------------------------------------
SC=tuning/seccomp-io_uring.json
run python3 -m json.tool "$SC"
DETAIL=$ERR expect "seccomp profile is valid JSON" test "$RC" -eq 0
run python3 - "$SC" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))
errors = []
if p.get("defaultAction") != "SCMP_ACT_ERRNO" or p.get("defaultErrnoRet") != 1:
    errors.append("default must be SCMP_ACT_ERRNO with errno 1")
arches = {a["architecture"] for a in p.get("archMap", [])}
if not {"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"} <= arches:
    errors.append(f"archMap lacks x86_64/aarch64: {arches}")
allowed = {n for r in p["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args") for n in r["names"]}
for n in ("io_uring_setup", "io_uring_enter", "io_uring_register", "epoll_wait", "accept4", "setrlimit", "sched_setaffinity"):
    if n not in allowed:
        errors.append(f"{n} not allowed unconditionally")
for n in ("mount", "umount2", "unshare", "setns", "bpf", "ptrace", "kexec_load", "init_module", "clone", "clone3", "socket", "personality"):
    if n in allowed:
        errors.append(f"{n} allowed unconditionally")
c3 = [r for r in p["syscalls"] if "clone3" in r["names"]]
if not c3 or c3[0]["action"] != "SCMP_ACT_ERRNO" or c3[0].get("errnoRet") != 38:
    errors.append("clone3 must answer ENOSYS (38)")
print("\n".join(errors))
sys.exit(1 if errors else 0)
EOF
DETAIL="$OUT$ERR" expect "seccomp profile: io_uring allowed, namespaces/ptrace/bpf not, clone3 ENOSYS" test "$RC" -eq 0

# Load the profile for real when libseccomp's Python binding is there (Debian: python3-seccomp).
if /usr/bin/python3 -c 'import seccomp' 2>/dev/null; then
	cat >"$TMP/under.py" <<'EOF'
import json, os, sys
import seccomp as S
prof = json.load(open(sys.argv[1]))
f = S.SyscallFilter(defaction=S.ERRNO(prof["defaultErrnoRet"]))
ops = {"SCMP_CMP_EQ": S.EQ, "SCMP_CMP_NE": S.NE, "SCMP_CMP_MASKED_EQ": S.MASKED_EQ}
for r in prof["syscalls"]:
    act = S.ALLOW if r["action"] == "SCMP_ACT_ALLOW" else S.ERRNO(r["errnoRet"])
    args = [S.Arg(a["index"], ops[a["op"]], a["value"], a.get("valueTwo", 0)) for a in r.get("args", [])]
    for name in r["names"]:
        try:
            f.add_rule(act, name, *args)
        except (RuntimeError, ValueError, OSError):
            pass  # not a syscall on this architecture; container runtimes skip these too
f.load()
os.execvp(sys.argv[2], sys.argv[2:])
EOF
	cat >"$TMP/probe.py" <<'EOF'
import ctypes, os, socket, threading
libc = ctypes.CDLL(None, use_errno=True)
params = (ctypes.c_char * 120)()
fd = libc.syscall(425, 8, params)  # io_uring_setup: 425 on x86_64 and aarch64 alike
print("io_uring", "ok" if fd >= 0 else os.strerror(ctypes.get_errno()))
t = threading.Thread(target=lambda: print("thread ok")); t.start(); t.join()
socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(); print("inet ok")
try:
    socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM); print("packet allowed")
except OSError as e:
    print("packet refused")
print("unshare", "allowed" if libc.unshare(0x40000000) == 0 else "refused")
EOF
	run /usr/bin/python3 "$TMP/probe.py"
	unfiltered_uring=$(grep -c '^io_uring ok' <<<"$OUT")
	run /usr/bin/python3 "$TMP/under.py" "$SC" /usr/bin/python3 "$TMP/probe.py"
	want=$'thread ok\ninet ok\npacket refused\nunshare refused'
	DETAIL="$OUT$ERR" expect "under the profile: threads, AF_INET work; AF_PACKET, unshare refused" \
		test "$(grep -v '^io_uring' <<<"$OUT")" = "$want"
	if ((unfiltered_uring)); then
		DETAIL=$OUT expect "under the profile: io_uring_setup works" grep -q '^io_uring ok' <<<"$OUT"
	else
		skip "io_uring under the profile (io_uring unavailable on this kernel even unfiltered)"
	fi
	run /usr/bin/python3 "$TMP/under.py" "$SC" /bin/sh -c 'ls / >/dev/null && echo sh ok'
	expect "under the profile: /bin/sh and ls run (HEALTHCHECK shell)" test "$OUT" = "sh ok"
else
	skip "loading the seccomp profile (python3-seccomp not installed)"
fi

# ---- unit, compose, Dockerfile agree -------------------------------------------------------------
drain=$(sed -n 's/^DRAIN_SECONDS=//p' tuning/env.example)
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s*$/\1/p' tuning/chat4all-gateway.service)
grace=$(sed -n 's/^ *stop_grace_period: *\([0-9]*\)s$/\1/p' docker-compose.yml)
expect "unit TimeoutStopSec ($stop) >= DRAIN_SECONDS ($drain) + 10" test "${stop:-0}" -ge $((${drain:-999} + 10))
expect "compose stop_grace_period ($grace) > DRAIN_SECONDS ($drain)" test "${grace:-0}" -gt "${drain:-999}"
expect "unit allows the io_uring syscalls" \
	grep -qE '^SystemCallFilter=@system-service io_uring_setup io_uring_enter io_uring_register$' \
	tuning/chat4all-gateway.service
expect "compose uses the seccomp profile that exists" \
	test -f "$(sed -n 's/^ *- seccomp=//p' docker-compose.yml)"
expect "Dockerfile: HEALTHCHECK on /healthz, EXPOSE 8085 9095, STOPSIGNAL SIGTERM" \
	test "$(grep -cE '/healthz|^EXPOSE 8085 9095$|^STOPSIGNAL SIGTERM$' Dockerfile)" -ge 3
if command -v systemd-analyze >/dev/null; then
	sed 's#^ExecStart=.*#ExecStart=/bin/true#; s#^EnvironmentFile=#EnvironmentFile=-#' \
		tuning/chat4all-gateway.service >"$TMP/chat4all-gateway.service"
	run systemd-analyze verify "$TMP/chat4all-gateway.service"
	DETAIL=$ERR expect "systemd-analyze verify accepts the unit" test "$RC" -eq 0
else
	skip "systemd-analyze verify (systemd not installed)"
fi

echo "$pass passed, $fail failed"
((fail == 0))
