"""Loss and accuracy of a model on an evaluation set (docs/method.md#evaluation): the plain eager reference.

This is the oracle every fast path of `landscape_mpi.engine` is tested against: keep it plain.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from landscape_mpi.data.datasets import EvalSet


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


@torch.inference_mode()
def evaluate(model: nn.Module, data: EvalSet, loss: str = "ce", batch_size: int = 1024,
             on_batch: Callable[[], None] | None = None) -> tuple[float, float]:
    """(loss, accuracy) over all samples of `data`, model in eval mode.

    The loss is the sample-weighted mean over every sample (batch sums accumulated in float64, divided by
    the sample count: not a mean of batch means); accuracy is the fraction in [0, 1] of argmax hits.
    A NaN or inf loss is returned as it is: it is a valid result. `on_batch` is called after every batch
    (the MPI master serves requests and flushes results there while it evaluates a long point); whatever
    it raises propagates.
    """
    model.eval()
    total, correct = 0.0, 0
    n = len(data)
    for start in range(0, n, batch_size):
        x = data.inputs[start:start + batch_size]
        y = data.labels[start:start + batch_size]
        logits = model(x)
        total += float(batch_loss_sum(logits, y, loss).double())
        correct += int((logits.argmax(dim=1) == y).sum())
        if on_batch is not None:
            on_batch()
    return total / n, correct / n
