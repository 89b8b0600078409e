#!/bin/bash
# Submit the paper-scale findings: one job array per experiment (one task per training run; the batch experiment's
# small-batch net and its large-batch partners share one), then the report
# job once every array has succeeded.
#
#   DATA_ROOT=~/data OUT_DIR=findings-paper bash jobs/submit_experiments.sh [skip batch width trajectory]
#   SCALE=small OUT_DIR=findings-small bash jobs/submit_experiments.sh      # the MNIST-1D set as arrays (no data)
#
# DATA_ROOT holds cifar-10-batches-py/ (paper scale only); OUT_DIR receives runs/, one folder per experiment and
# findings.md. SCALE: paper (default), small, quick or tiny. Extra sbatch options: SBATCH_OPTS for every job
# (e.g. "--partition=gpu --account=abc"), ARRAY_SBATCH_OPTS for the arrays only, REPORT_SBATCH_OPTS for the report.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SCALE=${SCALE:-paper}
data=()
if [ "$SCALE" = paper ]; then
    : "${DATA_ROOT:?set DATA_ROOT to the folder holding cifar-10-batches-py/}"
    data=(--data-root "$DATA_ROOT")
fi
OUT_DIR=${OUT_DIR:-findings-$SCALE}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(skip batch width trajectory)
ids=()
for name in "${names[@]}"; do
    n=$(landscape-mpi experiments list --scale "$SCALE" --count "$name")
    # width's x1 net is one of the skip experiment's no-shortcut nets (one training folder): train it once.
    after=()
    [ "$name" = width ] && [ -n "${skip_id:-}" ] && after=(--dependency="afterok:$skip_id")
    # shellcheck disable=SC2086  # the options are words
    id=$(sbatch --parsable ${SBATCH_OPTS:-} ${ARRAY_SBATCH_OPTS:-} "${after[@]}" --array=0-$((n - 1)) \
        --job-name="landscape-$name" "$here/experiment_array.sbatch" "$name" --scale "$SCALE" "${data[@]}" --out-dir "$OUT_DIR")
    echo "experiment $name: array job $id ($n tasks)"
    [ "$name" = skip ] && skip_id=$id
    ids+=("$id")
done
dep=$(IFS=:; echo "${ids[*]}")
# shellcheck disable=SC2086
id=$(sbatch --parsable ${SBATCH_OPTS:-} ${REPORT_SBATCH_OPTS:-} --dependency="afterok:$dep" "$here/experiment_report.sbatch" \
    --out-dir "$OUT_DIR" --out "$OUT_DIR/findings.md")
echo "report: job $id (after $dep) -> $OUT_DIR/findings.md"
echo "ARRAY_JOBS=$dep REPORT_JOB=$id"
