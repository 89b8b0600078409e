"""The reader of the path file (root attribute ``file_kind = "path"``): values along a path between checkpoints,
one row per curve, one column per value of the path parameter t (issue 27; the writer is the path job's).

Layout: `contract.PATH_SCHEMA`, the one schema (docs/file-format.md#the-path-file is generated from it).

Opened as every file is, through `reader.open_read` (read-only, without file locking: readable while a job
writes it; a missing, foreign or newer file is a one-line UserError). Imports neither torch nor mpi4py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from landscape_mpi.config.errors import UserError
from landscape_mpi.files import contract
from landscape_mpi.files.reader import NOT_METRICS, open_read

__all__ = ["KIND_PATH", "PATH_KINDS", "PathFile", "read_path"]

#: The root attribute ``file_kind`` of a path file, and its ``path_kind`` values (declared in the contract).
KIND_PATH, PATH_KIND_ATTR, PATH_KINDS = contract.KIND_PATH, contract.PATH_KIND_ATTR, contract.PATH_KINDS

T = "coords/t"
CHECKPOINTS = "path/checkpoints"
CURVES = "path/curves"
ENDPOINTS = "path/endpoints"
KNOTS = "path/knots"
COEFFICIENTS = "path/coefficients"


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def _strings(ds) -> list[str]:
    return [str(_text(s)) for s in ds[()].tolist()]


@dataclass
class PathFile:
    """Everything of a path file but its directions (a path file is small: n_curves x n_t)."""

    path: str
    kind: str
    """``path_kind``: linear, chain, bezier, pairs or layers."""
    config: dict
    attrs: dict
    t: np.ndarray
    """(n_t,) the path parameter of each column."""
    checkpoints: list[str]
    curves: list[str]
    endpoints: np.ndarray
    """(n_curves, 2) int: indices into `checkpoints` of each curve's t = 0 and t = 1 model."""
    knots: np.ndarray | None
    """The t of each checkpoint along a chain (chain files only), else None."""
    coefficients: np.ndarray
    """(n_curves, n_t, K): the weights at point (c, j) are checkpoint 0 + sum_k coefficients[c, j, k - 1] d_k,
    d_k = checkpoint k minus checkpoint 0, k = 1 .. K (``layers``: d_k is B - A on block k only)."""
    done: np.ndarray
    """(n_curves, n_t) bool."""
    values: dict[str, np.ndarray] = field(default_factory=dict)
    """``<split>_<metric>`` -> (n_curves, n_t) float64, NaN wherever the point is not done."""

    @property
    def metrics(self) -> list[str]:
        return list(self.values)

    @property
    def n_done(self) -> int:
        return int(self.done.sum())

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def metric(self, name: str) -> np.ndarray:
        if name not in self.values:
            raise UserError(f"{self.path}: no metric {name!r} in this path file; choose one of "
                            f"{', '.join(self.values) or 'none (no results yet)'}")
        return self.values[name]


def read_path(path: str, option: str = "") -> PathFile:
    """Read a path file (`PathFile`). Raises UserError, one line starting with `option` and the path, for a
    missing file, a file of another kind, a newer schema, or a path file without its /coords/t, /path or
    /results parts."""
    with open_read(path, KIND_PATH, option, fix="compute it with landscape-mpi path") as f:
        attrs = {k: _text(v) for k, v in f.attrs.items()}
        try:
            done = f[contract.DONE][()].astype(bool)  # before any value: a point marked done has its values
            declared = json.loads(attrs.get(contract.METRICS_ATTR, "[]"))
            names = declared or [n for n in f[contract.RESULTS] if n not in NOT_METRICS]
            values = {}
            for name in names:
                v = f[contract.RESULTS][name][()].astype(np.float64)
                v[~done] = np.nan
                values[name] = v
            out = PathFile(path=path, kind=str(attrs.get(PATH_KIND_ATTR, "")),
                           config=json.loads(attrs[contract.CONFIG_ATTR]), attrs=attrs,
                           t=f[T][()].astype(np.float64), checkpoints=_strings(f[CHECKPOINTS]),
                           curves=_strings(f[CURVES]), endpoints=f[ENDPOINTS][()].astype(np.int64),
                           knots=f[KNOTS][()].astype(np.float64) if KNOTS in f else None,
                           coefficients=f[COEFFICIENTS][()].astype(np.float64), done=done, values=values)
        except KeyError as exc:
            where = f"{option} {path}" if option else path
            raise UserError(f"{where}: a path file without a part it must have ({exc}); recompute it with "
                            f"landscape-mpi path --overwrite") from None
    if out.kind not in PATH_KINDS:
        raise UserError(f"{path}: path_kind {out.kind!r} is none of {', '.join(PATH_KINDS)}; this landscape-mpi "
                        f"reads those: use the version that wrote the file")
    shape = (len(out.curves), len(out.t))
    if out.done.shape != shape or out.endpoints.shape != (len(out.curves), 2):
        raise UserError(f"{path}: /results/done is {out.done.shape} and /path/endpoints {out.endpoints.shape} for "
                        f"{shape[0]} curve(s) x {shape[1]} t; the file is damaged: recompute it with --overwrite")
    return out
