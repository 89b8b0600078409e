"""``--fill-missing``: draw a partial surface by interpolating its finished points.

A job that fills the grid coarse-to-fine leaves, at any moment, a strided sub-grid of finished points that
covers the whole surface; interpolating them gives a low-resolution picture of all of it. The figures mark
such a surface as interpolated (title and the finished points as dots), so it is never mistaken for
computed values. Only points that are *not done* are filled: a finished point whose loss is NaN or inf
(diverged) stays blank, as without the option.
"""

from __future__ import annotations

import copy

import numpy as np

from plotting.reader import PlotError, Surface


def _fill_1d(x: np.ndarray, v: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Linear between finished points, the nearest finished value beyond them (np.interp's constant ends)."""
    return np.interp(x, x[known], v[known])


def _fill_nd(coords: list[np.ndarray], v: np.ndarray, known: np.ndarray) -> np.ndarray:
    """scipy's griddata: linear inside the convex hull of the finished points, nearest outside it (and
    nearest everywhere when they are too few or collinear for a triangulation)."""
    from scipy.interpolate import griddata
    from scipy.spatial import QhullError

    mesh = np.meshgrid(*coords, indexing="ij")
    # Scale every axis to [0, 1]: the triangulation should not depend on the axes' units (x and y of a
    # non-square grid can span very different ranges).
    scaled = [(m - c[0]) / (c[-1] - c[0]) if len(c) > 1 and c[-1] != c[0] else m * 0.0
              for m, c in zip(mesh, coords)]
    points = np.stack([s[known] for s in scaled], axis=1)
    targets = np.stack([s.ravel() for s in scaled], axis=1)
    nearest = griddata(points, v[known], targets, method="nearest").reshape(v.shape)
    try:
        linear = griddata(points, v[known], targets, method="linear").reshape(v.shape)
    except (QhullError, ValueError):  # fewer than ndim + 1 points in general position
        return nearest
    return np.where(np.isnan(linear), nearest, linear)


def fill_missing(surface: Surface, metrics: list[str]) -> Surface:
    """A copy of `surface` whose `metrics` are interpolated at the points not done yet; the copy's
    ``interpolated[metric]`` marks the filled points. A complete surface is returned unchanged (nothing
    to mark). Raises PlotError when no point holds a finite value yet."""
    if surface.complete:
        return surface
    out = copy.copy(surface)
    out.values = dict(surface.values)
    out.interpolated = dict(surface.interpolated)
    coords = [surface.coords[a] for a in ("x", "y", "z") if a in surface.coords]
    for metric in metrics:
        v = surface.metric(metric)
        known = surface.done & np.isfinite(v)
        if not known.any():
            raise PlotError(f"{surface.path}: no finished finite {metric} to interpolate from yet")
        filled = _fill_1d(coords[0], v, known) if surface.ndim == 1 else _fill_nd(coords, v, known)
        missing = ~surface.done
        out.values[metric] = np.where(missing, filled, v)  # done points keep their own value (NaN/inf too)
        out.interpolated[metric] = missing
    return out
