#!/usr/bin/env bash
# Soak test: an N-node testnet runs R rounds while random nodes are killed (SIGKILL) and restarted
# every few rounds; at the end every log must verify, all heads be equal, no committed round be
# lost, and the RSS of the never-killed nodes (right after their round-start trim) grow by at most
# 10 % from round 10 to round R.
#
#   testnet/soak.sh [-n 8] [--rounds 100] [--mode plain|secagg] [--seed S] [--out DIR] [soak.py flags]
#
# Uses the dev build (deps at opt-level 3) under `nice -n 10`; FEDMESH_BIN overrides the binary.
# Results: DIR/soak.json (default testnet/run-soak-MODE/), node logs beside it.
# Heap profile of a witness: --wrap-witness 'heaptrack -o /tmp/ht-node0' runs member 0 under
# heaptrack; --profile-until R makes it exit right after the round-start trim that follows round R
# (FEDMESH_DIAG_EXIT_AFTER_ROUND), so `heaptrack_print -l` lists what it held then (`-d` diffs two profiles). Such a run
# is a profile, not a soak verdict (member 0's checks fail; its RSS includes heaptrack's).
set -euo pipefail
source "$(dirname "$0")/common.sh"

N=8
ROUNDS=100
MODE=plain
SEED=1
OUT=""
EXTRA=()
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --mode) MODE="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
OUT="${OUT:-$ROOT/testnet/run-soak-$MODE}"
if [ -z "${FEDMESH_BIN:-}" ]; then
  echo "building fedmesh (dev profile)..."
  (cd "$ROOT" && nice -n 10 cargo build -q -p fedmesh-node --bin fedmesh)
  SRC="${CARGO_TARGET_DIR:-$ROOT/target}/debug/fedmesh"
else
  SRC="$FEDMESH_BIN"
fi
rm -rf "$OUT"
mkdir -p "$OUT"
# A copy, so that a rebuild during the soak does not change the binary that restarted nodes run.
cp "$SRC" "$OUT/fedmesh"
exec python3 "$ROOT/testnet/soak.py" --bin "$OUT/fedmesh" --run "$OUT" --data "$ROOT/data/mnist_5k.csv.gz" \
  -n "$N" --rounds "$ROUNDS" --mode "$MODE" --seed "$SEED" "${EXTRA[@]}"
