"""The one module of `plotting` that opens surface files: read-only, without HDF5 file locking, so a file
that a running job is writing can be read (the writer only overwrites raw bytes in place; see
landscape_mpi/files/store.py). Needs h5py and numpy only: no torch, no MPI, nothing from landscape_mpi.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import h5py
import numpy as np

#: The file schema this package reads; pinned to landscape_mpi.files.contract.SCHEMA_VERSION by a test (plotting
#: imports nothing from landscape_mpi, so it keeps its own copy).
SCHEMA_VERSION = 1


class PlotError(Exception):
    """A user mistake (missing file, unknown metric, wrong kind for the file): one line naming the fix."""


@dataclass
class Surface:
    path: str
    config: dict
    coords: dict[str, np.ndarray]
    """Axis name (x, y, z) -> coordinates."""
    values: dict[str, np.ndarray]
    """Metric name -> grid-shaped float64 array, NaN wherever the point is not done."""
    done: np.ndarray
    attrs: dict = field(default_factory=dict)
    trajectory: dict | None = None
    """Optional: x, y (projected path), epochs, residual, explained_variance."""
    available: list[str] = field(default_factory=list)
    """Every metric the file holds (``eig_ratio`` where it holds eig_min and eig_max); `values` holds the
    ones read so far."""
    interpolated: dict[str, np.ndarray] = field(default_factory=dict)
    """Metric -> mask of the points filled by interpolation (``--fill-missing``); empty when drawn as is."""

    @property
    def ndim(self) -> int:
        return len(self.coords)

    @property
    def n_done(self) -> int:
        return int(self.done.sum())

    @property
    def n_total(self) -> int:
        return int(self.done.size)

    @property
    def complete(self) -> bool:
        return self.n_done == self.n_total

    def metric(self, name: str) -> np.ndarray:
        if name not in self.values:
            choices = self.available or list(self.values)
            raise PlotError(f"{self.path} has no metric {name!r}; choose one of {', '.join(choices)}")
        return self.values[name]

    def label(self) -> str:
        """A short label of one file: its model and file name."""
        name = os.path.splitext(os.path.basename(self.path))[0]
        model = str(self.config.get("model", "?"))
        return name if model in name else f"{model} {name}"

    def progress(self) -> str:
        return f"{self.n_done} of {self.n_total} points"


def _short(key: str, value) -> str:
    if key in ("checkpoint", "x_target", "y_target") and isinstance(value, str):
        value = "/".join(value.replace("\\", "/").split("/")[-2:])  # parent folder and file name
    return f"{key}={value}"


def legend_labels(surfaces: list[Surface]) -> list[str]:
    """Legend labels built from the configs: the fields in which the files differ (e.g. checkpoint=bs128/final.pt
    against checkpoint=bs8192/final.pt), or the file names where the configs are the same."""
    if len(surfaces) == 1:
        return [surfaces[0].label()]
    keys = sorted({k for s in surfaces for k in s.config})
    differing = [k for k in keys if len({repr(s.config.get(k)) for s in surfaces}) > 1]
    if not differing:
        return [s.label() for s in surfaces]
    return [", ".join(_short(k, s.config.get(k)) for k in differing[:3]) for s in surfaces]


def file_kind(path: str) -> str:
    """The root attribute ``file_kind`` ("surface" when absent, as schema 1 surface files have none), read
    without touching any dataset. Raises PlotError for a missing or non-HDF5 file."""
    f = _open(path)
    with f:
        kind = f.attrs.get("file_kind", "surface")
    return kind.decode() if isinstance(kind, bytes) else str(kind)


def _open(path: str) -> h5py.File:
    if not os.path.isfile(path):
        raise PlotError(f"{path}: no such file; give a surface file written by landscape-mpi surface")
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise PlotError(f"{path}: not a readable HDF5 file ({exc})") from None


#: Result datasets that are bookkeeping, not metrics.
NOT_METRICS = ("done", "rank", "seconds", "eig_iters")


def read_surface(path: str, metrics: Sequence[str] | None = None) -> Surface:
    """Open a surface file and read its header, coordinates, trajectory and `done` mask, then the values of
    `metrics` only (None: every metric; ``()``: none yet, see `read_metrics`). ``eig_ratio`` stands for
    eig_min and eig_max. Raises PlotError for a missing or foreign file, another schema version, a
    Hessian file, or a requested metric the file does not hold."""
    f = _open(path)
    with f:
        version = f.attrs.get("schema_version")
        kind = f.attrs.get("file_kind", "surface")
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind != "surface":
            raise PlotError(f"{path}: a {kind} file, not a surface file; draw it on its own (landscape-plot {path})")
        if version is None or "config" not in f.attrs:
            raise PlotError(f"{path}: not a landscape-mpi surface file (no schema_version)")
        if int(version) != SCHEMA_VERSION:
            raise PlotError(f"{path}: schema_version {int(version)}; this landscape-plot reads {SCHEMA_VERSION}")
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        config = json.loads(attrs["config"])
        axes = json.loads(attrs.get("axes", '["x"]'))
        coords = {a: f["coords"][a][()] for a in axes}
        done = f["results/done"][()].astype(bool)  # read before any value: a point marked done has its values
        available = [name for name in f["results"] if name not in NOT_METRICS]
        if "eig_min" in available and "eig_max" in available:
            available.append("eig_ratio")
        trajectory = None
        if "trajectory" in f:
            g = f["trajectory"]
            trajectory = {k: g[k][()] for k in g}
            trajectory.update({k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()})
        surface = Surface(path, config, coords, {}, done, attrs, trajectory, available)
        _read_values(f, surface, available if metrics is None else metrics)
    return surface


def read_metrics(surface: Surface, metrics: Sequence[str]) -> Surface:
    """Add the values of `metrics` to a surface read by `read_surface` (in place; returns it). Points are
    masked with the `done` read first, so a point finished since then stays blank rather than half-read."""
    missing = [m for m in metrics if m not in surface.values]
    if missing:
        with _open(surface.path) as f:
            _read_values(f, surface, missing)
    return surface


def _read_values(f: h5py.File, surface: Surface, metrics: Sequence[str]) -> None:
    for name in metrics:
        if name in surface.values:
            continue
        if name not in surface.available:
            raise PlotError(f"{surface.path} has no metric {name!r}; choose one of {', '.join(surface.available)}")
        if name == "eig_ratio":
            _read_values(f, surface, ["eig_min", "eig_max"])
            with np.errstate(divide="ignore", invalid="ignore"):
                surface.values["eig_ratio"] = np.abs(surface.values["eig_min"] / surface.values["eig_max"])
            continue
        v = f["results"][name][()].astype(np.float64)
        v[~surface.done] = np.nan  # never show a point that is not done, whatever its bytes hold
        surface.values[name] = v
