#!/usr/bin/env bash
# Mode secagg with groups against a hidden attacker: N nodes in groups of at least G, the last
# member sign-flipping its update ×4 every round (or nobody with --clean); prints the round table
# (revealed groups, ! = flagged, evictions) and the wall time.
#
#   testnet/groups_attack.sh [-n N] [--group-size G] [--rounds R] [--rule RULE] [--clean]
#                            [--base-port P] [--reference-rows R]
#
# --reference-rows R (default 0 = off): public reference rows the group means are also judged on
# (genesis spec.robust.reference_rows). With this script's groups of 3 it flags honest groups
# (BENCHMARKS.md, "Group testing over the network").
# Uses $FEDMESH_BIN (default target/release/fedmesh); everything lives under
# $FEDMESH_TESTNET_DIR/groups-attack (default testnet/run/groups-attack).
set -euo pipefail
source "$(dirname "$0")/common.sh"

N=12
G=3
ROUNDS=10
RULE=median
ATTACK=1
BASE_PORT=7400
REFERENCE_ROWS=0
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    --group-size) G="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --rule) RULE="$2"; shift 2 ;;
    --clean) ATTACK=0; shift ;;
    --base-port) BASE_PORT="$2"; shift 2 ;;
    --reference-rows) REFERENCE_ROWS="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
D="$RUN/groups-attack"
rm -rf "$D"
mkdir -p "$D"
cat > "$D/genesis-config.toml" <<CFG
[spec]
mode = "secagg"
[spec.secagg]
phase_timeout_ms = 15000
[spec.robust]
rule = "$RULE"
group_size = $G
reference_rows = $REFERENCE_ROWS
votes = true
warmup_rounds = 1
[spec.params]
update_timeout_ms = 40000
failover_timeout_ms = 20000
status_interval_ms = 1000
CFG
"$BIN" genesis --members "$N" --out "$D/net" --config "$D/genesis-config.toml" --rounds "$ROUNDS" \
  --base-port "$BASE_PORT" --data "$ROOT/data/mnist_5k.csv.gz" > "$D/genesis.out"
if [ "$ATTACK" = 1 ]; then
  printf '\n[attack]\nkind = "sign_flip"\nscale = 4.0\n' >> "$D/net/member-$((N - 1))/node.toml"
fi
pids=()
for i in $(seq 0 $((N - 1))); do
  "$BIN" node --config "$D/net/member-$i/node.toml" --peer "/ip4/127.0.0.1/tcp/$BASE_PORT" \
    > "$D/node-$i.out" 2> "$D/node-$i.log" &
  pids+=($!)
done
start=$(date +%s)
for p in "${pids[@]}"; do wait "$p" || true; done
echo "$N nodes, groups of at least $G, rule $RULE, attacker: $([ "$ATTACK" = 1 ] && echo "member $((N - 1))" || echo none); $(( $(date +%s) - start )) s"
python3 "$ROOT/testnet/rounds.py" table < "$D/node-0.out"
