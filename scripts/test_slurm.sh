#!/usr/bin/env bash
# `editbench slurm` against a real Slurm (slurmctld + slurmd + munged on this machine, started and
# stopped by scripts/slurm_local.sh; installs slurm-wlm and munge with apt-get if missing; root).
# On the tiny sweep (crates/runner/tests/fixtures/tiny-sweep.yaml):
#   1. a 2-task array + merge equals a single-process run (summary.csv and every cell's rows, byte
#      for byte);
#   2. a task killed mid-sweep by `scontrol requeue` restarts, skips the cell it finished, and the
#      merge still equals the single-process run; `sacct -c` shows the requeue;
#   3. tasks whose model is missing on the node fail with the path in their log, the merge job
#      never runs, no merged output is left, and OUT/slurm/FAILED names both shards.
# Takes a few minutes on 2 cores (after `cargo build --release`).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(pwd)/${CARGO_TARGET_DIR:-target}/release/editbench
[[ "${CARGO_TARGET_DIR:-}" = /* ]] && bin=$CARGO_TARGET_DIR/release/editbench
[ -x "$bin" ] || cargo build --release --bin editbench
scripts/fetch_smollm2.sh >/dev/null
scripts/fetch_corpus.sh >/dev/null
work=$(mktemp -d /tmp/editbench-slurm.XXXXXX)
scripts/slurm_local.sh start "$work/slurm"
trap 'scripts/slurm_local.sh stop "$work/slurm"' EXIT
export SLURM_CONF=$work/slurm/slurm.conf
sed "s|STATS_CACHE|$work/stats|" crates/runner/tests/fixtures/tiny-sweep.yaml > "$work/tiny.yaml"

fail() { echo "FAILED: $*" >&2; exit 1; }
# Waits until none of the given jobs is pending or running.
wait_jobs() {
  for _ in $(seq 900); do
    [ -z "$(squeue -h -j "$1" 2>/dev/null)" ] && return 0
    sleep 1
  done
  fail "jobs $1 still queued after 15 minutes"
}
jobs_of() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(','.join(d[k] for k in ('array','merge','failed')))" "$1/slurm/jobs.json"; }
same_results() {
  cmp "$1/summary.csv" "$2/summary.csv" || fail "$1/summary.csv differs from $2's"
  for rows in "$2"/cells/*.csv.gz; do
    cmp <(gzip -dc "$rows") <(gzip -dc "$1/cells/$(basename "$rows")") || fail "rows of $rows differ"
  done
}

echo "--- the single-process run"
"$bin" run "$work/tiny.yaml" --out "$work/single" 2>&1 | tail -n 2

echo "--- 1. array of 2 + merge"
"$bin" slurm "$work/tiny.yaml" --shards 2 --out "$work/a" | tail -n 1
wait_jobs "$(jobs_of "$work/a")"
[ -f "$work/a/merged/summary.csv" ] || fail "no merged summary; see $work/a/slurm/*.log"
same_results "$work/a/merged" "$work/single"
[ ! -s "$work/a/slurm/FAILED" ] || fail "a failure was reported: $(cat "$work/a/slurm/FAILED")"
echo "merged results equal the single-process run"

echo "--- 2. a task requeued in the middle of its shard"
"$bin" slurm "$work/tiny.yaml" --shards 2 --out "$work/b" | tail -n 1
array=$(python3 -c "import json; print(json.load(open('$work/b/slurm/jobs.json'))['array'])")
for _ in $(seq 600); do   # until shard 0 has finished its first cell (of two)
  ls "$work/b/shard-0/cells/"*.csv.gz >/dev/null 2>&1 && break
  sleep 0.5
done
ls "$work/b/shard-0/cells/"*.csv.gz >/dev/null 2>&1 || fail "shard 0 finished no cell"
scontrol requeue "${array}_0"
echo "requeued task ${array}_0"
scontrol update JobId="${array}_0" StartTime=now 2>/dev/null || true
wait_jobs "$(jobs_of "$work/b")"
grep -q "restart 1" "$work/b/slurm/shard-0.log" || fail "task 0 did not restart"
grep -q "1 to run (1 already finished)" "$work/b/slurm/shard-0.log" \
  || fail "the restarted task did not skip its finished cell: $(cat "$work/b/slurm/shard-0.log")"
same_results "$work/b/merged" "$work/single"
# The requeued task's first run is logged as PENDING (the completion log knows no REQUEUED state).
sacct -c 2>/dev/null | grep -E "eb-tiny .*PENDING" || fail "sacct -c shows no requeue"
echo "requeued task resumed; merged results equal the single-process run"

echo "--- 3. the model missing on the node"
cp models/SmolLM2-135M-Instruct.Q4_1.gguf "$work/model.gguf"
sed "s|models/SmolLM2-135M-Instruct.Q4_1.gguf|$work/model.gguf|" "$work/tiny.yaml" > "$work/moved.yaml"
scontrol update NodeName="$(hostname -s)" State=DRAIN Reason=editbench-test
"$bin" slurm "$work/moved.yaml" --shards 2 --out "$work/c" | tail -n 1
rm "$work/model.gguf"
scontrol update NodeName="$(hostname -s)" State=RESUME
wait_jobs "$(jobs_of "$work/c")"
[ ! -e "$work/c/merged" ] || fail "a merged directory was left: $work/c/merged"
grep -q "model.gguf" "$work/c/slurm/FAILED" || fail "FAILED does not name the model: $(cat "$work/c/slurm/FAILED")"
[ "$(grep -c failed "$work/c/slurm/FAILED")" = 2 ] || fail "FAILED should name 2 shards"
cat "$work/c/slurm/FAILED"
echo "slurm test: all 3 cases passed ($work)"
