#!/usr/bin/env bash
# Apply the chat4all-gateway host sysctls (tuning/sysctl.conf) to the running kernel, keeping a
# backup of the previous values so --revert can restore them. Live values only: to persist across
# reboots install the file into /etc/sysctl.d/ (see docs/tuning.md).
#
# Exit codes: 0 done (skipped keys included), 1 a value could not be set or read back / not root /
# no backup to revert, 2 usage error.
set -euo pipefail

readonly PROG=${0##*/}
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR

usage() {
	cat <<EOF
Usage: $PROG [--file FILE] [--backup PATH] [--dry-run] [--revert]

Apply kernel settings for a 1M-connection chat4all-gateway host.

  --file FILE    settings to apply, sysctl.d format (default: $SCRIPT_DIR/sysctl.conf)
  --backup PATH  where previous values are saved before anything changes, and read by --revert
                 (default: /var/lib/chat4all-gateway/sysctl.backup). An existing backup is kept
                 (only keys it lacks are added), so it always holds the values from before the
                 first apply.
  --dry-run      print "key: current -> new" for every key and change nothing (no root needed)
  --revert       restore the values saved in the backup (with --dry-run: show what would change)
  -h, --help     this text

Keys the running kernel lacks (e.g. nf_conntrack not loaded) or that are read-only here are
reported and skipped, not fatal. Must run as root unless --dry-run.
Environment: SYSCTL_ROOT (default /proc/sys) points at another tree, for tests.
EOF
}

usage_error() {
	echo "$PROG: $1" >&2
	echo "Try '$PROG --help'." >&2
	exit 2
}

conf="$SCRIPT_DIR/sysctl.conf"
backup=/var/lib/chat4all-gateway/sysctl.backup
dry_run=0
revert=0
sysroot=${SYSCTL_ROOT:-/proc/sys}

while (($# > 0)); do
	case $1 in
	--file)
		(($# >= 2)) || usage_error "--file needs a path"
		conf=$2
		shift 2
		;;
	--file=*)
		conf=${1#*=}
		shift
		;;
	--backup)
		(($# >= 2)) || usage_error "--backup needs a path"
		backup=$2
		shift 2
		;;
	--backup=*)
		backup=${1#*=}
		shift
		;;
	--dry-run | -n)
		dry_run=1
		shift
		;;
	--revert)
		revert=1
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*) usage_error "unknown argument: $1" ;;
	esac
done

# Keys in file order, and their values, from the last read_conf call.
KEYS=()
declare -A VALUE=()

# Collapses runs of blanks/tabs to one space and trims, so "a\tb  c" compares equal to "a b c".
normalize() {
	local -a words
	read -r -a words <<<"$1" || true
	printf '%s' "${words[*]}"
}

# Reads a sysctl.d file: "key = value" lines, '#' or ';' comment lines, an optional leading '-'.
read_conf() {
	local file=$1 line key val n=0
	local comment_re='^[[:space:]]*([#;].*)?$'
	local kv_re='^[[:space:]]*-?([A-Za-z0-9_./-]+)[[:space:]]*=[[:space:]]*(.*)$'
	KEYS=()
	VALUE=()
	while IFS= read -r line || [[ -n $line ]]; do
		n=$((n + 1))
		[[ $line =~ $comment_re ]] && continue
		if [[ $line =~ $kv_re ]]; then
			key=${BASH_REMATCH[1]}
			val=$(normalize "${BASH_REMATCH[2]}")
		else
			echo "$PROG: $file:$n: not a 'key = value' line: $line" >&2
			return 1
		fi
		[[ -n $val ]] || {
			echo "$PROG: $file:$n: empty value for $key" >&2
			return 1
		}
		[[ -v "VALUE[$key]" ]] || KEYS+=("$key")
		VALUE[$key]=$val
	done <"$file"
}

# sysctl name -> file under $sysroot ("net.ipv4.tcp_mem" or "net/ipv4/tcp_mem").
key_path() {
	if [[ $1 == */* ]]; then
		printf '%s/%s' "$sysroot" "$1"
	else
		printf '%s/%s' "$sysroot" "${1//.//}"
	fi
}

# Prints the normalized current value, or fails when the key is absent or unreadable.
current_value() {
	local path v
	path=$(key_path "$1")
	[[ -f $path && -r $path ]] || return 1
	v=$(<"$path") || return 1
	normalize "$v"
}

# True when the kernel marks the entry writable (root's own bits). [[ -w ]] is no use here: it is
# always true for root, while procfs refuses writes to 0444 entries even for root.
is_writable() {
	local mode
	mode=$(stat -Lc '%a' -- "$1") || return 1
	((8#$mode & 8#200))
}

if ((!revert)) && [[ ! -f $conf || ! -r $conf ]]; then
	usage_error "cannot read settings file: $conf"
fi
if ((revert)) && [[ ! -f $backup ]]; then
	echo "$PROG: no backup at $backup: nothing to revert (was apply.sh run with this --backup?)" >&2
	exit 1
fi

# Root is needed to write /proc/sys; a test tree given with SYSCTL_ROOT is written as whoever runs.
if ((!dry_run)) && [[ -z ${SYSCTL_ROOT:-} ]] && ((EUID != 0)); then
	echo "$PROG: must run as root to change kernel settings (use --dry-run to preview)" >&2
	exit 1
fi

# The settings to write: the conf file, or the backup when reverting.
source_file=$conf
((revert)) && source_file=$backup
read_conf "$source_file" || exit 1
declare -a want_keys=("${KEYS[@]}")
declare -A want=()
for key in "${want_keys[@]}"; do
	want[$key]=${VALUE[$key]}
done

# Saves current values of the keys about to change, before any change. Keeps an existing backup
# (its values predate the first apply) and only appends keys it does not have yet.
save_backup() {
	local -a new_lines=()
	local key cur dir tmp
	declare -A have=()
	if [[ -f $backup ]]; then
		read_conf "$backup" || {
			echo "$PROG: existing backup $backup is unreadable; move it away first" >&2
			return 1
		}
		for key in "${KEYS[@]}"; do have[$key]=1; done
	fi
	for key in "${want_keys[@]}"; do
		[[ -v "have[$key]" ]] && continue
		cur=$(current_value "$key") || continue
		new_lines+=("$key = $cur")
	done
	if ((${#new_lines[@]} == 0)); then
		echo "backup: $backup already holds every key (kept, values from before the first apply)"
		return 0
	fi
	dir=$(dirname -- "$backup")
	mkdir -p -- "$dir"
	tmp=$(mktemp "$dir/.sysctl.backup.XXXXXX")
	{
		if [[ -f $backup ]]; then
			cat -- "$backup"
		else
			echo "# chat4all-gateway sysctl backup: values before tuning/apply.sh changed them."
			echo "# Restore with: tuning/apply.sh --revert --backup $backup"
		fi
		echo "# saved $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n), kernel $(uname -r)"
		printf '%s\n' "${new_lines[@]}"
	} >"$tmp"
	chmod 0600 -- "$tmp"
	mv -f -- "$tmp" "$backup"
	echo "backup: saved ${#new_lines[@]} previous value(s) to $backup"
}

action="apply"
((revert)) && action="revert"
if ((dry_run)); then
	echo "# dry run ($action from $source_file): nothing is changed"
else
	if ((!revert)); then
		save_backup || exit 1
	fi
fi

changed=0 unchanged=0 skipped=0 failed=0
for key in "${want_keys[@]}"; do
	new=${want[$key]}
	path=$(key_path "$key")
	if [[ ! -e $path ]]; then
		echo "$key: (absent on this kernel) -> $new [skipped]"
		skipped=$((skipped + 1))
		continue
	fi
	if ! cur=$(current_value "$key"); then
		echo "$key: (unreadable) -> $new [skipped]"
		skipped=$((skipped + 1))
		continue
	fi
	if [[ $cur == "$new" ]]; then
		echo "$key: $cur (unchanged)"
		unchanged=$((unchanged + 1))
		continue
	fi
	if ! is_writable "$path"; then
		echo "$key: $cur -> $new [skipped: read-only here]"
		skipped=$((skipped + 1))
		continue
	fi
	if ((dry_run)); then
		echo "$key: $cur -> $new"
		changed=$((changed + 1))
		continue
	fi
	if ! err=$({ printf '%s\n' "$new" >"$path"; } 2>&1); then
		echo "$key: $cur -> $new [FAILED: ${err##*: }]"
		failed=$((failed + 1))
		continue
	fi
	after=$(current_value "$key" || echo "(unreadable)")
	if [[ $after != "$new" ]]; then
		echo "$key: $cur -> $new [FAILED: kernel kept $after]"
		failed=$((failed + 1))
		continue
	fi
	echo "$key: $cur -> $new"
	changed=$((changed + 1))
done

verb="changed"
((dry_run)) && verb="would change"
echo "# $action: $changed $verb, $unchanged unchanged, $skipped skipped, $failed failed"
if ((failed > 0)); then
	((revert)) || echo "# undo what did change with: $PROG --revert --backup $backup" >&2
	exit 1
fi
