#!/usr/bin/env bash
# Flower 1.18 SecAgg+ vs fedmesh secure aggregation, side by side on this machine.
#
#   bench/secagg_compare.sh [--with-100[=sparse]] [--rounds N] [--slow-rounds N]
#                           [--warmup N] [--fedmesh-reps N] [--skip-install]
#
# For every configuration (n, graph, dropout) it runs bench/flower_secagg.py
# (Flower simulation engine, median of warm rounds) and right after it
# `fedmesh bench secagg ... --json` (median of --fedmesh-reps runs of one round),
# then prints one table. Default: n in {20, 50}, graph in {sparse, complete},
# dropout in {0, 0.1}, plus plain FedAvg (Flower, no secure aggregation) per n.
#   --with-100         also n=100, sparse and complete (complete: minutes per round)
#   --with-100=sparse  also n=100, sparse only
#   --rounds N         measured Flower rounds per configuration (default 5)
#   --slow-rounds N    measured Flower rounds for complete graphs with n >= 50 (default 3)
#   --warmup N         Flower rounds discarded first (default 1)
#   --fedmesh-reps N   fedmesh invocations per configuration (default 5)
#   --skip-install     reuse bench/.venv as it is
# Logs and per-run JSON go to bench/results/<timestamp>/.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
VENV="$BENCH/.venv"
PY="$VENV/bin/python"
FEDMESH="$ROOT/target/release/fedmesh"

WITH100=""
ROUNDS=5
SLOW_ROUNDS=3
WARMUP=1
FM_REPS=5
SKIP_INSTALL=0
PARAMS=100000
while [ $# -gt 0 ]; do
  case "$1" in
    --with-100) WITH100=all ;;
    --with-100=sparse) WITH100=sparse ;;
    --with-100=all) WITH100=all ;;
    --rounds) ROUNDS="$2"; shift ;;
    --slow-rounds) SLOW_ROUNDS="$2"; shift ;;
    --warmup) WARMUP="$2"; shift ;;
    --fedmesh-reps) FM_REPS="$2"; shift ;;
    --skip-install) SKIP_INSTALL=1 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

export FLWR_TELEMETRY_ENABLED=0
OUT="$BENCH/results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
echo "logs: $OUT"

# ---- Flower 1.18 in bench/.venv ----
if [ "$SKIP_INSTALL" = 0 ] || [ ! -x "$PY" ]; then
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip >"$OUT/pip.log" 2>&1 || true
  if ! "$PY" -m pip install 'flwr[simulation]==1.18.0' >>"$OUT/pip.log" 2>&1; then
    echo "pip install 'flwr[simulation]==1.18.0' failed; last lines of $OUT/pip.log:" >&2
    tail -20 "$OUT/pip.log" >&2
    exit 1
  fi
fi
"$PY" -c 'import sys, flwr, ray, numpy; print(f"python {sys.version.split()[0]}  flwr {flwr.__version__}  ray {ray.__version__}  numpy {numpy.__version__}")' | tee "$OUT/versions.txt"

# ---- fedmesh release ----
(cd "$ROOT" && cargo build --release -p fedmesh-node) >"$OUT/cargo.log" 2>&1 || { tail -20 "$OUT/cargo.log" >&2; exit 1; }
"$FEDMESH" --version | tee -a "$OUT/versions.txt"
echo "nproc $(nproc)" | tee -a "$OUT/versions.txt"

# ---- configurations ----
CONFIGS=()
for n in 20 50; do
  CONFIGS+=("$n plain 0")
  for g in sparse complete; do for d in 0 0.1; do CONFIGS+=("$n $g $d"); done; done
done
if [ -n "$WITH100" ]; then
  CONFIGS+=("100 plain 0" "100 sparse 0" "100 sparse 0.1")
  [ "$WITH100" = all ] && CONFIGS+=("100 complete 0" "100 complete 0.1")
fi

ROWS="$OUT/rows.tsv"
: >"$ROWS"
for cfg in "${CONFIGS[@]}"; do
  read -r n g d <<<"$cfg"
  tag="n${n}-${g}-d${d}"
  r="$ROUNDS"
  if [ "$g" = complete ] && [ "$n" -ge 50 ]; then r="$SLOW_ROUNDS"; fi
  load0=$(cut -d' ' -f1 /proc/loadavg)
  echo "== $tag: Flower ($WARMUP warm-up + $r rounds), load average $load0" >&2
  fl="nan"
  if "$PY" "$BENCH/flower_secagg.py" --n "$n" --m "$PARAMS" --mode "$g" --dropout "$d" \
       --rounds "$r" --warmup "$WARMUP" --out "$OUT/flower-$tag.json" >"$OUT/flower-$tag.log" 2>&1; then
    fl=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["median_s"])' "$OUT/flower-$tag.json")
  else
    echo "   Flower failed, see $OUT/flower-$tag.log" >&2
  fi
  fm="nan"
  if [ "$g" != plain ]; then
    deg=(); [ "$g" = sparse ] && deg=(--degree 6)
    echo "== $tag: fedmesh ($FM_REPS runs)" >&2
    : >"$OUT/fedmesh-$tag.jsonl"
    for _ in $(seq "$FM_REPS"); do
      "$FEDMESH" bench secagg --members "$n" --params "$PARAMS" --dropout "$d" "${deg[@]}" --json >>"$OUT/fedmesh-$tag.jsonl"
    done
    fm=$("$PY" -c 'import json,sys,statistics
rows=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(statistics.median(r["round_s"] for r in rows))' "$OUT/fedmesh-$tag.jsonl")
  fi
  load1=$(cut -d' ' -f1 /proc/loadavg)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$g" "$d" "$fl" "$fm" "$load0/$load1" >>"$ROWS"
done

# ---- table ----
"$PY" - "$ROWS" <<'EOF' | tee "$OUT/table.txt"
import sys, math
print(f"{'n':>4} {'graph':>9} {'dropout':>7} {'Flower s/round':>15} {'fedmesh s/round':>16} {'ratio':>8}  {'load before/after':>17}")
for line in open(sys.argv[1]):
    n, g, d, fl, fm, load = line.rstrip("\n").split("\t")
    fl, fm = float(fl), float(fm)
    graph = {"sparse": "sparse(7)", "complete": "complete", "plain": "plain"}[g]
    ratio = f"{fl / fm:7.1f}x" if not (math.isnan(fl) or math.isnan(fm)) and fm > 0 else "-"
    fls = "failed" if math.isnan(fl) else f"{fl:.3f}"
    fms = "-" if math.isnan(fm) else f"{fm:.4f}"
    print(f"{n:>4} {graph:>9} {float(d):>7.0%} {fls:>15} {fms:>16} {ratio:>8}  {load:>17}")
print("ratio = Flower / fedmesh; Flower: median of warm rounds (simulation engine, 2 Ray actors with 1 CPU each);")
print("load = 1-minute load average of this 2-core machine before Flower / after fedmesh (other work on the machine shows here).")
print("fedmesh: median round(s) of repeated `fedmesh bench secagg --json` runs (sparse = --degree 6: 7 share holders, threshold 4).")
EOF
