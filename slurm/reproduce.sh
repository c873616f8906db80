#!/bin/bash
# Submit `nvc-train reproduce` to Slurm: an array of one job per task (quality × method, and the
# anchors) and the table as a job that starts when every task has succeeded. Arguments go to
# `nvc-train reproduce` (--data ... --out-dir ... [--preset ...]); sbatch options for both jobs
# in NVC_SBATCH_ARGS (e.g. "--partition=gpu --account=proj42"), for the table job alone in
# NVC_TABLE_SBATCH_ARGS (it needs no GPU: "--gpus-per-node=0").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tasks=$(nvc-train reproduce "$@" --list-tasks | wc -l)
# shellcheck disable=SC2086  # word splitting wanted: lists of sbatch options
array=$(sbatch --parsable --array="0-$((tasks - 1))" ${NVC_SBATCH_ARGS:-} "$here/reproduce.sbatch" "$@")
array=${array%%;*}
# shellcheck disable=SC2086
table=$(NVC_REPRODUCE_TABLE=1 sbatch --parsable --dependency="afterok:$array" --job-name=nvc-reproduce-table \
    --output=nvc-reproduce-table-%j.out ${NVC_SBATCH_ARGS:-} ${NVC_TABLE_SBATCH_ARGS:-} \
    "$here/reproduce.sbatch" "$@")
table=${table%%;*}
echo "submitted $tasks tasks as array job $array and the table as job $table (starts after all of them)"
