#!/usr/bin/env bash
# Benchmark the local testnet: wall time per round and peak RSS per node, for 4 and 8 nodes.
#
#   testnet/bench.sh [--rounds R] [--sizes "4 8"] [--mode plain|secagg]
#
# Each size runs testnet/up.sh (release build, IID MNIST, configs/genesis.toml) one after the
# other on this machine. Round time = time between consecutive commits at node 0 (the first round,
# which includes start-up and connection set-up, is reported separately). Peak RSS = VmHWM that
# each node reports when it stops.
set -euo pipefail
source "$(dirname "$0")/common.sh"
ROUNDS=10
SIZES="4 8"
MODE=plain
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --sizes) SIZES="$2"; shift 2 ;;
    --mode) MODE="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
(cd "$ROOT" && cargo build --release -q -p fedmesh-node)
for n in $SIZES; do
  FEDMESH_BIN="$BIN" "$ROOT/testnet/up.sh" -n "$n" --rounds "$ROUNDS" --mode "$MODE" --base-port $((7100 + 20 * n)) > "$ROOT/testnet/bench-$n.log" 2>&1 || {
    echo "testnet of $n nodes failed; see testnet/bench-$n.log"; exit 1; }
  python3 - "$RUN" "$n" <<'PY'
import json, statistics, sys, glob
run, n = sys.argv[1], int(sys.argv[2])
rounds = [json.loads(l) for l in open(f"{run}/node-0.out") if '"event":"round"' in l]
t = [r["committed_at_ms"] for r in rounds]
gaps = [(b - a) / 1000 for a, b in zip(t, t[1:])]
rss = []
for i in range(n):
    for l in open(f"{run}/node-{i}.out"):
        if '"event":"stopped"' in l:
            rss.append(json.loads(l)["peak_rss_kib"] / 1024)
acc = rounds[-1]["accuracy"]
print(f"mode={rounds[-1].get('mode', '?')} nodes={n} rounds={len(rounds)} round_time_median_s={statistics.median(gaps):.2f} "
      f"round_time_min_s={min(gaps):.2f} round_time_max_s={max(gaps):.2f} "
      f"peak_rss_mib_median={statistics.median(rss):.0f} peak_rss_mib_max={max(rss):.0f} final_accuracy={acc:.4f}")
PY
done
