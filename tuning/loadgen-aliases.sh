#!/usr/bin/env bash
# Add or remove extra IPv4 source addresses on a load-generator host, so it can open more than
# ~64k connections to one gateway ip:port (one connection per (src ip, src port, dst ip, dst port)).
# See tuning/loadgen.md for the arithmetic.
#
# Exit codes: 0 done, 1 an `ip` command failed or not root, 2 usage error.
set -euo pipefail

readonly PROG=${0##*/}

usage() {
	cat <<EOF
Usage: $PROG (--add | --del) --count N [--base IPV4] [--dev DEV] [--prefix LEN] [--dry-run]

Add (or delete) N consecutive IPv4 addresses, starting at --base, on interface --dev.

  --add | --del   add the addresses, or remove them again
  --count N       how many addresses (1..4096). 1,000,000 connections to one ip:port need
                  ceil(1,000,000 / ports in ip_local_port_range) addresses: 16 with 1024-65535
  --base IPV4     first address (default 198.18.0.1, from 198.18.0.0/15, the range RFC 2544
                  reserves for benchmarking). Use addresses the gateway can route back to: on
                  one L2 segment, unused addresses of that subnet; otherwise route the block
                  to this host on the gateway side.
  --dev DEV       interface to put them on (required unless the base is in 127.0.0.0/8)
  --prefix LEN    prefix length of each address (default 32: no extra subnet route)
  --dry-run       print the ip(8) commands instead of running them (no root needed)
  -h, --help      this text

127.0.0.0/8 needs nothing: Linux already treats every address in it as local (the
"local 127.0.0.0/8 dev lo" route), so a load generator can bind 127.0.0.2, 127.0.0.3, ...
directly; for a base in 127/8 this script only says so.
EOF
}

usage_error() {
	echo "$PROG: $1" >&2
	echo "Try '$PROG --help'." >&2
	exit 2
}

op=""
count=""
base=198.18.0.1
dev=""
prefix=32
dry_run=0

while (($# > 0)); do
	case $1 in
	--add) op=add ;;
	--del | --delete) op=del ;;
	--count | --base | --dev | --prefix)
		(($# >= 2)) || usage_error "$1 needs a value"
		case $1 in
		--count) count=$2 ;;
		--base) base=$2 ;;
		--dev) dev=$2 ;;
		--prefix) prefix=$2 ;;
		esac
		shift
		;;
	--dry-run | -n) dry_run=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	*) usage_error "unknown argument: $1" ;;
	esac
	shift
done

[[ -n $op ]] || usage_error "say --add or --del"
if ! [[ $count =~ ^[1-9][0-9]{0,3}$ ]] || ((count > 4096)); then
	usage_error "--count must be 1..4096, got '${count}'"
fi
if ! [[ $prefix =~ ^[0-9]{1,2}$ ]] || ((prefix < 1 || prefix > 32)); then
	usage_error "--prefix must be 1..32, got '$prefix'"
fi

# Dotted quad -> 32-bit integer; fails on anything else.
ip_to_int() {
	local -a o
	local oct n=0
	IFS=. read -r -a o <<<"$1"
	((${#o[@]} == 4)) || return 1
	for oct in "${o[@]}"; do
		[[ $oct =~ ^[0-9]{1,3}$ ]] && ((10#$oct <= 255)) || return 1
		n=$((n * 256 + 10#$oct))
	done
	echo "$n"
}

int_to_ip() {
	echo "$(($1 >> 24 & 255)).$(($1 >> 16 & 255)).$(($1 >> 8 & 255)).$(($1 & 255))"
}

start=$(ip_to_int "$base") || usage_error "--base must be an IPv4 address, got '$base'"
last=$((start + count - 1))
((last <= 0xFFFFFFFF)) || usage_error "$count addresses from $base run past 255.255.255.255"

# Ephemeral ports per address, from the local range, for the capacity line.
ports=28232
if read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null; then
	ports=$((hi - lo + 1))
fi

if ((start >> 24 == 127)); then
	echo "# $base is in 127.0.0.0/8: every address there is already local on Linux (route"
	echo "# 'local 127.0.0.0/8 dev lo' in table local). Nothing to $op: bind the load generator's"
	echo "# sockets to $(int_to_ip "$start") .. $(int_to_ip "$last") before connect()."
	echo "# capacity: $count addresses x $ports ports = $((count * ports)) connections per gateway ip:port"
	exit 0
fi

[[ -n $dev ]] || usage_error "--dev is required for addresses outside 127.0.0.0/8"
[[ $dev =~ ^[A-Za-z0-9_.:@-]{1,15}$ ]] || usage_error "--dev: not an interface name: '$dev'"

if ((!dry_run)); then
	((EUID == 0)) || {
		echo "$PROG: must run as root to change addresses (use --dry-run to preview)" >&2
		exit 1
	}
	command -v ip >/dev/null || {
		echo "$PROG: ip(8) not found (package iproute2)" >&2
		exit 1
	}
	[[ -e /sys/class/net/$dev ]] || {
		echo "$PROG: no interface '$dev'" >&2
		exit 1
	}
fi

# Addresses already on the interface, "a.b.c.d/len" per line (only read when changing things).
present=""
((dry_run)) || present=$(ip -o -4 addr show dev "$dev" | awk '{print $4}')

failed=0 done_count=0 skipped=0
for ((n = start; n <= last; n++)); do
	addr="$(int_to_ip "$n")/$prefix"
	if ((dry_run)); then
		echo "ip addr $op $addr dev $dev"
		continue
	fi
	if [[ $op == add ]] && grep -qxF -- "$addr" <<<"$present"; then
		skipped=$((skipped + 1))
		continue
	fi
	if [[ $op == del ]] && ! grep -qxF -- "$addr" <<<"$present"; then
		skipped=$((skipped + 1))
		continue
	fi
	if ip addr "$op" "$addr" dev "$dev"; then
		done_count=$((done_count + 1))
	else
		failed=$((failed + 1))
	fi
done

if ((dry_run)); then
	echo "# dry run: $count address(es) $(int_to_ip "$start") .. $(int_to_ip "$last") on $dev"
else
	echo "# $op: $done_count done, $skipped already so, $failed failed ($(int_to_ip "$start") .. $(int_to_ip "$last") on $dev)"
fi
echo "# capacity: $count addresses x $ports ports = $((count * ports)) connections per gateway ip:port"
((failed == 0)) || exit 1
