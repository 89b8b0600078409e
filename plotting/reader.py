"""The one module of `plotting` that opens surface files: read-only, without HDF5 file locking, so a file
that a running job is writing can be read (the writer only overwrites raw bytes in place; see
landscape_mpi/store.py). Needs h5py and numpy only: no torch, no MPI, nothing from landscape_mpi.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

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
    """Optional: x, y (projected path), epochs, explained_variance."""

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
            raise PlotError(f"{self.path} has no metric {name!r}; choose one of {', '.join(self.values)}")
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


def read_surface(path: str) -> Surface:
    if not os.path.isfile(path):
        raise PlotError(f"{path}: no such file; give a surface file written by landscape-mpi surface")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise PlotError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        version = f.attrs.get("schema_version")
        if version is None or "config" not in f.attrs:
            raise PlotError(f"{path}: not a landscape-mpi surface file (no schema_version)")
        if int(version) != SCHEMA_VERSION:
            raise PlotError(f"{path}: schema_version {int(version)}; this landscape-plot reads {SCHEMA_VERSION}")
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        config = json.loads(attrs["config"])
        axes = json.loads(attrs.get("axes", '["x"]'))
        coords = {a: f["coords"][a][()] for a in axes}
        done = f["results/done"][()].astype(bool)  # read before the values: a point marked done has them
        values = {}
        for name in f["results"]:
            if name in ("done", "rank", "seconds"):
                continue
            v = f["results"][name][()].astype(np.float64)
            v[~done] = np.nan  # never show a point that is not done, whatever its bytes hold
            values[name] = v
        trajectory = None
        if "trajectory" in f:
            g = f["trajectory"]
            trajectory = {k: g[k][()] for k in g}
            trajectory.update({k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()})
    if "eig_min" in values and "eig_max" in values:
        with np.errstate(divide="ignore", invalid="ignore"):
            values["eig_ratio"] = np.abs(values["eig_min"] / values["eig_max"])
    return Surface(path, config, coords, values, done, attrs, trajectory)
