#!/usr/bin/env bash
# Attack drills against a real local testnet of separate fedmesh processes.
#
#   testnet/drill.sh sybil --scenario flood [-n N] [--identities K] [--rounds R]
#                          [--base-port P] [--out DIR]
#   testnet/drill.sh poisoning [--attack A] [--fraction F] [--defence D] [-n N] [--rounds R]
#                          [--base-port P] [--out DIR]
#
# poisoning: the scenario of `fedmesh drill poisoning` (same attack and defence names) on real
# processes: an N-node testnet (MNIST, plain mode) with defence D runs R rounds clean, then again
# from the same genesis config with round(F·N) attacker nodes (an [attack] section in their
# node.toml). The report (DIR/report.md, DIR/report.json; default testnet/run/drill-poisoning) is
# built from an honest node's audit log: accuracy per round clean vs attacked, evictions and the
# round each attacker was voted out, honest members evicted.
#
# sybil flood: starts an N-node testnet (plain mode, shipped MNIST data) for 2R rounds. The
# first R rounds run clean; then `fedmesh attack flood` plays K outsider identities that dial
# every member, publish signed updates and announcements and send requests until the run ends.
# The report (DIR/report.md, DIR/report.json; default testnet/run/drill-sybil-flood) gives what
# the outsiders got through (messages accepted, answers), the honest round time clean vs under
# flood (median), and every node's peak memory (RSS) in each phase.
set -euo pipefail
source "$(dirname "$0")/common.sh"

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
[ $# -ge 1 ] || { usage >&2; exit 2; }
KIND="$1"; shift
SCENARIO=""
N=4
K=50
ROUNDS=20
BASE_PORT=7100
OUT=""
ATTACK=sign-flip
FRACTION=0.2
DEFENCE=fedmesh
ROUNDS_SET=0
while [ $# -gt 0 ]; do
  case "$1" in
    --scenario) SCENARIO="$2"; shift 2 ;;
    --attack) ATTACK="$2"; shift 2 ;;
    --fraction) FRACTION="$2"; shift 2 ;;
    --defence) DEFENCE="$2"; shift 2 ;;
    -n) N="$2"; shift 2 ;;
    --identities) K="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; ROUNDS_SET=1; shift 2 ;;
    --base-port) BASE_PORT="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ -z "${FEDMESH_BIN:-}" ]; then
  echo "building fedmesh (release)..."
  (cd "$ROOT" && cargo build --release -q -p fedmesh-node)
fi
if [ -n "$(alive_pids)" ]; then
  echo "a testnet is already running (testnet/status.sh); stop it with testnet/down.sh" >&2
  exit 1
fi

if [ "$KIND" = poisoning ]; then
  [ "$ROUNDS_SET" = 1 ] || ROUNDS=15
  [ "$N" -ge 5 ] || N=5
  OUT="${OUT:-$RUN/drill-poisoning}"
  rm -rf "$RUN" "$OUT"
  mkdir -p "$RUN" "$OUT"
  trap '"$ROOT/testnet/down.sh" >/dev/null 2>&1 || true' EXIT
  # The shipped genesis config without any [spec.robust] table, plus the defence's.
  python3 - "$ROOT/configs/genesis.toml" > "$RUN/base.toml" <<'PY'
import sys
skip = False
for line in open(sys.argv[1]):
    if line.startswith("["):
        skip = line.strip() == "[spec.robust]"
    if not skip:
        sys.stdout.write(line)
PY
  "$BIN" drill toml --defence "$DEFENCE" >> "$RUN/base.toml"
  "$BIN" drill toml --attack "$ATTACK" > "$RUN/attack.toml"
  ATTACKERS=$(python3 -c "print(round($FRACTION * $N))")
  for phase in clean attacked; do
    dir="$RUN/$phase"
    "$BIN" genesis --members "$N" --out "$dir/net" --config "$RUN/base.toml" --rounds "$ROUNDS" \
      --base-port "$BASE_PORT" --data "$ROOT/data/mnist_5k.csv.gz" > "$dir.genesis.out"
    if [ "$phase" = attacked ]; then
      for i in $(seq $((N - ATTACKERS)) $((N - 1))); do
        cat "$RUN/attack.toml" >> "$dir/net/member-$i/node.toml"
      done
    fi
    : > "$RUN/pids"
    for i in $(seq 0 $((N - 1))); do
      "$BIN" node --config "$dir/net/member-$i/node.toml" --peer "/ip4/127.0.0.1/tcp/$BASE_PORT" \
        > "$dir/node-$i.out" 2> "$dir/node-$i.log" &
      echo $! >> "$RUN/pids"
    done
    echo "$phase run: $N nodes, $ROUNDS rounds, defence $DEFENCE$([ "$phase" = attacked ] && echo ", attack $ATTACK by the last $ATTACKERS")"
    while [ -n "$(alive_pids)" ]; do sleep 1; done
    "$BIN" audit show --json --data-dir "$dir/net/data/member-0" > "$OUT/$phase.jsonl"
    "$BIN" audit verify --json --data-dir "$dir/net/data/member-0" --genesis "$dir/net/genesis.toml" \
      > "$OUT/$phase.verify.json" || { echo "member 0's log does not verify ($phase)"; exit 1; }
  done
  python3 - "$OUT" "$N" "$ATTACKERS" "$ATTACK" "$FRACTION" "$DEFENCE" "$ROUNDS" <<'PY'
import json, sys
out, n, k, attack, fraction, defence, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), sys.argv[6], int(sys.argv[7])
def load(phase):
    return [e for e in map(json.loads, open(f"{out}/{phase}.jsonl")) if e.get("kind") == "round"]
clean, attacked = load("clean"), load("attacked")
attackers = list(range(n - k, n))
evicted = {t: e["round"] for e in attacked for t in e.get("evicted", [])}
acc = lambda rs: [r["accuracy"] for r in rs]
tail = lambda xs: min(xs[-3:]) if xs else None
report = {
    "attack": attack, "fraction": fraction, "defence": defence, "members": n, "rounds": rounds,
    "attackers": attackers,
    "accuracy_clean": acc(clean), "accuracy_attacked": acc(attacked),
    "final_clean": acc(clean)[-1] if clean else None, "final_attacked": acc(attacked)[-1] if attacked else None,
    "worst_last3_attacked": tail(acc(attacked)),
    "evicted": evicted,
    "attackers_evicted": sorted(a for a in attackers if a in evicted),
    "rounds_to_evict": {a: evicted.get(a) for a in attackers},
    "honest_evicted": sorted(m for m in evicted if m not in attackers),
    "clean_run_evictions": sorted({t for e in clean for t in e.get("evicted", [])}),
}
json.dump(report, open(f"{out}/report.json", "w"), indent=2)
with open(f"{out}/report.md", "w") as f:
    f.write(f"# Poisoning drill on a live testnet: {attack} vs {defence}\n\n")
    f.write(f"{n} member processes on 127.0.0.1, MNIST, {rounds} rounds; attackers: members {attackers} ({fraction:.0%}).\n\n")
    f.write("| | clean | attacked |\n|---|---|---|\n")
    f.write(f"| final accuracy | {report['final_clean']:.4f} | {report['final_attacked']:.4f} ({(report['final_attacked'] - report['final_clean']) * 100:+.1f} points) |\n")
    f.write(f"| evictions | {report['clean_run_evictions'] or 'none'} | {evicted or 'none'} |\n\n")
    f.write(f"- Attackers voted out: {len(report['attackers_evicted'])} of {k}; round of eviction: {report['rounds_to_evict']}.\n")
    f.write(f"- Honest members evicted: {report['honest_evicted'] or 'none'} (clean run: {report['clean_run_evictions'] or 'none'}).\n\n")
    f.write("| round | clean | attacked |\n|---|---|---|\n")
    for i in range(max(len(clean), len(attacked))):
        c = f"{clean[i]['accuracy']:.4f}" if i < len(clean) else ""
        a = f"{attacked[i]['accuracy']:.4f}" if i < len(attacked) else ""
        f.write(f"| {i + 1} | {c} | {a} |\n")
print(open(f"{out}/report.md").read())
PY
  exit 0
fi

if [ "$KIND" != sybil ] || [ "$SCENARIO" != flood ]; then
  echo "unknown drill: $KIND ${SCENARIO:+--scenario $SCENARIO} (live drills: poisoning, sybil --scenario flood)" >&2
  exit 2
fi
OUT="${OUT:-$RUN/drill-sybil-flood}"

# up.sh starts afresh; remove the last run first so that its files are not mistaken for this one's.
rm -rf "$RUN"
TOTAL=$((2 * ROUNDS))
"$ROOT/testnet/up.sh" -n "$N" --rounds "$TOTAL" --base-port "$BASE_PORT" > "$RUN.drill-up.log" 2>&1 &
UP=$!
trap '"$ROOT/testnet/down.sh" >/dev/null 2>&1 || true' EXIT

# Wait for the genesis file and node 0's round reports.
rounds_done() {
  local c
  c=$(grep -c '"event":"round"' "$RUN/node-0.out" 2>/dev/null) || true
  echo "${c:-0}"
}
sample_rss() { # phase -> lines "phase pid rss_kib"
  for pid in $(alive_pids); do
    rss=$(ps -o rss= -p "$pid" 2>/dev/null | tr -d ' ') || true
    [ -n "$rss" ] && echo "$1 $pid $rss"
  done
}
until [ -f "$RUN/net/genesis.toml" ] && [ -f "$RUN/pids" ]; do
  kill -0 "$UP" 2>/dev/null || { cat "$RUN.drill-up.log"; exit 1; }
  sleep 0.5
done
mkdir -p "$OUT"
: > "$OUT/rss.txt"
echo "clean phase: rounds 1-$ROUNDS"
while [ "$(rounds_done)" -lt "$ROUNDS" ]; do
  kill -0 "$UP" 2>/dev/null || { cat "$RUN.drill-up.log"; exit 1; }
  sample_rss clean >> "$OUT/rss.txt"
  sleep 0.5
done

echo "flood phase: $K outsider identities until round $TOTAL"
FLOOD_START_MS=$(($(date +%s%N) / 1000000))
# A real attacker floods from its own machines; here it shares the members' cores, so it runs at
# the lowest priority: the round time then shows what handling the flood costs the members, not
# the CPU the attacker's own process takes (its dial count is in the report).
nice -n 19 "$BIN" attack flood --genesis "$RUN/net/genesis.toml" --identities "$K" --seconds 3600 \
  > "$OUT/flood.json" 2> "$OUT/flood.log" &
FLOOD=$!
while kill -0 "$UP" 2>/dev/null && [ "$(rounds_done)" -lt "$TOTAL" ]; do
  sample_rss flood >> "$OUT/rss.txt"
  sleep 0.5
done
# Stop the flooder with SIGINT-free kill; it prints its report only on a normal end, so ask for
# a short second run's numbers instead: the counters below come from the members' own logs.
kill "$FLOOD" 2>/dev/null || true
wait "$UP" || { echo "testnet failed: see $RUN.drill-up.log"; exit 1; }

python3 - "$RUN" "$OUT" "$N" "$K" "$ROUNDS" "$FLOOD_START_MS" <<'EOF'
import json, re, statistics, sys, glob, os
run, out, n, k, rounds, flood_start = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
reps = [json.loads(l) for l in open(f"{run}/node-0.out") if l.startswith("{") and '"round"' in l]
reps = [r for r in reps if r.get("event") == "round"]
times = [(b["round"], (b["committed_at_ms"] - a["committed_at_ms"]) / 1000) for a, b in zip(reps, reps[1:])]
# Skip the first two rounds (startup) and the round during which the flood began.
clean = [t for r, t in times if 2 < r <= rounds]
flood = [t for r, t in times if r > rounds + 1]
rss = {"clean": {}, "flood": {}}
for line in open(f"{out}/rss.txt"):
    phase, pid, kib = line.split()
    rss[phase][pid] = max(rss[phase].get(pid, 0), int(kib))
refused = conns = limited = 0
for log in sorted(glob.glob(f"{run}/node-*.log")):
    last = [l for l in open(log) if "refused so far" in l]
    if last:
        m = re.search(r"connections=(\d+) rate_limited_messages=(\d+)", last[-1])
        conns += int(m.group(1)); limited += int(m.group(2))
# Messages from outsiders accepted: every accepted message names a member as sender and is
# checked against that member's key; a node logs "rejected" for the rest. Count rejections by
# reason from the nodes' logs, and the members' round participants (only members may appear).
fl = json.load(open(f"{out}/flood.json"))
participants = sorted({p for r in reps for p in r["participants"]})
outsiders_in_rounds = [p for p in participants if p >= n]
report = {
    "scenario": "flood", "members": n, "identities": k, "rounds_clean": rounds, "rounds_flood": rounds,
    "round_s_clean_median": statistics.median(clean) if clean else None,
    "round_s_flood_median": statistics.median(flood) if flood else None,
    "round_time_increase": (statistics.median(flood) / statistics.median(clean) - 1) if clean and flood else None,
    "peak_rss_mib_clean": {pid: v / 1024 for pid, v in rss["clean"].items()},
    "peak_rss_mib_flood": {pid: v / 1024 for pid, v in rss["flood"].items()},
    "connections_refused_by_members": conns,
    "messages_rate_limited": limited,
    "outsiders_in_round_records": outsiders_in_rounds,
    "flood": fl,
}
json.dump(report, open(f"{out}/report.json", "w"), indent=2)
inc = report["round_time_increase"]
with open(f"{out}/report.md", "w") as f:
    f.write(f"# Sybil drill: flood\n\n{n} members (plain mode, MNIST), {k} outsider identities flooding from round {rounds + 1} to {2 * rounds}.\n\n")
    f.write("| measure | clean | under flood |\n|---|---|---|\n")
    f.write(f"| median round time (s) | {report['round_s_clean_median']:.3f} | {report['round_s_flood_median']:.3f} ({inc * 100:+.1f} %) |\n")
    pc = max(report["peak_rss_mib_clean"].values(), default=0); pf = max(report["peak_rss_mib_flood"].values(), default=0)
    f.write(f"| largest node peak RSS (MiB) | {pc:.1f} | {pf:.1f} |\n\n")
    f.write(f"- The outsiders dialled {fl['dials']} times in {fl['seconds']:.0f} s; {fl['long_connections']} connections stayed open over a second.\n")
    f.write(f"- Outsider messages a member took (publishes that reached a subscribed member): {fl['published']} of {fl['publish_attempts']}; requests answered: {fl['responses']} of {fl['requests']}; member gossip that reached an outsider: {fl['gossip_received']}.\n")
    f.write(f"- Connections the members refused: {conns}; gossip messages dropped over rate limits: {limited}.\n")
    f.write(f"- Outsiders in any round record: {len(outsiders_in_rounds)}.\n")
print(open(f"{out}/report.md").read())
EOF
