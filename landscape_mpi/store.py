"""The surface file: every h5py call of the package is in this module.

Layout (schema_version 1; README.md documents it as a table):

    /coords/x, /coords/y, /coords/z       float64, one per grid axis
    /results/<split>_loss, <split>_acc    float64, grid-shaped, [i, j] = value at (x[i], y[j]); NaN until computed
    /results/done                         uint8, grid-shaped, 1 once the point's values are written
    /results/rank                         int32, which MPI rank computed the point (-1: not yet)
    /results/seconds                      float64, seconds the point's evaluation took
    /directions/<axis>/<state_dict key>   every tensor of the direction space, zeros where excluded
    /data/<split>_indices                 int64, the samples kept by --samples (only with --samples)
    root attributes                       schema_version, config (JSON), checkpoint, checkpoint_sha256, ...

Crash safety. Every dataset is created, full size and contiguous, when the file is created (written to a
temporary name and renamed into place), and never changes shape afterwards. A run then only overwrites
raw data bytes in place and never touches the file's metadata, so a process killed at any moment leaves a
file that opens. The values of a batch of points are written and flushed before their `done` flags, so a
point marked done always has its values. Readers open the file without HDF5 file locking, which is safe
for the same reason, and see every point flushed so far.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import numpy as np
import torch

from landscape_mpi import __version__
from landscape_mpi.config import SurfaceConfig
from landscape_mpi.directions import Direction
from landscape_mpi.errors import UserError

SCHEMA_VERSION = 1


def package_versions() -> dict[str, str]:
    versions = {"landscape_mpi": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__, "h5py": h5py.version.version, "hdf5": h5py.version.hdf5_version}
    try:
        import mpi4py

        versions["mpi4py"] = mpi4py.__version__
    except ImportError:
        pass
    return versions


def check_out_path(path: str) -> None:
    """Raise a UserError unless `path` can be created or written."""
    if os.path.isdir(path):
        raise UserError(f"--out {path} is a folder; give a file name such as {os.path.join(path, 'surface.h5')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"--out {path}: folder {folder} does not exist; create it or choose another --out")
    if not os.access(folder, os.W_OK):
        raise UserError(f"--out {path}: folder {folder} is not writable; choose another --out")


def create_surface_file(path: str, config: SurfaceConfig, directions: dict[str, Direction],
                        attrs: dict[str, str], data_indices: dict[str, np.ndarray | None]) -> None:
    """Create the complete file atomically: written under a temporary name, then renamed onto `path`.

    An existing file at `path` is replaced only once the new one is complete (the caller has checked
    --overwrite). `directions` maps axis name to the full-space direction (zeros where excluded).
    """
    check_out_path(path)
    for stale in glob.glob(glob.escape(path) + ".tmp-*"):  # left by a run killed while creating
        try:
            os.remove(stale)
        except OSError:
            pass
    tmp = f"{path}.tmp-{os.getpid()}"
    shape = config.shape
    try:
        with h5py.File(tmp, "w", libver="earliest") as f:
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["config"] = config.to_json()
            f.attrs["grid_indexing"] = "ij"
            f.attrs["axes"] = json.dumps(list(config.axes))
            f.attrs["metrics"] = json.dumps(config.metrics)
            f.attrs["versions"] = json.dumps(package_versions())
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            for k, v in attrs.items():
                f.attrs[k] = v
            coords = f.create_group("coords")
            for name, axis in config.axes.items():
                coords.create_dataset(name, data=axis.values())
            results = f.create_group("results")
            # Written in full now (contiguous, allocated): a run later only overwrites raw bytes in place.
            for metric in config.metrics:
                results.create_dataset(metric, data=np.full(shape, np.nan))
            results.create_dataset("rank", data=np.full(shape, -1, dtype=np.int32))
            results.create_dataset("seconds", data=np.full(shape, np.nan))
            results.create_dataset("done", data=np.zeros(shape, dtype=np.uint8))
            group = f.create_group("directions")
            for axis, direction in directions.items():
                g = group.create_group(axis)
                for key, tensor in direction.items():
                    g.create_dataset(key, data=tensor.detach().cpu().numpy())
            if any(v is not None for v in data_indices.values()):
                data = f.create_group("data")
                for split, idx in data_indices.items():
                    if idx is not None:
                        data.create_dataset(f"{split}_indices", data=np.asarray(idx, dtype=np.int64))
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"--out {path}: cannot write the surface file ({exc}); choose another --out") from None


def open_read(path: str) -> h5py.File:
    """Open read-only, without file locking, so that a file being written by a running job can be read."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise UserError(f"{path}: not a readable HDF5 surface file ({exc}); recompute it with --overwrite") from None
    if "schema_version" not in f.attrs or "config" not in f.attrs:
        f.close()
        raise UserError(f"{path}: an HDF5 file but not a landscape-mpi surface file (no schema_version/config)")
    if int(f.attrs["schema_version"]) != SCHEMA_VERSION:
        version = int(f.attrs["schema_version"])
        f.close()
        raise UserError(f"{path}: schema_version {version}, this landscape-mpi reads {SCHEMA_VERSION}; "
                        f"use the landscape-mpi version that wrote it")
    return f


@dataclass
class SurfaceSummary:
    """What `info` and resume need to know of a file."""

    attrs: dict
    config: dict
    shape: tuple[int, ...]
    done: np.ndarray
    metrics: dict[str, np.ndarray]
    ranks: np.ndarray


def read_summary(path: str, with_values: bool = True) -> SurfaceSummary:
    with open_read(path) as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        done = f["results/done"][()]  # read before the values: any point marked done has its values
        metrics = {}
        if with_values:
            for m in json.loads(attrs["metrics"]):
                metrics[m] = f["results"][m][()]
        ranks = f["results/rank"][()]
    return SurfaceSummary(attrs, json.loads(attrs["config"]), tuple(done.shape), done.astype(bool), metrics, ranks)


def read_directions(path: str, axes: Sequence[str]) -> list[Direction]:
    """The stored directions (CPU tensors), one per axis: the source of truth for every rank and resume."""
    out = []
    with open_read(path) as f:
        for axis in axes:
            g = f["directions"][axis]
            out.append({k: torch.from_numpy(g[k][()]) for k in g})
    return out


class RunLock:
    """An exclusive lock on ``FILE.h5.lock``, held by the run that writes FILE.h5.

    The kernel releases it when the process ends, however it ends, so a killed job never leaves a stale
    lock. On file systems without flock support the lock is skipped (best effort).
    """

    def __init__(self, path: str) -> None:
        import fcntl

        check_out_path(path)
        self.path = path + ".lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip()
            os.close(self.fd)
            raise UserError(f"--out {path} is being written by another running job ({holder}); wait for it to "
                            f"end, or choose another --out") from None
        except OSError:
            pass  # no flock on this file system
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {platform.node()}".encode(), 0)

    def release(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)


class ResultWriter:
    """Writes finished points into an existing surface file.

    io='single': one process, sec2 driver, flushing the values before the done flags.
    io='collective': every rank opens the file with the MPI-IO driver (a collective open and close)
    and writes its own points independently; HDF5 writes raw bytes of the pre-allocated datasets
    straight through MPI-IO, values before done flags.
    """

    def __init__(self, path: str, metrics: Sequence[str], io: str = "single", comm=None) -> None:
        self.path = path
        self.metrics = list(metrics)
        self.io = io
        # No HDF5 file lock: it would stop readers (landscape-mpi info, plotting, a user's h5py.File(path))
        # from opening the file while the job runs. Two writers are kept apart by `RunLock` instead.
        try:
            if io == "collective":
                self.file = h5py.File(path, "r+", driver="mpio", comm=comm)
            else:
                self.file = h5py.File(path, "r+", locking=False)
        except OSError as exc:
            raise UserError(f"--out {path}: cannot open for writing ({exc})") from None
        results = self.file["results"]
        self.dsets = {m: results[m] for m in self.metrics}
        self.rank_dset = results["rank"]
        self.seconds_dset = results["seconds"]
        self.done_dset = results["done"]
        self.shape = self.done_dset.shape

    @staticmethod
    def _write_points(dset: h5py.Dataset, coords: np.ndarray, values: np.ndarray) -> None:
        # One HDF5 call per dataset for a whole batch of scattered points (an element selection).
        fspace = dset.id.get_space()
        fspace.select_elements(coords)
        mspace = h5py.h5s.create_simple((len(values),))
        dset.id.write(mspace, fspace, np.ascontiguousarray(values, dtype=dset.dtype))

    def write(self, flat: np.ndarray, values: np.ndarray, ranks: np.ndarray, seconds: np.ndarray) -> None:
        """Write a batch: `values[p, m]` is metric m at flat grid index `flat[p]`."""
        if len(flat) == 0:
            return
        coords = np.stack(np.unravel_index(np.asarray(flat), self.shape), axis=1).astype(np.uint64)
        for m, name in enumerate(self.metrics):
            self._write_points(self.dsets[name], coords, values[:, m])
        self._write_points(self.rank_dset, coords, ranks)
        self._write_points(self.seconds_dset, coords, seconds)
        self._flush()
        self._write_points(self.done_dset, coords, np.ones(len(flat), dtype=np.uint8))
        self._flush()

    def _flush(self) -> None:
        # H5Fflush is collective under MPI-IO; there each write already went to the file via MPI-IO.
        if self.io == "single":
            self.file.flush()

    def close(self) -> None:
        self.file.close()
