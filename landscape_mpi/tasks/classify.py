"""`classify` (the default task): logits (B, C) against int labels (B,); metrics loss and acc.

The formulas of the surface's loss (`batch_loss_sum`, `per_sample_loss`: the fast engines use them too) and of
the Hessian's (`loss_sum`, float64 kept for a float64 model) live here, once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from landscape_mpi.config.surface import TASK_METRICS
from landscape_mpi.data.datasets import EvalSet, Inputs
from landscape_mpi.tasks.base import Sums, Task, describe


def batch_loss_sum(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """Sum over the batch of the per-sample loss (a 0-dim float32 tensor).

    ce: cross-entropy of the logits.  mse: mean over classes of (softmax - one_hot)^2, as the paper's
    reference code computed it (nn.MSELoss on softmax outputs).
    """
    if loss == "ce":
        return F.cross_entropy(logits.float(), labels, reduction="sum")
    if loss == "mse":
        probs = torch.softmax(logits.float(), dim=1)
        onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
        return ((probs - onehot) ** 2).mean(dim=1).sum()
    raise ValueError(loss)


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """The per-sample loss of logits shaped (..., B, C) against labels (B,): a float32 tensor (..., B).

    The same formulas as `batch_loss_sum`, without the sum, for several grid points evaluated at once.
    """
    lead = logits.shape[:-1]
    flat = logits.float().reshape(-1, logits.shape[-1])
    y = labels.expand(lead).reshape(-1)
    if loss == "ce":
        return F.cross_entropy(flat, y, reduction="none").view(lead)
    if loss == "mse":
        probs = torch.softmax(flat, dim=1)
        onehot = F.one_hot(y, probs.shape[1]).to(probs.dtype)
        return ((probs - onehot) ** 2).mean(dim=1).view(lead)
    raise ValueError(loss)


def loss_sum(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """Sum over the batch of the per-sample loss, as `batch_loss_sum`, but kept in float64 for a float64 model.

    batch_loss_sum casts logits to float32 (right for its speed-oriented evaluation); the Hessian of a float64
    run (``--precision float64``) must stay float64 end to end, so the same two formulas are applied without
    the cast.
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


class ClassifyTask(Task):
    """Per sample: ce or mse (`loss`) of the logits; accuracy = the fraction of argmax hits."""

    name = "classify"
    metrics = TASK_METRICS["classify"]

    def __init__(self, loss: str = "ce") -> None:
        self.loss = loss

    def loss_sum(self, output: torch.Tensor, inputs: Inputs, labels: torch.Tensor | None) -> torch.Tensor:
        return loss_sum(output, labels, self.loss)

    def count(self, inputs: Inputs, labels: torch.Tensor | None) -> int:
        return int(labels.shape[0])

    def batch_sums(self, output: torch.Tensor, inputs: Inputs, labels: torch.Tensor | None) -> Sums:
        # The float32 formula (batch_loss_sum), summed in float64 by the caller: the values of every release.
        return {"loss": float(batch_loss_sum(output, labels, self.loss).double()),
                "hits": int((output.argmax(dim=1) == labels).sum()), "count": int(labels.shape[0])}

    def finish(self, sums: Sums) -> list[float]:
        n = sums["count"]
        return [sums["loss"] / n, sums["hits"] / n]

    def check(self, output: Any, inputs: Inputs, labels: torch.Tensor | None, split: EvalSet) -> str | None:
        batch = int(labels.shape[0]) if labels is not None else None
        if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != batch:
            return f"the model returns {describe(output)}, expected logits of shape (batch, classes)"
        if not output.is_floating_point():
            return f"the model returns {output.dtype} values, expected floating-point logits"
        if labels is None or labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
            found = "no labels" if labels is None else f"labels {describe(labels)}"
            return f"{found}, expected integer class labels (B,)"
        n_classes = int(output.shape[1])
        bounds = split.label_range() or (0, 0)
        top = int(bounds[1])
        if top >= n_classes or int(bounds[0]) < 0:
            return (f"labels go up to {top} but the model has {n_classes} outputs; "
                    f"choose a model with one output per class")
        return None
