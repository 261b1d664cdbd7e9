#!/usr/bin/env bash
# The one test command: checks that everything the test suite needs is installed, installs what
# is missing when run as root (apt-get, pip as a fallback), otherwise says what is missing and how
# to install it and exits 1; then runs `cargo test --workspace`.
#
#   scripts/test.sh                  # check/install, then cargo test --workspace
#   scripts/test.sh -- --test cli    # extra arguments go to cargo test
#   scripts/test.sh --check          # only check: never installs, never runs the tests
#
# What the suite needs, and why:
#   cargo                  builds and runs the tests (https://rustup.rs; not installed here)
#   redis-server           Redis tests start their own servers (apt: redis-server)
#   redis-sentinel         the Sentinel failover test (apt: redis-sentinel)
#   the shellcheck linter  the tuning scripts' test lints them (apt: shellcheck)
#   promtool               the alert rules are checked and unit-tested (apt: prometheus)
#   python3 + websocket    the existing Python CLI's library, websocket-client (apt:
#                          python3-websocket, or pip install websocket-client)
#   curl                   the --dev test runs the curl command the gateway prints (apt: curl)
# and an open-files limit of at least 4096 (some tests hold over a thousand sockets at once).
set -euo pipefail
cd "$(dirname "$0")/.."

check_only=false
if [[ ${1:-} == --check ]]; then
	check_only=true
	shift
fi
[[ ${1:-} == -- ]] && shift

# name|how to find it|Debian package
requirements=(
	"cargo|command -v cargo|"
	"redis-server|command -v redis-server|redis-server"
	"redis-sentinel|command -v redis-sentinel|redis-sentinel"
	"shellcheck|command -v shellcheck|shellcheck"
	"promtool|command -v promtool|prometheus"
	"python3|command -v python3|python3"
	"websocket-client (python3)|python3 -c 'import websocket' 2>/dev/null|python3-websocket"
	"curl|command -v curl|curl"
)

missing() {
	local entry name probe
	for entry in "${requirements[@]}"; do
		IFS='|' read -r name probe _ <<<"$entry"
		bash -c "$probe" >/dev/null 2>&1 || printf '%s\n' "$entry"
	done
}

report() {
	local entry name package
	echo "scripts/test.sh: missing what the tests need:" >&2
	while IFS= read -r entry; do
		IFS='|' read -r name _ package <<<"$entry"
		if [[ -n $package ]]; then
			echo "  $name (apt-get install $package)" >&2
		else
			echo "  $name (install Rust with https://rustup.rs)" >&2
		fi
	done <<<"$1"
	echo "Run this script as root to install them, or install them yourself." >&2
}

install() {
	local entry packages=() package
	while IFS= read -r entry; do
		IFS='|' read -r _ _ package <<<"$entry"
		[[ -n $package ]] && packages+=("$package")
	done <<<"$1"
	((${#packages[@]})) || return 0
	echo "scripts/test.sh: installing ${packages[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	if ! apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; then
		# python3-websocket may be unavailable: everything else from apt, it from pip.
		local others=()
		for package in "${packages[@]}"; do
			[[ $package == python3-websocket ]] || others+=("$package")
		done
		((${#others[@]} == 0)) || apt-get install -y -qq --no-install-recommends "${others[@]}" >/dev/null
		python3 -m pip --version >/dev/null 2>&1 ||
			apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
		python3 -m pip install -q websocket-client 2>/dev/null ||
			python3 -m pip install -q --break-system-packages websocket-client
	fi
	# The Debian packages start system-wide services; the tests start their own servers.
	if command -v systemctl >/dev/null; then
		systemctl stop redis-server redis-sentinel prometheus >/dev/null 2>&1 || true
	fi
}

need=$(missing)
if [[ -n $need ]]; then
	if $check_only || ((EUID != 0)); then
		report "$need"
		exit 1
	fi
	install "$need"
	need=$(missing)
	if [[ -n $need ]]; then
		report "$need"
		exit 1
	fi
fi

# Raise the soft open-files limit as far as the hard limit allows (up to 65536).
hard=$(ulimit -Hn)
want=65536
if [[ $hard != unlimited ]] && ((hard < want)); then
	want=$hard
fi
ulimit -Sn "$want" 2>/dev/null || true
if (($(ulimit -Sn) < 4096)); then
	echo "scripts/test.sh: the open-files limit is $(ulimit -Sn) (hard $hard); the tests need 4096:" \
		"raise it (ulimit -Hn, /etc/security/limits.conf) and retry" >&2
	exit 1
fi

if $check_only; then
	echo "scripts/test.sh: everything the tests need is installed"
	exit 0
fi
exec cargo test --workspace "$@"
