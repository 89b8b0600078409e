"""Curvature operators beyond the Hessian: the generalized Gauss-Newton matrix, the Fisher and the empirical Fisher
of the task's mean loss (docs/method.md#curvature-operators).

Each is ``C = (1/N) sum_b J_b^T M_b J_b`` over the batches b, J_b the Jacobian of the model's output (the task's
``forward``: logits, token logits, real values) with respect to the trainable parameters, and M_b an output-space
matrix that is never built:

- ``ggn``: M = the Hessian of the task's loss sum in output space. Softmax cross-entropy (classify ``ce``, ``lm``):
  diag(p) - p p^T per sample (per predicted position), applied as ``p * u - p * (p . u)``; ``regress``: 2 I (the
  loss is a sum of squares); anything else (classify ``mse``, a user task): the task's own
  ``output_hessian_product(output, inputs, labels, u)`` if it has one, else the exact Hessian of its loss sum in
  output space by double backprop of the output-sized loss (positive semi-definite only where the loss is convex
  in the outputs).
- ``fisher`` (Monte Carlo, one sampled label per sample or position): M = r r^T per unit with r = d loss / d output
  at a label drawn from the model's predictive (softmax: ``r = p - onehot(y~)``; regress, the Gaussian of variance
  1/2 whose negative log-likelihood is the squared error up to a constant: ``r = -sqrt(2) eps``). The labels come
  from fixed uniforms (inverse CDF), drawn per split from ``torch.Generator().manual_seed(fisher_seed + split)``
  over the split's global sample order, so the operator is one fixed matrix and the same on any number of ranks.
- ``empirical-fisher``: M = r r^T per unit with r = d loss / d output at the data's labels (any task: autograd).

So the Fisher products are sums of outer products of per-unit gradients applied to v, computed through the
GGN identity (g_s = J_s^T r_s, so sum_s g_s g_s^T v = J^T (r (r . J v))): a unit is a sample for classify,
regress and user tasks, a predicted token position for lm.

A product per batch: J v by forward-mode AD (dual parameters through `torch.func.functional_call`: the primal
output keeps its autograd graph), M (J v) in closed form, and J^T (M J v) by one backward; the forward keeps one
output-sized tangent besides the usual graph. A model whose operations lack forward-mode rules falls back for good
to the double-vjp trick (J v = d/du <J^T u, v>, reverse mode only), reason in `fallback`. Per-batch sums are
accumulated in float64 and combined across ranks exactly as the Hessian's (`HessianOperator`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from landscape_mpi.config.errors import UserError
from landscape_mpi.curvature.hessian import DEFAULT_BATCH_SIZE, HessianOperator, _TaskCall
from landscape_mpi.data.datasets import EvalSet, Inputs
from landscape_mpi.runtime.comm import SELF
from landscape_mpi.tasks import ClassifyTask, LanguageModelTask, RegressTask, Task, as_task
from landscape_mpi.tasks.lm import IGNORE_INDEX, targets

#: The matrices (`HessianConfig.curvature`); ``hessian`` is `HessianOperator` itself.
CURVATURES = ("hessian", "ggn", "fisher", "empirical-fisher")
#: How J v is computed: forward-mode AD, or the double-vjp trick (reverse mode only).
JVP_PATHS = ("forward", "reverse")

OutputProduct = Callable[[torch.Tensor], torch.Tensor]


def _real(t: torch.Tensor) -> torch.Tensor:
    """float64 kept, anything else as float32 (the tasks' loss formulas do the same): the output-space products
    are computed in it, so a float32 model's (batch, tokens, vocabulary) temporaries stay float32."""
    return t if t.dtype == torch.float64 else t.float()


def _softmax_units(task: Task, output: torch.Tensor, inputs: Inputs,
                   labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(logits (..., C) as `_real`, integer labels (...), valid mask (...)) of a softmax cross-entropy task, its
    units (samples; lm: positions 0..T-2) on the leading dims; None if the task is not one."""
    if isinstance(task, ClassifyTask) and task.loss == "ce":
        return _real(output), labels, torch.ones(labels.shape, dtype=torch.bool, device=output.device)
    if isinstance(task, LanguageModelTask):
        y = targets(inputs, labels)
        valid = y != IGNORE_INDEX
        return _real(output[:, :-1]), y.masked_fill(~valid, 0), valid
    return None


def _pad_lm(task: Task, full: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """`part` (the units' rows) in a tensor shaped like the model's output `full` (lm: the last position 0)."""
    if isinstance(task, LanguageModelTask):
        out = torch.zeros(full.shape, dtype=part.dtype, device=part.device)
        out[:, :-1] = part
        return out
    return part


def _residual(p: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """p - onehot(y) (d cross-entropy / d logits at label y), zero on units that are not valid; p is consumed."""
    r = p.scatter_add_(-1, y.unsqueeze(-1), torch.full(y.shape + (1,), -1.0, dtype=p.dtype, device=p.device))
    return r.mul_(valid.unsqueeze(-1))


def _outer_per_unit(r: torch.Tensor, unit_dims: int) -> OutputProduct:
    """u -> r (r . u) with the dot product per unit (the first `unit_dims` dims index the units)."""
    def apply(u: torch.Tensor) -> torch.Tensor:
        ru = (r * u.to(r.dtype)).flatten(unit_dims).sum(-1)
        return r * ru.reshape(*ru.shape, *([1] * (r.dim() - unit_dims)))
    return apply


def can_sample(task: Task) -> bool:
    """Whether the task has a predictive distribution to sample the Fisher's labels from."""
    return (isinstance(task, ClassifyTask) and task.loss == "ce") or isinstance(task, (LanguageModelTask,
                                                                                       RegressTask))


def check_curvature(task: Task | str, curvature: str) -> None:
    """UserError (one line, naming the option) if `task` cannot provide the operator `curvature`."""
    task = as_task(task)
    if curvature not in CURVATURES:
        raise UserError(f"--curvature {curvature}: choose {', '.join(CURVATURES)}")
    if curvature == "fisher" and not can_sample(task):
        what = "--loss mse" if isinstance(task, ClassifyTask) else f"--task {task.name}"
        raise UserError(f"--curvature fisher: {what} has no predictive distribution to sample labels from; use "
                        f"--curvature ggn or empirical-fisher")


def output_product(curvature: str, task: Task, output: torch.Tensor, inputs: Inputs, labels: torch.Tensor | None,
                   uniforms: torch.Tensor | None = None) -> OutputProduct:
    """u -> M u, M the output-space matrix of `curvature` for this batch at `output` (detached; see the module's
    docstring); u and the result are shaped like `output` (float64 for a float64 output, else float32).
    `uniforms`: the Fisher's, one per unit (classify: (B,), lm: (B, T), regress: shaped like the labels)."""
    output = output.detach()
    soft = _softmax_units(task, output, inputs, labels)
    if curvature == "ggn":
        if soft is not None:
            z, _, valid = soft
            p = torch.softmax(z, dim=-1) * valid.unsqueeze(-1)

            def ggn(u: torch.Tensor) -> torch.Tensor:
                part = u[:, :-1] if isinstance(task, LanguageModelTask) else u
                pu = p * part.to(p.dtype)
                return _pad_lm(task, output, pu - p * pu.sum(-1, keepdim=True))
            return ggn
        if isinstance(task, RegressTask):
            return lambda u: 2.0 * _real(u)
        own = getattr(task, "output_hessian_product", None)
        if callable(own):
            return lambda u: own(output, inputs, labels, u)
        z = output.clone().requires_grad_(True)
        with torch.enable_grad():
            g = torch.autograd.grad(task.loss_sum(z, inputs, labels), z, create_graph=True)[0]

        def exact(u: torch.Tensor) -> torch.Tensor:
            if not g.requires_grad:  # the loss is linear in the outputs
                return torch.zeros_like(u)
            return torch.autograd.grad(g, z, grad_outputs=u.to(g.dtype), retain_graph=True)[0]
        return exact
    if curvature == "empirical-fisher":
        if soft is not None:
            z, y, valid = soft
            r = _residual(torch.softmax(z, dim=-1), y, valid)
            apply = _outer_per_unit(r, r.dim() - 1)
            return lambda u: _pad_lm(task, output, apply(u[:, :-1] if isinstance(task, LanguageModelTask) else u))
        z = output.clone().requires_grad_(True)
        with torch.enable_grad():
            r = _real(torch.autograd.grad(task.loss_sum(z, inputs, labels), z)[0])
        return _outer_per_unit(r, 1)
    if curvature == "fisher":
        if uniforms is None:
            raise ValueError("the Fisher needs the batch's uniforms")
        if soft is not None:
            z, _, valid = soft
            p = torch.softmax(z, dim=-1)
            u01 = uniforms[:, :z.shape[1]] if isinstance(task, LanguageModelTask) else uniforms
            cdf = p.cumsum(-1)
            sampled = torch.searchsorted(cdf, u01.to(device=cdf.device, dtype=cdf.dtype).unsqueeze(-1)
                                         * cdf[..., -1:]).squeeze(-1)
            sampled = sampled.clamp_(max=z.shape[-1] - 1)
            r = _residual(p, sampled, valid)
            apply = _outer_per_unit(r, r.dim() - 1)
            return lambda u: _pad_lm(task, output, apply(u[:, :-1] if isinstance(task, LanguageModelTask) else u))
        if isinstance(task, RegressTask):
            eps = math.sqrt(2.0) * torch.erfinv(2.0 * uniforms.double() - 1.0)
            r = (-math.sqrt(2.0) * eps).to(device=output.device, dtype=_real(output).dtype).reshape(output.shape[0], -1)
            apply = _outer_per_unit(r, 1)
            return lambda u: apply(u.reshape(r.shape)).reshape(output.shape)
        check_curvature(task, curvature)
    raise ValueError(f"curvature={curvature!r}")


class CurvatureOperator(HessianOperator):
    """Products with the GGN, Fisher or empirical Fisher of the mean loss (`curvature`), at the model's current
    weights; the interface, sharding over `comm` and drive protocol of `HessianOperator` (whose Hessian products
    it replaces: `local_product_sum`). `fisher_seed`: required for ``fisher``. `jvp`: ``forward`` (forward-mode
    AD, falling back for good to ``reverse`` if the model cannot take it; reason in `fallback`) or ``reverse``.
    Raises UserError if the task cannot provide the operator (`check_curvature`)."""

    def __init__(self, model: nn.Module, data: EvalSet | Sequence[EvalSet], loss: str | Task, curvature: str,
                 batch_size: int = DEFAULT_BATCH_SIZE, comm=SELF, fisher_seed: int | None = None,
                 jvp: str = "forward") -> None:
        if curvature == "hessian":
            raise ValueError("curvature='hessian' is HessianOperator")
        if jvp not in JVP_PATHS:
            raise ValueError(f"jvp={jvp!r}: choose one of {', '.join(JVP_PATHS)}")
        check_curvature(loss, curvature)
        if curvature == "fisher" and fisher_seed is None:
            raise UserError("--curvature fisher samples labels from the model: add --fisher-seed N (any integer)")
        super().__init__(model, data, loss, batch_size, comm, product="plain")
        self.curvature = curvature
        self.fisher_seed = fisher_seed
        self.path = jvp
        self.fallback = None
        every = [data] if hasattr(data, "rows") else list(data)
        # each local shard's first row in its split's global order (as `shard` cuts), for the Fisher's uniforms
        self._offsets = [len(s) * self.rank // self.size for s in every]
        self._split_sizes = [len(s) for s in every]
        self._uniforms: dict[int, torch.Tensor] = {}
        task = self.task
        self.psd = curvature != "ggn" or isinstance(task, (LanguageModelTask, RegressTask)) or (
            isinstance(task, ClassifyTask) and task.loss == "ce")
        """Positive semi-definite by construction (the Fisher matrices; the GGN of a loss convex in the outputs
        in closed form): its smallest eigenvalue is >= 0, and usually 0 many times over (rank <= units x
        outputs), where ARPACK's relative tolerance cannot be met, so the job does not ask for it."""

    def _batch_uniforms(self, split: int, start: int, stop: int, unit_shape: tuple[int, ...]) -> torch.Tensor:
        """The Fisher's uniforms of rows start:stop of this rank's shard of `split` (drawn once per split for
        all its samples, in global order, from the seeded generator)."""
        if split not in self._uniforms:
            g = torch.Generator().manual_seed(int(self.fisher_seed) + split)
            self._uniforms[split] = torch.rand((self._split_sizes[split], *unit_shape), generator=g,
                                               dtype=torch.float64)
        lo = self._offsets[split]
        return self._uniforms[split][lo + start:lo + stop]

    def _unit_shape(self, output: torch.Tensor, labels: torch.Tensor | None) -> tuple[int, ...]:
        if isinstance(self.task, RegressTask):
            return tuple(labels.shape[1:])
        return tuple(output.shape[1:-1])  # classify: (), lm: (T,)

    def _output_and_jvp(self, x: Inputs, tangents: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the model's output with its autograd graph, J v detached)."""
        if self.path == "forward":
            import torch.autograd.forward_ad as fwad
            from torch.func import functional_call

            call = _TaskCall(self.model, self.task)
            with warnings.catch_warnings(), torch.enable_grad(), fwad.dual_level():
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.script", category=FutureWarning)
                duals = {"model." + k: fwad.make_dual(p, t) for k, p, t in zip(self.space.names, self.params,
                                                                               tangents)}
                out = functional_call(call, duals, (x,), strict=False)
                primal, tangent = fwad.unpack_dual(out)
            if tangent is None:  # the output does not depend on the parameters
                tangent = torch.zeros_like(primal)
            return primal, tangent.detach()
        with torch.enable_grad():
            out = self.task.forward(self.model, x)
            u = torch.zeros_like(out, requires_grad=True)
            grads = torch.autograd.grad(out, self.params, grad_outputs=u, create_graph=True, allow_unused=True)
            live = [(g, t) for g, t in zip(grads, tangents) if g is not None and g.requires_grad]
            if not live:
                return out, torch.zeros_like(out)
            jv = torch.autograd.grad([g for g, _ in live], u, grad_outputs=[t for _, t in live])[0]
        return out, jv.detach()

    def _batch_product(self, split: int, start: int, x: Inputs, y, tangents: list[torch.Tensor]) -> np.ndarray:
        out, jv = self._output_and_jvp(x, tangents)
        uniforms = None
        if self.curvature == "fisher":
            uniforms = self._batch_uniforms(split, start, start + out.shape[0], self._unit_shape(out, y))
        w = output_product(self.curvature, self.task, out, x, y, uniforms)(jv)
        if not out.requires_grad:
            return np.zeros(self.n)
        with torch.enable_grad():
            grads = torch.autograd.grad(out, self.params, grad_outputs=w.to(out.dtype), allow_unused=True)
        return self.space.flatten(grads)

    def local_product_sum(self, v: np.ndarray) -> np.ndarray:
        """sum over this rank's batches of J_b^T M_b J_b v (float64). Model in eval mode."""
        self.model.eval()
        p0 = self.params[0]
        tangents = self.space.tensors(v, p0.device, p0.dtype)
        total = np.zeros(self.n)
        for split, s in enumerate(self.local):
            for start in range(0, len(s), self.batch_size):
                x, y = s.rows(start, start + self.batch_size)
                if self.path == "forward":
                    try:
                        total += self._batch_product(split, start, x, y, tangents)
                        continue
                    except Exception as exc:  # noqa: BLE001  (any model forward-mode AD cannot take)
                        first = (str(exc).strip().splitlines() or [""])[0][:300]
                        self.path = "reverse"
                        self.fallback = f"forward-mode AD failed on this model ({type(exc).__name__}: {first})"
                total += self._batch_product(split, start, x, y, tangents)
        return total


def make_operator(model: nn.Module, data: EvalSet | Sequence[EvalSet], loss: str | Task, curvature: str = "hessian",
                  batch_size: int = DEFAULT_BATCH_SIZE, comm=SELF, fisher_seed: int | None = None,
                  **kwargs) -> HessianOperator:
    """The operator of `curvature`: `HessianOperator` (``hessian``; `kwargs` its `product`) or `CurvatureOperator`
    (`kwargs` its `jvp`). Collective construction as theirs."""
    if curvature == "hessian":
        return HessianOperator(model, data, loss, batch_size, comm, **kwargs)
    return CurvatureOperator(model, data, loss, curvature, batch_size, comm, fisher_seed, **kwargs)
