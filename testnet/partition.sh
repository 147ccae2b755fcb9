#!/usr/bin/env bash
# Partition drill with Linux network namespaces (run as root): every node runs in its own
# namespace (fm0, fm1, ...) on a bridge, 10.77.0.10+i; after round --cut-after the victim's link
# goes down (packets dropped, no resets — a real partition) for --cut-for rounds of the majority,
# then comes back up. Checks: the majority goes on (the victim a dropout), the victim forks nothing
# (every entry it has is the majority's), after healing it catches up and takes part again, and at
# the end every log verifies and all heads are equal.
#
#   testnet/partition.sh [-n 4] [--rounds 12] [--victim K] [--cut-after 3] [--cut-for 4] [--mode MODE]
#
# Uses the dev build under `nice -n 10` (FEDMESH_BIN overrides); results in testnet/run-partition/.
set -euo pipefail
source "$(dirname "$0")/common.sh"

N=4
ROUNDS=12
VICTIM=""
CUT_AFTER=3
CUT_FOR=4
MODE=plain
BASE_PORT=7400
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --victim) VICTIM="$2"; shift 2 ;;
    --cut-after) CUT_AFTER="$2"; shift 2 ;;
    --cut-for) CUT_FOR="$2"; shift 2 ;;
    --mode) MODE="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
VICTIM="${VICTIM:-$((N - 1))}"
if [ "$(id -u)" -ne 0 ]; then echo "partition.sh needs root (ip netns); the unprivileged version is the e2e test cut_off_member_does_not_fork_and_catches_up_after_healing" >&2; exit 2; fi
if [ $((CUT_AFTER + CUT_FOR + 3)) -gt "$ROUNDS" ]; then echo "--rounds must leave at least 3 rounds after healing" >&2; exit 2; fi
RUN="${FEDMESH_TESTNET_DIR:-$ROOT/testnet/run-partition}"
if [ -z "${FEDMESH_BIN:-}" ]; then
  (cd "$ROOT" && nice -n 10 cargo build -q -p fedmesh-node --bin fedmesh)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/fedmesh"
fi
ip_of() { echo "10.77.0.$((10 + $1))"; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for i in $(seq 0 $((N - 1))); do ip netns del "fm$i" 2>/dev/null || true; done
  ip link del fmbr0 2>/dev/null || true
}
trap cleanup EXIT
cleanup

# The network: a bridge in this namespace, one veth pair per node namespace.
ip link add fmbr0 type bridge
ip link set fmbr0 up
for i in $(seq 0 $((N - 1))); do
  ip netns add "fm$i"
  ip link add "fmv$i" type veth peer name eth0 netns "fm$i"
  ip link set "fmv$i" master fmbr0 up
  ip -n "fm$i" addr add "$(ip_of "$i")/24" dev eth0
  ip -n "fm$i" link set eth0 up
  ip -n "fm$i" link set lo up
done

rm -rf "$RUN"
mkdir -p "$RUN"
cat > "$RUN/dealer.toml" <<EOF
[spec.params]
update_timeout_ms = 5000
failover_timeout_ms = 2500
status_interval_ms = 1000
EOF
"$BIN" genesis --members "$N" --out "$RUN/net" --config "$RUN/dealer.toml" --rounds "$ROUNDS" \
  --mode "$MODE" --base-port "$BASE_PORT" --data "$ROOT/data/mnist_5k.csv.gz" > "$RUN/genesis.out"
for i in $(seq 0 $((N - 1))); do
  for j in $(seq 0 $((N - 1))); do
    [ "$i" = "$j" ] && continue
    printf '\n[[routes]]\nmember = %d\naddrs = ["/ip4/%s/tcp/%d"]\n' "$j" "$(ip_of "$j")" $((BASE_PORT + j)) \
      >> "$RUN/net/member-$i/node.toml"
  done
done
# The namespaces reach each other before the cut: a connection to a closed port is refused at
# once (reachable); a timeout means the bridge drops traffic.
reachable=no
for _ in 1 2 3 4 5 6 7 8 9 10; do
  out=$(timeout 3 ip netns exec fm0 bash -c "exec 3<>/dev/tcp/$(ip_of "$VICTIM")/9" 2>&1 || true)
  case "$out" in *refused*) reachable=yes; break ;; esac
  sleep 0.5
done
if [ "$reachable" != yes ]; then
  echo "namespace fm0 cannot reach $(ip_of "$VICTIM") (is bridged traffic filtered?)" >&2; exit 1
fi

for i in $(seq 0 $((N - 1))); do
  ip netns exec "fm$i" nice -n 10 "$BIN" node --config "$RUN/net/member-$i/node.toml" \
    --listen "/ip4/$(ip_of "$i")/tcp/$((BASE_PORT + i))" > "$RUN/node-$i.out" 2> "$RUN/node-$i.log" &
  pids+=($!)
done
reported() { grep -c '"event":"round"' "$RUN/node-$1.out" 2>/dev/null || true; }
wait_rounds() { # node, rounds, timeout s
  local t=0
  while [ "$(reported "$1")" -lt "$2" ]; do
    sleep 1; t=$((t + 1))
    if [ "$t" -ge "$3" ]; then echo "node $1 did not reach round $2 in $3 s (see $RUN/node-$1.log)" >&2; exit 1; fi
  done
}
watch=0; [ "$VICTIM" = 0 ] && watch=1

echo "$N nodes in namespaces fm0..fm$((N - 1)); waiting for round $CUT_AFTER"
wait_rounds "$watch" "$CUT_AFTER" 300
ip link set "fmv$VICTIM" down
cut_at=$(reported "$watch")
echo "round $cut_at: member $VICTIM cut off (link down)"
wait_rounds "$watch" $((cut_at + CUT_FOR)) 300
victim_during=$(reported "$VICTIM")
ip link set "fmv$VICTIM" up
healed_at=$(reported "$watch")
echo "round $healed_at: healed (member $VICTIM had $victim_during rounds)"

status=0
for i in $(seq 0 $((N - 1))); do
  if ! wait "${pids[$i]}"; then echo "node $i exited with an error (see $RUN/node-$i.log)"; status=1; fi
done
pids=()
heads=()
for i in $(seq 0 $((N - 1))); do
  out=$("$BIN" audit verify --json --data-dir "$RUN/net/data/member-$i" --genesis "$RUN/net/genesis.toml") || true
  echo "node $i: $out"
  head=$(echo "$out" | python3 "$ROOT/testnet/rounds.py" head)
  heads+=("$head")
  [ "$head" = FAILED ] && status=1
done
if [ "$(printf '%s\n' "${heads[@]}" | sort -u | wc -l)" -ne 1 ]; then echo "heads differ"; status=1; fi
python3 - "$RUN" "$watch" "$VICTIM" "$cut_at" "$healed_at" "$victim_during" "$ROUNDS" <<'EOF' || status=1
import json, sys
run, watch, victim, cut_at, healed_at, during, rounds = sys.argv[1], *map(int, sys.argv[2:])
def reports(i):
    return [r for r in (json.loads(l) for l in open(f"{run}/node-{i}.out") if l.startswith("{")) if r.get("event") == "round"]
major = {r["height"]: r["head"] for r in reports(watch)}
ok = True
def check(cond, what):
    global ok
    print(("ok   " if cond else "FAIL ") + what)
    ok &= cond
cut = [r for r in reports(watch) if cut_at + 1 < r["round"] <= healed_at]
check(len(cut) > 0 and all(victim in r["dropouts"] for r in cut),
      f"the majority committed rounds {[r['round'] for r in cut]} with member {victim} a dropout")
check(during <= cut_at + 1, f"member {victim} committed no round while cut off ({during} rounds, cut at {cut_at})")
mine = reports(victim)
check(all(major.get(r["height"]) == r["head"] for r in mine), f"every entry member {victim} committed is the majority's (no fork)")
check(len(mine) == rounds, f"member {victim} caught up: {len(mine)} of {rounds} rounds")
check(any(victim in r["participants"] for r in reports(watch) if r["round"] > healed_at + 1),
      f"member {victim} took part again after healing")
summary = {"cut_at_round": cut_at, "healed_at_round": healed_at,
           "rounds_without_victim": len(cut), "victim_rounds_while_cut": during, "ok": ok}
json.dump(summary, open(f"{run}/partition.json", "w"))
sys.exit(0 if ok else 1)
EOF
[ "$status" = 0 ] && echo "partition drill: PASS" || echo "partition drill: FAIL"
exit $status
