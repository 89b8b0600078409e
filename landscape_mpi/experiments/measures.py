"""Numbers the findings report computes from surface arrays (numpy; NaN marks a point not computed).

Coordinates are the surface's own (filter-normalized units for ``--norm filter``: a = 1 is one filter norm).

- roughness (`landscape_mpi.analysis.sharpness.roughness`, the one `info` reports too): mean over both axes of
  |L[i-1] - 2 L[i] + L[i+1]| over every run of three finite neighbours, divided by the range max L - min L of the
  finite values (0 for a plane, about 2 h^2 for a parabola sampled with step h over [-1, 1], of order 1 when the
  surface jumps between neighbours); None where not computable.
- nonconvex_fraction: the fraction of interior points where the 2x2 finite-difference Hessian (central second
  differences, the mixed term from the four diagonal neighbours) has a negative eigenvalue.
- eps_sharpness: max L - L(center) over the points within Euclidean distance `radius` of the center.
- curvature_1d: 2 c2 of the least-squares fit c0 + c1 a + c2 a^2 over the points with |a| <= radius.
- eig_ratio_mean: the mean over computed points of |lambda_min / lambda_max|.
- random_walk_explained: what PC1+PC2 explain for an isotropic Gaussian random walk with as many points as a
  trajectory (centered PCA, as for the training path). A long random walk gives 6/pi^2 (1 + 1/4) = 0.76
  (Antognini and Sohl-Dickstein 2018, "PCA of high dimensional random walks"): a training path is only
  "low-dimensional" if it explains more than that.
"""

from __future__ import annotations

import numpy as np

from landscape_mpi.analysis.sharpness import center_index


def nonconvex_fraction(values: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """See the module docstring (2D only); NaN if no interior point is finite."""
    v = np.asarray(values, dtype=np.float64)
    hx, hy = float(x[1] - x[0]), float(y[1] - y[0])
    c = v[1:-1, 1:-1]
    lxx = (v[2:, 1:-1] - 2 * c + v[:-2, 1:-1]) / hx**2
    lyy = (v[1:-1, 2:] - 2 * c + v[1:-1, :-2]) / hy**2
    lxy = (v[2:, 2:] - v[2:, :-2] - v[:-2, 2:] + v[:-2, :-2]) / (4 * hx * hy)
    ok = np.isfinite(lxx) & np.isfinite(lyy) & np.isfinite(lxy)
    if not ok.any():
        return float("nan")
    # smallest eigenvalue of [[a, b], [b, d]]: (a + d)/2 - sqrt(((a - d)/2)^2 + b^2)
    lam_min = (lxx + lyy) / 2 - np.sqrt(((lxx - lyy) / 2) ** 2 + lxy**2)
    return float(np.mean(lam_min[ok] < 0))


def eps_sharpness(values: np.ndarray, coords: list[np.ndarray], radius: float) -> float:
    """See the module docstring; NaN if the center is not finite."""
    v = np.asarray(values, dtype=np.float64)
    center = v[center_index(coords)]
    grids = np.meshgrid(*coords, indexing="ij")
    dist = np.sqrt(sum(g**2 for g in grids))
    near = (dist <= radius + 1e-12) & np.isfinite(v)
    if not np.isfinite(center) or not near.any():
        return float("nan")
    return float(v[near].max() - center)


def curvature_1d(values: np.ndarray, x: np.ndarray, radius: float) -> float:
    """See the module docstring; NaN with fewer than three finite points within the radius."""
    v = np.asarray(values, dtype=np.float64)
    keep = (np.abs(x) <= radius + 1e-12) & np.isfinite(v)
    if keep.sum() < 3:
        return float("nan")
    c2 = np.polyfit(x[keep], v[keep], 2)[0]
    return float(2 * c2)


def eig_ratio_mean(eig_min: np.ndarray, eig_max: np.ndarray) -> float:
    """Mean of |eig_min / eig_max| over the finite points; NaN if none."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(np.asarray(eig_min, dtype=np.float64) / np.asarray(eig_max, dtype=np.float64))
    r = r[np.isfinite(r)]
    return float(r.mean()) if r.size else float("nan")


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


def random_walk_explained(points: int, dim: int = 2000, trials: int = 200, seed: int = 0,
                          step_norms: np.ndarray | None = None) -> tuple[float, float]:
    """(mean, 95th percentile) over `trials` seeded random walks of `points` positions in `dim` dimensions of the
    fraction of variance the first two components of the centered PCA explain (NaN for fewer than 3 points).

    `step_norms` (points - 1 values): the walk takes these step lengths in isotropic random directions (the
    training run's own schedule: large early steps, small late ones under a cosine schedule); None: Gaussian
    steps of equal expected length."""
    if points < 3:
        return float("nan"), float("nan")
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
    return float(out.mean()), float(np.quantile(out, 0.95))
