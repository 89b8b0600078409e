"""The surfaces `plotting` draws, read through landscape-mpi's files layer (landscape_mpi/files/reader.py):
read-only and without HDF5 file locking, so a file that a running job is writing can be read (the writer only
overwrites raw bytes in place; a point marked done has its values). The files layer checks the file's kind and
schema version against landscape_mpi/files/contract.py. From landscape_mpi, plotting imports only
files.reader and files.contract: no torch, no MPI.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from landscape_mpi.files.reader import SurfaceFile, UserError, open_surface


class PlotError(UserError):
    """A user mistake (unknown metric, wrong kind of figure for the file): one line naming the fix. A UserError,
    as the files layer's own (missing file, not a surface file, another schema version)."""


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


def read_surface(path: str, metrics: Sequence[str] | None = None) -> Surface:
    """Open a surface file and read its header, coordinates, trajectory and `done` mask, then the values of
    `metrics` only (None: every metric; ``()``: none yet, see `read_metrics`). ``eig_ratio`` stands for
    eig_min and eig_max. Raises UserError for a missing or foreign file, another schema version, a Hessian file
    (the files layer's open), or PlotError for a requested metric the file does not hold."""
    with open_surface(path) as f:
        coords = f.coords()
        done = f.done()  # read before any value: a point marked done has its values
        available = f.metrics()
        if "eig_min" in available and "eig_max" in available:
            available.append("eig_ratio")
        surface = Surface(path, f.config, coords, {}, done, f.attrs, f.trajectory(), available)
        _read_values(f, surface, available if metrics is None else metrics)
    return surface


def read_metrics(surface: Surface, metrics: Sequence[str]) -> Surface:
    """Add the values of `metrics` to a surface read by `read_surface` (in place; returns it). Points are
    masked with the `done` read first, so a point finished since then stays blank rather than half-read."""
    missing = [m for m in metrics if m not in surface.values]
    if missing:
        with open_surface(surface.path) as f:
            _read_values(f, surface, missing)
    return surface


def _read_values(f: SurfaceFile, surface: Surface, metrics: Sequence[str]) -> None:
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
        # never show a point that is not done, whatever its bytes hold
        surface.values[name] = f.values(name, surface.done)
