"""Sharpness numbers computed from a surface file alone (no model, no torch): what `info`, `info --json` and
`landscape-mpi compare` report. Definitions, formulas and sources: docs/method.md#sharpness-numbers; what each
name promises (the grid max-rise is a sampled lower bound of eps-sharpness, not its maximisation):
docs/analyses.md#what-the-names-promise.

All numbers use the file's own coordinates. For random directions those are filter-normalized (a = 1 is
one filter norm per filter, docs/method.md#directions), which is what makes them comparable across models
(Li et al. 2018, section 4); for target/PCA directions the coordinates are in those directions' units.
"Center" is the grid point nearest the origin (theta*). Partial files: every number is computed over the
points marked done, and the result says how many that was. One rule for non-finite values, in every number here
and in the experiments' report (docs/method.md#sharpness-numbers): NaN is a point not computed and is skipped; an
infinite loss (a diverged point) is a finished result: it makes the grid max-rise +inf when it lies inside the
radius, counts as "not below" any basin level, and is skipped by fits and differences.

The array-level numbers (`grid_max_rise`, `quadratic_curvature`, `median_clipped_ratio`, `roughness`) are the
ones the experiments' report uses too (landscape_mpi/experiments/measures.py); `sharpness` applies them to a
file. This module imports numpy and the files layer's reader only (``info`` must start fast, on a login node).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# DEFAULT_RADIUS: of the grid max-rise disk (ball in 3D), in the file's (filter-normalized) coordinates;
# DEFAULT_LEVELS: basin levels, loss increases over the center's loss. Declared with compare's options.
from landscape_mpi.config.compare import DEFAULT_LEVELS, DEFAULT_RADIUS
from landscape_mpi.config.errors import UserError
from landscape_mpi.files import reader
from landscape_mpi.numbers.estimates import sharpness_uncertainty

#: Points on each side of the center used by the quadratic fit along each axis (2: five points).
FIT_HALF_WIDTH = 2


@dataclass
class MetricGrid:
    """One metric of a surface file, read `done` first."""

    path: str
    config: dict
    axes: list[str]
    coords: list[np.ndarray]
    """One coordinate array per axis, in axis order."""
    done: np.ndarray
    """bool, grid-shaped."""
    values: np.ndarray
    """float64, grid-shaped, NaN where not done."""
    eig_max: np.ndarray | None = None
    eig_min: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.done.shape)


def read_metric(path: str, metric: str, with_eig: bool = False) -> MetricGrid:
    """Read the done mask, then only `metric` (and eig_max/eig_min with `with_eig`, where present).

    Reads while a job writes the file (a point marked done has its values: done is read first). Raises
    UserError for a missing/foreign file, a schema this version does not read, a Hessian file, or a metric the
    file does not hold (naming the ones it does).
    """
    with reader.open_surface(path) as f:
        coords = [np.asarray(c, dtype=np.float64) for c in f.coords().values()]
        done = f.done()  # first: any point marked done already has its values
        available = f.metrics()
        if metric not in available:
            raise UserError(f"{path}: no metric {metric!r}; choose --metric from {', '.join(available)}")
        values = f.values(metric, done)
        eig_max = eig_min = None
        if with_eig and "eig_max" in available and "eig_min" in available:
            eig_max, eig_min = f.values("eig_max", done), f.values("eig_min", done)
    return MetricGrid(path, f.config, f.axes, coords, done, values, eig_max, eig_min)


def loss_metrics(path: str) -> list[str]:
    """The ``*_loss`` metrics a surface file holds (attribute ``metrics``; no dataset is read)."""
    with reader.open_surface(path) as f:
        return [m for m in f.metric_names() if m.endswith("_loss")]


def grid_spacing(grid: MetricGrid) -> float:
    """The largest step between neighbouring coordinates over all axes with more than one point."""
    steps = [float(np.max(np.diff(c))) for c in grid.coords if len(c) > 1]
    return max(steps) if steps else 0.0


# ------------------------------------------------------------------------------------------ numbers
def center_index(coords: Sequence[np.ndarray]) -> tuple[int, ...]:
    """The grid index nearest to the origin (theta*) along every axis."""
    return tuple(int(np.argmin(np.abs(c))) for c in coords)


def _point(grid: MetricGrid, idx: Sequence[int]) -> list[float]:
    return [float(grid.coords[k][i]) for k, i in enumerate(idx)]


def _num(v) -> float | None:
    """A JSON-friendly float: None for NaN (not computed), inf kept as a string-safe float."""
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def within_radius(coords: Sequence[np.ndarray], radius: float) -> np.ndarray:
    """bool, grid-shaped: the grid points within Euclidean distance `radius` of the center point (a relative
    1e-9 allowance keeps a point at exactly `radius`, whatever the rounding of its coordinates)."""
    center = center_index(coords)
    mesh = np.meshgrid(*coords, indexing="ij")
    dist = np.sqrt(sum((m - coords[k][center[k]]) ** 2 for k, m in enumerate(mesh)))
    return dist <= radius * (1 + 1e-9)


@dataclass(frozen=True)
class Rise:
    """A grid max-rise (`grid_max_rise`)."""

    value: float | None
    """max L - L(center) over the points inside; +inf if a diverged point is inside; None if L(center) is not
    finite."""
    at: tuple[int, ...] | None
    """The grid index of the maximum (None with `value`)."""
    points: int
    """The done points inside the radius (the center included)."""


def grid_max_rise(values: np.ndarray, coords: Sequence[np.ndarray], radius: float,
                  done: np.ndarray | None = None) -> Rise:
    """The grid max-rise: max of L - L(center) over the done points within Euclidean distance `radius` of the
    center point (`within_radius`): a sampled lower bound of eps-sharpness, not its maximisation. `done`: the
    points computed (default: those whose value is not NaN). NaN is skipped; +inf counts (a diverged neighbour
    is infinitely sharp, as far as the grid can tell): the rise is then +inf."""
    v = np.asarray(values, dtype=np.float64)
    done = ~np.isnan(v) if done is None else np.asarray(done, dtype=bool)
    ball = within_radius(coords, radius) & done
    l0 = v[center_index(coords)]
    if not np.isfinite(l0):
        return Rise(None, None, int(ball.sum()))
    inside = np.where(ball & ~np.isnan(v), v, -np.inf)
    i_max = tuple(int(i) for i in np.unravel_index(int(np.argmax(inside)), v.shape))
    return Rise(float(v[i_max] - l0), i_max, int(ball.sum()))


def quadratic_curvature(t: np.ndarray, values: np.ndarray) -> dict:
    """``2 c2`` (value) and ``c1`` (slope) of the least-squares fit ``L(t) = c0 + c1 t + c2 t^2`` to the finite
    values among `values` at offsets `t` from the center; None with fewer than 3 finite values. Exact for a
    quadratic; for a filter-normalized random direction d it estimates d^T H d."""
    t, values = np.asarray(t, dtype=np.float64), np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    t, ls = t[keep], values[keep]
    if t.size < 3:
        return {"value": None, "slope": None, "points": int(t.size)}
    design = np.stack([np.ones_like(t), t, t * t], axis=1)
    coef, *_ = np.linalg.lstsq(design, ls, rcond=None)
    return {"value": float(2.0 * coef[2]), "slope": float(coef[1]), "points": int(t.size)}


def axis_curvature(grid: MetricGrid, center: tuple[int, ...], axis: int) -> dict:
    """`quadratic_curvature` at the center along one axis, over the done, finite points within FIT_HALF_WIDTH
    grid steps of the center on the grid line through it (t = coordinate - center coordinate)."""
    c = center[axis]
    lo, hi = max(0, c - FIT_HALF_WIDTH), min(grid.shape[axis], c + FIT_HALF_WIDTH + 1)
    line = tuple(slice(lo, hi) if k == axis else i for k, i in enumerate(center))
    return quadratic_curvature(grid.coords[axis][lo:hi] - grid.coords[axis][c], grid.values[line])


def roughness(values: np.ndarray) -> float | None:
    """Mean over every axis and every run of three consecutive finite points of
    ``|L[i-1] - 2 L[i] + L[i+1]|``, divided by the range (max - min) of the finite values. Depends on the
    grid step (a quadratic gives ``2 a h^2 / range``): compare files with the same grid."""
    finite = np.isfinite(values)
    if not finite.any():
        return None
    span = float(values[finite].max() - values[finite].min())
    diffs = []
    for axis in range(values.ndim):
        if values.shape[axis] < 3:
            continue
        a = np.moveaxis(values, axis, 0)
        d2 = a[:-2] - 2.0 * a[1:-1] + a[2:]
        diffs.append(np.abs(d2[np.isfinite(d2)]).ravel())
    pooled = np.concatenate(diffs) if diffs else np.array([])
    if pooled.size == 0 or span == 0.0:
        return None
    return float(pooled.mean() / span)


def sharpness(path: str, metric: str = "train_loss", radius: float = DEFAULT_RADIUS,
              levels: Sequence[float] = DEFAULT_LEVELS) -> dict:
    """Sharpness numbers of one metric of a surface file (JSON-serializable dict; None = not computable yet).

    Keys: file, metric, shape, done, total, complete, finite (done points with a finite value);
    minimum {value, coords}; center {coords, value}; max_rise {radius, value, relative_percent, at, points}
    (the grid max-rise: max of L - L(center) over the done grid points within Euclidean distance `radius` of the
    center, a sampled lower bound of eps-sharpness, not its maximisation; relative_percent is Keskar et al.'s
    normalisation 100 (max - L0) / (1 + L0) of it; earlier output also had it under the key eps_sharpness,
    no longer written); curvature {axis: {value, slope, points}};
    basin [{level, threshold, fraction, area}] (share of the done points with L <= L(center) + level, and that
    share times the box's area/length/volume); roughness; barrier {value, max, at, endpoints, points} for a 1D
    interpolation file (config x_target set) else None; eig {median_clipped_ratio, mean_abs_ratio,
    max_abs_ratio, points, center} where the file holds eig_max/eig_min, else None (see `_eig`); a file of
    sequential estimates (--tolerance): the same numbers of the estimates, and uncertainty {z, center_se,
    max_rise_se, basin [{level, fraction_low, fraction_high}]} (`numbers.estimates.sharpness_uncertainty`).

    Raises UserError for an unreadable file, an unknown metric, a radius <= 0 or smaller than the grid step
    (no neighbour of the center could be inside), or a level <= 0.
    """
    if not (radius > 0 and math.isfinite(radius)):
        raise UserError(f"--radius {radius}: must be a positive number (coordinates of the grid, e.g. 0.25)")
    levels = [float(v) for v in levels]
    if not levels or any(not (v > 0 and math.isfinite(v)) for v in levels):
        raise UserError(f"--levels {','.join(map(str, levels))}: give positive loss increases, e.g. 0.1,0.5,1")
    grid = read_metric(path, metric, with_eig=True)
    step = grid_spacing(grid)
    smallest = min((float(np.min(np.diff(c))) for c in grid.coords if len(c) > 1), default=0.0)
    if smallest > 0 and radius < smallest * (1 - 1e-9):
        raise UserError(f"--radius {radius:g} is smaller than the grid step of {path} ({smallest:g}): no point "
                        f"besides the center lies inside; give --radius {step:g} or more")
    v = grid.values
    finite = np.isfinite(v)
    out: dict = {"file": path, "metric": metric, "shape": list(grid.shape), "done": int(grid.done.sum()),
                 "total": int(grid.done.size), "complete": bool(grid.done.all()), "finite": int(finite.sum())}
    if finite.any():
        i_min = np.unravel_index(int(np.argmin(np.where(finite, v, np.inf))), v.shape)
        out["minimum"] = {"value": float(v[i_min]), "coords": _point(grid, i_min)}
    else:
        out["minimum"] = None
    center = center_index(grid.coords)
    l0 = v[center]
    out["center"] = {"coords": _point(grid, center), "value": _num(l0)}
    center_ok = bool(np.isfinite(l0))

    rise = grid_max_rise(v, grid.coords, radius, grid.done)
    rise_of = {"radius": float(radius), "value": None, "relative_percent": None, "at": None, "points": rise.points}
    if rise.value is not None:
        rise_of.update(value=rise.value, relative_percent=100.0 * rise.value / (1.0 + float(l0)),
                       at=_point(grid, rise.at))
    out["max_rise"] = rise_of

    out["curvature"] = {name: (axis_curvature(grid, center, k) if center_ok else
                               {"value": None, "slope": None, "points": 0})
                        for k, name in enumerate(grid.axes)}

    box = float(np.prod([c[-1] - c[0] for c in grid.coords if len(c) > 1])) if step > 0 else 0.0
    basin = []
    n_done = int(grid.done.sum())
    for level in levels:
        if not center_ok or n_done == 0:
            basin.append({"level": level, "threshold": None, "fraction": None, "area": None})
            continue
        below = int((finite & (v <= l0 + level)).sum())
        frac = below / n_done
        basin.append({"level": level, "threshold": float(l0 + level), "fraction": frac, "area": frac * box})
    out["basin"] = basin
    uncertainty = sharpness_uncertainty(path, metric, v, grid.done, center, rise.at, levels)
    if uncertainty is not None:  # --tolerance: the numbers above are of the estimates; how far their errors reach
        out["uncertainty"] = uncertainty
    out["roughness"] = roughness(v)
    out["barrier"] = _barrier(grid) if grid.config.get("x_target") and len(grid.axes) == 1 else None
    out["eig"] = _eig(grid, center)
    return out


def _barrier(grid: MetricGrid) -> dict:
    """Barrier of an interpolation theta(a) = (1 - a) theta* + a theta_2: max of L over the path a in [0, 1]
    minus the mean of L at the endpoints (Garipov et al. 2018; Frankle et al. 2020's "error barrier")."""
    a = grid.coords[0]
    v = grid.values
    i0, i1 = int(np.argmin(np.abs(a))), int(np.argmin(np.abs(a - 1.0)))
    on_path = (a >= a[i0] - 1e-12) & (a <= a[i1] + 1e-12) & np.isfinite(v)
    ends = [_num(v[i0]), _num(v[i1])]
    if not (np.isfinite(v[i0]) and np.isfinite(v[i1])):
        return {"value": None, "max": None, "at": None, "endpoints": ends, "points": int(on_path.sum())}
    path_v = np.where(on_path, v, -np.inf)
    i_max = int(np.argmax(path_v))
    return {"value": float(v[i_max] - 0.5 * (v[i0] + v[i1])), "max": float(v[i_max]), "at": float(a[i_max]),
            "endpoints": ends, "points": int(on_path.sum())}


def clipped_ratio(eig_min: np.ndarray, eig_max: np.ndarray) -> np.ndarray:
    """``min(|eig_min / eig_max|, 1)`` per point (Li et al. 2018, section 7), NaN where it is undefined.

    NaN: a point not computed (either eigenvalue NaN) or 0 / 0. A point with eig_max = 0 and eig_min != 0, or with
    |eig_min| > |eig_max| (eig_max < 0: a maximum), gives 1. Clipping keeps one point with eig_max near 0 (ratio
    far above 1) from outweighing the map: 1 already says "no convex direction dominates"."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(np.asarray(eig_min, dtype=np.float64) / np.asarray(eig_max, dtype=np.float64))
    return np.minimum(ratio, 1.0)  # NaN stays NaN, inf becomes 1


def median_clipped_ratio(eig_min: np.ndarray, eig_max: np.ndarray) -> tuple[float | None, int]:
    """The eigenvalue-ratio map's summary: (the median of `clipped_ratio` over the points where it is defined,
    that number of points); None for the median where none is. Unlike the unclipped mean, one point with eig_max
    near 0 moves it by at most one rank."""
    clipped = clipped_ratio(eig_min, eig_max)
    defined = clipped[~np.isnan(clipped)]
    return (float(np.median(defined)) if defined.size else None), int(defined.size)


def _eig(grid: MetricGrid, center: tuple[int, ...]) -> dict | None:
    """The eigenvalue-ratio map's summary: median_clipped_ratio (`median_clipped_ratio`, over the done points
    where it is defined: points); mean_abs_ratio and max_abs_ratio, the unclipped mean and max over the points
    where |eig_min / eig_max| is finite (the mean can be dominated by one point with eig_max near 0: kept for
    readers of earlier output); both eigenvalues and the unclipped ratio at the center."""
    if grid.eig_max is None or grid.eig_min is None:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(grid.eig_min / grid.eig_max)
    ok = np.isfinite(ratio)
    median, points = median_clipped_ratio(grid.eig_min, grid.eig_max)
    return {"median_clipped_ratio": median,
            "mean_abs_ratio": float(ratio[ok].mean()) if ok.any() else None,
            "max_abs_ratio": float(ratio[ok].max()) if ok.any() else None, "points": points,
            "center": {"eig_max": _num(grid.eig_max[center]), "eig_min": _num(grid.eig_min[center]),
                       "abs_ratio": _num(ratio[center]) if ok[center] else None}}


# --------------------------------------------------------------------------------------------- info
def sharpness_for_info(path: str) -> dict:
    """Sharpness of every ``*_loss`` metric of a surface file, for `info` and `info --json`:
    ``{metric: sharpness(path, metric, radius)}`` with radius = max(DEFAULT_RADIUS, the grid step), so a
    coarse grid still has neighbours inside. Raises UserError as `read_metric` does."""
    out = {}
    for metric in loss_metrics(path):
        out[metric] = sharpness(path, metric, radius_for([path]))
    return out


def radius_for(paths: Sequence[str]) -> float:
    """The default radius for a set of files: DEFAULT_RADIUS, or the largest grid step among them if larger
    (the same radius for every file keeps the numbers comparable). Reads only the coordinates."""
    steps = [DEFAULT_RADIUS]
    for path in paths:
        try:
            with reader.open_surface(path) as f:
                coords = list(f.coords().values())
        except (UserError, OSError, KeyError, ValueError):
            continue  # the file's own read reports the problem with its fix
        steps += [float(np.max(np.diff(c))) for c in coords if len(c) > 1]
    return max(steps)


def format_sharpness(s: dict) -> list[str]:
    """Human-readable lines of one `sharpness` dict (for `info`)."""
    def g(v) -> str:
        return "-" if v is None else f"{v:.4g}"

    lines = []
    if s["done"] < s["total"]:
        lines.append(f"over {s['done']} of {s['total']} done points")
    m = s["minimum"]
    if m:
        lines.append(f"minimum {g(m['value'])} at {tuple(round(c, 6) for c in m['coords'])}; "
                     f"center {g(s['center']['value'])}")
    e = s["max_rise"]
    lines.append(f"grid max-rise (r={e['radius']:g}) {g(e['value'])}  (relative {g(e['relative_percent'])}%; "
                 "a sampled lower bound of eps-sharpness)")
    lines.append("curvature at center " + ", ".join(f"{k} {g(c['value'])}" for k, c in s["curvature"].items()))
    lines.append("basin fraction " + ", ".join(f"+{b['level']:g}: {g(b['fraction'])}" for b in s["basin"]))
    lines.append(f"roughness {g(s['roughness'])}")
    u = s.get("uncertainty")
    if u is not None:
        lines.append(f"of sequential estimates: center se {g(u['center_se'])}, grid max-rise se <= "
                     f"{g(u['max_rise_se'])}; basin fraction within {u['z']:g} se " + ", ".join(
                         f"+{b['level']:g}: {g(b['fraction_low'])}..{g(b['fraction_high'])}" for b in u["basin"]))
    if s["barrier"] is not None:
        lines.append(f"barrier {g(s['barrier']['value'])} (max {g(s['barrier']['max'])} at a={g(s['barrier']['at'])})")
    if s["eig"] is not None:
        lines.append(f"median clipped |eig_min/eig_max| {g(s['eig']['median_clipped_ratio'])}; at center "
                     f"eig_max {g(s['eig']['center']['eig_max'])}, eig_min {g(s['eig']['center']['eig_min'])}")
    return lines
