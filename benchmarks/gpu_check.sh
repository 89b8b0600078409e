#!/bin/bash
# The GPU check, one script for the day a GPU machine is lent (docs/performance.md#gpu): under 8 minutes on one
# machine with 1 to 8 GPUs.
#   1. every engine on CUDA against the CPU eager oracle (fp32, tf32, bf16; compact uint8 images; compiled),
#      the language-model task on CUDA, and groups of ranks on NCCL (as many GPUs as the machine has; skipped
#      with a message on a one-GPU machine): tests/gpu/test_cuda.py;
#   2. the speed table (benchmarks/bench_gpu.py), printed in markdown for docs/performance.md.
# Run from the repository root after `bash scripts/install.sh`:   bash benchmarks/gpu_check.sh [OUT_DIR]
set -u
OUT=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
export LANDSCAPE_MPI_ALLOW_SKIP=1   # the NCCL groups test skips (and says why) on a one-GPU machine
nvidia-smi | tee "$OUT/nvidia-smi.txt"
status=0
timeout 330 "$PY" -m pytest -q -rs -x tests/gpu -p no:cacheprovider 2>&1 | tee "$OUT/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
timeout 120 "$PY" benchmarks/bench_gpu.py --device cuda 2>&1 | tee "$OUT/speed.md"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu check: $( [ $status -eq 0 ] && echo passed || echo FAILED ), logs in $OUT/"
exit $status
