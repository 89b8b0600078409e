"""The reader of every file kind landscape-mpi writes or imports; with the writers (store.py: the surface file,
hessian_store.py: the Hessian file) the only module of the package that calls h5py. Layouts: files/contract.py
and docs/file-format.md.

Every open goes through `open_read`: read-only and without HDF5 file locking, so that a file a running job is
writing can be read (the writer only overwrites raw bytes in place, and a point marked done has its values:
`done` is read before any value). A missing file, a file that is not HDF5, a file of another kind and a newer
schema are each a one-line UserError naming the fix.

Kinds read here:
- the surface file (`open_surface` -> `SurfaceFile`, whose methods read one part each; `read_summary`,
  `read_directions`, `read_coords`, `read_run_inputs`, `read_trajectory`, `is_complete` open, read and close);
- the Hessian file (`read_hessian_file`, `read_eigenvectors`);
- a direction file: a surface file's /directions (`read_direction_file`) or the paper's reference code's
  layout (`read_reference_datasets`: the raw datasets; landscape_mpi/directions/reference.py maps them).

Imports neither torch nor mpi4py: `info`, `compare` and the plotting package read on a login node.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from landscape_mpi.config.errors import UserError
from landscape_mpi.files import contract

__all__ = ["UserError", "open_read", "file_kind", "SurfaceFile", "open_surface", "SurfaceSummary", "read_summary",
           "read_directions", "read_coords", "read_run_inputs", "read_trajectory", "is_complete",
           "read_direction_file", "read_reference_datasets", "read_eigenvectors", "read_hessian_file"]

#: A direction as stored: state_dict key -> array.
StoredDirection = dict[str, np.ndarray]

#: Per kind: what the file is called in messages, and how to get one.
_KINDS = {
    contract.KIND_SURFACE: ("surface file", "compute it with landscape-mpi surface"),
    contract.KIND_HESSIAN: ("Hessian file", "compute it with landscape-mpi hessian"),
    contract.KIND_PATH: ("path file", "compute it with landscape-mpi path"),
    None: ("file", "give an HDF5 file"),
}

#: The Hessian file's groups of per-row results (eigenvectors are read by `read_eigenvectors` only).
HESSIAN_GROUPS = (contract.CHECKPOINTS, contract.EIGEN, contract.TRACE, contract.DENSITY, contract.ADAPTIVE,
                  contract.BLOCKS)


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def open_read(path: str, kind: str | None = contract.KIND_SURFACE, option: str = "",
              fix: str | None = None) -> h5py.File:
    """Open `path` read-only, without file locking, as a file of `kind` (``contract.KIND_SURFACE``,
    ``KIND_HESSIAN``; None: any HDF5 file, e.g. the reference code's direction file).

    Raises UserError, one line that starts with `option` (e.g. ``--hessian-file``) and the path and ends with
    `fix` (default: how to compute a file of that kind), for a missing file, a file that HDF5 cannot open, a
    file of another kind, one without schema_version/config, or a schema version this package does not read.
    """
    noun, default_fix = _KINDS[kind]
    fix = fix or default_fix
    where = f"{option} {path}" if option else path
    if not os.path.isfile(path):
        raise UserError(f"{where}: no such file; {fix}")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        again = "recompute it with --overwrite" if kind == contract.KIND_SURFACE else fix
        raise UserError(f"{where}: not a readable HDF5 {noun} ({exc}); {again}") from None
    if kind is None:
        return f
    attrs = f.attrs
    version = contract.SCHEMA_VERSION_ATTR
    found = _text(attrs.get(contract.FILE_KIND_ATTR, contract.KIND_SURFACE if version in attrs else None))
    problem = None
    if found is not None and found != kind:
        problem = f"a {found} file, not a {noun}; {fix}"
    elif version not in attrs or contract.CONFIG_ATTR not in attrs:
        problem = f"an HDF5 file but not a landscape-mpi {noun} (no schema_version/config); {fix}"
    elif int(attrs[version]) not in contract.READABLE_SCHEMA_VERSIONS:
        problem = (f"schema_version {int(attrs[version])}, this landscape-mpi reads "
                   f"{', '.join(map(str, contract.READABLE_SCHEMA_VERSIONS))}; use the landscape-mpi version "
                   f"that wrote it")
    if problem is not None:
        f.close()
        raise UserError(f"{where}: {problem}")
    return f


def file_kind(path: str) -> str:
    """The root attribute ``file_kind`` ("surface" when absent: schema 1 surface files have none), read
    without touching any dataset. Raises UserError for a missing or non-HDF5 file."""
    with open_read(path, None, fix="give a file written by landscape-mpi") as f:
        return str(_text(f.attrs.get(contract.FILE_KIND_ATTR, contract.KIND_SURFACE)))


# ------------------------------------------------------------------------------------------- surface file
#: Result datasets that are bookkeeping, not metrics.
NOT_METRICS = tuple(name.split("/")[-1] for name in contract.BOOKKEEPING)


@dataclass
class SurfaceSummary:
    """What `info` and resume need to know of a file."""

    attrs: dict
    config: dict
    shape: tuple[int, ...]
    done: np.ndarray
    metrics: dict[str, np.ndarray]
    ranks: np.ndarray | None
    coords: dict[str, np.ndarray]
    data_indices: dict[str, np.ndarray]


#: The stored directions (one per axis) and coordinates (one array per axis, axis order) a run evaluates with.
RunInputs = tuple[list[StoredDirection], list[np.ndarray]]


class SurfaceFile:
    """A surface file open for reading (`open_surface`): its root attributes at once, every other part only
    when a method asks for it (plotting reads `done` and one metric of a large file, nothing else)."""

    def __init__(self, path: str, f: h5py.File) -> None:
        self.path, self.file = path, f
        self.attrs = {k: _text(v) for k, v in f.attrs.items()}
        self.config = json.loads(self.attrs[contract.CONFIG_ATTR])
        coords = f[contract.COORDS]
        self.axes: list[str] = (json.loads(self.attrs[contract.AXES_ATTR]) if contract.AXES_ATTR in self.attrs
                                else [a for a in contract.AXIS_NAMES if a in coords])

    def __enter__(self) -> SurfaceFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    def has(self, name: str) -> bool:
        return name in self.file

    def metric_names(self) -> list[str]:
        """The metrics the writer declared (attribute ``metrics``), else every metric dataset."""
        return json.loads(self.attrs.get(contract.METRICS_ATTR, "[]")) or self.metrics()

    def metrics(self) -> list[str]:
        """Every per-point dataset of /results that is a value (eig_max, eig_min included), in name order."""
        return [name for name in self.file[contract.RESULTS] if name not in NOT_METRICS]

    def coords(self, every: bool = False) -> dict[str, np.ndarray]:
        """Axis name -> coordinates, for the file's axes (`every`: each dataset of /coords)."""
        g = self.file[contract.COORDS]
        return {a: g[a][()] for a in (list(g) if every else self.axes)}

    def done(self) -> np.ndarray:
        """The done mask (bool, grid-shaped). Read it before any value: a point marked done has its values."""
        return self.file[contract.DONE][()].astype(bool)

    def raw(self, name: str) -> np.ndarray:
        """/results/<name> as stored (NaN or -1 where not computed yet)."""
        return self.file[contract.RESULTS][name][()]

    def values(self, name: str, done: np.ndarray) -> np.ndarray:
        """/results/<name> as float64, NaN wherever `done` is False, whatever the bytes hold."""
        v = self.raw(name).astype(np.float64)
        v[~done] = np.nan
        return v

    def ranks(self) -> np.ndarray:
        return self.file[contract.RANK][()]

    def directions(self, axes: Sequence[str]) -> list[StoredDirection]:
        """The stored directions, one per axis (state_dict key -> array)."""
        group = self.file[contract.DIRECTIONS]
        return [{k: g[k][()] for k in g} for g in (group[a] for a in axes)]

    def direction_rows(self, axes: Sequence[str], span: Callable[[int], tuple[int, int]]) -> list[StoredDirection]:
        """The rows lo..hi-1 = span(n) (dim 0) of each stored direction of n rows; a 0-dim tensor whole. Only
        these rows are read: a member's shards of a model no rank holds whole (`engine.group.shard_span`)."""
        group = self.file[contract.DIRECTIONS]
        out = []
        for g in (group[a] for a in axes):
            rows = {}
            for k in g:
                ds = g[k]
                if not ds.shape:
                    rows[k] = ds[()]
                    continue
                lo, hi = span(ds.shape[0])
                rows[k] = ds[lo:hi]
            out.append(rows)
        return out

    def trajectory(self) -> dict | None:
        """/trajectory: every dataset (x, y, epochs, residual) and attribute (explained_variance, ...), or None."""
        if contract.TRAJECTORY not in self.file:
            return None
        g = self.file[contract.TRAJECTORY]
        out = {k: g[k][()] for k in g}
        out.update({k: _text(v) for k, v in g.attrs.items()})
        return out

    def summary(self, with_values: bool = True, with_ranks: bool = True) -> SurfaceSummary:
        """Attributes, done mask and coordinates; values and ranks only if asked (they are the big datasets)."""
        done = self.done()  # before the values: any point marked done has its values
        metrics = {m: self.raw(m) for m in json.loads(self.attrs[contract.METRICS_ATTR])} if with_values else {}
        ranks = self.ranks() if with_ranks else None
        return SurfaceSummary(self.attrs, self.config, tuple(done.shape), done, metrics, ranks, self.coords(every=True),
                              self.data_indices())

    def run_inputs(self, axes: Sequence[str]) -> RunInputs:
        """(directions, coordinates): what every rank of a run evaluates with, new points at these exact
        coordinates (the file is the source of truth on every rank and resume)."""
        return self.directions(axes), list(self.coords().values())

    def data_indices(self) -> dict[str, np.ndarray]:
        """Split -> the sample indices kept by --samples (only splits that have them)."""
        if contract.DATA not in self.file:
            return {}
        g = self.file[contract.DATA]
        return {k[:-len("_indices")]: g[k][()] for k in g if k.endswith("_indices")}


def open_surface(path: str, option: str = "", kind: str = contract.KIND_SURFACE) -> SurfaceFile:
    """Open a surface file (or a path file, `kind`: the same layout of directions, grid and results) for reading
    (a context manager); raises UserError as `open_read` does."""
    f = open_read(path, kind, option)
    try:
        return SurfaceFile(path, f)
    except BaseException:
        f.close()
        raise


def read_summary(path: str, with_values: bool = True, with_ranks: bool = True) -> SurfaceSummary:
    """`SurfaceFile.summary` of the file at `path`."""
    with open_surface(path) as s:
        return s.summary(with_values, with_ranks)


def read_directions(path: str, axes: Sequence[str]) -> list[StoredDirection]:
    """The stored directions (numpy arrays), one per axis: the source of truth for every rank and resume."""
    with open_surface(path) as s:
        return s.directions(axes)


def read_coords(path: str) -> list[np.ndarray]:
    """The file's grid coordinates, one array per axis in x, y, z order: new points are evaluated there."""
    with open_surface(path) as s:
        return list(s.coords().values())


def read_run_inputs(path: str, axes: Sequence[str], kind: str = contract.KIND_SURFACE) -> RunInputs:
    """`SurfaceFile.run_inputs` in one open (the directions and coordinates a run evaluates with)."""
    with open_surface(path, kind=kind) as s:
        return s.run_inputs(axes)


def read_run_rows(path: str, axes: Sequence[str], span: Callable[[int], tuple[int, int]],
                  kind: str = contract.KIND_SURFACE) -> RunInputs:
    """(the rows span(n) of each direction (`SurfaceFile.direction_rows`), coordinates) in one open."""
    with open_surface(path, kind=kind) as s:
        return s.direction_rows(axes, span), list(s.coords().values())


def read_trajectory(path: str) -> dict | None:
    """The stored /trajectory (`SurfaceFile.trajectory`), or None if the file has none."""
    with open_surface(path) as s:
        return s.trajectory()


def is_complete(path: str) -> bool:
    """True if `path` is a readable surface file whose every point is done (False if missing or foreign)."""
    try:
        with open_surface(path) as s:
            return bool(np.all(s.done()))
    except (UserError, OSError, KeyError):
        return False


# ---------------------------------------------------------------------------------------- direction files
def read_direction_file(path: str) -> list[StoredDirection]:
    """The directions of a file in this package's layout (/directions/x, y, z: a surface file), for
    ``--dir-file``. Raises UserError if the file is missing, not HDF5, or has no /directions/x."""
    fix = "give a surface file or use --dir-format reference"
    with open_read(path, None, "--dir-file", fix) as f:
        try:
            group = f[contract.DIRECTIONS]
            return [{k: group[a][k][()] for k in group[a]} for a in contract.AXIS_NAMES if a in group]
        except KeyError as exc:
            raise UserError(f"--dir-file {path}: not a readable direction file with /directions/x ({exc}); "
                            f"{fix}") from None


def read_reference_datasets(path: str) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The raw datasets of a direction file of the paper's reference code: (group, {dataset name: array}) for
    ``xdirection`` and, if present, ``ydirection``. Raises UserError for a missing or non-HDF5 file or one
    without ``xdirection``."""
    with open_read(path, None, "--dir-file", "give the direction file written by the reference code") as f:
        if contract.REFERENCE_GROUPS[0] not in f:
            raise UserError(f"--dir-file {path}: no 'xdirection' group; give a direction file in the reference "
                            f"code's layout (groups xdirection, ydirection with datasets 0..N-1)")
        return [(name, {k: (np.asarray(d[()]) if isinstance(d, h5py.Dataset) else None) for k, d in f[name].items()})
                for name in contract.REFERENCE_GROUPS if name in f]


# ------------------------------------------------------------------------------------------- Hessian file
def read_eigenvectors(path: str, row: int, count: int, option: str = "--hessian-file"
                      ) -> tuple[list[dict[str, np.ndarray]], dict]:
    """The first `count` stored eigenvectors of `row` (name -> float64 array) and info: eigenvalues, checkpoint.

    Raises UserError if the file is not a Hessian file, the row does not exist or fewer than `count`
    eigenvectors were stored.
    """
    with open_read(path, contract.KIND_HESSIAN, option) as f:
        rows = int(f.attrs["rows"])
        if not 0 <= row < rows:
            raise UserError(f"{option} {path} has rows 0..{rows - 1} (one per checkpoint), not row {row}; "
                            f"choose one of those")
        group = f[contract.EIGENVECTORS][f"row_{row:03d}"]
        if len(group) < count:
            raise UserError(f"{option} {path} stores {len(group)} eigenvector(s) per row, {count} needed; "
                            f"recompute it with --top-k {count} or more")
        vectors = [{name: ds[()] for name, ds in group[str(j)].items()} for j in range(count)]
        info = {"eigenvalues": f[contract.EIGEN]["values"][row],
                "checkpoint": f[contract.CHECKPOINTS]["path"].asstr()[row]}
    return vectors, info


def read_hessian_file(path: str, option: str = "--hessian-file") -> dict:
    """Every dataset (except eigenvectors) as {"group/name": array}, plus "attrs" (root), "config" and
    "group_attrs" ({group: its attributes}). Raises UserError as `open_read` does."""
    out: dict = {}
    with open_read(path, contract.KIND_HESSIAN, option) as f:
        out["attrs"] = {k: _text(v) for k, v in f.attrs.items()}
        out["config"] = json.loads(out["attrs"][contract.CONFIG_ATTR])
        out["group_attrs"] = {}
        for gname in HESSIAN_GROUPS:
            if gname in f:
                out["group_attrs"][gname] = {k: _text(v) for k, v in f[gname].attrs.items()}
                for name, ds in f[gname].items():
                    out[f"{gname}/{name}"] = ds.asstr()[()] if ds.dtype.kind == "O" else ds[()]
    return out
