#!/usr/bin/env bash
# Install landscape-mpi and everything its tests need on a fresh Debian/Ubuntu machine, into ./.venv:
#   Open MPI and parallel HDF5 (Debian packages), h5py built against them (so --io collective works),
#   PyTorch, the package itself with its test extra, and SLURM + munge for the jobs/ tests.
# Run as root (apt-get), from anywhere:   bash scripts/install.sh
# LANDSCAPE_SKIP_APT=1 skips the Debian packages; LANDSCAPE_SERIAL_H5PY=1 takes PyPI's h5py (no MPI build);
# LANDSCAPE_SKIP_MPICH=1 skips .venv-mpich, a second environment that runs the same packages under MPICH
# (PyPI's mpich + mpi4py) so that the tests cover both MPI implementations.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${LANDSCAPE_SKIP_APT:-0}" != 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config \
    slurm-wlm munge procps >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# Build prerequisites of h5py, and mpi4py (PyPI's wheel works with the system's Open MPI).
pip install -q numpy mpi4py "Cython>=3,<4" pkgconfig "setuptools>=77.0.1" packaging wheel

if [ "${LANDSCAPE_SERIAL_H5PY:-0}" != 1 ] && ! python -c 'import h5py,sys; sys.exit(0 if h5py.get_config().mpi else 1)' 2>/dev/null; then
  # h5py against the system's parallel HDF5. Never with build isolation: it would compile its own mpi4py.
  cfg=$(mktemp); printf '[build_ext]\nparallel = 2\n' > "$cfg"
  CC=mpicc HDF5_MPI=ON HDF5_PKGCONFIG_NAME=hdf5-openmpi DIST_EXTRA_CONFIG="$cfg" \
    pip install -q --no-binary=h5py --no-build-isolation --force-reinstall --no-deps h5py
  rm -f "$cfg"
fi

# torch + torchvision as a matched pair (see README, "Installing"), then the package and its test extra.
pip install -q "torch>=2.1" "torchvision>=0.16"
pip install -q --no-build-isolation -e ".[test]"

if [ "${LANDSCAPE_SKIP_MPICH:-0}" != 1 ]; then
  [ -x .venv-mpich/bin/python ] || "$PY" -m venv .venv-mpich
  # its own serial h5py: the parallel one in .venv links Open MPI's libmpi, which must not load beside MPICH
  .venv-mpich/bin/pip install -q mpich mpi4py
  .venv-mpich/bin/pip install -q --ignore-installed --no-deps h5py
  # everything else (torch, h5py, landscape_mpi itself) comes from .venv: its site folder, .pth files included
  main_site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mpich_site=$(.venv-mpich/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "import site; site.addsitedir('$main_site')" > "$mpich_site/zz_landscape_main_venv.pth"
  for tool in landscape-mpi:landscape_mpi landscape-plot:plotting; do
    printf '#!/bin/sh\nexec "$(dirname "$0")/python" -m %s "$@"\n' "${tool#*:}" > ".venv-mpich/bin/${tool%%:*}"
    chmod +x ".venv-mpich/bin/${tool%%:*}"
  done
  .venv-mpich/bin/python -c 'from mpi4py import MPI; import landscape_mpi, torch; print("MPICH environment:", MPI.Get_library_version().splitlines()[0])'
fi
python - <<'PY'
import h5py, mpi4py, torch, torchvision
print(f"installed: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"h5py {h5py.version.version} (parallel HDF5: {h5py.get_config().mpi}), mpi4py {mpi4py.__version__}")
PY
