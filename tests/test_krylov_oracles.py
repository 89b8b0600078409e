"""The stochastic estimators of curvature/krylov.py against exact answers computed here from a dense matrix.

- Hutchinson's trace: with Rademacher probes z, z^T H z has mean tr(H) and variance
  2 (||H||_F^2 - sum_i H_ii^2) (exact, from the fourth moments of +-1 entries); the spread of the estimator's
  samples is checked against that variance, not against the standard error the code reports.
- Stochastic Lanczos quadrature: with as many Lanczos steps as the dimension, each run's quadrature is exact for
  its probe, and over runs the density tends to the Gaussian-broadened histogram of the exact eigenvalues,
  (1/n) sum_i N(t; lambda_i, sigma^2); the estimate is compared with that histogram on the density's own grid.
"""

from __future__ import annotations

import math

import numpy as np

from landscape_mpi.curvature import krylov


def _symmetric(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    values = np.concatenate([[9.0, 5.0], rng.uniform(-1.0, 2.0, n - 2)])  # two outliers, a bulk
    return (q * values) @ q.T


def test_hutchinson_spread_matches_the_exact_variance():
    h = _symmetric(30, 0)
    exact_var = 2.0 * (np.sum(h * h) - np.sum(np.diag(h) ** 2))
    probes = 4000
    t = krylov.hutchinson_trace(lambda v: h @ v, h.shape[0], probes, seed=3)
    sample_var = float(np.var(t.samples, ddof=1))
    # the sample variance of 4000 draws is within 15% of the true one (its relative sd here is about 3%)
    assert abs(sample_var / exact_var - 1.0) < 0.15, (sample_var, exact_var)
    assert abs(t.estimate - np.trace(h)) < 4.0 * math.sqrt(exact_var / probes), (t.estimate, np.trace(h))


def test_hutchinson_variance_formula_fails_for_a_wrong_matrix():
    """The comparison above can fail: the same samples against another matrix's exact variance are far off."""
    h, other = _symmetric(30, 0), 2.0 * _symmetric(30, 1)
    t = krylov.hutchinson_trace(lambda v: h @ v, 30, 4000, seed=3)
    other_var = 2.0 * (np.sum(other * other) - np.sum(np.diag(other) ** 2))
    assert abs(float(np.var(t.samples, ddof=1)) / other_var - 1.0) > 0.15


def _broadened_histogram(eigenvalues: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    z = (grid[:, None] - eigenvalues[None, :]) / sigma
    return np.exp(-0.5 * z * z).sum(axis=1) / (len(eigenvalues) * sigma * math.sqrt(2.0 * math.pi))


def test_slq_density_matches_the_broadened_histogram_of_exact_eigenvalues():
    n = 40
    h = _symmetric(n, 2)
    eigenvalues = np.linalg.eigvalsh(h)
    density = krylov.slq_density(lambda v: h @ v, n, runs=200, steps=n, sigma_rel=0.02, grid_points=2000, seed=5)
    # full Krylov spaces: the Ritz values are the eigenvalues, so sigma is 0.02 x the exact spectrum's width
    assert math.isclose(density.sigma, 0.02 * (eigenvalues[-1] - eigenvalues[0]), rel_tol=1e-8)
    expected = _broadened_histogram(eigenvalues, density.grid, density.sigma)
    dt = density.grid[1] - density.grid[0]
    l1 = float(np.abs(density.values - expected).sum() * dt)  # both integrate to 1: L1 is at most 2
    assert l1 < 0.15, l1
    # the two outliers carry 1/n of the mass each, at their eigenvalues
    for top in eigenvalues[-2:]:
        near = np.abs(density.grid - top) < 4 * density.sigma
        assert abs(float(density.values[near].sum() * dt) - 1.0 / n) < 0.5 / n


def test_slq_comparison_fails_for_another_spectrum():
    """The same estimate against the broadened histogram of another matrix's eigenvalues is far off."""
    n = 40
    h, other = _symmetric(n, 2), _symmetric(n, 4) + 1.5 * np.eye(n)
    density = krylov.slq_density(lambda v: h @ v, n, runs=200, steps=n, sigma_rel=0.02, grid_points=2000, seed=5)
    wrong = _broadened_histogram(np.linalg.eigvalsh(other), density.grid, density.sigma)
    dt = density.grid[1] - density.grid[0]
    assert float(np.abs(density.values - wrong).sum() * dt) > 0.5
