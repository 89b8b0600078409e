"""Hessian of the mean loss: products, eigenvalues, trace, spectral density, average adaptive rise
(docs/method.md#hessian).

The function whose curvature is measured is exactly the loss a surface point reports (landscape_mpi/engine/evaluate.py):
the **sample-weighted mean** loss over every sample of the evaluation set(s), ``L(theta) = (1/N) sum_s l_s(theta)``,
with the model in **eval mode** (BatchNorm uses its running statistics, which are constants here: they are buffers,
not parameters, so the Hessian is taken with respect to the trainable parameters only; dropout is off).
Several evaluation sets (splits) are pooled: N is their total sample count.

Parameters are one flat vector over ``named_parameters()`` (those with ``requires_grad``, in that order):
`ParamSpace` converts between that vector (float64 numpy) and per-parameter tensors with pure helpers.

Hessian-vector products use double backprop per batch, accumulated in float64 across batches. Under MPI each
rank holds a contiguous shard of the samples; one product is one ``Allreduce`` of the per-rank sums, divided by
the global sample count. The linear algebra (ARPACK via scipy's ``eigsh``, Hutchinson, Lanczos) runs on rank 0
only; the other ranks serve products (`drive`, by the one protocol of `DrivenOperator`, which the sharded operator of
curvature/sharded_hessian.py follows too): rank 0 broadcasts a command and the vector, every rank computes its
share of the product, and the shares are combined (here allreduced). ARPACK's iteration therefore never has to
agree across ranks.

Three ways to compute a rank's sum of products (`HessianOperator`'s `product` argument;
docs/hessian.md#cheaper-products-and-warm-starts): ``plain`` (the oracle: forward + double backward per batch
per product), ``graph`` (the loss and its gradient graph built once per operator when the rank's data are one
batch; a product is one backward through it) and ``forward`` (forward-over-reverse, ``torch.func.jvp`` of
``torch.func.grad``). All three compute the same function.
"""

from __future__ import annotations

import math
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from landscape_mpi.config.errors import UserError
from landscape_mpi.curvature.krylov import Matvec, Pair, extreme_pair_vectors
from landscape_mpi.data.datasets import EvalSet
from landscape_mpi.directions.base import PointSetter, filter_dims, random_direction
from landscape_mpi.runtime.comm import SELF
from landscape_mpi.tasks import Task, as_task
from landscape_mpi.tasks.classify import loss_sum as classify_loss_sum

DEFAULT_BATCH_SIZE = 1024

# Commands rank 0 broadcasts to the ranks that serve products (`DrivenOperator`).
_CMD_PRODUCT, _CMD_STOP = 1, 0

#: How `HessianOperator` computes a product (its `product` argument): ``auto`` = ``graph`` where this rank's data
#: are one batch, else ``plain``; ``plain`` = forward + double backward per batch per product (the oracle);
#: ``graph`` = the gradient graph kept across products (one batch only, else ``plain``); ``forward`` =
#: forward-over-reverse with torch.func (``plain`` if the model cannot take it).
PRODUCT_PATHS = ("auto", "plain", "graph", "forward")
DEFAULT_PRODUCT = "auto"


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
    """classify's loss sum, float64 kept for a float64 model (`tasks.classify.loss_sum`)."""
    return classify_loss_sum(logits, labels, loss)


def shard(data: EvalSet | Sequence[EvalSet], rank: int, size: int) -> list[EvalSet]:
    """This rank's contiguous share of every evaluation set (array_split: sizes differ by at most one)."""
    sets = [data] if hasattr(data, "rows") else list(data)  # one split (in memory or streamed) or several
    out = []
    for s in sets:
        n = len(s)
        lo, hi = n * rank // size, n * (rank + 1) // size
        out.append(s.part(lo, hi))
    return out


# ------------------------------------------------------------------------------------ the operator
# ------------------------------------------------------------------------------------- drive protocol
class DrivenOperator:
    """The drive protocol of a Hessian operator whose products take every rank of `comm` (collective), one for the
    unsharded and the sharded model: rank 0, which drives the Krylov method (`drive`), calls `product`; every
    other rank runs `serve` until rank 0's `stop_serving`. Per product, rank 0 broadcasts the command and the
    vector; every rank computes its share, and `_product_sum` combines the shares into (H v) * count on rank 0.

    A subclass sets `comm`, `n`, `count` (what the loss is a mean over) and `products` (0), and defines
    `_product_sum(v)`: collective over `comm`; its value matters on rank 0 only."""

    comm: object
    count: float
    products: int
    n: int

    def _product_sum(self, v: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def product(self, v: np.ndarray) -> np.ndarray:
        """H v, H the Hessian of the mean loss over all samples of all ranks (on rank 0; see `drive`)."""
        v = np.ascontiguousarray(v, dtype=np.float64).ravel()
        self.comm.Bcast(np.array([_CMD_PRODUCT], dtype=np.int64), root=0)
        self.comm.Bcast(v, root=0)
        self.products += 1
        return self._product_sum(v) / self.count

    def serve(self) -> None:
        """On ranks other than 0: compute this rank's share of every product rank 0 asks for, until it says stop."""
        cmd = np.zeros(1, dtype=np.int64)
        v = np.empty(self.n)
        while True:
            self.comm.Bcast(cmd, root=0)
            if int(cmd[0]) == _CMD_STOP:
                return
            self.comm.Bcast(v, root=0)
            self._product_sum(v)

    def stop_serving(self) -> None:
        self.comm.Bcast(np.array([_CMD_STOP], dtype=np.int64), root=0)


class HessianOperator(DrivenOperator):
    """Products with the Hessian of the mean loss at the model's current weights.

    The mean loss is the task's (`loss`: a Task, or "ce" | "mse" for classify): its loss sums over every
    rank's batches divided by its count over all samples (classify: samples, float64 kept for a float64 model).

    All ranks of `comm` construct it with the *full* evaluation set(s) and the same model; each keeps its shard.
    `product` is collective: under MPI call it only inside `drive` (rank 0) -- the other ranks serve it there.
    `comm`: the ranks that share the samples (default `comm.SELF`: this process holds them all).
    """

    def __init__(self, model: nn.Module, data: EvalSet | Sequence[EvalSet], loss: str | Task,
                 batch_size: int = DEFAULT_BATCH_SIZE, comm=SELF, product: str = DEFAULT_PRODUCT) -> None:
        """`product`: how a product is computed, one of PRODUCT_PATHS (see `path` and `fallback`).

        The default ``auto`` keeps the gradient graph when this rank's data are one batch: the product is then
        the same arithmetic as ``plain`` less the forward and the first backward, so it gives the same numbers
        and is never slower; its cost is memory (the graph of one batch stays alive until the operator is
        dropped or `release`d, about what ``plain`` holds at its peak during every product anyway).
        ``forward`` is opt-in: it changes the rounding and needs forward-mode rules for every operation."""
        if product not in PRODUCT_PATHS:
            raise ValueError(f"product={product!r}: choose one of {', '.join(PRODUCT_PATHS)}")
        self.model = model
        self.task = as_task(loss)
        self.batch_size = batch_size
        self.comm = comm
        rank, size = comm.Get_rank(), comm.Get_size()
        self.rank, self.size = rank, size
        self.space = ParamSpace.of(model)
        self.params = [p for _, p in model.named_parameters() if p.requires_grad]
        self.local = shard(data, rank, size)
        # Every rank holds every sample (shards are cut here), so the global count is known without communication.
        every = [data] if hasattr(data, "rows") else list(data)
        self.n_samples = sum(len(s) for s in every)
        if self.n_samples == 0:
            raise UserError("the evaluation set is empty; check --samples and --splits")
        # What the loss is a mean over (classify: samples; lm: predicted tokens; regress: target elements).
        self.count = sum(self.task.count(*s.rows(a, a + batch_size)) for s in every
                         for a in range(0, len(s), batch_size))
        if self.count == 0:
            raise UserError(f"the evaluation set has nothing to predict for --task {self.task.name}")
        self.products = 0
        """Hessian-vector products computed so far (counted on rank 0, the one that drives)."""
        self.requested = product
        batches = sum(-(-len(s) // batch_size) for s in self.local)
        self.path = "plain"
        """The path this rank's products take: plain, graph or forward."""
        self.fallback: str | None = None
        """Why the requested fast path is not taken on this rank (None: it is, or plain was asked)."""
        if product in ("auto", "graph"):
            if batches <= 1:
                self.path = "graph"
            else:
                self.fallback = (f"this rank's data are {batches} batches of --batch-size {batch_size}: the "
                                 f"gradient graph is kept for one batch only")
        elif product == "forward":
            self.path = "forward"
        self.graph_builds = 0
        """How many times the kept gradient graph was built (once per operator unless the weights changed)."""
        self._graph: list[torch.Tensor | None] | None = None
        self._snapshot: list[torch.Tensor] = []
        self._forward_ok = False

    @property
    def n(self) -> int:
        return self.space.n

    def local_product_sum(self, v: np.ndarray) -> np.ndarray:
        """sum over this rank's samples of H_s v (float64), H_s the Hessian of sample s's loss. Model in eval mode.

        By this rank's `path`; ``forward`` falls back to ``plain`` (for good, reason in `fallback`) if its first
        product fails."""
        if self.path == "graph":
            return self._graph_product_sum(v)
        if self.path == "forward":
            if self._forward_ok:
                return self._forward_product_sum(v)
            try:
                out = self._forward_product_sum(v)
            except Exception as exc:  # noqa: BLE001  (any model the functional transforms cannot take)
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                self.path = "plain"
                self.fallback = f"forward-over-reverse failed on this model ({type(exc).__name__}: {first})"
            else:
                self._forward_ok = True
                return out
        return self.plain_product_sum(v)

    def plain_product_sum(self, v: np.ndarray) -> np.ndarray:
        """`local_product_sum` by the plain path: per batch a forward and a double backward (the oracle)."""
        self.model.eval()
        p0 = self.params[0]
        vs = self.space.tensors(v, p0.device, p0.dtype)
        total = np.zeros(self.n)
        for s in self.local:
            for start in range(0, len(s), self.batch_size):
                x, y = s.rows(start, start + self.batch_size)
                with torch.enable_grad():
                    value = self.task.loss_sum(self.task.forward(self.model, x), x, y)
                    grads = torch.autograd.grad(value, self.params, create_graph=True, allow_unused=True)
                    dot = sum((g * u).sum() for g, u in zip(grads, vs) if g is not None)
                    if not torch.is_tensor(dot) or not dot.requires_grad:  # the loss is linear in every parameter
                        continue
                    hv = torch.autograd.grad(dot, self.params, allow_unused=True)
                total += self.space.flatten(hv)
        return total

    # -- the kept gradient graph (one batch per rank)
    def _weights(self) -> list[torch.Tensor]:
        return [*self.params, *self.model.buffers()]

    def _weights_changed(self) -> bool:
        # Surfaces set the weights in place through `.data` (directions.base.PointSetter), which autograd's
        # version counters do not see: compare with the copy taken when the graph was built (exact, O(n)).
        now = self._weights()
        return len(now) != len(self._snapshot) or any(
            t.shape != c.shape or not torch.equal(t.detach(), c) for t, c in zip(now, self._snapshot))

    def _build_graph(self) -> None:
        self.release()
        self.model.eval()
        grads: list[torch.Tensor | None] = []
        for s in self.local:
            if len(s) == 0:
                continue
            x, y = s.rows(0, len(s))
            with torch.enable_grad():
                value = self.task.loss_sum(self.task.forward(self.model, x), x, y)
                grads = list(torch.autograd.grad(value, self.params, create_graph=True, allow_unused=True))
        self._graph = grads
        self._snapshot = [t.detach().clone() for t in self._weights()]
        self.graph_builds += 1

    def _graph_product_sum(self, v: np.ndarray) -> np.ndarray:
        if self._graph is None or self._weights_changed():
            self._build_graph()
        total = np.zeros(self.n)
        if not self._graph:  # no sample on this rank
            return total
        p0 = self.params[0]
        vs = self.space.tensors(v, p0.device, p0.dtype)
        # d/dtheta sum_i g_i . v_i through the kept graph, with v as the output gradient (no graph for the dot);
        # a gradient that does not depend on the parameters (g linear in them) contributes nothing, as in `plain`.
        live = [(g, u) for g, u in zip(self._graph, vs) if g is not None and g.requires_grad]
        if not live:  # the loss is linear in every parameter
            return total
        with torch.enable_grad():
            hv = torch.autograd.grad([g for g, _ in live], self.params, grad_outputs=[u for _, u in live],
                                     retain_graph=True, allow_unused=True)
        return total + self.space.flatten(hv)

    def release(self) -> None:
        """Drop the kept gradient graph (and the copy of the weights); the next graph product rebuilds it."""
        self._graph, self._snapshot = None, []

    # -- forward-over-reverse
    def _forward_product_sum(self, v: np.ndarray) -> np.ndarray:
        from torch.func import functional_call, grad, jvp

        self.model.eval()
        call = _TaskCall(self.model, self.task)
        names = self.space.names
        primals = {k: p.detach() for k, p in zip(names, self.params)}
        tangents = {k: torch.from_numpy(a).to(device=p.device, dtype=p.dtype)
                    for (k, a), p in zip(self.space.split(v).items(), self.params)}
        total = np.zeros(self.n)
        for s in self.local:
            for start in range(0, len(s), self.batch_size):
                x, y = s.rows(start, start + self.batch_size)

                def batch_loss(params: dict[str, torch.Tensor], x=x, y=y) -> torch.Tensor:
                    out = functional_call(call, {"model." + k: t for k, t in params.items()}, (x,), strict=False)
                    return self.task.loss_sum(out, x, y)

                with warnings.catch_warnings():  # torch's first forward-AD call scripts decompositions (FutureWarning)
                    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script", category=FutureWarning)
                    _, hv = jvp(grad(batch_loss), (primals,), (tangents,))
                total += self.space.flatten([hv[k] for k in names])
        return total

    def _product_sum(self, v: np.ndarray) -> np.ndarray:
        """(H v) * count: every rank's sum of products, allreduced (`DrivenOperator`)."""
        return self._sum(self.local_product_sum(v))

    def _sum(self, local: np.ndarray) -> np.ndarray:
        if self.size == 1:  # this rank's sum is the total (and one process never imports mpi4py)
            return local
        from mpi4py import MPI

        total = np.empty_like(local)
        self.comm.Allreduce(local, total, op=MPI.SUM)
        return total

    def mean_loss(self) -> float:
        """The mean loss over all samples at the current weights (collective on every rank, not inside `drive`)."""
        self.model.eval()
        total = 0.0
        with torch.no_grad():
            for s in self.local:
                for start in range(0, len(s), self.batch_size):
                    x, y = s.rows(start, start + self.batch_size)
                    total += float(self.task.loss_sum(self.task.forward(self.model, x), x, y).double())
        return float(self._sum(np.array([total]))[0] / self.count)


class _TaskCall(nn.Module):
    """``task.forward(model, x)`` as a module, so that `torch.func.functional_call` swaps the model's parameters
    while the task calls the model its own way (a dict of inputs, a user task's forward)."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_task", task)  # not a submodule even if a user's task is one

    def forward(self, x):
        return self._task.forward(self.model, x)


def _abort_on_error(what: str) -> None:
    # A rank that fails inside a collective would leave the others waiting forever: end the whole job.
    from landscape_mpi.runtime.lifecycle import abort

    abort(f"failed while {what}:\n{traceback.format_exc()}")


def drive(op: DrivenOperator, task: Callable[[Matvec], object]) -> object:
    """Run ``task(matvec)`` on rank 0 while the other ranks serve its products; collective on every rank.

    Returns the task's result on rank 0 and None elsewhere. A UserError raised by the task is raised on every
    rank as the same `lifecycle.AgreedError` (one line, exit 2 on each rank); any other failure aborts the job
    (MPI_Abort) rather than leave ranks waiting.
    """
    from landscape_mpi.runtime.lifecycle import AgreedError

    if op.size == 1:  # nobody serves products: the task runs alone, and its failures are the caller's
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


# ----------------------------------------------------------------------------- average adaptive rise
@dataclass
class AdaptiveSharpness:
    """The average adaptive rise: mean over M random perturbations of loss(theta + delta) - loss(theta).

    A lower bound of the filter-wise worst case that Kwon et al. 2021 (ASAM) call adaptive sharpness, not that
    maximisation (docs/analyses.md#what-the-names-promise); the class and function keep their earlier names."""

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
        direction = random_direction(state, keys, generator, "filter", "biasbn", filter_dims(model))
        setter = PointSetter(model, [direction])
        setter.set([rho])
        try:
            values[m] = op.mean_loss() - base
        finally:
            setter.set([0.0])
    stderr = float(values.std(ddof=1) / math.sqrt(samples)) if samples > 1 else float("nan")
    return AdaptiveSharpness(float(values.mean()), stderr, values, base)


# ---------------------------------------------------------------------------- curvature at a grid point
def eig_extremes(model: nn.Module, data: list[EvalSet] | EvalSet, loss: str | Task, *, tol: float, maxiter: int,
                 comm=SELF, batch_size: int = DEFAULT_BATCH_SIZE, v0: np.ndarray | None = None,
                 product: str = DEFAULT_PRODUCT) -> tuple[float, float, int]:
    """(lambda_max, lambda_min, Hessian-vector products spent) of the mean loss at the model's CURRENT weights.

    lambda_max is ARPACK's largest algebraic eigenvalue ('LA'), lambda_min its smallest ('SA'), each to relative
    accuracy `tol` within `maxiter` restarts; both are right whatever their signs. `data` is the full evaluation
    set(s); with a communicator of several ranks (collective: every rank of `comm` calls it with the same model
    and data) each rank takes a shard, and every rank returns the same tuple. Model in eval mode (BatchNorm running
    stats). `v0`: a warm start (`eig_pair`); `product`: `HessianOperator`'s.
    Raises UserError if the model has no trainable parameter or ARPACK does not converge.
    """
    pair = eig_pair(model, data, loss, tol=tol, maxiter=maxiter, comm=comm, batch_size=batch_size, v0=v0,
                    product=product)
    return pair.lambda_max, pair.lambda_min, pair.products


def eig_pair(model: nn.Module, data: list[EvalSet] | EvalSet, loss: str | Task, *, tol: float, maxiter: int,
             comm=SELF, batch_size: int = DEFAULT_BATCH_SIZE, v0: np.ndarray | None = None,
             product: str = DEFAULT_PRODUCT) -> Pair:
    """`eig_extremes` with the eigenvectors (`krylov.Pair`): pass ``pair.vectors`` as `v0` at the next, nearby
    point to warm-start it (`krylov.extreme_pair_vectors`)."""
    return operator_pair(HessianOperator(model, data, loss, batch_size, comm, product), tol=tol, maxiter=maxiter,
                         v0=v0)


def operator_extremes(op, *, tol: float, maxiter: int, v0: np.ndarray | None = None) -> tuple[float, float, int]:
    """(lambda_max, lambda_min, products) of an operator (`HessianOperator`, or the sharded one of
    curvature/sharded_hessian.py) on every rank of its communicator (collective). `v0`: as `operator_pair`."""
    pair = operator_pair(op, tol=tol, maxiter=maxiter, v0=v0)
    return pair.lambda_max, pair.lambda_min, pair.products


def operator_pair(op, *, tol: float, maxiter: int, v0: np.ndarray | None = None) -> Pair:
    """`operator_extremes` as a `krylov.Pair` (collective). The numbers are the same on every rank; the
    eigenvectors (``pair.vectors``, n x 2) only on the communicator's rank 0, which drives the iteration (the
    other ranks get an empty n x 0 array, and their `v0` is not read): a warm start is rank 0's business."""

    def task(matvec: Matvec) -> Pair:
        return extreme_pair_vectors(matvec, op.n, tol, maxiter, v0=v0)

    pair = drive(op, task)
    numbers = op.comm.bcast(None if pair is None else (pair.lambda_max, pair.lambda_min, pair.products), root=0)
    if pair is not None:
        return pair
    return Pair(*numbers, np.zeros((op.n, 0)))
