#!/usr/bin/env bash
# Run fedmesh's fuzz targets (nightly + cargo-fuzz), then minimise their corpora into
# tests/fuzz/corpus/<target>/ and print one line per target: seconds, executions, corpus files and
# bytes, crashes. Usage: tests/fuzz/run.sh [SECONDS] [TARGET...]   (default 600 s, every target)
# Crashes are left in tests/fuzz/artifacts/<target>/; copy each (once fixed) into
# tests/fuzz/regressions/<target>/ so that the stable test keeps it fixed.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir tests/fuzz)
fi
out=tests/fuzz/results
mkdir -p "$out"
cargo +nightly fuzz build --fuzz-dir tests/fuzz
for t in "${targets[@]}"; do
    corpus=tests/fuzz/corpus/$t
    mkdir -p "$corpus"
    start=$(date +%s)
    # -rss_limit_mb: a 2 GB ceiling catches decoders that allocate what a length prefix claims.
    nice -n 19 cargo +nightly fuzz run --fuzz-dir tests/fuzz "$t" "$corpus" -- \
        -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=20 \
        >"$out/$t.log" 2>&1 || true
    took=$(( $(date +%s) - start ))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/$t.log" | grep -o '[0-9]*$' | tail -1)
    crashes=$(ls tests/fuzz/artifacts/"$t" 2>/dev/null | wc -l)
    grown=$(ls "$corpus" | wc -l)
    # Minimise in place: the smallest set of inputs with the same coverage.
    nice -n 19 cargo +nightly fuzz cmin --fuzz-dir tests/fuzz "$t" "$corpus" >"$out/$t.cmin.log" 2>&1 || true
    files=$(ls "$corpus" | wc -l)
    bytes=$(du -sb "$corpus" | cut -f1)
    echo "$t seconds=$took execs=${execs:-?} corpus_before_cmin=$grown corpus_files=$files corpus_bytes=$bytes crashes=$crashes" | tee -a "$out/summary.txt"
done
