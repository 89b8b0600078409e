"""Every file landscape-mpi writes as an `xarray.Dataset` (`open_dataset`, also `landscape_mpi.open`): labelled
arrays, the convention of scientific Python for grids, with the file's configuration in the attributes.

- a surface file: dimensions and coordinates ``x`` (``y``, ``z``) from /coords; one variable per metric and split
  (``train_loss``, ``test_acc``, ..., ``eig_max``), NaN where a point is not done; ``done`` (bool);
- a path file: dimensions ``curve`` (coordinate: the curve's name) and ``t``; the metrics and ``done`` as above,
  ``coefficients`` (curve, t, direction), ``endpoints`` (curve, end), ``knots`` for a chain;
- a Hessian file: dimension ``row`` (one per checkpoint; coordinates ``checkpoint``, ``epoch``, ``sha256``); each
  dataset of each group as ``<group>_<name>`` (``eigen_values`` with dimension ``k``, ``trace_estimate``,
  ``density_grid`` and ``density_values`` with dimension ``density_point``, ``adaptive_sharpness``, ...).

The attributes: the file's root attributes as stored (``config`` is its JSON text) and the configuration's fields
decoded (``model``, ``seed``, ``splits`` ...), where no root attribute has the name. Read through the readers
(reader.py, path_reader.py): read-only, without file locking, ``done`` before any value, so a file a job is
writing is read as it stands. Imports neither torch nor MPI; xarray is a dependency of the package (docs/api.md).
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from landscape_mpi.files import contract, reader
from landscape_mpi.files.path_reader import read_path

#: Dimension names of the Hessian file's datasets beyond the row (others: ``<variable>_dim<i>``).
HESSIAN_DIMS = {"eigen_values": ("k",), "density_grid": ("density_point",), "density_values": ("density_point",),
                "density_nodes": ("slq_run", "slq_step"), "density_weights": ("slq_run", "slq_step"),
                "density_run_means": ("slq_run",), "adaptive_values": ("adaptive_sample",)}


def open_dataset(path: str):
    """The file at `path` (surface, path or Hessian file) as an `xarray.Dataset`, read now (a snapshot of a file
    a job is still writing). Raises UserError, one line, for a missing file or one that is not landscape-mpi's."""
    kind = reader.file_kind(path)
    read = {contract.KIND_HESSIAN: _hessian, contract.KIND_PATH: _path}.get(kind, _surface)
    dataset = read(path)
    dataset.encoding["source"] = path  # where it was read from, as xarray's own open_dataset records it
    return dataset


def _attrs(attrs: dict, config: dict, kind: str) -> dict:
    """The root attributes (numpy scalars as Python numbers), then the configuration's fields not already there."""
    out = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
    out.setdefault(contract.FILE_KIND_ATTR, kind)
    for k, v in config.items():
        if v is not None and k not in out:
            out[k] = v
    return out


def _metric_attrs(name: str) -> dict:
    split, _, metric = name.partition("_")
    return {"split": split, "metric": metric} if split in contract.SPLITS else {"metric": name}


def _surface(path: str):
    with reader.open_surface(path) as f:
        done = f.done()  # before any value: a point marked done has its values
        coords = f.coords()
        variables = {name: (list(coords), f.values(name, done), _metric_attrs(name)) for name in f.metric_names()}
        attrs = _attrs(f.attrs, f.config, contract.KIND_SURFACE)
    variables["done"] = (list(coords), done, {"description": "the point is computed"})
    return xr.Dataset(variables, coords={a: (a, c) for a, c in coords.items()}, attrs=attrs)


def _path(path: str):
    p = read_path(path)
    dims = ("curve", "t")
    variables = {name: (dims, v, _metric_attrs(name)) for name, v in p.values.items()}
    variables["done"] = (dims, p.done, {"description": "the point is computed"})
    variables["coefficients"] = (("curve", "t", "direction"), p.coefficients,
                                 {"description": "weights = checkpoint 0 + sum_k coefficients[..., k] d_k"})
    variables["endpoints"] = (("curve", "end"), p.endpoints,
                              {"description": "indices into the attribute checkpoints of each curve's t = 0 and 1"})
    if p.knots is not None:
        variables["knots"] = (("knot",), p.knots, {"description": "the t of each checkpoint along the chain"})
    attrs = _attrs(p.attrs, p.config, contract.KIND_PATH)
    attrs["checkpoints"] = list(p.checkpoints)
    return xr.Dataset(variables, coords={"t": ("t", p.t), "curve": ("curve", list(p.curves))}, attrs=attrs)


def _hessian(path: str):
    raw = reader.read_hessian_file(path)
    row = "row"
    coords = {row: np.arange(int(raw["attrs"]["rows"])),
              "checkpoint": (row, np.asarray(raw[f"{contract.CHECKPOINTS}/path"], dtype=str)),
              "epoch": (row, raw[f"{contract.CHECKPOINTS}/epoch"]),
              "sha256": (row, np.asarray(raw[f"{contract.CHECKPOINTS}/sha256"], dtype=str))}
    variables = {}
    for key, value in raw.items():
        if "/" not in key:
            continue
        group, name = key.split("/", 1)
        if group == contract.CHECKPOINTS and name in ("path", "epoch", "sha256"):
            continue
        var = name if group == contract.CHECKPOINTS else f"{group}_{name}"
        value = np.asarray(value)
        extra = HESSIAN_DIMS.get(var, ())
        if len(extra) != value.ndim - 1:
            extra = tuple(f"{var}_dim{i}" for i in range(1, value.ndim))
        variables[var] = ((row, *extra), value, dict(raw["group_attrs"].get(group, {})))
    attrs = _attrs(raw["attrs"], raw["config"], contract.KIND_HESSIAN)
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def config_of(dataset) -> dict:
    """The configuration a Dataset of `open_dataset` was computed with (its ``config`` attribute, decoded)."""
    return json.loads(dataset.attrs[contract.CONFIG_ATTR])
