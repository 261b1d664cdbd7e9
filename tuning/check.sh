#!/usr/bin/env bash
# Compare this host's kernel settings and process limits with what chat4all-gateway needs for a
# target number of connections. Reads only (/proc/sys, /proc/PID/limits, ulimit); changes nothing.
#
# Exit codes: 0 every row OK (or n/a), 1 the host falls short somewhere, 2 usage error.
set -euo pipefail

readonly PROG=${0##*/}
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR

usage() {
	cat <<EOF
Usage: $PROG [--target-connections N] [--pid PID] [--file FILE]

Print a table (setting, current, recommended, rule, status) for every key in the settings file,
the limits of this shell, and optionally of a running process.

  --target-connections N  connections the host must hold (default 1000000); scales the
                          file-descriptor rows: nofile and fs.nr_open >= next power of two
                          of 2N, fs.file-max >= twice that
  --pid PID               also check /proc/PID/limits: Max open files (soft) and Max locked
                          memory (io_uring rings and registered buffers on kernels < 5.12)
  --file FILE             recommended values, sysctl.d format (default: $SCRIPT_DIR/sysctl.conf)
  -h, --help              this text

Status: OK; LOW (below a floor); HIGH (above a ceiling); DIFF (must equal); n/a (key absent on
this kernel, e.g. nf_conntrack not loaded: nothing to tune). Exit 0 when all rows are OK or n/a,
1 when any row is LOW, HIGH or DIFF, 2 on a usage error.
Environment: SYSCTL_ROOT (default /proc/sys) reads another tree, for tests.
EOF
}

usage_error() {
	echo "$PROG: $1" >&2
	echo "Try '$PROG --help'." >&2
	exit 2
}

conf="$SCRIPT_DIR/sysctl.conf"
target=1000000
pid=""
sysroot=${SYSCTL_ROOT:-/proc/sys}

# Accepts "--opt value" and "--opt=value"; sets OPTVAL and how many words were used in OPTSHIFT.
take_value() {
	if [[ $1 == *=* ]]; then
		OPTVAL=${1#*=}
		OPTSHIFT=1
	elif (($# >= 2)); then
		OPTVAL=$2
		OPTSHIFT=2
	else
		usage_error "${1} needs a value"
	fi
}

while (($# > 0)); do
	case $1 in
	--target-connections | --target-connections=*)
		take_value "$@"
		target=$OPTVAL
		shift "$OPTSHIFT"
		;;
	--pid | --pid=*)
		take_value "$@"
		pid=$OPTVAL
		shift "$OPTSHIFT"
		;;
	--file | --file=*)
		take_value "$@"
		conf=$OPTVAL
		shift "$OPTSHIFT"
		;;
	-h | --help)
		usage
		exit 0
		;;
	*) usage_error "unknown argument: $1" ;;
	esac
done

[[ $target =~ ^[1-9][0-9]{0,9}$ ]] || usage_error "--target-connections must be a positive integer, got '$target'"
if [[ -n $pid ]]; then
	[[ $pid =~ ^[1-9][0-9]*$ ]] || usage_error "--pid must be a process id, got '$pid'"
	[[ -r /proc/$pid/limits ]] || usage_error "no readable /proc/$pid/limits (no such process?)"
fi
[[ -f $conf && -r $conf ]] || usage_error "cannot read settings file: $conf"

# ---- recommendations ------------------------------------------------------------------------------

# Per-process open files for N connections: 2N (reconnect storms, refused accepts, listeners,
# rings, Redis) rounded up to a power of two, at least 1024. N=1,000,000 -> 2,097,152, the value of
# fs.nr_open in sysctl.conf and LimitNOFILE in the systemd unit.
nofile_for() {
	local need=$((2 * $1)) p=1024
	while ((p < need)); do p=$((p * 2)); done
	echo "$p"
}
NOFILE_REC=$(nofile_for "$target")
FILEMAX_REC=$((2 * NOFILE_REC))
MEMLOCK_REC=67108864 # 64 MiB; "unlimited" is what the unit and compose file set.

# Keys in file order and their recommended values.
KEYS=()
declare -A REC=()
read_conf() {
	local file=$1 line key val n=0
	local comment_re='^[[:space:]]*([#;].*)?$'
	local kv_re='^[[:space:]]*-?([A-Za-z0-9_./-]+)[[:space:]]*=[[:space:]]*(.*)$'
	local -a words
	while IFS= read -r line || [[ -n $line ]]; do
		n=$((n + 1))
		[[ $line =~ $comment_re ]] && continue
		[[ $line =~ $kv_re ]] || usage_error "$file:$n: not a 'key = value' line: $line"
		key=${BASH_REMATCH[1]}
		read -r -a words <<<"${BASH_REMATCH[2]}" || true
		val="${words[*]}"
		[[ -v "REC[$key]" ]] || KEYS+=("$key")
		REC[$key]=$val
	done <"$file"
}
read_conf "$conf"

# The comparison rule for each key. Default ">=": the value is a capacity and more is fine.
#   fs.nr_open, fs.file-max        >= scaled from --target-connections (the file's values are the
#                                    N=1,000,000 case)
#   tcp_mem                        each of min/pressure/max >= recommended (all three are budgets)
#   tcp_rmem, tcp_wmem             "min,def <=": min and default not above the recommendation
#                                    (small per-socket defaults are the point); max is not judged
#   ip_local_port_range            "ports >=": the range holds at least as many ports, wherever
#                                    it sits (hi - lo + 1)
#   rmem_default, wmem_default,    <=: per-socket defaults multiply by the socket count, and
#   tcp_notsent_lowat                 shorter waits / fewer probes free resources sooner
#   tcp_fin_timeout, keepalive_*
#   tcp_orphan_retries             "<= (0=8)": 0 means the kernel default of 8
#   tcp_syncookies, tcp_tw_reuse,  ==: a mode switch, not a quantity
#   kernel.io_uring_disabled
# Sets RULE for KEY (functions here set variables instead of printing: no subshell per row).
rule_for() {
	case $1 in
	net.ipv4.tcp_mem) RULE="each >=" ;;
	net.ipv4.tcp_rmem | net.ipv4.tcp_wmem) RULE="min,def <=" ;;
	net.ipv4.ip_local_port_range) RULE="ports >=" ;;
	net.core.rmem_default | net.core.wmem_default | net.ipv4.tcp_notsent_lowat | \
		net.ipv4.tcp_fin_timeout | net.ipv4.tcp_keepalive_time | net.ipv4.tcp_keepalive_intvl | \
		net.ipv4.tcp_keepalive_probes)
		RULE="<="
		;;
	net.ipv4.tcp_orphan_retries) RULE="<= (0=8)" ;;
	net.ipv4.tcp_syncookies | net.ipv4.tcp_tw_reuse | kernel.io_uring_disabled) RULE="==" ;;
	*) RULE=">=" ;;
	esac
}

# Sets RECOMMENDED for KEY.
recommended_for() {
	case $1 in
	fs.nr_open) RECOMMENDED=$NOFILE_REC ;;
	fs.file-max) RECOMMENDED=$FILEMAX_REC ;;
	*) RECOMMENDED=${REC[$1]} ;;
	esac
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# judge RULE CURRENT RECOMMENDED: sets STATUS to OK, LOW, HIGH or DIFF.
judge() {
	local rule=$1 cur=$2 rec=$3 i eff
	local -a c r
	read -r -a c <<<"$cur" || true
	read -r -a r <<<"$rec" || true
	for i in "${c[@]}" "${r[@]}"; do
		if ! is_uint "$i"; then
			# Not numbers (e.g. a port list): only equality makes sense.
			STATUS=DIFF
			[[ $cur == "$rec" ]] && STATUS=OK
			return 0
		fi
	done
	STATUS=OK
	case $rule in
	">=") ((c[0] >= r[0])) || STATUS=LOW ;;
	"<=") ((c[0] <= r[0])) || STATUS=HIGH ;;
	"==") ((c[0] == r[0])) || STATUS=DIFF ;;
	"<= (0=8)")
		eff=${c[0]}
		((eff != 0)) || eff=8
		((eff <= r[0])) || STATUS=HIGH
		;;
	"each >=")
		if ((${#c[@]} != ${#r[@]})); then
			STATUS=DIFF
			return 0
		fi
		for i in "${!r[@]}"; do
			((c[i] >= r[i])) || STATUS=LOW
		done
		;;
	"min,def <=")
		if ((${#c[@]} != 3 || ${#r[@]} != 3)); then
			STATUS=DIFF
		elif ((c[0] > r[0] || c[1] > r[1])); then
			STATUS=HIGH
		fi
		;;
	"ports >=")
		if ((${#c[@]} != 2 || ${#r[@]} != 2)); then
			STATUS=DIFF
		elif ((c[1] - c[0] + 1 < r[1] - r[0] + 1)); then
			STATUS=LOW
		fi
		;;
	*) STATUS=DIFF ;;
	esac
	return 0
}

# ---- table --------------------------------------------------------------------------------------

FMT='%-36s %-24s %-24s %-11s %s\n'
rows=0 short=0 na=0

row() { # row SETTING CURRENT RECOMMENDED RULE STATUS
	# shellcheck disable=SC2059 # FMT is a fixed format defined above.
	printf "$FMT" "$1" "$2" "$3" "$4" "$5"
	rows=$((rows + 1))
	case $5 in
	OK) ;;
	n/a) na=$((na + 1)) ;;
	*) short=$((short + 1)) ;;
	esac
}

# Limit values: "unlimited" compares above any number. Sets STATUS.
judge_limit() { # judge_limit CURRENT MINIMUM
	STATUS=LOW
	if [[ $1 == unlimited ]] || { is_uint "$1" && (($1 >= $2)); }; then
		STATUS=OK
	fi
}

# shellcheck disable=SC2059 # FMT is a fixed format defined above.
printf "$FMT" SETTING CURRENT RECOMMENDED RULE STATUS

for key in "${KEYS[@]}"; do
	rule_for "$key"
	recommended_for "$key"
	# "net.ipv4.tcp_mem" -> $sysroot/net/ipv4/tcp_mem; a key written with '/' is a path already.
	if [[ $key == */* ]]; then path="$sysroot/$key"; else path="$sysroot/${key//.//}"; fi
	if [[ ! -e $path ]]; then
		row "$key" "(absent)" "$RECOMMENDED" "$RULE" "n/a"
		continue
	fi
	if [[ ! -f $path || ! -r $path ]]; then
		row "$key" "(unreadable)" "$RECOMMENDED" "$RULE" "LOW"
		continue
	fi
	words=()
	read -r -a words <"$path" || true
	cur="${words[*]}"
	judge "$RULE" "$cur" "$RECOMMENDED"
	row "$key" "$cur" "$RECOMMENDED" "$RULE" "$STATUS"
done

# This shell's limits. The gateway raises its soft limit to the hard limit at start, so for a
# gateway started from here the hard limit is what counts; the soft one is what other programs
# (load generators, tools) get unless they raise it.
soft=$(ulimit -Sn)
hard=$(ulimit -Hn)
judge_limit "$soft" "$NOFILE_REC"
row "ulimit -n (this shell, soft)" "$soft" "$NOFILE_REC" ">=" "$STATUS"
judge_limit "$hard" "$NOFILE_REC"
row "ulimit -Hn (this shell, hard)" "$hard" "$NOFILE_REC" ">=" "$STATUS"

if [[ -n $pid ]]; then
	# /proc/PID/limits: "Max open files   1024   524288   files" (soft, hard, unit).
	nofile_soft=$(awk '/^Max open files/ {print $4}' "/proc/$pid/limits")
	memlock_soft=$(awk '/^Max locked memory/ {print $4}' "/proc/$pid/limits")
	judge_limit "${nofile_soft:-?}" "$NOFILE_REC"
	row "pid $pid: Max open files" "${nofile_soft:-?}" "$NOFILE_REC" ">=" "$STATUS"
	judge_limit "${memlock_soft:-?}" "$MEMLOCK_REC"
	row "pid $pid: Max locked memory" "${memlock_soft:-?}" "unlimited (>= $MEMLOCK_REC)" ">=" "$STATUS"
fi

echo
echo "# target: $target connections; open files per process >= $NOFILE_REC, fs.file-max >= $FILEMAX_REC"
echo "# $rows rows: $((rows - short - na)) OK, $na n/a, $short short (LOW/HIGH/DIFF)"
if ((short > 0)); then
	echo "# fix: sudo tuning/apply.sh (kernel settings); tuning/limits.conf or LimitNOFILE= (limits)"
	exit 1
fi
exit 0
