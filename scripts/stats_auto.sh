#!/usr/bin/env bash
# Runs experiments/smollm2-stats-auto.yaml with the full statistics and with `samples: auto` at
# several m (keys per key dimension), all sharing one target cache; then the reports and a table
# of every metric against full (scripts/compare_runs.py).
#   scripts/stats_auto.sh [OUT_ROOT (default results)] [m ...   (default 2 5 10 20)]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results}; shift || true
ms=("${@:-2 5 10 20}"); ms=(${ms[@]})
bin=${EDITBENCH:-${CARGO_TARGET_DIR:-target}/release/editbench}
shared="$out/smollm2-stats-auto-targets"
mkdir -p "$shared"
run() {  # run NAME [--set ...]
  local dir="$out/smollm2-stats-auto-$1"; shift
  mkdir -p "$dir"
  [ -e "$dir/targets" ] || ln -s "$(realpath "$shared")" "$dir/targets"
  "$bin" run experiments/smollm2-stats-auto.yaml --out "$dir" "$@"
  "$bin" report "$dir" > /dev/null
}
run full
for m in "${ms[@]}"; do
  run "m$m" --set stats.samples=auto --set stats.keys_per_dim="$m"
done
runs=(); for m in "${ms[@]}"; do runs+=("$out/smollm2-stats-auto-m$m"); done
scripts/compare_runs.py "$out/smollm2-stats-auto-full" "${runs[@]}"
