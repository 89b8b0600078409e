#!/bin/bash
# Queue the sweep array (one task per line of CHECKPOINT_LIST) and the plotting job that runs after it.
#   CHECKPOINT_LIST=checkpoints.txt OUT_DIR=sweep bash jobs/submit_sweep.sh <landscape-mpi surface arguments>
# Extra sbatch options: SBATCH_OPTS for both jobs (e.g. "--partition=gpu --account=abc"),
# ARRAY_SBATCH_OPTS for the array only, PLOT_SBATCH_OPTS for the plotting job only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${CHECKPOINT_LIST:?set CHECKPOINT_LIST to a file listing one checkpoint per line}"
export CHECKPOINT_LIST OUT_DIR=${OUT_DIR:-sweep}
n=$(grep -c . "$CHECKPOINT_LIST")
array=$(sbatch --parsable ${SBATCH_OPTS:-} ${ARRAY_SBATCH_OPTS:-} --array=0-$((n - 1)) "$here/sweep_array.sbatch" "$@")
plot=$(sbatch --parsable ${SBATCH_OPTS:-} ${PLOT_SBATCH_OPTS:-} --dependency=afterok:"$array" "$here/plot_sweep.sbatch")
echo "sweep array job $array ($n tasks); plotting job $plot runs after the array succeeds"
echo "ARRAY_JOB=$array PLOT_JOB=$plot"
