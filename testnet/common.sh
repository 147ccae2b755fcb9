# Shared by the testnet scripts. Sourced, not run.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="${FEDMESH_TESTNET_DIR:-$ROOT/testnet/run}"
BIN="${FEDMESH_BIN:-$ROOT/target/release/fedmesh}"

# A pid that exists and is not a zombie (an exited child that nobody has waited for yet).
is_alive() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "${state#Z}" = "$state" ]
}

alive_pids() {
  [ -f "$RUN/pids" ] || return 0
  while read -r pid; do
    if is_alive "$pid"; then echo "$pid"; fi
  done < "$RUN/pids"
}
