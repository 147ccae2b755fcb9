#!/usr/bin/env bash
# Disk-full drill (run as root: it mounts a tmpfs): the victim's data dir lives on a small tmpfs;
# after round --fill-after a filler file takes every free byte of it for --full-for rounds of the
# others, then is deleted. Checks: the victim never panics and loses no entry it reported
# committed; the others go on (the victim a dropout); the victim's log never holds anything but
# the others' entries (no fork, no torn entry); after the space comes back it catches up — by
# itself, or, if it stopped with a clear error, after one restart — and takes part again; at the
# end every log verifies and all heads are equal.
#
#   testnet/diskfull.sh [-n 4] [--rounds 12] [--victim K] [--fill-after 3] [--full-for 4] [--mode MODE] [--size-mb 64] [--leave-kb 0]
#
# --leave-kb K leaves K KiB free (e.g. room for one checkpoint file but not for what follows it).
# Uses the dev build under `nice -n 10` (FEDMESH_BIN overrides); results in testnet/run-diskfull/.
set -euo pipefail
source "$(dirname "$0")/common.sh"

N=4
ROUNDS=12
VICTIM=""
FILL_AFTER=3
FULL_FOR=4
MODE=plain
SIZE_MB=64
LEAVE_KB=0
BASE_PORT=7500
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --victim) VICTIM="$2"; shift 2 ;;
    --fill-after) FILL_AFTER="$2"; shift 2 ;;
    --full-for) FULL_FOR="$2"; shift 2 ;;
    --mode) MODE="$2"; shift 2 ;;
    --size-mb) SIZE_MB="$2"; shift 2 ;;
    --leave-kb) LEAVE_KB="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
VICTIM="${VICTIM:-$((N - 1))}"
if [ "$(id -u)" -ne 0 ]; then echo "diskfull.sh needs root (it mounts a tmpfs for the victim's data dir)" >&2; exit 2; fi
if [ $((FILL_AFTER + FULL_FOR + 3)) -gt "$ROUNDS" ]; then echo "--rounds must leave at least 3 rounds after the space comes back" >&2; exit 2; fi
RUN="${FEDMESH_TESTNET_DIR:-$ROOT/testnet/run-diskfull}"
if [ -z "${FEDMESH_BIN:-}" ]; then
  (cd "$ROOT" && nice -n 10 cargo build -q -p fedmesh-node --bin fedmesh)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/fedmesh"
fi
VDATA="$RUN/net/data/member-$VICTIM"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if mountpoint -q "$VDATA" 2>/dev/null; then
    # Keep the victim's data for a post-mortem: copy it off the tmpfs first.
    rm -rf "$RUN/victim-data"; cp -a "$VDATA" "$RUN/victim-data" 2>/dev/null || true
    umount "$VDATA" || true
  fi
}
trap cleanup EXIT
if mountpoint -q "$VDATA" 2>/dev/null; then umount "$VDATA"; fi

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
mkdir -p "$VDATA"
mount -t tmpfs -o "size=${SIZE_MB}m" fedmesh-diskfull "$VDATA"

start_node() {
  nice -n 10 "$BIN" node --config "$RUN/net/member-$1/node.toml" >> "$RUN/node-$1.out" 2>> "$RUN/node-$1.log" &
  pids[$1]=$!
}
for i in $(seq 0 $((N - 1))); do start_node "$i"; done
reported() { grep -c '"event":"round"' "$RUN/node-$1.out" 2>/dev/null || true; }
wait_rounds() { # node, rounds, timeout s
  local t=0
  while [ "$(reported "$1")" -lt "$2" ]; do
    sleep 1; t=$((t + 1))
    if [ "$t" -ge "$3" ]; then echo "node $1 did not reach round $2 in $3 s (see $RUN/node-$1.log)" >&2; exit 1; fi
  done
}
watch=0; [ "$VICTIM" = 0 ] && watch=1

echo "$N nodes; member $VICTIM's data dir on a ${SIZE_MB} MiB tmpfs; waiting for round $FILL_AFTER"
wait_rounds "$watch" "$FILL_AFTER" 300
# Take every free byte but --leave-kb (dd stops with "No space left on device" when it is 0).
if [ "$LEAVE_KB" -gt 0 ]; then
  avail_kb=$(df -k --output=avail "$VDATA" | tail -1 | tr -d ' ')
  dd if=/dev/zero of="$VDATA/filler" bs=1K count=$((avail_kb - LEAVE_KB)) 2>/dev/null || true
else
  dd if=/dev/zero of="$VDATA/filler" bs=1M 2>/dev/null || true
fi
filled_at=$(reported "$watch")
echo "round $filled_at: member $VICTIM's disk full ($(df -h --output=avail "$VDATA" | tail -1 | tr -d ' ') left)"
wait_rounds "$watch" $((filled_at + FULL_FOR)) 300
victim_during=$(reported "$VICTIM")
rm -f "$VDATA/filler"
freed_at=$(reported "$watch")
restarted=no
sleep 2
if ! is_alive "${pids[$VICTIM]}"; then
  wait "${pids[$VICTIM]}" && code=0 || code=$?
  echo "round $freed_at: space back; member $VICTIM had stopped (exit $code): restarting it"
  restarted=yes
  start_node "$VICTIM"
else
  echo "round $freed_at: space back (member $VICTIM had $victim_during rounds, still running)"
fi

status=0
for i in $(seq 0 $((N - 1))); do
  if ! wait "${pids[$i]}"; then echo "node $i exited with an error (see $RUN/node-$i.log)"; status=1; fi
done
pids=()
if grep -q "panicked" "$RUN/node-$VICTIM.log"; then echo "member $VICTIM panicked (see $RUN/node-$VICTIM.log)"; status=1; fi
heads=()
for i in $(seq 0 $((N - 1))); do
  out=$("$BIN" audit verify --json --data-dir "$RUN/net/data/member-$i" --genesis "$RUN/net/genesis.toml") || true
  echo "node $i: $out"
  head=$(echo "$out" | python3 "$ROOT/testnet/rounds.py" head)
  heads+=("$head")
  [ "$head" = FAILED ] && status=1
done
if [ "$(printf '%s\n' "${heads[@]}" | sort -u | wc -l)" -ne 1 ]; then echo "heads differ"; status=1; fi
errors=$(grep -c "No space left\|ENOSPC\|os error 28" "$RUN/node-$VICTIM.log" || true)
python3 - "$RUN" "$watch" "$VICTIM" "$filled_at" "$freed_at" "$victim_during" "$ROUNDS" "$restarted" "$errors" <<'EOF' || status=1
import json, sys
run, watch, victim, filled_at, freed_at, during, rounds = sys.argv[1], *map(int, sys.argv[2:8])
restarted, errors = sys.argv[8], int(sys.argv[9])
def reports(i):
    return [r for r in (json.loads(l) for l in open(f"{run}/node-{i}.out") if l.startswith("{")) if r.get("event") == "round"]
major = {r["height"]: r["head"] for r in reports(watch)}
ok = True
def check(cond, what):
    global ok
    print(("ok   " if cond else "FAIL ") + what)
    ok &= cond
full = [r for r in reports(watch) if filled_at + 1 < r["round"] <= freed_at]
check(len(full) > 0, f"the others committed rounds {[r['round'] for r in full]} while member {victim}'s disk was full")
check(errors > 0, f"member {victim} logged the full disk ({errors} lines name it)")
mine = reports(victim)
check(all(major.get(r["height"]) == r["head"] for r in mine), f"every entry member {victim} reported is the others' (no fork)")
check(len({r['height'] for r in mine}) == rounds, f"member {victim} has all {rounds} rounds ({len(mine)} reports)")
check(any(victim in r["participants"] for r in reports(watch) if r["round"] > freed_at + 1),
      f"member {victim} took part again after the space came back")
summary = {"filled_at_round": filled_at, "freed_at_round": freed_at, "rounds_while_full": len(full),
           "victim_rounds_while_full": during, "victim_restarted": restarted == "yes",
           "victim_error_lines": errors, "ok": ok}
json.dump(summary, open(f"{run}/diskfull.json", "w"))
print(json.dumps(summary))
sys.exit(0 if ok else 1)
EOF
[ "$status" = 0 ] && echo "disk-full drill: PASS" || echo "disk-full drill: FAIL"
exit $status
