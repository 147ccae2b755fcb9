#!/usr/bin/env bash
# python-paillier (phe + gmpy2) vs fedmesh threshold Paillier, side by side on this machine.
#
#   bench/paillier_vs_phe.sh [--key-bits B] [--params N] [--members M] [--phe-count K]
#                            [--skip-install] [--debug]
#
# Installs phe and gmpy2 from PyPI into bench/.venv-phe (once), builds fedmesh, then in one run:
# bench/phe_bench.py draws the update values, writes them for fedmesh and times phe on them (K
# encryptions, one value per ciphertext); `fedmesh bench paillier --values ... --json` encrypts
# the same values; a table with the ratios follows. The dealt fedmesh key is cached in
# bench/.paillier-<B>-<M>.key (gitignored; a bench key only) so that reruns skip key generation.
#   --debug   use target/debug/fedmesh (its crypto and all dependencies are built with
#             opt-level 3 in the dev profile) instead of building the release binary
# Logs and JSON go to bench/results/<timestamp>/.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
VENV="$BENCH/.venv-phe"
PY="$VENV/bin/python"
KEY_BITS=2048
PARAMS=100000
MEMBERS=4
PHE_COUNT=200
SKIP_INSTALL=0
PROFILE=release
while [ $# -gt 0 ]; do
  case "$1" in
    --key-bits) KEY_BITS="$2"; shift ;;
    --params) PARAMS="$2"; shift ;;
    --members) MEMBERS="$2"; shift ;;
    --phe-count) PHE_COUNT="$2"; shift ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --debug) PROFILE=debug ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

OUT="$BENCH/results/paillier-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
echo "logs: $OUT"

if [ "$SKIP_INSTALL" = 0 ] || [ ! -x "$PY" ]; then
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install -q 'phe==1.5.0' gmpy2 >"$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log" >&2; exit 1; }
fi

if [ "$PROFILE" = release ]; then
  (cd "$ROOT" && cargo build --release -p fedmesh-node) >"$OUT/cargo.log" 2>&1 || { tail -20 "$OUT/cargo.log" >&2; exit 1; }
else
  (cd "$ROOT" && cargo build -p fedmesh-node) >"$OUT/cargo.log" 2>&1 || { tail -20 "$OUT/cargo.log" >&2; exit 1; }
fi
FEDMESH="$ROOT/target/$PROFILE/fedmesh"

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/machine.txt"
echo "python-paillier: $PHE_COUNT encryptions at $KEY_BITS bits ..."
"$PY" "$BENCH/phe_bench.py" --key-bits "$KEY_BITS" --params "$PARAMS" --count "$PHE_COUNT" \
  --values-out "$OUT/values.f32" --json | tee "$OUT/phe.json"
echo "fedmesh: bench paillier at $KEY_BITS bits on the same $PARAMS values ..."
"$FEDMESH" bench paillier --key-bits "$KEY_BITS" --members "$MEMBERS" --values "$OUT/values.f32" \
  --key-cache "$BENCH/.paillier-$KEY_BITS-$MEMBERS.key" --json | tee "$OUT/fedmesh.json"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"

"$PY" - "$OUT/phe.json" "$OUT/fedmesh.json" <<'PYEOF' | tee "$OUT/table.txt"
import json, sys
phe = json.load(open(sys.argv[1]))
fm = json.load(open(sys.argv[2]))
n = fm["values"]
rows = [
    ("encryption, values/s", phe["values_per_s"], fm["values_per_s_pool"], "pool precomputed"),
    ("encryption, values/s", phe["values_per_s"], fm["values_per_s_no_pool"], "no pool, r^n on the spot"),
    ("encryption, values/s", phe["values_per_s"], n / fm["encrypt_short_total_s"], "no pool, short-exponent r"),
    ("encryption, values/s", phe["values_per_s"], fm["textbook_values_per_s"], "one value per ciphertext, 1 core"),
]
print(f"\n{fm['key_bits']}-bit keys, {n} values, {fm['members']} members, {fm['cores']} cores")
print(f"{'':34} {'phe':>12} {'fedmesh':>14}  ratio")
for what, a, b, note in rows:
    print(f"{what:34} {a:12.1f} {b:14.1f}  {b / a:9.1f}x  ({note})")
print(f"{'ciphertext bytes per value':34} {phe['bytes_per_value']:12.1f} {fm['bytes_per_value_packed']:14.2f}  {phe['bytes_per_value'] / fm['bytes_per_value_packed']:9.1f}x fewer")
print(f"{'encrypt the whole update, s':34} {phe['update_s_extrapolated']:12.1f} {fm['encrypt_pool_s']:14.3f}  (fedmesh: pool precomputed; precompute {fm['pool_fill_s']:.1f} s; short-exponent total {fm['encrypt_short_total_s']:.2f} s)")
print(f"{'key generation, s':34} {phe['keygen_s']:12.2f} {fm['keygen_s']:14.2f}  (fedmesh: safe primes + dealing to {fm['members']}{', from cache' if fm['keygen_cached'] else ''})")
print(f"{'CPU s per encrypted value':34} {phe['cpu_encrypt_s']:12.2e} {fm['cpu_encrypt_pool_s'] / n:14.2e}  {phe['cpu_encrypt_s'] / max(fm['cpu_encrypt_pool_s'] / n, 1e-12):9.1f}x  (process CPU time, pool precomputed; robust to other load)")
print(f"fedmesh partial decryption of the {n}-value sum: {fm['partial_decrypt_s']:.2f} s per member; verify {fm['verify_partial_s']:.2f} s; combine {fm['threshold']}: {fm['combine_s']:.2f} s")
PYEOF
