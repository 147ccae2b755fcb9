#!/usr/bin/env bash
# Show each testnet node: running or not, and the last round it appended.
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [ ! -f "$RUN/pids" ]; then echo "no testnet in $RUN"; exit 0; fi
i=0
while read -r pid; do
  state=stopped
  is_alive "$pid" && state=running
  summary=$(python3 "$ROOT/testnet/rounds.py" summary < "$RUN/node-$i.out" 2>/dev/null || echo "no output yet")
  echo "node $i (pid $pid): $state, $summary"
  i=$((i + 1))
done < "$RUN/pids"
