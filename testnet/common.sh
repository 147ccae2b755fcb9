# Shared by the testnet scripts. Sourced, not run.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="${FEDMESH_TESTNET_DIR:-$ROOT/testnet/run}"
BIN="${FEDMESH_BIN:-$ROOT/target/release/fedmesh}"

alive_pids() {
  [ -f "$RUN/pids" ] || return 0
  while read -r pid; do
    if kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
  done < "$RUN/pids"
}
