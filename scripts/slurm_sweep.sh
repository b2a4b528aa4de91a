#!/usr/bin/env bash
# Spreads the cells of a sweep over a Slurm array job (one GPU per task), then merges the shards.
#
#   scripts/slurm_sweep.sh experiments/gpt-j-6b.yaml 8 [extra editbench run arguments...]
#
# submits an array of 8 tasks; task i runs `editbench run SWEEP --shard i/8` into
# results/<sweep>/shard-i (resumable: resubmitting reruns only unfinished cells), and a job that
# starts when all tasks have ended merges the shards into results/<sweep>/merged and writes the
# report there. Set SBATCH_* environment variables or edit the #SBATCH lines of the generated
# scripts (partition, time, memory) for your cluster. Needs a built target/release/editbench
# (cargo build --release --features editbench/cuda).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 SWEEP.yaml SHARDS [editbench run arguments...]" >&2
  exit 2
fi
sweep=$1
shards=$2
shift 2
name=$(basename "$sweep" .yaml)
out=results/$name
bin=$(pwd)/target/release/editbench
[ -x "$bin" ] || { echo "error: build editbench first: cargo build --release --features editbench/cuda" >&2; exit 1; }
"$bin" run "$sweep" --dry-run "$@" >/dev/null   # reject a broken sweep file before queueing anything
mkdir -p "$out/logs"

array_job=$(sbatch --parsable --array=0-$((shards - 1)) --gres=gpu:1 --job-name="eb-$name" \
  --output="$out/logs/shard-%a.log" --wrap="'$bin' run '$sweep' --shard \$SLURM_ARRAY_TASK_ID/$shards --out '$out'/shard-\$SLURM_ARRAY_TASK_ID $*")
shard_dirs=$(for i in $(seq 0 $((shards - 1))); do printf "'%s' " "$out/shard-$i"; done)
sbatch --parsable --dependency=afterany:"$array_job" --job-name="eb-$name-merge" --output="$out/logs/merge.log" \
  --wrap="'$bin' merge --out '$out/merged' $shard_dirs && '$bin' report '$out/merged'"
echo "submitted array job $array_job ($shards shards) and its merge; results in $out/merged"
