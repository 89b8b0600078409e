"""Barriers along paths between models, computed from a path file alone (no torch; `landscape-mpi info` and the
plots read them on a login node). The definitions: docs/barriers.md.

For a value f along a curve, t in [t0, t1] (the whole curve [0, 1], or one segment of a chain between two knots),
and s = (t - t0) / (t1 - t0):

- ``interpolation``: max_t [f(t) - ((1 - s) f(t0) + s f(t1))], the height above the straight line between the
  two ends' values, with its argmax t (Entezari et al. 2022's loss barrier);
- ``above_mean``: max_t f(t) - (f(t0) + f(t1)) / 2 (Frankle et al. 2020's error barrier height; Ainsworth et
  al. 2023's loss barrier);
- ``above_max``: max_t f(t) - max(f(t0), f(t1)), the rise over the worse end, with the argmax t of f.

All three are >= 0 (the ends are points of the path) and equal when f(t0) = f(t1). f is the file's value for a
lower-is-better metric (loss, ppl) and the error for a higher-is-better one (`ORIENTATION`: 1 - acc, 1 - r2).
Only done points count: a curve with points missing has NaN barriers unless `partial` is asked, and then its ends
must be done; `n_missing` says how many there are either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from landscape_mpi.config.errors import UserError
from landscape_mpi.files.path_reader import PathFile, read_path

__all__ = ["ORIENTATION", "MEASURES", "Barrier", "barrier_label", "oriented", "barrier_of", "curve_barriers",
           "path_barriers", "barrier_matrix", "layer_barriers", "read_barriers"]

#: Higher-is-better metrics (the part of ``<split>_<metric>`` after the split) and the lower-is-better value a
#: barrier is computed on: ``(label, function)``. Every other metric (loss, ppl, a user task's) as it is.
ORIENTATION = {
    "acc": ("1 - acc", lambda v: 1.0 - v),
    "token_acc": ("1 - token_acc", lambda v: 1.0 - v),
    "r2": ("1 - r2", lambda v: 1.0 - v),
}
#: The three barrier numbers, in the order they are shown.
MEASURES = ("interpolation", "above_mean", "above_max")
#: How close a chain's knot must be to a column of /coords/t.
KNOT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Barrier:
    """The barriers of one metric on one curve (or one segment of a chain)."""

    curve: str
    metric: str
    """The file's column, ``<split>_<metric>``."""
    on: str
    """What the barrier is computed on: the metric's name, or its error (``1 - acc``)."""
    t0: float
    t1: float
    interpolation: float
    interpolation_t: float
    above_mean: float
    above_max: float
    max_t: float
    """The argmax t of f (where above_mean and above_max are reached)."""
    n_points: int
    """Grid columns in [t0, t1]."""
    n_missing: int
    """Of those, the ones not done."""

    @property
    def complete(self) -> bool:
        return self.n_missing == 0

    def value(self, measure: str) -> float:
        if measure not in MEASURES:
            raise UserError(f"barrier {measure!r}: choose one of {', '.join(MEASURES)}")
        return float(getattr(self, measure))


def _name(metric: str) -> str:
    return metric.split("_", 1)[1] if metric.startswith(("train_", "test_")) else metric


def barrier_label(metric: str) -> str:
    """What the barrier of the file's column `metric` (``<split>_<name>``) is computed on: ``1 - acc``, ``loss``."""
    name = _name(metric)
    return ORIENTATION[name][0] if name in ORIENTATION else name


def oriented(metric: str, values: np.ndarray) -> tuple[str, np.ndarray]:
    """(`barrier_label`, values to compute a barrier on) of the file's column `metric`: the error of a
    higher-is-better metric, any other as it is."""
    values = np.asarray(values, dtype=np.float64)
    name = _name(metric)
    return barrier_label(metric), (ORIENTATION[name][1](values) if name in ORIENTATION else values)


def _nan_barrier(curve: str, metric: str, on: str, t0: float, t1: float, n: int, missing: int) -> Barrier:
    nan = float("nan")
    return Barrier(curve, metric, on, t0, t1, nan, nan, nan, nan, nan, n, missing)


def barrier_of(t: np.ndarray, f: np.ndarray, done: np.ndarray | None = None, *, t0: float = 0.0, t1: float = 1.0,
               partial: bool = False, curve: str = "", metric: str = "", on: str = "") -> Barrier:
    """The barriers of values `f` at path parameters `t` (1-D, same length) on [t0, t1] (columns at t0 and t1
    must exist). `done`: which points count (default: the finite ones). NaN barriers if a point in [t0, t1]
    is missing, unless `partial` (then over the done points, NaN only if an end is missing)."""
    t = np.asarray(t, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    done = np.isfinite(f) if done is None else np.asarray(done, dtype=bool)
    inside = (t >= t0 - KNOT_TOLERANCE) & (t <= t1 + KNOT_TOLERANCE)
    n, missing = int(inside.sum()), int((inside & ~done).sum())
    ends = [np.flatnonzero(inside & (np.abs(t - end) <= KNOT_TOLERANCE)) for end in (t0, t1)]
    if any(len(e) == 0 for e in ends):
        raise UserError(f"barrier on [{t0:g}, {t1:g}]: t = {t0:g} and t = {t1:g} must be grid columns of the path; "
                        f"the path file is damaged: recompute it with --overwrite")
    i0, i1 = ends[0][0], ends[1][0]
    if (missing and not partial) or not (done[i0] and done[i1]):
        return _nan_barrier(curve, metric, on, t0, t1, n, missing)
    use = inside & done
    ts, fs = t[use], f[use]
    s = (ts - t0) / (t1 - t0)
    above_line = fs - ((1.0 - s) * f[i0] + s * f[i1])
    k, m = int(np.argmax(above_line)), int(np.argmax(fs))
    return Barrier(curve, metric, on, float(t0), float(t1), interpolation=float(above_line[k]),
                   interpolation_t=float(ts[k]), above_mean=float(fs[m] - 0.5 * (f[i0] + f[i1])),
                   above_max=float(fs[m] - max(f[i0], f[i1])), max_t=float(ts[m]), n_points=n, n_missing=missing)


def curve_barriers(pf: PathFile, metric: str, partial: bool = False) -> list[Barrier]:
    """The barriers of `metric` on each curve of the file, t in [0, 1]; for a chain, then one per segment
    between consecutive knots (in knot order)."""
    on, values = oriented(metric, pf.metric(metric))
    out = [barrier_of(pf.t, values[c], pf.done[c], partial=partial, curve=label, metric=metric, on=on)
           for c, label in enumerate(pf.curves)]
    if pf.kind == "chain" and pf.knots is not None:
        for c, label in enumerate(pf.curves):
            for k, (a, b) in enumerate(zip(pf.knots[:-1], pf.knots[1:])):
                out.append(barrier_of(pf.t, values[c], pf.done[c], t0=float(a), t1=float(b), partial=partial,
                                      curve=f"{label}:{k}", metric=metric, on=on))
    return out


def path_barriers(pf: PathFile, metrics: list[str] | None = None, partial: bool = False) -> list[Barrier]:
    """`curve_barriers` of every metric of the file (or of `metrics`), metric by metric."""
    return [b for m in (metrics or pf.metrics) for b in curve_barriers(pf, m, partial)]


def barrier_matrix(pf: PathFile, metric: str, measure: str = "interpolation",
                   partial: bool = False) -> np.ndarray:
    """The N x N matrix of `measure` between every pair of the N checkpoints of a ``pairs`` file: symmetric
    (a path read backwards has the same barriers), zero on the diagonal, NaN for a pair the file lacks or has
    not finished (unless `partial`)."""
    if pf.kind != "pairs":
        raise UserError(f"{pf.path}: a {pf.kind} path file; a barrier matrix needs a pairs file "
                        f"(landscape-mpi path with several checkpoints, every pair)")
    n = len(pf.checkpoints)
    out = np.full((n, n), np.nan)
    np.fill_diagonal(out, 0.0)
    for b, (i, j) in zip(curve_barriers(pf, metric, partial), pf.endpoints):
        out[i, j] = out[j, i] = b.value(measure)
    return out


def layer_barriers(pf: PathFile, metric: str, measure: str = "interpolation",
                   partial: bool = False) -> tuple[list[str], np.ndarray]:
    """(layer names, barriers) of a ``layers`` file: one curve per layer (or block, or permutation group),
    interpolated with the rest held at the first model (Adilova et al.)."""
    if pf.kind != "layers":
        raise UserError(f"{pf.path}: a {pf.kind} path file; layer-wise barriers need a layers file "
                        f"(landscape-mpi path ... layer by layer)")
    return list(pf.curves), np.array([b.value(measure) for b in curve_barriers(pf, metric, partial)])


def read_barriers(path: str, metrics: list[str] | None = None, partial: bool = False) -> list[Barrier]:
    """`path_barriers` of the path file at `path`."""
    return path_barriers(read_path(path), metrics, partial)
