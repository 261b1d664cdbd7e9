# Shared by the bench/ scripts (sourced, not run): free loopback ports and waits with deadlines.
# shellcheck shell=bash

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Whether something listens on 127.0.0.1:PORT.
port_open() { # port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Runs COMMAND (output discarded) every 50 ms until it succeeds; fails after SECONDS.
wait_for() { # seconds command...
  local end=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 0.05
  done
}

# Waits until 127.0.0.1:PORT accepts connections; fails after SECONDS.
wait_port() { # port seconds
  wait_for "$2" port_open "$1"
}
