"""Krylov numerics on a symmetric operator given only as products: ARPACK eigenpairs, Hutchinson's trace,
Lanczos and stochastic Lanczos quadrature (docs/method.md#hessian).

Torch-free and process-free: an operator is a function ``matvec(v) -> H v`` on float64 numpy vectors, wrapped
as a `scipy.sparse.linalg.LinearOperator` where ARPACK (scipy's eigsh) needs one. Who computes the products
(one process, MPI ranks, a sharded model) is the business of the layer above (curvature/hessian.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from landscape_mpi.config.errors import UserError

Matvec = Callable[[np.ndarray], np.ndarray]

# --------------------------------------------------------------------------------- linear algebra
@dataclass
class Eigen:
    """Eigenpairs found by ARPACK."""

    values: np.ndarray
    """Descending for which='LA' (largest first); ascending for which='SA'."""
    vectors: np.ndarray
    """n x k, unit L2 norm columns, sign fixed so that each column's largest-magnitude entry is positive."""
    products: int
    """Hessian-vector products spent."""


def _fix_sign(vectors: np.ndarray) -> np.ndarray:
    """A new array whose columns have their largest-magnitude entry positive (eigenvectors are defined up to sign)."""
    idx = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[idx, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def _arpack_operator(matvec: Matvec, n: int, seed: int) -> tuple[object, np.ndarray, list[int]]:
    """`matvec` as a scipy LinearOperator that counts its products (in the returned one-element list), and ARPACK's
    seeded start vector, so that every run from the same seed is reproducible."""
    from scipy.sparse.linalg import LinearOperator

    count = [0]

    def mv(v: np.ndarray) -> np.ndarray:
        count[0] += 1
        return matvec(np.asarray(v, dtype=np.float64).ravel())

    return LinearOperator((n, n), matvec=mv, dtype=np.float64), np.random.default_rng(seed).standard_normal(n), count


def extreme_eigenpairs(matvec: Matvec, n: int, k: int, which: str, tol: float, maxiter: int,
                       seed: int = 0, v0: np.ndarray | None = None, ncv: int | None = None) -> Eigen:
    """The k largest ('LA') or smallest ('SA') algebraic eigenvalues of the symmetric operator, by ARPACK (eigsh).

    'SA' is asked directly (not through a shift by lambda_max), so it is right whatever the signs. `tol` is
    ARPACK's relative accuracy of each Ritz value; `maxiter` its limit on restarts (Arnoldi iterations). The start
    vector is seeded, so the iteration is reproducible; `v0` replaces it (a warm start, e.g. the eigenvector found
    at a neighbouring point); `ncv` is the Lanczos basis size (None: ARPACK's default). For k >= n (tiny models)
    the operator is built densely and all n eigenpairs are returned. Raises UserError if ARPACK does not converge.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    if k < 1:
        raise ValueError(k)
    if k >= n:
        # ARPACK needs k < n; so tiny an operator is cheaper to build densely (n products) and diagonalize.
        dense = np.stack([matvec(e) for e in np.eye(n)], axis=1)
        values, vectors = np.linalg.eigh(0.5 * (dense + dense.T))
        order = np.argsort(values)[::-1] if which == "LA" else np.argsort(values)
        return Eigen(values[order], _fix_sign(vectors[:, order]), n)
    op, seeded, count = _arpack_operator(matvec, n, seed)
    start = seeded if v0 is None else _start_vector(v0, n)
    if ncv is not None:
        ncv = min(max(ncv, k + 1), n)
    try:
        values, vectors = eigsh(op, k=k, which=which, tol=tol, maxiter=maxiter, v0=start, ncv=ncv)
    except ArpackNoConvergence as exc:
        raise UserError(f"Lanczos (ARPACK, which={which}) did not converge to tol {tol:g} within maxiter {maxiter} "
                        f"({len(exc.eigenvalues)} of {k} eigenvalues); raise --maxiter or --tol") from None
    order = np.argsort(values)[::-1] if which == "LA" else np.argsort(values)
    return Eigen(values[order], _fix_sign(vectors[:, order]), count[0])


def _start_vector(v0: np.ndarray, n: int) -> np.ndarray:
    """`v0` as ARPACK's start vector: a float64 copy of shape (n,); raises ValueError if it is not one, or is 0
    or not finite (ARPACK would fail obscurely)."""
    v = np.array(v0, dtype=np.float64).ravel()
    if v.shape != (n,) or not np.all(np.isfinite(v)) or not np.any(v):
        raise ValueError(f"a start vector must be {n} finite numbers, not all zero (got shape {np.shape(v0)})")
    return v


#: Lanczos basis size of `extreme_pair`: ARPACK's default for k = 2 (max(2k + 1, 20)).
PAIR_NCV = 20
#: ARPACK restarts `extreme_pair` gives the joint run before it falls back to two separate runs.
PAIR_RESTARTS = 3
#: Lanczos basis size of a warm-started `extreme_pair_vectors` (a start vector given): a start close to both
#: wanted eigenvectors needs a few Lanczos steps, not ARPACK's 20, before its first convergence test. Chosen
#: from product counts along lines of points (docs/hessian.md#cheaper-products-and-warm-starts): 12 was below
#: the cold start on every line measured but one (1 product above); 8 and 10 were cheaper on some lines and as
#: dear as cold or dearer on others (a joint run that restarts often, then falls back); 16 saved less at fine
#: steps, and 20 cannot go below 21 products a point.
WARM_NCV = 12
#: ARPACK restarts a warm-started joint run gets before the fallback (each restart costs WARM_NCV - 2 products):
#: about the products a cold joint run spends before its own fallback.
WARM_RESTARTS = 6


@dataclass
class Pair:
    """The two ends of the spectrum (`extreme_pair_vectors`)."""

    lambda_max: float
    lambda_min: float
    products: int
    """Hessian-vector products spent."""
    vectors: np.ndarray
    """n x 2: the unit eigenvectors of lambda_max (column 0) and lambda_min (column 1), each column's
    largest-magnitude entry positive. Pass it as `v0` at a neighbouring point to warm-start that point."""

    @property
    def top(self) -> np.ndarray:
        return self.vectors[:, 0]

    @property
    def bottom(self) -> np.ndarray:
        return self.vectors[:, 1]


def _pair_starts(v0: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start vectors (joint 'BE' run, 'LA' run, 'SA' run) from `v0`: one vector for all three, or n x 2 columns
    (a previous `Pair.vectors`): their sum for the joint run, each column for its own end."""
    v0 = np.asarray(v0, dtype=np.float64)
    if v0.ndim == 2 and v0.shape == (n, 2):
        top, bottom = _start_vector(v0[:, 0], n), _start_vector(v0[:, 1], n)
        # Unit columns (as a Pair has them) weigh both ends equally; an eigenvector pair is orthogonal, so the
        # sum is never zero, but a caller's columns might cancel: then the top column alone.
        both = top / np.linalg.norm(top) + bottom / np.linalg.norm(bottom)
        return (both if np.linalg.norm(both) > 1e-8 else top), top, bottom
    v = _start_vector(v0, n)
    return v, v, v


def extreme_pair(matvec: Matvec, n: int, tol: float, maxiter: int, seed: int = 0,
                 v0: np.ndarray | None = None) -> tuple[float, float, int]:
    """(lambda_max, lambda_min, products) of the symmetric operator, each to ARPACK's relative accuracy `tol`:
    `extreme_pair_vectors` without the vectors."""
    pair = extreme_pair_vectors(matvec, n, tol, maxiter, seed, v0)
    return pair.lambda_max, pair.lambda_min, pair.products


def extreme_pair_vectors(matvec: Matvec, n: int, tol: float, maxiter: int, seed: int = 0,
                         v0: np.ndarray | None = None, ncv: int | None = None) -> Pair:
    """lambda_max and lambda_min of the symmetric operator, each to ARPACK's relative accuracy `tol`, with their
    eigenvectors and the products spent.

    First from ONE Krylov space: ARPACK's which='BE' with k = 2 returns one eigenvalue from each end of the
    spectrum. A network's Hessian has a few large outliers at both ends, which Lanczos finds together in its first
    basis, so this costs about half of asking for 'LA' and 'SA' separately (measured: 38 products instead of 78
    on a depth-56 1D ResNet). When one end sits in a dense cluster (a near-zero lambda_min in a flat region), the
    joint run restarts slowly; after PAIR_RESTARTS restarts it is abandoned for the two separate runs, whose
    cost it then adds. Both values are right whatever their signs. Tiny operators (n <= PAIR_NCV) are
    diagonalized densely. Raises UserError if the separate runs do not converge within `maxiter` restarts.

    Warm start: `v0` is the start vector instead of the seeded one -- one vector, or n x 2 columns (top, bottom)
    such as a neighbouring point's `Pair.vectors` (their sum starts the joint run; each column its own separate
    run). A warm-started run uses a Lanczos basis of `ncv` = WARM_NCV vectors (a cold one PAIR_NCV) and gets
    WARM_RESTARTS restarts before the fallback. The results agree with a cold start's to `tol`, not bit for bit.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    if n <= PAIR_NCV:
        both = extreme_eigenpairs(matvec, n, n, "LA", tol, maxiter, seed)
        return Pair(float(both.values[0]), float(both.values[-1]), both.products,
                    np.ascontiguousarray(both.vectors[:, [0, -1]]))
    op, seeded, count = _arpack_operator(matvec, n, seed)
    if v0 is None:
        start, top_start, bottom_start = seeded, None, None
        basis, restarts = PAIR_NCV if ncv is None else ncv, PAIR_RESTARTS
    else:
        start, top_start, bottom_start = _pair_starts(v0, n)
        basis, restarts = WARM_NCV if ncv is None else ncv, WARM_RESTARTS
    basis = min(max(basis, 3), n)
    try:
        values, vectors = eigsh(op, k=2, which="BE", tol=tol, maxiter=restarts, v0=start, ncv=basis)
    except ArpackNoConvergence:
        top = extreme_eigenpairs(matvec, n, 1, "LA", tol, maxiter, seed, top_start)
        bottom = extreme_eigenpairs(matvec, n, 1, "SA", tol, maxiter, seed, bottom_start)
        return Pair(float(top.values[0]), float(bottom.values[0]), count[0] + top.products + bottom.products,
                    np.stack([top.vectors[:, 0], bottom.vectors[:, 0]], axis=1))
    hi, lo = int(np.argmax(values)), int(np.argmin(values))
    return Pair(float(values[hi]), float(values[lo]), count[0], _fix_sign(vectors[:, [hi, lo]]))


@dataclass
class Trace:
    """Hutchinson's estimate of tr(H) with Rademacher probes z: mean of z^T H z."""

    estimate: float
    stderr: float
    """Standard error of the mean: sample std (ddof=1) / sqrt(probes); NaN for one probe."""
    samples: np.ndarray
    """z^T H z of every probe."""
    products: int


def hutchinson_trace(matvec: Matvec, n: int, probes: int, seed: int = 0) -> Trace:
    """tr(H) ~= mean over `probes` Rademacher vectors z (entries +-1) of z^T H z (unbiased)."""
    rng = np.random.default_rng(seed)
    samples = np.empty(probes)
    for i in range(probes):
        z = rng.integers(0, 2, n).astype(np.float64) * 2.0 - 1.0
        samples[i] = float(z @ matvec(z))
    stderr = float(samples.std(ddof=1) / math.sqrt(probes)) if probes > 1 else float("nan")
    return Trace(float(samples.mean()), stderr, samples, probes)


def lanczos(matvec: Matvec, v0: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """`steps` Lanczos steps from v0 with full reorthogonalization: (alpha, beta) of the tridiagonal T.

    Stops early if the Krylov space is exhausted (beta ~ 0): len(alpha) may be < steps; len(beta) = len(alpha) - 1.
    """
    n = v0.size
    q = v0 / np.linalg.norm(v0)
    basis = np.empty((min(steps, n), n))
    alpha, beta = [], []
    for j in range(min(steps, n)):
        basis[j] = q
        w = matvec(q)
        a = float(q @ w)
        alpha.append(a)
        # Full reorthogonalization (twice: "twice is enough"): floating point loses orthogonality otherwise,
        # and ghost copies of converged Ritz values would distort the quadrature weights.
        for _ in range(2):
            w = w - basis[:j + 1].T @ (basis[:j + 1] @ w)
        b = float(np.linalg.norm(w))
        if j == min(steps, n) - 1 or b <= 1e-12 * max(1.0, abs(a)):
            break
        beta.append(b)
        q = w / b
    return np.array(alpha), np.array(beta)


@dataclass
class Density:
    """Spectral density by stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao 2019; Lin, Saad, Yang 2016)."""

    grid: np.ndarray
    values: np.ndarray
    """phi(t) on the grid, per unit eigenvalue: integrates to 1 over the grid (trapezoid) up to discretization."""
    nodes: np.ndarray
    """runs x steps Ritz values (NaN-padded if a run stopped early)."""
    weights: np.ndarray
    """runs x steps quadrature weights (first components squared of T's eigenvectors; 0 where padded)."""
    run_means: np.ndarray
    """Per run, v^T H v for the unit probe v = sum_j weights_j nodes_j; their mean estimates tr(H)/n."""
    sigma: float
    """Gaussian broadening (standard deviation), in eigenvalue units."""
    products: int


def slq_density(matvec: Matvec, n: int, runs: int, steps: int, sigma_rel: float, grid_points: int = 2000,
                seed: int = 0) -> Density:
    """phi(t) = (1/runs) sum_r sum_j w_rj N(t; theta_rj, sigma^2), theta/w the Gauss quadrature of run r.

    Each run starts Lanczos from an independent unit Rademacher vector (entries +-1/sqrt(n)). sigma =
    sigma_rel * (max - min of all Ritz values) (or sigma_rel * max(1, |theta|) if they all coincide); the grid
    spans [min - 6 sigma, max + 6 sigma], so each Gaussian's mass lies inside it.
    """
    rng = np.random.default_rng(seed)
    steps = min(steps, n)
    nodes = np.full((runs, steps), np.nan)
    weights = np.zeros((runs, steps))
    products = 0
    for r in range(runs):
        v0 = (rng.integers(0, 2, n).astype(np.float64) * 2.0 - 1.0) / math.sqrt(n)
        alpha, beta = lanczos(matvec, v0, steps)
        products += len(alpha)
        t = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        theta, u = np.linalg.eigh(t)
        nodes[r, :len(theta)] = theta
        weights[r, :len(theta)] = u[0] ** 2
    finite = nodes[np.isfinite(nodes)]
    lo, hi = float(finite.min()), float(finite.max())
    sigma = sigma_rel * (hi - lo) if hi > lo else sigma_rel * max(1.0, abs(hi))
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, grid_points)
    ok = np.isfinite(nodes)
    th, wt = nodes[ok], weights[ok]
    # Sum of Gaussians, in chunks of nodes so that memory stays grid_points x 256.
    values = np.zeros(grid_points)
    for i in range(0, th.size, 256):
        z = (grid[:, None] - th[None, i:i + 256]) / sigma
        values += (np.exp(-0.5 * z * z) * wt[None, i:i + 256]).sum(axis=1)
    values /= runs * sigma * math.sqrt(2 * math.pi)
    run_means = np.nansum(nodes * weights, axis=1)
    return Density(grid, values, nodes, weights, run_means, float(sigma), products)
