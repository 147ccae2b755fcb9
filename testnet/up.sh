#!/usr/bin/env bash
# Start a local N-node fedmesh testnet on 127.0.0.1, train on the shipped MNIST data, print each
# round's accuracy as it lands, then verify every node's audit log and check that all heads match.
#
#   testnet/up.sh [-n N] [--rounds R] [--mode MODE] [--base-port P] [--config FILE]
#                 [--group-size G] [--reference-rows R]
#
# --group-size G (modes secagg, paillier): split each round's members into random groups of at least G;
# only group sums are revealed, and the config's robust rule and votes work on them.
# --reference-rows R (with --group-size; default 0 = off): public reference rows set aside before the
# partition; every group mean is also judged by what it does to the model's loss on them (measured in
# the drill with 20 members in groups of 5; in groups of 3 it flags honest groups, see BENCHMARKS.md).
# Everything lives under testnet/run/ (genesis, member folders, logs, data dirs).
set -euo pipefail
source "$(dirname "$0")/common.sh"

N=4
ROUNDS=5
MODE=plain
BASE_PORT=7100
CONFIG="$ROOT/configs/genesis.toml"
GROUP_SIZE=""
REFERENCE_ROWS=0
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --mode) MODE="$2"; shift 2 ;;
    --base-port) BASE_PORT="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --group-size) GROUP_SIZE="$2"; shift 2 ;;
    --reference-rows) REFERENCE_ROWS="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ "$ROUNDS" -lt 1 ]; then echo "--rounds must be at least 1" >&2; exit 2; fi
if [ -n "$GROUP_SIZE" ] && [ "$MODE" != secagg ] && [ "$MODE" != paillier ]; then
  echo "--group-size needs --mode secagg or paillier (groups are how secure aggregation stays robust)" >&2; exit 2
fi

if [ -n "$(alive_pids)" ]; then
  echo "a testnet is already running (testnet/status.sh); stop it with testnet/down.sh" >&2
  exit 1
fi
if [ -z "${FEDMESH_BIN:-}" ]; then
  echo "building fedmesh (release)..."
  (cd "$ROOT" && cargo build --release -q -p fedmesh-node)
fi

rm -rf "$RUN"
mkdir -p "$RUN"
if [ -n "$GROUP_SIZE" ]; then
  # The config with group_size and reference_rows set in its [spec.robust] table (added if it has
  # none).
  python3 - "$CONFIG" "$GROUP_SIZE" "$REFERENCE_ROWS" > "$RUN/genesis-config.toml" <<'PY'
import re, sys
text, g, r = open(sys.argv[1]).read(), int(sys.argv[2]), int(sys.argv[3])
text = re.sub(r"(?m)^(group_size|reference_rows)\s*=.*\n", "", text)
lines = "group_size = %d\nreference_rows = %d" % (g, r)
if re.search(r"(?m)^\[spec\.robust\]\s*$", text):
    text = re.sub(r"(?m)^\[spec\.robust\]\s*$", "[spec.robust]\n" + lines, text, count=1)
else:
    text += "\n[spec.robust]\n%s\n" % lines
print(text)
PY
  CONFIG="$RUN/genesis-config.toml"
fi
"$BIN" genesis --members "$N" --out "$RUN/net" --config "$CONFIG" --rounds "$ROUNDS" \
  --mode "$MODE" --base-port "$BASE_PORT" --data "$ROOT/data/mnist_5k.csv.gz" | tee "$RUN/genesis.out"

for i in $(seq 0 $((N - 1))); do
  "$BIN" node --config "$RUN/net/member-$i/node.toml" --peer "/ip4/127.0.0.1/tcp/$BASE_PORT" \
    > "$RUN/node-$i.out" 2> "$RUN/node-$i.log" &
  echo $! >> "$RUN/pids"
done
echo "started $N nodes (mode $MODE, $ROUNDS rounds); logs in $RUN/node-*.log"

# Follow node 0's round reports until every node has exited.
printf '%-6s %-9s %-8s %-14s %s\n' round accuracy loss participants dropouts
seen=0
while true; do
  if [ -f "$RUN/node-0.out" ]; then
    # Read the reports once: counting and printing from two reads of a file that grows in
    # between printed a round twice.
    rounds=$(grep '"event":"round"' "$RUN/node-0.out" || true)
    total=$(printf '%s' "$rounds" | grep -c . || true)
    if [ "$total" -gt "$seen" ]; then
      printf '%s\n' "$rounds" | tail -n +$((seen + 1)) | python3 "$ROOT/testnet/rounds.py" table
      seen=$total
    fi
  fi
  [ -z "$(alive_pids)" ] && break
  sleep 1
done

status=0
i=0
while read -r pid; do
  if ! wait "$pid" 2>/dev/null; then
    code=$?
    # `wait` reports 127 for a pid that is not our child any more; the .log tells the story.
    if [ "$code" -ne 127 ]; then echo "node $i exited with status $code (see $RUN/node-$i.log)"; status=1; fi
  fi
  i=$((i + 1))
done < "$RUN/pids"

echo "verifying every node's audit log..."
heads=()
for i in $(seq 0 $((N - 1))); do
  out=$("$BIN" audit verify --json --data-dir "$RUN/net/data/member-$i" --genesis "$RUN/net/genesis.toml") || true
  echo "node $i: $out"
  head=$(echo "$out" | python3 "$ROOT/testnet/rounds.py" head)
  heads+=("$head")
  [ "$head" = FAILED ] && status=1
done
if [ "$(printf '%s\n' "${heads[@]}" | sort -u | wc -l)" -ne 1 ]; then
  echo "heads differ between nodes"; status=1
else
  echo "all $N heads equal: ${heads[0]}"
fi
exit $status
