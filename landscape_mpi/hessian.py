"""Hessian of the mean loss: products, eigenvalues, trace, spectral density, adaptive sharpness (METHOD.md section 4).

The function whose curvature is measured is exactly the loss a surface point reports (landscape_mpi/evaluate.py):
the **sample-weighted mean** loss over every sample of the evaluation set(s), ``L(theta) = (1/N) sum_s l_s(theta)``,
with the model in **eval mode** (BatchNorm uses its running statistics, which are constants here: they are buffers,
not parameters, so the Hessian is taken with respect to the trainable parameters only; dropout is off).
Several evaluation sets (splits) are pooled: N is their total sample count.

Parameters are one flat vector over ``named_parameters()`` (those with ``requires_grad``, in that order):
`ParamSpace` converts between that vector (float64 numpy) and per-parameter tensors with pure helpers.

Hessian-vector products use double backprop per batch, accumulated in float64 across batches. Under MPI each
rank holds a contiguous shard of the samples; one product is one ``Allreduce`` of the per-rank sums, divided by
the global sample count. The linear algebra (ARPACK via scipy's ``eigsh``, Hutchinson, Lanczos) runs on rank 0
only; the other ranks serve products (`drive`): rank 0 broadcasts a command and the vector, every rank computes
its shard's product, and the sums are allreduced. ARPACK's iteration therefore never has to agree across ranks.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from landscape_mpi.data import EvalSet
from landscape_mpi.directions import Direction, PointSetter, random_direction
from landscape_mpi.errors import UserError
from landscape_mpi.evaluate import batch_loss_sum

DEFAULT_BATCH_SIZE = 1024
Matvec = Callable[[np.ndarray], np.ndarray]

# Commands rank 0 broadcasts to the ranks that serve products.
_CMD_PRODUCT, _CMD_STOP = 1, 0


# ---------------------------------------------------------------------------------- parameter vectors
@dataclass(frozen=True)
class ParamSpace:
    """The trainable parameters of a model as one flat vector (``named_parameters()`` order, requires_grad only)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, model: nn.Module) -> "ParamSpace":
        """The space of `model`; raises UserError if the model has no trainable parameter."""
        named = [(k, tuple(p.shape)) for k, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise UserError("the model has no trainable parameters (requires_grad is False everywhere), so it has "
                            "no Hessian; give a model with trainable parameters")
        return cls(tuple(k for k, _ in named), tuple(s for _, s in named))

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def n(self) -> int:
        """Number of scalar parameters (the Hessian is n x n)."""
        return sum(self.sizes)

    def flatten(self, tensors: Sequence[torch.Tensor | None]) -> np.ndarray:
        """A new float64 vector from per-parameter tensors in this space's order (None: zeros)."""
        parts = [np.zeros(size) if t is None else t.detach().double().cpu().numpy().ravel()
                 for t, size in zip(tensors, self.sizes)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def split(self, vec: np.ndarray) -> dict[str, np.ndarray]:
        """Parameter name -> new array shaped like the parameter, cut from the flat vector `vec`."""
        out, start = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = np.array(vec[start:start + size]).reshape(shape)
            start += size
        return out

    def tensors(self, vec: np.ndarray, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
        """New tensors (on `device`, in `dtype`) shaped like the parameters, from the flat vector `vec`."""
        return [torch.from_numpy(a).to(device=device, dtype=dtype) for a in self.split(vec).values()]


def loss_sum(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """Sum over the batch of the per-sample loss, as evaluate.batch_loss_sum, but kept in float64 for a float64 model.

    evaluate.batch_loss_sum casts logits to float32 (right for its speed-oriented evaluation); here a float64 run
    (``--precision float64``) must stay float64 end to end, so the same two formulas are applied without the cast.
    """
    if logits.dtype != torch.float64:
        return batch_loss_sum(logits, labels, loss)
    if loss == "ce":
        return F.cross_entropy(logits, labels, reduction="sum")
    if loss == "mse":
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
        return ((probs - onehot) ** 2).mean(dim=1).sum()
    raise ValueError(loss)


def shard(data: EvalSet | Sequence[EvalSet], rank: int, size: int) -> list[EvalSet]:
    """This rank's contiguous share of every evaluation set (array_split: sizes differ by at most one)."""
    sets = [data] if isinstance(data, EvalSet) else list(data)
    out = []
    for s in sets:
        n = len(s)
        lo, hi = n * rank // size, n * (rank + 1) // size
        out.append(EvalSet(s.name, s.inputs[lo:hi], s.labels[lo:hi], s.indices))
    return out


# ------------------------------------------------------------------------------------ the operator
class HessianOperator:
    """Products with the Hessian of the mean loss at the model's current weights.

    All ranks of `comm` construct it with the *full* evaluation set(s) and the same model; each keeps its shard.
    `product` is collective: under MPI call it only inside `drive` (rank 0) -- the other ranks serve it there.
    """

    def __init__(self, model: nn.Module, data: EvalSet | Sequence[EvalSet], loss: str,
                 batch_size: int = DEFAULT_BATCH_SIZE, comm=None) -> None:
        self.model = model
        self.loss = loss
        self.batch_size = batch_size
        self.comm = comm if (comm is not None and comm.Get_size() > 1) else None
        rank, size = (self.comm.Get_rank(), self.comm.Get_size()) if self.comm else (0, 1)
        self.rank = rank
        self.space = ParamSpace.of(model)
        self.params = [p for _, p in model.named_parameters() if p.requires_grad]
        self.local = shard(data, rank, size)
        # Every rank holds every sample (shards are cut here), so the global count is known without communication.
        self.n_samples = sum(len(s) for s in ([data] if isinstance(data, EvalSet) else data))
        if self.n_samples == 0:
            raise UserError("the evaluation set is empty; check --samples and --splits")
        self.products = 0
        """Hessian-vector products computed so far (counted on rank 0, the one that drives)."""

    @property
    def n(self) -> int:
        return self.space.n

    def local_product_sum(self, v: np.ndarray) -> np.ndarray:
        """sum over this rank's samples of H_s v (float64), H_s the Hessian of sample s's loss. Model in eval mode."""
        self.model.eval()
        p0 = self.params[0]
        vs = self.space.tensors(v, p0.device, p0.dtype)
        total = np.zeros(self.n)
        for s in self.local:
            for start in range(0, len(s), self.batch_size):
                x = s.inputs[start:start + self.batch_size]
                y = s.labels[start:start + self.batch_size]
                with torch.enable_grad():
                    value = loss_sum(self.model(x), y, self.loss)
                    grads = torch.autograd.grad(value, self.params, create_graph=True, allow_unused=True)
                    dot = sum((g * u).sum() for g, u in zip(grads, vs) if g is not None)
                    if not torch.is_tensor(dot) or not dot.requires_grad:  # the loss is linear in every parameter
                        continue
                    hv = torch.autograd.grad(dot, self.params, allow_unused=True)
                total += self.space.flatten(hv)
        return total

    def product(self, v: np.ndarray) -> np.ndarray:
        """H v, H the Hessian of the mean loss over all samples of all ranks. Collective (see `drive`)."""
        v = np.ascontiguousarray(v, dtype=np.float64).ravel()
        if self.comm is not None:
            self.comm.Bcast(np.array([_CMD_PRODUCT], dtype=np.int64), root=0)
            self.comm.Bcast(v, root=0)
        self.products += 1
        return self._reduce(self.local_product_sum(v))

    def _reduce(self, local: np.ndarray) -> np.ndarray:
        if self.comm is None:
            return local / self.n_samples
        from mpi4py import MPI

        total = np.empty_like(local)
        self.comm.Allreduce(local, total, op=MPI.SUM)
        return total / self.n_samples

    def serve(self) -> None:
        """On ranks other than 0: compute products for rank 0 until it says stop."""
        cmd = np.zeros(1, dtype=np.int64)
        v = np.empty(self.n)
        while True:
            self.comm.Bcast(cmd, root=0)
            if int(cmd[0]) == _CMD_STOP:
                return
            self.comm.Bcast(v, root=0)
            self._reduce(self.local_product_sum(v))

    def stop_serving(self) -> None:
        if self.comm is not None:
            self.comm.Bcast(np.array([_CMD_STOP], dtype=np.int64), root=0)

    def mean_loss(self) -> float:
        """The mean loss over all samples at the current weights (collective on every rank, not inside `drive`)."""
        self.model.eval()
        total = 0.0
        with torch.no_grad():
            for s in self.local:
                for start in range(0, len(s), self.batch_size):
                    out = self.model(s.inputs[start:start + self.batch_size])
                    total += float(loss_sum(out, s.labels[start:start + self.batch_size], self.loss).double())
        return float(self._reduce(np.array([total]))[0])


def _abort_on_error(what: str) -> None:
    # A rank that fails inside a collective would leave the others waiting forever: end the whole job.
    from landscape_mpi.lifecycle import abort

    abort(f"failed while {what}:\n{traceback.format_exc()}")


def drive(op: HessianOperator, task: Callable[[Matvec], object]) -> object:
    """Run ``task(matvec)`` on rank 0 while the other ranks serve its products; collective on every rank.

    Returns the task's result on rank 0 and None elsewhere. A UserError raised by the task is raised on every
    rank as the same `lifecycle.AgreedError` (one line, exit 2 on each rank); any other failure aborts the job
    (MPI_Abort) rather than leave ranks waiting.
    """
    from landscape_mpi.lifecycle import AgreedError

    if op.comm is None:
        return task(op.product)
    if op.rank != 0:
        try:
            op.serve()
        except Exception:
            _abort_on_error("computing Hessian-vector products")
        status = op.comm.bcast(None, root=0)
        if status is not None:
            raise AgreedError(status)
        return None
    result, status = None, None
    try:
        result = task(op.product)
    except UserError as exc:
        status = str(exc)
    except Exception:
        _abort_on_error("driving the Hessian computation")
    op.stop_serving()
    op.comm.bcast(status, root=0)
    if status is not None:
        raise AgreedError(status)
    return result


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
                       seed: int = 0) -> Eigen:
    """The k largest ('LA') or smallest ('SA') algebraic eigenvalues of the symmetric operator, by ARPACK (eigsh).

    'SA' is asked directly (not through a shift by lambda_max), so it is right whatever the signs. `tol` is
    ARPACK's relative accuracy of each Ritz value; `maxiter` its limit on restarts (Arnoldi iterations). The start
    vector is seeded, so the iteration is reproducible. For k >= n (tiny models) the operator is built densely
    and all n eigenpairs are returned. Raises UserError if ARPACK does not converge.
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
    op, v0, count = _arpack_operator(matvec, n, seed)
    try:
        values, vectors = eigsh(op, k=k, which=which, tol=tol, maxiter=maxiter, v0=v0)
    except ArpackNoConvergence as exc:
        raise UserError(f"Lanczos (ARPACK, which={which}) did not converge to tol {tol:g} within maxiter {maxiter} "
                        f"({len(exc.eigenvalues)} of {k} eigenvalues); raise --maxiter or --tol") from None
    order = np.argsort(values)[::-1] if which == "LA" else np.argsort(values)
    return Eigen(values[order], _fix_sign(vectors[:, order]), count[0])


#: Lanczos basis size of `extreme_pair`: ARPACK's default for k = 2 (max(2k + 1, 20)).
PAIR_NCV = 20
#: ARPACK restarts `extreme_pair` gives the joint run before it falls back to two separate runs.
PAIR_RESTARTS = 3


def extreme_pair(matvec: Matvec, n: int, tol: float, maxiter: int, seed: int = 0) -> tuple[float, float, int]:
    """(lambda_max, lambda_min, products) of the symmetric operator, each to ARPACK's relative accuracy `tol`.

    First from ONE Krylov space: ARPACK's which='BE' with k = 2 returns one eigenvalue from each end of the
    spectrum. A network's Hessian has a few large outliers at both ends, which Lanczos finds together in its first
    basis, so this costs about half of asking for 'LA' and 'SA' separately (measured: 38 products instead of 78
    on a depth-56 1D ResNet). When one end sits in a dense cluster (a near-zero lambda_min in a flat region), the
    joint run restarts slowly; after PAIR_RESTARTS restarts it is abandoned for the two separate runs, whose
    cost it then adds. Both values are right whatever their signs. Tiny operators (n <= PAIR_NCV) are
    diagonalized densely. Raises UserError if the separate runs do not converge within `maxiter` restarts.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    if n <= PAIR_NCV:
        both = extreme_eigenpairs(matvec, n, n, "LA", tol, maxiter, seed)
        return float(both.values[0]), float(both.values[-1]), both.products
    op, v0, count = _arpack_operator(matvec, n, seed)
    try:
        values = eigsh(op, k=2, which="BE", tol=tol, maxiter=PAIR_RESTARTS, v0=v0, ncv=PAIR_NCV,
                       return_eigenvectors=False)
        return float(values.max()), float(values.min()), count[0]
    except ArpackNoConvergence:
        top = extreme_eigenpairs(matvec, n, 1, "LA", tol, maxiter, seed)
        bottom = extreme_eigenpairs(matvec, n, 1, "SA", tol, maxiter, seed)
        return float(top.values[0]), float(bottom.values[0]), count[0] + top.products + bottom.products


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


# --------------------------------------------------------------------------------- adaptive sharpness
@dataclass
class AdaptiveSharpness:
    """Average-case adaptive sharpness: mean over M perturbations of loss(theta + delta) - loss(theta)."""

    mean: float
    stderr: float
    values: np.ndarray
    """loss(theta + delta_m) - loss(theta) for every perturbation m."""
    base_loss: float


def adaptive_sharpness(op: HessianOperator, rho: float, samples: int, seed: int) -> AdaptiveSharpness:
    """Collective on every rank (not inside `drive`). Perturbation m: delta = rho * random_direction(filter, biasbn).

    That is, per output filter i of every weight tensor of dim >= 2: delta_i = rho * ||w_i|| * g_i / ||g_i||, g
    standard Gaussian from ``torch.Generator().manual_seed(seed)`` (drawn in ``named_parameters()`` order, one
    tensor of dim >= 2 after another, perturbation after perturbation); biases and BatchNorm are not perturbed.
    Every rank draws the same perturbations (CPU generator), so no communication is needed beyond the losses.
    """
    model = op.model
    state = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    keys = list(state)
    generator = torch.Generator().manual_seed(seed)
    base = op.mean_loss()
    values = np.empty(samples)
    for m in range(samples):
        direction = random_direction(state, keys, generator, "filter", "biasbn")
        setter = PointSetter(model, [direction])
        setter.set([rho])
        try:
            values[m] = op.mean_loss() - base
        finally:
            setter.set([0.0])
    stderr = float(values.std(ddof=1) / math.sqrt(samples)) if samples > 1 else float("nan")
    return AdaptiveSharpness(float(values.mean()), stderr, values, base)


# ---------------------------------------------------------------------------- curvature at a grid point
def eig_extremes(model: nn.Module, data: list[EvalSet] | EvalSet, loss: str, *, tol: float, maxiter: int,
                 comm=None, batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[float, float, int]:
    """(lambda_max, lambda_min, Hessian-vector products spent) of the mean loss at the model's CURRENT weights.

    lambda_max is ARPACK's largest algebraic eigenvalue ('LA'), lambda_min its smallest ('SA'), each to relative
    accuracy `tol` within `maxiter` restarts; both are right whatever their signs. `data` is the full evaluation
    set(s); with an MPI communicator (collective: every rank of `comm` calls it with the same model and data)
    each rank takes a shard, and every rank returns the same tuple. Model in eval mode (BatchNorm running stats).
    Raises UserError if the model has no trainable parameter or ARPACK does not converge.
    """
    op = HessianOperator(model, data, loss, batch_size, comm)

    def task(matvec: Matvec) -> tuple[float, float, int]:
        return extreme_pair(matvec, op.n, tol, maxiter)

    result = drive(op, task)
    if op.comm is not None:
        result = op.comm.bcast(result, root=0)
    return result


# ------------------------------------------------------------------------- eigenvector directions
#: How `hessian_directions` scales the eigenvectors; recorded with the surface.
EIGENVECTOR_CONVENTION = ("unit L2 norm over the whole trainable-parameter vector (named_parameters with "
                          "requires_grad; biases and BatchNorm included, buffers zero); sign: the largest-magnitude "
                          "entry is positive; coordinate a moves the weights by Euclidean distance |a|")


def hessian_directions(path: str, model: nn.Module, row: int = 0) -> tuple[Direction, Direction, dict]:
    """dx, dy = the eigenvectors of the largest and second largest eigenvalue stored in row `row` of a Hessian file.

    Keyed by parameter name (every ``named_parameters()`` key of `model`; zeros for parameters without
    requires_grad, which have no curvature), float32 CPU tensors of unit L2 norm over the whole vector
    (`EIGENVECTOR_CONVENTION`). Returns also attributes to record with the surface (eigenvalues, convention, file,
    row, checkpoint). Raises UserError (one line) if the file is not a Hessian file, has fewer than two stored
    eigenvectors, lacks the row, or was computed for another model (names or shapes differ).
    """
    from landscape_mpi import hessian_store

    vectors, info = hessian_store.read_eigenvectors(path, row, 2)
    params = dict(model.named_parameters())
    trainable = {k: tuple(p.shape) for k, p in params.items() if p.requires_grad}
    stored = {k: tuple(v.shape) for k, v in vectors[0].items()}
    if stored != trainable:
        missing = sorted(set(trainable) - set(stored))
        extra = sorted(set(stored) - set(trainable))
        shapes = sorted(k for k in set(stored) & set(trainable) if stored[k] != trainable[k])
        detail = "; ".join(f"{label}: {', '.join(ks[:3])}" + (" ..." if len(ks) > 3 else "")
                           for label, ks in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes))
                           if ks)
        raise UserError(f"--hessian-file {path} was computed for another model ({detail}); "
                        f"compute it with landscape-mpi hessian for this --model")
    dirs = []
    for vec in vectors:
        dirs.append({k: (torch.from_numpy(np.asarray(vec[k], dtype=np.float32)) if k in vec
                         else torch.zeros(p.shape, dtype=torch.float32)) for k, p in params.items()})
    attrs = {"hessian_file": path, "hessian_row": row, "eigenvalues": info["eigenvalues"][:2].tolist(),
             "checkpoint": info["checkpoint"], "convention": EIGENVECTOR_CONVENTION}
    return dirs[0], dirs[1], attrs
