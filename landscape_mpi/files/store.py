"""The surface file's writer: create it, write finished points durably (single or collective MPI-IO), the run
lock. Its reader is landscape_mpi/files/reader.py; these two and hessian_store.py are the package's h5py calls.

Layout: `contract.SURFACE_SCHEMA`, the one schema (docs/file-format.md's table is generated from it).

Crash safety. Every dataset is created, full size and contiguous, when the file is created (written to a
temporary name, fsync'ed, renamed into place, and the folder fsync'ed), and never changes shape afterwards.
A run then only overwrites raw data bytes in place and never touches the file's metadata, so a process
killed at any moment leaves a file that opens. The write protocol of a batch of points is: values, flush,
fsync; then done flags, flush, fsync. So a point marked done has its values on disk even after a node crash
or a power loss (H5Fflush alone hands pages to the kernel, which may write the page of the done flags
first). Readers open the file without HDF5 file locking, which is safe for the same reason, and see every
point flushed so far.

This module imports neither torch nor mpi4py: `info` and the plotting package stay fast on a login node.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from landscape_mpi import __version__
from landscape_mpi.config.errors import UserError
from landscape_mpi.config.surface import SurfaceConfig
from landscape_mpi.files import contract

SCHEMA_VERSION = contract.SCHEMA_VERSION


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:  # read from the installed package's metadata: the files layer never imports torch
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "absent"
    versions = {"landscape_mpi": __version__, "python": platform.python_version(), "torch": torch_version,
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


def fsync_folder(path: str) -> None:
    """fsync the folder holding `path`, so that a rename into it survives a crash (best effort: some file
    systems refuse to open folders for sync)."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def as_array(tensor) -> np.ndarray:
    """A direction tensor as the file stores it (a torch tensor or array-like, on the CPU, in its dtype)."""
    return tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)


def fresh_temporary(path: str) -> str:
    """The name under which `path` is written complete before its rename, after removing the temporaries that
    runs killed while writing `path` left behind."""
    for stale in glob.glob(glob.escape(path) + ".tmp-*"):
        try:
            os.remove(stale)
        except OSError:
            pass
    return f"{path}.tmp-{os.getpid()}"


@dataclass(frozen=True)
class Grid:
    """The grid of a file of the surface family: its kind, shape, coordinates (/coords) and what else the kind
    writes (a path file's /path group) inside the file's one atomic creation."""

    kind: str
    shape: tuple[int, ...]
    coords: dict[str, np.ndarray]
    write: Callable[[h5py.File], None] | None = None


def create_surface_file(path: str, config: SurfaceConfig, directions: dict,
                        attrs: dict[str, str], data_indices: dict[str, np.ndarray | None],
                        trajectory: dict | None = None, grid: Grid | None = None) -> None:
    """Create the complete file atomically: written under a temporary name, fsync'ed, renamed onto `path`,
    and the folder fsync'ed.

    `directions` maps axis name to the full-space direction (state_dict key -> tensor or array; zeros where
    excluded). `trajectory` (optional): x, y, epochs, residual arrays and an ``explained_variance`` list and
    further attributes, stored under /trajectory. `grid`: another file kind's grid (a path file's, `Grid`);
    default: the surface's, from `config`.
    """
    check_out_path(path)
    tmp = fresh_temporary(path)
    grid = grid or Grid(contract.KIND_SURFACE, config.shape, {n: a.values() for n, a in config.axes.items()})
    shape = grid.shape
    try:
        # HDF5's own file locking is best effort: file systems without flock (some NFS, Lustre with
        # localflock) would refuse it; two writers are kept apart by `RunLock` instead.
        with h5py.File(tmp, "w", libver="earliest", locking="best-effort") as f:
            f.attrs[contract.SCHEMA_VERSION_ATTR] = SCHEMA_VERSION
            f.attrs[contract.FILE_KIND_ATTR] = grid.kind
            f.attrs[contract.CONFIG_ATTR] = config.to_json()
            f.attrs[contract.GRID_INDEXING_ATTR] = contract.GRID_INDEXING
            f.attrs[contract.AXES_ATTR] = json.dumps(list(grid.coords))
            f.attrs[contract.METRICS_ATTR] = json.dumps(config.metrics)
            f.attrs["versions"] = json.dumps(package_versions())
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            for k, v in attrs.items():
                f.attrs[k] = v
            coords = f.create_group(contract.COORDS)
            for name, values in grid.coords.items():
                coords.create_dataset(name, data=values)
            f.create_group(contract.RESULTS)
            # Written in full now (contiguous, allocated): a run later only overwrites raw bytes in place.
            for metric in config.metrics:
                f.create_dataset(f"{contract.RESULTS}/{metric}", data=np.full(shape, np.nan))
            f.create_dataset(contract.RANK, data=np.full(shape, -1, dtype=np.int32))
            f.create_dataset(contract.SECONDS, data=np.full(shape, np.nan))
            f.create_dataset(contract.DONE, data=np.zeros(shape, dtype=np.uint8))
            if config.eig:
                f.create_dataset(contract.EIG_ITERS, data=np.full(shape, -1, dtype=np.int32))
            if config.adaptive is not None:
                f.create_dataset(contract.ROUND, data=np.full(shape, -1, dtype=np.int32))
            for name in config.sequential_columns:  # --tolerance: samples read (-1: not yet), standard errors
                samples = name.endswith(contract.SAMPLES_SUFFIX)
                f.create_dataset(f"{contract.RESULTS}/{name}", data=np.full(shape, -1, dtype=np.int64) if samples
                                 else np.full(shape, np.nan))
            if config.tolerance is not None and contract.SEQUENTIAL_ATTR not in attrs:
                f.attrs[contract.SEQUENTIAL_ATTR] = json.dumps(sequential_rule_attr(config))
            group = f.create_group(contract.DIRECTIONS)
            for axis, direction in directions.items():
                g = group.create_group(axis)
                for key, tensor in direction.items():
                    g.create_dataset(key, data=as_array(tensor))
            if trajectory is not None:
                t = f.create_group(contract.TRAJECTORY)
                for key, value in trajectory.items():
                    if isinstance(value, np.ndarray):
                        t.create_dataset(key, data=value)
                    else:
                        t.attrs[key] = value
            if grid.write is not None:
                grid.write(f)
            if any(v is not None for v in data_indices.values()):
                data = f.create_group(contract.DATA)
                for split, idx in data_indices.items():
                    if idx is not None:
                        data.create_dataset(f"{split}_indices", data=np.asarray(idx, dtype=np.int64))
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_folder(path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        hint = ("the file system refuses HDF5 file locking: export HDF5_USE_FILE_LOCKING=FALSE"
                if "lock" in str(exc).lower() else "choose another --out on a writable file system")
        raise UserError(f"--out {path}: cannot write the surface file ({exc}); {hint}") from None


def write_run_ranks(path: str, hosts: Sequence[str], devices: Sequence[str]) -> None:
    """Record which host and device each MPI rank of the current run has (/ranks/host, /ranks/device), durably.

    For --io collective, by rank 0 before the collective open (parallel HDF5 writes no variable-length strings);
    a single writer records them itself (`ResultWriter(..., ranks=)`). Either way before any point of the run
    is written: /results/rank then tells which device computed each point.
    """
    with h5py.File(path, "r+", locking=False) as f:
        _record_ranks(f, hosts, devices)
        f.flush()
    fsync_file(path)


def _record_ranks(f: h5py.File, hosts: Sequence[str], devices: Sequence[str]) -> None:
    """Write /ranks/host and /ranks/device; a later run (a resume on other nodes) replaces the table and keeps
    the older ones as /ranks/run_<k>_host, /ranks/run_<k>_device."""
    g = f.require_group(contract.RANKS)
    if "host" in g:
        k = 0
        while f"run_{k}_host" in g:
            k += 1
        g.move("host", f"run_{k}_host")
        g.move("device", f"run_{k}_device")
    g.create_dataset("host", data=np.array(list(hosts), dtype=h5py.string_dtype()))
    g.create_dataset("device", data=np.array(list(devices), dtype=h5py.string_dtype()))


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


def result_columns(config: SurfaceConfig) -> list[str]:
    """The per-point columns a run writes, in the order of the evaluator's values."""
    return config.metrics + ([contract.EIG_ITERS.split("/")[-1]] if config.eig else []) + config.sequential_columns


def sequential_rule_attr(config: SurfaceConfig, split_sizes: dict[str, int] | None = None) -> dict:
    """The root attribute ``sequential`` of a file computed with --tolerance: the stopping rule, in full, and the
    samples of each split (`split_sizes`, where known: what a point reads at most)."""
    return {**({"split_samples": split_sizes} if split_sizes else {}), "tolerance": config.tolerance,
            "min_samples": config.min_samples, "block": config.tolerance_block, "order_seed": config.seed,
            "order": contract.SEQUENTIAL_ORDER,
            "stop": "after at least max(2, ceil(min_samples / block)) blocks, at the first block where "
                    "se(loss) <= tolerance * |loss|; a non-finite loss reads the whole split",
            "loss_se": "ratio estimator over blocks, finite-population correction 1 - n/N",
            "metric_se": "delete-one-block jackknife, finite-population correction 1 - n/N"}


class ResultWriter:
    """Writes finished points into an existing surface file, durably: values, flush, fsync, then done flags,
    flush, fsync (see the module docstring for why).

    io='single': one process, sec2 driver. io='collective': every rank opens the file with the MPI-IO driver
    (a collective open and close) and writes in collective write phases (`write` must then be called by every
    rank the same number of times, a rank with nothing to write included); H5Fflush under MPI-IO is
    MPI_File_sync, collective too.

    `ranks` (io='single' only): (hosts, devices) of the run's ranks, recorded durably (`write_run_ranks`) once
    the file is open, before any point is written: the run's one open of its file for writing.
    """

    def __init__(self, path: str, columns: Sequence[str], io: str = "single", comm=None,
                 ranks: tuple[Sequence[str], Sequence[str]] | None = None) -> None:
        self.path = path
        self.columns = list(columns)
        self.io = io
        self.comm = comm
        self.writes = 0
        # No HDF5 file lock: it would stop readers (landscape-mpi info, plotting, a user's h5py.File(path))
        # from opening the file while the job runs. Two writers are kept apart by `RunLock` instead.
        try:
            if io == "collective":
                self.file = h5py.File(path, "r+", driver="mpio", comm=comm, **mpio_hints())
            else:
                self.file = h5py.File(path, "r+", locking=False)
        except OSError as exc:
            raise UserError(f"--out {path}: cannot open for writing ({exc})") from None
        self._fd = self.file.id.get_vfd_handle() if io == "single" else None
        if ranks is not None:
            if io != "single":
                raise ValueError("ranks are recorded by write_run_ranks before a collective open")
            _record_ranks(self.file, *ranks)
            self.sync()
        self.dsets = {m: self.file[f"{contract.RESULTS}/{m}"] for m in self.columns}
        self.rank_dset = self.file[contract.RANK]
        self.seconds_dset = self.file[contract.SECONDS]
        self.done_dset = self.file[contract.DONE]
        self.shape = self.done_dset.shape
        # --adaptive: the round of each chosen point, queued by rank 0 (`queue_rounds`) and written in its next write
        self.round_dset = self.file[contract.ROUND] if contract.ROUND in self.file else None
        self.rounds: list[tuple[np.ndarray, int]] = []

    def queue_rounds(self, flat: np.ndarray, round_number: int) -> None:
        """Record that round `round_number` chose the points `flat` (--adaptive), in this writer's next `write`:
        before any of them can be marked done. Under --io collective every writer's `write` takes part in
        the round's write (the others with nothing), so rank 0 queues and the others need not know."""
        self.rounds.append((np.asarray(flat, dtype=np.int64), int(round_number)))

    def _write_points(self, dset: h5py.Dataset, coords: np.ndarray, values: np.ndarray) -> None:
        # One HDF5 call per dataset for a whole batch of scattered points (an element selection). Under
        # --io collective an empty batch still takes part in the collective call with an empty selection
        # (h5py's high-level API skips empty selections, and the other ranks would wait forever).
        fspace = dset.id.get_space()
        if len(values):
            fspace.select_elements(coords)
            mspace = h5py.h5s.create_simple((len(values),))
        else:
            fspace.select_none()
            mspace = h5py.h5s.create_simple((1,))
            mspace.select_none()
            values = np.zeros(1)
        if self.io == "collective":
            dxpl = h5py.h5p.create(h5py.h5p.DATASET_XFER)
            dxpl.set_dxpl_mpio(h5py.h5fd.MPIO_COLLECTIVE)
            dset.id.write(mspace, fspace, np.ascontiguousarray(values, dtype=dset.dtype), dxpl=dxpl)
        else:
            dset.id.write(mspace, fspace, np.ascontiguousarray(values, dtype=dset.dtype))

    def write(self, flat: np.ndarray, values: np.ndarray, ranks: np.ndarray, seconds: np.ndarray) -> None:
        """Write a batch: `values[p, c]` is column c at flat grid index `flat[p]`. Durable when it returns."""
        if len(flat) == 0 and self.io != "collective" and not self.rounds:
            return
        self.writes += 1
        if self.round_dset is not None:  # the rounds queued so far, before the values and their done flags
            queued, self.rounds = self.rounds, []
            where = np.concatenate([q[0] for q in queued]) if queued else np.empty(0, dtype=np.int64)
            rounds = np.concatenate([np.full(len(q[0]), q[1], dtype=np.int32) for q in queued]) if queued else \
                np.empty(0, dtype=np.int32)
            spots = np.stack(np.unravel_index(where, self.shape), axis=1).astype(np.uint64)
            self._write_points(self.round_dset, spots, rounds)
        coords = np.stack(np.unravel_index(np.asarray(flat, dtype=np.int64), self.shape), axis=1).astype(np.uint64)
        values = np.asarray(values, dtype=np.float64).reshape(len(flat), len(self.columns))
        for c, name in enumerate(self.columns):
            self._write_points(self.dsets[name], coords, values[:, c])
        self._write_points(self.rank_dset, coords, np.asarray(ranks))
        self._write_points(self.seconds_dset, coords, np.asarray(seconds))
        self.sync()  # the values are on disk before any of their done flags can be
        self._write_points(self.done_dset, coords, np.ones(len(flat), dtype=np.uint8))
        self.sync()

    def sync(self) -> None:
        """Flush HDF5's buffers and make them durable: H5Fflush then fsync (single); under MPI-IO, H5Fflush
        is a collective MPI_File_sync, which is both."""
        self.file.flush()
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        self.file.close()


def parallel_hdf5() -> bool:
    """Whether h5py was built with parallel HDF5 (the MPI-IO driver that --io collective needs)."""
    return bool(h5py.get_config().mpi)


def mpio_hints() -> dict:
    """MPI-IO hints for the collective writer, documented in README.md ("Writing the file").

    Collective buffering on (a few aggregator ranks gather the scattered points and write large blocks), data
    sieving for writes off (ROMIO would otherwise read-modify-write whole blocks, under fcntl locks that are
    not coherent on every parallel file system: a neighbour's value could be undone).
    """
    try:
        from mpi4py import MPI
    except ImportError:
        return {}
    info = MPI.Info.Create()
    for key, value in (("romio_cb_write", "enable"), ("romio_ds_write", "disable"),
                       ("romio_no_indep_rw", "false"), ("collective_buffering", "true")):
        info.Set(key, value)
    # h5py passes these keywords on to H5Pset_fapl_mpio(comm, info)
    return {"info": info}
