#!/usr/bin/env bash
# Stop the local testnet: SIGTERM (nodes flush their logs and exit), then SIGKILL after 10 s.
set -euo pipefail
source "$(dirname "$0")/common.sh"
pids=$(alive_pids)
if [ -z "$pids" ]; then echo "no testnet running"; exit 0; fi
kill $pids 2>/dev/null || true
for _ in $(seq 1 20); do
  [ -z "$(alive_pids)" ] && { echo "stopped"; exit 0; }
  sleep 0.5
done
kill -9 $(alive_pids) 2>/dev/null || true
echo "stopped (forced)"
