"""A surface given as an xarray Dataset (`landscape_mpi.open`, or the `dataset` of `landscape_mpi.api.surface`)
drawn by this package's figures: `as_surface` makes the `Surface` every figure function takes (docs/api.md).

Duck-typed: the Dataset is read through its variables and attributes (no xarray import here). Not carried over:
a PCA surface's trajectory (plot the file itself for the trajectory figures).
"""

from __future__ import annotations

import json

import numpy as np

from plotting.reader import PlotError, Surface


def as_surface(dataset) -> Surface:
    """The `Surface` of a surface Dataset: its coordinates, every metric variable (NaN where not done), the done
    mask, the configuration and attributes. PlotError for a Dataset of another file kind."""
    kind = dataset.attrs.get("file_kind", "surface")
    if kind != "surface":
        raise PlotError(f"a {kind} Dataset, not a surface's; give landscape_mpi.open of a surface file")
    if "done" not in dataset:
        raise PlotError("a Dataset without the done mask; give landscape_mpi.open of a surface file")
    done = np.asarray(dataset["done"].values, dtype=bool)
    axes = list(dataset["done"].dims)
    coords = {a: np.asarray(dataset[a].values, dtype=np.float64) for a in axes}
    values = {name: np.where(done, np.asarray(v.values, dtype=np.float64), np.nan)
              for name, v in dataset.data_vars.items() if name != "done" and list(v.dims) == axes}
    available = list(values)
    if "eig_min" in values and "eig_max" in values:
        with np.errstate(divide="ignore", invalid="ignore"):
            values["eig_ratio"] = np.abs(values["eig_min"] / values["eig_max"])
        available.append("eig_ratio")
    config = json.loads(dataset.attrs["config"]) if "config" in dataset.attrs else {}
    path = str(dataset.encoding.get("source", "dataset"))
    return Surface(path, config, coords, values, done, dict(dataset.attrs), None, available)
