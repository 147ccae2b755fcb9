#!/usr/bin/env bash
# Show each testnet node: running or not, and the last round it appended.
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [ ! -f "$RUN/pids" ]; then echo "no testnet in $RUN"; exit 0; fi
i=0
while read -r pid; do
  state=stopped
  kill -0 "$pid" 2>/dev/null && state=running
  last=$(grep '"event":"round"' "$RUN/node-$i.out" 2>/dev/null | tail -1 || true)
  if [ -n "$last" ]; then
    summary=$(echo "$last" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(f"round {r[\"round\"]} accuracy {r[\"accuracy\"]:.4f} head {r[\"head\"][:16]}")')
  else
    summary="no round yet"
  fi
  echo "node $i (pid $pid): $state, $summary"
  i=$((i + 1))
done < "$RUN/pids"
