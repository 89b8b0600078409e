"""Numbers the findings report computes from surface arrays (numpy; NaN marks a point not computed) beyond those
it shares with `info` and `compare`.

Coordinates are the surface's own (filter-normalized units for ``--norm filter``: a = 1 is one filter norm).
Shared with `info` and `compare`, computed once in landscape_mpi/numbers/sharpness.py (the report calls them
there, with their rule for a diverged point): roughness, the grid max-rise (`grid_max_rise`: max L - L(center)
over the grid points within Euclidean distance `radius` of the center; +inf if a diverged point is inside), the
curvature (`quadratic_curvature`: 2 c2 of the least-squares quadratic fit) and the eigenvalue-ratio summary
(`median_clipped_ratio`).

- nonconvex_fraction: the fraction of interior points where the 2x2 finite-difference Hessian (central second
  differences, the mixed term from the four diagonal neighbours) has a negative eigenvalue (`surface_min_curvature`).
- convexity_split (exploratory): within one map, the clipped ratio at the points where the loss surface is
  locally non-convex against those where it is locally convex, as a rank-biserial correlation.
- random_walk_explained: what PC1+PC2 explain for an isotropic Gaussian random walk with as many points as a
  trajectory (centered PCA, as for the training path). A long random walk gives 6/pi^2 (1 + 1/4) = 0.76
  (Antognini and Sohl-Dickstein 2018, "PCA of high dimensional random walks"): a training path is only
  "low-dimensional" if it explains more than that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from landscape_mpi.numbers.sharpness import clipped_ratio


def surface_min_curvature(values: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The smallest eigenvalue of the 2x2 finite-difference Hessian [[Lxx, Lxy], [Lxy, Lyy]] at every interior
    point, shape (nx - 2, ny - 2): Lxx = (L[i+1,j] - 2 L[i,j] + L[i-1,j]) / hx^2, Lyy likewise,
    Lxy = (L[i+1,j+1] - L[i+1,j-1] - L[i-1,j+1] + L[i-1,j-1]) / (4 hx hy); NaN where a neighbour is not finite.
    Negative: the surface curves down in some direction there (locally non-convex)."""
    v = np.asarray(values, dtype=np.float64)
    hx, hy = float(x[1] - x[0]), float(y[1] - y[0])
    c = v[1:-1, 1:-1]
    lxx = (v[2:, 1:-1] - 2 * c + v[:-2, 1:-1]) / hx**2
    lyy = (v[1:-1, 2:] - 2 * c + v[1:-1, :-2]) / hy**2
    lxy = (v[2:, 2:] - v[2:, :-2] - v[:-2, 2:] + v[:-2, :-2]) / (4 * hx * hy)
    # smallest eigenvalue of [[a, b], [b, d]]: (a + d)/2 - sqrt(((a - d)/2)^2 + b^2); NaN propagates
    return (lxx + lyy) / 2 - np.sqrt(((lxx - lyy) / 2) ** 2 + lxy**2)


def nonconvex_fraction(values: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """See the module docstring (2D only); NaN if no interior point is finite."""
    lam_min = surface_min_curvature(values, x, y)
    ok = np.isfinite(lam_min)
    if not ok.any():
        return float("nan")
    return float(np.mean(lam_min[ok] < 0))


@dataclass(frozen=True)
class ConvexitySplit:
    """The clipped eigenvalue ratio of one map, split by the local convexity of the loss surface on that map."""

    nonconvex: int
    """Interior points where `surface_min_curvature` < 0 and the ratio is defined."""
    convex: int
    """Interior points where `surface_min_curvature` >= 0 and the ratio is defined."""
    median_nonconvex: float
    median_convex: float
    rank_biserial: float
    """P(r_nc > r_c) - P(r_nc < r_c) over all (non-convex, convex) pairs = 2 U / (n_nc n_c) - 1, U the
    Mann-Whitney statistic of the non-convex group (ties count 1/2). +1: every non-convex point has the larger
    ratio (the paper's relation); 0: no relation; NaN if a group is empty."""


def convexity_split(values: np.ndarray, x: np.ndarray, y: np.ndarray, eig_min: np.ndarray,
                    eig_max: np.ndarray) -> ConvexitySplit:
    """`ConvexitySplit` over the interior points of a 2D map where both the loss `values` (on the same grid as the
    eigenvalues) give `surface_min_curvature` and `clipped_ratio` is defined. No p-value: neighbouring grid points
    are not independent samples."""
    lam_min = surface_min_curvature(values, x, y)
    ratio = clipped_ratio(eig_min, eig_max)[1:-1, 1:-1]
    ok = np.isfinite(lam_min) & ~np.isnan(ratio)
    nc, c = ratio[ok & (lam_min < 0)], ratio[ok & (lam_min >= 0)]
    nan = float("nan")
    if not (nc.size and c.size):
        return ConvexitySplit(int(nc.size), int(c.size), float(np.median(nc)) if nc.size else nan,
                              float(np.median(c)) if c.size else nan, nan)
    u = float(np.sum(nc[:, None] > c[None, :]) + 0.5 * np.sum(nc[:, None] == c[None, :]))
    return ConvexitySplit(int(nc.size), int(c.size), float(np.median(nc)), float(np.median(c)),
                          2.0 * u / (nc.size * c.size) - 1.0)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation of two equally long lists (average ranks for ties); NaN if undefined."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(v.size)
        r[order] = np.arange(v.size, dtype=np.float64)
        for value in np.unique(v):  # ties share their mean rank
            r[v == value] = r[v == value].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def random_walk_values(points: int, dim: int = 2000, trials: int = 200, seed: int = 0,
                       step_norms: np.ndarray | None = None) -> np.ndarray:
    """PC1 + PC2 explained variance of each of `trials` seeded random walks of `points` positions in `dim`
    dimensions (centered PCA, as for the training path); empty for fewer than 3 points.

    `step_norms` (points - 1 values): the walk takes these step lengths in isotropic random directions (the
    training run's own schedule: large early steps, small late ones under a cosine schedule); None: Gaussian
    steps of equal expected length."""
    if points < 3:
        return np.empty(0)
    if step_norms is not None and len(step_norms) != points - 1:
        raise ValueError(f"{len(step_norms)} step norms for {points} points")
    rng = np.random.default_rng(seed)
    out = np.empty(trials)
    for t in range(trials):
        steps = rng.standard_normal((points, dim))
        if step_norms is not None:
            steps[1:] *= (np.asarray(step_norms, dtype=np.float64) / np.linalg.norm(steps[1:], axis=1))[:, None]
        walk = np.cumsum(steps, axis=0)
        centered = walk - walk.mean(axis=0)
        # squared singular values = eigenvalues of the small points x points Gram matrix (cheaper than an SVD)
        ev = np.sort(np.linalg.eigvalsh(centered @ centered.T))[::-1]
        out[t] = float(np.sum(ev[:2]) / np.sum(ev))
    return out


def random_walk_explained(points: int, dim: int = 2000, trials: int = 200, seed: int = 0,
                          step_norms: np.ndarray | None = None) -> tuple[float, float]:
    """(mean, 95th percentile) of `random_walk_values` (NaN for fewer than 3 points): the trajectory rule's
    baseline (version 2); version 3 takes the values themselves (rules_v3.walk_p)."""
    values = random_walk_values(points, dim, trials, seed, step_norms)
    if values.size == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(np.quantile(values, 0.95))
